"""The Correct dock: edit, save, autosave/restore (fine-tuning: test_widgets_finetune.py).

Run under a virtual X server: ``xvfb-run -a pytest tests/test_widget_correct.py``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
torch = pytest.importorskip("torch")

from qtpy.QtCore import Qt  # noqa: E402

from cxrseg.corrections import AutosaveStore, CorrectionStore  # noqa: E402
from cxrseg.model import read_metadata  # noqa: E402
from cxrseg.regions import LABEL_VALUES  # noqa: E402
from cxrseg.workspace import workdir  # noqa: E402
from napari_cxrseg._widgets import _correct  # noqa: E402
from napari_cxrseg._widgets._correct import CorrectWidget  # noqa: E402
from napari_cxrseg._widgets._state import get_session  # noqa: E402

REGION = "left_lung"
FAST = dict(
    lr=3e-3, batch_size=4, precision="fp32", aug_strength=0.2, cache_dir=False, device="cpu"
)


def _tree_hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def weak_model(tmp_path_factory):
    """Phantom dataset (128 px) + a tiny U-Net trained for 4 steps (see test_finetune)."""
    from cxrseg.config import ModelConfig, TrainConfig
    from cxrseg.phantom import write_phantom_dataset
    from cxrseg.train import train_on_dataset

    root = tmp_path_factory.mktemp("weakw")
    ds = root / "ds"
    write_phantom_dataset(ds, 10, size=128)
    mc = ModelConfig(encoder_name="resnet18", decoder_channels=(16, 16, 16, 16, 16), input_size=64)
    tc = TrainConfig(
        epochs=1, batch_size=4, lr=3e-3, precision="fp32", val_fraction=0.3, aug_strength=0.3
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CXRSEG_CACHE", str(root / "cache"))
        res = train_on_dataset(
            ds,
            root / "weak",
            model_config=mc,
            train_config=tc,
            encoder_weights=None,
            device="cpu",
            quiet=True,
            max_steps=4,
        )
    return ds, res.last_path


@pytest.fixture
def weak(weak_model, tmp_path):
    """A fresh copy of the phantom dataset per test (stores and autosaves go beside it)."""
    import shutil

    ds, ck = weak_model
    shutil.copytree(ds, tmp_path / "ds")
    return tmp_path / "ds", ck


@pytest.fixture
def errors(monkeypatch):
    seen = []
    monkeypatch.setattr(_correct, "notify_error", lambda ctx, exc: seen.append(f"{ctx}: {exc}"))
    return seen


def _setup(make_napari_viewer, ds, ck=None):
    viewer = make_napari_viewer()
    widget = CorrectWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Correct")
    s = get_session(viewer)
    s.synchronous = True
    s.open_dataset_sync(ds)
    if ck is not None:
        s.set_model(str(ck), "cpu")
    return viewer, widget, s


def test_edit_paint_and_save(
    make_napari_viewer, qtbot, weak, tmp_path, errors
):
    ds, ck = weak
    gt_before = _tree_hashes(ds / "masks")
    viewer, w, s = _setup(make_napari_viewer, ds, ck)
    seen_models = []
    s.model_changed.connect(seen_models.append)
    corrected = read_metadata(ck)["train_cases"][:3]
    for cid in corrected:
        s.load_case_sync(cid)
        s.predict_sync()
        w.set_regions([REGION])
        w.source_combo.setCurrentText("prediction")
        qtbot.mouseClick(w.edit_button, Qt.LeftButton)
        layer = viewer.layers[f"{cid} edit {REGION}"]
        assert layer is viewer.layers.selection.active
        assert layer.mode == "paint" and layer.selected_label == LABEL_VALUES[REGION]
        np.testing.assert_array_equal(layer.data != 0, s.masks[REGION])
        # the annotator repaints the region: erase what is wrong, paint what is missing
        truth = s.truth[REGION]
        layer.paint((5, 5), 0)  # an eraser stroke (outside the lung)
        layer.data = np.where(truth, LABEL_VALUES[REGION], 0).astype(np.uint8)
        layer.paint(
            tuple(int(x) for x in np.argwhere(truth)[len(np.argwhere(truth)) // 2]),
            LABEL_VALUES[REGION],
        )
        qtbot.mouseClick(w.save_button, Qt.LeftButton)
        (v,) = w.last_saved
        assert (v.case, v.region, v.version) == (cid, REGION, 1)
        assert v.meta["model_id"] == s.model_id and v.meta["iou_truth"] > 0.95
        assert v.meta["iou_prediction"] < 0.9 and v.meta["pixels_changed"] > 0
        assert "v001" in w.status_label.text()
        # nothing changed since: a second click saves nothing
        assert w.save() == []
    store = CorrectionStore(w.store_root(), dataset_root=ds)
    assert store.root == (ds / "corrections").resolve()
    assert sorted(store.cases()) == sorted(corrected)

    assert _tree_hashes(ds / "masks") == gt_before


def test_autosave_survives_a_restart_and_is_restored(make_napari_viewer, qtbot, weak, errors):
    ds, _ck = weak
    viewer, w, s = _setup(make_napari_viewer, ds)
    w._timer.setInterval(50)
    s.load_case_sync("PHANTOM004")
    (layer,) = w.edit(["heart"], "ground truth")
    value = LABEL_VALUES["heart"]
    np.testing.assert_array_equal(layer.data == value, s.truth["heart"])
    autos = AutosaveStore(workdir(ds))
    qtbot.wait(200)
    assert autos.pending() == []  # unchanged since Edit: nothing to autosave
    layer.brush_size = 7
    layer.paint((20, 20), value)
    layer.paint((64, 64), 0)
    edited = np.asarray(layer.data) != 0
    qtbot.waitUntil(lambda: len(autos.pending("PHANTOM004")) == 1, timeout=5000)
    np.testing.assert_array_equal(autos.restore("PHANTOM004", "heart"), edited)

    # "crash": a new viewer and widget, nothing saved
    viewer2, w2, s2 = _setup(make_napari_viewer, ds)
    s2.load_case_sync("PHANTOM001")
    assert w2.restore_button.isHidden()
    s2.load_case_sync("PHANTOM004")
    assert not w2.restore_button.isHidden()
    assert w2.restore_button.text().startswith("Restore unsaved edit (")
    qtbot.mouseClick(w2.restore_button, Qt.LeftButton)
    restored = viewer2.layers["PHANTOM004 edit heart"]
    np.testing.assert_array_equal(np.asarray(restored.data) != 0, edited)
    assert w2.restore_button.isHidden()
    (v,) = w2.save()
    np.testing.assert_array_equal(v.load_mask(), edited)
    assert autos.pending() == []
    assert not errors, errors


def test_changing_case_autosaves_unsaved_strokes(make_napari_viewer, qtbot, weak, errors):
    ds, _ck = weak
    viewer, w, s = _setup(make_napari_viewer, ds)
    w._timer.stop()  # only the case change may save it
    s.load_case_sync("PHANTOM002")
    (layer,) = w.edit(["right_clavicle"], "ground truth")
    layer.paint((30, 30), LABEL_VALUES["right_clavicle"])
    edited = np.asarray(layer.data) != 0
    s.load_case_sync("PHANTOM003")
    assert "PHANTOM002 edit right_clavicle" not in viewer.layers
    autos = AutosaveStore(workdir(ds))
    np.testing.assert_array_equal(autos.restore("PHANTOM002", "right_clavicle"), edited)
    s.load_case_sync("PHANTOM002")
    assert not w.restore_button.isHidden()
    w.discard_pending()
    assert w.restore_button.isHidden() and autos.pending() == []
    assert not errors, errors


def test_edit_layer_in_progress_is_never_replaced(make_napari_viewer, weak, errors):
    ds, _ck = weak
    viewer, w, s = _setup(make_napari_viewer, ds)
    s.load_case_sync("PHANTOM001")
    (layer,) = w.edit(["heart"], "ground truth")
    layer.paint((10, 10), LABEL_VALUES["heart"])
    data = np.array(layer.data)
    (again,) = w.edit(["heart"], "ground truth")
    assert again is layer
    np.testing.assert_array_equal(again.data, data)


def test_errors_become_notifications(make_napari_viewer, weak, errors):
    ds, _ck = weak
    viewer, w, s = _setup(make_napari_viewer, ds)
    assert w.save() == []
    assert w.edit(["heart"]) == [] and "no case" in errors[-1]
    s.load_case_sync("PHANTOM001")
    assert w.edit(["heart"], "prediction") == [] and "no prediction" in errors[-1]
    assert w.save() == [] and "click Edit first" in errors[-1]
    w.set_regions([])
    assert w.edit() == [] and "tick at least one region" in errors[-1]
