"""Overlap and contour metrics for binary masks.

* Jaccard (SCR's "overlap"): ``|A ∩ B| / |A ∪ B|``.
* Dice: ``2|A ∩ B| / (|A| + |B|)``.
* Mean absolute contour distance (SCR's MAD) in mm: the mean of the distances from each
  boundary pixel of one mask to the other mask's boundary, over both directions.
* HD95: the 95th percentile of those symmetric boundary distances, in mm.

Conventions for empty masks: two empty masks agree perfectly (Jaccard = Dice = 1,
distances 0); one empty and one not gives Jaccard = Dice = 0 and infinite distances.
"""

from __future__ import annotations

import math

import numpy as np

METRICS = ("jaccard", "dice", "mad_mm", "hd95_mm")


def _as_bool(a, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D mask, got shape {a.shape}")
    return a.astype(bool) if a.dtype != bool else a


def _pair(pred, truth):
    p, t = _as_bool(pred, "pred"), _as_bool(truth, "truth")
    if p.shape != t.shape:
        raise ValueError(f"pred and truth shapes differ: {p.shape} vs {t.shape}")
    return p, t


def _counts(p: np.ndarray, t: np.ndarray) -> tuple[int, int, int]:
    """``(|A ∩ B|, |A|, |B|)`` of two boolean masks."""
    return int(np.count_nonzero(p & t)), int(np.count_nonzero(p)), int(np.count_nonzero(t))


def _jaccard_of(inter: int, n_pred: int, n_truth: int) -> float:
    union = n_pred + n_truth - inter
    return 1.0 if union == 0 else inter / union


def _dice_of(inter: int, n_pred: int, n_truth: int) -> float:
    s = n_pred + n_truth
    return 1.0 if s == 0 else 2.0 * inter / s


def jaccard(pred, truth) -> float:
    """Jaccard index of two binary masks.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.zeros((4, 4), bool); a[:2] = True
    >>> b = np.zeros((4, 4), bool); b[1:3] = True
    >>> jaccard(a, b)
    0.3333333333333333
    """
    return _jaccard_of(*_counts(*_pair(pred, truth)))


def dice(pred, truth) -> float:
    """Dice coefficient of two binary masks.

    >>> import numpy as np
    >>> a = np.zeros((4, 4), bool); a[:2] = True
    >>> b = np.zeros((4, 4), bool); b[1:3] = True
    >>> dice(a, b)
    0.5
    """
    return _dice_of(*_counts(*_pair(pred, truth)))


def overlap(pred, truth) -> dict[str, float]:
    """Jaccard, Dice and the false-positive / false-negative pixel counts of one mask pair,
    from one count of the pixels.

    Returns
    -------
    dict
        ``jaccard``, ``dice`` (the module's empty-mask conventions), ``fp`` (pixels of
        ``pred`` outside ``truth``) and ``fn`` (pixels of ``truth`` outside ``pred``).

    Examples
    --------
    >>> import numpy as np
    >>> a = np.zeros((4, 4), bool); a[:2] = True
    >>> b = np.zeros((4, 4), bool); b[1:3] = True
    >>> overlap(a, b)
    {'jaccard': 0.3333333333333333, 'dice': 0.5, 'fp': 4, 'fn': 4}
    """
    inter, n_pred, n_truth = _counts(*_pair(pred, truth))
    return {
        "jaccard": _jaccard_of(inter, n_pred, n_truth),
        "dice": _dice_of(inter, n_pred, n_truth),
        "fp": n_pred - inter,
        "fn": n_truth - inter,
    }


def _boundary(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def boundary_distances(pred, truth, *, spacing=(1.0, 1.0)) -> np.ndarray:
    """Distances (in the units of ``spacing``) from every boundary pixel of each mask to
    the boundary of the other, both directions concatenated."""
    from scipy import ndimage

    p, t = _pair(pred, truth)
    bp, bt = _boundary(p), _boundary(t)
    if not bp.any() and not bt.any():
        return np.zeros(0)
    if not bp.any() or not bt.any():
        return np.array([np.inf])
    # Crop to the joint bounding box (+1) to keep the distance transforms small.
    rows = np.flatnonzero((bp | bt).any(1))
    cols = np.flatnonzero((bp | bt).any(0))
    r0, r1 = max(rows[0] - 1, 0), rows[-1] + 2
    c0, c1 = max(cols[0] - 1, 0), cols[-1] + 2
    bp, bt = bp[r0:r1, c0:c1], bt[r0:r1, c0:c1]
    dt_t = ndimage.distance_transform_edt(~bt, sampling=spacing)
    dt_p = ndimage.distance_transform_edt(~bp, sampling=spacing)
    return np.concatenate([dt_t[bp], dt_p[bt]])


def mean_contour_distance(pred, truth, *, spacing=(1.0, 1.0)) -> float:
    """Symmetric mean absolute boundary distance (SCR's contour distance)."""
    d = boundary_distances(pred, truth, spacing=spacing)
    return 0.0 if d.size == 0 else float(np.mean(d))


def hd95(pred, truth, *, spacing=(1.0, 1.0)) -> float:
    """95th percentile of the symmetric boundary distances."""
    d = boundary_distances(pred, truth, spacing=spacing)
    if d.size == 0:
        return 0.0
    if np.isinf(d).any():
        return math.inf
    return float(np.percentile(d, 95))


def all_metrics(pred, truth, *, spacing=(1.0, 1.0)) -> dict[str, float]:
    """Jaccard, Dice, mean contour distance and HD95 of one mask pair."""
    d = boundary_distances(pred, truth, spacing=spacing)
    if d.size == 0:
        mad = h = 0.0
    elif np.isinf(d).any():
        mad = h = math.inf
    else:
        mad, h = float(np.mean(d)), float(np.percentile(d, 95))
    return {"jaccard": jaccard(pred, truth), "dice": dice(pred, truth), "mad_mm": mad, "hd95_mm": h}


def batch_jaccard(pred, truth) -> np.ndarray:
    """Per-image, per-channel Jaccard of ``(B, R, H, W)`` binary arrays (numpy or torch)."""
    p = np.asarray(pred).astype(bool)
    t = np.asarray(truth).astype(bool)
    inter = (p & t).sum(axis=(-2, -1)).astype(np.float64)
    union = (p | t).sum(axis=(-2, -1)).astype(np.float64)
    out = np.ones_like(inter)
    np.divide(inter, union, out=out, where=union > 0)
    return out
