"""The Fine-tune dock: plan and validation cases, progress while preparing, cancel, switch model.

Run under a virtual X server: ``xvfb-run -a pytest tests/test_widgets_finetune.py``.
"""

from __future__ import annotations

import shutil

import pytest

pytest.importorskip("napari")
torch = pytest.importorskip("torch")

from qtpy.QtCore import Qt  # noqa: E402

from cxrseg.corrections import CorrectionStore  # noqa: E402
from cxrseg.dataset import DatasetIndex  # noqa: E402
from cxrseg.model import read_metadata  # noqa: E402
from cxrseg.workspace import workdir  # noqa: E402
from napari_cxrseg._widgets import _finetune  # noqa: E402
from napari_cxrseg._widgets._finetune import FinetuneWidget  # noqa: E402
from napari_cxrseg._widgets._state import get_session  # noqa: E402

REGION = "left_lung"
FAST = dict(lr=3e-3, batch_size=4, precision="fp32", aug_strength=0.2, device="cpu")


@pytest.fixture(scope="module")
def weak_model(tmp_path_factory):
    """Phantom dataset (128 px) + a tiny U-Net trained for 4 steps (see test_finetune)."""
    from test_finetune import make_weak_model

    return make_weak_model(tmp_path_factory.mktemp("weakft"), n_cases=10)


@pytest.fixture
def weak(weak_model, tmp_path):
    ds, ck = weak_model
    shutil.copytree(ds, tmp_path / "ds")
    return tmp_path / "ds", ck


@pytest.fixture
def errors(monkeypatch):
    seen = []
    monkeypatch.setattr(_finetune, "notify_error", lambda ctx, exc: seen.append(f"{ctx}: {exc}"))
    return seen


def _correct(ds, cases, region=REGION):
    """The phantoms' exact masks stand in for saved corrections (the Correct dock's job)."""
    from cxrseg.workspace import corrections_dir

    store = CorrectionStore(corrections_dir(ds), dataset_root=ds)
    index = DatasetIndex(ds)
    for c in cases:
        store.save(c, region, index[c].load_masks([region])[region], annotator="test", model_id="weak",
                   image_path=index[c].image_path)
    return store


def _setup(make_napari_viewer, ds, ck):
    viewer = make_napari_viewer()
    s = get_session(viewer)
    s.synchronous = True
    s.set_model(str(ck), "cpu")
    s.open_dataset_sync(ds)
    w = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(w, name="Fine-tune")
    return viewer, w, s


def test_plan_lists_validation_cases_and_explains_none(make_napari_viewer, weak, errors):
    ds, ck = weak
    meta = read_metadata(ck)
    viewer, w, s = _setup(make_napari_viewer, ds, ck)
    assert "No saved correction" in w.plan_label.text()
    assert w.start_finetune() is None and "no corrections" in errors[-1]
    assert "no corrections saved yet" in w.status_label.text()
    corrected = meta["train_cases"][:2]
    _correct(ds, corrected)
    w.refresh_plan()
    shown = [w.val_list.item(i).text() for i in range(w.val_list.count())]
    assert shown and not set(shown) & set(corrected)
    assert sorted(w.validation_cases()) == sorted(set(meta["val_cases"]) - set(corrected))
    assert f"{len(w.validation_cases())} validation case(s)" in w.plan_label.text()
    # unticking every case explains what that means before anything starts
    w.set_validation_cases([])
    assert "0 validation cases" in w.plan_label.text() and "write even if" in w.plan_label.text()
    assert w.finetune_params()["val_cases"] == []
    w.set_validation_cases(shown[:1])
    assert w.finetune_params()["val_cases"] == shown[:1]


