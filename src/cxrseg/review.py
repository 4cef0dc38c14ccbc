"""Reviewing a model's segmentations case by case: a SQLite ledger and worst-first ranking.

GUI-free core of the napari *Review queue* widget (and usable from scripts):

* :class:`ReviewLedger` stores, per dataset, each case's review status (``unreviewed``,
  ``approved``, ``flagged``) with a comment, a reviewer and a time stamp, and the
  per-case, per-region IoU of every model that was run over the dataset (keyed by the
  model id, so a queue reloads without re-running the model). It lives in
  ``cxrseg.workspace.workdir(dataset_root) / "review.sqlite"`` (see :func:`ledger_path`).
* :func:`rank_worst_first` orders cases by a score, worst first.
* :func:`iter_review_run` is the compute loop of a review run: a generator that predicts
  each case, thresholds it and yields ``(i, n, case_id, {region: iou})`` -- small
  payloads a GUI worker can forward to the GUI thread.

The ledger is safe to use from several threads (one connection, ``check_same_thread=False``,
every statement under a lock, each write its own transaction) and from several processes
(SQLite's write-ahead log).
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .regions import REGIONS, canonical_region, parse_regions

__all__ = [
    "STATUSES",
    "STATUS_LABELS",
    "ReviewEntry",
    "ReviewLedger",
    "ledger_path",
    "SCHEMA_VERSION",
    "default_reviewer",
    "remember_reviewer",
    "remembered_reviewer",
    "rank_worst_first",
    "case_ious",
    "iter_review_run",
]

#: The review states of a case.
STATUSES: tuple[str, ...] = ("unreviewed", "approved", "flagged")

#: How a status is shown in a table cell (an unreviewed case's cell stays empty).
STATUS_LABELS: dict[str, str] = {"unreviewed": "", "approved": "✔ approved", "flagged": "⚑ flagged"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS review (
    case_id  TEXT PRIMARY KEY,
    status   TEXT NOT NULL,
    comment  TEXT NOT NULL DEFAULT '',
    reviewer TEXT,
    updated  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS scores (
    model_id TEXT NOT NULL,
    case_id  TEXT NOT NULL,
    region   TEXT NOT NULL,
    iou      REAL,
    updated  TEXT NOT NULL,
    PRIMARY KEY (model_id, case_id, region)
);
CREATE TABLE IF NOT EXISTS models (
    model_id TEXT PRIMARY KEY,
    info     TEXT NOT NULL DEFAULT '',
    updated  TEXT NOT NULL
);
"""


#: Version of the ledger's schema (SQLite ``user_version``): 1 had no ``reviewer`` column,
#: 2 has it. Older ledgers are migrated when opened.
SCHEMA_VERSION = 2


def _reviewer_file() -> Path:
    from .workspace import home

    return home() / "reviewer.txt"


def default_reviewer() -> str | None:
    """The reviewer's name: the one remembered by :func:`remember_reviewer`, else
    ``$CXRSEG_REVIEWER``, else the login name (``$USER``); ``None`` if none is known."""
    try:
        name = _reviewer_file().read_text(encoding="utf-8").strip()
    except OSError:
        name = ""
    return name or os.environ.get("CXRSEG_REVIEWER") or os.environ.get("USER") or None


def remembered_reviewer() -> str | None:
    """The name stored by :func:`remember_reviewer` (``None`` if never asked)."""
    try:
        return _reviewer_file().read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def remember_reviewer(name: str) -> Path:
    """Remember the reviewer's name for later sessions (``$CXRSEG_HOME/reviewer.txt``).

    Raises
    ------
    ValueError
        An empty name or one with a line break.
    """
    name = str(name).strip()
    if not name or "\n" in name or "\r" in name:
        raise ValueError(f"reviewer name must be one non-empty line, got {name!r}")
    f = _reviewer_file()
    f.parent.mkdir(parents=True, exist_ok=True)
    tmp = f.with_name(f.name + f".{os.getpid()}.tmp")
    tmp.write_text(name + "\n", encoding="utf-8")
    os.replace(tmp, f)
    return f


