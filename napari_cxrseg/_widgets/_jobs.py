"""Background jobs of a session: their bodies (GUI-free) and the tracker that drops late results.

Every job a session starts goes through :class:`Jobs`. A job has a *kind* (``"load"``,
``"predict"``, ``"masks"``) and a request id; each new request of a kind supersedes the
older ones. A result reaches its GUI-thread callback only if

* its request is still the newest of its kind,
* the case it was computed for is still the case on screen (for jobs tied to a case), and
* the session is not closed (the viewer's window is open).

Everything else is dropped, never applied: a prediction that arrives after the user moved
on, or after the window closed, cannot touch the layers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from cxrseg.regions import REGIONS, parse_regions

from .._layers import labels_from_masks
from ._torch_env import torch_call
from ._workers import start_worker

log = logging.getLogger("napari_cxrseg")

__all__ = ["Jobs", "compute_masks", "mask_job", "predict_job", "read_case"]


def compute_masks(
    probs: Mapping[str, np.ndarray], thresholds: Mapping[str, float], *, postprocess: bool = False
) -> dict[str, np.ndarray]:
    """Threshold probability maps (``p >= t``), optionally post-processed. GUI-free."""
    from cxrseg.predict import threshold as _threshold

    th = {r: float(thresholds.get(r, 0.5)) for r in probs}
    masks = dict(_threshold(probs, th))
    if postprocess:
        from cxrseg.postprocess import postprocess as _post

        masks = dict(_post(masks))
    return {r: np.asarray(masks[r], dtype=bool) for r in REGIONS if r in masks}


def mask_job(probs: Mapping[str, np.ndarray], thresholds: Mapping[str, float], postprocess: bool, shape):
    """Worker body: thresholded masks and their label image (painted off the GUI thread)."""
    masks = compute_masks(probs, thresholds, postprocess=postprocess)
    labels = labels_from_masks(masks, shape) if masks else np.zeros(shape, np.uint8)
    return {"masks": masks, "labels": labels}


def read_case(case) -> dict:
    """Worker body: read the image and its masks, masks on the image grid."""
    from cxrseg.io import resize_mask_nearest

    image = case.load_image()
    raw = case.load_masks() if getattr(case, "mask_paths", None) else {}
    truth = {r: np.asarray(resize_mask_nearest(np.asarray(m, bool), image.shape), dtype=bool) for r, m in raw.items()}
    return {"case": case, "image": image, "truth": truth}


def predict_job(image: np.ndarray, checkpoint, device: str, regions, thresholds, postprocess: bool,
                refine: bool = True, remote=None):
    """Worker body of a prediction (torch is imported here, off the GUI thread): the maps,
    the thresholded masks and the painted label image, shown together (one redraw).
    ``refine=False`` leaves out the clavicles' native-resolution refinement. ``remote``, a
    :class:`cxrseg.serve.PredictorProcess` serving this model, runs the model in its child
    process instead; if that process has ended, the prediction runs here."""
    t0 = time.perf_counter()
    out = None
    where = "the prediction process"
    if remote is not None:
        from cxrseg.serve import PredictorProcessError

        try:
            out = _predict_remote(remote, image, regions)
        except PredictorProcessError as exc:
            log.warning("napari-cxrseg: %s; predicting in this process", exc)
    if out is None:
        where = "napari's process"
        out = _predict_here(image, checkpoint, device, regions, refine)
    probs, info, t1, t2 = out
    th = dict(info["thresholds"])
    th.update(thresholds or {})
    res = mask_job(probs, th, postprocess, image.shape)
    return {
        "probs": probs,
        "masks": res["masks"],
        "labels": res["labels"],
        "masks_s": time.perf_counter() - t2,
        "model_id": str(info["model_id"]),
        "refine_id": info["refine_id"],
        "model_thresholds": dict(info["thresholds"]),
        "model_regions": tuple(info["regions"]),
        "load_s": t1 - t0,
        "predict_s": t2 - t1,
        "where": where,
    }


def _wanted(model_regions: tuple[str, ...], regions) -> tuple[str, ...]:
    wanted = model_regions if regions is None else tuple(r for r in parse_regions(regions) if r in model_regions)
    if not wanted:
        raise ValueError(
            f"the model predicts {', '.join(model_regions)}; none of the chosen regions "
            f"({', '.join(parse_regions(regions))})"
        )
    return wanted


def _predict_here(image, checkpoint, device, regions, refine):
    from cxrseg.predict import get_predictor

    predictor = get_predictor(checkpoint, device=device, refine=None if refine else False)
    t1 = time.perf_counter()
    info = {"model_id": predictor.model_id, "refine_id": predictor.refine_id,
            "thresholds": predictor.config.thresholds, "regions": tuple(predictor.regions)}
    wanted = _wanted(info["regions"], regions)
    probs = torch_call(predictor.predict, image, regions=wanted)
    probs = {r: np.asarray(probs[r], dtype=np.float32) for r in wanted}
    return probs, info, t1, time.perf_counter()


def _predict_remote(remote, image, regions):
    info = remote.info()
    t1 = time.perf_counter()
    wanted = _wanted(tuple(info["regions"]), regions)
    probs = remote.predict(image, regions=wanted)
    return {r: probs[r] for r in wanted}, info, t1, time.perf_counter()


class Jobs:
    """Starts a session's workers and lets through only the results still wanted.

    Parameters
    ----------
    shown_case : callable
        Returns the id of the case on screen.
    alive : callable
        Returns whether results may still be applied (the viewer is open).
    """

    def __init__(self, shown_case: Callable[[], str | None], alive: Callable[[], bool]):
        self._shown_case = shown_case
        self._alive = alive
        self._latest: dict[str, int] = {}
        self._next_id = 0
        #: request id -> (kind, case id, check_case, worker) of the jobs that have not finished
        self._running: dict[int, tuple[str, str | None, bool, Any]] = {}
        self.closed = False

    def newest(self, kind: str) -> int | None:
        """Id of the newest request of ``kind`` (``None``: none yet)."""
        return self._latest.get(kind)

    def supersede(self, kind: str) -> None:
        """Drop the results of every request of ``kind`` made so far."""
        self._next_id += 1
        self._latest[kind] = self._next_id

    def pending(self, kind: str | None = None) -> list[tuple[str, str | None]]:
        """``(kind, case id)`` of the jobs still running whose result would be applied."""
        return [(k, c) for rid, (k, c, check, _w) in self._running.items()
                if (kind is None or k == kind) and self.wanted(rid, k, c, check_case=check)]

    def pending_case(self, kind: str) -> str | None:
        """Case id of the newest running request of ``kind`` still wanted (``None``: none)."""
        rid = self._latest.get(kind)
        job = self._running.get(rid) if rid is not None else None
        if job is None or not self.wanted(rid, kind, job[1], check_case=job[2]):
            return None
        return job[1]

    def wanted(self, rid: int, kind: str, case_id: str | None, *, check_case: bool = True) -> bool:
        """Whether the result of request ``rid`` would still be applied."""
        if self.closed or not self._alive():
            return False
        if self._latest.get(kind) != rid:
            return False
        return not check_case or case_id is None or case_id == self._shown_case()

    def start(self, kind: str, func: Callable, *args: Any, case_id: str | None, context: str,
              returned: Callable[[Any], None], errored: Callable[[BaseException], None] | None = None,
              check_case: bool = True, sync: bool = False, progress: Any = False):
        """Start ``func(*args)`` as the newest request of ``kind``; returns the worker (``None``
        when run synchronously or closed).

        ``returned`` gets the result only if it is still wanted (see the module docstring;
        ``check_case=False`` for a load, whose case is not on screen yet)."""
        if self.closed:
            return None
        self.supersede(kind)
        rid = self._next_id

        def on_returned(res) -> None:
            if self.wanted(rid, kind, case_id, check_case=check_case):
                returned(res)

        def on_errored(exc) -> None:
            if errored is not None and self.wanted(rid, kind, case_id, check_case=check_case):
                errored(exc)

        def on_finished() -> None:
            self._running.pop(rid, None)

        self._running[rid] = (kind, case_id, check_case, None)
        worker = start_worker(func, *args, context=context, returned=on_returned, errored=on_errored,
                              finished=on_finished, sync=sync, progress=progress)
        if worker is not None and rid in self._running:
            self._running[rid] = (kind, case_id, check_case, worker)
        return worker

    def close(self) -> None:
        """Drop every result to come and ask the running workers to stop."""
        self.closed = True
        for *_job, worker in list(self._running.values()):
            if worker is None:
                continue
            try:
                worker.quit()
            except RuntimeError:  # pragma: no cover - the worker's Qt object is gone
                pass
