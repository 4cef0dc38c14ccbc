"""Cases + Predict docks: load a phantom case, predict with a tiny model, re-threshold."""

from __future__ import annotations

import numpy as np
import pytest
from _gui_fixtures import SIZE, _isolated_home, notifications, open_case, phantom_root, tiny_ckpt, wait_worker  # noqa: F401

from cxrseg.regions import LABEL_VALUES, REGIONS


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


def _predict_widget(viewer, ckpt):
    from napari_cxrseg._widgets._predict import PredictWidget
    from napari_cxrseg._widgets._state import get_session

    w = PredictWidget(viewer)
    w.set_checkpoint(str(ckpt) if ckpt is not None else None)
    return w, get_session(viewer)


def test_load_case_shows_image_and_ground_truth(viewer, qtbot, phantom_root):
    from napari.layers import Image, Labels

    from napari_cxrseg._widgets._cases import CasesWidget
    from napari_cxrseg._widgets._state import get_session

    cases = CasesWidget(viewer)
    s = get_session(viewer)
    wait_worker(qtbot, cases.open_root(phantom_root))
    assert cases.table.rowCount() == 3
    assert cases.cell_text("PHANTOM002", "status") == ""
    wait_worker(qtbot, cases.load("PHANTOM001"))
    names = [ly.name for ly in viewer.layers]
    assert names == ["PHANTOM001", "PHANTOM001 ground truth"]
    img, gt = viewer.layers["PHANTOM001"], viewer.layers["PHANTOM001 ground truth"]
    assert isinstance(img, Image) and img.data.dtype == np.float32 and img.data.shape == (SIZE, SIZE)
    assert isinstance(gt, Labels) and gt.data.dtype == np.uint8 and gt.data.shape == (SIZE, SIZE)
    assert set(np.unique(gt.data)) == {0} | {LABEL_VALUES[r] for r in REGIONS}
    # exact masks kept (clavicles overlap lungs), patient's left lung on the image's right
    exact = gt.metadata["cxrseg"]["masks"]
    assert set(exact) == set(REGIONS)
    assert np.array_equal(exact["left_lung"], s.truth["left_lung"])
    cols = np.nonzero(s.truth["left_lung"])[1]
    assert cols.mean() > SIZE / 2 > np.nonzero(s.truth["right_lung"])[1].mean()
    assert cases.table.currentRow() == cases.row_of("PHANTOM001")

    # next case (what PageDown does) replaces the previous case's layers
    assert "PageDown" in str(list(viewer.keymap)) or any("PageDown" in str(k) for k in viewer.keymap)
    wait_worker(qtbot, cases.step(+1))
    assert [ly.name for ly in viewer.layers] == ["PHANTOM002", "PHANTOM002 ground truth"]
    assert cases.table.currentRow() == cases.row_of("PHANTOM002")


