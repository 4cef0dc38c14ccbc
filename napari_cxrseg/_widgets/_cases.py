"""Cases dock: open a dataset (or image files), list its cases, step through them.

The table shows each case's id, whether it is a JSRT nodule case, its SCR fold, its
review status (from the dataset's review ledger) and, once known, the IoU of each region
(from the Compare dock or a review run). Clicking a row loads that case; PageDown /
PageUp (bound in the viewer's keymap; napari does not use them) load the next / previous
case from anywhere in the viewer. While a synthetic phantom is shown, a note above the
table says so and offers the real RG1 sample.
"""

from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from cxrseg.regions import DISPLAY_NAMES, REGIONS, SHORT_NAMES
from cxrseg.review import STATUS_LABELS

from ._format import fmt_score
from ._samples import SyntheticNote
from ._state import get_session

__all__ = ["CasesWidget"]


class SortItem(QTableWidgetItem):
    """A table item that sorts by a hidden key (numbers numerically, missing last)."""

    def __init__(self, text: str, key=None):
        super().__init__(text)
        self._key = key if key is not None else text
        self.setFlags(self.flags() & ~Qt.ItemFlag.ItemIsEditable)

    def set(self, text: str, key=None) -> None:
        self.setText(text)
        self._key = key if key is not None else text

    def __lt__(self, other):  # noqa: D105
        a, b = self._key, getattr(other, "_key", other.text())
        try:
            return a < b
        except TypeError:
            return str(a) < str(b)


def _score_key(v):
    return float("inf") if v is None or v != v else float(v)


