"""Review without ground truth: uncertainty layers and review-queue rows from
:mod:`cxrseg.quality`.

Self-contained helpers for the docks: a worker function that assesses one case
(:func:`quality_job`, run it in a ``thread_worker``), one napari Image layer per region
with the disagreement map (:func:`add_uncertainty_layers`, hidden by default), and the
text of review-queue rows ranked by estimated Jaccard (:func:`queue_rows`).
torch is imported only inside the worker function.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from cxrseg.quality import QualityReport, rank_by_estimate
from cxrseg.regions import COLORS, DISPLAY_NAMES, REGIONS

#: Suffix of an uncertainty layer's name: ``"<case> uncertainty <region>"``.
UNCERTAINTY_INFIX = " uncertainty "
#: Metadata key of the layers made here.
METADATA_KEY = "cxrseg"


def quality_job(image: np.ndarray, probs: Mapping[str, np.ndarray] | None = None, *, checkpoint=None,
                device: str = "auto", mode: str = "full", maps: bool = True) -> QualityReport:
    """Assess one case (GUI-free; call it from a worker thread).

    Parameters
    ----------
    image : ndarray, shape (rows, cols)
    probs : dict, optional
        The plain prediction, if already made (saves one forward pass).
    checkpoint : path-like, optional
        Default: the shipped model.
    device : str
    mode : {"full", "quick"}
    maps : bool
        Keep the per-region disagreement maps (full mode).
    """
    from cxrseg.predict import get_predictor
    from cxrseg.quality import assess

    from ._torch_env import guard_triton_import, torch_call

    guard_triton_import()  # torch may pull in triton: fatal once Mesa's LLVM is loaded
    pred = get_predictor(checkpoint, device=device)
    # every forward pass of the docks goes through one thread (one warm OpenMP team)
    return torch_call(assess, image, probs, predictor=pred, mode=mode, maps=maps)


def quality_review_job(checkpoint, device, cases, *, mode: str = "full"):
    """Worker body of a review run without ground truth (generator; torch imported here).

    Mirrors ``review_job``'s messages, with estimated instead of true Jaccard: yields
    ``("model", model_id, n)`` once, then ``("case", i, n, case_id, estimates, failing)``
    per case (``estimates``: region -> float, ``failing``: list of messages; no arrays)
    and ``("error", case_id, message)`` for unreadable cases.

    Parameters
    ----------
    cases : iterable
        Objects with ``case_id`` and ``load_image()`` (:class:`cxrseg.dataset.Case`).
    mode : {"full", "quick"}
    """
    from cxrseg.predict import get_predictor
    from cxrseg.quality import assess

    from ._torch_env import guard_triton_import, torch_call

    guard_triton_import()
    pred = get_predictor(checkpoint, device=device)
    cases = list(cases)
    n = len(cases)
    yield ("model", str(pred.model_id), n)
    for i, case in enumerate(cases, 1):
        cid = str(case.case_id)
        try:
            image = case.load_image()
        except (ValueError, KeyError, OSError) as exc:
            yield ("error", cid, str(exc))
            continue
        rep = torch_call(assess, getattr(image, "data", image), None, predictor=pred, mode=mode)
        est = {r: float(q.estimated_jaccard) for r, q in rep.regions.items()}
        yield ("case", i, n, cid, est, list(dict.fromkeys(c.message for c in rep.failing)))


def layer_name(case_id: str, region: str) -> str:
    return f"{case_id}{UNCERTAINTY_INFIX}{region}"


def uncertainty_layer_tuples(report: QualityReport, case_id: str, *, regions: Iterable[str] | None = None,
                             visible: bool = False) -> list[tuple[np.ndarray, dict[str, Any], str]]:
    """Layer data tuples ``(data, kwargs, "image")``, one per region with a map: the
    region's colour from black, additive blending, hidden unless ``visible``."""
    out = []
    for r in regions or REGIONS:
        q = report.regions.get(r)
        if q is None or q.uncertainty is None:
            continue
        rgb = COLORS.get(r, (1.0, 1.0, 1.0, 1.0))[:3]
        est = q.estimated_jaccard
        kwargs = {
            "name": layer_name(case_id, r),
            "colormap": _colormap(r, rgb),
            "blending": "additive",
            "contrast_limits": (0.0, 0.5),  # the std of probabilities never exceeds 0.5
            "visible": bool(visible),
            "metadata": {METADATA_KEY: {"kind": "uncertainty", "case_id": case_id, "region": r,
                                        "estimated_jaccard": None if not math.isfinite(est) else float(est),
                                        "failing": [c.message for c in q.failing]}},
        }
        out.append((np.asarray(q.uncertainty, dtype=np.float32), kwargs, "image"))
    return out


