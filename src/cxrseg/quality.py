"""Quality of a prediction without ground truth: per-region estimates and plausibility checks.

Three kinds of signal, all computed from the image and the model alone:

* **Test-time augmentation** (full mode): the image is predicted again under small shifts,
  scales, rotations and intensity changes (never a horizontal flip: it swaps the patient's
  sides); each prediction is warped back onto the original grid. The per-pixel standard
  deviation across the copies is the *disagreement map*; how much the copies' masks agree
  with the plain mask (their mean Jaccard) is the strongest single signal of a bad region.
* **Sigmoid entropy**: the binary entropy of the probabilities, summed over the image and
  divided by the predicted area (uncertain boundary pixels per mask pixel).
* **Anatomical plausibility checks**, each with a name and a readable message: connected
  components and holes per region, area and area ratios against the training distribution,
  the left/right order of the lungs and clavicles in image coordinates (the patient's left
  lies on the image's right), clavicles above the lung apices, heart between the lungs and
  lung symmetry.

An **estimated Jaccard** per region comes from a small regression on these signals. Its
parameters and the training-distribution statistics live in a JSON file beside the model
(``<model>.quality.json``); :func:`fit_estimator` and :func:`reference_stats` make them.

``mode="quick"`` skips the augmentation (checks and entropy only: a few percent of a
prediction's cost); ``mode="full"`` adds it (a few predictions' cost).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .regions import DISPLAY_NAMES, REGIONS

MODES = ("quick", "full")

#: Test-time augmentations: (shift rows, shift cols as a fraction of the side, scale,
#: rotation in degrees, gamma, contrast). Small, like the training augmentation; no flips.
TTA_AUGMENTATIONS: tuple[tuple[float, float, float, float, float, float], ...] = (
    (0.03, -0.025, 1.00, 0.0, 1.00, 1.00),
    (-0.02, 0.03, 1.07, 4.0, 0.85, 1.10),
    (0.015, 0.02, 0.93, -4.0, 1.20, 0.90),
    (-0.03, -0.02, 1.03, -2.5, 1.00, 1.15),
)

#: Largest side the checks work at: masks are subsampled to it (area ratios do not depend
#: on the resolution, and labelling a 1024 px mask five times is the slow part).
CHECK_SIDE = 256

#: Smallest component or hole that counts, as a fraction of the (square) image area.
MIN_PIECE = 1e-4

#: |z| above which an area or ratio check fails (training distribution, log scale).
Z_LIMIT = 3.0

#: The ratios compared with the training distribution.
RATIOS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "heart/lungs": (("heart",), ("left_lung", "right_lung")),
    "left/right lung": (("left_lung",), ("right_lung",)),
    "left/right clavicle": (("left_clavicle",), ("right_clavicle",)),
    "clavicles/lungs": (("left_clavicle", "right_clavicle"), ("left_lung", "right_lung")),
}

#: Features of the Jaccard estimate, per mode.
FEATURES: dict[str, tuple[str, ...]] = {
    "quick": ("entropy", "area_z", "pieces", "failed"),
    "full": ("tta_disagreement", "tta_spread", "entropy", "area_z", "pieces", "failed"),
}


# --------------------------------------------------------------------------- results


@dataclass
class Check:
    """One plausibility check.

    Attributes
    ----------
    name : str
        Short identifier, e.g. ``"components"``, ``"left_right_order"``.
    regions : tuple of str
        The regions it is about (a failing check counts against each of them).
    passed : bool
    message : str
        Readable finding, e.g. ``"left lung: 11 components"``.
    value : float
        The measured number (count, z-score, position) or NaN.
    """

    name: str
    regions: tuple[str, ...]
    passed: bool
    message: str
    value: float = float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "regions": list(self.regions), "passed": self.passed,
                "message": self.message, "value": _num(self.value)}


@dataclass
class RegionQuality:
    """Quality signals of one region.

    Attributes
    ----------
    region : str
    estimated_jaccard : float
        The regression's estimate (NaN without a fitted estimator).
    features : dict of str to float
        The signals the estimate uses (see :data:`FEATURES`).
    failing : list of Check
        The failing checks that involve this region.
    uncertainty : ndarray or None
        Per-pixel disagreement across the augmented predictions, on the probabilities' grid
        (full mode with ``maps=True`` only).
    """

    region: str
    estimated_jaccard: float = float("nan")
    features: dict[str, float] = field(default_factory=dict)
    failing: list[Check] = field(default_factory=list)
    uncertainty: np.ndarray | None = None


@dataclass
class QualityReport:
    """The quality of one case's prediction: per-region estimates and all checks.

    Attributes
    ----------
    mode : str
        ``"quick"`` or ``"full"``.
    regions : dict of str to RegionQuality
    checks : list of Check
        Every check that ran, passed or not.
    seconds : float
        Time spent on the assessment (not on the plain prediction).
    """

    mode: str
    regions: dict[str, RegionQuality]
    checks: list[Check]
    seconds: float = 0.0

    @property
    def failing(self) -> list[Check]:
        """The checks that failed."""
        return [c for c in self.checks if not c.passed]

    @property
    def min_estimated_jaccard(self) -> float:
        """The lowest estimated Jaccard over the regions (NaN when none is estimated)."""
        vals = [q.estimated_jaccard for q in self.regions.values() if np.isfinite(q.estimated_jaccard)]
        return float(min(vals)) if vals else float("nan")

    def csv_fields(self) -> dict[str, Any]:
        """Columns for a results CSV: ``est_jaccard_<region>`` per region, the lowest, and
        the failing checks' messages joined by ``"; "``."""
        row: dict[str, Any] = {f"est_jaccard_{r}": _round(q.estimated_jaccard) for r, q in self.regions.items()}
        row["est_jaccard_min"] = _round(self.min_estimated_jaccard)
        row["failing_checks"] = "; ".join(c.message for c in self.failing)
        return row

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form (maps left out)."""
        return {
            "mode": self.mode,
            "seconds": round(self.seconds, 4),
            "regions": {r: {"estimated_jaccard": _num(q.estimated_jaccard),
                            "features": {k: _num(v) for k, v in q.features.items()},
                            "failing": [c.message for c in q.failing]}
                        for r, q in self.regions.items()},
            "checks": [c.as_dict() for c in self.checks],
        }


def _num(v) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def _round(v) -> float | str:
    return round(float(v), 4) if math.isfinite(float(v)) else ""


def _label(region: str) -> str:
    return DISPLAY_NAMES.get(region, region).replace(" (patient)", "")


# --------------------------------------------------------------------------- geometry of masks


def _stride_for(shape) -> int:
    return max(1, int(math.ceil(max(shape) / CHECK_SIDE)))


def _work_masks(probs: Mapping[str, np.ndarray], thresholds: Mapping[str, float] | None) -> tuple[dict, float]:
    """Subsampled binary masks and the square area they are measured against."""
    first = next(iter(probs.values()))
    k = _stride_for(first.shape)
    masks = {}
    for r, p in probs.items():
        a = np.asarray(p)[::k, ::k]
        if a.dtype == bool:
            masks[r] = a
        else:
            t = 0.5 if thresholds is None else float(thresholds.get(r, 0.5))
            masks[r] = a >= t
    side = max(next(iter(masks.values())).shape)
    return masks, float(side * side)


def _pieces(mask: np.ndarray, min_px: int) -> tuple[int, int]:
    """(components, holes) of at least ``min_px`` pixels (8-connected objects, 4-connected
    background, so a diagonal gap does not open a hole)."""
    from scipy import ndimage

    box = _bbox(mask)
    if box is None:
        return 0, 0
    # one pixel of margin so the hole filling sees the outside
    mask = np.pad(mask[box], 1)
    lab, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    sizes = np.bincount(lab.ravel())[1:]
    comps = int((sizes >= min_px).sum())
    filled = ndimage.binary_fill_holes(mask)
    holes_mask = filled & ~mask
    holes = 0
    if holes_mask.any():
        hl, hn = ndimage.label(holes_mask)
        hs = np.bincount(hl.ravel())[1:]
        holes = int((hs >= min_px).sum())
    return comps, holes


def _bbox(mask: np.ndarray):
    rows, cols = np.any(mask, axis=1), np.any(mask, axis=0)
    if not rows.any():
        return None
    r0, r1 = np.flatnonzero(rows)[[0, -1]]
    c0, c1 = np.flatnonzero(cols)[[0, -1]]
    return slice(r0, r1 + 1), slice(c0, c1 + 1)


def _geometry(mask: np.ndarray) -> dict[str, float]:
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return {"area": 0.0, "row": math.nan, "col": math.nan, "top": math.nan, "bottom": math.nan}
    return {"area": float(rows.size), "row": float(rows.mean()), "col": float(cols.mean()),
            "top": float(rows.min()), "bottom": float(rows.max())}


def measure(masks: Mapping[str, np.ndarray], *, thresholds=None) -> dict[str, Any]:
    """Shape measurements of one case's masks (or probabilities, thresholded).

    Returns a dict with ``area`` (fraction of the square image, per region), ``components``
    and ``holes`` (per region), the centroids, the ``ratios`` of :data:`RATIOS`, the lung
    heights and the clavicles' vertical position relative to their lung
    (``clavicle_position``: 0 at the lung's top row, 1 at its bottom).
    """
    work, square = _work_masks(masks, thresholds)
    min_px = max(2, int(round(MIN_PIECE * square)))
    geo = {r: _geometry(m) for r, m in work.items()}
    out: dict[str, Any] = {"area": {}, "components": {}, "holes": {}, "geometry": geo, "ratios": {}}
    for r, m in work.items():
        out["area"][r] = geo[r]["area"] / square
        out["components"][r], out["holes"][r] = _pieces(m, min_px)
    for name, (num, den) in RATIOS.items():
        if all(r in work for r in num + den):
            a = sum(geo[r]["area"] for r in num)
            b = sum(geo[r]["area"] for r in den)
            out["ratios"][name] = a / b if a > 0 and b > 0 else math.nan
    out["lung_height_ratio"] = math.nan
    if "left_lung" in geo and "right_lung" in geo:
        hl = geo["left_lung"]["bottom"] - geo["left_lung"]["top"] + 1
        hr = geo["right_lung"]["bottom"] - geo["right_lung"]["top"] + 1
        if np.isfinite(hl) and np.isfinite(hr) and hl > 0 and hr > 0:
            out["lung_height_ratio"] = float(hl / hr)
    out["clavicle_position"] = {}
    for side in ("left", "right"):
        c, lung = geo.get(f"{side}_clavicle"), geo.get(f"{side}_lung")
        if c is None or lung is None:
            continue
        h = lung["bottom"] - lung["top"] + 1
        out["clavicle_position"][side] = (c["row"] - lung["top"]) / h if h > 0 else math.nan
    return out


# --------------------------------------------------------------------------- reference statistics


def _stats(values: Iterable[float]) -> dict[str, float]:
    v = np.log(np.asarray([x for x in values if np.isfinite(x) and x > 0], dtype=np.float64))
    if v.size == 0:
        return {"log_mean": math.nan, "log_std": math.nan, "n": 0}
    return {"log_mean": float(v.mean()), "log_std": float(max(v.std(ddof=1) if v.size > 1 else 0.0, 1e-3)),
            "min": float(np.exp(v.min())), "max": float(np.exp(v.max())), "n": int(v.size)}


def reference_stats(cases: Iterable[Mapping[str, np.ndarray]]) -> dict[str, Any]:
    """Training-distribution statistics from ground-truth masks (numbers only, no images).

    Parameters
    ----------
    cases : iterable of dict
        One ``{region: mask}`` per case.

    Returns
    -------
    dict
        Log-scale mean and standard deviation of each region's area fraction, of each
        ratio in :data:`RATIOS`, of the lung height ratio and of the clavicles' position
        relative to their lung; the largest number of components and holes seen.
    """
    ms = [measure(c) for c in cases]
    if not ms:
        raise ValueError("reference_stats: no cases")
    regions = sorted({r for m in ms for r in m["area"]}, key=lambda r: REGIONS.index(r) if r in REGIONS else 99)
    return {
        "n_cases": len(ms),
        "area": {r: _stats(m["area"].get(r, math.nan) for m in ms) for r in regions},
        "ratios": {k: _stats(m["ratios"].get(k, math.nan) for m in ms) for k in RATIOS},
        "lung_height_ratio": _stats(m["lung_height_ratio"] for m in ms),
        "clavicle_position": {s: _stats(m["clavicle_position"].get(s, math.nan) for m in ms)
                              for s in ("left", "right")},
        "max_components": {r: int(max(m["components"].get(r, 0) for m in ms)) for r in regions},
        "max_holes": {r: int(max(m["holes"].get(r, 0) for m in ms)) for r in regions},
    }


def _z(value: float, st: Mapping[str, float] | None) -> float:
    if st is None or not st.get("n") or not (np.isfinite(value) and value > 0):
        return math.nan
    return (math.log(value) - st["log_mean"]) / st["log_std"]


# --------------------------------------------------------------------------- checks


def run_checks(probs: Mapping[str, np.ndarray], *, reference: Mapping[str, Any] | None = None,
               thresholds: Mapping[str, float] | None = None) -> tuple[list[Check], dict[str, dict[str, float]]]:
    """Anatomical plausibility checks of one case.

    Parameters
    ----------
    probs : dict of str to ndarray
        Region -> probability map (or boolean mask), all of one shape, image coordinates
        (rows down, columns to the image's right).
    reference : dict, optional
        :func:`reference_stats` of the training masks; without it the area and ratio checks
        are skipped.
    thresholds : dict, optional
        Per-region thresholds (0.5 by default).

    Returns
    -------
    checks : list of Check
    per_region : dict
        Region -> ``{"area_z": |z| of its area and ratios (largest), "pieces": extra
        components + holes, "failed": number of failing checks}`` (features of the estimate).
    """
    m = measure(probs, thresholds=thresholds)
    regions = list(m["area"])
    checks: list[Check] = []
    per = {r: {"area_z": 0.0, "pieces": 0.0, "failed": 0.0} for r in regions}

    def add(name, regs, ok, msg, value=math.nan):
        checks.append(Check(name, tuple(regs), bool(ok), msg, float(value)))

    _topology_checks(m, per, add)
    if reference:
        _reference_checks(m, reference, per, add)
    _layout_checks(m, add)
    for c in checks:
        if not c.passed:
            for r in c.regions:
                if r in per:
                    per[r]["failed"] += 1
    return checks, per


def _topology_checks(m: Mapping[str, Any], per: dict, add: Callable) -> None:
    """Each region present, in one piece, without holes."""
    for r in m["area"]:
        n, h = m["components"][r], m["holes"][r]
        if n == 0:
            add("present", [r], False, f"{_label(r)}: missing", 0)
            per[r]["pieces"] += 1
            continue
        add("components", [r], n == 1, f"{_label(r)}: {n} components", n)
        add("holes", [r], h == 0, f"{_label(r)}: {h} hole{'s' if h != 1 else ''}", h)
        per[r]["pieces"] += (n - 1) + h


def _reference_checks(m: Mapping[str, Any], reference: Mapping[str, Any], per: dict, add: Callable) -> None:
    """Areas, area ratios and the lungs' height ratio against the training distribution."""
    for r in m["area"]:
        z = _z(m["area"][r], reference.get("area", {}).get(r))
        if np.isfinite(z):
            per[r]["area_z"] = max(per[r]["area_z"], abs(z))
            ratio = m["area"][r] / math.exp(reference["area"][r]["log_mean"])
            add("area", [r], abs(z) <= Z_LIMIT,
                f"{_label(r)}: area {ratio:.2f} × the training mean (z = {z:+.1f})", z)
    for name, (num, den) in RATIOS.items():
        z = _z(m["ratios"].get(name, math.nan), reference.get("ratios", {}).get(name))
        if np.isfinite(z):
            for r in num + den:
                if r in per:
                    per[r]["area_z"] = max(per[r]["area_z"], abs(z))
            add("area_ratio", num + den, abs(z) <= Z_LIMIT,
                f"area ratio {name}: {m['ratios'][name]:.3f} (z = {z:+.1f})", z)
    z = _z(m["lung_height_ratio"], reference.get("lung_height_ratio"))
    if np.isfinite(z):
        add("lung_symmetry", ["left_lung", "right_lung"], abs(z) <= Z_LIMIT,
            f"lung heights left/right {m['lung_height_ratio']:.2f} (z = {z:+.1f})", z)


def _layout_checks(m: Mapping[str, Any], add: Callable) -> None:
    """Left and right in order, clavicles over the lung apices, the heart between the lungs."""
    geo = m["geometry"]

    def col(r):
        return geo[r]["col"] if r in geo else math.nan

    for kind in ("lung", "clavicle"):
        lc, rc = col(f"left_{kind}"), col(f"right_{kind}")
        if np.isfinite(lc) and np.isfinite(rc):
            add("left_right_order", [f"left_{kind}", f"right_{kind}"], lc > rc,
                f"left {kind} lies on the image's {'right' if lc > rc else 'left'} of the right {kind}"
                + ("" if lc > rc else " (expected: on the image's right)"), lc - rc)
    for side in ("left", "right"):
        pos = m["clavicle_position"].get(side, math.nan)
        if np.isfinite(pos):
            # The clavicle crosses the apex: its centroid lies in the lung's top third.
            add("clavicle_above_apex", [f"{side}_clavicle", f"{side}_lung"], pos < 1 / 3,
                f"{side} clavicle centre at {pos:.0%} of the {side} lung's height"
                + ("" if pos < 1 / 3 else " (expected: in its top third)"), pos)
    hc, lc, rc = col("heart"), col("left_lung"), col("right_lung")
    if np.isfinite(hc) and np.isfinite(lc) and np.isfinite(rc):
        ok = min(lc, rc) < hc < max(lc, rc)
        add("heart_between_lungs", ["heart"], ok,
            "heart centre " + ("between" if ok else "outside") + " the lungs' centres", hc)


# --------------------------------------------------------------------------- TTA and entropy


def entropy_per_area(prob: np.ndarray, *, threshold: float = 0.5) -> float:
    """Binary entropy (bits) of a probability map summed over the image, divided by the
    predicted area: uncertain pixels per mask pixel (subsampled like the checks)."""
    k = _stride_for(prob.shape)
    p = np.clip(np.asarray(prob, dtype=np.float32)[::k, ::k], 1e-6, 1 - 1e-6)
    h = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    area = float((p >= threshold).sum())
    return float(h.sum() / max(area, 1.0))


def self_gap(prob: np.ndarray, *, threshold: float = 0.5) -> float:
    """1 − the Jaccard the model expects of its own mask: the soft Jaccard between the
    probabilities and the thresholded mask, ``Σ_in p / (|mask| + Σ_out p)``. Near 0 for a
    confident prediction; grows with probability mass that straddles the boundary or lies
    outside the mask (subsampled like the checks)."""
    k = _stride_for(prob.shape)
    p = np.asarray(prob, dtype=np.float32)[::k, ::k]
    m = p >= threshold
    inside = float(p[m].sum())
    den = float(m.sum()) + float(p.sum()) - inside
    return 1.0 - inside / den if den > 0 else 0.0


def _affine(shift_r, shift_c, scale, deg) -> np.ndarray:
    """2x3 ``affine_grid`` matrix (output -> input, normalised coordinates)."""
    a = math.radians(deg)
    c, s = math.cos(a) / scale, math.sin(a) / scale
    # normalised coordinates span 2 per side, hence 2 * shift
    return np.array([[c, -s, -2 * shift_c], [s, c, -2 * shift_r]], dtype=np.float32)


def _inverse(theta: np.ndarray) -> np.ndarray:
    m = np.vstack([theta, [0, 0, 1]]).astype(np.float64)
    return np.linalg.inv(m)[:2].astype(np.float32)


def tta_predict(predictor, image, *, regions=None, augmentations=TTA_AUGMENTATIONS, model_input=None):
    """Predict an image plainly and under each augmentation, warped back.

    Parameters
    ----------
    predictor : cxrseg.predict.Predictor
    image : ndarray, shape (rows, cols)
        The radiograph (ignored when ``model_input`` is given).
    regions : optional
        Regions to keep (default: all the model predicts).
    augmentations : sequence of tuple
        ``(shift rows, shift cols, scale, degrees, gamma, contrast)``; see
        :data:`TTA_AUGMENTATIONS`.
    model_input : tuple, optional
        ``(input, PadInfo)`` from :meth:`Predictor.preprocess`, when already computed.

    Returns
    -------
    probs : ndarray, shape (1 + A, R, S, S)
        The plain prediction first, at the model's input size, on the plain grid.
    valid : ndarray, shape (1 + A, S, S), bool
        Where each copy saw the image (warping leaves the borders unseen).
    info : PadInfo
        To resize maps back to the image (:meth:`Predictor.to_native`).
    names : tuple of str
    """
    import torch
    import torch.nn.functional as F

    names = predictor.select(regions)
    x, info = model_input if model_input is not None else predictor.preprocess(image)
    s = x.shape[-1]
    base = torch.as_tensor(np.asarray(x), dtype=torch.float32)[None, None]
    batch = [base]
    thetas = []
    for sr, sc, scale, deg, gamma, contrast in augmentations:
        th = torch.as_tensor(_affine(sr, sc, scale, deg))[None]
        thetas.append(th)
        grid = F.affine_grid(th, [1, 1, s, s], align_corners=False)
        w = F.grid_sample(base, grid, mode="bilinear", padding_mode="border", align_corners=False)
        w = w.clamp(0, 1) ** gamma
        w = ((w - 0.5) * contrast + 0.5).clamp(0, 1)
        batch.append(w)
    prob = predictor.forward(torch.cat(batch)[:, 0], regions=names).float().cpu()
    out = [prob[:1]]
    valid = [torch.ones(1, 1, s, s)]
    for i, th in enumerate(thetas):
        inv = torch.as_tensor(_inverse(th[0].numpy()))[None]
        grid = F.affine_grid(inv, [1, 1, s, s], align_corners=False)
        out.append(F.grid_sample(prob[i + 1 : i + 2], grid, mode="bilinear", padding_mode="zeros",
                                 align_corners=False))
        valid.append(F.grid_sample(torch.ones(1, 1, s, s), grid, mode="nearest", padding_mode="zeros",
                                   align_corners=False))
    probs = torch.cat(out).numpy()
    ok = torch.cat(valid)[:, 0].numpy() > 0.5
    return probs, ok, info, names


def tta_features(probs: np.ndarray, valid: np.ndarray, names, *, thresholds=None) -> dict[str, dict[str, float]]:
    """Per-region agreement of the augmented copies with the plain prediction.

    ``tta_disagreement`` is 1 − the mean Jaccard between each copy's mask and the plain
    mask (where the copy saw the image), ``tta_worst`` 1 − the lowest of them;
    ``tta_spread`` is the mean per-pixel standard deviation of the probabilities inside the
    union of the copies' masks.
    """
    both = valid.all(axis=0)
    feats = {}
    for j, r in enumerate(names):
        t = 0.5 if thresholds is None else float(thresholds.get(r, 0.5))
        p = probs[:, j]
        m = p >= t
        base = m[0]
        js = []
        for i in range(1, p.shape[0]):
            v = valid[i]
            a, b = base & v, m[i] & v
            union = (a | b).sum()
            js.append(1.0 if union == 0 else (a & b).sum() / union)
        union_all = m.any(axis=0) & both
        spread = float(p.std(axis=0)[union_all].mean()) if union_all.any() else 0.0
        feats[r] = {"tta_disagreement": float(1 - np.mean(js)) if js else 0.0,
                    "tta_worst": float(1 - np.min(js)) if js else 0.0, "tta_spread": spread}
    return feats


def disagreement_map(probs: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per-pixel standard deviation across the copies, ``(R, S, S)`` float32 (pixels some
    copy did not see use the copies that did)."""
    w = valid[:, None].astype(np.float32)
    n = np.maximum(w.sum(axis=0), 1.0)
    mean = (probs * w).sum(axis=0) / n
    var = (((probs - mean) ** 2) * w).sum(axis=0) / n
    return np.sqrt(var).astype(np.float32)


# --------------------------------------------------------------------------- the estimate


def _transform(name: str, v: float) -> float:
    """Features enter the regression on a log scale (errors are multiplicative)."""
    if name in ("pieces", "failed"):
        return math.log1p(max(v, 0.0))
    if name == "area_z":
        return min(abs(v), 10.0)
    return math.log(max(v, 0.0) + 1e-3)


def fit_estimator(rows: Iterable[Mapping[str, Any]], *, mode: str, ridge: float = 1.0,
                  pooled: bool = True, features: Iterable[str] | None = None) -> dict[str, Any]:
    """Fit the per-region Jaccard estimate.

    A linear model of ``log(1 − Jaccard + 0.01)`` on the log-scaled features
    (:data:`FEATURES`), standardised, with an L2 penalty.

    Parameters
    ----------
    rows : iterable of dict
        ``{"region": str, "jaccard": float, <feature>: float, ...}`` per case and region,
        from predictions the model did not train on (out-of-fold).
    mode : {"quick", "full"}
        Which feature set.
    ridge : float
        L2 penalty on the standardised coefficients.
    pooled : bool
        One set of coefficients for all regions, with an intercept per region (five times
        the rows per coefficient; a bad region looks alike in every structure), or one
        model per region.
    features : iterable of str, optional
        The signals to use (default :data:`FEATURES` of ``mode``; full-mode signals need
        full mode). The fitted model names them, so it applies whatever the default.

    Returns
    -------
    dict
        Per region: feature means/scales, coefficients and intercept; apply with
        :func:`estimate_jaccard`.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    names = tuple(FEATURES[mode] if features is None else features)
    rows = list(rows)
    if not rows:
        raise ValueError("fit_estimator: no rows")
    regions = list(dict.fromkeys(row["region"] for row in rows))
    out: dict[str, Any] = {"features": list(names), "pooled": bool(pooled), "regions": {}}

    def design(rs):
        X = np.array([[_transform(n, float(row[n])) for n in names] for row in rs], dtype=np.float64)
        y = np.log(1 - np.clip([float(row["jaccard"]) for row in rs], 0, 1) + 0.01)
        mu, sd = X.mean(axis=0), X.std(axis=0)
        sd[sd < 1e-9] = 1.0
        return (X - mu) / sd, y, mu, sd

    if pooled:
        Z, y, mu, sd = design(rows)
        D = np.array([[1.0 if row["region"] == g else 0.0 for g in regions] for row in rows])
        A = np.hstack([Z, D])
        penalty = np.diag([ridge] * Z.shape[1] + [1e-9] * len(regions))
        w = np.linalg.solve(A.T @ A + penalty, A.T @ y)
        for i, g in enumerate(regions):
            n = int(D[:, i].sum())
            out["regions"][g] = {"mean": mu.tolist(), "scale": sd.tolist(), "coef": w[: len(names)].tolist(),
                                 "intercept": float(w[len(names) + i]), "n": n}
        return out
    for g in regions:
        rs = [row for row in rows if row["region"] == g]
        Z, y, mu, sd = design(rs)
        coef = np.linalg.solve(Z.T @ Z + ridge * np.eye(Z.shape[1]), Z.T @ (y - y.mean()))
        out["regions"][g] = {"mean": mu.tolist(), "scale": sd.tolist(), "coef": coef.tolist(),
                             "intercept": float(y.mean()), "n": len(rs)}
    return out


def estimate_jaccard(features: Mapping[str, float], params: Mapping[str, Any] | None, region: str) -> float:
    """Apply a :func:`fit_estimator` model to one region's features (NaN if not fitted)."""
    if not params or region not in params.get("regions", {}):
        return math.nan
    p = params["regions"][region]
    try:
        x = np.array([_transform(n, float(features[n])) for n in params["features"]])
    except KeyError:
        return math.nan
    z = (x - np.asarray(p["mean"])) / np.asarray(p["scale"])
    y = float(p["intercept"] + z @ np.asarray(p["coef"]))
    return float(np.clip(1.01 - math.exp(y), 0.0, 1.0))


# --------------------------------------------------------------------------- model files


def quality_path(checkpoint) -> Path:
    """The quality file that belongs to a checkpoint: ``<name>.quality.json`` beside it."""
    p = Path(checkpoint)
    return p.with_name(p.name.removesuffix(".safetensors") + ".quality.json")


def load_quality_params(checkpoint) -> dict[str, Any] | None:
    """The checkpoint's quality file (reference statistics and fitted estimators), or
    ``None`` when it has none (then only the count and position checks run).

    Raises
    ------
    ValueError
        The file exists but is not a quality file.
    """
    path = quality_path(checkpoint)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable quality file ({exc})") from exc
    if not isinstance(data, dict) or "reference" not in data:
        raise ValueError(f"{path}: expected a JSON object with 'reference' and 'estimators'")
    return data


def save_quality_params(checkpoint, data: Mapping[str, Any]) -> Path:
    """Write the quality file beside a checkpoint (atomically)."""
    from .io import atomic_write

    text = (json.dumps(data, indent=1) + "\n").encode("utf-8")
    return atomic_write(quality_path(checkpoint), lambda fh: fh.write(text))


# --------------------------------------------------------------------------- the entry point


def assess(
    image=None,
    probs: Mapping[str, np.ndarray] | None = None,
    *,
    predictor=None,
    mode: str = "full",
    params: Mapping[str, Any] | None = None,
    thresholds: Mapping[str, float] | None = None,
    maps: bool = False,
    model_input=None,
) -> QualityReport:
    """Estimate the quality of a prediction without ground truth.

    Parameters
    ----------
    image : ndarray, shape (rows, cols), optional
        The radiograph (needed in full mode, or when ``probs`` is not given).
    probs : dict of str to ndarray, optional
        The plain prediction (region -> probability map at the image's size); predicted
        with ``predictor`` when omitted.
    predictor : cxrseg.predict.Predictor, optional
        Needed in full mode and without ``probs``.
    mode : {"full", "quick"}
        ``quick``: checks and entropy only (no extra forward pass).
    params : dict, optional
        Reference statistics and estimators (:func:`load_quality_params`); by default the
        predictor's quality file.
    thresholds : dict, optional
        Per-region thresholds (default: the predictor's, else 0.5).
    maps : bool
        Full mode: keep each region's disagreement map at the image's size.
    model_input : tuple, optional
        ``(input, PadInfo)`` from :meth:`Predictor.preprocess`: full mode then needs no
        image (the command line's loader hands over only the model-sized input).

    Returns
    -------
    QualityReport
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if predictor is None and (mode == "full" or probs is None):
        raise ValueError("assess: full mode and predicting need a predictor")
    if probs is None:
        if image is None:
            raise ValueError("assess: pass the image, the probabilities, or both")
        probs = predictor.predict(image)
    if params is None and predictor is not None:
        params = load_quality_params(predictor.path)
    if thresholds is None and predictor is not None:
        thresholds = predictor.thresholds
    params = params or {}
    t0 = time.perf_counter()
    checks, per = run_checks(probs, reference=params.get("reference"), thresholds=thresholds)
    feats: dict[str, dict[str, float]] = {r: dict(per.get(r, {})) for r in probs}
    for r in probs:
        t = 0.5 if thresholds is None else float(thresholds.get(r, 0.5))
        feats[r]["entropy"] = entropy_per_area(probs[r], threshold=t)
        feats[r]["self_gap"] = self_gap(probs[r], threshold=t)
    unc: dict[str, np.ndarray] = {}
    if mode == "full":
        if image is None and model_input is None:
            raise ValueError("assess: full mode needs the image")
        names = tuple(r for r in predictor.regions if r in probs)
        tta, valid, info, names = tta_predict(predictor, image, regions=names, model_input=model_input)
        for r, f in tta_features(tta, valid, names, thresholds=thresholds).items():
            feats[r].update(f)
        if maps:
            import torch

            dmap = predictor.to_native(torch.as_tensor(disagreement_map(tta, valid)), info).cpu().numpy()
            unc = {r: dmap[j] for j, r in enumerate(names)}
    est = (params.get("estimators") or {}).get(mode)
    regions = {}
    for r in probs:
        regions[r] = RegionQuality(
            region=r, estimated_jaccard=estimate_jaccard(feats[r], est, r), features=feats[r],
            failing=[c for c in checks if not c.passed and r in c.regions], uncertainty=unc.get(r),
        )
    return QualityReport(mode=mode, regions=regions, checks=checks, seconds=time.perf_counter() - t0)


def rank_by_estimate(reports: Mapping[str, QualityReport], *, region: str | None = None) -> list[str]:
    """Case ids worst first by estimated Jaccard (one region, or each case's lowest);
    cases without an estimate go last, in their order."""
    def score(rep: QualityReport) -> float:
        if region is None:
            return rep.min_estimated_jaccard
        q = rep.regions.get(region)
        return q.estimated_jaccard if q is not None else math.nan

    scored = [(score(rep), i, cid) for i, (cid, rep) in enumerate(reports.items())]
    known = sorted((s, i, c) for s, i, c in scored if np.isfinite(s))
    return [c for _, _, c in known] + [c for s, _, c in scored if not np.isfinite(s)]


def cost_ratio(predictor, image, *, repeats: int = 3) -> dict[str, float]:
    """Time of a plain prediction and of the quick and full assessments, side by side.

    Returns ``{"predict_s", "quick_s", "full_s", "quick_ratio", "full_ratio"}``: the
    ratios are the extra time of each mode over a plain prediction (0.05 = +5 %).
    """
    params = load_quality_params(predictor.path)
    best = {"predict": math.inf, "quick": math.inf, "full": math.inf}
    predictor.predict(image)  # warm-up
    for _ in range(max(1, int(repeats))):
        t0 = time.perf_counter()
        probs = predictor.predict(image)
        best["predict"] = min(best["predict"], time.perf_counter() - t0)
        t0 = time.perf_counter()
        assess(image, probs, predictor=predictor, mode="quick", params=params)
        best["quick"] = min(best["quick"], time.perf_counter() - t0)
        t0 = time.perf_counter()
        assess(image, probs, predictor=predictor, mode="full", params=params)
        best["full"] = min(best["full"], time.perf_counter() - t0)
    return {"predict_s": best["predict"], "quick_s": best["quick"], "full_s": best["full"],
            "quick_ratio": best["quick"] / best["predict"], "full_ratio": best["full"] / best["predict"]}


def predict_columns(predictor, model_input, native, regions, *, mode: str, thresholds, case: str,
                    maps_dir=None) -> dict[str, dict[str, str]]:
    """The quality columns of ``cxrseg predict --quality`` for one case.

    Parameters
    ----------
    predictor : cxrseg.predict.Predictor
    model_input : tuple
        ``(input, PadInfo)`` of the case.
    native : ndarray or torch.Tensor, shape (R, rows, cols)
        The plain probabilities at the image's size, channels in ``regions`` order.
    regions : sequence of str
    mode : {"quick", "full"}
    thresholds : dict
    case : str
        Case name (file names of the maps).
    maps_dir : path-like, optional
        Full mode: write each region's disagreement map as float16
        ``maps_dir/<region>/<case>.npy``.

    Returns
    -------
    dict
        Region -> ``{"est_jaccard": str, "failing_checks": str}`` (messages joined by ``"; "``).
    """
    from .io import atomic_write

    arr = native.float().cpu().numpy() if hasattr(native, "cpu") else np.asarray(native, np.float32)
    probs = {r: arr[j] for j, r in enumerate(regions)}
    rep = assess(None, probs, predictor=predictor, mode=mode, thresholds=thresholds,
                 maps=maps_dir is not None and mode == "full", model_input=model_input)
    out = {}
    for r, q in rep.regions.items():
        out[r] = {"est_jaccard": _round(q.estimated_jaccard),
                  "failing_checks": "; ".join(c.message for c in q.failing)}
        if q.uncertainty is not None and maps_dir is not None:
            a = q.uncertainty.astype(np.float16)
            atomic_write(Path(maps_dir) / r / f"{case}.npy", lambda fh, a=a: np.save(fh, a))
    return out


def bench_section(predictor, args, out, res) -> None:
    """``cxrseg bench`` section ``quality``: the cost of :func:`assess` (quick and full) as a
    ratio to a plain prediction of the same phantom image, timed side by side."""
    from .phantom import make_phantom

    img = make_phantom(0, size=256 if args.smoke else 1024).image
    cost = cost_ratio(predictor, img, repeats=args.repeats)
    res["quality"] = cost
    out("[quality] no-ground-truth quality estimate, one phantom case "
        f"({img.shape[0]} px, best of {max(1, args.repeats)} runs)")
    out(f"    plain prediction        {cost['predict_s'] * 1e3:8.1f} ms")
    out(f"    + quick (checks)        {cost['quick_s'] * 1e3:8.1f} ms   {cost['quick_ratio']:6.1%} of a prediction")
    out(f"    + full (augmentation)   {cost['full_s'] * 1e3:8.1f} ms   {cost['full_ratio']:6.1%} of a prediction")
