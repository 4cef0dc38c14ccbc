"""The npe2 manifest: valid, installed, and every contribution resolves to a callable."""

from __future__ import annotations

import importlib
from importlib import metadata, resources

import pytest
from npe2 import PluginManifest

from cxrseg.io import IMAGE_SUFFIXES

PLUGIN = "napari-cxrseg"


@pytest.fixture(scope="module")
def manifest() -> PluginManifest:
    path = resources.files("napari_cxrseg") / "napari.yaml"
    assert path.is_file(), "napari.yaml must ship inside the napari_cxrseg package"
    return PluginManifest.from_file(str(path))


def _resolve(python_name: str):
    mod, _, attr = python_name.partition(":")
    obj = importlib.import_module(mod)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def test_names(manifest):
    assert manifest.name == PLUGIN
    assert manifest.display_name == "CXR Segmentation"


def test_entry_point_is_installed():
    eps = [e for e in metadata.entry_points(group="napari.manifest") if e.name == PLUGIN]
    assert [e.value for e in eps] == ["napari_cxrseg:napari.yaml"]


def test_every_command_resolves_to_a_callable(manifest):
    commands = manifest.contributions.commands
    assert commands
    ids = [c.id for c in commands]
    assert len(ids) == len(set(ids)), "commands declared twice"
    for c in commands:
        assert c.id.startswith(f"{PLUGIN}."), c.id
        assert c.python_name, c.id
        assert callable(_resolve(c.python_name)), c.python_name


def test_contributions_refer_to_declared_commands(manifest):
    ids = {c.id for c in manifest.contributions.commands}
    contrib = manifest.contributions
    referenced = [r.command for r in contrib.readers or []]
    referenced += [w.command for w in contrib.writers or []]
    referenced += [s.command for s in contrib.sample_data or []]
    referenced += [w.command for w in contrib.widgets or []]
    assert referenced
    assert set(referenced) <= ids


def test_reader_covers_the_core_formats_and_folders(manifest):
    (reader,) = manifest.contributions.readers
    assert reader.accepts_directories
    patterns = set(reader.filename_patterns)
    for suffix in IMAGE_SUFFIXES:
        assert f"*{suffix}" in patterns, suffix
    for upper in ("*.IMG", "*.DCM", "*.PNG", "*.GIF", "*.TIF"):
        assert upper in patterns, upper  # patterns are case-sensitive on Linux
    assert "*" not in patterns  # never claim every file


def test_writer_and_samples(manifest):
    masks, seg = manifest.contributions.writers
    assert masks.layer_types == ["labels"]
    assert masks.filename_extensions[0] == ".gif" and ".png" in masks.filename_extensions
    assert seg.layer_types == ["labels"] and seg.filename_extensions == [".dcm"]
    keys = {s.key for s in manifest.contributions.sample_data}
    assert keys == {"phantom", "rg1"}


def test_npe2_discovers_the_plugin():
    from npe2 import PluginManager

    pm = PluginManager()
    pm.discover()
    assert pm.get_manifest(PLUGIN).name == PLUGIN
    for path in ("x.IMG", "x.dcm", "masks/heart/x.gif"):
        cmds = [r.command for r in pm.iter_compatible_readers(path)]
        assert f"{PLUGIN}.get_reader" in cmds, path
