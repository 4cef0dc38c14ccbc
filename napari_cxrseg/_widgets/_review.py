"""Review queue dock: score every case, review the worst first, approve or flag them.

*Run over dataset* predicts every case of the open dataset in a background worker
(:func:`cxrseg.review.iter_review_run`), which stores each case's per-region IoU in the
dataset's review ledger (:class:`cxrseg.review.ReviewLedger`, keyed by model id) and
yields one small ``(i, n, case_id, {region: iou})`` payload per case; the table grows
row by row, kept in worst-first order for the chosen region. *Cancel* stops the worker
between cases (``worker.quit()``). Selecting a row loads the case and predicts it;
*Approve* / *Flag* store the status and comment in the ledger, which survives restarts:
reopening the dataset reloads the statuses and the last model's scores without running
anything.

Without ground truth (files opened on their own, a new department's DICOMs), *score*
switches to the estimated quality (:func:`napari_cxrseg._widgets._quality.quality_review_job`):
the queue ranks by each region's estimated Jaccard, and a *Checks* column lists the
plausibility checks a case fails (all of them in its tooltip). *auto* picks the true IoU
when any open case has a reference mask. Estimates are not stored in the ledger: they are
not measurements.
"""

from __future__ import annotations

import bisect
import math

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from cxrseg.regions import DISPLAY_NAMES, REGIONS
from cxrseg.review import STATUS_LABELS, default_reviewer, remembered_reviewer

from .._shortcuts import with_key
from ._format import fmt_score
from ._notify import notify_info
from ._quality import quality_review_job
from ._state import get_session
from ._workers import start_worker

__all__ = ["ReviewWidget", "review_job"]

#: Choices of the *score* box: data -> text.
SCORE_MODES = {"auto": "auto", "iou": "true IoU", "estimate": "estimated quality"}


def _who(entry) -> str:
    """``"approved by NAME at TIME"`` for a status cell's tooltip."""
    if entry.status == "unreviewed":
        return ""
    by = f" by {entry.reviewer}" if entry.reviewer else ""
    when = f" at {entry.updated.replace('T', ' ')}" if entry.updated else ""
    return f"{entry.status}{by}{when}"


def review_job(checkpoint, device, cases, regions, thresholds, postprocess, ledger, skip_scored: bool):
    """Worker body of a review run (generator; torch is imported here).

    Yields ``("model", model_id, n)`` once, then ``("case", i, n, case_id, ious, cached)``
    per case and ``("error", case_id, message)`` for unreadable cases. Scores are written
    to ``ledger`` as they come, so a cancelled run keeps what it computed.
    """
    from cxrseg.predict import get_predictor
    from cxrseg.review import iter_review_run

    from ._torch_env import OnTorchThread

    predictor = OnTorchThread(get_predictor(checkpoint, device=device))
    mid = str(predictor.model_id)
    model_regions = tuple(predictor.regions)
    regions = tuple(r for r in (regions or model_regions) if r in model_regions)
    cases = list(cases)
    n = len(cases)
    yield ("model", mid, n)
    done = ledger.scores(mid) if (skip_scored and ledger is not None) else {}
    todo = []
    for i, c in enumerate(cases, 1):
        prev = done.get(c.case_id)
        if prev is not None and all(r in prev for r in regions):
            yield ("case", i, n, c.case_id, {r: prev[r] for r in regions}, True)
        else:
            todo.append((i, c))
    errors: list[tuple[str, str]] = []
    index_of = {c.case_id: i for i, c in todo}
    for _j, _m, cid, ious in iter_review_run(
        predictor, [c for _i, c in todo], regions, thresholds=thresholds, postprocess=postprocess,
        on_error=lambda cid, exc: errors.append((cid, str(exc))),
    ):
        if ledger is not None:
            ledger.record_scores(mid, {cid: ious})
        if errors:
            yield ("error",) + errors.pop()
        yield ("case", index_of[cid], n, cid, ious, False)
    return mid


def _cases(n: int) -> str:
    return f"{n} case" + ("" if n == 1 else "s")


