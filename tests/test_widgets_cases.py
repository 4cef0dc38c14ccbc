"""Cases dock and session plumbing: dataset table, keys, layer names, files, imports."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from _gui_fixtures import _isolated_home, open_case, phantom_root, tiny_ckpt, wait_worker  # noqa: F401


def test_table_columns_and_keyboard_stepping(make_napari_viewer, qtbot, phantom_root):
    from cxrseg.regions import REGIONS, SHORT_NAMES
    from cxrseg.review import STATUS_LABELS
    from napari_cxrseg._widgets._cases import CasesWidget
    from napari_cxrseg._widgets._state import _next_case, _previous_case, get_session

    viewer = make_napari_viewer()
    w = CasesWidget(viewer)
    s = get_session(viewer)
    wait_worker(qtbot, w.open_root(phantom_root))
    assert [w.table.item(i, 0).text() for i in range(3)] == ["PHANTOM001", "PHANTOM002", "PHANTOM003"]
    assert w.cell_text("PHANTOM001", "nodule") == "–"  # not a JSRT case
    assert "3 cases" in w.summary.text()
    # PageDown / PageUp are bound in the viewer keymap, to functions that use the session
    bound = {str(k): v for k, v in viewer.keymap.items()}
    assert bound.get("PageDown") is _next_case and bound.get("PageUp") is _previous_case
    _next_case(viewer)  # nothing loaded yet: the first case
    qtbot.waitUntil(lambda: s.case_id == "PHANTOM001", timeout=20_000)
    _next_case(viewer)
    qtbot.waitUntil(lambda: s.case_id == "PHANTOM002", timeout=20_000)
    _previous_case(viewer)
    qtbot.waitUntil(lambda: s.case_id == "PHANTOM001", timeout=20_000)
    assert s.step_case(-1) is None  # first case: nothing before it
    # clicking a row loads that case
    w.table.setCurrentCell(w.row_of("PHANTOM003"), 0)
    qtbot.waitUntil(lambda: s.case_id == "PHANTOM003", timeout=20_000)
    assert [ly.name for ly in viewer.layers] == ["PHANTOM003", "PHANTOM003 ground truth"]
    # scores and statuses show up in the table
    s.set_case_scores("PHANTOM002", {"heart": 0.9123})
    assert w.cell_text("PHANTOM002", "heart") == "0.912"
    s.set_review("PHANTOM002", "flagged", "check heart border")
    assert w.cell_text("PHANTOM002", "status") == STATUS_LABELS["flagged"]
    # region columns titled by the short names of cxrseg.regions
    titles = [w.table.horizontalHeaderItem(c).text() for c in range(w.table.columnCount())]
    assert titles[-len(REGIONS):] == [SHORT_NAMES[r] for r in REGIONS]


def test_layer_names_and_case_switch_keeps_foreign_layers(make_napari_viewer, qtbot, phantom_root):
    from napari_cxrseg._widgets._state import get_session

    viewer = make_napari_viewer()
    s = get_session(viewer)
    assert get_session(viewer) is s
    open_case(qtbot, s, phantom_root, "PHANTOM001")
    assert s.layer_name("image") == "PHANTOM001"
    assert s.layer_name("ground_truth") == "PHANTOM001 ground truth"
    assert s.layer_name("prediction") == "PHANTOM001 prediction"
    assert s.layer_name("heatmap", "left clavicle") == "PHANTOM001 heatmap left_clavicle"
    assert s.layer_name("errors") == "PHANTOM001 errors"
    assert s.layer_name("edit", "Right-Lung") == "PHANTOM001 edit right_lung"
    with pytest.raises(ValueError):
        s.layer_name("heatmap")
    viewer.add_labels(np.zeros((8, 8), np.uint8), name=s.layer_name("edit", "heart"))
    viewer.add_image(np.zeros((8, 8)), name="my notes")
    seen = []
    s.case_about_to_change.connect(seen.append)
    wait_worker(qtbot, s.load_case("PHANTOM002"))
    assert seen == ["PHANTOM001"]
    assert sorted(ly.name for ly in viewer.layers) == ["PHANTOM002", "PHANTOM002 ground truth", "my notes"]


def test_open_files_and_bad_root(make_napari_viewer, qtbot, phantom_root):
    from _gui_fixtures import notifications

    from napari_cxrseg._widgets._cases import CasesWidget
    from napari_cxrseg._widgets._state import get_session

    viewer = make_napari_viewer()
    w = CasesWidget(viewer)
    s = get_session(viewer)
    got = notifications()
    wait_worker(qtbot, w.open_root(phantom_root / "does-not-exist"))
    assert any("Open dataset" in str(n.message) and "not found" in str(n.message) for n in got)
    assert s.index is None
    files = [phantom_root / "images" / "PHANTOM003.png", phantom_root / "images" / "PHANTOM001.png"]
    wait_worker(qtbot, w.open_files(files))
    assert s.case_ids == ["PHANTOM001", "PHANTOM003"]
    wait_worker(qtbot, w.load("PHANTOM003"))
    assert "PHANTOM003 ground truth" in viewer.layers  # masks found beside the files


def test_widget_modules_do_not_import_torch():
    code = (
        "import sys\n"
        "import napari_cxrseg._widgets._cases, napari_cxrseg._widgets._predict, napari_cxrseg._widgets._compare\n"
        "import napari_cxrseg._widgets._review, napari_cxrseg._widgets._progression, napari_cxrseg._launch\n"
        "import cxrseg.review\n"
        "bad = [m for m in ('torch', 'torchvision', 'segmentation_models_pytorch') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "code = __import__('subprocess').run([sys.executable, '-c', 'import sys, cxrseg.review; "
        "assert not [m for m in sys.modules if m.split(\".\")[0] in "
        "(\"napari\", \"qtpy\", \"PyQt5\", \"magicgui\", \"torch\")]'])\n"
        "sys.exit(code.returncode)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def test_manifest_lists_the_widgets():
    from importlib import resources

    from npe2 import PluginManifest

    m = PluginManifest.from_file(str(resources.files("napari_cxrseg") / "napari.yaml"))
    names = [w.display_name for w in m.contributions.widgets]
    # first: `napari -w napari-cxrseg` opens the first widget, the whole workspace
    assert names == ["Review workspace", "Cases", "Predict", "Compare", "Review queue", "Training progression",
                     "Correct", "Fine-tune", "Display"]
    assert not any("&" in n for n in names)  # Qt would take "&" for a shortcut mnemonic
    cmds = {c.id: c.python_name for c in m.contributions.commands}
    assert cmds["napari-cxrseg.correct_widget"] == "napari_cxrseg._widgets._correct:CorrectWidget"
    assert cmds["napari-cxrseg.finetune_widget"] == "napari_cxrseg._widgets._finetune:FinetuneWidget"
    assert cmds["napari-cxrseg.review_workspace"] == "napari_cxrseg._widgets._workspace:ReviewWorkspace"
    import importlib

    for python_name in cmds.values():  # every contribution imports
        mod, _, attr = python_name.partition(":")
        assert callable(getattr(importlib.import_module(mod), attr))


def test_thread_pool_headroom(make_napari_viewer, qtbot):
    """Busy workers never take every thread of Qt's pool (see ensure_pool_headroom)."""
    import threading

    from qtpy.QtCore import QThreadPool

    from napari_cxrseg._widgets._workers import start_worker

    make_napari_viewer()
    pool = QThreadPool.globalInstance()
    release = threading.Event()
    done = []
    workers = [start_worker(release.wait, 30, context="block", finished=lambda: done.append(1)) for _ in range(3)]
    try:
        qtbot.waitUntil(lambda: pool.activeThreadCount() >= 3, timeout=10_000)
        assert pool.maxThreadCount() >= pool.activeThreadCount() + 1
    finally:
        release.set()
        qtbot.waitUntil(lambda: len(done) == len(workers), timeout=10_000)


