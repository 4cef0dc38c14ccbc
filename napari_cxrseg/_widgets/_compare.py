"""Compare dock: live Jaccard / Dice of a Labels layer against the ground truth.

The table shows, per region, Jaccard (IoU), Dice and the false-positive / false-negative
pixel counts of the compared layer (by default ``"<case> prediction"``; any Labels layer
of the case, e.g. an ``"<case> edit <region>"`` layer, can be chosen) against the exact
reference masks of the case. It is recomputed -- in a worker, debounced with a QTimer
-- whenever the layer is painted (``events.paint``, emitted once per finished stroke in
napari 0.9; ``events.labels_update`` during a stroke), replaced (``events.data``),
re-thresholded or undone (``events.set_data``). A two-colour overlay layer
``"<case> errors"`` shows false positives (red) and false negatives (violet-blue) of one region,
above the edit layers.

The measured layer follows what the user edits: when the Correct dock opens an edit
layer (the session's ``measure_layer`` signal), Compare measures it, with the overlay on
its region. Results of a measurement that was superseded, or that arrive after the dock
was removed or the viewer closed, are dropped.
"""

from __future__ import annotations

import zlib

import numpy as np
from qtpy.QtCore import QEvent
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDockWidget,
    QFormLayout,
    QHeaderView,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from cxrseg.metrics import overlap
from cxrseg.regions import DISPLAY_NAMES, REGIONS

from ._debounce import Debouncer
from ._format import fmt_score
from ._layer_helpers import is_case_layer
from ._state import get_session
from ._workers import start_worker

__all__ = ["CompareWidget", "compare_masks"]

_EVENTS = ("paint", "labels_update", "data", "set_data")


