"""Predict dock: run the U-Net on the current case and tune how its output is shown.

* Model: the shipped default (``cxrseg/models/``), the shipped 256 px model ("Fast", or
  ``fast`` typed in the field) or a ``.safetensors`` checkpoint file.
  A missing shipped model is reported in the dock, not as a crash.
* Regions: any of the five, or all (the model may predict fewer).
* Device: auto and the devices that exist here (detected in a worker: torch is never
  imported on the GUI thread).
* Run: one sigmoid heatmap Image layer per region (region-coloured colormap over
  [0, 1], additive blending) and a prediction Labels layer.
* Threshold: re-thresholds the kept probability maps at once, for one region or all,
  without running the model again; post-processing; opacity and contour display.
"""

from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)
from superqt import QLabeledDoubleSlider

from cxrseg.device import available_devices
from cxrseg.regions import DISPLAY_NAMES, REGIONS, SHORT_NAMES

from ._debounce import Debouncer
from ._state import get_session
from ._workers import start_worker

__all__ = ["PredictWidget", "available_devices", "model_summary"]


def model_summary(checkpoint: str | None) -> dict:
    """What the dock says about a model file (reads the safetensors header only)."""
    from cxrseg.model import CheckpointError, default_checkpoint_path, read_metadata, resolve_checkpoint_path

    try:
        path = resolve_checkpoint_path(checkpoint or None)
    except CheckpointError:
        if checkpoint is not None:
            raise
        path = default_checkpoint_path()
        return {"ok": False, "path": str(path), "message": (
            f"The shipped model is missing ({path}). Choose a checkpoint file (e.g. best.safetensors "
            "written by `cxrseg train`), or reinstall napari-cxrseg.")}
    from cxrseg.refine import refine_id_for

    meta = read_metadata(path)
    cfg = meta.get("config", {})
    val = (meta.get("metrics") or {}).get("val_iou") or {}
    try:
        refine_id = refine_id_for(path, True)
    except CheckpointError as exc:  # a broken refiner file: said, and the model runs without it
        refine_id, refine_error = None, str(exc)
    else:
        refine_error = None
    return {
        "ok": True,
        "path": str(path),
        "model_id": meta.get("model_id"),
        "regions": list(meta.get("regions") or cfg.get("regions") or []),
        "input_size": cfg.get("input_size"),
        "encoder": cfg.get("encoder_name"),
        "val_mean_iou": val.get("mean"),
        "date": meta.get("date"),
        "refine_id": refine_id,
        "refine_error": refine_error,
    }


def _devices_of(proc=None) -> list[str]:
    """Worker body: the devices torch sees, asked of the prediction process ``proc`` when
    there is one (torch is already imported there), else found here (imports torch)."""
    if proc is not None:
        from cxrseg.serve import PredictorProcessError

        try:
            return proc.devices()
        except PredictorProcessError:
            pass
        except Exception:  # noqa: BLE001 - a model that fails to load: its prediction says why
            pass
    return available_devices()


