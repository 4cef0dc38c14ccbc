"""``cxrseg`` command line: one sub-command per module.

Each sub-command lives in its own module, which defines ``add_arguments(parser)`` and
``run_cli(args) -> int``. Modules are imported only when their command runs (and for
``--help``), so ``cxrseg --help`` is fast and imports no torch.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading

from . import __version__

#: command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("cxrseg.train_cli", "train a multi-label or per-region U-Net on a JSRT/SCR folder"),
    "tune": ("cxrseg.tune", "k-fold cross-validated Bayesian hyper-parameter search (Optuna TPE)"),
    "evaluate": ("cxrseg.evaluate", "Jaccard, Dice, contour distance and HD95 per case and region"),
    "predict": ("cxrseg.predict_cli", "segment images and folders; write masks, heatmaps and a CSV"),
    "predict-merge": ("cxrseg.distributed", "join the CSVs of a sharded predict run (--num-parts) into one"),
    "finetune": ("cxrseg.finetune", "fine-tune a checkpoint on corrected masks with replay"),
    "bench": ("cxrseg.bench", "benchmark the prediction engine against the poster's approach"),
    "export": ("cxrseg.export", "write a checkpoint for shipping (fp16, evaluation summary in metadata)"),
    "samples": ("cxrseg.phantom", "write synthetic phantom cases in the JSRT/SCR layout"),
    "probe": ("cxrseg.probe", "position or anatomy? Jaccard under moves, structures removed or moved"),
}


def _available(name: str) -> bool:
    mod = COMMANDS[name][0]
    try:
        return importlib.util.find_spec(mod) is not None
    except (ImportError, ValueError):
        return False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxrseg",
        description="Segmentation of chest radiographs: heart, clavicles and lungs (patient's left/right).",
    )
    parser.add_argument("--version", action="version", version=f"cxrseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    argv = sys.argv[1:]
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (mod, help_) in COMMANDS.items():
        if not _available(name):
            continue
        p = sub.add_parser(name, help=help_, description=help_)
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
    except (ValueError, KeyError, FileNotFoundError, RuntimeError) as exc:
        if os.environ.get("CXRSEG_DEBUG"):
            raise
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"cxrseg {args.command}: error: {msg}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        if os.environ.get("CXRSEG_DEBUG"):
            raise
        from .io import describe_oserror

        print(f"cxrseg {args.command}: error: {describe_oserror(exc)}", file=sys.stderr)
        return EXIT_OUTPUT
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
