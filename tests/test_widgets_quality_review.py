"""Review queue and Predict dock without ground truth: ranked by estimated quality, failing
checks shown, results dropped when the case changed meanwhile."""

from __future__ import annotations

import math
import shutil

import pytest
from _gui_fixtures import _isolated_home, phantom_root, tiny_ckpt, wait_worker  # noqa: F401

from cxrseg.regions import DISPLAY_NAMES, REGIONS


@pytest.fixture
def rated_ckpt(tiny_ckpt, tmp_path):  # noqa: F811
    """The tiny model with a quality file: a hand-made estimator (more disagreement and
    entropy -> lower estimated Jaccard, an intercept per region)."""
    from cxrseg.quality import FEATURES, save_quality_params

    ck = tmp_path / "rated" / "tiny.safetensors"
    ck.parent.mkdir()
    shutil.copy(tiny_ckpt, ck)
    est = {}
    for mode, names in FEATURES.items():
        est[mode] = {"features": list(names), "pooled": True, "regions": {
            r: {"mean": [0.0] * len(names), "scale": [1.0] * len(names),
                "coef": [0.3 if n in ("tta_disagreement", "entropy") else 0.05 for n in names],
                "intercept": -0.5 + 0.1 * i, "n": 10}
            for i, r in enumerate(REGIONS)}}
    save_quality_params(ck, {"reference": {}, "estimators": est})
    return ck


@pytest.fixture
def films(phantom_root, tmp_path):  # noqa: F811
    """The phantom images alone (no masks anywhere near them)."""
    out = tmp_path / "films"
    out.mkdir()
    for p in sorted((phantom_root / "images").glob("*.png")):
        shutil.copy(p, out / p.name)
    return sorted(out.glob("*.png"))


def _review(make_napari_viewer, qtbot, ckpt):
    from napari_cxrseg._widgets._review import ReviewWidget
    from napari_cxrseg._widgets._state import get_session

    viewer = make_napari_viewer()
    s = get_session(viewer)
    s.set_model(str(ckpt))
    return viewer, s, ReviewWidget(viewer)


def test_queue_without_ground_truth_ranks_by_estimate(make_napari_viewer, qtbot, films, rated_ckpt):
    from cxrseg.io import read_image
    from napari_cxrseg._widgets._quality import quality_job

    viewer, s, review = _review(make_napari_viewer, qtbot, rated_ckpt)
    wait_worker(qtbot, s.open_files(films))
    assert review.resolved_score_kind() == "estimate"  # auto: no case has a mask
    assert not review.table.isColumnHidden(4)
    review.set_region("heart")
    yielded = []
    w = review.run()
    w.yielded.connect(yielded.append)
    wait_worker(qtbot, w)
    assert [m[0] for m in yielded] == ["model", "case", "case", "case"]
    q = review.queue()
    assert sorted(q) == ["PHANTOM001", "PHANTOM002", "PHANTOM003"]
    est = [review.scores[c]["heart"] for c in q]
    assert all(math.isfinite(v) for v in est) and est == sorted(est), "worst estimate first"
    assert len(set(est)) == 3
    # the table's numbers are the estimate of the same case assessed on its own
    rep = quality_job(read_image(films[[f.stem for f in films].index(q[0])]).data,
                      checkpoint=rated_ckpt, device="cpu", maps=False)
    assert review.scores[q[0]]["heart"] == pytest.approx(rep.regions["heart"].estimated_jaccard, abs=1e-6)
    assert review.table.item(0, 1).text() == f"~{est[0]:.2f}"
    header = review.table.horizontalHeaderItem(1)
    assert header.text().startswith("est. Jaccard") and "without ground truth" in header.toolTip()
    # each row shows its failing checks (a random model fails several), all in the tooltip
    for row, cid in enumerate(q):
        msgs = review.failing[cid]
        cell = review.table.item(row, 4)
        if msgs:
            assert cell.text().startswith(msgs[0]) and cell.toolTip() == "\n".join(msgs)
        else:
            assert cell.text() == "✓" and cell.toolTip() == "all plausibility checks pass"
    assert any(review.failing.values())
    assert "without ground truth" in review.info.text()
    # re-ranking by another region re-sorts the same estimates
    review.set_region("left_lung")
    lung = [review.scores[c]["left_lung"] for c in review.queue()]
    assert lung == sorted(lung)
    # estimates are not measurements: nothing reaches the Cases table's IoUs or the ledger
    assert not s.case_scores
    assert s.ledger is None or not s.ledger.latest_model_id()