def test_predict_layers_and_threshold_without_rerun(viewer, qtbot, phantom_root, tiny_ckpt, monkeypatch):
    from napari.layers import Image, Labels

    from cxrseg.predict import Predictor

    calls = []
    orig = Predictor.predict

    def spy(self, image, **kw):
        calls.append(image.shape)
        return orig(self, image, **kw)

    monkeypatch.setattr(Predictor, "predict", spy)
    w, s = _predict_widget(viewer, tiny_ckpt)
    qtbot.waitUntil(lambda: w.model_info.get("ok") is True, timeout=30_000)
    open_case(qtbot, s, phantom_root)
    wait_worker(qtbot, w.run())
    assert len(calls) == 1
    assert s.model_id and set(s.probs) == set(REGIONS)
    for r in REGIONS:
        h = viewer.layers[f"PHANTOM001 heatmap {r}"]
        assert isinstance(h, Image) and h.data.dtype == np.float32 and h.data.shape == (SIZE, SIZE)
        assert tuple(h.contrast_limits) == (0.0, 1.0) and h.blending == "additive"
        assert 0.0 <= h.data.min() and h.data.max() <= 1.0
    pred = viewer.layers["PHANTOM001 prediction"]
    assert isinstance(pred, Labels) and pred.data.dtype == np.uint8 and pred.data.shape == (SIZE, SIZE)
    assert pred.scale.tolist() == viewer.layers["PHANTOM001"].scale.tolist()
    heart = s.probs["heart"]
    assert np.array_equal(pred.metadata["cxrseg"]["masks"]["heart"], heart >= 0.5)

    # the threshold slider re-thresholds at once, from the kept probabilities
    w.th_region.setCurrentIndex(w.th_region.findData("heart"))
    t = float(np.quantile(heart, 0.8))
    w.threshold.setValue(t)
    qtbot.waitUntil(lambda: abs(s.thresholds["heart"] - w.threshold.value()) < 1e-9, timeout=5000)
    want = heart >= w.threshold.value()
    qtbot.waitUntil(lambda: np.array_equal(pred.metadata["cxrseg"]["masks"]["heart"], want), timeout=5000)
    assert not np.array_equal(want, heart >= 0.5)
    assert len(calls) == 1, "the model must not run again for a new threshold"

    # display controls reach the layers
    w.contour_box.setChecked(False)
    assert pred.contour == 0
    w.contour_box.setChecked(True)
    assert pred.contour > 0
    w.heat_opacity.setValue(0.3)
    assert viewer.layers["PHANTOM001 heatmap heart"].opacity == pytest.approx(0.3)
    w.post_box.setChecked(True)
    qtbot.waitUntil(lambda: s.postprocess and pred.metadata["cxrseg"]["postprocess"] is True, timeout=10_000)
    assert len(calls) == 1


