"""``cxrseg`` command line: one sub-command per module of this package.

Each sub-command lives in its own module (``cxrseg.cli.train``, ``cxrseg.cli.predict``,
...), which defines ``add_arguments(parser)`` and ``run_cli(args) -> int`` and calls the
library (:mod:`cxrseg.batch`, :mod:`cxrseg.train`, ...); no library module imports this
package. Modules are imported only when their command runs (and for its ``--help``), so
``cxrseg --help`` is fast and imports no torch.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import signal
import sys
import threading

from .. import __version__

#: command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("cxrseg.cli.train", "train a multi-label or per-region U-Net on a JSRT/SCR folder"),
    "tune": ("cxrseg.cli.tune", "k-fold cross-validated Bayesian hyper-parameter search (Optuna TPE)"),
    "evaluate": ("cxrseg.cli.evaluate", "Jaccard, Dice, contour distance and HD95 per case and region"),
    "predict": ("cxrseg.cli.predict", "segment images and folders; write masks, heatmaps and a CSV"),
    "predict-merge": ("cxrseg.cli.predict_merge", "join the CSVs of a sharded predict run (--num-parts) into one"),
    "refine-train": ("cxrseg.cli.refine_train", "train the clavicles' native-resolution refinement for a checkpoint"),
    "finetune": ("cxrseg.cli.finetune", "fine-tune a checkpoint on corrected masks with replay"),
    "bench": ("cxrseg.cli.bench", "benchmark the prediction engine against the study's per-region baseline"),
    "export": ("cxrseg.cli.export", "write a checkpoint for shipping (fp16, evaluation summary in metadata)"),
    "quantize": ("cxrseg.cli.quantize", "calibrate a checkpoint for int8 prediction on CPUs, checked against fp32"),
    "samples": ("cxrseg.cli.samples", "write synthetic phantom cases in the JSRT/SCR layout"),
    "probe": ("cxrseg.cli.probe", "position or anatomy? Jaccard under moves, structures removed or moved"),
}


def _available(name: str) -> bool:
    mod = COMMANDS[name][0]
    try:
        return importlib.util.find_spec(mod) is not None
    except (ImportError, ValueError):
        return False


#: "%%" and "%(name)s" are argparse's; any other "%" is a literal one.
_PERCENT = re.compile(r"%%|%\([^)]*\)[#0 +-]*\d*(?:\.\d+)?[a-zA-Z]|%")


def _literal_percent(text: str) -> str:
    return _PERCENT.sub(lambda m: "%%" if m.group(0) == "%" else m.group(0), text)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written; each option's help ends with its default.

    The default is shown only when it says something: not for ``None``, ``False``, empty
    values, flags or required options, nor when the help already names its default. A
    lone ``%`` in a help text is taken literally.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = _literal_percent(action.help or "")
        if isinstance(action, argparse.BooleanOptionalAction):
            # Python < 3.11 appends "(default: True)" itself: on/off reads better
            text = text.removesuffix(" (default: %(default)s)")
        if not action.option_strings or action.required or "default" in text.lower():
            return text
        default = action.default
        if default is None or default is False or default is argparse.SUPPRESS:
            return text
        if isinstance(default, (str, list, tuple, dict, set)) and not default:
            return text
        if isinstance(action, argparse.BooleanOptionalAction):
            return f"{text} (default: {'on' if default else 'off'})"
        if action.nargs == 0:  # store_const, store_true/false, help, version: nothing to add
            return text
        return f"{text} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    """The ``cxrseg`` parser; only the command named on the command line gets its options."""
    parser = argparse.ArgumentParser(
        prog="cxrseg",
        description="Segmentation of chest radiographs: heart, clavicles and lungs (patient's left/right).",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"cxrseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    argv = sys.argv[1:]
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (mod, help_) in COMMANDS.items():
        if not _available(name):
            continue
        p = sub.add_parser(name, help=help_, description=help_, formatter_class=HelpFormatter)
        # Import a command's module only when it is the one being run.
        if name == wanted:
            m = importlib.import_module(mod)
            m.add_arguments(p)
            p.set_defaults(_run=m.run_cli)
    return parser


#: Exit statuses shared by every command.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_OUTPUT = 0, 1, 2, 3
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: ``finally`` blocks run, workers end, claims go."""


class UsageError(ValueError):
    """A command was called wrongly: one line on stderr and exit status 2, also with
    ``CXRSEG_DEBUG`` set (there is no traceback worth showing)."""


def _on_sigterm(_signum, _frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    """Run a command; the exit status is 0 (done), 1 (some inputs failed), 2 (usage
    error), 3 (an output could not be written: full disk, read-only folder, no
    permission), 130 (interrupted) or 143 (terminated by SIGTERM)."""
    if argv is not None:
        sys.argv = [sys.argv[0]] + list(argv)
    parser = build_parser()
    args = parser.parse_args()
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0 if args.command is None else 2
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return int(args._run(args) or 0)
    except Terminated:
        print(f"cxrseg {args.command}: terminated", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except UsageError as exc:
        print(f"cxrseg {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, KeyError, FileNotFoundError, RuntimeError) as exc:
        if os.environ.get("CXRSEG_DEBUG"):
            raise
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"cxrseg {args.command}: error: {msg}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        if os.environ.get("CXRSEG_DEBUG"):
            raise
        from ..io import describe_oserror

        print(f"cxrseg {args.command}: error: {describe_oserror(exc)}", file=sys.stderr)
        return EXIT_OUTPUT
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
