"""Review queue dock: background run, worst-first ranking, statuses persisting across viewers."""

from __future__ import annotations

import math

import pytest
from _gui_fixtures import _isolated_home, phantom_root, tiny_ckpt, wait_worker  # noqa: F401


def _make(make_napari_viewer, qtbot, root, ckpt):
    from napari_cxrseg._widgets._cases import CasesWidget
    from napari_cxrseg._widgets._review import ReviewWidget
    from napari_cxrseg._widgets._state import get_session

    viewer = make_napari_viewer()
    s = get_session(viewer)
    s.set_model(str(ckpt))
    cases = CasesWidget(viewer)
    review = ReviewWidget(viewer)
    wait_worker(qtbot, cases.open_root(root))
    return viewer, s, cases, review


def test_run_rank_mark_and_persist(make_napari_viewer, qtbot, phantom_root, tiny_ckpt, monkeypatch):
    from cxrseg.review import ReviewLedger, ledger_path

    viewer, s, cases, review = _make(make_napari_viewer, qtbot, phantom_root, tiny_ckpt)
    review.set_region("left_clavicle")
    yielded = []
    w = review.run()
    w.yielded.connect(yielded.append)
    wait_worker(qtbot, w)
    assert [m[0] for m in yielded] == ["model", "case", "case", "case"]
    # small payloads only: ids, counts and a dict of floats, never arrays
    assert all(isinstance(v, (str, int, float, bool, dict)) for m in yielded for v in m)
    assert all(isinstance(x, float) for m in yielded if m[0] == "case" for x in m[4].values())
    q = review.queue()
    assert sorted(q) == ["PHANTOM001", "PHANTOM002", "PHANTOM003"]
    ious = [review.scores[c]["left_clavicle"] for c in q]
    assert ious == sorted(ious), "worst first"
    mid = review.model_id
    led = ReviewLedger(ledger_path(phantom_root))
    assert set(led.scores(mid)) == set(q)
    led.close()
    # the Cases table shows the IoUs
    assert cases.cell_text(q[0], "left_clavicle") == f"{ious[0]:.3f}"

    # stepping loads the case and its prediction
    review.table.setCurrentCell(0, 0)
    qtbot.waitUntil(lambda: s.case_id == q[0] and s.probs is not None, timeout=30_000)
    review.comment.setText("clavicle tip missed")
    review.mark("flagged")  # advances to the next case
    qtbot.waitUntil(lambda: s.case_id == q[1], timeout=30_000)
    review.mark("approved", case_id=q[2], comment="")
    assert cases.cell_text(q[0], "status").endswith("flagged")
    assert "1 approved, 1 flagged, 1 to review" == review.counts.text()
    viewer.close()

    # a new viewer on the same dataset: statuses and scores come back without a run
    viewer2, s2, cases2, review2 = _make(make_napari_viewer, qtbot, phantom_root, tiny_ckpt)
    review2.set_region("left_clavicle")
    assert review2.model_id == mid
    assert review2.queue() == q
    assert s2.review_status(q[0]).status == "flagged"
    assert s2.review_status(q[0]).comment == "clavicle tip missed"
    assert s2.review_status(q[2]).status == "approved"
    assert cases2.cell_text(q[0], "status").endswith("flagged")
    assert review2.table.item(0, 2).text().endswith("flagged")
    assert cases2.cell_text(q[0], "left_clavicle") == f"{ious[0]:.3f}"

    # a second run reuses the ledger's scores (no prediction at all)
    from cxrseg.predict import Predictor

    calls = []
    orig = Predictor.predict
    monkeypatch.setattr(Predictor, "predict", lambda self, *a, **k: calls.append(1) or orig(self, *a, **k))
    wait_worker(qtbot, review2.run())
    assert calls == [] and review2.queue() == q


def test_cancel_keeps_partial_scores(make_napari_viewer, qtbot, tmp_path, tiny_ckpt, monkeypatch):
    from cxrseg.phantom import write_phantom_dataset
    from cxrseg.predict import Predictor

    root = tmp_path / "more"
    write_phantom_dataset(root, 6, image_format="png", size=128)
    viewer, s, cases, review = _make(make_napari_viewer, qtbot, root, tiny_ckpt)
    orig = Predictor.predict

    def slow(self, *a, **k):
        import time

        time.sleep(0.3)
        return orig(self, *a, **k)

    monkeypatch.setattr(Predictor, "predict", slow)
    w = review.run()
    aborted = []
    w.aborted.connect(lambda: aborted.append(True))
    qtbot.waitUntil(lambda: len(review.scores) >= 1, timeout=30_000)
    review.cancel()
    wait_worker(qtbot, w)
    assert aborted and 1 <= len(review.scores) < 6
    assert "Cancelled" in review.info.text()
    assert review.run_btn.isEnabled()


def test_unreadable_case_is_reported_not_fatal(make_napari_viewer, qtbot, phantom_root, tiny_ckpt):
    (phantom_root / "images" / "PHANTOM002.png").write_bytes(b"not a png")
    from _gui_fixtures import notifications

    viewer, s, cases, review = _make(make_napari_viewer, qtbot, phantom_root, tiny_ckpt)
    got = notifications()
    wait_worker(qtbot, review.run())
    assert math.isnan(review.scores["PHANTOM002"]["heart"])
    assert review.queue()[-1] == "PHANTOM002"  # unscored cases last
    assert any("PHANTOM002" in str(n.message) for n in got)
    assert not math.isnan(review.scores["PHANTOM001"]["heart"])


@pytest.mark.parametrize("status", ["approved", "flagged"])
def test_status_without_advancing(make_napari_viewer, qtbot, phantom_root, tiny_ckpt, status):
    viewer, s, cases, review = _make(make_napari_viewer, qtbot, phantom_root, tiny_ckpt)
    review.advance_box.setChecked(False)
    wait_worker(qtbot, s.load_case("PHANTOM003"))
    review.mark(status)
    assert s.review_status("PHANTOM003").status == status
    assert s.case_id == "PHANTOM003"