def test_predict_subset_of_regions(viewer, qtbot, phantom_root, tiny_ckpt):
    w, s = _predict_widget(viewer, tiny_ckpt)
    s.display["heatmap_max_side"] = 128  # heatmaps shown at every 2nd pixel
    open_case(qtbot, s, phantom_root)
    w.set_regions(["left_clavicle", "left_lung"])
    assert w.selected_regions() == ("left_clavicle", "left_lung")
    wait_worker(qtbot, w.run())
    heat = sorted(ly.name for ly in viewer.layers if " heatmap " in ly.name)
    assert heat == ["PHANTOM001 heatmap left_clavicle", "PHANTOM001 heatmap left_lung"]
    h = viewer.layers["PHANTOM001 heatmap left_lung"]
    assert h.data.shape == (SIZE // 2, SIZE // 2) and s.probs["left_lung"].shape == (SIZE, SIZE)
    assert np.allclose(h.scale, 2 * viewer.layers["PHANTOM001"].scale)
    assert np.array_equal(h.data, s.probs["left_lung"][::2, ::2])
    assert set(np.unique(viewer.layers["PHANTOM001 prediction"].data)) <= {0, 2, 4}


def test_a_slow_summary_of_the_previous_model_does_not_overwrite_the_current(viewer, qtbot, tiny_ckpt, monkeypatch):
    """The dock reads the shipped model's header when it opens; a model chosen right after
    must stay on the label even when that first read finishes last."""
    import time

    from napari_cxrseg._widgets import _predict

    real = _predict.model_summary

    def slow_default(checkpoint):
        if checkpoint is None:
            time.sleep(1.5)
        return real(checkpoint)

    monkeypatch.setattr(_predict, "model_summary", slow_default)
    w, s = _predict_widget(viewer, tiny_ckpt)
    qtbot.waitUntil(lambda: "tiny" in w.model_label.text(), timeout=30_000)
    qtbot.wait(3000)  # the shipped model's summary has come back by now
    assert "tiny" in w.model_label.text()
    assert w.model_info["path"].endswith("tiny.safetensors")


def test_refine_box_follows_the_model_and_reaches_the_predictor(viewer, qtbot, phantom_root, tiny_ckpt, tmp_path):
    import shutil

    from _tiny_model import make_tiny_refiner

    from cxrseg.model import read_metadata
    from cxrseg.refine import refiner_path

    w, s = _predict_widget(viewer, tiny_ckpt)
    qtbot.waitUntil(lambda: "tiny" in w.model_label.text(), timeout=30_000)
    assert not w.refine_box.isEnabled()  # no refiner beside this model
    ck = tmp_path / "m" / "tiny.safetensors"
    ck.parent.mkdir()
    shutil.copyfile(tiny_ckpt, ck)
    make_tiny_refiner(refiner_path(ck))
    w.set_checkpoint(str(ck))
    qtbot.waitUntil(w.refine_box.isEnabled, timeout=30_000)
    assert w.refine_box.isChecked() and s.refine
    open_case(qtbot, s, phantom_root)
    wait_worker(qtbot, w.run())
    assert s.refine_id == read_metadata(refiner_path(ck))["model_id"]
    w.refine_box.setChecked(False)
    assert s.refine is False
    wait_worker(qtbot, w.run())
    assert s.refine_id is None and s.probs is not None
    # a broken refiner file: said in the tooltip; the box stays usable to turn it off
    refiner_path(ck).write_bytes(b"\x00" * 12)
    w.set_checkpoint(None)
    w.set_checkpoint(str(ck))
    qtbot.waitUntil(lambda: "unusable" in w.refine_box.toolTip(), timeout=30_000)
    assert w.refine_box.isEnabled()
    wait_worker(qtbot, w.run())  # refinement off: predicts without reading the broken file
    assert s.refine_id is None and s.probs is not None


def test_failing_model_shows_notification_not_crash(viewer, qtbot, phantom_root, tiny_ckpt, monkeypatch):
    from cxrseg.predict import Predictor

    def boom(self, image, **kw):
        raise RuntimeError("simulated CUDA out of memory")

    monkeypatch.setattr(Predictor, "predict", boom)
    w, s = _predict_widget(viewer, tiny_ckpt)
    open_case(qtbot, s, phantom_root)
    got = notifications()
    wait_worker(qtbot, w.run())
    msgs = [str(n.message) for n in got]
    assert any("Predict" in m and "simulated CUDA out of memory" in m for m in msgs), msgs
    assert s.probs is None and "PHANTOM001 prediction" not in viewer.layers
    assert w.run_btn.isEnabled()


def test_missing_shipped_model_is_reported(viewer, qtbot, monkeypatch, tmp_path):
    import cxrseg.model

    monkeypatch.setattr(cxrseg.model, "default_checkpoint_path", lambda: tmp_path / "nope.safetensors")
    from napari_cxrseg._widgets._predict import PredictWidget

    w = PredictWidget(viewer)
    qtbot.waitUntil(lambda: "missing" in w.model_label.text(), timeout=30_000)
    assert not w.run_btn.isEnabled()


def test_synchronous_mode(viewer, qtbot, phantom_root, tiny_ckpt):
    from napari_cxrseg._widgets._state import get_session

    s = get_session(viewer)
    s.synchronous = True
    s.set_model(str(tiny_ckpt))
    assert s.open_dataset(phantom_root) is None
    assert s.load_case("PHANTOM003", predict=True) is None
    assert s.case_id == "PHANTOM003" and s.probs is not None
    assert "PHANTOM003 prediction" in viewer.layers


def test_next_case_recycles_prediction_layers(viewer, qtbot, phantom_root, tiny_ckpt):
    w, s = _predict_widget(viewer, tiny_ckpt)
    open_case(qtbot, s, phantom_root, "PHANTOM001")
    wait_worker(qtbot, w.run())
    heat = viewer.layers["PHANTOM001 heatmap heart"]
    pred = viewer.layers["PHANTOM001 prediction"]
    n_layers = len(viewer.layers)
    wait_worker(qtbot, s.load_case("PHANTOM002"))
    # the old case's overlays are parked: emptied (nothing shown), not named after any case
    assert heat.name.startswith("(idle)") and not heat.data.any()
    assert pred.name.startswith("(idle)") and "masks" not in pred.metadata["cxrseg"]
    assert not any(ly.name.startswith("PHANTOM001") for ly in viewer.layers)
    assert s.get_layer("prediction") is None and s.get_layer("heatmap", "heart") is None
    wait_worker(qtbot, w.run())
    assert viewer.layers["PHANTOM002 heatmap heart"] is heat and heat.visible
    assert viewer.layers["PHANTOM002 prediction"] is pred
    assert len(viewer.layers) == n_layers
    assert heat.data.shape == (SIZE, SIZE) and np.array_equal(heat.data, s.probs["heart"])
    # the heatmap layer owns its array (written in place for the next case): never the
    # session's probability map itself
    assert not np.shares_memory(heat.data, s.probs["heart"])

    assert np.array_equal(pred.metadata["cxrseg"]["masks"]["heart"], s.probs["heart"] >= s.thresholds["heart"])
    assert pred.metadata["cxrseg"]["case_id"] == "PHANTOM002"


def test_display_stride():
    from napari_cxrseg._widgets._state import display_stride

    assert display_stride((2048, 2048), 512) == 4 and display_stride((256, 256), 512) == 1
    assert display_stride((1955, 1841), 512) == 4 and display_stride((100, 100), None) == 1


def test_hand_edits_in_prediction_layer_survive_threshold_and_rerun(viewer, qtbot, phantom_root, tiny_ckpt):
    from napari_cxrseg._layers import labels_from_masks

    w, s = _predict_widget(viewer, tiny_ckpt)
    open_case(qtbot, s, phantom_root)
    wait_worker(qtbot, w.run())
    pred = viewer.layers["PHANTOM001 prediction"]
    assert s.prediction_edits() is None
    # a brush stroke (napari's own paint: undo history and paint event) writes a label that
    # differs from the model's there, and an eraser stroke clears some predicted pixels
    heart_v = LABEL_VALUES["heart"]
    pred.brush_size = 5
    pred.paint((4, 4), 7 if pred.data[4, 4] == heart_v else heart_v)
    painted = pred.data.copy()
    rows, cols = np.nonzero(painted[SIZE // 4:, :])
    pred.paint((rows[0] + SIZE // 4, cols[0]), 0)
    painted = pred.data.copy()
    where, values = s.prediction_edits()
    assert where.any() and np.array_equal(values, painted[where])
    got = notifications()

    # new threshold for all regions: the masks change everywhere but at the painted pixels
    w.th_region.setCurrentIndex(w.th_region.findData(None))
    w.threshold.setValue(0.8)
    qtbot.waitUntil(lambda: all(abs(t - 0.8) < 1e-9 for t in s.thresholds.values()), timeout=5000)
    model = labels_from_masks({r: s.probs[r] >= 0.8 for r in s.probs}, (SIZE, SIZE))
    qtbot.waitUntil(lambda: np.array_equal(pred.data[~where], model[~where]), timeout=5000)
    assert np.array_equal(pred.data[where], painted[where]), "a threshold change must not erase hand edits"
    assert not np.array_equal(model, painted), "the threshold change should have changed the model's labels"
    assert any("hand-edited" in str(getattr(n, "message", n)) for n in got)
    # ... and the strokes can still be undone (same case: the undo history is kept)
    erased = (rows[0] + SIZE // 4, cols[0])
    after = pred.data.copy()
    pred.undo()
    assert pred.data[erased] != 0, "undo of the eraser stroke after a threshold change"
    pred.redo()
    assert np.array_equal(pred.data, after)

    # running the model again on the same case keeps them too
    wait_worker(qtbot, w.run())
    assert np.array_equal(pred.data[where], painted[where])
    # ... a new case starts clean, and "Discard hand edits" restores the model's labels
    assert w.discard_edits() is True
    assert np.array_equal(pred.data, labels_from_masks(s.masks, (SIZE, SIZE)))
    assert s.prediction_edits() is None and w.discard_edits() is False


def test_second_click_while_predicting_is_ignored(viewer, qtbot, phantom_root, tiny_ckpt, monkeypatch):
    import threading

    from cxrseg.predict import Predictor

    gate, calls = threading.Event(), []
    orig = Predictor.predict

    def slow(self, image, **kw):
        calls.append(1)
        gate.wait(20)
        return orig(self, image, **kw)

    monkeypatch.setattr(Predictor, "predict", slow)
    w, s = _predict_widget(viewer, tiny_ckpt)
    qtbot.waitUntil(lambda: w.model_info.get("ok") is True, timeout=30_000)
    open_case(qtbot, s, phantom_root)
    first = w.run()
    assert first is not None and w.run() is None and "Still predicting" in w.status.text()
    # a slow run shows itself as busy after BUSY_DELAY_MS
    qtbot.waitUntil(lambda: not w.run_btn.isEnabled() and "Predicting" in w.status.text(), timeout=5000)
    gate.set()
    wait_worker(qtbot, first)
    assert len(calls) == 1 and w.run_btn.isEnabled() and s.masks is not None
    wait_worker(qtbot, w.run())  # and the next click runs again
    assert len(calls) == 2



def test_heatmap_written_in_place_is_what_the_canvas_shows(make_napari_viewer, qtbot, phantom_root, tiny_ckpt):
    """Next case -> Run writes the heatmap into the recycled layer's own array; the canvas
    visual gets it (one ``set_data``), and a screenshot equals one taken after giving
    napari the same map through its ``data`` setter."""
    viewer = make_napari_viewer(show=True)
    w, s = _predict_widget(viewer, tiny_ckpt)
    open_case(qtbot, s, phantom_root, "PHANTOM001")
    wait_worker(qtbot, w.run())
    heat = viewer.layers["PHANTOM001 heatmap heart"]
    wait_worker(qtbot, s.load_case("PHANTOM002"))
    # only the (parked) heart heatmap is shown; nothing below touches its visibility
    for ly in viewer.layers:
        if ly is not heat:
            ly.visible = False
    heat.opacity = 1.0
    from napari.components.histogram import HistogramModel

    heat.histogram.mode = "full"
    old_counts = np.array(heat.histogram.counts)  # cached over the whole (parked, zero) array
    node = viewer.window._qt_viewer.canvas.layer_to_visual[heat].node
    uploads = []
    orig = node.set_data
    node.set_data = lambda data, *a, **k: (uploads.append(np.array(data)), orig(data, *a, **k))[1]
    wait_worker(qtbot, w.run())
    assert viewer.layers["PHANTOM002 heatmap heart"] is heat
    assert len(uploads) == 1 and np.array_equal(uploads[0].astype(np.float32), s.probs["heart"])
    # the contrast histogram follows the in-place write
    fresh = HistogramModel(heat)
    fresh.mode = "full"
    assert not np.array_equal(np.array(fresh.counts), old_counts)
    assert np.array_equal(np.array(heat.histogram.counts), np.array(fresh.counts))
    qtbot.wait(50)
    in_place = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    heat.data = np.array(s.probs["heart"])
    qtbot.wait(50)
    setter = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    assert in_place.shape == setter.shape and in_place.max() > 50
    assert np.abs(in_place - setter).max() <= 1


@pytest.mark.parametrize("contour", [0, 2])
def test_prediction_labels_written_in_place_are_what_the_canvas_shows(make_napari_viewer, qtbot, phantom_root,
                                                                       tiny_ckpt, contour):
    """Next case -> Run writes the label image into the recycled prediction layer's own
    array. Filled labels (the canvas shows that array itself) take vispy's texture upload
    alone, without a napari refresh; contours (a derived view) go through napari's refresh.
    Either way a screenshot equals one taken after napari's ``data`` setter, and a stroke
    painted on the previous case cannot be undone into the new labels."""
    viewer = make_napari_viewer(show=True)
    w, s = _predict_widget(viewer, tiny_ckpt)
    s.apply_display(contour=contour)
    s.display["heatmap_max_side"] = SIZE // 2  # heatmaps shown at every 2nd pixel
    open_case(qtbot, s, phantom_root, "PHANTOM001")
    wait_worker(qtbot, w.run())
    pred = viewer.layers["PHANTOM001 prediction"]
    pred.brush_size = 3
    pred.paint((5, 5), 7)  # an undoable stroke on the first case
    buf = pred.data
    wait_worker(qtbot, s.load_case("PHANTOM002"))
    assert pred.data is buf and not buf.any()  # parked: zeroed in place, still its own array
    for ly in viewer.layers:
        if ly is not pred:
            ly.visible = False
    pred.opacity = 1.0
    node = viewer.window._qt_viewer.canvas.layer_to_visual[pred].node
    uploads, refreshes = [], []
    orig_set, orig_refresh = node.set_data, pred.refresh
    node.set_data = lambda data, *a, **k: (uploads.append(1), orig_set(data, *a, **k))[1]
    pred.refresh = lambda *a, **k: (refreshes.append(1), orig_refresh(*a, **k))[1]
    wait_worker(qtbot, w.run())
    assert viewer.layers["PHANTOM002 prediction"] is pred and pred.data is buf
    from napari_cxrseg._layers import labels_from_masks

    assert np.array_equal(pred.data, labels_from_masks(s.masks, (SIZE, SIZE))) and pred.data.any()
    assert len(uploads) >= 1
    assert (len(refreshes) == 0) if contour == 0 else (len(refreshes) >= 1)
    heat = viewer.layers["PHANTOM002 heatmap heart"]
    assert heat.data.shape == (SIZE // 2, SIZE // 2) and np.array_equal(heat.data, s.probs["heart"][::2, ::2])
    assert heat.scale[0] == 2 * viewer.layers["PHANTOM002"].scale[0]

    before_undo = pred.data.copy()
    pred.undo()
    assert np.array_equal(pred.data, before_undo), "undo wrote a stroke of the previous case into the new labels"
    pred.refresh = orig_refresh
    qtbot.wait(50)
    in_place = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    pred.data = np.array(pred.data)
    qtbot.wait(50)
    setter = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    assert in_place.shape == setter.shape and in_place.max() > 50
    assert np.abs(in_place - setter).max() <= 1


@pytest.mark.parametrize("source", ["phantoms", "jsrt"])
def test_recycled_overlays_look_like_a_fresh_viewer(make_napari_viewer, qtbot, request, source, phantom_root,
                                                    tiny_ckpt):
    """Three cases predicted in turn (overlays recycled and written in place) leave the
    canvas exactly as a fresh viewer that shows only the third case. ``jsrt``: real cases
    with the shipped model (skipped without the data or the model)."""
    if source == "jsrt":
        from cxrseg.dataset import DatasetIndex
        from cxrseg.model import default_checkpoint_path

        root = request.getfixturevalue("real_data_root")
        if not default_checkpoint_path().is_file():
            pytest.skip("the shipped model is missing")
        ckpt = None
        ids = [c.case_id for c in DatasetIndex(root).cases[:3]]
    else:
        root, ckpt, ids = phantom_root, str(tiny_ckpt), ["PHANTOM001", "PHANTOM002", "PHANTOM003"]

    def show(case_ids):
        viewer = make_napari_viewer(show=True)
        w, s = _predict_widget(viewer, ckpt)
        s._ledger_path = None
        wait_worker(qtbot, s.open_dataset(root))
        for cid in case_ids:
            wait_worker(qtbot, s.load_case(cid))
            qtbot.waitUntil(lambda: w.model_info.get("ok") is True, timeout=60_000)
            wait_worker(qtbot, w.run(), timeout=120_000)
            assert s.case_id == cid and s.probs is not None
        viewer.window.resize(900, 700)
        qtbot.wait(100)
        viewer.reset_view()
        qtbot.wait(100)
        return viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int), [ly.name for ly in viewer.layers]

    recycled, names_recycled = show(ids)
    fresh, names_fresh = show(ids[-1:])
    assert names_recycled == names_fresh and len(names_fresh) == 8
    assert recycled.shape == fresh.shape and recycled.max() > 50
    assert np.abs(recycled - fresh).max() <= 1


def test_predictions_run_in_the_prediction_process(viewer, qtbot, phantom_root, tiny_ckpt, monkeypatch):
    import os
    import signal

    from cxrseg.predict import Predictor
    from cxrseg.serve import PredictorProcess, supported

    if not supported():
        pytest.skip("the prediction process needs a POSIX system")
    monkeypatch.setenv("CXRSEG_PRECISION", "fp32")  # here and in the child: the same engine
    calls = []
    orig = Predictor.predict

    def spy(self, image, **kw):
        calls.append(image.shape)
        return orig(self, image, **kw)

    monkeypatch.setattr(Predictor, "predict", spy)
    w, s = _predict_widget(viewer, tiny_ckpt)
    proc = PredictorProcess(str(tiny_ckpt), device=s.device, env={"OMP_NUM_THREADS": "1"})
    s.use_predictor_process(proc)
    open_case(qtbot, s, phantom_root)
    wait_worker(qtbot, w.run())
    assert calls == []  # not run in this process
    model_id = proc.info()["model_id"]
    assert s.model_id == model_id and set(s.probs) == set(REGIONS)
    want = orig(Predictor(tiny_ckpt, device=s.device, precision="fp32"), s.image.data)
    for r in REGIONS:
        np.testing.assert_array_equal(s.probs[r], want[r])
    assert viewer.layers["PHANTOM001 prediction"].data.any()

    # the process ends (killed, out of memory): the next prediction runs here
    os.kill(proc._proc.pid, signal.SIGKILL)
    proc._proc.wait(10)
    wait_worker(qtbot, w.run())
    assert len(calls) == 1 and s.model_id == model_id

    # another model: the process, serving the old one, is closed
    proc2 = PredictorProcess(str(tiny_ckpt), device=s.device, env={"OMP_NUM_THREADS": "1"})
    s.use_predictor_process(proc2)
    assert proc._failure  # replaced: closed
    s.set_model(str(tiny_ckpt), "cpu")
    assert s.predictor_process is None and not proc2.alive


def test_a_session_closes_its_prediction_process(viewer, tiny_ckpt):
    from cxrseg.serve import PredictorProcess, supported
    from napari_cxrseg._widgets._state import get_session

    if not supported():
        pytest.skip("the prediction process needs a POSIX system")
    s = get_session(viewer)
    s.set_model(str(tiny_ckpt), "cpu")
    proc = PredictorProcess(str(tiny_ckpt), device="cpu", env={"OMP_NUM_THREADS": "1"})
    s.use_predictor_process(proc)
    assert s._remote() is proc
    s.refine = False  # another refinement setting: not served by it, predicted here
    assert s._remote() is None
    s.refine = True
    s.close()
    assert s.predictor_process is None and not proc.alive and proc._proc.poll() is not None


def test_a_prediction_whose_process_fails_runs_here(tiny_ckpt):
    from cxrseg.serve import PredictorProcessError
    from napari_cxrseg._widgets._jobs import predict_job
    from napari_cxrseg._widgets._predict import _devices_of

    class Gone:
        def info(self):
            raise PredictorProcessError("the prediction process ended (exit status -9)")

        predict = devices = info

    image = np.random.default_rng(0).random((80, 60), dtype=np.float32)
    res = predict_job(image, str(tiny_ckpt), "cpu", ("heart",), {}, False, True, Gone())
    assert set(res["probs"]) == {"heart"} and res["probs"]["heart"].shape == image.shape
    assert "cpu" in _devices_of(Gone())  # the devices are then found here