@pytest.mark.parametrize("exc_type", [RuntimeError, ValueError])
def test_generator_worker_errors_are_reported_and_finish(make_napari_viewer, qtbot, exc_type):
    """A generator worker that raises -- RuntimeError included, which superqt alone would
    swallow without ``errored`` or ``finished`` (torch raises RuntimeError for out of
    memory) -- gives one notification, the ``errored`` callback with the original
    exception, and ``finished``."""
    from _gui_fixtures import notifications

    from napari_cxrseg._widgets._workers import start_worker

    make_napari_viewer()
    got = notifications()
    seen, finished, values = [], [], []

    def job():
        yield 1
        raise exc_type("simulated failure in step 2")

    w = start_worker(job, context="Long job", yielded=values.append, errored=seen.append,
                     finished=lambda: finished.append(1))
    with qtbot.waitSignal(w.finished, timeout=10_000):
        pass
    assert finished == [1] and values == [1]
    assert len(seen) == 1 and type(seen[0]) is exc_type
    qtbot.waitUntil(lambda: any("Long job failed: simulated failure" in str(n.message) for n in got), timeout=5000)


def test_cases_of_different_sizes_update_the_viewer_dims(make_napari_viewer, qtbot, tmp_path, tiny_ckpt):
    """Layer swaps are batched into one dims update (Session._one_extent_update): after a
    case of another size (and its prediction), the dims cover exactly the new image."""
    from PIL import Image

    from napari_cxrseg._widgets._state import get_session

    rng = np.random.default_rng(0)
    files = []
    for name, shape in (("SMALL", (96, 128)), ("LARGE", (300, 260))):
        f = tmp_path / f"{name}.png"
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(f)
        files.append(f)
    viewer = make_napari_viewer()
    s = get_session(viewer)
    s.set_model(str(tiny_ckpt))
    wait_worker(qtbot, s.open_files(files))
    for cid, shape in (("SMALL", (96, 128)), ("LARGE", (300, 260)), ("SMALL", (96, 128))):
        wait_worker(qtbot, s.load_case(cid))
        wait_worker(qtbot, s.predict())
        assert viewer.layers[f"{cid} prediction"].data.shape == shape
        spans = [r.stop - r.start for r in viewer.dims.range]
        assert np.allclose(spans, np.array(shape) - 1) or np.allclose(spans, shape), (viewer.dims.range, shape)
