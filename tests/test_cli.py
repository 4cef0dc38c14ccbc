"""The ``cxrseg`` command line: help texts show defaults, dataset commands say what is
missing, and the library never imports the command line."""

import argparse
import ast
import sys
from pathlib import Path

import pytest

from cxrseg import cli

SRC = Path(cli.__file__).resolve().parent.parent  # src/cxrseg


@pytest.fixture
def argv(monkeypatch):
    """``main`` rewrites ``sys.argv``: restore it after the test."""
    monkeypatch.setattr(sys, "argv", ["cxrseg"])


def _help(capsys, command: str) -> str:
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--help"])
    assert exc.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines


def test_predict_help_shows_defaults(argv, capsys):
    text = _help(capsys, "predict")
    assert "(default: auto)" in text  # --precision: the formatter adds it
    assert "predict-merge OUT') (default: 1)" in text  # --num-parts
    assert "(default 8)" in text and "(default: 8)" not in text  # said once, not twice
    assert "(default: on)" in text  # --postprocess / --no-postprocess
    assert "(default: None)" not in text and "(default: False)" not in text


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_option_with_a_default_says_it(command, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["cxrseg", command])
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    p = sub.choices[command]
    fmt = cli.HelpFormatter(command)
    for action in p._actions:
        d = action.default
        if not action.option_strings or action.nargs == 0 or action.required:
            continue
        if d is None or d is argparse.SUPPRESS or d in ("", [], ()):
            continue
        assert action.help, f"cxrseg {command} {action.option_strings[0]}: no help"
        text = fmt._expand_help(action)
        assert "default" in text.lower(), f"cxrseg {command} {action.option_strings[0]}: {text}"


def test_lone_percent_in_help():
    p = argparse.ArgumentParser(formatter_class=cli.HelpFormatter)
    p.add_argument("--share", type=float, default=0.5, help="5%% or 50% of the cases")
    p.add_argument("--name", default="a%b", help="a name")
    text = p.format_help()
    assert "5% or 50% of the cases (default: 0.5)" in " ".join(text.split())
    assert "(default: a%b)" in text


@pytest.mark.parametrize(
    "args",
    [["train", "--out", "OUT"], ["evaluate"], ["tune", "--out", "OUT"], ["probe"]],
    ids=lambda a: a[0],
)
def test_missing_data_folder(args, argv, monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("CXRSEG_DATA", raising=False)
    monkeypatch.setenv("CXRSEG_DEBUG", "1")  # a usage error stays one line even so
    args = [str(tmp_path / a) if a == "OUT" else a for a in args]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"cxrseg {args[0]}: error:")
    assert "--data" in err and "CXRSEG_DATA" in err
    assert not (tmp_path / "OUT").exists()


def _imports_cli(source: str, package: list[str]) -> list[str]:
    """The imports of ``cxrseg.cli`` in the source of a module of ``package``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names = [mod] + [f"{mod}.{a.name}" for a in node.names]
        else:
            continue
        hits = [n for n in names if n == "cxrseg.cli" or n.startswith("cxrseg.cli.")]
        if hits:
            found.append(f"line {node.lineno}: {hits[-1]}")
    return found


def test_library_never_imports_the_command_line():
    modules = [p for p in SRC.rglob("*.py") if "cli" not in p.relative_to(SRC).parts]
    assert len(modules) > 20
    bad = {}
    for path in modules:
        package = list(path.relative_to(SRC.parent).parts[:-1])  # ["cxrseg"], ["cxrseg", "models"]
        hits = _imports_cli(path.read_text(encoding="utf-8"), package)
        if hits:
            bad[str(path.relative_to(SRC))] = hits
    assert not bad, f"library modules importing cxrseg.cli: {bad}"


def test_import_scan_sees_every_spelling():
    source = "from .cli import main\nfrom . import cli\nimport cxrseg.cli.predict\nfrom .batch import run_predict\n"
    assert len(_imports_cli(source, ["cxrseg"])) == 3
    assert len(_imports_cli("from ..cli import _common\n", ["cxrseg", "models"])) == 1
    assert _imports_cli("from .client import x\nimport cxrseg.clinic\n", ["cxrseg"]) == []


def test_module_commands_exist():
    import importlib

    for name, (mod, _help_text) in cli.COMMANDS.items():
        m = importlib.import_module(mod)
        assert mod.startswith("cxrseg.cli."), name
        assert callable(m.add_arguments) and callable(m.run_cli), name
