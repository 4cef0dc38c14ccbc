"""Correct masks by hand and save them as versioned corrections.

The dock works on the viewer's :class:`~._state.Session` (current case, prediction,
ground truth, model):

* **Edit** turns the latest saved correction (default; the prediction where a region has
  none), the prediction or the ground truth of the chosen regions into one editable
  Labels layer per region, ``"<case> edit <region>"``, whose value is the region's label
  value; it is selected in paint mode, so napari's paint, erase, fill, polygon and undo
  do the editing, and the Compare dock measures it. An existing edit layer is never
  replaced (no stroke is lost); delete it to start again.
* A case with saved corrections shows them as its edit layers when it is opened.
* Strokes painted straight into the **prediction layer** are corrections too: the
  regions they touch are autosaved and saved like edit layers (an edit layer of the
  same region wins).
* **Save correction** writes every edit layer of the case that changed since it was
  last saved into the :class:`cxrseg.corrections.CorrectionStore` of the dataset (a
  new version each time; the ground truth is never touched) and reports the version
  and the IoU against the prediction and the ground truth.
* Unsaved edits are **autosaved** every few seconds (only layers that changed since the
  last autosave) to :class:`cxrseg.corrections.AutosaveStore`, and right before the case
  changes. When a case with an autosaved edit is loaded (after a crash or a restart),
  a **Restore unsaved edit (time)** button offers it back.
Fine-tuning on the saved corrections is the Fine-tune dock's job
(:mod:`napari_cxrseg._widgets._finetune`).
"""

from __future__ import annotations

import getpass
import logging
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
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

from cxrseg.regions import DISPLAY_NAMES, LABEL_VALUES, REGIONS, canonical_region

from ._notify import notify_error, notify_info
from ._state import get_session

log = logging.getLogger("napari_cxrseg")

__all__ = ["CorrectWidget"]

SOURCES = ("latest correction", "prediction", "ground truth")
#: ``source`` recorded for regions corrected by painting into the prediction layer.
PREDICTION_LAYER_SOURCE = "prediction layer"


def _fingerprint(data) -> int:
    a = np.ascontiguousarray(np.asarray(data) != 0)
    return zlib.crc32(np.packbits(a, axis=None).tobytes()) ^ (a.shape[0] << 16) ^ a.shape[1]