def test_ground_truth_keeps_the_true_iou(make_napari_viewer, qtbot, phantom_root, rated_ckpt):  # noqa: F811
    viewer, s, review = _review(make_napari_viewer, qtbot, rated_ckpt)
    wait_worker(qtbot, s.open_dataset(phantom_root))
    assert review.resolved_score_kind() == "iou"
    assert review.table.isColumnHidden(4)
    review.set_region("heart")
    yielded = []
    w = review.run()
    w.yielded.connect(yielded.append)
    wait_worker(qtbot, w)
    assert [m[5] for m in yielded if m[0] == "case"] == [False] * 3  # review_job's "cached" flag
    assert review.table.horizontalHeaderItem(1).text().startswith("IoU")
    assert set(s.case_scores) == set(review.queue())  # measured: shown in the Cases table
    # asking for the estimate on the same cases switches the queue over
    review.set_score_mode("estimate")
    assert review.queue() == [] and not review.table.isColumnHidden(4)
    wait_worker(qtbot, review.run())
    est = [review.scores[c]["heart"] for c in review.queue()]
    assert len(est) == 3 and est == sorted(est)
    assert review.table.horizontalHeaderItem(1).text().startswith("est. Jaccard")


def _predict_dock(make_napari_viewer, qtbot, ckpt, films):
    from napari_cxrseg._widgets._predict import PredictWidget
    from napari_cxrseg._widgets._state import get_session

    viewer = make_napari_viewer()
    s = get_session(viewer)
    s.set_model(str(ckpt))
    dock = PredictWidget(viewer)
    wait_worker(qtbot, s.open_files(films))
    return viewer, s, dock


def _uncertainty(viewer):
    return [ly for ly in viewer.layers if (ly.metadata.get("cxrseg") or {}).get("kind") == "uncertainty"]


def test_predict_dock_quality_check_and_uncertainty_maps(make_napari_viewer, qtbot, films, rated_ckpt):
    viewer, s, dock = _predict_dock(make_napari_viewer, qtbot, rated_ckpt, films)
    panel = dock.quality
    assert not panel.check_box.isChecked() and not panel.maps_box.isChecked()  # both off by default
    wait_worker(qtbot, s.load_case("PHANTOM001", predict=True))
    qtbot.waitUntil(lambda: s.probs is not None, timeout=30_000)
    assert panel.report is None and not _uncertainty(viewer)  # nothing runs unless asked
    panel.check_box.setChecked(True)  # assesses the prediction already shown
    qtbot.waitUntil(lambda: panel.report_case == "PHANTOM001", timeout=30_000)
    rows = panel.rows()
    assert sorted(r[0] for r in rows) == sorted(DISPLAY_NAMES[r] for r in REGIONS)
    for (name, est, checks), (r, q) in zip(rows, panel.report.regions.items(), strict=True):
        assert name == DISPLAY_NAMES[r]
        assert est == f"~{q.estimated_jaccard:.2f}"
        msgs = list(dict.fromkeys(c.message for c in q.failing))
        assert checks == ("; ".join(msgs) if msgs else "✓")
    assert "PHANTOM001" in panel.summary.text()
    assert not _uncertainty(viewer)  # maps only when asked
    panel.maps_box.setChecked(True)
    qtbot.waitUntil(lambda: len(_uncertainty(viewer)) == len(REGIONS), timeout=30_000)
    layers = _uncertainty(viewer)
    assert all(not ly.visible for ly in layers)  # hidden by default
    assert {ly.name for ly in layers} == {f"PHANTOM001 uncertainty {r}" for r in REGIONS}
    assert all(ly.data.shape == s.image.shape for ly in layers)
    assert float(max(ly.data.max() for ly in layers)) > 0  # a random model disagrees with itself
    # the next case: the old maps go, the new prediction gets its own check and maps
    wait_worker(qtbot, s.load_case("PHANTOM002", predict=True))
    qtbot.waitUntil(lambda: panel.report_case == "PHANTOM002"
                    and {ly.name for ly in _uncertainty(viewer)}
                    == {f"PHANTOM002 uncertainty {r}" for r in REGIONS}, timeout=30_000)
    panel.maps_box.setChecked(False)
    assert not _uncertainty(viewer)


def test_quality_result_of_a_previous_case_is_dropped(make_napari_viewer, qtbot, films, rated_ckpt,
                                                      monkeypatch):
    import threading

    from napari_cxrseg._widgets import _quality_panel

    viewer, s, dock = _predict_dock(make_napari_viewer, qtbot, rated_ckpt, films)
    panel = dock.quality
    panel.set_enabled(True, maps=True)
    started, gate = [], threading.Event()
    orig = _quality_panel.quality_job

    def slow(*a, **k):  # holds the assessment until the case has changed
        started.append(1)
        gate.wait(60)
        return orig(*a, **k)

    monkeypatch.setattr(_quality_panel, "quality_job", slow)
    wait_worker(qtbot, s.load_case("PHANTOM001", predict=True))
    qtbot.waitUntil(lambda: bool(started), timeout=30_000)  # PHANTOM001 is being assessed
    w = panel._worker
    wait_worker(qtbot, s.load_case("PHANTOM002", predict=False))  # the case changes meanwhile
    assert s.case_id == "PHANTOM002"
    with qtbot.waitSignal(w.finished, timeout=60_000):
        gate.set()
    assert panel.dropped == 1 and panel.report is None
    assert not _uncertainty(viewer)  # no maps of PHANTOM001 over PHANTOM002
    assert "PHANTOM001" not in panel.summary.text()