def test_finetune_progress_status_cache_and_switch(make_napari_viewer, qtbot, weak, errors):
    ds, ck = weak
    viewer, w, s = _setup(make_napari_viewer, ds, ck)
    corrected = read_metadata(ck)["train_cases"][:3]
    _correct(ds, corrected)
    w.refresh_plan()
    seen = []
    w.progress.valueChanged.connect(lambda v: seen.append((v, w.status_label.text())))
    s.synchronous = False
    worker = w.start_finetune(epochs=3, tolerance=1.0, **FAST)
    assert worker is not None
    with qtbot.waitSignal(worker.finished, timeout=300_000):
        pass
    res = w.last_result
    assert not errors, errors
    assert res is not None and res.written, res.reason if res else None
    # the bar moved while the data was prepared, with the status in this dock
    prep = [v for v, text in seen if text.startswith("preparing the data")]
    assert prep and 0 < min(prep) < 20, seen[:10]
    assert w.progress.value() == 100 and REGION in w.report_text.toPlainText()
    assert "new model" in w.status_label.text()
    # the replay cache is in the dataset's working folder
    assert list((workdir(ds) / "cache").glob("arrays-*.npz"))
    assert not w.use_model_button.isHidden()
    s.synchronous = True
    s.load_case_sync("PHANTOM001")
    qtbot.mouseClick(w.use_model_button, Qt.LeftButton)
    assert s.checkpoint == str(res.path) and s.model_id == res.model_id


def test_cancel_stops_finetuning_and_writes_nothing(make_napari_viewer, qtbot, weak, errors):
    ds, ck = weak
    viewer, w, s = _setup(make_napari_viewer, ds, ck)
    _correct(ds, ["PHANTOM002"], "heart")
    w.refresh_plan()
    s.synchronous = False
    worker = w.start_finetune(epochs=100, tolerance=1.0, cache_dir=False, **FAST)
    qtbot.waitUntil(lambda: w.progress.value() > 20, timeout=120_000)
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        qtbot.mouseClick(w.cancel_button, Qt.LeftButton)
    models = w.models_dir()
    qtbot.waitUntil(lambda: not list(models.glob(".cxrseg-finetune-*")), timeout=10_000)
    assert not list(models.glob("*.safetensors"))
    assert w.finetune_button.isEnabled() and w.use_model_button.isHidden()
    assert "cancelled" in w.status_label.text()
    assert not errors, errors


def test_search_is_the_default_and_reports_every_setting(make_napari_viewer, qtbot, weak, errors):
    from cxrseg.finetune import SEARCH_CANDIDATES

    ds, ck = weak
    viewer, w, s = _setup(make_napari_viewer, ds, ck)
    _correct(ds, read_metadata(ck)["train_cases"][:1])
    w.refresh_plan()
    assert w.search_check.isChecked() and not w.epochs_spin.isEnabled() and not w.replay_spin.isEnabled()
    p = w.finetune_params()
    assert p["epochs"] is None and p["replay_ratio"] is None and p["search"] == "auto"
    statuses = []
    s.synchronous = False
    fast = {k: v for k, v in FAST.items() if k != "lr"}  # a given lr would fix the recipe
    worker = w.start_finetune(tolerance=1.0, max_steps=2, **fast)
    worker.yielded.connect(lambda ev: statuses.append(w.status_label.text()))
    values = []
    w.progress.valueChanged.connect(values.append)
    with qtbot.waitSignal(worker.finished, timeout=600_000):
        pass
    res = w.last_result
    assert not errors, errors
    assert res is not None and res.written and len(res.candidates) == len(SEARCH_CANDIDATES)
    assert any(t.startswith(f"setting 2/{len(SEARCH_CANDIDATES)}: lr") for t in statuses)
    # one bar over all the settings: it never runs backwards
    assert values and values == sorted(values), values
    text = w.report_text.toPlainText()
    assert "settings tried" in text and "<- written" in text and REGION in text
    # unchecked: one setting with the spin boxes' values
    w.search_check.setChecked(False)
    assert w.epochs_spin.isEnabled() and w.replay_spin.isEnabled()
    p = w.finetune_params()
    assert p["epochs"] == w.epochs_spin.value() and p["search"] is False