def _checks_text(msgs: list[str], limit: int = 2) -> str:
    """A queue cell: ``"✓"`` when every check passes, else the first messages and ``"+N more"``."""
    if not msgs:
        return "✓"
    text = "; ".join(msgs[:limit])
    return text + (f"; +{len(msgs) - limit} more" if len(msgs) > limit else "")


class _Item(QTableWidgetItem):
    def __init__(self, text: str):
        super().__init__(text)
        self.setFlags(self.flags() & ~Qt.ItemFlag.ItemIsEditable)


class ReviewWidget(QWidget):
    """Dock widget of the worst-first review queue (see the module docstring)."""

    COLUMNS = ("case", "iou", "status", "comment", "checks")
    #: Rows of the queue shown without scrolling the table.
    MIN_ROWS = 8

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = s = get_session(napari_viewer)
        self.model_id: str | None = None
        self.scores: dict[str, dict[str, float]] = {}
        self._order: list[tuple] = []  # sorted keys, parallel to table rows
        self._worker = None
        self._cancelled = False
        self._errors: list[tuple[str, str]] = []
        self._updating = False
        #: What :attr:`scores` holds: ``"iou"`` (true IoU) or ``"estimate"`` (estimated Jaccard).
        self.score_kind = "iou"
        #: Case id -> messages of the failing plausibility checks (estimate runs).
        self.failing: dict[str, list[str]] = {}

        self._build_run_controls()
        self._build_queue_table()
        self._build_mark_controls()
        self._build_reviewer()
        self._lay_out()

        s.dataset_changed.connect(self._on_dataset)
        s.review_changed.connect(self._on_review)
        s.case_changed.connect(self._on_case)
        if s.index is not None:
            self._on_dataset(s.dataset_root)

    def _build_run_controls(self) -> None:
        """Region and score choice, run, cancel, progress and the info line."""
        self.score_mode = QComboBox()
        for key, text in SCORE_MODES.items():
            self.score_mode.addItem(text, key)
        self.score_mode.setToolTip("true IoU needs reference masks; estimated quality needs none "
                                   "(auto: true IoU when the open cases have masks)")
        self.score_mode.currentIndexChanged.connect(lambda _i: self._on_dataset(self.session.dataset_root))
        self.region = QComboBox()
        for r in REGIONS:
            self.region.addItem(DISPLAY_NAMES[r], r)
        self.region.setCurrentIndex(REGIONS.index("left_clavicle"))
        self.region.currentIndexChanged.connect(lambda _i: self._rebuild())
        self.skip_box = QCheckBox("reuse ledger scores")
        self.skip_box.setToolTip("reuse the scores already in the ledger for this model")
        self.skip_box.setChecked(True)
        self.run_btn = QPushButton("Run over dataset")
        self.run_btn.clicked.connect(self.run)
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.cancel_btn.clicked.connect(self.cancel)
        self.bar = QProgressBar()
        self.bar.setFormat("%v / %m")
        self.bar.setValue(0)
        self.info = QLabel("Open a dataset, then run the model over it.")
        self.info.setWordWrap(True)

    def _build_queue_table(self) -> None:
        """The queue table (rows selectable, not editable)."""
        self.table = QTableWidget(0, len(self.COLUMNS))
        self.table.setHorizontalHeaderLabels(["Case", "IoU", "Status", "Comment", "Checks"])
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.currentCellChanged.connect(self._on_current_cell)

    def _build_mark_controls(self) -> None:
        """Comment, approve/flag/reset, previous/next and the counts."""
        self.comment = QLineEdit()
        self.comment.setPlaceholderText("comment (e.g. 'clavicle tip missed')")
        self.approve_btn = QPushButton("✔ Approve")
        self.approve_btn.setToolTip("approve the current case")
        self.approve_btn.clicked.connect(lambda: self.mark("approved"))
        self.flag_btn = QPushButton("⚑ Flag")
        self.flag_btn.setToolTip("flag the current case (with the comment)")
        self.flag_btn.clicked.connect(lambda: self.mark("flagged"))
        self.reset_btn = QPushButton("Reset")
        self.reset_btn.clicked.connect(lambda: self.mark("unreviewed"))
        self.advance_box = QCheckBox("next case after marking")
        self.advance_box.setChecked(True)
        self.prev_btn = QPushButton("◀ Previous")
        self.prev_btn.setToolTip("previous case of the queue")
        self.prev_btn.clicked.connect(lambda: self.step(-1))
        self.next_btn = QPushButton("Next worst ▶")
        self.next_btn.setToolTip("next case of the worst-first queue")
        self.next_btn.clicked.connect(lambda: self.step(+1))
        self.counts = QLabel("")

    def _build_reviewer(self) -> None:
        """The reviewer field and the hint that asks for a name."""
        self.reviewer_edit = QLineEdit(remembered_reviewer() or "")
        self.reviewer_edit.setToolTip("who reviews: stored with every status in the review ledger, "
                                      "remembered for the next sessions")
        self.reviewer_edit.editingFinished.connect(self._on_reviewer_edited)
        self.reviewer_hint = QLabel("<b>Who reviews?</b> Type your name once; it is remembered.")
        self._ask_reviewer()

    def _lay_out(self) -> None:
        """The dock's layout: run controls, marks above the queue, reviewer and options."""
        # compact controls: the queue table gets the height (at least MIN_ROWS rows)
        top = QHBoxLayout()
        top.addWidget(QLabel("rank by"))
        top.addWidget(self.region, 1)
        top.addWidget(QLabel("score"))
        top.addWidget(self.score_mode)
        top.addWidget(self.run_btn)
        progress = QHBoxLayout()
        progress.addWidget(self.bar, 1)
        progress.addWidget(self.cancel_btn)
        who = QHBoxLayout()
        who.addWidget(QLabel("reviewer"))
        who.addWidget(self.reviewer_edit, 1)
        # compact rows: MIN_ROWS of them stay in view on a 768 px screen
        row_h = self.table.fontMetrics().height() + 8
        self.table.verticalHeader().setDefaultSectionSize(row_h)
        self.table.verticalHeader().setMinimumSectionSize(row_h)
        self.table.setMinimumHeight(self.MIN_ROWS * row_h + self.table.horizontalHeader().sizeHint().height() + 6)
        self.table.verticalHeader().setVisible(False)
        marks = QHBoxLayout()
        marks.addWidget(self.approve_btn)
        marks.addWidget(self.flag_btn)
        marks.addWidget(self.reset_btn)
        marks.addSpacing(8)
        marks.addWidget(self.prev_btn)
        marks.addWidget(self.next_btn)
        opts = QHBoxLayout()
        opts.addWidget(self.advance_box)
        opts.addWidget(self.skip_box)
        lay = QVBoxLayout(self)
        lay.addLayout(top)
        lay.addLayout(progress)
        lay.addWidget(self.info)
        lay.addLayout(marks)  # the actions above the queue: in view without scrolling the dock
        lay.addWidget(self.table, 1)
        lay.addWidget(self.comment)
        lay.addLayout(who)
        lay.addWidget(self.reviewer_hint)
        lay.addLayout(opts)
        lay.addWidget(self.counts)
        for btn, action in ((self.approve_btn, "approve"), (self.flag_btn, "flag"),
                            (self.next_btn, "next_worst"), (self.prev_btn, "previous")):
            btn.setToolTip(with_key(btn.toolTip(), action))

    # ------------------------------------------------------------------ ledger -> queue
    @property
    def ranking_region(self) -> str:
        return self.region.currentData()

    def set_region(self, region: str) -> None:
        """Rank by this region."""
        from cxrseg.regions import canonical_region

        self.region.setCurrentIndex(REGIONS.index(canonical_region(region)))

    def resolved_score_kind(self) -> str:
        """``"iou"`` or ``"estimate"``: the *score* choice, with *auto* resolved on the open cases."""
        mode = self.score_mode.currentData()
        if mode != "auto":
            return mode
        idx = self.session.index
        has_truth = idx is not None and any(getattr(c, "mask_paths", None) for c in idx.cases)
        return "iou" if has_truth or idx is None else "estimate"

    def set_score_mode(self, mode: str) -> None:
        """Score by ``"auto"``, ``"iou"`` or ``"estimate"``."""
        self.score_mode.setCurrentIndex(list(SCORE_MODES).index(mode))

    def _on_dataset(self, _root) -> None:
        s = self.session
        self.scores, self.model_id, self.failing = {}, None, {}
        self.score_kind = self.resolved_score_kind()
        self.table.setColumnHidden(4, self.score_kind != "estimate")
        if self.score_kind == "estimate":
            self.bar.setMaximum(max(len(s.case_ids), 1))
            self.bar.setValue(0)
            self._rebuild()
            if s.index is not None:
                self.info.setText(f"{_cases(len(s.case_ids))} without ground truth: run to rank them by "
                                  "estimated quality (plausibility checks and test-time disagreement).")
            self._update_counts()
            return
        if s.ledger is not None:
            self.model_id = s.ledger.latest_model_id()
            if self.model_id:
                self.scores = s.ledger.scores(self.model_id)
        self.bar.setMaximum(max(len(s.case_ids), 1))
        self.bar.setValue(len(self.scores))
        self._rebuild()
        if self.model_id:
            self.info.setText(f"Scores of model {self.model_id} from the ledger ({len(self.scores)} cases). "
                              "Run again to score a new model.")
        else:
            self.info.setText(f"{len(s.case_ids)} cases; no scores yet: run the model over the dataset.")
        self._update_counts()

    def _key(self, case_id: str) -> tuple:
        v = self.scores.get(case_id, {}).get(self.ranking_region)
        missing = v is None or (isinstance(v, float) and math.isnan(v))
        return (1 if missing else 0, 0.0 if missing else float(v), case_id)

    def _rebuild(self) -> None:
        """Rebuild the table from :attr:`scores` in worst-first order."""
        from cxrseg.review import rank_worst_first

        region = self.ranking_region
        ids = rank_worst_first({c: v.get(region) for c, v in self.scores.items()})
        self._updating = True
        self.table.setRowCount(0)
        self._order = []
        for cid in ids:
            self._insert(cid)
        self._updating = False
        if self.score_kind == "estimate":
            head = QTableWidgetItem(f"est. Jaccard {DISPLAY_NAMES[region]}")
            head.setToolTip("estimated without ground truth (not a measurement): the model's "
                            "disagreement under small shifts, scales and rotations and the "
                            "plausibility checks, calibrated on the development cases")
        else:
            head = QTableWidgetItem(f"IoU {DISPLAY_NAMES[region]}")
            head.setToolTip("Jaccard index against the reference masks")
        self.table.setHorizontalHeaderItem(1, head)

    def _insert(self, case_id: str) -> None:
        key = self._key(case_id)
        row = bisect.bisect_left(self._order, key)
        self._order.insert(row, key)
        self.table.insertRow(row)
        entry = self.session.review_status(case_id)
        v = self.scores.get(case_id, {}).get(self.ranking_region)
        estimate = self.score_kind == "estimate"
        score = (f"~{v:.2f}" if v is not None and math.isfinite(v) else "–") if estimate else fmt_score(v)
        msgs = self.failing.get(case_id, [])
        checks = _checks_text(msgs) if estimate else ""
        for j, text in enumerate((case_id, score, STATUS_LABELS.get(entry.status, entry.status), entry.comment,
                                  checks)):
            self.table.setItem(row, j, _Item(text))
        self.table.item(row, 2).setToolTip(_who(entry))
        if estimate:
            tip = "\n".join(msgs) if msgs else "all plausibility checks pass"
            self.table.item(row, 4).setToolTip(tip)
            self.table.item(row, 1).setToolTip(f"estimated Jaccard (no ground truth)\n{tip}")

    def queue(self) -> list[str]:
        """Case ids in the table's (worst-first) order."""
        return [k[2] for k in self._order]

    def _row_of(self, case_id: str) -> int | None:
        for i, k in enumerate(self._order):
            if k[2] == case_id:
                return i
        return None

    # ------------------------------------------------------------------ run
    def run(self):
        """Score every case of the dataset in a worker; returns the worker."""
        s = self.session
        if s.index is None:
            self.info.setText("Open a dataset first (Cases dock).")
            return None
        if self._worker is not None:
            return self._worker
        try:
            ledger = s.ensure_ledger()
        except (OSError, ValueError) as exc:
            from ._notify import notify_error

            notify_error("Review ledger unavailable", exc)
            ledger = None
        cases = list(s.index.cases)
        self._cancelled = False
        self._errors = []
        self.run_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self.bar.setMaximum(len(cases))
        self.bar.setValue(0)
        self.info.setText(f"Loading the model, then scoring {len(cases)} cases …")
        self.score_kind = self.resolved_score_kind()
        if self.score_kind == "estimate":
            self.table.setColumnHidden(4, False)
            self.info.setText(f"Loading the model, then estimating the quality of {_cases(len(cases))} "
                              "(no ground truth) …")
            w = start_worker(
                quality_review_job, s.checkpoint, s.device, cases, mode="full",
                context="Quality review", progress={"total": len(cases) + 1},
                yielded=self._on_yielded, returned=self._on_returned, finished=self._on_finished,
                sync=s.synchronous,
            )
            self._worker = w
            if w is not None and hasattr(w, "aborted"):
                w.aborted.connect(self._on_aborted)
            return w
        w = start_worker(
            review_job, s.checkpoint, s.device, cases, None, dict(s.thresholds), s.postprocess, ledger,
            self.skip_box.isChecked(),
            context="Review run", progress={"total": len(cases) + 1},
            yielded=self._on_yielded, returned=self._on_returned, finished=self._on_finished,
            sync=s.synchronous,
        )
        self._worker = w
        if w is not None and hasattr(w, "aborted"):
            w.aborted.connect(self._on_aborted)
        return w

    def cancel(self) -> None:
        """Stop the run after the current case."""
        if self._worker is not None:
            self._cancelled = True
            self._worker.quit()
            self.info.setText("Cancelling after the current case …")

    def _on_yielded(self, msg) -> None:
        kind = msg[0]
        if kind == "model":
            _, mid, n = msg
            if mid != self.model_id or self.score_kind == "estimate":
                self.model_id = mid
                self.scores, self.failing = {}, {}
                self._rebuild()
            what = "Estimating the quality of" if self.score_kind == "estimate" else "Scoring"
            self.info.setText(f"{what} {n} cases with model {mid} …")
            return
        if kind == "error":
            self._errors.append((msg[1], msg[2]))
            return
        _, i, n, cid, ious, extra = msg
        self.bar.setValue(self.bar.value() + 1)
        had = cid in self.scores
        if had:
            row = self._row_of(cid)
            if row is not None:
                self.table.removeRow(row)
                del self._order[row]
        self.scores[cid] = dict(ious)
        estimate = self.score_kind == "estimate"
        if estimate:
            self.failing[cid] = list(extra)
        self._updating = True
        self._insert(cid)
        self._updating = False
        if not estimate:  # the Cases table shows measured IoUs only
            self.session.set_case_scores(cid, {r: v for r, v in ious.items() if v == v})

    def _on_returned(self, _mid) -> None:
        worst = self.queue()[:3]
        if self.score_kind == "estimate":
            bad = sum(1 for m in self.failing.values() if m)
            self.info.setText(
                f"Model {self.model_id}: quality estimated for {_cases(len(self.scores))} without ground "
                f"truth; {bad} {'fails' if bad == 1 else 'fail'} a plausibility check. Worst estimated for the "
                f"{DISPLAY_NAMES[self.ranking_region]}: {', '.join(worst)}."
            )
        else:
            self.info.setText(
                f"Model {self.model_id}: {len(self.scores)} cases scored. Worst for the "
                f"{DISPLAY_NAMES[self.ranking_region]}: {', '.join(worst)}."
            )
        if self._errors:
            notify_info(f"{len(self._errors)} case(s) could not be read: "
                        + "; ".join(f"{c}: {m}" for c, m in self._errors[:3]))

    def _on_aborted(self) -> None:
        kept = "" if self.score_kind == "estimate" else " (kept in the ledger)"
        self.info.setText(f"Cancelled: {len(self.scores)} cases scored{kept}.")

    def _on_finished(self) -> None:
        self._worker = None
        self.run_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)

    # ------------------------------------------------------------------ review
    def _on_current_cell(self, row: int, _col: int, prev_row: int, _pc: int) -> None:
        if self._updating or row < 0 or row == prev_row:
            return
        it = self.table.item(row, 0)
        if it is not None:
            self.comment.setText(self.session.review_status(it.text()).comment)
            if it.text() != self.session.case_id:
                self.session.load_case(it.text(), predict=True)

    def _on_case(self, case_id) -> None:
        row = self._row_of(case_id)
        if row is not None and self.table.currentRow() != row:
            self._updating = True
            self.table.setCurrentCell(row, 0)
            self._updating = False
            self.comment.setText(self.session.review_status(case_id).comment)

    def current_case(self) -> str | None:
        row = self.table.currentRow()
        it = self.table.item(row, 0) if row >= 0 else None
        return it.text() if it is not None else self.session.case_id

    def mark(self, status: str, case_id: str | None = None, comment: str | None = None) -> None:
        """Store ``status`` (and the comment box's text) for a case (default: the current one)."""
        cid = case_id or self.current_case()
        if cid is None:
            return
        text = self.comment.text() if comment is None else comment
        self.reviewer()  # remembers a name typed but not yet confirmed
        self.session.set_review(cid, status, text)
        if self.advance_box.isChecked() and case_id is None:
            self.step(+1)

    # ------------------------------------------------------------------ reviewer
    def reviewer(self) -> str | None:
        """The reviewer's name: the one typed (remembered from then on), else
        :func:`cxrseg.review.default_reviewer` (the login name until one is typed)."""
        from cxrseg.review import remember_reviewer

        name = self.reviewer_edit.text().strip()
        if not name:
            return default_reviewer()
        if name != remembered_reviewer():
            try:
                remember_reviewer(name)
            except (ValueError, OSError) as exc:
                from ._notify import notify_error

                notify_error("Reviewer name not saved", exc)
                return default_reviewer()
            self._ask_reviewer()
        return name

    def _on_reviewer_edited(self) -> None:
        if self.reviewer_edit.text().strip():
            self.reviewer()

    def _ask_reviewer(self) -> None:
        """Ask for a name (a highlighted field and a hint) until one is remembered."""
        asked = remembered_reviewer() is None
        self.reviewer_hint.setVisible(asked)
        default = default_reviewer()
        self.reviewer_edit.setPlaceholderText(
            f"your name (until then: {default})" if default else "your name"
        )
        self.reviewer_edit.setStyleSheet("QLineEdit { border: 1px solid #E69F00; }" if asked else "")

    def step(self, step: int):
        """Select the next / previous case of the queue (loads and predicts it)."""
        q = self.queue()
        if not q:
            return None
        cur = self.current_case()
        i = q.index(cur) + step if cur in q else 0
        if not 0 <= i < len(q):
            return None
        self.table.setCurrentCell(i, 0)
        return q[i]

    def _on_review(self, case_id) -> None:
        row = self._row_of(case_id)
        if row is not None:
            e = self.session.review_status(case_id)
            self.table.item(row, 2).setText(STATUS_LABELS.get(e.status, e.status))
            self.table.item(row, 2).setToolTip(_who(e))
            self.table.item(row, 3).setText(e.comment)
        self._update_counts()

    def _update_counts(self) -> None:
        s = self.session
        if s.index is None:
            self.counts.setText("")
            return
        c = s.ledger.counts() if s.ledger is not None else {"approved": 0, "flagged": 0}
        n = len(s.case_ids)
        reviewed = c["approved"] + c["flagged"]
        self.counts.setText(f"{c['approved']} approved, {c['flagged']} flagged, {n - reviewed} to review")
