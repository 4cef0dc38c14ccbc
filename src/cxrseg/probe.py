"""``cxrseg probe``: does the model segment anatomy, or where anatomy usually is?

Two probes on cases with ground truth, both at the model's input resolution (the image
padded to a square and area-resized, as for prediction; the masks likewise):

* **geometric** - the image *and* its ground truth are translated, scaled or rotated
  together over a grid of amounts, and the Jaccard overlap of the prediction with the
  moved ground truth is recorded per region. A model that segments anatomy keeps its
  overlap as the chest moves; one that learned a position prior loses it.
* **counterfactual** - a clavicle is removed (its pixels and a thin margin are filled by
  biharmonic inpainting from the surroundings) or moved (removed, and its own contrast
  over the inpainted background added back lower down, over the lung field). What the
  model predicts where the structure was and where it went is recorded as the fraction
  of the structure's pixels labelled as that structure (``recall``) and the mean
  probability there.

Everything is deterministic for a given seed (the seed only picks the offsets of the
moved clavicles and, with ``max_cases``, which cases are probed). Results are written as
CSV, PNG plots (matplotlib, Agg) and a short markdown report by :func:`write_report`.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .regions import COLORS, DISPLAY_NAMES, REGIONS

__all__ = [
    "ProbeGrid",
    "ProbeSample",
    "ProbeResult",
    "warp",
    "load_samples",
    "geometric_probe",
    "counterfactual_probe",
    "remove_structure",
    "move_structure",
    "summarize_geometric",
    "add_visible",
    "read_rows",
    "summarize_counterfactual",
    "write_report",
    "run_probe",
]

#: Structures the counterfactual probe removes and moves.
COUNTERFACTUAL_REGIONS: tuple[str, ...] = ("left_clavicle", "right_clavicle")


@dataclass(frozen=True)
class ProbeGrid:
    """Amounts of each geometric transform (0 / 1 is always added: the reference).

    Attributes
    ----------
    translate_x : tuple of float
        Horizontal shifts, fractions of the image side; positive moves the chest to the
        image's right (the patient's left).
    translate_y : tuple of float
        Vertical shifts, fractions of the image side; positive moves the chest down.
    scale : tuple of float
        Zoom factors about the image centre (> 1 enlarges the chest).
    rotate : tuple of float
        Rotations about the image centre, degrees; positive is clockwise on screen.
    """

    translate_x: tuple[float, ...] = (-0.2, -0.15, -0.1, -0.05, 0.0, 0.05, 0.1, 0.15, 0.2)
    translate_y: tuple[float, ...] = (-0.2, -0.15, -0.1, -0.05, 0.0, 0.05, 0.1, 0.15, 0.2)
    scale: tuple[float, ...] = (0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3)
    rotate: tuple[float, ...] = (-20.0, -15.0, -10.0, -5.0, 0.0, 5.0, 10.0, 15.0, 20.0)

    def items(self) -> list[tuple[str, float]]:
        """``(transform, amount)`` pairs, the identity once per transform (it is the
        reference of that transform's curve)."""
        out = []
        for name in ("translate_x", "translate_y", "scale", "rotate"):
            ident = 1.0 if name == "scale" else 0.0
            amounts = sorted({float(a) for a in getattr(self, name)} | {ident})
            out.extend((name, a) for a in amounts)
        return out


@dataclass
class ProbeSample:
    """One case at the model's input size: image ``(S, S)`` in [0, 1] and ground truth
    ``(R, S, S)`` bool in ``regions`` order."""

    case_id: str
    image: np.ndarray
    truth: np.ndarray
    regions: tuple[str, ...]


@dataclass
class ProbeResult:
    """Rows of both probes (dicts, as written to CSV) and what was probed."""

    geometric: list[dict] = field(default_factory=list)
    counterfactual: list[dict] = field(default_factory=list)
    case_ids: list[str] = field(default_factory=list)
    model_id: str = ""
    grid: ProbeGrid = field(default_factory=ProbeGrid)
    seed: int = 0
    source: str = ""


# --------------------------------------------------------------------------- transforms


def _theta(*, tx: float, ty: float, scale: float, angle_deg: float) -> np.ndarray:
    """The ``affine_grid`` matrix (output -> input, normalised coordinates) of a content
    transform that rotates, scales about the centre, then shifts."""
    a = math.radians(angle_deg)
    # y points down, so this matrix turns content clockwise on screen for a > 0
    fwd = np.array(
        [
            [scale * math.cos(a), -scale * math.sin(a), 2.0 * tx],
            [scale * math.sin(a), scale * math.cos(a), 2.0 * ty],
            [0.0, 0.0, 1.0],
        ]
    )
    return np.linalg.inv(fwd)[:2]


def warp(
    image: np.ndarray,
    masks: np.ndarray | None = None,
    *,
    tx: float = 0.0,
    ty: float = 0.0,
    scale: float = 1.0,
    angle_deg: float = 0.0,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Move a square image and its masks together.

    Parameters
    ----------
    image : ndarray, shape (S, S)
        [0, 1] image; uncovered borders repeat the edge pixels (as the training
        augmentation does), so the probe measures position, not a new kind of border.
    masks : ndarray, shape (R, S, S), optional
        Masks (bool or soft); uncovered borders are background. Returned as bool
        (bilinear, then >= 0.5).
    tx, ty : float
        Shifts as fractions of the side (positive: right, down).
    scale : float
        Zoom about the centre.
    angle_deg : float
        Rotation about the centre, degrees, clockwise on screen.

    Returns
    -------
    image : ndarray (S, S) float32
    masks : ndarray (R, S, S) bool or None
    """
    import torch
    import torch.nn.functional as F

    img = torch.as_tensor(np.asarray(image, np.float32))[None, None]
    theta = torch.as_tensor(_theta(tx=tx, ty=ty, scale=scale, angle_deg=angle_deg), dtype=torch.float32)[None]
    grid = F.affine_grid(theta, list(img.shape), align_corners=False)
    out = F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)[0, 0]
    moved = None
    if masks is not None:
        m = torch.as_tensor(np.asarray(masks, np.float32))[None]
        g = F.affine_grid(theta, list(m.shape), align_corners=False)
        mm = F.grid_sample(m, g, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
        moved = (mm >= 0.5).numpy()
    return out.clamp(0, 1).numpy(), moved


# --------------------------------------------------------------------------- data


def load_samples(
    data_root, *, cases=None, checkpoint=None, size: int | None = None, regions=REGIONS,
    max_cases: int | None = None, seed: int = 0, progress: Callable[[int, int], None] | None = None,
) -> tuple[list[ProbeSample], str]:
    """Cases of a JSRT/SCR-style folder at the model's input size.

    Parameters
    ----------
    data_root : path-like
        Dataset folder (:class:`cxrseg.dataset.DatasetIndex`).
    cases : optional
        As ``cxrseg evaluate --cases``: ``None`` = the checkpoint's validation cases
        (from its metadata) when it lists them, else all; ``"val"``, ``"all"``, ids...
    checkpoint : optional
        Checkpoint whose metadata names the validation cases.
    size : int, optional
        Side of the samples (default: the checkpoint's input size).
    regions : iterable of str
        Regions of the ground truth; cases missing one are skipped.
    max_cases : int, optional
        Keep this many cases, drawn with ``seed`` (sorted by id).

    Returns
    -------
    samples : list of ProbeSample
    source : str
        How the cases were chosen.
    """
    from .dataset import DatasetIndex
    from .evaluate import select_cases
    from .model import read_metadata
    from .predict import resolve_checkpoint_path
    from .training_arrays import sample_to_arrays

    path = resolve_checkpoint_path(checkpoint)
    meta = read_metadata(path)
    if size is None:
        size = int((meta.get("config") or {}).get("input_size", 512))
    index = DatasetIndex(data_root)
    chosen, source = select_cases(index, cases, list(meta.get("val_cases") or []) or None)
    chosen = [c for c in chosen if c.has_regions(regions)]
    if not chosen:
        raise ValueError(f"{data_root}: no case has masks of all of {', '.join(regions)}")
    if max_cases is not None and max_cases < len(chosen):
        rng = np.random.default_rng(seed)
        keep = sorted(rng.choice(len(chosen), size=int(max_cases), replace=False))
        chosen = [chosen[i] for i in keep]
        source += f", {max_cases} drawn with seed {seed}"
    out = []
    for i, case in enumerate(chosen):
        image = case.load_image().data
        masks = case.load_masks(regions)
        img, msk = sample_to_arrays(image, masks, tuple(regions), int(size))
        out.append(ProbeSample(case.case_id, img.astype(np.float32), msk >= 0.5, tuple(regions)))
        if progress is not None:
            progress(i + 1, len(chosen))
    return out, source


# --------------------------------------------------------------------------- geometric


def _jaccard(pred: np.ndarray, truth: np.ndarray) -> float:
    union = np.logical_or(pred, truth).sum()
    if union == 0:
        return float("nan")  # the structure left the image and nothing was predicted
    return float(np.logical_and(pred, truth).sum() / union)


def _masks_of(predictor, images: np.ndarray, regions: Sequence[str]) -> np.ndarray:
    """Thresholded predictions ``(B, R, S, S)`` bool of pre-processed images."""
    prob = predictor.forward(np.asarray(images, np.float32), regions=tuple(regions)).float().cpu().numpy()
    th = np.array([predictor.thresholds.get(r, 0.5) for r in regions], np.float32).reshape(1, -1, 1, 1)
    return prob >= th


def _probs_of(predictor, images: np.ndarray, regions: Sequence[str]) -> np.ndarray:
    return predictor.forward(np.asarray(images, np.float32), regions=tuple(regions)).float().cpu().numpy()


def geometric_probe(
    predictor, samples: Sequence[ProbeSample], *, grid: ProbeGrid | None = None, batch_size: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict]:
    """Jaccard per case, region, transform and amount, image and ground truth moved
    together (:func:`warp`).

    Parameters
    ----------
    predictor : cxrseg.predict.Predictor
        Its ``input_size`` must equal the samples' side.
    samples : sequence of ProbeSample
    grid : ProbeGrid, optional

    Returns
    -------
    list of dict
        Rows ``case, transform, amount, region, jaccard, truth_pixels, pred_pixels,
        visible`` (:func:`add_visible`).
    """
    grid = grid or ProbeGrid()
    items = grid.items()
    rows: list[dict] = []
    for k, s in enumerate(samples):
        _check_size(predictor, s)
        regions = s.regions
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            imgs, truths = [], []
            for name, amount in chunk:
                kw = {
                    "translate_x": {"tx": amount},
                    "translate_y": {"ty": amount},
                    "scale": {"scale": amount},
                    "rotate": {"angle_deg": amount},
                }[name]
                im, tr = warp(s.image, s.truth, **kw)
                imgs.append(im)
                truths.append(tr)
            pred = _masks_of(predictor, np.stack(imgs), regions)
            for (name, amount), p, t in zip(chunk, pred, truths, strict=True):
                for j, r in enumerate(regions):
                    rows.append(
                        {
                            "case": s.case_id,
                            "transform": name,
                            "amount": amount,
                            "region": r,
                            "jaccard": _jaccard(p[j], t[j]),
                            "truth_pixels": int(t[j].sum()),
                            "pred_pixels": int(p[j].sum()),
                        }
                    )
        if progress is not None:
            progress(k + 1, len(samples))
    return add_visible(rows)


def add_visible(rows: Sequence[dict]) -> list[dict]:
    """Add ``visible`` to geometric rows: the fraction of the structure's ground truth
    still inside the image (truth pixels over those at the identity, times the zoom's
    change of area), so a drop caused by the structure leaving the image is not mistaken
    for a failure of the model."""
    ident = {
        (r["case"], r["region"]): r["truth_pixels"]
        for r in rows
        if float(r["amount"]) == (1.0 if r["transform"] == "scale" else 0.0)
    }
    for r in rows:
        base = ident.get((r["case"], r["region"]), 0)
        if r["transform"] == "scale":
            base = base * float(r["amount"]) ** 2
        r["visible"] = min(1.0, float(r["truth_pixels"]) / base) if base else float("nan")
    return list(rows)


def read_rows(path) -> list[dict]:
    """Rows of a probe CSV with numbers as numbers (to re-plot or re-report)."""
    out = []
    with open(path, newline="") as fh:
        for r in csv.DictReader(fh):
            row: dict = {}
            for k, v in r.items():
                try:
                    row[k] = int(v) if k in ("truth_pixels", "pred_pixels", "shift_px") else float(v)
                except ValueError:
                    row[k] = v
            out.append(row)
    return out


def _check_size(predictor, s: ProbeSample) -> None:
    if s.image.shape != (predictor.input_size, predictor.input_size):
        raise ValueError(
            f"case {s.case_id}: sample of shape {s.image.shape} but the model's input is "
            f"{predictor.input_size} x {predictor.input_size}; load the samples with size={predictor.input_size}"
        )


# --------------------------------------------------------------------------- counterfactual


def _disk(radius: int) -> np.ndarray:
    r = int(radius)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return xx * xx + yy * yy <= r * r


def remove_structure(image: np.ndarray, mask: np.ndarray, *, margin: int | None = None,
                     max_side: int = 96) -> np.ndarray:
    """The image with ``mask`` (dilated by ``margin`` pixels) filled from its
    surroundings by biharmonic inpainting (:func:`skimage.restoration.inpaint_biharmonic`).

    The inpainting runs on a crop around the structure, downscaled so that its longer
    side is at most ``max_side`` pixels (biharmonic inpainting solves a sparse system
    per hole pixel), and the upscaled fill replaces only the hole.

    Parameters
    ----------
    image : ndarray (S, S) in [0, 1]
    mask : ndarray (S, S) bool
    margin : int, optional
        Dilation of the hole (default: 1 % of the side, at least 2 pixels), so that the
        structure's blurred edge goes too.
    max_side : int
        Longest side of the downscaled crop.
    """
    from scipy import ndimage
    from skimage.restoration import inpaint_biharmonic
    from skimage.transform import resize

    image = np.asarray(image, np.float32)
    mask = np.asarray(mask, bool)
    if not mask.any():
        return image.copy()
    if margin is None:
        margin = max(2, round(0.01 * image.shape[0]))
    hole = ndimage.binary_dilation(mask, structure=_disk(margin))
    rows, cols = np.nonzero(hole)
    pad = 4 * margin + 4
    r0, r1 = max(0, rows.min() - pad), min(image.shape[0], rows.max() + pad + 1)
    c0, c1 = max(0, cols.min() - pad), min(image.shape[1], cols.max() + pad + 1)
    crop = image[r0:r1, c0:c1]
    hcrop = hole[r0:r1, c0:c1]
    f = min(1.0, max_side / max(crop.shape))
    small_shape = (max(8, round(crop.shape[0] * f)), max(8, round(crop.shape[1] * f)))
    small = resize(crop, small_shape, order=1, anti_aliasing=True, preserve_range=True)
    # a pixel is a hole when any part of it is: nothing of the structure leaks in
    small_hole = resize(hcrop.astype(np.float32), small_shape, order=1, anti_aliasing=False) > 0.01
    filled = inpaint_biharmonic(small, small_hole)
    big = resize(filled, crop.shape, order=1, anti_aliasing=False, preserve_range=True).astype(np.float32)
    out = image.copy()
    region = out[r0:r1, c0:c1]
    region[hcrop] = big[hcrop]
    return np.clip(out, 0, 1)


def move_structure(image: np.ndarray, mask: np.ndarray, *, dy: int, dx: int,
                   margin: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Move a structure by ``(dy, dx)`` pixels: remove it (:func:`remove_structure`) and
    add its own contrast over the inpainted background at the new place.

    Returns
    -------
    moved : ndarray (S, S)
        The image with the structure moved.
    removed : ndarray (S, S)
        The image with the structure removed only.
    new_mask : ndarray (S, S) bool
        Where the structure now is.
    """
    from scipy import ndimage

    removed = remove_structure(image, mask, margin=margin)
    if margin is None:
        margin = max(2, round(0.01 * image.shape[0]))
    hole = ndimage.binary_dilation(mask, structure=_disk(margin))
    delta = np.where(hole, np.asarray(image, np.float32) - removed, 0.0)
    delta = ndimage.shift(delta, (dy, dx), order=0, mode="constant", cval=0.0)
    new_mask = ndimage.shift(np.asarray(mask, np.uint8), (dy, dx), order=0, mode="constant", cval=0) > 0
    # the structure's own signal on top of what is there at the new place
    moved = np.clip(removed + delta, 0, 1).astype(np.float32)
    return moved, removed, new_mask


def counterfactual_probe(
    predictor, samples: Sequence[ProbeSample], *, structures: Sequence[str] = COUNTERFACTUAL_REGIONS,
    seed: int = 0, shift_range: tuple[float, float] = (0.15, 0.22),
    progress: Callable[[int, int], None] | None = None,
) -> list[dict]:
    """Remove or move each structure and record what the model predicts there.

    For each case and structure, three images are predicted: the original, the
    structure removed, and the structure moved down by a fraction of the side drawn from
    ``shift_range`` (with the case's seed) over the lung field below it. Rows give, for
    each image and each place (``old``: where the structure is in the original;
    ``new``: where the moved copy lies), the fraction of the place's pixels labelled as
    the structure (``recall``), the mean probability of the structure there, and the
    region most often predicted there (``top_region``).

    Returns
    -------
    list of dict
        Rows ``case, structure, condition, place, recall, mean_prob, top_region,
        top_fraction``.
    """
    rng = np.random.default_rng(seed)
    rows: list[dict] = []
    for k, s in enumerate(samples):
        _check_size(predictor, s)
        side = s.image.shape[0]
        for st in structures:
            if st not in s.regions:
                raise ValueError(f"case {s.case_id}: no ground truth for {st}")
            j = s.regions.index(st)
            mask = s.truth[j]
            if not mask.any():
                continue
            dy = round(rng.uniform(*shift_range) * side)
            dy = min(dy, side - 1 - int(np.nonzero(mask)[0].max()))
            moved, removed, new_mask = move_structure(s.image, mask, dy=dy, dx=0)
            probs = _probs_of(predictor, np.stack([s.image, removed, moved]), s.regions)
            th = np.array([predictor.thresholds.get(r, 0.5) for r in s.regions]).reshape(1, -1, 1, 1)
            labels = probs >= th
            for c, cond in enumerate(("original", "removed", "moved")):
                places = {"old": mask, "new": new_mask & ~mask}
                for place, pm in places.items():
                    if not pm.any():
                        continue
                    counts = labels[c][:, pm].mean(axis=1)
                    top = int(np.argmax(counts))
                    rows.append(
                        {
                            "case": s.case_id,
                            "structure": st,
                            "condition": cond,
                            "place": place,
                            "shift_px": dy,
                            "recall": float(labels[c, j][pm].mean()),
                            "mean_prob": float(probs[c, j][pm].mean()),
                            "top_region": s.regions[top] if counts[top] > 0 else "background",
                            "top_fraction": float(counts[top]),
                        }
                    )
        if progress is not None:
            progress(k + 1, len(samples))
    return rows


# --------------------------------------------------------------------------- summaries


def summarize_geometric(rows: Sequence[dict]) -> dict[tuple[str, str], list[tuple[float, float, float, int]]]:
    """``(transform, region) -> [(amount, mean Jaccard, sd, n), ...]`` sorted by amount
    (cases where the structure left the image and nothing was predicted are skipped)."""
    acc: dict[tuple[str, str, float], list[float]] = {}
    for r in rows:
        if r["jaccard"] == r["jaccard"]:
            acc.setdefault((r["transform"], r["region"], float(r["amount"])), []).append(float(r["jaccard"]))
    out: dict[tuple[str, str], list] = {}
    for (t, reg, a), v in sorted(acc.items()):
        arr = np.asarray(v)
        out.setdefault((t, reg), []).append((a, float(arr.mean()), float(arr.std()), len(arr)))
    return out


def summarize_counterfactual(rows: Sequence[dict]) -> dict[tuple[str, str, str], tuple[float, float, int]]:
    """``(structure, condition, place) -> (mean recall, mean probability, n)``."""
    acc: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
    for r in rows:
        acc.setdefault((r["structure"], r["condition"], r["place"]), []).append((r["recall"], r["mean_prob"]))
    return {
        k: (float(np.mean([a for a, _ in v])), float(np.mean([b for _, b in v])), len(v))
        for k, v in sorted(acc.items())
    }


def translation_drop(rows: Sequence[dict], *, amount: float, regions=None) -> float:
    """Mean Jaccard at no shift minus the mean at shifts of ``±amount`` (both axes),
    over regions and cases: how much the model loses when the chest moves."""
    s = summarize_geometric(rows)
    base, moved = [], []
    for (t, reg), pts in s.items():
        if t not in ("translate_x", "translate_y") or (regions is not None and reg not in regions):
            continue
        for a, m, _sd, _n in pts:
            if a == 0:
                base.append(m)
            elif math.isclose(abs(a), amount):
                moved.append(m)
    if not base or not moved:
        raise ValueError(f"no translation of ±{amount} and 0 in these rows")
    return float(np.mean(base) - np.mean(moved))


# --------------------------------------------------------------------------- output

_TITLES = {
    "translate_x": ("horizontal shift (fraction of the side; + = image right)", "translate_x"),
    "translate_y": ("vertical shift (fraction of the side; + = down)", "translate_y"),
    "scale": ("zoom factor", "scale"),
    "rotate": ("rotation (degrees, + = clockwise)", "rotate"),
}


def _write_csv(rows: Sequence[dict], path: Path) -> Path:
    from .io import atomic_write

    if not rows:
        return path
    keys = list(rows[0])

    def write(fh):
        import io

        text = io.StringIO()
        w = csv.DictWriter(text, fieldnames=keys, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
        fh.write(text.getvalue().encode())

    return atomic_write(path, write)


def plot_geometric(rows: Sequence[dict], path: Path, *, title: str = "") -> Path:
    """One panel per transform: mean Jaccard (± sd band) against the amount, per region."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = summarize_geometric(rows)
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.2), sharey=True)
    for ax, t in zip(axes, ("translate_x", "translate_y", "scale", "rotate"), strict=True):
        for reg in REGIONS:
            pts = s.get((t, reg))
            if not pts:
                continue
            a = np.array([p[0] for p in pts])
            m = np.array([p[1] for p in pts])
            sd = np.array([p[2] for p in pts])
            ax.plot(a, m, "o-", color=COLORS[reg][:3], label=DISPLAY_NAMES[reg], ms=3)
            ax.fill_between(a, m - sd, np.minimum(1, m + sd), color=COLORS[reg][:3], alpha=0.12)
        ax.set_xlabel(_TITLES[t][0])
        ax.grid(alpha=0.3)
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("Jaccard (mean ± sd over cases)")
    axes[-1].legend(loc="lower right", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_counterfactual(rows: Sequence[dict], path: Path, *, title: str = "") -> Path:
    """Bars: fraction of the structure's pixels labelled as the structure, at its old and
    new place, for the original, removed and moved images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = summarize_counterfactual(rows)
    structures = sorted({k[0] for k in s})
    bars = [("original", "old"), ("removed", "old"), ("moved", "old"), ("original", "new"), ("moved", "new")]
    labels = [
        "original,\nits place", "removed,\nits place", "moved,\nold place",
        "original,\nnew place", "moved,\nnew place",
    ]
    fig, ax = plt.subplots(figsize=(9, 4))
    w = 0.8 / max(1, len(structures))
    for i, st in enumerate(structures):
        vals = [s.get((st, c, p), (np.nan,))[0] for c, p in bars]
        ax.bar(np.arange(len(bars)) + (i - (len(structures) - 1) / 2) * w, vals, w,
               color=COLORS[st][:3], label=DISPLAY_NAMES[st])
    ax.set_xticks(np.arange(len(bars)), labels, fontsize=8)
    ax.set_ylabel("fraction labelled as the structure")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _report_text(res: ProbeResult, files: dict[str, str]) -> str:
    lines = [
        "# Probe: position or anatomy?",
        "",
        f"Model `{res.model_id}`; {len(res.case_ids)} cases ({res.source}); seed {res.seed}.",
        "All figures at the model's input resolution, thresholds of the checkpoint.",
        "",
    ]
    s = summarize_geometric(res.geometric)
    acc: dict = {}
    for r in res.geometric:
        v = float(r.get("visible", 1.0))
        if v == v:
            acc.setdefault((r["transform"], r["region"], float(r["amount"])), []).append(v)
    vis = {k: float(np.mean(v)) for k, v in acc.items()}
    if s:
        lines += ["## Geometric probe: mean Jaccard", ""]
        for t in ("translate_x", "translate_y", "scale", "rotate"):
            amounts = sorted({p[0] for (tt, _r), pts in s.items() if tt == t for p in pts})
            if not amounts:
                continue
            lines.append(f"**{_TITLES[t][0]}**")
            lines.append("")
            lines.append("| region | " + " | ".join(f"{a:g}" for a in amounts) + " |")
            lines.append("|---|" + "---|" * len(amounts))
            for reg in REGIONS:
                pts = {p[0]: p[1] for p in s.get((t, reg), [])}
                if pts:
                    lines.append(
                        f"| {DISPLAY_NAMES[reg]} | "
                        + " | ".join(
                            f"{pts[a]:.3f}{' †' if vis.get((t, reg, a), 1.0) < 0.5 else ''}" if a in pts else ""
                            for a in amounts
                        )
                        + " |"
                    )
            lines.append("")
        if any(v < 0.5 for v in vis.values()):
            lines += ["† less than half of the structure is still inside the image (mean over cases).", ""]
        if "geometric_png" in files:
            lines += [f"![geometric probe]({files['geometric_png']})", ""]
    c = summarize_counterfactual(res.counterfactual)
    if c:
        lines += [
            "## Counterfactual probe: fraction of the structure's pixels labelled as it",
            "",
            "| structure | original | removed (its place) | moved: old place | moved: new place "
            "| original: new place |",
            "|---|---|---|---|---|---|",
        ]
        for st in sorted({k[0] for k in c}):
            def g(cond, place, st=st):
                v = c.get((st, cond, place))
                return f"{v[0]:.3f}" if v else ""

            lines.append(
                f"| {DISPLAY_NAMES[st]} | {g('original', 'old')} | {g('removed', 'old')} | "
                f"{g('moved', 'old')} | {g('moved', 'new')} | {g('original', 'new')} |"
            )
        lines += [
            "",
            "*removed*: the structure's pixels and a thin margin filled by biharmonic inpainting "
            "from its surroundings; *moved*: removed, and its own contrast added back lower down "
            "(*new place*). A model that segments what it sees labels little of a removed structure "
            "and follows a moved one.",
        ]
        lines.append("")
        if "counterfactual_png" in files:
            lines += [f"![counterfactual probe]({files['counterfactual_png']})", ""]
    return "\n".join(lines) + "\n"


def write_report(res: ProbeResult, out_dir, *, title: str = "") -> dict[str, Path]:
    """Write ``geometric.csv``, ``counterfactual.csv``, ``geometric.png``,
    ``counterfactual.png`` and ``report.md`` into ``out_dir``; return their paths."""
    from .io import atomic_write

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    if res.geometric:
        paths["geometric_csv"] = _write_csv(res.geometric, out / "geometric.csv")
        paths["geometric_png"] = plot_geometric(res.geometric, out / "geometric.png", title=title)
    if res.counterfactual:
        paths["counterfactual_csv"] = _write_csv(res.counterfactual, out / "counterfactual.csv")
        paths["counterfactual_png"] = plot_counterfactual(res.counterfactual, out / "counterfactual.png", title=title)
    text = _report_text(res, {k: v.name for k, v in paths.items() if k.endswith("png")})
    paths["report"] = atomic_write(out / "report.md", lambda fh: fh.write(text.encode()))
    return paths


def run_probe(
    predictor, samples: Sequence[ProbeSample], *, grid: ProbeGrid | None = None, seed: int = 0,
    geometric: bool = True, counterfactual: bool = True, source: str = "",
    progress: Callable[[str, int, int], None] | None = None,
) -> ProbeResult:
    """Both probes on the samples (see :func:`geometric_probe`, :func:`counterfactual_probe`)."""
    grid = grid or ProbeGrid()
    res = ProbeResult(case_ids=[s.case_id for s in samples], model_id=getattr(predictor, "model_id", ""),
                      grid=grid, seed=seed, source=source)
    if geometric:
        res.geometric = geometric_probe(
            predictor, samples, grid=grid,
            progress=(lambda i, n: progress("geometric", i, n)) if progress else None,
        )
    if counterfactual:
        res.counterfactual = counterfactual_probe(
            predictor, samples, seed=seed,
            progress=(lambda i, n: progress("counterfactual", i, n)) if progress else None,
        )
    return res
