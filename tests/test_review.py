"""cxrseg.review: the SQLite review ledger, worst-first ranking and the review-run loop."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from cxrseg.regions import REGIONS
from cxrseg.review import (
    STATUS_LABELS,
    STATUSES,
    ReviewLedger,
    case_ious,
    iter_review_run,
    ledger_path,
    rank_worst_first,
)


def test_status_roundtrip_and_persistence(tmp_path):
    path = tmp_path / "w" / "review.sqlite"
    with ReviewLedger(path) as led:
        assert led.get("A").status == "unreviewed"
        led.set_status("A", "flagged", comment="clavicle tip", reviewer="bob")
        led.set_status("B", "approved")
        led.set_status("A", "FLAGGED", comment="clavicle tip, twice", reviewer="bob")
        assert led.counts() == {"unreviewed": 0, "approved": 1, "flagged": 1}
    with ReviewLedger(path) as led:  # a new connection (a restart) sees the same
        a = led.get("A")
        assert (a.status, a.comment, a.reviewer) == ("flagged", "clavicle tip, twice", "bob")
        assert a.updated and sorted(led.all()) == ["A", "B"]
        with pytest.raises(ValueError, match="approved"):
            led.set_status("A", "looks fine")
        with pytest.raises(ValueError):
            led.set_status("", "approved")
    assert set(STATUSES) == {"unreviewed", "approved", "flagged"}
    # one label per status, shown by the Cases and Review docks; unreviewed cells stay empty
    assert set(STATUS_LABELS) == set(STATUSES) and STATUS_LABELS["unreviewed"] == ""
    assert all(STATUS_LABELS[st].endswith(st) for st in ("approved", "flagged"))


def test_scores_per_model(tmp_path):
    with ReviewLedger(tmp_path / "r.sqlite") as led:
        led.record_scores("m1", {"A": {"heart": 0.9, "left clavicle": float("nan")}, "B": {"heart": 0.5}})
        led.record_scores("m2", {"A": {"heart": 0.1}})
        led.record_scores("m1", {"B": {"heart": 0.6}})  # replaces, and m1 becomes the latest
        s1 = led.scores("m1")
        assert s1["A"]["heart"] == 0.9 and math.isnan(s1["A"]["left_clavicle"]) and s1["B"]["heart"] == 0.6
        assert led.scores("m2") == {"A": {"heart": 0.1}}
        assert led.latest_model_id() == "m1" and set(led.model_ids()) == {"m1", "m2"}
        assert led.scores("unknown") == {}
        with pytest.raises(ValueError):
            led.record_scores("m1", {"A": {"spleen": 0.3}})
        assert led.scores("m1")["A"]["heart"] == 0.9  # the failed write left nothing behind


def test_concurrent_writers(tmp_path):
    path = tmp_path / "r.sqlite"
    led = ReviewLedger(path)
    other = ReviewLedger(path)  # a second connection, as another process would have
    errors = []

    def work(k):
        try:
            for i in range(40):
                (led if k % 2 else other).record_scores("m", {f"C{k}-{i}": {"heart": i / 40}})
                led.set_status(f"C{k}-{i}", "approved")
        except Exception as exc:  # pragma: no cover - the failure is asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(led.scores("m")) == 160 and led.counts()["approved"] == 160
    led.close()
    other.close()


def test_not_a_database(tmp_path):
    bad = tmp_path / "review.sqlite"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ValueError, match="review.sqlite"):
        ReviewLedger(bad)


def test_ledger_path_read_only_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRSEG_HOME", str(tmp_path / "home"))
    data = tmp_path / "data"
    data.mkdir()
    assert ledger_path(data) == data.resolve() / ".cxrseg" / "review.sqlite"
    data.chmod(0o500)
    try:
        import os

        if os.access(data, os.W_OK):  # root ignores permissions
            pytest.skip("running as root: cannot make a read-only folder")
        assert str(ledger_path(data)).startswith(str(tmp_path / "home"))
    finally:
        data.chmod(0o700)


def test_rank_worst_first():
    assert rank_worst_first({"a": 0.9, "b": 0.2, "c": None, "d": 0.2, "e": float("nan"), "f": 0.0}) == [
        "f", "b", "d", "a", "c", "e"]
    assert rank_worst_first({}) == []


def test_case_ious_resizes_prediction_onto_reference_grid():
    t = np.zeros((4, 4), bool)
    t[:2] = True
    p = np.zeros((8, 8), bool)
    p[:4] = True  # the same region at twice the resolution
    assert case_ious({"heart": p, "left_lung": p}, {"heart": t}, ["heart", "left_lung"]) == pytest.approx(
        {"heart": 1.0, "left_lung": float("nan")}, nan_ok=True)


class _FakeConfig:
    thresholds = {r: 0.5 for r in REGIONS}


class _Oracle:
    """A predictor that returns the reference masks (perfect) or nothing (empty)."""

    regions = REGIONS
    config = _FakeConfig()

    def __init__(self, truth_by_shape, empty=False):
        self.truth, self.empty, self.calls = truth_by_shape, empty, 0

    def predict(self, image, *, regions=None):
        self.calls += 1
        t = self.truth[float(image.mean())]
        return {r: (np.zeros(image.shape, np.float32) if self.empty else t[r].astype(np.float32)) for r in regions}


def test_iter_review_run(tmp_path):
    from cxrseg.dataset import DatasetIndex
    from cxrseg.phantom import write_phantom_dataset

    root = tmp_path / "d"
    write_phantom_dataset(root, 3, image_format="png", size=128)
    index = DatasetIndex(root)
    truth = {float(c.load_image().data.mean()): c.load_masks() for c in index.cases}
    out = list(iter_review_run(_Oracle(truth), index.cases, ["left clavicle", "heart"]))
    assert [(i, n, cid) for i, n, cid, _ in out] == [(1, 3, "PHANTOM001"), (2, 3, "PHANTOM002"), (3, 3, "PHANTOM003")]
    assert all(ious == {"heart": 1.0, "left_clavicle": 1.0} for *_, ious in out)
    out = list(iter_review_run(_Oracle(truth, empty=True), index.cases, "heart"))
    assert all(ious == {"heart": 0.0} for *_, ious in out)

    # an unreadable case: NaN and a report with on_error, an exception without
    (root / "images" / "PHANTOM002.png").write_bytes(b"broken")
    oracle = _Oracle(truth)
    errs = []
    out = list(iter_review_run(oracle, index.cases, "heart", on_error=lambda c, e: errs.append(c)))
    assert errs == ["PHANTOM002"] and math.isnan(out[1][3]["heart"]) and oracle.calls == 2
    with pytest.raises(ValueError, match="PHANTOM002"):
        list(iter_review_run(_Oracle(truth), index.cases, "heart"))
    with pytest.raises(ValueError, match="none of the requested"):
        list(iter_review_run(type("P", (_Oracle,), {"regions": ("heart",)})(truth), index.cases, "lungs"))


def test_iter_review_run_with_a_real_tiny_model(tmp_path):
    from _tiny_model import make_tiny_checkpoint

    from cxrseg.dataset import DatasetIndex
    from cxrseg.phantom import write_phantom_dataset
    from cxrseg.predict import Predictor

    root = tmp_path / "d"
    write_phantom_dataset(root, 2, image_format="png", size=128)
    pred = Predictor(make_tiny_checkpoint(tmp_path / "t.safetensors"), device="cpu")
    out = list(iter_review_run(pred, DatasetIndex(root).cases, None))
    assert len(out) == 2 and set(out[0][3]) == set(REGIONS)
    assert all(0.0 <= v <= 1.0 for *_, ious in out for v in ious.values())


def test_old_ledger_without_reviewer_column_is_migrated(tmp_path):
    """A ledger written before the reviewer column existed opens, keeps its rows, gains the column."""
    import sqlite3

    from cxrseg.review import SCHEMA_VERSION

    path = tmp_path / "review.sqlite"
    con = sqlite3.connect(path)
    con.executescript(
        "CREATE TABLE review (case_id TEXT PRIMARY KEY, status TEXT NOT NULL, "
        "comment TEXT NOT NULL DEFAULT '', updated TEXT NOT NULL);"
        "INSERT INTO review VALUES ('OLD1', 'flagged', 'kept', '2025-01-01T00:00:00+00:00');"
    )
    con.commit()
    con.close()
    with ReviewLedger(path) as led:
        old = led.get("OLD1")
        assert (old.status, old.comment, old.reviewer) == ("flagged", "kept", None)
        led.set_status("NEW1", "approved", reviewer="dr who")
        assert led.get("NEW1").reviewer == "dr who"
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    con.close()
    with ReviewLedger(path) as led:  # a second open is a no-op
        assert led.get("NEW1").reviewer == "dr who" and led.get("OLD1").comment == "kept"


def test_newer_schema_is_refused(tmp_path):
    import sqlite3

    path = tmp_path / "review.sqlite"
    ReviewLedger(path).close()
    con = sqlite3.connect(path)
    con.execute("PRAGMA user_version = 99")
    con.commit()
    con.close()
    with pytest.raises(ValueError, match="newer"):
        ReviewLedger(path)


def test_reviewer_name_is_remembered(tmp_path, monkeypatch):
    from cxrseg.review import default_reviewer, remember_reviewer, remembered_reviewer

    monkeypatch.setenv("CXRSEG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("USER", "login")
    monkeypatch.delenv("CXRSEG_REVIEWER", raising=False)
    assert remembered_reviewer() is None and default_reviewer() == "login"
    remember_reviewer("  Dr. A. Reader ")
    assert remembered_reviewer() == default_reviewer() == "Dr. A. Reader"
    with ReviewLedger(tmp_path / "r.sqlite") as led:  # the default reviewer of a status
        assert led.set_status("C1", "approved").reviewer == "Dr. A. Reader"
    with pytest.raises(ValueError, match="one non-empty line"):
        remember_reviewer("two\nlines")
