"""Fine-tune dock: fine-tune the model on the saved corrections, without forgetting.

The dock works on the viewer's :class:`~._state.Session` (dataset, model, device):

* Before anything runs it shows the plan (:func:`cxrseg.finetune.plan_finetune`): how
  many corrected cases, which **validation cases** (a checkable list of the dataset's
  cases with full ground truth, the model's own validation cases ticked) and how many
  replay cases. With no validation case it says why, and that nothing will be written
  unless "write even if validation gets worse" is ticked.
* **Fine-tune** runs :func:`cxrseg.finetune.finetune_iter` in a napari thread worker; the
  progress bar moves while the data is prepared (0-20 %) and while training (20-95 %);
  the status line and the before/after table stay in this dock. **Cancel** stops it
  between two steps and removes its temporary files.
* When a new model was written, **Use new model and re-predict** switches the session to
  it and predicts the current case again.

The replay cache (pre-processed images of the dataset) goes to the dataset's working
folder (``<dataset>/.cxrseg/cache``), not the home folder. Only *saved* corrections are
used (save the Correct dock's edits first). Torch is imported only inside the worker.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtGui import QFont
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ._notify import notify_error, notify_info
from ._state import get_session
from ._workers import start_worker

log = logging.getLogger("napari_cxrseg")

__all__ = ["FinetuneWidget"]

#: Share of the progress bar for data preparation (the rest is training, then evaluation).
_PREP_SHARE = 20


def _finetune_job(params: dict, holder: dict):
    """Worker body: drive :func:`cxrseg.finetune.finetune_iter`, yield small events.

    ``holder["gen"]`` keeps the inner generator so that a cancel can close it (which
    stops training and removes its temporary files).
    """
    from cxrseg.finetune import finetune_iter

    gen = finetune_iter(**params)
    holder["gen"] = gen
    result = None
    try:
        for ev in gen:
            if ev["kind"] == "done":
                result = ev["result"]
                continue
            yield {k: v for k, v in ev.items() if k != "model"}
    finally:
        gen.close()
    return result


class FinetuneWidget(QWidget):
    """Dock widget: fine-tune on the saved corrections (see the module docstring).

    Parameters
    ----------
    napari_viewer : napari.Viewer
    """

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = s = get_session(napari_viewer)
        self._worker = None
        self._job: dict = {}
        self._cancelled = False
        self._steps = 1
        self._step_i = 0
        self._cand = (1, 1)
        self.plan = None
        self.last_result = None
        self.new_model: Path | None = None

        self.plan_label = QLabel("Open a dataset and save corrections (Correct dock) to fine-tune.")
        self.plan_label.setWordWrap(True)

        form = self._build_settings()
        vrow = self._build_validation()
        brow = self._build_run_controls()
        self._lay_out(form, vrow, brow)

        self.finetune_button.clicked.connect(lambda: self.start_finetune())
        self.cancel_button.clicked.connect(lambda: self.cancel_finetune())
        self.use_model_button.clicked.connect(lambda: self.use_new_model())

        callbacks = (self._on_dataset_changed, self._on_model_changed)
        s.dataset_changed.connect(callbacks[0])
        s.model_changed.connect(callbacks[1])
        self.destroyed.connect(lambda *_a, s=s, cb=callbacks: _disconnect(s, cb))
        if s.dataset_root is not None:
            self.refresh_plan()

    def _build_settings(self) -> QFormLayout:
        """Settings search, epochs, replay ratio, tolerance and force."""
        form = QFormLayout()
        self.search_check = QCheckBox("try several settings, keep the best (15 min at most)")
        self.search_check.setChecked(True)
        self.search_check.setToolTip(
            "train a few learning rates, lengths and replay ratios in turn and write the one that "
            "raises the corrected cases most while no validation region falls by more than the "
            "tolerance; uncheck to train once with the epochs and replay ratio below"
        )
        form.addRow(self.search_check)
        self.epochs_spin = QSpinBox()
        self.epochs_spin.setRange(1, 200)
        self.epochs_spin.setValue(5)
        form.addRow("epochs", self.epochs_spin)
        self.replay_spin = QDoubleSpinBox()
        self.replay_spin.setRange(0.0, 20.0)
        self.replay_spin.setSingleStep(0.5)
        self.replay_spin.setValue(2.0)
        self.replay_spin.setToolTip("replay samples of the original training data per correction sample")
        form.addRow("replay ratio", self.replay_spin)
        self.tolerance_spin = QDoubleSpinBox()
        self.tolerance_spin.setDecimals(3)
        self.tolerance_spin.setRange(0.0, 1.0)
        self.tolerance_spin.setSingleStep(0.001)
        self.tolerance_spin.setValue(0.005)
        self.tolerance_spin.setToolTip("largest allowed fall of any region's validation IoU")
        form.addRow("tolerance", self.tolerance_spin)
        self.force_check = QCheckBox("write even if validation gets worse")
        form.addRow(self.force_check)
        self.search_check.toggled.connect(self._on_search_toggled)
        self._on_search_toggled(self.search_check.isChecked())
        return form

    def _on_search_toggled(self, on: bool) -> None:
        self.epochs_spin.setEnabled(not on)
        self.replay_spin.setEnabled(not on)

    def _build_validation(self) -> QHBoxLayout:
        """The list of validation cases; returns its count and Refresh row."""
        self.val_list = QListWidget()
        self.val_list.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.val_list.setToolTip(
            "validation cases: the new model is written only if none of its regions gets worse on "
            "these (corrected cases cannot validate)"
        )
        self.val_list.setMinimumHeight(90)
        self.val_list.itemChanged.connect(lambda _it: self._on_val_changed())
        self.val_count = QLabel("")
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.setToolTip("read the corrections store and the dataset again")
        self.refresh_button.clicked.connect(lambda: self.refresh_plan())
        vrow = QHBoxLayout()
        vrow.addWidget(self.val_count, 1)
        vrow.addWidget(self.refresh_button)
        return vrow

    def _build_run_controls(self) -> QHBoxLayout:
        """Fine-tune and Cancel (returned as a row), progress, status, report and "use new model"."""
        self.finetune_button = QPushButton("Fine-tune")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        brow = QHBoxLayout()
        brow.addWidget(self.finetune_button, 1)
        brow.addWidget(self.cancel_button)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        self.report_text = QPlainTextEdit()
        self.report_text.setReadOnly(True)
        self.report_text.setFont(QFont("monospace"))
        self.report_text.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.report_text.setMaximumHeight(120)
        self.report_text.setVisible(False)
        self.use_model_button = QPushButton("Use new model and re-predict")
        self.use_model_button.setVisible(False)
        return brow

    def _lay_out(self, form: QFormLayout, vrow: QHBoxLayout, brow: QHBoxLayout) -> None:
        """The dock's layout."""
        lay = QVBoxLayout(self)
        lay.addWidget(self.plan_label)
        lay.addLayout(form)
        lay.addWidget(QLabel("validation cases"))
        lay.addWidget(self.val_list, 1)
        lay.addLayout(vrow)
        lay.addLayout(brow)
        lay.addWidget(self.progress)
        lay.addWidget(self.status_label)
        lay.addWidget(self.report_text)
        lay.addWidget(self.use_model_button)

    # ------------------------------------------------------------------ places
    def _workdir(self) -> Path:
        return self.session.work_dir()

    def store_root(self) -> Path:
        """The corrections store of the open dataset (``<dataset>/corrections/``)."""
        return self.session.corrections_root()

    def models_dir(self) -> Path:
        """Where fine-tuned models are written (``<workdir>/models/``)."""
        return self._workdir() / "models"

    def cache_dir(self) -> Path:
        """The replay cache: ``<workdir>/cache`` (beside the dataset, not in the home folder)."""
        return self._workdir() / "cache"

    # ------------------------------------------------------------------ plan
    def _on_dataset_changed(self, _root) -> None:
        self.refresh_plan()

    def _on_model_changed(self, _ck) -> None:
        self.refresh_plan()

    def showEvent(self, event) -> None:  # noqa: N802 - Qt API
        """Re-read the plan when the tab is shown (corrections may have been saved)."""
        super().showEvent(event)
        if self._worker is None and self.session.dataset_root is not None:
            self.refresh_plan(keep_ticks=True)

    def refresh_plan(self, *, keep_ticks: bool = False):
        """Read the store and the dataset; fill the validation list; explain the plan.

        Returns the :class:`cxrseg.finetune.FinetunePlan` (``None`` if it cannot be made).
        """
        from cxrseg.finetune import plan_finetune

        s = self.session
        ticked = set(self.validation_cases()) if keep_ticks and self.val_list.count() else None
        try:
            dataset = hasattr(s.index, "with_regions")  # a dataset folder, not loose files
            plan = plan_finetune(
                self.store_root(), s.checkpoint, data_root=s.dataset_root if dataset else None,
                replay_ratio=2.0 if self.search_check.isChecked() else float(self.replay_spin.value()),
                index=s.index if dataset else None,
            )
        except (ValueError, OSError) as exc:
            self.plan = None
            self.plan_label.setText(f"Cannot plan fine-tuning: {exc}")
            return None
        self.plan = plan
        chosen = set(plan.val_cases) if ticked is None else (ticked & set(plan.candidates))
        self.val_list.blockSignals(True)
        self.val_list.clear()
        for cid in plan.candidates:
            it = QListWidgetItem(cid)
            it.setFlags(it.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            it.setCheckState(Qt.CheckState.Checked if cid in chosen else Qt.CheckState.Unchecked)
            self.val_list.addItem(it)
        self.val_list.blockSignals(False)
        self._on_val_changed()
        return plan

    def validation_cases(self) -> list[str]:
        """The ticked validation cases."""
        out = []
        for i in range(self.val_list.count()):
            it = self.val_list.item(i)
            if it.checkState() == Qt.CheckState.Checked:
                out.append(it.text())
        return out

    def set_validation_cases(self, cases) -> None:
        """Tick exactly these validation cases."""
        want = set(cases)
        for i in range(self.val_list.count()):
            it = self.val_list.item(i)
            it.setCheckState(Qt.CheckState.Checked if it.text() in want else Qt.CheckState.Unchecked)

    def _on_val_changed(self) -> None:
        plan = self.plan
        n_val = len(self.validation_cases())
        self.val_count.setText(f"{n_val} of {self.val_list.count()} ticked")
        if plan is None:
            return
        if not plan.corrected_cases:
            text = "No saved correction yet: edit a case in the Correct dock and save it first."
        elif n_val == 0:
            text = (
                f"<b>0 validation cases</b> ({len(plan.corrected_cases)} corrected case(s)). Without "
                "validation there is no evidence that the model does not get worse elsewhere, so the "
                "new model is written only with 'write even if validation gets worse'. "
            )
            if self.val_list.count():
                text += "Tick some cases with ground truth below."
            else:
                text += plan.message
        else:
            text = (f"{len(plan.corrected_cases)} corrected case(s), {n_val} validation case(s), "
                    f"{len(plan.replay_cases)} replay case(s).")
        self.plan_label.setText(text)

    # ------------------------------------------------------------------ run
    def finetune_params(self) -> dict:
        """Arguments of :func:`cxrseg.finetune.finetune_iter` from the session and the form."""
        import datetime as _dt

        s = self.session
        searching = self.search_check.isChecked()
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
        params: dict[str, Any] = {
            "corrections": self.store_root(),
            "checkpoint": s.checkpoint,
            "out": self.models_dir() / f"finetuned-{stamp}.safetensors",
            "data_root": s.dataset_root,
            "replay_ratio": None if searching else float(self.replay_spin.value()),
            "epochs": None if searching else int(self.epochs_spin.value()),
            "search": "auto" if searching else False,
            "tolerance": float(self.tolerance_spin.value()),
            "force": bool(self.force_check.isChecked()),
            "device": s.device or "auto",
            "cache_dir": self.cache_dir(),
        }
        if s.dataset_root is not None and self.val_list.count():
            params["val_cases"] = self.validation_cases()
        return params

    def start_finetune(self, **overrides):
        """Start fine-tuning in a worker (``overrides`` update :meth:`finetune_params`);
        return the worker (``None`` when run synchronously or when it cannot start)."""
        if self._worker is not None:
            notify_info("fine-tuning is already running")
            return None
        try:
            params = self.finetune_params()
            params.update(overrides)
            if not Path(params["corrections"]).is_dir():
                raise ValueError(
                    f"no corrections saved yet (store {params['corrections']} is empty): "
                    "save a correction in the Correct dock first"
                )
        except (ValueError, OSError) as exc:
            self._set_status(f"Cannot fine-tune: {exc}")
            notify_error("Fine-tune failed", exc)
            return None
        self._job = {}
        self._cancelled = False
        self._steps, self._step_i = 1, 0
        self._cand = (1, 1)  # (setting, settings) of a search
        self.last_result = None
        self.new_model = None
        self.use_model_button.setVisible(False)
        self.report_text.setPlainText("")
        self.report_text.setVisible(False)
        self.progress.setValue(0)
        self.finetune_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self._set_status("fine-tuning: loading the model …")
        worker = start_worker(
            _finetune_job,
            params,
            self._job,
            context="Fine-tune",
            yielded=self._on_event,
            returned=self._on_done,
            errored=lambda exc: self._set_status(f"Fine-tune failed: {exc}"),
            finished=self._on_finished,
            progress=False,
            sync=self.session.synchronous,
        )
        self._worker = worker
        if worker is not None and hasattr(worker, "aborted"):
            worker.aborted.connect(self._on_aborted)
        return worker

    def cancel_finetune(self) -> None:
        """Stop the running fine-tuning (between two training steps)."""
        if self._worker is None:
            return
        self._cancelled = True
        self.cancel_button.setEnabled(False)
        self._set_status("cancelling …")
        self._worker.quit()

    def _set_status(self, text: str) -> None:
        self.status_label.setText(text)

    def _on_aborted(self) -> None:
        gen = self._job.get("gen")
        if gen is not None:
            try:
                gen.close()  # stops training, removes the temporary folder
            except Exception:  # noqa: BLE001
                log.exception("closing the fine-tuning generator")
        self._set_status("fine-tuning cancelled; nothing was written")

    def _on_event(self, ev: dict) -> None:
        kind = ev.get("kind")
        if kind == "stage":
            self._set_status(ev.get("message", ""))
        elif kind == "prepare":
            total = max(1, int(ev.get("total") or 1))
            self.progress.setValue(min(_PREP_SHARE, int(_PREP_SHARE * int(ev.get("done", 0)) / total)))
            self._set_status(ev.get("message", ""))
        elif kind == "start":
            self._steps = (ev["epochs"] - ev["start_epoch"] + 1) * max(1, ev["steps_per_epoch"])
            self._step_i = 0
            self.progress.setValue(max(self.progress.value(), _PREP_SHARE))
            self._set_status(f"training: {ev['epochs']} epoch(s) …")
        elif kind == "step":
            self._step_i += 1
            i, n = self._cand
            frac = (i - 1 + min(1.0, self._step_i / max(1, self._steps))) / n  # over all the settings
            self.progress.setValue(min(95, _PREP_SHARE + int((95 - _PREP_SHARE) * frac)))
        elif kind == "epoch":
            val = ev.get("val") or {}
            self._set_status(
                f"epoch {ev['epoch']}/{ev['epochs']}: loss {ev['loss']:.4f}, validation mean IoU "
                f"{val.get('mean', float('nan')):.4f}"
                if val
                else f"epoch {ev['epoch']}/{ev['epochs']}: loss {ev['loss']:.4f}"
            )
        elif kind == "candidate_start":
            self._cand = (int(ev["i"]), int(ev["n"]))
            st = ev["settings"]
            self._set_status(f"setting {ev['i']}/{ev['n']}: lr {st['lr']:g}, {st['epochs']} epoch(s), "
                             f"replay ratio {st['replay_ratio']:g} …")
        elif kind == "candidate":
            self.report_text.setPlainText("settings tried (corrected: mean IoU change of the corrected "
                                          "cases; worst val: largest validation change)\n" + ev["table"])
            self.report_text.setVisible(True)
        elif kind == "report":
            self.report_text.setPlainText(ev["table"])
            self.report_text.setVisible(True)

    def _on_done(self, result) -> None:
        self.last_result = result
        if result is None:
            return
        self.progress.setValue(100)
        if result.before:
            text = result.table()
            if len(result.candidates) > 1:
                from cxrseg.finetune import format_candidates

                text += "\n\nsettings tried:\n" + format_candidates(result.before, result.candidates)
            self.report_text.setPlainText(text)
            self.report_text.setVisible(True)
        if result.written:
            self.new_model = Path(result.path)
            self.use_model_button.setVisible(True)
            self.use_model_button.setEnabled(True)
            text = f"new model {result.path.name} ({result.model_id}): {result.reason}"
            self._set_status(text)
            notify_info(text)
        else:
            self._set_status(f"nothing written: {result.reason}")

    def _on_finished(self) -> None:
        self._worker = None
        self.finetune_button.setEnabled(True)
        self.cancel_button.setEnabled(False)

    def use_new_model(self):
        """Switch the session to the fine-tuned model (``model_changed``) and re-predict
        the current case; returns the prediction worker."""
        if self.new_model is None:
            notify_error("Use new model failed", "no fine-tuned model yet")
            return None
        s = self.session
        s.set_model(str(self.new_model))
        self.use_model_button.setEnabled(False)
        self._set_status(f"using {self.new_model.name}")
        if s.image is not None:
            return s.predict()
        return None


def _disconnect(session, callbacks) -> None:
    signals = (session.dataset_changed, session.model_changed)
    for sig, cb in zip(signals, callbacks, strict=True):
        try:
            sig.disconnect(cb)
        except Exception:  # noqa: BLE001
            pass
