"""Compare dock: live Jaccard/Dice against the ground truth, updated on painting; FP/FN overlay."""

from __future__ import annotations

import numpy as np
import pytest
from _gui_fixtures import _isolated_home, open_case, phantom_root, tiny_ckpt, wait_worker  # noqa: F401

from cxrseg.metrics import dice, jaccard
from cxrseg.regions import LABEL_VALUES, REGIONS


@pytest.fixture
def setup(make_napari_viewer, qtbot, phantom_root, tiny_ckpt):
    from napari_cxrseg._widgets._compare import CompareWidget
    from napari_cxrseg._widgets._state import get_session

    viewer = make_napari_viewer()
    w = CompareWidget(viewer)
    s = get_session(viewer)
    s.set_model(str(tiny_ckpt))
    open_case(qtbot, s, phantom_root)
    wait_worker(qtbot, s.predict())
    qtbot.waitUntil(lambda: len(w.scores) == len(REGIONS), timeout=20_000)
    return viewer, w, s


def test_metrics_match_core_and_follow_painting(setup, qtbot):
    viewer, w, s = setup
    pred = viewer.layers["PHANTOM001 prediction"]
    assert w.source.currentText() == "PHANTOM001 prediction"
    for r in REGIONS:
        p = s.masks[r]
        assert w.scores[r]["jaccard"] == pytest.approx(jaccard(p, s.truth[r]))
        assert w.scores[r]["dice"] == pytest.approx(dice(p, s.truth[r]))
    assert s.case_scores["PHANTOM001"]["heart"] == pytest.approx(w.scores["heart"]["jaccard"])
    row = REGIONS.index("heart")
    assert w.table.item(row, 1).text() == f"{w.scores['heart']['jaccard']:.3f}"

    # paint the whole reference heart into the prediction layer, as a user would
    before = w.scores["heart"]["jaccard"]
    idx = np.nonzero(s.truth["heart"])
    with qtbot.waitSignal(pred.events.paint, timeout=5000):
        pred.data_setitem(idx, LABEL_VALUES["heart"])
    qtbot.waitUntil(lambda: w.scores["heart"]["jaccard"] != before, timeout=10_000)
    heart_now = pred.data == LABEL_VALUES["heart"]
    assert w.scores["heart"]["jaccard"] == pytest.approx(jaccard(heart_now, s.truth["heart"]))
    assert w.scores["heart"]["fn"] == 0
    qtbot.waitUntil(lambda: w.table.item(row, 1).text() == f"{w.scores['heart']['jaccard']:.3f}", timeout=5000)

    # a brush stroke through the public paint API also updates the metrics
    before = w.scores["heart"]["jaccard"]
    pred.brush_size = 15
    pred.paint((5, 5), LABEL_VALUES["heart"])  # a false positive in the corner
    qtbot.waitUntil(lambda: w.scores["heart"]["jaccard"] < before, timeout=10_000)


def test_error_overlay_two_colours(setup, qtbot):
    viewer, w, s = setup
    w.err_region.setCurrentIndex(REGIONS.index("left_lung"))
    name = "PHANTOM001 errors"
    qtbot.waitUntil(lambda: name in viewer.layers
                    and viewer.layers[name].metadata["cxrseg"].get("region") == "left_lung", timeout=10_000)
    err = viewer.layers[name]
    p, t = s.prediction_masks()["left_lung"] if "left_lung" in s.prediction_masks() else None, s.truth["left_lung"]
    p = np.zeros_like(t) if p is None else p
    assert np.array_equal(err.data == 1, p & ~t)  # false positives
    assert np.array_equal(err.data == 2, ~p & t)  # false negatives
    c1, c2 = err.colormap.map(np.array([1, 2]))
    assert c1[0] > 0.8 and c1[2] < 0.3  # red
    assert c2[2] > 0.8 and c2[0] < 0.5 and c2[1] < 0.5  # violet-blue
    w.err_box.setChecked(False)
    qtbot.waitUntil(lambda: name not in viewer.layers, timeout=5000)


def test_removed_dock_drops_late_results(make_napari_viewer, qtbot, phantom_root, tiny_ckpt):
    from napari_cxrseg._widgets._compare import CompareWidget
    from napari_cxrseg._widgets._state import get_session

    viewer = make_napari_viewer()
    w = CompareWidget(viewer)
    viewer.window.add_dock_widget(w, name="Compare")
    s = get_session(viewer)
    s.set_model(str(tiny_ckpt))
    open_case(qtbot, s, phantom_root)
    wait_worker(qtbot, s.predict())
    qtbot.waitUntil(lambda: len(w.scores) == len(REGIONS), timeout=20_000)
    worker = w.refresh(force=True)  # a measurement in flight ...
    viewer.window.remove_dock_widget(w)  # ... when the dock goes
    assert w._removed
    viewer.layers.remove(s.get_layer("errors"))
    wait_worker(qtbot, worker)
    qtbot.wait(300)
    assert s.layer_name("errors") not in viewer.layers, "a removed dock drew its overlay"
    pred = s.get_layer("prediction")
    pred.data = np.zeros_like(pred.data)  # no longer measured by the removed dock
    qtbot.wait(400)
    assert s.layer_name("errors") not in viewer.layers