class PredictWidget(QWidget):
    """Dock widget running the model on the current case (see the module docstring)."""

    #: Milliseconds a run may take before the dock shows it as busy.
    BUSY_DELAY_MS = 300

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = s = get_session(napari_viewer)
        self.model_info: dict = {}
        self._worker = None
        self._running = False

        buttons = self._build_model_controls()
        grid = self._build_region_controls()
        self._build_display_controls()
        self._lay_out(buttons, grid)
        s.model_changed.connect(self._on_model_changed)
        s.prediction_changed.connect(self._on_prediction)
        s.case_changed.connect(self._on_case)
        s.thresholds_changed.connect(self._sync_slider)
        self._detect_devices()
        self._read_model()

    def _build_model_controls(self) -> tuple:
        """Model field, its buttons, label and device choice; returns the buttons."""
        s = self.session
        self.model_edit = QLineEdit(s.checkpoint or "")
        self.model_edit.setPlaceholderText("shipped default model")
        self.model_edit.editingFinished.connect(self._on_model_edit)
        browse = QPushButton("File…")
        browse.clicked.connect(self._browse_model)
        default = QPushButton("Default")
        default.setToolTip("Use the model shipped with napari-cxrseg")
        default.clicked.connect(lambda: self.set_checkpoint(None))
        fast = QPushButton("Fast")
        fast.setToolTip("Use the shipped 256 px model: about 3x faster, slightly less accurate (see its model card)")
        fast.clicked.connect(lambda: self.set_checkpoint("fast"))
        self._fast_button = fast
        self.model_label = QLabel("Reading model …")
        self.model_label.setWordWrap(True)
        self.model_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", "cpu"])
        self.device_combo.setCurrentText(s.device)
        self.device_combo.currentTextChanged.connect(lambda d: self.session.set_model(self.session.checkpoint, d))
        self.refine_box = QCheckBox("refine clavicles at full resolution")
        self.refine_box.setToolTip(
            "A second network segments each clavicle again on the masks' native 1024 px grid, "
            "around where the whole-film model found it (more accurate borders; a little slower)")
        self.refine_box.setChecked(s.refine)
        self.refine_box.setEnabled(False)
        self.refine_box.toggled.connect(lambda on: setattr(self.session, "refine", bool(on)))
        return browse, default, fast

    def _build_region_controls(self) -> QGridLayout:
        """Region boxes and "all", auto-predict, Run and the status line; returns the regions' grid."""
        s = self.session
        self.all_box = QCheckBox("all")
        self.all_box.setChecked(True)
        self.region_boxes: dict[str, QCheckBox] = {}
        grid = QGridLayout()
        grid.addWidget(self.all_box, 0, 0)
        for i, r in enumerate(REGIONS, start=1):
            cb = QCheckBox(SHORT_NAMES[r])
            cb.setToolTip(DISPLAY_NAMES[r])
            cb.setChecked(True)
            cb.toggled.connect(self._on_region_box)
            self.region_boxes[r] = cb
            grid.addWidget(cb, i // 3, i % 3)
        self.all_box.toggled.connect(self._on_all_box)

        self.auto_box = QCheckBox("predict each case when it is loaded")
        self.auto_box.setChecked(s.auto_predict)
        self.auto_box.toggled.connect(lambda on: setattr(self.session, "auto_predict", bool(on)))
        self.run_btn = QPushButton("Run")
        self.run_btn.clicked.connect(self.run)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        return grid

    def _build_display_controls(self) -> None:
        """Threshold, post-processing and display controls."""
        s = self.session
        self.th_region = QComboBox()
        self.th_region.addItem("all regions", None)
        for r in REGIONS:
            self.th_region.addItem(DISPLAY_NAMES[r], r)
        self.th_region.currentIndexChanged.connect(self._sync_slider)
        self.threshold = QLabeledDoubleSlider(Qt.Orientation.Horizontal)
        self.threshold.setRange(0.01, 0.99)
        self.threshold.setDecimals(2)
        self.threshold.setValue(0.5)
        self._th_debounce = Debouncer(self.apply_threshold, 40, self)
        self.threshold.valueChanged.connect(self._th_debounce.trigger)
        self.post_box = QCheckBox("post-process (largest component, holes filled)")
        self.post_box.setChecked(s.postprocess)
        self.post_box.toggled.connect(self.session.set_postprocess)

        self.heat_opacity = QLabeledDoubleSlider(Qt.Orientation.Horizontal)
        self.heat_opacity.setRange(0.0, 1.0)
        self.heat_opacity.setValue(s.display["heatmap_opacity"])
        self.heat_opacity.valueChanged.connect(lambda v: self.session.apply_display(heatmap_opacity=v))
        self.mask_opacity = QLabeledDoubleSlider(Qt.Orientation.Horizontal)
        self.mask_opacity.setRange(0.0, 1.0)
        self.mask_opacity.setValue(s.display["mask_opacity"])
        self.mask_opacity.valueChanged.connect(lambda v: self.session.apply_display(mask_opacity=v))
        self.contour_box = QCheckBox("contours only")
        self.contour_box.setChecked(bool(s.display["contour"]))
        self.contour_box.toggled.connect(lambda on: self.session.apply_display(contour=2 if on else 0))
        self.heat_box = QCheckBox("show heatmaps")
        self.heat_box.setChecked(bool(s.display["show_heatmaps"]))
        self.heat_box.toggled.connect(lambda on: self.session.apply_display(show_heatmaps=bool(on)))
        self.discard_btn = QPushButton("Discard hand edits")
        self.discard_btn.setToolTip(
            "Pixels painted into the prediction layer survive threshold changes and new runs on "
            "the same case, and are autosaved and saved as corrections (Correct dock); this "
            "rewrites the layer from the model's masks")
        self.discard_btn.clicked.connect(self.discard_edits)

    def _lay_out(self, buttons: tuple, grid: QGridLayout) -> None:
        """The dock's layout: model, regions, run, quality estimate, masks and display."""
        browse, default, fast = buttons
        mbox = QGroupBox("Model")
        ml = QVBoxLayout(mbox)
        row = QHBoxLayout()
        row.addWidget(self.model_edit, 1)
        row.addWidget(browse)
        row.addWidget(default)
        row.addWidget(fast)
        ml.addLayout(row)
        ml.addWidget(self.model_label)
        form = QFormLayout()
        form.addRow("device", self.device_combo)
        ml.addLayout(form)
        ml.addWidget(self.refine_box)
        rbox = QGroupBox("Regions (patient's left/right)")
        rbox.setLayout(grid)
        dbox = QGroupBox("Masks and display")
        dl = QFormLayout(dbox)
        dl.addRow("threshold for", self.th_region)
        dl.addRow("threshold", self.threshold)
        dl.addRow(self.post_box)
        dl.addRow("heatmap opacity", self.heat_opacity)
        dl.addRow("mask opacity", self.mask_opacity)
        dl.addRow(self.contour_box)
        dl.addRow(self.heat_box)
        dl.addRow(self.discard_btn)
        lay = QVBoxLayout(self)
        lay.addWidget(mbox)
        lay.addWidget(rbox)
        lay.addWidget(self.auto_box)
        lay.addWidget(self.run_btn)
        lay.addWidget(self.status)
        from ._quality_panel import QualityPanel  # estimated quality without ground truth

        self.quality = QualityPanel(self.viewer)
        lay.addWidget(self.quality)
        lay.addWidget(dbox)
        lay.addStretch(1)

    # ------------------------------------------------------------------ model
    def _browse_model(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose a cxrseg model", str(Path.home()),
                                              "cxrseg models (*.safetensors);;All files (*)")
        if path:
            self.set_checkpoint(path)

    def _on_model_edit(self) -> None:
        self.set_checkpoint(self.model_edit.text().strip() or None)

    def set_checkpoint(self, path: str | None) -> None:
        """Use this model file (``None``: the shipped default)."""
        self.model_edit.setText(path or "")
        self.session.set_model(path, self.device_combo.currentText())

    def _on_model_changed(self, checkpoint) -> None:
        if self.model_edit.text().strip() != (checkpoint or ""):
            self.model_edit.setText(checkpoint or "")
        if self.device_combo.currentText() != self.session.device:
            self.device_combo.setCurrentText(self.session.device)
        self._read_model()

    def _read_model(self):
        self.model_label.setText("Reading model …")
        ck = self.session.checkpoint
        # a summary of a model the session has left since (read more slowly than the next
        # one's) must not overwrite the current model's
        return start_worker(model_summary, ck, context="Read model", progress=False,
                            returned=lambda info: self._show_model(info) if ck == self.session.checkpoint else None,
                            errored=lambda exc: self._model_error(exc) if ck == self.session.checkpoint else None,
                            sync=self.session.synchronous)

    def _show_model(self, info: dict) -> None:
        self.model_info = info
        if not info.get("ok"):
            self.model_label.setText(f"<span style='color:#ff6b6b'><b>No model.</b> {info['message']}</span>")
            self.run_btn.setEnabled(False)
            return
        self.run_btn.setEnabled(True)
        regs = info["regions"]
        val = info.get("val_mean_iou")
        self.model_label.setText(
            f"<b>{Path(info['path']).name}</b> · id {info.get('model_id')} · {info.get('encoder')} "
            f"@ {info.get('input_size')} px · regions: {', '.join(SHORT_NAMES.get(r, r) for r in regs)}"
            + (f" · val IoU {val:.3f}" if isinstance(val, (int, float)) else "")
        )
        has_refiner = bool(info.get("refine_id"))
        self.refine_box.setEnabled(has_refiner or bool(info.get("refine_error")))
        if has_refiner:
            self.refine_box.setToolTip(f"refinement network {info['refine_id']}: the clavicles are segmented "
                                       "again on the masks' native 1024 px grid, around the first result")
        elif info.get("refine_error"):
            self.refine_box.setToolTip(f"refinement unusable: {info['refine_error']}")
        else:
            self.refine_box.setToolTip("this model has no clavicle refinement network")
        for r, cb in self.region_boxes.items():
            cb.setEnabled(r in regs)
            cb.setToolTip(DISPLAY_NAMES[r] + ("" if r in regs else " (this model does not predict it)"))

    def _model_error(self, exc) -> None:
        self.model_info = {"ok": False, "message": str(exc)}
        self.model_label.setText(f"<span style='color:#ff6b6b'><b>Model unusable:</b> {exc}</span>")
        self.run_btn.setEnabled(False)

    def _detect_devices(self):
        proc = self.session.predictor_process
        return start_worker(_devices_of, proc, context="Detect devices", progress=False,
                            returned=self._set_devices, sync=self.session.synchronous)

    def _set_devices(self, devices: list[str]) -> None:
        cur = self.device_combo.currentText()
        self.device_combo.blockSignals(True)
        self.device_combo.clear()
        self.device_combo.addItems(devices)
        self.device_combo.setCurrentText(cur if cur in devices else "auto")
        self.device_combo.blockSignals(False)

    # ------------------------------------------------------------------ regions
    def _on_all_box(self, on: bool) -> None:
        for cb in self.region_boxes.values():
            cb.blockSignals(True)
            cb.setChecked(on)
            cb.blockSignals(False)
        self._store_regions()

    def _on_region_box(self, _on: bool) -> None:
        self.all_box.blockSignals(True)
        self.all_box.setChecked(all(cb.isChecked() for cb in self.region_boxes.values()))
        self.all_box.blockSignals(False)
        self._store_regions()

    def _store_regions(self) -> None:
        chosen = self.selected_regions()
        self.session.regions = None if chosen is None else chosen

    def selected_regions(self) -> tuple[str, ...] | None:
        """Chosen regions (``None``: all)."""
        chosen = tuple(r for r, cb in self.region_boxes.items() if cb.isChecked())
        return None if len(chosen) == len(REGIONS) else chosen

    def set_regions(self, regions) -> None:
        """Tick exactly these regions."""
        from cxrseg.regions import parse_regions

        want = set(parse_regions(regions))
        for r, cb in self.region_boxes.items():
            cb.setChecked(r in want)

    # ------------------------------------------------------------------ run
    def run(self):
        """Predict the current case; returns the worker (``None`` if nothing to do)."""
        regions = self.selected_regions()
        if regions == ():
            self.status.setText("Tick at least one region.")
            return None
        self.session.set_model(self.session.checkpoint, self.device_combo.currentText())
        if self.session.image is None:
            self.status.setText("Load a case first (Cases dock).")
            return None
        if self._running:
            self.status.setText(f"Still predicting {self.session.case_id} …")
            return None
        self._running = True
        # busy state only after BUSY_DELAY_MS: an early repaint takes CPU from a short run
        QTimer.singleShot(self.BUSY_DELAY_MS, self._show_busy)
        w = self.session.predict(regions)
        if w is None:  # nothing to run, or run synchronously (already finished)
            self._run_finished()
            return None
        w.finished.connect(self._run_finished)
        self._worker = w
        return w

    def _show_busy(self) -> None:
        if self._running:
            self.status.setText(f"Predicting {self.session.case_id} …")
            self.run_btn.setEnabled(False)

    def _run_finished(self) -> None:
        self._running = False
        self._worker = None
        self.run_btn.setEnabled(bool(self.model_info.get("ok", True)))

    def _on_prediction(self, model_id) -> None:
        self.run_btn.setEnabled(bool(self.model_info.get("ok", True)))
        if model_id is None:
            self.status.setText("")
            return
        t = self.session.last_timing
        msg = f"{self.session.case_id}: predicted by model {model_id}"
        if t:
            msg += f" (model {t.get('predict_s', 0):.2f} s)"
        self.status.setText(msg)
        self._sync_slider()

    def _on_case(self, case_id) -> None:
        self.status.setText(f"{case_id} loaded." + ("" if self.session.auto_predict else " Press Run to predict."))

    # ------------------------------------------------------------------ threshold
    def _sync_slider(self, *_args) -> None:
        r = self.th_region.currentData()
        th = self.session.thresholds
        if not th:
            return
        val = th.get(r) if r is not None else (sum(th.values()) / len(th))
        if val is None:
            return
        self.threshold.blockSignals(True)
        self.threshold.setValue(float(val))
        self.threshold.blockSignals(False)

    def discard_edits(self) -> bool:
        """Drop hand edits in the prediction layer (see :meth:`Session.prediction_edits`)."""
        dropped = self.session.discard_prediction_edits()
        self.status.setText("Hand edits discarded." if dropped else "The prediction layer has no hand edits.")
        return dropped

    def apply_threshold(self):
        """Apply the slider's value to the chosen region (or all); no model run."""
        value = float(self.threshold.value())
        r = self.th_region.currentData()
        regions = [r] if r is not None else list(self.session.probs or self.session.thresholds or REGIONS)
        return self.session.set_thresholds({k: value for k in regions})
