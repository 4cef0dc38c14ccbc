"""cxrseg-gui (docks, first case, prediction, --screenshot, in a subprocess under X) and the
plugin's Review workspace widget, which opens the same workspace inside napari."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _gui_fixtures import _isolated_home, phantom_root, tiny_ckpt  # noqa: F401


def test_parser_and_missing_data(tmp_path, capsys):
    from napari_cxrseg._launch import build_parser, main

    a = build_parser().parse_args(["--data", "x", "--case", "C1", "--no-predict", "--screenshot", "s.png"])
    assert (a.data, a.case, a.no_predict, a.screenshot, a.model) == ("x", "C1", True, "s.png", None)
    assert not a.in_process and build_parser().parse_args(["--in-process"]).in_process
    assert main(["--data", str(tmp_path / "nowhere")]) == 2
    assert "no such dataset" in capsys.readouterr().err


def test_no_prediction_process_without_a_model(monkeypatch, tmp_path):
    import cxrseg.model
    from napari_cxrseg._launch import start_predictor_process

    monkeypatch.setattr(cxrseg.model, "default_checkpoint_path", lambda: tmp_path / "none.safetensors")
    assert start_predictor_process(None, "auto") is None  # the first prediction says the model is missing


def test_default_data_is_the_bundled_sample():
    from napari_cxrseg._launch import default_data_root

    root = default_data_root()
    assert (root / "images").is_dir() and any((root / "images").iterdir())


@pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs an X display (run under xvfb-run)")
def test_screenshot_of_a_predicted_case(tmp_path, phantom_root, tiny_ckpt):
    from PIL import Image

    out = tmp_path / "shot.png"
    env = dict(os.environ, CXRSEG_HOME=str(tmp_path / "home"))
    r = subprocess.run(
        [sys.executable, "-m", "napari_cxrseg._launch", "--data", str(phantom_root), "--case", "PHANTOM002",
         "--model", str(tiny_ckpt), "--screenshot", str(out), "--timeout", "240", "--size", "1400x900",
         "--timings"],
        capture_output=True, text=True, timeout=400, env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "PHANTOM002 predicted by model" in r.stdout and "screenshot saved" in r.stdout
    assert "in the prediction process)" in r.stdout  # the default: torch never loaded into napari's process
    # --timings: the window's first event-loop turn, then the first prediction shown (bench_gui reads them)
    stamps = {ln.split("timings: ")[1].rpartition(" at ")[0]: float(ln.rpartition(" at ")[2])
              for ln in r.stdout.splitlines() if "timings: " in ln}
    assert set(stamps) == {"window shown", "first prediction shown"}
    assert 0 <= stamps["first prediction shown"] - stamps["window shown"] < 240
    img = np.asarray(Image.open(out).convert("RGB")).astype(int)
    h, w, _ = img.shape
    assert h >= 600 and w >= 1000
    # the canvas (middle of the window) shows coloured overlays on the grey radiograph
    mid = img[int(h * 0.25): int(h * 0.75), int(w * 0.3): int(w * 0.6)]
    sat = mid.max(axis=2) - mid.min(axis=2)
    assert (sat > 100).mean() > 0.05
    assert not (phantom_root / ".cxrseg").exists(), "opening a dataset must not write into it"


@pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs an X display (run under xvfb-run)")
def test_quality_screenshot_without_ground_truth(tmp_path, phantom_root, tiny_ckpt):
    """--quality on a film without masks: the quality check and the estimate-ranked queue
    both finish before the screenshot (no timeout)."""
    import shutil

    film = tmp_path / "films" / "PHANTOM001.png"
    film.parent.mkdir()
    shutil.copy(phantom_root / "images" / "PHANTOM001.png", film)
    out = tmp_path / "shot.png"
    env = dict(os.environ, CXRSEG_HOME=str(tmp_path / "home"))
    r = subprocess.run(
        [sys.executable, "-m", "napari_cxrseg._launch", "--data", str(film), "--model", str(tiny_ckpt),
         "--quality", "--screenshot", str(out), "--timeout", "240", "--size", "1400x900", "--in-process"],
        capture_output=True, text=True, timeout=400, env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "PHANTOM001 quality checked" in r.stdout and "screenshot saved" in r.stdout
    assert "in napari's process)" in r.stdout
    assert out.is_file()


def _dock_titles(viewer) -> set[str]:
    from qtpy.QtWidgets import QDockWidget

    return {d.windowTitle() for d in viewer.window._qt_window.findChildren(QDockWidget)}


@pytest.fixture
def _no_shipped_model(monkeypatch, tmp_path):
    """The workspace does not predict on its own (no shipped model), so the test stays light."""
    import cxrseg.model

    monkeypatch.setattr(cxrseg.model, "default_checkpoint_path", lambda: tmp_path / "no-model.safetensors")


def test_workspace_contribution_adds_every_dock_and_the_sample(make_napari_viewer, qtbot, monkeypatch,
                                                              phantom_root, _no_shipped_model):
    """`napari -w napari-cxrseg` opens the manifest's first widget: every dock of cxrseg-gui, laid
    out the same way, and in a viewer without layers the sample's first case, with the note that
    the phantom is a cartoon the model is not meant for."""
    from npe2 import PluginManifest

    import napari_cxrseg
    from napari_cxrseg import _launch
    from napari_cxrseg._widgets._cases import CasesWidget
    from napari_cxrseg._widgets._state import get_session

    manifest = PluginManifest.from_file(str(Path(napari_cxrseg.__file__).parent / "napari.yaml"))
    assert manifest.contributions.widgets[0].display_name == "Review workspace"
    monkeypatch.setattr(_launch, "default_data_root", lambda: phantom_root)  # small cases: a quick test
    viewer = make_napari_viewer(show=True)
    dock, holder = viewer.window.add_plugin_dock_widget("napari-cxrseg", "Review workspace", tabify=True)
    s = get_session(viewer)
    qtbot.waitUntil(lambda: s.case_id == "PHANTOM001", timeout=60_000)
    qtbot.wait(50)
    names = [name for name, *_ in _launch.DOCKS]
    assert set(names) <= _dock_titles(viewer)
    assert dock.windowTitle() == "Cases"  # napari's dock of the contribution holds the Cases dock
    cases = holder.cases
    assert isinstance(cases, CasesWidget) and cases.session is s
    assert s.case_ids == ["PHANTOM001", "PHANTOM002", "PHANTOM003"]
    assert "PHANTOM001 ground truth" in viewer.layers
    assert not s.auto_predict  # no model here; with one, the case is predicted as by cxrseg-gui
    assert cases.synthetic_note.shown_for_case()
    assert "Synthetic phantom" in cases.synthetic_note.label.text()


def test_workspace_keeps_the_layers_it_finds(make_napari_viewer, qtbot, monkeypatch, _no_shipped_model):
    """Opened on a viewer that already shows an image (`napari FILE -w napari-cxrseg`): all docks,
    no sample case."""
    from napari_cxrseg import _launch
    from napari_cxrseg._widgets._state import get_session

    def no_sample():
        raise AssertionError("the sample must not be opened over the user's layers")

    monkeypatch.setattr(_launch, "default_data_root", no_sample)
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32), np.float32), name="mine")
    viewer.window.add_plugin_dock_widget("napari-cxrseg", "Review workspace")
    names = {name for name, *_ in _launch.DOCKS}
    qtbot.waitUntil(lambda: names <= _dock_titles(viewer), timeout=20_000)
    qtbot.wait(50)
    assert [ly.name for ly in viewer.layers] == ["mine"] and get_session(viewer).index is None


def test_synthetic_note_only_on_phantoms(make_napari_viewer, qtbot, phantom_root):
    """The note shows for a phantom case, not for a real radiograph (RG1)."""
    pytest.importorskip("data_store", reason="pydicom-data (the RG1 sample) is not installed")
    from _gui_fixtures import open_case, wait_worker

    from napari_cxrseg._widgets._cases import CasesWidget
    from napari_cxrseg._widgets._samples import is_synthetic_case

    viewer = make_napari_viewer()
    w = CasesWidget(viewer)
    s = w.session
    assert not w.synthetic_note.shown_for_case()  # nothing open
    open_case(qtbot, s, phantom_root, "PHANTOM002")
    assert w.synthetic_note.shown_for_case()
    wait_worker(qtbot, w.synthetic_note.open_rg1())  # the note's button: the real chest CR
    qtbot.waitUntil(lambda: s.case_id == "RG1_UNCR", timeout=60_000)
    assert not w.synthetic_note.shown_for_case()
    assert not is_synthetic_case("RG1_UNCR", s.image)
    assert is_synthetic_case("sample", type("I", (), {"meta": {"format": "phantom"}})())


@pytest.mark.parametrize("env", [None, "1"])
def test_background_model_load_only_when_asked_for(qtbot, monkeypatch, tiny_ckpt, env):
    """``CXRSEG_WARM_MODEL=1``: the model is loaded in a background thread from the next
    event-loop turn, never before; by default the first prediction loads it."""
    import threading

    import cxrseg.predict
    from napari_cxrseg._launch import _warm_model

    loaded: list[tuple[str, str]] = []
    monkeypatch.setattr(cxrseg.predict, "get_predictor",
                        lambda model, device: loaded.append((threading.current_thread().name, model)))
    if env is None:
        monkeypatch.delenv("CXRSEG_WARM_MODEL", raising=False)
    else:
        monkeypatch.setenv("CXRSEG_WARM_MODEL", env)
    _warm_model(str(tiny_ckpt), "cpu")
    assert not loaded  # not before the event loop turns
    if env is None:
        qtbot.wait(300)
        assert not loaded
    else:
        qtbot.waitUntil(lambda: bool(loaded), timeout=10_000)
        assert loaded == [("cxrseg-warm-model", str(tiny_ckpt))]