class CorrectWidget(QWidget):
    """Dock widget: edit, save and autosave corrections.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    """

    #: Autosave period (milliseconds).
    autosave_interval_ms = 3000

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.session = get_session(napari_viewer)
        #: layer name -> {"saved": fingerprint at the last save (None: never),
        #:                "autosaved": fingerprint at the last autosave}
        self._track: dict[str, dict[str, Any]] = {}
        self._stores: dict[tuple, Any] = {}
        self.last_saved: list = []

        layout = QVBoxLayout(self)
        self.case_label = QLabel("no case loaded")
        layout.addWidget(self.case_label)

        # -- editing
        edit_box = QGroupBox("Correct")
        eg = QVBoxLayout(edit_box)
        grid = QGridLayout()
        self.region_boxes: dict[str, QCheckBox] = {}
        for i, r in enumerate(REGIONS):
            cb = QCheckBox(DISPLAY_NAMES[r])
            cb.setToolTip(f"edit the {DISPLAY_NAMES[r]} mask (label value {LABEL_VALUES[r]})")
            self.region_boxes[r] = cb
            grid.addWidget(cb, i // 2, i % 2)
        eg.addLayout(grid)
        form = QFormLayout()
        self.source_combo = QComboBox()
        self.source_combo.addItems(SOURCES)
        self.source_combo.setToolTip(
            "start the edit from the latest saved correction of the region (the prediction "
            "where there is none), from the model's prediction or from the ground truth"
        )
        form.addRow("start from", self.source_combo)
        self.annotator_edit = QLineEdit(_default_annotator())
        form.addRow("annotator", self.annotator_edit)
        eg.addLayout(form)
        row = QHBoxLayout()
        self.edit_button = QPushButton("Edit")
        self.edit_button.setToolTip(
            "one editable Labels layer per chosen region (paint, erase, fill, polygon, undo)"
        )
        self.save_button = QPushButton("Save correction")
        self.save_button.setToolTip("save the changed edit layers as new correction versions")
        row.addWidget(self.edit_button)
        row.addWidget(self.save_button)
        eg.addLayout(row)
        self.restore_button = QPushButton("Restore unsaved edit")
        self.discard_button = QPushButton("Discard")
        row2 = QHBoxLayout()
        row2.addWidget(self.restore_button)
        row2.addWidget(self.discard_button)
        eg.addLayout(row2)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        eg.addWidget(self.status_label)
        layout.addWidget(edit_box)

        layout.addStretch(1)

        self.edit_button.clicked.connect(lambda: self.edit())
        self.save_button.clicked.connect(lambda: self.save())
        self.restore_button.clicked.connect(lambda: self.restore())
        self.discard_button.clicked.connect(lambda: self.discard_pending())

        s = self.session
        s.case_about_to_change.connect(self._on_case_about_to_change)
        s.case_changed.connect(self._on_case_changed)
        s.dataset_changed.connect(self._on_dataset_changed)
        self._timer = QTimer(self)
        self._timer.setInterval(int(self.autosave_interval_ms))
        self._timer.timeout.connect(self._on_timer)
        self._timer.start()
        callbacks = (self._on_case_about_to_change, self._on_case_changed, self._on_dataset_changed)
        self.destroyed.connect(lambda *_a, s=s, cb=callbacks: _disconnect(s, cb))
        self._on_case_changed(s.case_id)

    # ------------------------------------------------------------------ stores
    def _workdir(self) -> Path:
        return self.session.work_dir()

    def store_root(self) -> Path:
        """The corrections store of the open dataset (``<dataset>/corrections/``)."""
        return self.session.corrections_root()

    def correction_store(self):
        """The :class:`cxrseg.corrections.CorrectionStore` of the open dataset."""
        from cxrseg.corrections import CorrectionStore

        key = (str(self.store_root()), str(self.session.dataset_root))
        if key not in self._stores:
            self._stores[key] = CorrectionStore(
                self.store_root(), dataset_root=self.session.dataset_root
            )
        return self._stores[key]

    def autosave_store(self):
        """The :class:`cxrseg.corrections.AutosaveStore` of the open dataset."""
        from cxrseg.corrections import AutosaveStore

        return AutosaveStore(self._workdir())

    # ------------------------------------------------------------------ helpers
    def selected_regions(self) -> tuple[str, ...]:
        return tuple(r for r in REGIONS if self.region_boxes[r].isChecked())

    def set_regions(self, regions) -> None:
        """Tick exactly these regions."""
        from cxrseg.regions import parse_regions

        chosen = set(parse_regions(regions)) if regions else set()
        for r, cb in self.region_boxes.items():
            cb.setChecked(r in chosen)

    def edit_layers(self) -> dict[str, Any]:
        """Region -> edit layer of the current case."""
        s = self.session
        out = {}
        if s.case_id is None:
            return out
        for r in REGIONS:
            name = s.layer_name("edit", r)
            if name in self.viewer.layers:
                out[r] = self.viewer.layers[name]
        return out

    def _set_status(self, text: str) -> None:
        self.status_label.setText(text)

    def _scale(self):
        img = self.session.image
        if img is not None and img.spacing:
            return tuple(float(x) for x in img.spacing)
        return (1.0, 1.0)

    def _add_edit_layer(
        self, region: str, mask: np.ndarray, source: str, *, saved_fp=None, restored=False,
        activate: bool = True,
    ):
        from napari_cxrseg._layers import labels_layer_tuple

        s = self.session
        name = s.layer_name("edit", region)
        value = LABEL_VALUES[region]
        data = np.where(np.asarray(mask, bool), value, 0).astype(np.uint8)
        md = {
            "kind": "edit",
            "case_id": s.case_id,
            "region": region,
            "source": source,
            "model_id": s.model_id,
            "label_value": value,
        }
        data, kw, _lt = labels_layer_tuple(
            data, name, scale=self._scale(), metadata=md, opacity=0.6
        )
        layer = self.viewer.add_labels(data, **kw)
        layer.selected_label = value
        layer.brush_size = max(3, int(round(max(data.shape) / 100)))
        if activate:
            layer.mode = "paint"
            self.viewer.layers.selection.active = layer
        fp = _fingerprint(layer.data)
        self._track[name] = {
            "saved": fp if saved_fp == "now" else saved_fp,
            "autosaved": fp,
            "restored": restored,
        }
        return layer

    # ------------------------------------------------------------------ edit
    def _latest_correction(self, region: str):
        """``(mask, version)`` of the region's latest saved correction of the current case
        (on the image grid), or ``None``."""
        s = self.session
        if s.dataset_root is None or s.case_id is None:
            return None
        try:
            v = self.correction_store().latest(s.case_id, region)
            if v is None:
                return None
            mask = np.asarray(v.load_mask(), bool)
        except (OSError, ValueError) as exc:
            notify_error(f"Reading the saved {region} correction of {s.case_id} failed", exc)
            return None
        if s.image is not None and mask.shape != s.image.shape:
            from cxrseg.io import resize_mask_nearest

            mask = np.asarray(resize_mask_nearest(mask, s.image.shape), bool)
        return mask, v

    def _base_mask(self, region: str, source: str):
        """``(mask, source label)`` an edit of ``region`` starts from (see :meth:`edit`)."""
        s = self.session
        if source == "latest correction":
            found = self._latest_correction(region)
            if found is not None:
                return found[0], f"correction v{found[1].version:03d}"
            source = "prediction" if s.probs is not None else "ground truth"
            if source == "ground truth" and not s.truth:
                raise ValueError(
                    f"{s.case_id} has no saved {region} correction, no prediction and no ground "
                    "truth: predict it first"
                )
        if source == "prediction":
            if s.probs is None:
                raise ValueError(
                    f"{s.case_id} has no prediction yet: predict it first, or start from the "
                    "ground truth"
                )
            base = s.prediction_masks() or dict(s.masks or {})
            if region not in base and region not in s.probs:
                raise ValueError(f"the prediction has no {region}: the model does not predict it")
        else:
            if not s.truth:
                raise ValueError(f"{s.case_id} has no ground truth; start from the prediction")
            base = dict(s.truth)
        m = base.get(region)
        return (np.zeros(s.image.shape, bool) if m is None else m), source

    def edit(self, regions=None, source: str | None = None) -> list:
        """Create (or select) the edit layers of ``regions`` (default: the ticked ones).

        ``source`` (default: the combo box) is ``"latest correction"`` (the region's
        newest saved correction; the prediction where there is none, the ground truth
        without a prediction), ``"prediction"`` or ``"ground truth"``. The Compare dock
        then measures the (last) edit layer. Returns the edit layers.
        """
        s = self.session
        try:
            if s.case_id is None or s.image is None:
                raise ValueError("no case is loaded: open a dataset and pick a case first")
            if regions is not None:
                self.set_regions(regions)
            chosen = self.selected_regions()
            if not chosen:
                raise ValueError("tick at least one region to edit")
            source = source or self.source_combo.currentText()
            if source not in SOURCES:
                raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
            layers = []
            existing = self.edit_layers()
            for r in chosen:
                if r in existing:  # never replace an edit in progress
                    layers.append(existing[r])
                    continue
                m, label = self._base_mask(r, source)
                layers.append(self._add_edit_layer(r, m, label))
            if layers:
                self.viewer.layers.selection.active = layers[-1]
                layers[-1].mode = "paint"
                s.measure_layer.emit(layers[-1].name)
            self._set_status(
                f"editing {', '.join(ly.name for ly in layers)}: paint (P), erase (E), fill (F), "
                "polygon, undo (Ctrl+Z); then Save correction"
            )
            return layers
        except (ValueError, KeyError) as exc:
            notify_error("Edit failed", exc)
            return []

    def show_saved(self) -> list:
        """Open the current case's saved corrections as its edit layers (regions with an
        unsaved autosave are left to :meth:`restore`); returns the new layers."""
        s = self.session
        if s.case_id is None or s.image is None or s.dataset_root is None:
            return []
        try:
            unsaved = {e.region for e in self.autosave_store().pending(s.case_id)}
        except OSError:
            unsaved = set()
        existing = self.edit_layers()
        layers = []
        for r in REGIONS:
            if r in existing or r in unsaved:
                continue
            found = self._latest_correction(r)
            if found is None:
                continue
            mask, v = found
            layers.append(self._add_edit_layer(r, mask, f"correction v{v.version:03d}", saved_fp="now",
                                               activate=False))
        if layers:
            self._set_status(f"{s.case_id}: saved correction of "
                             f"{', '.join(ly.metadata['cxrseg']['region'] for ly in layers)} shown")
        return layers

    # ------------------------------------------------------------------ prediction-layer strokes
    def prediction_layer_masks(self, case_id: str | None = None) -> dict[str, np.ndarray]:
        """Region -> corrected mask, for the regions whose pixels were painted by hand in the
        prediction layer of the current case (``{}`` without such strokes).

        A region's mask is the model's mask with the painted pixels set to whether they now
        carry its label value (so painting another region over it removes it there)."""
        s = self.session
        if s.case_id is None or (case_id is not None and case_id != s.case_id) or not s.masks:
            return {}
        edits = s.prediction_edits()
        if edits is None:
            return {}
        where, values = edits
        out = {}
        for r in REGIONS:
            base = s.masks.get(r)
            now = values == LABEL_VALUES[r]
            if base is None:
                if now.any():
                    base = np.zeros(s.image.shape, bool)
                else:
                    continue
            if not (base[where].any() or now.any()):
                continue  # strokes elsewhere
            m = np.array(base, bool, copy=True)
            m[where] = now
            if np.array_equal(m, base):
                continue
            out[r] = m
        return out

    def _correction_sources(self, case_id: str | None = None) -> dict[str, tuple[str, np.ndarray, dict]]:
        """Region -> (tracking key, label data, metadata) of everything the user edited in the
        case: its edit layers, and prediction-layer strokes of regions without an edit layer."""
        s = self.session
        cid = case_id or s.case_id
        out: dict[str, tuple[str, np.ndarray, dict]] = {}
        if cid is None:
            return out
        for r in REGIONS:
            name = s.layer_name("edit", r, case_id=cid)
            if name in self.viewer.layers:
                ly = self.viewer.layers[name]
                out[r] = (name, np.asarray(ly.data), dict(ly.metadata.get("cxrseg", {})))
        for r, m in self.prediction_layer_masks(cid).items():
            if r not in out:
                md = {"source": PREDICTION_LAYER_SOURCE, "model_id": s.model_id}
                out[r] = (f"{s.layer_name('prediction', case_id=cid)} {r}", m, md)
        return out

    # ------------------------------------------------------------------ save
    def save(self) -> list:
        """Save what changed since the last save in the current case -- edit layers, and
        strokes painted into the prediction layer -- as new correction versions; return them."""
        s = self.session
        try:
            sources = self._correction_sources()
            if not sources:
                raise ValueError("nothing to save: click Edit first (or paint into the prediction layer)")
            todo = {
                r: src
                for r, src in sources.items()
                if self._track.get(src[0], {}).get("saved") != _fingerprint(src[1])
            }
            if not todo:
                self._set_status("no change since the last save")
                return []
            store = self.correction_store()
            autos = self.autosave_store()
            annotator = self.annotator_edit.text().strip() or None
            image_path = getattr(s.image, "path", None) or getattr(s.case, "image_path", None)
            saved = []
            for r, (key, data, md) in todo.items():
                mask = data != 0
                fp = _fingerprint(data)
                pred = (s.masks or {}).get(r)
                truth = (s.truth or {}).get(r)
                v = store.save(
                    s.case_id,
                    r,
                    mask,
                    prediction=pred,
                    truth=truth,
                    model_id=md.get("model_id") or s.model_id,
                    annotator=annotator,
                    image_path=image_path,
                    extra={
                        "source": md.get("source"),
                        "label_value": LABEL_VALUES[r],
                        "spacing": list(s.image.spacing) if s.image.spacing else None,
                    },
                )
                self._track.setdefault(key, {})["saved"] = fp
                self._track[key]["autosaved"] = fp
                autos.discard(s.case_id, r)
                saved.append(v)
            self.last_saved = saved
            msgs = []
            for v in saved:
                parts = [f"{v.region} v{v.version:03d}"]
                if v.meta.get("iou_prediction") is not None:
                    parts.append(f"IoU vs prediction {v.meta['iou_prediction']:.3f}")
                if v.meta.get("iou_truth") is not None:
                    parts.append(f"vs ground truth {v.meta['iou_truth']:.3f}")
                if v.meta.get("pixels_changed") is not None:
                    parts.append(f"{v.meta['pixels_changed']} px changed")
                msgs.append(", ".join(parts))
            text = f"Saved {s.case_id}: " + "; ".join(msgs)
            self._set_status(text)
            notify_info(text)
            self._refresh_restore()
            return saved
        except (ValueError, OSError) as exc:
            notify_error("Save correction failed", exc)
            return []

    # ------------------------------------------------------------------ autosave
    def autosave_now(self, case_id: str | None = None) -> list[Path]:
        """Autosave what changed since the last autosave (edit layers, prediction-layer
        strokes); return the files."""
        s = self.session
        cid = case_id or s.case_id
        if cid is None:
            return []
        written = []
        autos = None
        for r, (key, data, md) in self._correction_sources(cid).items():
            tr = self._track.setdefault(key, {"saved": None, "autosaved": None})
            fp = _fingerprint(data)
            if fp == tr.get("autosaved"):
                continue
            autos = autos or self.autosave_store()
            try:
                if fp == tr.get("saved"):  # back to the saved state: nothing unsaved
                    autos.discard(cid, r)
                else:
                    written.append(
                        autos.save(cid, r, data != 0, source=md.get("source"), model_id=md.get("model_id"))
                    )
                tr["autosaved"] = fp
            except (OSError, ValueError) as exc:  # keep editing; tell the user once per failure
                notify_error(f"Autosave of {key} failed", exc)
        return written

    def _on_timer(self) -> None:
        try:
            self.autosave_now()
        except Exception as exc:  # noqa: BLE001 - a timer must never raise into Qt
            log.exception("autosave failed")
            self._set_status(f"autosave failed: {exc}")

    def _on_case_about_to_change(self, old_case) -> None:
        # the session is about to remove this case's layers: keep every unsaved stroke
        try:
            self.autosave_now(old_case)
        except Exception as exc:  # noqa: BLE001
            notify_error("Autosave before changing case failed", exc)
        for name in [n for n in self._track if n.startswith((f"{old_case} edit ", f"{old_case} prediction "))]:
            self._track.pop(name, None)

    def _on_case_changed(self, case_id) -> None:
        self.case_label.setText(f"case: {case_id}" if case_id else "no case loaded")
        try:
            self.show_saved()
        except Exception as exc:  # noqa: BLE001 - a signal handler must never raise into the session
            notify_error(f"Showing the saved corrections of {case_id} failed", exc)
        self._refresh_restore()

    def _on_dataset_changed(self, _root) -> None:
        self._stores.clear()
        self._refresh_restore()

    def pending(self) -> list:
        """Autosaved edits of the current case that have no edit layer open."""
        s = self.session
        if s.case_id is None:
            return []
        try:
            entries = self.autosave_store().pending(s.case_id)
        except OSError:
            return []
        open_ = set(self._correction_sources())  # being edited now: the layer is newer
        return [e for e in entries if e.region not in open_]

    def _refresh_restore(self) -> None:
        entries = self.pending()
        if entries:
            when = max(e.time for e in entries)
            t = when.replace("T", " ").replace("+00:00", " UTC")
            regs = ", ".join(e.region for e in entries)
            self.restore_button.setText(f"Restore unsaved edit ({t})")
            self.restore_button.setToolTip(f"autosaved, not saved: {regs}")
        self.restore_button.setVisible(bool(entries))
        self.discard_button.setVisible(bool(entries))
        self.restore_button.setEnabled(bool(entries))

    def restore(self) -> list:
        """Reopen the autosaved edits of the current case as edit layers."""
        s = self.session
        layers = []
        try:
            autos = self.autosave_store()
            for e in self.pending():
                r = canonical_region(e.region)
                mask = autos.restore(s.case_id, r)
                if s.image is not None and mask.shape != s.image.shape:
                    raise ValueError(
                        f"autosaved {r} edit has shape {mask.shape}, the image {s.image.shape}"
                    )
                name = s.layer_name("edit", r)
                if name in self.viewer.layers:
                    self.viewer.layers.remove(self.viewer.layers[name])
                layers.append(
                    self._add_edit_layer(r, mask, e.meta.get("source") or "autosave", restored=True)
                )
            if layers:
                s.measure_layer.emit(layers[-1].name)
                self._set_status(
                    f"restored unsaved edit of {', '.join(ly.name for ly in layers)}; "
                    "save it to keep it"
                )
        except (ValueError, KeyError, OSError) as exc:
            notify_error("Restore failed", exc)
        self._refresh_restore()
        return layers

    def discard_pending(self) -> None:
        """Delete the autosaved edits of the current case."""
        s = self.session
        autos = self.autosave_store()
        for e in self.pending():
            autos.discard(s.case_id, e.region)
        self._refresh_restore()

def _default_annotator() -> str:
    try:
        return os.environ.get("CXRSEG_ANNOTATOR") or getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name available
        return ""


def _disconnect(session, callbacks) -> None:
    signals = (session.case_about_to_change, session.case_changed, session.dataset_changed)
    for sig, cb in zip(signals, callbacks, strict=True):
        try:
            sig.disconnect(cb)
        except Exception:  # noqa: BLE001
            pass