def _migrate(con: sqlite3.Connection, path: Path) -> None:
    """Bring a ledger written by an older cxrseg up to :data:`SCHEMA_VERSION`."""
    cols = {row[1] for row in con.execute("PRAGMA table_info(review)").fetchall()}
    if "reviewer" not in cols:  # version 1: statuses without the reviewer's name
        con.execute("ALTER TABLE review ADD COLUMN reviewer TEXT")
    (version,) = con.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise ValueError(
            f"review ledger {path}: schema version {version} is newer than this cxrseg "
            f"understands ({SCHEMA_VERSION}); update cxrseg"
        )
    if version < SCHEMA_VERSION:
        con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def ledger_path(dataset_root: str | os.PathLike) -> Path:
    """Where the review ledger of a dataset lives (``workdir(root)/review.sqlite``).

    A read-only dataset gets its ledger under ``$CXRSEG_HOME`` instead
    (:func:`cxrseg.workspace.workdir`).
    """
    from .workspace import workdir

    return workdir(dataset_root) / "review.sqlite"


@dataclass(frozen=True)
class ReviewEntry:
    """The review state of one case."""

    case_id: str
    status: str = "unreviewed"
    comment: str = ""
    reviewer: str | None = None
    updated: str | None = None


class ReviewLedger:
    """Review status and per-model scores of the cases of one dataset, in SQLite.

    Parameters
    ----------
    path : str or Path
        The database file (created with its folder if missing).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> with ReviewLedger(pathlib.Path(tempfile.mkdtemp()) / "review.sqlite") as led:
    ...     led.set_status("JPCLN001", "flagged", comment="clavicle too short")
    ...     led.get("JPCLN001").status
    'flagged'
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        try:
            self._con = sqlite3.connect(str(self.path), timeout=30.0, check_same_thread=False,
                                        isolation_level=None)
            self._con.execute("PRAGMA journal_mode=WAL")
            self._con.execute("PRAGMA synchronous=NORMAL")
            self._con.executescript(_SCHEMA)
            with self._lock:
                _migrate(self._con, self.path)
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"review ledger {self.path}: not a usable SQLite database ({exc})") from None

    # -- plumbing
    def close(self) -> None:
        """Close the connection (further calls raise)."""
        with self._lock:
            self._con.close()

    def __enter__(self) -> ReviewLedger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ReviewLedger({str(self.path)!r})"

    def _write(self, sql: str, rows: Iterable[tuple] | tuple = ()) -> None:
        with self._lock:
            con = self._con
            con.execute("BEGIN IMMEDIATE")
            try:
                if isinstance(rows, tuple):
                    con.execute(sql, rows)
                else:
                    con.executemany(sql, rows)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    def _read(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._con.execute(sql, args).fetchall()

    # -- review status
    def set_status(self, case_id: str, status: str, comment: str = "", reviewer: str | None = None) -> ReviewEntry:
        """Record the review status of a case (replacing the previous one).

        Parameters
        ----------
        case_id : str
        status : {"unreviewed", "approved", "flagged"}
        comment : str
        reviewer : str, optional
            Who reviewed it (default: :func:`default_reviewer`).

        Raises
        ------
        ValueError
            Unknown status or empty case id.
        """
        status = str(status).lower()
        if status not in STATUSES:
            raise ValueError(f"review status must be one of {', '.join(STATUSES)}, got {status!r}")
        if not case_id:
            raise ValueError("case_id must not be empty")
        reviewer = reviewer if reviewer is not None else default_reviewer()
        entry = ReviewEntry(str(case_id), status, str(comment or ""), reviewer, _now())
        self._write(
            "INSERT INTO review (case_id, status, comment, reviewer, updated) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(case_id) DO UPDATE SET status=excluded.status, comment=excluded.comment, "
            "reviewer=excluded.reviewer, updated=excluded.updated",
            (entry.case_id, entry.status, entry.comment, entry.reviewer, entry.updated),
        )
        return entry

    def get(self, case_id: str) -> ReviewEntry:
        """The review state of a case (``unreviewed`` if never reviewed)."""
        rows = self._read("SELECT case_id, status, comment, reviewer, updated FROM review WHERE case_id = ?",
                          (str(case_id),))
        return ReviewEntry(*rows[0]) if rows else ReviewEntry(str(case_id))

    def all(self) -> dict[str, ReviewEntry]:
        """Every case that has a review state, by case id."""
        rows = self._read("SELECT case_id, status, comment, reviewer, updated FROM review ORDER BY case_id")
        return {r[0]: ReviewEntry(*r) for r in rows}

    def counts(self) -> dict[str, int]:
        """Number of cases per recorded status."""
        rows = self._read("SELECT status, COUNT(*) FROM review GROUP BY status")
        out = {s: 0 for s in STATUSES}
        out.update({s: int(n) for s, n in rows})
        return out

    # -- scores
    def record_scores(self, model_id: str, scores: Mapping[str, Mapping[str, float | None]], *,
                      info: str = "") -> None:
        """Store per-case, per-region IoUs of a model (one transaction; replaces old values).

        Parameters
        ----------
        model_id : str
            The model's id (``Checkpoint.model_id``).
        scores : mapping
            Case id -> {region: IoU}; ``None``/NaN means "no ground truth".
        info : str
            Free text about the run (e.g. the thresholds), kept per model.
        """
        if not model_id:
            raise ValueError("model_id must not be empty")
        now = _now()
        rows = []
        for cid, per_region in scores.items():
            for region, iou in per_region.items():
                v = None if iou is None or (isinstance(iou, float) and math.isnan(iou)) else float(iou)
                rows.append((str(model_id), str(cid), canonical_region(region), v, now))
        with self._lock:
            con = self._con
            con.execute("BEGIN IMMEDIATE")
            try:
                con.executemany(
                    "INSERT INTO scores (model_id, case_id, region, iou, updated) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT(model_id, case_id, region) DO UPDATE SET iou=excluded.iou, updated=excluded.updated",
                    rows,
                )
                con.execute(
                    "INSERT INTO models (model_id, info, updated) VALUES (?, ?, ?) ON CONFLICT(model_id) DO UPDATE "
                    "SET updated=excluded.updated, info=CASE WHEN excluded.info != '' THEN excluded.info ELSE info END",
                    (str(model_id), info, now),
                )
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    def scores(self, model_id: str) -> dict[str, dict[str, float]]:
        """Case id -> {region: IoU} recorded for a model (NaN where there was no ground truth)."""
        rows = self._read("SELECT case_id, region, iou FROM scores WHERE model_id = ? ORDER BY case_id",
                          (str(model_id),))
        out: dict[str, dict[str, float]] = {}
        for cid, region, iou in rows:
            out.setdefault(cid, {})[region] = float("nan") if iou is None else float(iou)
        order = {r: i for i, r in enumerate(REGIONS)}
        return {c: dict(sorted(v.items(), key=lambda kv: order.get(kv[0], 99))) for c, v in out.items()}

    def model_ids(self) -> list[str]:
        """Models with recorded scores, most recently updated first."""
        return [r[0] for r in self._read("SELECT model_id FROM models ORDER BY updated DESC, model_id")]

    def latest_model_id(self) -> str | None:
        """The model whose scores were recorded last, or ``None``."""
        ids = self.model_ids()
        return ids[0] if ids else None


def rank_worst_first(scores: Mapping[str, float | None]) -> list[str]:
    """Case ids ordered by score, lowest (worst) first.

    Cases without a score (``None`` or NaN) come last; ties are broken by case id.

    >>> rank_worst_first({"a": 0.9, "b": 0.2, "c": float("nan"), "d": 0.2})
    ['b', 'd', 'a', 'c']
    """

    def key(item):
        cid, v = item
        missing = v is None or (isinstance(v, float) and math.isnan(v))
        return (1 if missing else 0, 0.0 if missing else float(v), str(cid))

    return [cid for cid, _ in sorted(scores.items(), key=key)]


def case_ious(pred: Mapping[str, np.ndarray], truth: Mapping[str, np.ndarray],
              regions: Iterable[str] | None = None) -> dict[str, float]:
    """Per-region Jaccard of predicted vs. reference masks (NaN where either is missing).

    Masks of different sizes (a 2048 JSRT image vs. 1024 SCR masks) are compared on the
    reference grid: the prediction is resized with nearest neighbour.
    """
    from .io import resize_mask_nearest
    from .metrics import jaccard

    out: dict[str, float] = {}
    for r in parse_regions(regions) if regions is not None else tuple(pred):
        p, t = pred.get(r), truth.get(r)
        if p is None or t is None:
            out[r] = float("nan")
            continue
        t = np.asarray(t, dtype=bool)
        out[r] = float(jaccard(resize_mask_nearest(np.asarray(p, dtype=bool), t.shape), t))
    return out


def iter_review_run(
    predictor,
    cases: Iterable[Any],
    regions: Iterable[str] | str | None = None,
    *,
    thresholds: Mapping[str, float] | None = None,
    postprocess: bool = False,
    on_error: Callable[[str, Exception], None] | None = None,
) -> Iterator[tuple[int, int, str, dict[str, float]]]:
    """Predict every case and score it against its reference masks.

    Parameters
    ----------
    predictor : cxrseg.predict.Predictor
        Anything with ``predict(image2d, *, regions=None) -> {region: prob}``, ``regions``
        and ``config.thresholds``.
    cases : iterable of cxrseg.dataset.Case
        Cases to run (``case_id``, ``load_image()``, ``load_masks(regions)``,
        ``mask_paths``).
    regions : str or iterable of str, optional
        Regions to score (default: all the model predicts).
    thresholds : mapping, optional
        Region -> probability threshold (default: the model's).
    postprocess : bool
        Clean the thresholded masks with :func:`cxrseg.postprocess.postprocess`.
    on_error : callable, optional
        Called with ``(case_id, exception)`` when a case cannot be read; its IoUs are then
        NaN. Without it the error propagates.

    Yields
    ------
    (i, n, case_id, ious)
        1-based index, number of cases, case id, and {region: IoU} (NaN where the case
        has no reference mask). No arrays, so a GUI can forward it cheaply.
    """
    cases = list(cases)
    n = len(cases)
    model_regions = tuple(getattr(predictor, "regions", None) or REGIONS)
    wanted = tuple(r for r in (parse_regions(regions) if regions is not None else model_regions)
                   if r in model_regions)
    if not wanted:
        raise ValueError(f"the model predicts {', '.join(model_regions)}; none of the requested regions")
    th = dict(getattr(getattr(predictor, "config", None), "thresholds", {}) or {})
    th.update({canonical_region(k): float(v) for k, v in (thresholds or {}).items()})
    for i, case in enumerate(cases, 1):
        cid = str(case.case_id)
        try:
            have = tuple(r for r in wanted if r in getattr(case, "mask_paths", {}))
            image = case.load_image()
            truth = case.load_masks(have) if have else {}
        except (ValueError, KeyError, OSError) as exc:
            if on_error is None:
                raise
            on_error(cid, exc)
            yield i, n, cid, {r: float("nan") for r in wanted}
            continue
        probs = predictor.predict(image.data, regions=wanted)
        masks = {r: np.asarray(probs[r]) >= th.get(r, 0.5) for r in wanted}
        if postprocess:
            from .postprocess import postprocess as _post

            masks = _post(masks)
        yield i, n, cid, case_ious(masks, truth, wanted)