class CasesWidget(QWidget):
    """Dock widget listing the cases of a dataset (see the module docstring)."""

    COLUMNS = ("case", "nodule", "fold", "status") + REGIONS

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = get_session(napari_viewer)
        self._rows: dict[str, int] = {}
        self._updating = False

        self.root_edit = QLineEdit()
        self.root_edit.setPlaceholderText("dataset folder (SCR layout: images/, masks/<region>/)")
        self.root_edit.returnPressed.connect(self.open_root)
        browse = QPushButton("Folder…")
        browse.setToolTip("Choose a dataset folder")
        browse.clicked.connect(self._browse_folder)
        files = QPushButton("Files…")
        files.setToolTip("Open image files as cases (masks beside them are found too)")
        files.clicked.connect(self._browse_files)
        open_btn = QPushButton("Open")
        open_btn.clicked.connect(self.open_root)

        self.summary = QLabel("No dataset open.")
        self.summary.setToolTip("region columns: IoU of the prediction against the ground truth")
        self.summary.setWordWrap(True)

        self.table = QTableWidget(0, len(self.COLUMNS))
        # short titles keep every region's IoU in view without scrolling sideways
        self.table.setHorizontalHeaderLabels(
            ["Case", "Nod.", "Fold", "Review"] + [SHORT_NAMES[r] for r in REGIONS]
        )
        self.table.horizontalHeaderItem(1).setToolTip("JSRT nodule case?")
        for j, r in enumerate(REGIONS, start=4):
            self.table.horizontalHeaderItem(j).setToolTip(f"IoU of the {DISPLAY_NAMES[r]} vs. ground truth")
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self._fit_columns()
        self.table.setMinimumHeight(4 * self.table.verticalHeader().defaultSectionSize())
        self.table.horizontalHeader().setSortIndicator(0, Qt.SortOrder.AscendingOrder)
        self.table.setSortingEnabled(True)
        self.table.horizontalHeader().sortIndicatorChanged.connect(lambda *_: self._reindex())
        self.table.currentCellChanged.connect(self._on_current_cell)

        self.prev_btn = QPushButton("◀ Previous")
        self.prev_btn.setToolTip("Previous case (PageUp)")
        self.prev_btn.clicked.connect(lambda: self.step(-1))
        self.next_btn = QPushButton("Next ▶")
        self.next_btn.setToolTip("Next case (PageDown)")
        self.next_btn.clicked.connect(lambda: self.step(+1))

        top = QHBoxLayout()
        top.addWidget(self.root_edit, 1)
        top.addWidget(browse)
        top.addWidget(files)
        top.addWidget(open_btn)
        nav = QHBoxLayout()
        nav.addWidget(self.prev_btn)
        nav.addWidget(self.next_btn)
        lay = QVBoxLayout(self)
        lay.addLayout(top)
        lay.addWidget(self.summary)
        self.synthetic_note = SyntheticNote(self.session)  # the phantom cases are no test of the model
        lay.addWidget(self.synthetic_note)
        lay.addWidget(self.table, 1)
        lay.addLayout(nav)

        s = self.session
        s.dataset_changed.connect(self._on_dataset)
        s.case_changed.connect(self._on_case)
        s.scores_changed.connect(self._on_scores)
        s.review_changed.connect(self._on_review)
        s.bind_keys()
        if s.index is not None:
            self._on_dataset(s.dataset_root)
            if s.case_id:
                self._on_case(s.case_id)

    def _fit_columns(self) -> None:
        """Column widths from the font, just wide enough for their contents: every region's
        IoU stays in view in a dock a third of a 1920 px screen wide (no sideways scrolling)."""
        fm = self.table.fontMetrics()
        pad = 14

        def width(*texts: str) -> int:
            return max(fm.horizontalAdvance(t) for t in texts) + pad

        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setMinimumSectionSize(24)
        widths = [width("JPCNN100", "PHANTOM000") + 12,  # + the sort indicator
                  width("Nod.", "yes"), width("Fold", "2"), width("Review", *STATUS_LABELS.values())]
        widths += [width("0.000", SHORT_NAMES[r]) for r in REGIONS]
        for j, w in enumerate(widths):
            self.table.setColumnWidth(j, w)
        header.setStretchLastSection(False)

    # ------------------------------------------------------------------ actions
    def _browse_folder(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Open a dataset folder", self.root_edit.text() or str(Path.home()))
        if d:
            self.root_edit.setText(d)
            self.open_root()

    def _browse_files(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(
            self, "Open chest radiographs", str(Path.home()),
            "Images (*.IMG *.img *.dcm *.DCM *.dicom *.png *.tif *.tiff *.jpg *.jpeg *.bmp);;All files (*)",
        )
        if paths:
            self.open_files(paths)

    def open_root(self, root: str | Path | None = None):
        """Open the dataset in the line edit (or ``root``); returns the worker."""
        root = str(root) if root is not None else self.root_edit.text().strip()
        if not root:
            return None
        self.root_edit.setText(root)
        self.summary.setText(f"Indexing {root} …")
        return self.session.open_dataset(root)

    def open_files(self, paths):
        """Open image files as cases; returns the worker."""
        return self.session.open_files(paths)

    def load(self, case_id: str):
        """Load a case; returns the worker."""
        return self.session.load_case(case_id)

    def step(self, step: int):
        """Load the next/previous case; returns the worker (``None`` at either end)."""
        return self.session.step_case(step)

    # ------------------------------------------------------------------ session -> table
    def _on_dataset(self, root) -> None:
        s = self.session
        idx = s.index
        statuses = s.ledger.all() if s.ledger is not None else {}
        self._updating = True
        self.table.setSortingEnabled(False)
        self.table.clearContents()
        self.table.setRowCount(len(idx.cases))
        for i, c in enumerate(idx.cases):
            nod = "yes" if c.nodule is True else ("no" if c.nodule is False else "–")
            entry = statuses.get(c.case_id)
            status = entry.status if entry else "unreviewed"
            items = [SortItem(c.case_id), SortItem(nod), SortItem(str(c.fold) if c.fold else "–", c.fold or 0),
                     SortItem(STATUS_LABELS[status], status)]
            if entry and entry.comment:
                items[3].setToolTip(entry.comment)
            sc = s.case_scores.get(c.case_id, {})
            items += [SortItem(fmt_score(sc.get(r)), _score_key(sc.get(r))) for r in REGIONS]
            for j, it in enumerate(items):
                self.table.setItem(i, j, it)
        self.table.setSortingEnabled(True)
        self._reindex()
        self._updating = False
        summary = getattr(idx, "summary", None)
        n = len(idx.cases)
        if callable(summary):
            sm = summary()
            self.summary.setText(
                f"<b>{Path(str(root)).name}</b>: {n} cases ({sm['nodule']} nodule, {sm['non_nodule']} without; "
                f"fold 1: {sm['fold1']}, fold 2: {sm['fold2']}); region columns: IoU. "
                "PageDown / PageUp: next / previous case."
            )
        else:
            self.summary.setText(f"{n} file(s) from {root}")
        if self.root_edit.text().strip() == "":
            self.root_edit.setText(str(root))

    def _reindex(self) -> None:
        """Map case ids to rows; the session steps through cases in the table's order."""
        self._rows = {}
        for i in range(self.table.rowCount()):
            it = self.table.item(i, 0)
            if it is not None:
                self._rows[it.text()] = i
        self.session.case_order = sorted(self._rows, key=self._rows.get)

    def _on_case(self, case_id) -> None:
        row = self._rows.get(case_id)
        if row is None:
            return
        self._updating = True
        self.table.setCurrentCell(row, 0)
        self.table.scrollToItem(self.table.item(row, 0))
        self._updating = False

    def _set_cell(self, case_id: str, col: int, text: str, key=None, tip: str | None = None) -> None:
        row = self._rows.get(case_id)
        if row is None:
            return
        it = self.table.item(row, col)
        if isinstance(it, SortItem):
            it.set(text, key)
            if tip is not None:
                it.setToolTip(tip)

    def _on_scores(self, case_id) -> None:
        sc = self.session.case_scores.get(case_id, {})
        sorting = self.table.isSortingEnabled()
        self.table.setSortingEnabled(False)  # keep rows where they are while updating
        for j, r in enumerate(REGIONS, start=4):
            if r in sc:
                self._set_cell(case_id, j, fmt_score(sc[r]), _score_key(sc[r]))
        self.table.setSortingEnabled(sorting)
        self._reindex()

    def _on_review(self, case_id) -> None:
        e = self.session.review_status(case_id)
        sorting = self.table.isSortingEnabled()
        self.table.setSortingEnabled(False)
        self._set_cell(case_id, 3, STATUS_LABELS.get(e.status, e.status), e.status, e.comment or "")
        self.table.setSortingEnabled(sorting)
        self._reindex()

    def _on_current_cell(self, row: int, col: int, prev_row: int, prev_col: int) -> None:
        if self._updating or row < 0 or row == prev_row:
            return
        it = self.table.item(row, 0)
        if it is not None and it.text() != self.session.case_id:
            self.load(it.text())

    def row_of(self, case_id: str) -> int | None:
        """Table row of a case (for tests)."""
        return self._rows.get(case_id)

    def cell_text(self, case_id: str, column: str) -> str:
        """Text of a cell by case id and column name (``case``, ``status``, a region...)."""
        row = self._rows[case_id]
        return self.table.item(row, self.COLUMNS.index(column)).text()
