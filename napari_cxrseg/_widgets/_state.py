"""The review session of a viewer: what is open, predicted and measured, shared by all docks.

One :class:`Session` per viewer (:func:`get_session`) holds the open dataset, the current
case (image + exact reference masks), the current prediction (probability maps at image
resolution, kept so thresholds can change without re-running the model), the model
choice and the thresholds. It keeps the case's layers in step with that state and tells
the widgets what changed through psygnal signals (docks talk to each other only through
the session):

============================  =======================================================
signal                        emitted with / when
============================  =======================================================
``dataset_changed(root)``     a dataset (or a list of files) was opened
``case_about_to_change(id)``  before the current case's layers are removed (save edits!)
``case_changed(id)``          a case was loaded and its image + ground truth shown
``model_changed(ckpt)``       the model file or device changed
``prediction_changed(mid)``   new probability maps (model id); ``None`` when cleared
``prediction_failed(msg)``    the model could not run (after the error notification)
``thresholds_changed()``      the prediction masks were re-thresholded
``masks_edited(name)``        a prediction / edit Labels layer was painted
``scores_changed(id)``        per-region IoUs of a case became known
``review_changed(id)``        a case's review status changed
``measure_layer(name)``       the layer the user edits now (Compare measures it)
============================  =======================================================

The session's helpers live beside it, one job each: layer names and pure layer helpers in
:mod:`._layer_helpers`, layer recycling and every use of napari internals in
:mod:`._layer_pool`, background jobs (their bodies, and the tracker that drops results
for a case no longer shown, a superseded request or a closed viewer) in :mod:`._jobs`.

Long work (reading a case, running the model, re-thresholding with post-processing)
runs in napari thread workers; layers are touched only in the GUI-thread callbacks.
Every ``*_sync`` method does the same work inline (tests, scripts);
``Session.synchronous = True`` or env ``CXRSEG_SYNC=1`` makes the worker variants run
inline too.
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from psygnal import Signal

from cxrseg.regions import REGIONS, canonical_region

from .._colors import ground_truth_colormap
from ._file_cases import FileCases
from ._jobs import Jobs, compute_masks, mask_job, predict_job, read_case
from ._layer_helpers import (
    ERROR_COLORS,
    LAYER_KINDS,
    _errors_colormap,
    _heat_colormap,
    display_stride,
    heat_display,
    is_case_layer,
    layer_name,
)
from ._layer_pool import LayerPool, viewer_closed, watch_close
from ._notify import notify_error, notify_info
from ._torch_env import guard_triton_import
from ._workers import ensure_pool_headroom, sync_mode

log = logging.getLogger("napari_cxrseg")

__all__ = [
    "Session",
    "get_session",
    "FileCases",
    "LAYER_KINDS",
    "ERROR_COLORS",
    "compute_masks",
    "display_stride",
    "_heat_colormap",
    "_errors_colormap",
]

# (kept importable from here: older code and tests import them from this module)
_mask_job, _predict_job = mask_job, predict_job

_SESSIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def get_session(viewer) -> Session:
    """The :class:`Session` of ``viewer`` (created on first use; one per viewer)."""
    guard_triton_import()
    ensure_pool_headroom()
    s = _SESSIONS.get(viewer)
    if s is None:
        s = Session(viewer)
        _SESSIONS[viewer] = s
    return s


class Session:
    """Shared state of the napari-cxrseg docks of one viewer (see the module docstring)."""

    dataset_changed = Signal(object)
    case_about_to_change = Signal(object)
    case_changed = Signal(object)
    model_changed = Signal(object)
    prediction_changed = Signal(object)
    prediction_failed = Signal(str)
    thresholds_changed = Signal()
    masks_edited = Signal(object)
    scores_changed = Signal(object)
    review_changed = Signal(object)
    measure_layer = Signal(object)

    def __init__(self, viewer):
        self._viewer_ref = weakref.ref(viewer)
        #: Run workers inline (tests); default from env ``CXRSEG_SYNC``.
        self.synchronous: bool = sync_mode()
        self.dataset_root: Path | None = None
        self.index = None
        #: The dataset's :class:`cxrseg.review.ReviewLedger` (``None`` until it exists).
        self.ledger = None
        self._ledger_path: Path | None = None
        self.case = None
        self.case_id: str | None = None
        self.image = None
        self.truth: dict[str, np.ndarray] | None = None
        self.probs: dict[str, np.ndarray] | None = None
        #: Thresholded (and maybe post-processed) prediction masks, exact per region.
        self.masks: dict[str, np.ndarray] | None = None
        self.model_id: str | None = None
        #: The refinement network of the prediction shown (``None``: the whole-film model alone).
        self.refine_id: str | None = None
        self.model_regions: tuple[str, ...] | None = None
        self.checkpoint: str | None = None
        self.device: str = "auto"
        #: Use the model's native-resolution clavicle refinement when it has one.
        self.refine: bool = True
        #: A :class:`cxrseg.serve.PredictorProcess` serving this model in a child process
        #: (``cxrseg-gui`` starts one); ``None``: predictions run in this process.
        self.predictor_process = None
        #: Where the prediction shown was computed ("the prediction process" or "napari's process").
        self.predicted_in: str | None = None
        self.thresholds: dict[str, float] = {}
        self.postprocess: bool = False
        #: Predict the case as soon as it is loaded.
        self.auto_predict: bool = False
        #: Regions to predict (``None``: all the model has).
        self.regions: tuple[str, ...] | None = None
        #: Display settings applied to the layers the session creates.
        self.display: dict[str, Any] = {
            "heatmap_opacity": 0.6,
            # heatmaps subsampled to at most this side (the model's input is smaller); None: full size
            "heatmap_max_side": 512,
            "mask_opacity": 0.45,
            # filled: napari recomputes contours of the whole image on each change (slow at 2048 px)
            "contour": 0,
            "gt_opacity": 0.7,
            "gt_contour": 2,
            "show_heatmaps": True,
        }
        #: Case id -> {region: IoU}, from the Compare widget and review runs.
        self.case_scores: dict[str, dict[str, float]] = {}
        #: Timings of the last prediction (seconds): load_s, predict_s, total_s.
        self.last_timing: dict[str, float] = {}
        #: Order of PageDown / PageUp stepping (the Cases table's order); ``None``: dataset order.
        self.case_order: list[str] | None = None
        #: Set by :meth:`close` (the viewer's window closed): no result is applied any more.
        self.closed = False
        #: The case's layers: created, recycled (parked / claimed), updated in place.
        self.pool = LayerPool(self._viewer_ref)
        #: Background jobs; drops results of superseded requests and of cases no longer shown.
        self.jobs = Jobs(lambda: self.case_id, self.alive)
        watch_close(viewer, self.close)
        self._keys_bound = False
        #: (case id, copy of the labels last written into the prediction layer): pixels of
        #: the layer that differ from it are hand edits, kept when the labels are rewritten.
        self._pred_shown: tuple[str | None, np.ndarray] | None = None

    # ------------------------------------------------------------------ basics
    @property
    def viewer(self):
        """The viewer (``None`` once it has been garbage-collected)."""
        return self._viewer_ref()

    def __repr__(self) -> str:
        return f"<Session case={self.case_id!r} dataset={str(self.dataset_root) if self.dataset_root else None!r}>"

    def layer_name(self, kind: str, region: str | None = None, *, case_id: str | None = None) -> str:
        """Name of a layer of the current (or given) case (:func:`._layer_helpers.layer_name`).

        ``kind`` is one of ``image``, ``ground_truth`` (``gt``), ``prediction``,
        ``heatmap`` and ``edit`` (these two need ``region``), ``errors``.
        """
        return layer_name(case_id if case_id is not None else self.case_id, kind, region)

    def get_layer(self, kind: str, region: str | None = None):
        """The layer of that kind for the current case, or ``None``."""
        v = self.viewer
        if v is None or self.case_id is None:
            return None
        name = self.layer_name(kind, region)
        return v.layers[name] if name in v.layers else None

    def _is_case_layer(self, name: str, case_id: str) -> bool:
        return is_case_layer(name, case_id)

    def case_layers(self, case_id: str | None = None) -> list:
        """The layers (by the naming scheme) of the current or given case."""
        v = self.viewer
        cid = case_id if case_id is not None else self.case_id
        if v is None or cid is None:
            return []
        return [ly for ly in v.layers if is_case_layer(ly.name, cid)]

    def alive(self) -> bool:
        """Whether the session may still touch layers (not closed, the viewer's window open)."""
        return not self.closed and not viewer_closed(self.viewer)

    # -- layers: created, recycled and updated in place by the pool (see _layer_pool)
    def _add_layer(self, data, kwargs: dict, layer_type: str, *, kind: str, region: str | None = None):
        return self.pool.add(data, kwargs, layer_type, kind=kind, case_id=self.case_id, region=region)

    def _park(self, layer) -> None:
        if self.pool.is_parked(layer):
            return
        if (layer.metadata.get("cxrseg") or {}).get("kind") == "prediction":
            self._pred_shown = None  # its labels are gone: nothing in it is a hand edit any more
        self.pool.park(layer)

    def _claim(self, kind: str, region: str | None = None):
        return self.pool.claim(self.layer_name(kind, region), kind, region, self.case_id)

    def _scale(self) -> tuple[float, float]:
        if self.image is not None and self.image.spacing:
            return tuple(float(s) for s in self.image.spacing)
        return (1.0, 1.0)

    # ------------------------------------------------------------------ dataset
    def open_dataset_sync(self, root: str | os.PathLike) -> None:
        """Index a dataset folder (or one image file) and open its review ledger."""
        from cxrseg.dataset import DatasetIndex

        self._apply_dataset(DatasetIndex(root))

    def open_dataset(self, root: str | os.PathLike):
        """:meth:`open_dataset_sync` in a worker; returns it (``None`` when synchronous)."""
        from cxrseg.dataset import DatasetIndex

        return self.jobs.start("dataset", DatasetIndex, root, case_id=None, context=f"Open dataset {root}",
                               returned=self._apply_dataset, sync=self.synchronous, progress=True)

    def open_files_sync(self, paths: Sequence[str | os.PathLike]) -> None:
        """Open a list of image files as cases (masks beside them are found too)."""
        self._apply_dataset(FileCases(paths))

    def open_files(self, paths: Sequence[str | os.PathLike]):
        """:meth:`open_files_sync` in a worker."""
        return self.jobs.start("dataset", FileCases, list(paths), case_id=None, context="Open files",
                               returned=self._apply_dataset, sync=self.synchronous)

    def _apply_dataset(self, index) -> None:
        from cxrseg.review import ReviewLedger, ledger_path

        if self.ledger is not None:
            try:
                self.ledger.close()
            except Exception:  # pragma: no cover
                pass
            self.ledger = None
        self.index = index
        self.dataset_root = Path(index.root).resolve()
        self.case_scores = {}
        self.case_order = None
        # Opening a dataset never writes into it: the ledger is opened if it exists and
        # created on the first review status or review run (ensure_ledger).
        self._ledger_path = ledger_path(self.dataset_root)
        if self._ledger_path.is_file():
            try:
                self.ledger = ReviewLedger(self._ledger_path)
                mid = self.ledger.latest_model_id()
                if mid:
                    self.case_scores = self.ledger.scores(mid)
            except (OSError, ValueError) as exc:
                notify_error(f"Review ledger of {self.dataset_root} unavailable", exc)
                self.ledger = None
        self.dataset_changed.emit(self.dataset_root)

    def work_dir(self) -> Path:
        """The open dataset's working folder (``<home>/no-dataset`` without one)."""
        from cxrseg.workspace import home, workdir

        root = self.dataset_root
        return workdir(root) if root is not None else home() / "no-dataset"

    def corrections_root(self) -> Path:
        """The corrections store of the open dataset (``<dataset>/corrections/``)."""
        from cxrseg.workspace import corrections_dir, home

        root = self.dataset_root
        return corrections_dir(root) if root is not None else home() / "no-dataset" / "corrections"

    def ensure_ledger(self):
        """The open dataset's review ledger, created if needed (``None`` without a dataset)."""
        from cxrseg.review import ReviewLedger

        if self.ledger is None and self.dataset_root is not None:
            self.ledger = ReviewLedger(self._ledger_path)
        return self.ledger

    @property
    def case_ids(self) -> list[str]:
        """Case ids of the open dataset, in table order."""
        return [c.case_id for c in self.index.cases] if self.index is not None else []

    def _resolve_case(self, case_or_id):
        if hasattr(case_or_id, "load_image"):
            return case_or_id
        if self.index is None:
            p = Path(str(case_or_id))
            if p.exists():
                self.open_dataset_sync(p)
                return self.index.cases[0]
            raise KeyError(f"no dataset is open, cannot find case {case_or_id!r}")
        return self.index[case_or_id]

    # ------------------------------------------------------------------ cases
    def load_case_sync(self, case_or_id, *, predict: bool | None = None) -> None:
        """Read a case and show it (image + ground truth), replacing the previous case."""
        case = self._resolve_case(case_or_id)
        self.jobs.supersede("load")
        self._apply_case(read_case(case), predict=False)
        if predict if predict is not None else self.auto_predict:
            self.predict_sync()

    def load_case(self, case_or_id, *, predict: bool | None = None):
        """:meth:`load_case_sync` with the reading in a worker; returns the worker.

        With ``predict`` (default :attr:`auto_predict`) a prediction worker follows. Only
        the newest request is shown: asking for another case before this one was read
        drops it; asking for the case on screen while another is being read just drops
        that one (``None`` is returned), and the shown case keeps its prediction.
        """
        try:
            case = self._resolve_case(case_or_id)
        except (KeyError, ValueError, OSError) as exc:
            notify_error("Load case failed", exc)
            return None
        do_predict = predict if predict is not None else self.auto_predict
        cid = str(case.case_id)
        if cid == self.case_id and self.jobs.pending_case("load") is not None:
            self.jobs.supersede("load")
            if do_predict and self.probs is None and self.jobs.pending_case("predict") is None:
                self.predict()
            return None
        return self.jobs.start("load", read_case, case, case_id=cid, check_case=False, context=f"Load {cid}",
                               returned=lambda payload: self._apply_case(payload, predict=do_predict),
                               sync=self.synchronous)

    def _apply_case(self, payload: dict, *, predict: bool = False) -> None:
        v = self.viewer
        if v is None or not self.alive():
            return
        old = self.case_id
        old_shape = self.image.shape if self.image is not None else None
        with self.pool.one_extent_update():
            self._swap_case_layers(payload, old)
        if old_shape != self.image.shape:
            v.reset_view()
        self.pool.schedule_thumbnails()
        self.case_changed.emit(self.case_id)
        if predict:
            self.predict()

    def _swap_case_layers(self, payload: dict, old: str | None) -> None:
        v = self.viewer
        keep: dict[str, Any] = {}
        if old is not None:
            self.case_about_to_change.emit(old)
            for ly in self.case_layers(old):
                md = dict(ly.metadata.get("cxrseg") or {})
                kind = md.get("kind") if md.get("case_id") == old else None
                if kind in ("image", "ground_truth") and kind not in keep:
                    keep[kind] = ly  # reused below for the new case
                elif kind in ("heatmap", "prediction", "errors"):
                    self._park(ly)
                else:  # edit layers and anything else named after the old case
                    v.layers.remove(ly)
        case, image, truth = payload["case"], payload["image"], payload["truth"]
        self.case, self.case_id, self.image, self.truth = case, str(case.case_id), image, truth
        self.probs = self.masks = None
        self._pred_shown = None
        # results of the old case's prediction or thresholds still running are not for this one
        self.jobs.supersede("predict")
        self.jobs.supersede("masks")
        from napari_cxrseg._layers import ground_truth_layer_tuple, image_layer_tuple

        data, kw, lt = image_layer_tuple(image, self.case_id, case_id=self.case_id)
        if "image" in keep:
            self.pool.reuse(keep.pop("image"), data, kw, kind="image", case_id=self.case_id)
        else:
            self._add_layer(data, kw, lt, kind="image")
        if truth:
            data, kw, lt = ground_truth_layer_tuple(
                truth, self.layer_name("ground_truth"), shape=image.shape, scale=self._scale(),
                case_id=self.case_id, spacing=image.spacing,
                source={r: str(p) for r, p in getattr(case, "mask_paths", {}).items()},
            )
            kw["opacity"] = float(self.display.get("gt_opacity", kw.get("opacity", 0.5)))
            kw["colormap"] = ground_truth_colormap()  # an outline in its own colour
            if "ground_truth" in keep:
                gt = keep.pop("ground_truth")
                self.pool.reuse(gt, data, kw, kind="ground_truth", case_id=self.case_id)
            else:
                gt = self._add_layer(data, kw, lt, kind="ground_truth")
            gt.contour = int(self.display.get("gt_contour", 0))
        for ly in keep.values():  # e.g. the old case had ground truth, the new one has none
            v.layers.remove(ly)

    def step_case(self, step: int = 1):
        """Load the next (``step=1``) or previous (``-1``) case (in :attr:`case_order`, else
        dataset order); returns the worker, ``None`` past either end.

        Steps count from the case last asked for (still being read, maybe), so two quick
        PageDown presses move two cases on."""
        ids = self.case_order if self.case_order and set(self.case_order) == set(self.case_ids) else self.case_ids
        if not ids:
            return None
        here = self.jobs.pending_case("load") or self.case_id
        i = ids.index(here) + step if here in ids else (0 if step > 0 else len(ids) - 1)
        if not 0 <= i < len(ids):
            return None
        return self.load_case(ids[i])

    def bind_keys(self) -> None:
        """Bind PageDown / PageUp (unused by napari) to next / previous case."""
        v = self.viewer
        if v is None or self._keys_bound:
            return
        v.bind_key("PageDown", _next_case, overwrite=True)
        v.bind_key("PageUp", _previous_case, overwrite=True)
        self._keys_bound = True

    # ------------------------------------------------------------------ model + prediction
    def set_model(self, checkpoint: str | os.PathLike | None = None, device: str | None = None) -> None:
        """Choose the model file (``None``: the shipped default) and device; emits ``model_changed``."""
        ck = str(checkpoint) if checkpoint not in (None, "") else None
        dev = device or self.device
        if ck == self.checkpoint and dev == self.device:
            return
        self.checkpoint, self.device = ck, dev
        if self.predictor_process is not None and not self.predictor_process.matches(ck, dev, self._refine_arg()):
            self._close_predictor_process()  # another model: it would only hold memory
        self.model_changed.emit(ck)

    def use_predictor_process(self, proc) -> None:
        """Run this session's predictions in ``proc`` (a :class:`cxrseg.serve.PredictorProcess`)
        while it serves the session's model, device and refinement; closed with the session."""
        self._close_predictor_process()
        self.predictor_process = proc

    def _close_predictor_process(self) -> None:
        proc, self.predictor_process = self.predictor_process, None
        if proc is not None:
            proc.close()

    def _refine_arg(self) -> bool | None:
        return None if self.refine else False

    def _remote(self):
        """The prediction process, if it serves the current model and is alive."""
        proc = self.predictor_process
        if proc is not None and proc.alive and proc.matches(self.checkpoint, self.device, self._refine_arg()):
            return proc
        return None

    def _job_args(self, regions):
        if self.image is None:
            raise ValueError("no case is loaded: open a dataset and pick a case first")
        regions = regions if regions is not None else self.regions
        return (self.image.data, self.checkpoint, self.device, regions, dict(self.thresholds), self.postprocess,
                self.refine, self._remote())

    def predict_sync(self, regions=None) -> None:
        """Run the model on the current case and show the result (blocking)."""
        t0 = time.perf_counter()
        res = predict_job(*self._job_args(regions))
        self.jobs.supersede("predict")
        self._apply_prediction(res, t0)

    def predict(self, regions=None):
        """Run the model on the current case in a worker; returns the worker.

        When it returns, :meth:`set_prediction` shows one heatmap layer per region and
        the prediction Labels layer -- unless another case was loaded or another
        prediction asked for meanwhile, or the viewer closed (then it is dropped).
        """
        try:
            args = self._job_args(regions)
        except ValueError as exc:
            notify_error("Predict failed", exc)
            self.prediction_failed.emit(str(exc))
            return None
        t0 = time.perf_counter()
        return self.jobs.start("predict", predict_job, *args, case_id=self.case_id, context=f"Predict {self.case_id}",
                               returned=lambda res: self._apply_prediction(res, t0),
                               errored=lambda exc: self.prediction_failed.emit(str(exc)), sync=self.synchronous)

    def _apply_prediction(self, res: dict, t0: float) -> None:
        for r, t in res["model_thresholds"].items():
            self.thresholds.setdefault(r, float(t))
        self.model_regions = tuple(res["model_regions"])
        t1 = time.perf_counter()
        # (known before the layers are shown, so prediction_changed handlers can read it)
        self.last_timing = {"load_s": res["load_s"], "predict_s": res["predict_s"], "masks_s": res["masks_s"],
                            "worker_s": t1 - t0}
        self.refine_id = res.get("refine_id")
        self.predicted_in = res.get("where")
        self.set_prediction(res["probs"], res["model_id"], masks=res["masks"], labels=res["labels"])
        t2 = time.perf_counter()
        self.last_timing.update(gui_s=t2 - t1, total_s=t2 - t0)

    def set_prediction(self, probs: Mapping[str, np.ndarray] | None, model_id: str | None, *,
                       masks: Mapping[str, np.ndarray] | None = None, labels: np.ndarray | None = None,
                       heat: Mapping[str, np.ndarray] | None = None) -> None:
        """Set (or clear, with ``None``) the current prediction and show its layers.

        Parameters
        ----------
        probs : mapping or None
            Region -> probability map at image resolution.
        model_id : str or None
        masks : mapping, optional
            The thresholded masks, if already computed (else computed here from
            :attr:`thresholds`).
        labels : ndarray, optional
            Their label image, if already painted (else painted here).
        heat : mapping, optional
            The maps to display, subsampled by ``display["heatmap_max_side"]``
            (:func:`display_stride`); computed here if not given.
        """
        v = self.viewer
        if probs is None:
            self.probs = self.masks = None
            self.model_id = model_id
            if v is not None and self.case_id is not None:
                with self.pool.one_extent_update():
                    for ly in list(v.layers):
                        if ly.name.startswith(f"{self.case_id} heatmap ") or ly.name in (
                                self.layer_name("prediction"), self.layer_name("errors")):
                            self._park(ly)
                self.pool.schedule_thumbnails()
            self.prediction_changed.emit(None)
            return
        if self.image is None:
            raise ValueError("set_prediction: no case is loaded")
        probs = {canonical_region(r): np.asarray(p, dtype=np.float32) for r, p in probs.items()}
        for r, p in probs.items():
            if p.shape != self.image.shape:
                raise ValueError(f"probability map of {r} has shape {p.shape}, the image {self.image.shape}")
        for r in probs:
            self.thresholds.setdefault(r, 0.5)
        self.probs = {r: probs[r] for r in REGIONS if r in probs}
        self.model_id = model_id
        self.jobs.supersede("masks")  # a re-threshold of the previous maps must not land on these
        if masks is None:
            masks = compute_masks(self.probs, self.thresholds, postprocess=self.postprocess)
        self.masks = {r: np.asarray(masks[r], bool) for r in self.probs if r in masks}
        if v is not None:
            stride = display_stride(self.image.shape, self.display.get("heatmap_max_side"))
            if heat is None or any(h.shape != self.probs[r][::stride, ::stride].shape for r, h in heat.items()):
                heat = heat_display(self.probs, stride)
            with self.pool.one_extent_update():
                self._show_heatmaps(heat, stride)
                self._show_prediction_labels(labels)
            self.pool.schedule_thumbnails()
        self.prediction_changed.emit(model_id)

    def _show_heatmaps(self, heat: Mapping[str, np.ndarray], stride: int = 1) -> None:
        v = self.viewer
        prefix = f"{self.case_id} heatmap "
        scale = tuple(s * stride for s in self._scale())
        for ly in [ly for ly in v.layers if ly.name.startswith(prefix)]:
            if ly.name[len(prefix):] not in heat:
                self._park(ly)
        for r, p in heat.items():
            name = self.layer_name("heatmap", r)
            layer = self._claim("heatmap", r)
            if layer is not None:
                if tuple(layer.scale) != scale:
                    layer.scale = scale
                layer.metadata["cxrseg"]["stride"] = stride
                self.pool.set_heat_data(layer, p)
                layer.metadata["cxrseg"]["model_id"] = self.model_id
                if layer.visible != bool(self.display["show_heatmaps"]):
                    layer.visible = bool(self.display["show_heatmaps"])
                continue
            kw = {
                "name": name,
                "scale": scale,
                "colormap": _heat_colormap(r),
                "contrast_limits": (0.0, 1.0),
                "blending": "additive",
                "opacity": float(self.display["heatmap_opacity"]),
                "visible": bool(self.display["show_heatmaps"]),
                "metadata": {"cxrseg": {"model_id": self.model_id, "stride": stride}},
            }
            buf = np.array(p, dtype=np.float32, copy=True)
            self.pool.adopt(self._add_layer(buf, kw, "image", kind="heatmap", region=r), buf)

    def _show_prediction_labels(self, labels: np.ndarray | None = None, *, keep_edits: bool = True) -> None:
        from napari_cxrseg._layers import labels_from_masks, labels_layer_tuple

        name = self.layer_name("prediction")
        if labels is None or labels.shape != self.image.shape:
            labels = (labels_from_masks(self.masks, self.image.shape) if self.masks
                      else np.zeros(self.image.shape, np.uint8))
        md = {"masks": dict(self.masks), "model_id": self.model_id, "thresholds": dict(self.thresholds),
              "postprocess": self.postprocess, "case_id": self.case_id, "kind": "prediction"}
        layer = self._claim("prediction")
        if layer is not None:
            edits = self.prediction_edits(layer) if keep_edits else None
            pristine = labels.copy()
            if edits is not None:
                where, values = edits
                labels = labels.copy()
                labels[where] = values
                notify_info(f"{self.case_id}: {int(where.sum())} hand-edited pixels of the prediction layer "
                            "were kept (the new masks apply to the other pixels; Predict dock → "
                            "'Discard hand edits' drops them).")
            layer.metadata = {**layer.metadata, "cxrseg": {**layer.metadata.get("cxrseg", {}), **md}}
            if tuple(layer.scale) != self._scale():
                layer.scale = self._scale()
            if self._pred_shown is None or self._pred_shown[0] != self.case_id:
                self.pool.forget_history(layer)  # same case (new threshold, re-run): strokes stay undoable
            if not self.pool.write_in_place(layer, labels):
                self.pool.own(layer, labels if edits is not None else pristine.copy())  # a copy nobody else holds
            self._pred_shown = (self.case_id, pristine)
            return
        data, kw, lt = labels_layer_tuple(labels.copy(), name, scale=self._scale(), metadata=md,
                                          opacity=float(self.display["mask_opacity"]))
        layer = self._add_layer(data, kw, lt, kind="prediction")
        layer.contour = int(self.display["contour"])
        layer.events.paint.connect(self._on_paint)
        self.pool.adopt(layer, data)
        self._pred_shown = (self.case_id, np.array(layer.data, copy=True))

    def prediction_edits(self, layer=None) -> tuple[np.ndarray, np.ndarray] | None:
        """Hand edits in the current case's prediction layer: ``(where, values)`` (a boolean
        mask of the painted pixels and their label values there), or ``None`` if none.

        They are the pixels that differ from the labels the session last wrote; re-thresholding
        and re-predicting the same case keep them (a correction is never silently lost)."""
        layer = layer if layer is not None else self.get_layer("prediction")
        if layer is None or self._pred_shown is None:
            return None
        cid, shown = self._pred_shown
        md = dict(layer.metadata.get("cxrseg") or {})
        if cid != self.case_id or md.get("parked") or md.get("case_id") not in (None, cid):
            return None
        data = np.asarray(layer.data)
        if data.shape != shown.shape:
            return None
        where = data != shown
        if not where.any():
            return None
        return where, data[where]

    def discard_prediction_edits(self) -> bool:
        """Rewrite the prediction layer from the model's masks, dropping hand edits.
        Returns whether there was anything to drop."""
        if self.masks is None or self.prediction_edits() is None:
            return False
        self._show_prediction_labels(None, keep_edits=False)
        self.masks_edited.emit(self.layer_name("prediction"))
        return True

    def _on_paint(self, event=None) -> None:
        src = getattr(event, "source", None)
        self.masks_edited.emit(getattr(src, "name", None))

    # ------------------------------------------------------------------ thresholds
    def set_thresholds(self, thresholds: Mapping[str, float]):
        """Change thresholds and re-threshold the kept probabilities (no model run).

        The masks are recomputed in a worker (:meth:`rethreshold`); returns it.
        """
        for k, t in thresholds.items():
            t = float(t)
            if not 0.0 < t < 1.0:
                raise ValueError(f"threshold of {k} must be in (0, 1), got {t}")
            self.thresholds[canonical_region(k)] = t
        return self.rethreshold()

    def set_postprocess(self, on: bool):
        """Switch post-processing of the prediction masks; re-thresholds."""
        self.postprocess = bool(on)
        return self.rethreshold()

    def rethreshold(self):
        """Recompute the prediction masks from :attr:`probs` with the current thresholds,
        in a worker (no model run); returns it. Results of superseded calls are dropped."""
        if self.probs is None:
            return None
        probs, th = self.probs, dict(self.thresholds)
        return self.jobs.start("masks", mask_job, probs, th, self.postprocess, self.image.shape,
                               case_id=self.case_id, context="Threshold", returned=self._apply_masks,
                               sync=self.synchronous)

    def _apply_masks(self, res: dict) -> None:
        if self.probs is None:
            return
        self.masks = res["masks"]
        if self.viewer is not None:
            self._show_prediction_labels(res["labels"])
        self.thresholds_changed.emit()

    # ------------------------------------------------------------------ display
    def apply_display(self, **settings) -> None:
        """Update display settings (``heatmap_opacity``, ``mask_opacity``, ``contour``,
        ``gt_contour``, ``show_heatmaps``) and apply them to the current layers."""
        self.display.update(settings)
        v = self.viewer
        if v is None or self.case_id is None:
            return
        pred = self.get_layer("prediction")
        if pred is not None:
            pred.opacity = float(self.display["mask_opacity"])
            pred.contour = int(self.display["contour"])
        gt = self.get_layer("ground_truth")
        if gt is not None:
            gt.contour = int(self.display["gt_contour"])
        for r in self.probs or {}:
            h = self.get_layer("heatmap", r)
            if h is not None:
                h.opacity = float(self.display["heatmap_opacity"])
                h.visible = bool(self.display["show_heatmaps"])

    def prediction_masks(self, layer=None) -> dict[str, np.ndarray]:
        """Region masks of the prediction layer as it is now (edits included).

        Exact (overlaps kept) while the layer is unedited; from the label values otherwise.
        """
        from napari_cxrseg._layers import exact_masks_from_layer

        layer = layer if layer is not None else self.get_layer("prediction")
        if layer is None:
            return {}
        return exact_masks_from_layer(np.asarray(layer.data), layer.metadata)

    def show_errors(self, pred: np.ndarray | None, truth: np.ndarray | None, region: str | None) -> None:
        """Show (or remove, with ``None``) the FP (red) / FN (blue) overlay for one region,
        above every edit layer of the case (the errors of what is being edited stay in sight)."""
        v = self.viewer
        if v is None or self.case_id is None or not self.alive():
            return
        name = self.layer_name("errors")
        if pred is None or truth is None:
            if name in v.layers:
                self._park(v.layers[name])
            return
        data = np.zeros(pred.shape, np.uint8)
        data[pred & ~truth] = 1
        data[~pred & truth] = 2
        layer = self._claim("errors")
        if layer is not None:
            layer.metadata["cxrseg"]["region"] = region
            if tuple(layer.scale) != self._scale():
                layer.scale = self._scale()
            layer.data = data
        else:
            kw = {"name": name, "scale": self._scale(), "colormap": _errors_colormap(), "opacity": 0.8,
                  "features": {"index": [0, 1, 2], "error": ["none", "false positive", "false negative"]},
                  "metadata": {"cxrseg": {}}}
            layer = self._add_layer(data, kw, "labels", kind="errors", region=region)
        self._keep_errors_on_top(layer)

    def _keep_errors_on_top(self, layer) -> None:
        """Move the errors overlay above the case's edit layers (added later, they would hide it)."""
        v = self.viewer
        i = v.layers.index(layer)
        prefix = f"{self.case_id} edit "
        if any(ly.name.startswith(prefix) for ly in list(v.layers)[i + 1:]):
            v.layers.move(i, len(v.layers))

    # ------------------------------------------------------------------ scores + review
    def set_case_scores(self, case_id: str, ious: Mapping[str, float]) -> None:
        """Record per-region IoUs of a case (shown in the Cases table)."""
        cur = self.case_scores.setdefault(str(case_id), {})
        cur.update({canonical_region(r): float(v) for r, v in ious.items()})
        self.scores_changed.emit(str(case_id))

    def review_status(self, case_id: str):
        """The :class:`cxrseg.review.ReviewEntry` of a case (``unreviewed`` without a ledger)."""
        from cxrseg.review import ReviewEntry

        return self.ledger.get(case_id) if self.ledger is not None else ReviewEntry(str(case_id))

    def set_review(self, case_id: str, status: str, comment: str = "") -> None:
        """Store a review status in the ledger; emits ``review_changed``."""
        if self.ensure_ledger() is None:
            raise ValueError("no dataset is open: its review ledger holds the statuses")
        self.ledger.set_status(case_id, status, comment)
        self.review_changed.emit(str(case_id))

    def close(self) -> None:
        """The viewer closes: drop every background result still to come, ask running
        workers to stop, close the ledger. Safe to call more than once."""
        self.closed = True
        self.jobs.close()
        self._close_predictor_process()
        if self.ledger is not None:
            self.ledger.close()
            self.ledger = None



def _next_case(viewer) -> None:
    get_session(viewer).step_case(+1)


def _previous_case(viewer) -> None:
    get_session(viewer).step_case(-1)
