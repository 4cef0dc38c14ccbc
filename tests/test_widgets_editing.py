"""One editing path: whatever layer the user paints is autosaved, savable and reaches
fine-tuning; Edit starts from the latest correction; Compare follows the edit."""

from __future__ import annotations

import numpy as np
import pytest
from _gui_fixtures import _isolated_home, phantom_root, tiny_ckpt  # noqa: F401

from cxrseg.regions import LABEL_VALUES

CASE = "PHANTOM002"


def _setup(make_napari_viewer, root, ckpt, *, compare: bool = False):
    from napari_cxrseg._widgets._compare import CompareWidget
    from napari_cxrseg._widgets._correct import CorrectWidget
    from napari_cxrseg._widgets._state import get_session

    viewer = make_napari_viewer()
    s = get_session(viewer)
    s.synchronous = True
    s.set_model(str(ckpt), "cpu")
    w = CorrectWidget(viewer)
    w._timer.stop()  # the tests call autosave_now themselves
    cmp_ = CompareWidget(viewer) if compare else None
    s.open_dataset_sync(root)
    return viewer, s, w, cmp_


def _stroke(layer, value: int, rows: slice, cols: slice) -> None:
    data = np.array(layer.data)
    data[rows, cols] = value
    layer.data = data  # as napari's paint does: the layer's data changes in place of a brush
    layer.events.paint(value=[])


def test_strokes_in_the_prediction_layer_survive_a_crash_and_reach_finetuning(
        make_napari_viewer, qtbot, phantom_root, tiny_ckpt):
    from cxrseg.corrections import AutosaveStore, CorrectionStore
    from cxrseg.workspace import workdir

    viewer, s, w, _ = _setup(make_napari_viewer, phantom_root, tiny_ckpt)
    s.load_case_sync(CASE)
    s.predict_sync()
    pred = s.get_layer("prediction")
    model_heart = s.masks["heart"].copy()
    # the user paints heart into an empty corner of the layer they see
    _stroke(pred, LABEL_VALUES["heart"], slice(2, 12), slice(2, 12))
    assert s.prediction_edits() is not None
    assert w.pending() == []  # being edited in this session: nothing to restore
    # regions under the stroke lose those pixels (a label image has one region a pixel)
    touched = {"heart"} | {r for r, m in s.masks.items() if m[2:12, 2:12].any()}
    files = w.autosave_now()
    assert len(files) == len(touched)
    autos = AutosaveStore(workdir(phantom_root))
    assert {e.region for e in autos.pending(CASE)} == touched
    want = model_heart.copy()
    want[2:12, 2:12] = True
    np.testing.assert_array_equal(autos.restore(CASE, "heart"), want)

    # "kill": the viewer goes without saving; a new one (a restart) restores and saves
    del viewer, s, w
    viewer2, s2, w2, _ = _setup(make_napari_viewer, phantom_root, tiny_ckpt)
    s2.load_case_sync(CASE)
    assert not w2.restore_button.isHidden()
    layers = w2.restore()
    assert {ly.name for ly in layers} == {f"{CASE} edit {r}" for r in touched}
    (v,) = [v for v in w2.save() if v.region == "heart"]
    np.testing.assert_array_equal(v.load_mask(), want)
    assert autos.pending(CASE) == []
    # fine-tuning reads the store's latest versions: the stroke is there
    store = CorrectionStore.for_dataset(phantom_root)
    latest = {(x.case, x.region): x for x in store.latest_versions()}
    np.testing.assert_array_equal(latest[(CASE, "heart")].load_mask(), want)


def test_prediction_layer_strokes_save_directly(make_napari_viewer, qtbot, phantom_root, tiny_ckpt):
    viewer, s, w, _ = _setup(make_napari_viewer, phantom_root, tiny_ckpt)
    s.load_case_sync(CASE)
    s.predict_sync()
    assert w.save() == []  # nothing painted yet
    pred = s.get_layer("prediction")
    lung = s.masks["left_lung"]
    rows, cols = np.nonzero(lung)
    r0, c0 = int(rows.mean()), int(cols.mean())
    _stroke(pred, 0, slice(r0 - 3, r0 + 3), slice(c0 - 3, c0 + 3))  # erase inside the left lung
    saved = w.save()
    assert {v.region for v in saved} >= {"left_lung"}
    v = next(v for v in saved if v.region == "left_lung")
    assert v.meta["source"] == "prediction layer"
    m = v.load_mask()
    assert not m[r0 - 3:r0 + 3, c0 - 3:c0 + 3].any() and m.sum() < lung.sum()
    assert w.save() == []  # saved: nothing new
    assert w.autosave_now() == []


@pytest.mark.parametrize("source", ["latest correction", "prediction", "ground truth"])
def test_edit_starts_from_the_latest_correction(make_napari_viewer, qtbot, phantom_root, tiny_ckpt, source):
    viewer, s, w, _ = _setup(make_napari_viewer, phantom_root, tiny_ckpt)
    assert w.source_combo.currentText() == "latest correction"  # the default
    s.load_case_sync(CASE)
    s.predict_sync()
    (layer,) = w.edit(["heart"], "ground truth")
    _stroke(layer, LABEL_VALUES["heart"], slice(0, 8), slice(0, 8))
    corrected = np.asarray(layer.data) != 0
    w.save()
    # another case, then back: the saved correction is shown
    s.load_case_sync("PHANTOM001")
    assert f"{CASE} edit heart" not in viewer.layers
    s.load_case_sync(CASE)
    shown = viewer.layers[f"{CASE} edit heart"]
    np.testing.assert_array_equal(np.asarray(shown.data) != 0, corrected)
    assert w.save() == [] and w.pending() == []  # shown, not an unsaved change
    s.predict_sync()
    viewer.layers.remove(shown)
    (layer,) = w.edit(["heart"], source)
    want = {"latest correction": corrected, "prediction": s.masks["heart"], "ground truth": s.truth["heart"]}[source]
    np.testing.assert_array_equal(np.asarray(layer.data) != 0, want)
    # a region without a saved correction starts from the prediction
    (clav,) = w.edit(["left_clavicle"], "latest correction")
    np.testing.assert_array_equal(np.asarray(clav.data) != 0, s.masks["left_clavicle"])


def test_compare_follows_the_edit_and_the_overlay_stays_on_top(make_napari_viewer, qtbot, phantom_root, tiny_ckpt):
    from cxrseg.metrics import jaccard

    viewer, s, w, cmp_ = _setup(make_napari_viewer, phantom_root, tiny_ckpt, compare=True)
    s.load_case_sync(CASE)
    s.predict_sync()
    assert cmp_.source.currentText() == f"{CASE} prediction"
    cmp_.err_region.setCurrentIndex(0)  # heart: the overlay must follow the edited region
    (layer,) = w.edit(["left_clavicle"], "ground truth")
    _stroke(layer, 0, slice(None), slice(128 + 16, None))  # wipe the outer part (the patient's left: image right)
    qtbot.waitUntil(lambda: not cmp_._debounce.pending(), timeout=5000)
    cmp_.refresh(force=True)
    assert cmp_.source.currentText() == layer.name
    assert cmp_.err_region.currentData() == "left_clavicle"
    got = cmp_.scores["left_clavicle"]["jaccard"]
    assert got == pytest.approx(jaccard(np.asarray(layer.data) != 0, s.truth["left_clavicle"]))
    assert got < 1.0 and set(cmp_.scores) == {"left_clavicle"}
    names = [ly.name for ly in viewer.layers]
    assert names.index(f"{CASE} errors") > names.index(layer.name), names
