"""Quality section of the Predict dock: how good is this prediction, without ground truth?

With *Quality check* ticked, every new prediction of the current case is assessed in a
worker (:func:`napari_cxrseg._widgets._quality.quality_job`: test-time augmentation
without flips, entropy and anatomical plausibility checks, one forward pass per
augmentation through the docks' torch thread). The section then lists, per region, the
estimated Jaccard and the failing checks (all messages in the tooltips). *Uncertainty
maps* also adds one hidden Image layer per region with the disagreement map.

A result belongs to the case, model and prediction it was computed for: it is dropped
when the current case, model or prediction changed meanwhile (a later prediction starts
its own assessment).
"""

from __future__ import annotations

import math

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from cxrseg.regions import DISPLAY_NAMES

from ._quality import add_uncertainty_layers, quality_job, remove_uncertainty_layers
from ._state import get_session
from ._workers import start_worker

__all__ = ["QualityPanel"]


def _item(text: str, tip: str = "") -> QTableWidgetItem:
    it = QTableWidgetItem(text)
    it.setFlags(it.flags() & ~Qt.ItemFlag.ItemIsEditable)
    if tip:
        it.setToolTip(tip)
    return it


class QualityPanel(QGroupBox):
    """The Predict dock's quality section (see the module docstring).

    Attributes
    ----------
    report : cxrseg.quality.QualityReport or None
        The assessment shown (of :attr:`report_case`).
    report_case : str or None
    dropped : int
        Results thrown away because their case, model or prediction was no longer current.
    """

    #: Emitted with the case id when an assessment is shown (and its maps added).
    assessed = Signal(str)

    def __init__(self, napari_viewer, parent=None):
        super().__init__("Quality (no ground truth needed)", parent)
        self.viewer = napari_viewer
        self.session = s = get_session(napari_viewer)
        self.report = None
        self.report_case: str | None = None
        self.dropped = 0
        self._request = 0  # bumped by every new prediction, case or setting
        self._worker = None

        self.check_box = QCheckBox("Quality check (no ground truth needed)")
        self.check_box.setToolTip(
            "after each prediction: estimated Jaccard per region and anatomical plausibility checks, "
            "from the model's agreement under small shifts, scales and rotations (a few extra forward "
            "passes)")
        self.maps_box = QCheckBox("Uncertainty maps")
        self.maps_box.setToolTip("add one layer per region with the model's disagreement (hidden: "
                                 "tick its eye in the layer list)")
        self.maps_box.setEnabled(False)
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["Region", "est. Jaccard", "Failing checks"])
        self.table.horizontalHeaderItem(1).setToolTip(
            "estimated without ground truth (not a measurement), calibrated on the model's "
            "development cases")
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.table.verticalHeader().setVisible(False)
        head = self.table.horizontalHeader()
        head.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        head.setStretchLastSection(True)
        row_h = self.table.fontMetrics().height() + 6
        self.table.verticalHeader().setDefaultSectionSize(row_h)
        self.table.verticalHeader().setMinimumSectionSize(row_h)
        self.table.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)  # see _fit_rows
        self.table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)  # long checks: elided
        self.table.setVisible(False)
        self.summary = QLabel("")
        self.summary.setWordWrap(True)

        boxes = QHBoxLayout()
        boxes.addWidget(self.check_box)
        boxes.addWidget(self.maps_box)
        boxes.addStretch(1)
        lay = QVBoxLayout(self)
        lay.addLayout(boxes)
        lay.addWidget(self.summary)
        lay.addWidget(self.table)

        self.check_box.toggled.connect(self._on_check_toggled)
        self.maps_box.toggled.connect(self._on_maps_toggled)
        s.prediction_changed.connect(self._on_prediction)
        s.case_changed.connect(self._on_case)

    # ------------------------------------------------------------------ settings
    @property
    def enabled(self) -> bool:
        return self.check_box.isChecked()

    def set_enabled(self, on: bool, *, maps: bool | None = None) -> None:
        """Tick the quality check (and, if given, the uncertainty maps)."""
        if maps is not None:
            self.maps_box.blockSignals(True)
            self.maps_box.setChecked(bool(maps))
            self.maps_box.blockSignals(False)
        if self.check_box.isChecked() != bool(on):
            self.check_box.setChecked(bool(on))
        elif on and maps:
            self._on_maps_toggled(True)

    def _on_check_toggled(self, on: bool) -> None:
        self.maps_box.setEnabled(bool(on))
        if on:
            self.assess()
        else:
            self._request += 1  # a running assessment is no longer wanted
            self._clear("")
            remove_uncertainty_layers(self.viewer)

    def _on_maps_toggled(self, on: bool) -> None:
        if not on:
            remove_uncertainty_layers(self.viewer)
            return
        if self.report is not None and self.report_case == self.session.case_id and all(
                q.uncertainty is not None for q in self.report.regions.values()):
            add_uncertainty_layers(self.viewer, self.report, self.report_case)
        else:
            self.assess()  # the shown report was made without maps

    # ------------------------------------------------------------------ run
    def _on_prediction(self, model_id) -> None:
        self._request += 1
        if model_id is None:
            self._clear("")
            return
        if self.enabled:
            self.assess()

    def _on_case(self, case_id) -> None:
        self._request += 1
        # uncertainty layers of other cases would be misleading over this image
        for ly in list(self.viewer.layers):
            md = ly.metadata.get("cxrseg") or {}
            if md.get("kind") == "uncertainty" and md.get("case_id") != case_id:
                self.viewer.layers.remove(ly)
        self._clear(f"{case_id}: predict it to check its quality." if self.enabled else "")

    def assess(self):
        """Assess the current prediction in a worker; returns it (``None``: nothing to do)."""
        s = self.session
        if s.probs is None or s.image is None or s.case_id is None:
            self._clear("Run the model first: the check assesses its prediction." if self.enabled else "")
            return None
        self._request += 1
        req, case_id, model_id, probs = self._request, s.case_id, s.model_id, s.probs
        maps = self.maps_box.isChecked()
        self.summary.setText(f"Checking the quality of {case_id} …")
        image = getattr(s.image, "data", s.image)
        self._worker = start_worker(
            quality_job, image, dict(probs), checkpoint=s.checkpoint, device=s.device, mode="full", maps=maps,
            context=f"Quality check of {case_id}", progress=False, sync=s.synchronous,
            returned=lambda rep: self._apply(rep, req=req, case_id=case_id, model_id=model_id, probs=probs,
                                             maps=maps),
        )
        return self._worker

    def _apply(self, report, *, req: int, case_id: str, model_id, probs, maps: bool) -> None:
        s = self.session
        # results belong to one case, model and prediction: anything newer wins
        if (req != self._request or s.case_id != case_id or s.model_id != model_id
                or s.probs is not probs or not self.enabled):
            self.dropped += 1
            return
        self.report, self.report_case = report, case_id
        self._show(report, case_id)
        if maps and self.maps_box.isChecked():
            add_uncertainty_layers(self.viewer, report, case_id)
        self.assessed.emit(case_id)

    # ------------------------------------------------------------------ display
    def _clear(self, text: str) -> None:
        self.report = self.report_case = None
        self.table.setRowCount(0)
        self.table.setVisible(False)
        self.summary.setText(text)

    def _show(self, report, case_id: str) -> None:
        self.table.setRowCount(0)
        for r, q in report.regions.items():
            row = self.table.rowCount()
            self.table.insertRow(row)
            est = q.estimated_jaccard
            msgs = list(dict.fromkeys(c.message for c in q.failing))
            tip = "\n".join(msgs) if msgs else "all plausibility checks pass"
            self.table.setItem(row, 0, _item(DISPLAY_NAMES.get(r, r)))
            self.table.setItem(row, 1, _item(f"~{est:.2f}" if math.isfinite(est) else "–",
                                             "estimated Jaccard (no ground truth)"))
            self.table.setItem(row, 2, _item("; ".join(msgs) if msgs else "✓", tip))
        self.table.setVisible(True)
        self._fit_rows()
        fails = list(dict.fromkeys(c.message for c in report.failing))
        known = {r: q.estimated_jaccard for r, q in report.regions.items() if math.isfinite(q.estimated_jaccard)}
        parts = [f"<b>{case_id}</b>"]
        if known:
            worst = min(known, key=known.get)
            parts.append(f"lowest estimate: {DISPLAY_NAMES.get(worst, worst)} ~{known[worst]:.2f}")
        else:
            parts.append("no estimate (this model ships no quality file; checks only)")
        parts.append(f"{len(fails)} failing check{'s' if len(fails) != 1 else ''}" if fails
                     else "all plausibility checks pass")
        self.summary.setText(" · ".join(parts))
        self.summary.setToolTip("\n".join(fails))

    def _fit_rows(self) -> None:
        """Every region's row in view, without a vertical scroll bar (the theme's padding
        makes rows taller than the font)."""
        head = self.table.horizontalHeader()
        rows = self.table.verticalHeader().length()
        self.table.setFixedHeight(rows + max(head.height(), head.sizeHint().height())
                                  + 2 * self.table.frameWidth() + 2)

    def worst_region(self) -> str | None:
        """The region with the lowest estimate in the shown report (``None``: no estimate)."""
        if self.report is None:
            return None
        known = {r: q.estimated_jaccard for r, q in self.report.regions.items()
                 if math.isfinite(q.estimated_jaccard)}
        return min(known, key=known.get) if known else None

    def rows(self) -> list[tuple[str, str, str]]:
        """The table's text, row by row (region, estimate, checks)."""
        return [tuple(self.table.item(i, j).text() for j in range(3)) for i in range(self.table.rowCount())]
