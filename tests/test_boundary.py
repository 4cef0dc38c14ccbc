"""The GUI/compute boundary, checked in fresh interpreters.

* importing any ``cxrseg`` module (found with pkgutil, so new modules are covered) loads
  no GUI package (napari, Qt, magicgui, vispy) and no torch (torch is imported inside
  the functions that need it);
* importing ``napari_cxrseg`` loads neither napari nor torch, and resolving every
  ``python_name`` of ``napari.yaml`` loads no torch.
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import cxrseg

MANIFEST = Path(__file__).resolve().parent.parent / "napari_cxrseg" / "napari.yaml"

GUI = (
    "napari",
    "qtpy",
    "magicgui",
    "PyQt5",
    "PyQt6",
    "PySide2",
    "PySide6",
    "superqt",
    "vispy",
    "app_model",
)
HEAVY = ("torch", "torchvision", "segmentation_models_pytorch", "timm", "optuna")

_PROBE = r"""
import importlib, json, sys
names, banned = json.loads(sys.argv[1]), json.loads(sys.argv[2])
def loaded():
    return sorted(b for b in banned if b in sys.modules)
culprits = {}
for name in names:
    before = set(loaded())
    if ":" in name:
        mod, _, attr = name.partition(":")
        obj = importlib.import_module(mod)
        for part in attr.split("."):
            obj = getattr(obj, part)
    else:
        importlib.import_module(name)
    new = sorted(set(loaded()) - before)
    if new:
        culprits[name] = new
print(json.dumps(culprits))
"""


def _probe(names: list[str], banned: tuple[str, ...]) -> dict[str, list[str]]:
    """Import ``names`` in order in a fresh interpreter: which first loaded a banned module."""
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(names), json.dumps(list(banned))],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cxrseg_modules() -> list[str]:
    names = ["cxrseg"]
    for info in pkgutil.walk_packages(cxrseg.__path__, prefix="cxrseg."):
        if not info.name.rsplit(".", 1)[-1].startswith("__"):
            names.append(info.name)
    return names


def manifest_python_names() -> list[str]:
    doc = yaml.safe_load(MANIFEST.read_text())
    return [c["python_name"] for c in doc["contributions"]["commands"] if c.get("python_name")]


def test_enumeration_finds_the_core_modules():
    mods = cxrseg_modules()
    for expected in (
        "cxrseg.regions",
        "cxrseg.config",
        "cxrseg.io",
        "cxrseg.dataset",
        "cxrseg.phantom",
    ):
        assert expected in mods


@pytest.mark.parametrize("banned", [GUI, HEAVY], ids=["gui", "torch"])
def test_core_imports_no_gui_and_no_torch(banned):
    culprits = _probe(cxrseg_modules(), banned)
    assert culprits == {}, f"these cxrseg modules import {banned} at module level: {culprits}"


def test_plugin_package_is_light():
    culprits = _probe(["napari_cxrseg"], GUI + HEAVY)
    assert culprits == {}, f"import napari_cxrseg loads {culprits}"


def test_manifest_contributions_do_not_import_torch():
    names = manifest_python_names()
    assert names, "no python_name in napari.yaml"
    culprits = _probe(["napari_cxrseg", *names], HEAVY)
    assert culprits == {}, f"these contributions import torch at module level: {culprits}"