def _colormap(region: str, rgb) -> Any:
    from napari.utils.colormaps import Colormap

    return Colormap(colors=[[0, 0, 0, 1], [*rgb, 1]], name=f"cxrseg-uncertainty-{region}")


def add_uncertainty_layers(viewer, report: QualityReport, case_id: str, *, regions=None,
                           visible: bool = False) -> list:
    """Add (or refresh) the case's uncertainty layers in ``viewer``; returns the layers.

    A layer of the same name is updated in place (its visibility is kept), so re-running
    a case does not stack copies.
    """
    layers = []
    for data, kw, _ in uncertainty_layer_tuples(report, case_id, regions=regions, visible=visible):
        name = kw["name"]
        if name in viewer.layers:
            layer = viewer.layers[name]
            layer.data = data
            layer.metadata = {**layer.metadata, **kw["metadata"]}
        else:
            layer = viewer.add_image(data, **kw)
        layers.append(layer)
    return layers


def remove_uncertainty_layers(viewer, case_id: str | None = None) -> int:
    """Remove the uncertainty layers of one case (or of all cases); returns how many."""
    gone = [ly for ly in list(viewer.layers)
            if (ly.metadata.get(METADATA_KEY) or {}).get("kind") == "uncertainty"
            and (case_id is None or ly.metadata[METADATA_KEY].get("case_id") == case_id)]
    for ly in gone:
        viewer.layers.remove(ly)
    return len(gone)


def failing_text(report: QualityReport, region: str | None = None, *, limit: int = 3) -> str:
    """The failing checks (of one region, or all) as one line: at most ``limit`` messages,
    then ``"+N more"``; ``""`` when none fails."""
    msgs = [c.message for c in (report.failing if region is None else report.regions[region].failing)]
    seen = list(dict.fromkeys(msgs))
    if len(seen) > limit:
        return "; ".join(seen[:limit]) + f"; +{len(seen) - limit} more"
    return "; ".join(seen)


def queue_rows(reports: Mapping[str, QualityReport], *, region: str | None = None) -> list[dict[str, Any]]:
    """Rows of a review queue without ground truth, worst first by estimated Jaccard.

    Parameters
    ----------
    reports : dict of str to QualityReport
        Case id -> report.
    region : str, optional
        Rank by this region's estimate (default: each case's lowest).

    Returns
    -------
    list of dict
        ``case``, ``score`` (float, NaN if unknown), ``estimate`` (text, ``"~0.87"``),
        ``worst_region`` (display name), ``failing`` (text for the row) and ``tooltip``
        (every failing check, one per line).
    """
    rows = []
    for cid in rank_by_estimate(reports, region=region):
        rep = reports[cid]
        if region is None:
            est = {r: q.estimated_jaccard for r, q in rep.regions.items() if math.isfinite(q.estimated_jaccard)}
            worst = min(est, key=est.get) if est else None
            score = est[worst] if worst else math.nan
        else:
            worst, score = region, rep.regions[region].estimated_jaccard if region in rep.regions else math.nan
        msgs = [c.message for c in rep.failing]
        rows.append({
            "case": cid,
            "score": float(score),
            "estimate": f"~{score:.2f}" if math.isfinite(score) else "–",
            "worst_region": DISPLAY_NAMES.get(worst, "") if worst else "",
            "failing": failing_text(rep, region),
            "tooltip": "\n".join(dict.fromkeys(msgs)) or "all plausibility checks pass",
        })
    return rows