def compare_masks(pred: dict[str, np.ndarray], truth: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Per-region ``jaccard``, ``dice``, ``fp`` and ``fn`` (pixels) of two mask dicts
    (:func:`cxrseg.metrics.overlap`).

    Regions of ``truth``; a region missing from ``pred`` counts as an empty prediction.
    """
    out = {}
    for r in REGIONS:
        t = truth.get(r)
        if t is None:
            continue
        p = pred.get(r)
        p = np.zeros(np.shape(t), bool) if p is None else np.asarray(p, bool)
        sc = overlap(p, t)
        out[r] = {"jaccard": sc["jaccard"], "dice": sc["dice"], "fp": float(sc["fp"]), "fn": float(sc["fn"])}
    return out


def _layer_masks(data: np.ndarray, metadata: dict, region: str | None) -> dict[str, np.ndarray]:
    """Masks of a Labels layer: one region (an edit layer: any non-zero) or all."""
    from napari_cxrseg._layers import exact_masks_from_layer

    if region is not None:
        return {region: np.asarray(data) != 0}
    return exact_masks_from_layer(data, metadata)


def _compare_job(data: np.ndarray, metadata: dict, region: str | None, truth: dict, errors_region: str | None):
    pred = _layer_masks(data, metadata, region)
    tr = {region: truth[region]} if region is not None and region in truth else truth
    scores = compare_masks(pred, tr)
    err = None
    if errors_region is not None and errors_region in tr:
        p = pred.get(errors_region)
        err = (np.zeros(tr[errors_region].shape, bool) if p is None else p, tr[errors_region])
    return scores, err


class CompareWidget(QWidget):
    """Dock widget measuring a Labels layer against the ground truth (see the module docstring)."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = s = get_session(napari_viewer)
        self.scores: dict[str, dict[str, float]] = {}
        self._removed = False
        self._layer = None
        self._last_key = None
        self._gen = 0
        self._worker = None

        self.source = QComboBox()
        self.source.setToolTip("Labels layer to measure (the prediction, or an edit layer)")
        self.source.currentIndexChanged.connect(self._on_source)
        self.err_region = QComboBox()
        for r in REGIONS:
            self.err_region.addItem(DISPLAY_NAMES[r], r)
        self.err_region.setCurrentIndex(REGIONS.index("left_clavicle"))
        self.err_region.currentIndexChanged.connect(lambda _i: self.refresh(force=True))
        self.err_box = QCheckBox("show false positives (red) / false negatives (violet)")
        self.err_box.setChecked(True)
        self.err_box.toggled.connect(self._on_err_box)

        self.table = QTableWidget(len(REGIONS), 5)
        self.table.setHorizontalHeaderLabels(["Region", "Jaccard", "Dice", "FP px", "FN px"])
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        for i, r in enumerate(REGIONS):
            self.table.setItem(i, 0, QTableWidgetItem(DISPLAY_NAMES[r]))
            for j in range(1, 5):
                self.table.setItem(i, j, QTableWidgetItem("–"))
        hdr = self.table.horizontalHeader().sizeHint().height()
        self.table.setMinimumHeight(hdr + sum(self.table.rowHeight(i) for i in range(len(REGIONS))) + 6)
        self.mean_label = QLabel("")

        form = QFormLayout()
        form.addRow("measure", self.source)
        form.addRow("overlay region", self.err_region)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.err_box)
        lay.addWidget(self.table)
        lay.addWidget(self.mean_label)
        lay.addStretch(1)

        self._debounce = Debouncer(self.refresh, 150, self)
        s.case_changed.connect(self._on_case)
        s.prediction_changed.connect(self._on_prediction)
        s.masks_edited.connect(self._debounce.trigger)
        s.thresholds_changed.connect(self._debounce.trigger)
        s.measure_layer.connect(self.measure)
        napari_viewer.layers.events.inserted.connect(self._populate)
        napari_viewer.layers.events.removed.connect(self._populate)
        napari_viewer.layers.events.moved.connect(self._populate)
        self.destroyed.connect(_Detach(self))
        self._populate()

    def detach(self) -> None:
        """Stop listening to the session, the viewer and the measured layer; results of
        running measurements are dropped (the dock was removed)."""
        if self._removed:
            return
        self._removed = True
        self._gen += 1
        self._debounce._timer.stop()
        s, v = self.session, self.viewer
        for sig, cb in ((s.case_changed, self._on_case), (s.prediction_changed, self._on_prediction),
                        (s.masks_edited, self._debounce.trigger), (s.thresholds_changed, self._debounce.trigger),
                        (s.measure_layer, self.measure), (v.layers.events.inserted, self._populate),
                        (v.layers.events.removed, self._populate), (v.layers.events.moved, self._populate)):
            try:
                sig.disconnect(cb)
            except (TypeError, ValueError, RuntimeError):  # pragma: no cover - already gone
                pass
        try:
            self._disconnect()
        except RuntimeError:  # pragma: no cover
            pass

    # napari's remove_dock_widget takes the dock's container out of the window without deleting
    # it: the dock notices that it is no longer inside a dock widget and detaches.
    def _in_dock(self) -> bool:
        w = self.parentWidget()
        while w is not None:
            if isinstance(w, QDockWidget):
                return True
            w = w.parentWidget()
        return False

    def _watch_ancestors(self) -> None:
        w = self.parentWidget()
        while w is not None:
            w.removeEventFilter(self)
            w.installEventFilter(self)
            w = w.parentWidget()
        self._docked = self._in_dock()

    def _on_parent_change(self) -> None:
        if getattr(self, "_docked", False) and not self._in_dock():
            self.detach()
        else:
            self._watch_ancestors()

    def event(self, ev) -> bool:  # noqa: D102 - Qt API
        if ev.type() == QEvent.Type.ParentChange:
            self._on_parent_change()
        return super().event(ev)

    def eventFilter(self, obj, ev) -> bool:  # noqa: N802, D102 - Qt API
        if ev.type() == QEvent.Type.ParentChange:
            self._on_parent_change()
        return False

    def measure(self, name: str | None) -> None:
        """Measure this layer of the case (the layer being edited); the error overlay
        follows an edit layer's region."""
        if self._removed or not name:
            return
        self._populate(refresh=False)
        if self.source.findText(name) < 0:
            return
        region = self._edit_region(name)
        if region is not None and self.err_region.currentData() != region:
            self.err_region.blockSignals(True)
            self.err_region.setCurrentIndex(REGIONS.index(region))
            self.err_region.blockSignals(False)
        self.source.setCurrentText(name)  # -> _on_source -> refresh
        self.refresh(force=True)

    # ------------------------------------------------------------------ layer choice
    def _candidates(self) -> list[str]:
        s = self.session
        if s.case_id is None:
            return []
        from napari.layers import Labels

        out = []
        for ly in self.viewer.layers:
            if not isinstance(ly, Labels) or not is_case_layer(ly.name, s.case_id):
                continue
            kind = (ly.metadata.get("cxrseg") or {}).get("kind")
            if ly.name in (s.layer_name("ground_truth"), s.layer_name("errors")) or kind in ("ground_truth", "errors"):
                continue
            out.append(ly.name)
        pred = s.layer_name("prediction")
        return sorted(out, key=lambda n: (n != pred, n))

    def _populate(self, *_args, refresh: bool = True) -> None:
        names = self._candidates()
        cur = self.source.currentText()
        self.source.blockSignals(True)
        self.source.clear()
        self.source.addItems(names)
        if cur in names:
            self.source.setCurrentText(cur)
        self.source.blockSignals(False)
        self._on_source(refresh=refresh)

    def _on_source(self, *_args, refresh: bool = True) -> None:
        name = self.source.currentText()
        layer = self.viewer.layers[name] if name and name in self.viewer.layers else None
        if layer is self._layer:
            return
        self._disconnect()
        self._layer = layer
        if layer is not None:
            for ev in _EVENTS:
                getattr(layer.events, ev).connect(self._debounce.trigger)
        if refresh:
            self.refresh(force=True)
        else:
            self._last_key = None
            self._debounce.trigger()

    def _disconnect(self) -> None:
        if self._layer is None:
            return
        for ev in _EVENTS:
            try:
                getattr(self._layer.events, ev).disconnect(self._debounce.trigger)
            except (TypeError, ValueError, RuntimeError):  # pragma: no cover
                pass
        self._layer = None

    def _edit_region(self, name: str) -> str | None:
        s = self.session
        prefix = f"{s.case_id} edit "
        return name[len(prefix):] if s.case_id and name.startswith(prefix) and name[len(prefix):] in REGIONS else None

    # ------------------------------------------------------------------ updates
    def _on_case(self, _case_id) -> None:
        self._last_key = None
        self._clear()
        self._populate()

    def _on_prediction(self, _model_id) -> None:
        # metrics follow a moment later (debounced): never in the way of showing the layers
        self._last_key = None
        self._populate(refresh=False)
        self._debounce.trigger()

    def _on_err_box(self, on: bool) -> None:
        if not on:
            self.session.show_errors(None, None, None)
        self.refresh(force=True)

    def _clear(self) -> None:
        self.scores = {}
        for i in range(len(REGIONS)):
            for j in range(1, 5):
                self.table.item(i, j).setText("–")
        self.mean_label.setText("")

    def refresh(self, *, force: bool = False):
        """Recompute the metrics now (in a worker); returns it, or ``None`` if nothing changed."""
        s = self.session
        if self._removed or not s.alive():
            return None
        layer = self._layer
        if layer is None or not s.truth:
            self._clear()
            if s.case_id is not None and not s.truth:
                self.mean_label.setText(f"{s.case_id} has no ground truth to compare with; its estimated "
                                        "quality: Predict dock, Quality check.")
            if layer is None:
                s.show_errors(None, None, None)
            return None
        if layer.name != self.source.currentText() or layer not in self.viewer.layers:
            self._populate()  # the layer was renamed (recycled) or removed
            return None
        shape = next(iter(s.truth.values())).shape
        if layer.data.shape != shape:
            self._clear()
            return None
        data = np.array(layer.data, copy=True)  # copied on the GUI thread, before the worker
        key = (layer.name, data.shape, zlib.crc32(data.tobytes()), self.err_region.currentData(),
               self.err_box.isChecked())
        if not force and key == self._last_key:
            return None
        self._last_key = key
        self._gen += 1
        gen = self._gen
        md = dict(layer.metadata)
        region = self._edit_region(layer.name)
        errors_region = self.err_region.currentData() if self.err_box.isChecked() else None
        case_id = s.case_id
        self._worker = start_worker(
            _compare_job, data, md, region, dict(s.truth), errors_region, context="Compare", progress=False,
            returned=lambda res: self._show(res, gen, case_id, layer.name), sync=s.synchronous,
        )
        return self._worker

    def _show(self, res, gen: int, case_id: str, layer_name: str) -> None:
        if gen != self._gen or case_id != self.session.case_id or self._removed or not self.session.alive():
            return
        scores, err = res
        self.scores = scores
        for i, r in enumerate(REGIONS):
            sc = scores.get(r)
            vals = ["–"] * 4 if sc is None else [fmt_score(sc["jaccard"]), fmt_score(sc["dice"]),
                                                   f"{int(sc['fp'])}", f"{int(sc['fn'])}"]
            for j, v in enumerate(vals, start=1):
                self.table.item(i, j).setText(v)
        if scores:
            mj = float(np.mean([v["jaccard"] for v in scores.values()]))
            md = float(np.mean([v["dice"] for v in scores.values()]))
            self.mean_label.setText(f"{layer_name}: mean Jaccard {mj:.3f}, mean Dice {md:.3f}")
            self.session.set_case_scores(case_id, {r: v["jaccard"] for r, v in scores.items()})
        if err is not None:
            self.session.show_errors(err[0], err[1], self.err_region.currentData())
        elif not self.err_box.isChecked():
            self.session.show_errors(None, None, None)


class _Detach:
    """Detaches a Compare dock when its Qt object is destroyed (holds it weakly: the
    ``destroyed`` connection must not keep the dock alive)."""

    def __init__(self, widget: CompareWidget):
        import weakref

        self._ref = weakref.ref(widget)

    def __call__(self, *_args) -> None:
        w = self._ref()
        if w is not None:
            w.detach()
