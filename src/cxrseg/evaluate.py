"""``cxrseg evaluate``: Jaccard, Dice, contour distance and HD95 per case and region.

A checkpoint (or several, e.g. the study's per-region models) segments the cases of a
JSRT/SCR-layout folder with :func:`cxrseg.predict.get_predictor`; the probability maps
are brought to the grid of the ground-truth masks (1024 x 1024 for SCR: a 2048 x 2048
JSRT image's maps are area-averaged 2 x 2), thresholded with the checkpoint's thresholds
(:func:`cxrseg.predict.threshold`), optionally cleaned (:func:`cxrseg.postprocess.postprocess`)
and compared with the truth by :func:`cxrseg.metrics.all_metrics`:

* ``jaccard`` — SCR's "overlap" ``|A ∩ B| / |A ∪ B|``;
* ``dice``;
* ``mad_mm`` — the mean absolute contour distance;
* ``hd95_mm`` — the 95th percentile of the symmetric contour distances.

Distances are in mm on the mask grid: the image's pixel spacing scaled by the image/mask
size ratio (JSRT: 0.175 mm at 2048 -> 0.35 mm at 1024). An image without spacing (a PNG)
is assumed to be JSRT's 0.35 mm only when its masks are 1024 x 1024 and its id is a JSRT
id; otherwise distances are reported in pixels (the ``units`` column says which).

The published reference values are Jaccard overlaps per structure group, where the two
lungs form one object ("lung fields") and so do the two clavicles; the group rows here
are computed the same way (the union of the two masks), so they are comparable.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import METRICS, all_metrics
from .regions import DISPLAY_NAMES, GROUPS, REGIONS, parse_regions

__all__ = [
    "REFERENCES",
    "REFERENCE_SOURCES",
    "EvalResult",
    "compare_predictors",
    "evaluate_model",
    "evaluate_masks",
    "mask_spacing",
    "summarize",
    "JSRT_MASK_SPACING_MM",
]

#: SCR masks (1024 x 1024) of a JSRT image (2048 x 2048 at 0.175 mm).
JSRT_MASK_SPACING_MM = 0.35

#: Structure groups of the published results: group -> member regions.
EVAL_GROUPS: dict[str, tuple[str, ...]] = {
    "lungs": GROUPS["lungs"],
    "heart": ("heart",),
    "clavicles": GROUPS["clavicles"],
}

GROUP_NAMES = {"lungs": "lung fields", "heart": "heart", "clavicles": "clavicles"}

#: Published Jaccard overlaps on JSRT/SCR: short name -> group -> (mean, sd or None).
REFERENCES: dict[str, dict[str, tuple[float, float | None]]] = {
    "human observer": {
        "lungs": (0.946, 0.018),
        "heart": (0.878, 0.054),
        "clavicles": (0.896, 0.037),
    },
    "best 2006": {"lungs": (0.949, None), "heart": (0.860, None), "clavicles": (0.736, None)},
    "InvertedNet": {"lungs": (0.950, None), "heart": (0.882, None), "clavicles": (0.868, None)},
    "U-Net ImageNet": {"lungs": (0.961, None), "heart": (0.906, None), "clavicles": (0.855, None)},
}

#: Where each reference comes from.
REFERENCE_SOURCES: dict[str, str] = {
    "human observer": "second human observer, van Ginneken, Stegmann & Loog, Med Image Anal 2006",
    "best 2006": "best computer method of that study, van Ginneken et al. 2006",
    "InvertedNet": "InvertedNet, Novikov et al., IEEE TMI 2018",
    "U-Net ImageNet": "U-Net with an ImageNet-pretrained encoder, Frid-Adar et al. 2018",
}

CSV_COLUMNS = ("case", "region", "jaccard", "dice", "mad_mm", "hd95_mm", "units")


# ------------------------------------------------------------------------ mask metrics


def _to_grid(mask: np.ndarray, shape: tuple[int, int], what: str) -> np.ndarray:
    """A binary mask or probability map resampled to ``shape`` (same field of view):
    area averaging when shrinking, bilinear when enlarging. Returns float32."""
    a = np.asarray(mask, dtype=np.float32)
    if a.shape == tuple(shape):
        return a
    if a.shape[0] * shape[1] != a.shape[1] * shape[0]:
        raise ValueError(
            f"{what}: shape {a.shape} does not cover the same field of view as the masks {shape}"
        )
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(a))[None, None]
    if a.shape[0] >= shape[0]:
        y = F.interpolate(x, size=tuple(shape), mode="area")
    else:
        y = F.interpolate(x, size=tuple(shape), mode="bilinear", align_corners=False)
    return y[0, 0].numpy()


def evaluate_masks(
    pred: dict[str, np.ndarray],
    truth: dict[str, np.ndarray],
    spacing: tuple[float, float] | None = None,
    *,
    case: str | None = None,
    groups: bool = False,
) -> list[dict[str, Any]]:
    """Metrics of predicted against true region masks.

    Parameters
    ----------
    pred, truth : dict of str to ndarray
        Region -> 2-D binary mask (any spelling of the region names). Regions present in
        both are compared, in :data:`cxrseg.regions.REGIONS` order. A prediction of
        another size covering the same field of view (e.g. 2048 x 2048 against SCR's
        1024 x 1024) is resampled to the truth's grid (area fraction >= 0.5).
    spacing : (float, float) or None
        Pixel size ``(row, col)`` of the **truth's** grid in mm; ``None``: distances in
        pixels (``units == "px"``).
    case : str, optional
        Stored in each row's ``case``.
    groups : bool
        Also add rows for ``"lungs"`` and ``"clavicles"`` (the union of both sides, as
        the published results treat them) when both sides are present.

    Returns
    -------
    list of dict
        One row per region: ``case``, ``region``, ``jaccard``, ``dice``, ``mad_mm``,
        ``hd95_mm``, ``units``.
    """
    from .regions import canonical_region

    p = {canonical_region(k): v for k, v in pred.items()}
    t = {canonical_region(k): v for k, v in truth.items()}
    units = "mm" if spacing is not None else "px"
    sp = tuple(float(s) for s in spacing) if spacing is not None else (1.0, 1.0)
    if len(sp) != 2 or not all(s > 0 and math.isfinite(s) for s in sp):
        raise ValueError(f"spacing must be two positive numbers (row, col) in mm, got {spacing}")
    both = [r for r in REGIONS if r in p and r in t]
    tb: dict[str, np.ndarray] = {}
    pb: dict[str, np.ndarray] = {}
    for r in both:
        tm = np.asarray(t[r]).astype(bool)
        if tm.ndim != 2:
            raise ValueError(f"truth mask {r}: expected 2-D, got shape {tm.shape}")
        pm = np.asarray(p[r])
        if pm.shape != tm.shape:
            pm = _to_grid(pm.astype(bool), tm.shape, f"predicted mask {r}") >= 0.5
        tb[r], pb[r] = tm, pm.astype(bool)
    rows = []
    for r in both:
        rows.append(
            {"case": case, "region": r, **all_metrics(pb[r], tb[r], spacing=sp), "units": units}
        )
    if groups:
        for g in ("lungs", "clavicles"):
            members = EVAL_GROUPS[g]
            if all(m in tb for m in members):
                pu = np.logical_or.reduce([pb[m] for m in members])
                tu = np.logical_or.reduce([tb[m] for m in members])
                rows.append(
                    {"case": case, "region": g, **all_metrics(pu, tu, spacing=sp), "units": units}
                )
    return rows


def mask_spacing(
    image, mask_shape: tuple[int, int], case_id: str | None = None
) -> tuple[tuple[float, float] | None, str]:
    """Pixel spacing (mm) of a case's mask grid and how it was obtained.

    Parameters
    ----------
    image : cxrseg.io.CXRImage
        The case's image (its ``spacing`` and ``shape``).
    mask_shape : (int, int)
        Shape of the ground-truth masks.
    case_id : str, optional
        Used to recognise a JSRT case (``JPCLN001``...).

    Returns
    -------
    spacing : (float, float) or None
        ``None`` when unknown (distances then in pixels).
    source : str
        ``"image"``, ``"jsrt"`` (assumed 0.35 mm) or ``"unknown"``.
    """
    from .dataset import case_fold

    rows, cols = image.shape
    if image.spacing is not None:
        sr, sc = image.spacing
        return (float(sr) * rows / mask_shape[0], float(sc) * cols / mask_shape[1]), "image"
    if tuple(mask_shape) == (1024, 1024) and case_id is not None and case_fold(case_id) is not None:
        return (JSRT_MASK_SPACING_MM, JSRT_MASK_SPACING_MM), "jsrt"
    return None, "unknown"


# ---------------------------------------------------------------------------- summary


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return (math.nan, math.nan)
    return (float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0)


def summarize(rows: Sequence[dict]) -> dict[str, dict[str, tuple[float, float]]]:
    """Per region (or group): ``{metric: (mean, sd)}`` over the rows' cases.

    The sd is the sample standard deviation (0 for one case). Infinite distances (an
    empty prediction or truth) are left out of the distance means; count them with
    :meth:`EvalResult.n_infinite`.
    """
    out: dict[str, dict[str, tuple[float, float]]] = {}
    keys = [k for k in list(REGIONS) + list(EVAL_GROUPS) if any(r["region"] == k for r in rows)]
    for k in keys:
        sel = [r for r in rows if r["region"] == k]
        out[k] = {m: _mean_sd([r[m] for r in sel]) for m in METRICS}
    return out


@dataclass
class EvalResult:
    """Per-case metrics of an evaluation, with summaries and a printable table.

    Attributes
    ----------
    rows : list of dict
        One per case and region: ``case``, ``region``, ``jaccard``, ``dice``, ``mad_mm``,
        ``hd95_mm``, ``units`` (``"mm"`` or ``"px"``).
    group_rows : list of dict
        The same for ``"lungs"`` and ``"clavicles"`` (union of both sides).
    regions : tuple of str
    cases : list of str
        The evaluated case ids.
    case_source : str
        How the cases were chosen (e.g. "the checkpoint's validation cases").
    checkpoints : list of str
        The checkpoint file(s).
    model_ids : list of str
    thresholds : dict
        Region -> threshold used.
    postprocessed : bool
    notes : list of str
        Assumptions and skipped cases, for the reader.
    """

    rows: list[dict]
    group_rows: list[dict] = field(default_factory=list)
    regions: tuple[str, ...] = ()
    cases: list[str] = field(default_factory=list)
    case_source: str = ""
    checkpoints: list[str] = field(default_factory=list)
    model_ids: list[str] = field(default_factory=list)
    thresholds: dict[str, float] = field(default_factory=dict)
    postprocessed: bool = False
    notes: list[str] = field(default_factory=list)
    #: model id of each checkpoint's clavicle refinement network (``None``: not used)
    refine_ids: list = field(default_factory=list)

    @property
    def units(self) -> str:
        """``"mm"``, ``"px"`` or ``"mixed"`` (distance units of the rows)."""
        u = {r["units"] for r in self.rows}
        return u.pop() if len(u) == 1 else ("mixed" if u else "mm")

    def summary(self, *, groups: bool = False) -> dict[str, dict[str, tuple[float, float]]]:
        """``{region: {metric: (mean, sd)}}``; with ``groups`` also ``"lungs"``, ``"clavicles"``."""
        return summarize(list(self.rows) + (list(self.group_rows) if groups else []))

    def n_infinite(self, region: str) -> int:
        """Cases of ``region`` whose distances are infinite (one mask empty, the other not)."""
        return sum(
            1
            for r in self.rows + self.group_rows
            if r["region"] == region and math.isinf(r["hd95_mm"])
        )

    def to_csv(self, path: str | os.PathLike, *, groups: bool = False) -> Path:
        """Write the per-case rows (and the group rows with ``groups``) as CSV, atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=list(CSV_COLUMNS), extrasaction="ignore")
                w.writeheader()
                for r in self.rows + (self.group_rows if groups else []):
                    w.writerow(
                        {
                            k: (
                                f"{r[k]:.6f}"
                                if isinstance(r[k], float) and math.isfinite(r[k])
                                else r[k]
                            )
                            for k in CSV_COLUMNS
                        }
                    )
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return path

    def format_table(self) -> str:
        """Mean ± sd per region and per group, next to the published references."""
        s = self.summary(groups=True)
        unit = {"mm": "mm", "px": "px", "mixed": "mm|px"}[self.units]
        lines = []
        ck = ", ".join(Path(c).name for c in self.checkpoints) or "?"
        lines.append(
            f"Evaluation of {ck} (model {', '.join(self.model_ids) or '?'}) "
            f"on {len(self.cases)} case(s): "
            f"{self.case_source}"
        )
        refined = [r for r in self.refine_ids if r]
        lines.append(
            f"clavicles refined at native resolution (refinement network {', '.join(refined)})"
            if refined else "no clavicle refinement (the whole-film model alone)"
        )
        th = ", ".join(f"{r}={v:g}" for r, v in self.thresholds.items())
        lines.append(
            f"thresholds: {th}; post-processing: "
            f"{'largest component + fill holes' if self.postprocessed else 'off'}"
        )
        if self.units != "mm":
            lines.append(
                "NOTE: the pixel spacing of some images is unknown: "
                "their contour distances are in PIXELS."
            )
        lines.append("")

        def cell(m: str, key: str) -> str:
            mean, sd = s[key][m]
            if math.isnan(mean):
                return "-"
            f = "{:.3f} ± {:.3f}" if m in ("jaccard", "dice") else "{:.2f} ± {:.2f}"
            return f.format(mean, sd)

        head = ["region", "n", "Jaccard", "Dice", f"MAD ({unit})", f"HD95 ({unit})"]
        body = []
        for r in self.regions:
            if r not in s:
                continue
            n = sum(1 for x in self.rows if x["region"] == r)
            inf = self.n_infinite(r)
            body.append(
                [DISPLAY_NAMES[r], str(n)]
                + [cell(m, r) for m in METRICS]
                + ([f"({inf} empty: no distance)"] if inf else [])
            )
        lines += _columns(head, body)

        # groups next to the references
        gkeys = [g for g in EVAL_GROUPS if g in s]
        if gkeys:
            lines.append("")
            lines.append(
                "Jaccard overlap by structure (lungs and clavicles: both sides as one object) "
                "vs published results on JSRT/SCR:"
            )
            refs = list(REFERENCES)
            head = ["structure", "n", "this model"] + refs
            body = []
            for g in gkeys:
                n = sum(1 for x in self.rows + self.group_rows if x["region"] == g)
                row = [GROUP_NAMES[g], str(n), cell("jaccard", g)]
                for ref in refs:
                    mean, sd = REFERENCES[ref][g]
                    row.append(f"{mean:.3f}" + (f" ± {sd:.3f}" if sd is not None else ""))
                body.append(row)
            lines += _columns(head, body)
            lines += [f"  {k}: {v}" for k, v in REFERENCE_SOURCES.items()]
            lines.append(
                "  (published: 247 images, two-fold cross-validation on the SCR folds; "
                "a like-for-like "
                "comparison needs an evaluation on SCR folds too)"
            )
        if self.notes:
            lines.append("")
            lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _columns(head: list[str], body: list[list[str]]) -> list[str]:
    ncol = max(len(r) for r in [head] + body)
    rows = [r + [""] * (ncol - len(r)) for r in [head] + body]
    widths = [max(len(r[i]) for r in rows) for i in range(ncol)]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
    return [fmt(rows[0]), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows[1:]]


# ------------------------------------------------------------------------- model eval


def _expand_checkpoints(checkpoint) -> list[Path]:
    """Checkpoint files from a path, a folder, a folder of per-region folders, or a list."""
    from .model import checkpoint_in_folder, resolve_checkpoint_path

    items = list(checkpoint) if isinstance(checkpoint, (list, tuple)) else [checkpoint]
    out: list[Path] = []
    for item in items:
        p = Path(item).expanduser() if item is not None else None
        if p is not None and p.is_dir() and checkpoint_in_folder(p) is None:
            subs = [p / r for r in REGIONS if (p / r).is_dir()]
            if subs:  # per-region models (the study's baseline): OUT/<region>/best.safetensors
                out += [resolve_checkpoint_path(s) for s in subs]
                continue
        out.append(resolve_checkpoint_path(p))
    return out


def parse_case_list(spec: str | None) -> list[str] | None:
    """Case ids from a comma list or from a file with one id per line (``#`` starts a
    comment line); None for an empty ``spec``."""
    if not spec:
        return None
    p = Path(spec)
    if p.is_file():
        return [ln.strip() for ln in p.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    return [s.strip() for s in spec.split(",") if s.strip()]


def select_cases(index, spec, val_cases: list[str] | None) -> tuple[list, str]:
    """Cases named by ``spec``: None (the checkpoint's validation cases, else all),
    ``"val"``, ``"all"``, ``"fold1"``, ``"fold2"``, a comma list, a file of ids or a list."""

    def by_ids(ids, source):
        ids = list(ids)
        missing = [i for i in ids if i not in index]
        if missing:
            raise KeyError(
                f"{len(missing)} of the {source} are not in {index.root}: {missing[:5]}"
                f"{' ...' if len(missing) > 5 else ''}; "
                "pass --cases all (or a list) to choose others"
            )
        return index.subset(ids)

    if spec is None:
        if val_cases:
            return by_ids(val_cases, "checkpoint's validation cases"), (
                f"the checkpoint's {len(val_cases)} validation cases (from its metadata)"
            )
        return list(index.cases), "all cases (the checkpoint lists no validation cases)"
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key == "val":
            if not val_cases:
                raise ValueError("--cases val: the checkpoint's metadata lists no validation cases")
            return by_ids(val_cases, "checkpoint's validation cases"), (
                f"the checkpoint's {len(val_cases)} validation cases (from its metadata)"
            )
        if key == "all":
            return list(index.cases), "all cases"
        if key in ("fold1", "fold2"):
            k = int(key[-1])
            cases = index.fold(k)
            if not cases:
                raise ValueError(f"--cases {key}: no JSRT case of SCR fold {k} in {index.root}")
            return cases, f"SCR fold {k} ({'odd' if k == 1 else 'even'}-numbered cases)"
        ids = parse_case_list(spec) or []
        src = f"the cases listed in {spec}" if Path(spec).is_file() else "the cases given"
    else:
        ids = [str(s) for s in spec]
        src = "the cases given"
    if not ids:
        raise ValueError(f"no case selected by {spec!r}")
    return by_ids(ids, "cases given"), src


def evaluate_model(
    checkpoint,
    data_root: str | os.PathLike,
    *,
    cases=None,
    regions=None,
    device: str = "auto",
    progress: Callable[[int, int], None] | None = None,
    precision: str = "auto",
    postprocess: bool = False,
    thresholds: float | str | dict[str, float] | None = None,
    refine: bool | None = None,
) -> EvalResult:
    """Segment a dataset's cases with a model and measure the result.

    Parameters
    ----------
    checkpoint : path-like or list of path-like
        A checkpoint, a training output folder, a folder of per-region folders
        (``OUT/<region>/best.safetensors``, as ``cxrseg train --per-region`` writes) or a
        list of these; each region must come from one checkpoint only.
    data_root : path-like
        JSRT/SCR-layout folder with ground-truth masks.
    cases : None, str or list of str
        ``None``: the checkpoint's validation cases (``val_cases`` in its metadata) when
        present, else all; ``"val"``, ``"all"``, ``"fold1"``, ``"fold2"``, a comma list, a
        file with one id per line, or a list of ids.
    regions : optional
        Regions to evaluate (default: all the model(s) predict).
    device, precision : str
        See :class:`cxrseg.predict.Predictor`.
    progress : callable, optional
        ``progress(done, total)`` after each case.
    postprocess : bool
        Keep each mask's largest component and fill holes before measuring.
    thresholds : float, str or dict, optional
        Override the checkpoints' thresholds: one value, region -> value, or a string as
        :func:`cxrseg.predict.parse_thresholds` reads (regions not named keep their own).
    refine : bool, optional
        The clavicles' native-resolution refinement (:class:`cxrseg.predict.Predictor`'s
        ``refine``: by default used when the checkpoint has one).

    Returns
    -------
    EvalResult
    """
    from .dataset import DatasetIndex
    from .predict import get_predictor, parse_thresholds

    paths = _expand_checkpoints(checkpoint)
    predictors = [get_predictor(p, device=device, precision=precision, refine=refine) for p in paths]
    owner = _region_owners(predictors)
    wanted = tuple(r for r in REGIONS if r in owner) if regions is None else parse_regions(regions)
    missing = [r for r in wanted if r not in owner]
    if missing:
        raise ValueError(
            f"the model(s) do not predict {', '.join(missing)}; they predict {', '.join(owner)}"
        )
    th = {r: float(owner[r].thresholds.get(r, 0.5)) for r in wanted}
    if thresholds is not None:
        th = parse_thresholds(thresholds, wanted, default=th)

    vals = [tuple(pr.metadata.get("val_cases") or ()) for pr in predictors]
    val_cases = list(vals[0]) if vals and all(v == vals[0] for v in vals) else None
    if cases is None and len({v for v in vals}) > 1:
        raise ValueError(
            "the checkpoints were validated on different cases; choose the cases with --cases"
        )

    index = DatasetIndex(data_root)
    chosen, source = select_cases(index, cases, val_cases)
    todo, notes = _cases_with_masks(chosen, wanted, data_root)
    spacing_src: dict[str, int] = {}
    rows: list[dict] = []
    group_rows: list[dict] = []
    for i, (case, regs) in enumerate(todo, 1):
        out, src = _evaluate_case(case, regs, predictors, owner, th, postprocess=postprocess)
        spacing_src[src] = spacing_src.get(src, 0) + 1
        rows += [r for r in out if r["region"] in REGIONS]
        group_rows += [r for r in out if r["region"] not in REGIONS]
        if progress:
            progress(i, len(todo))
    notes += _spacing_notes(spacing_src)
    return EvalResult(
        rows=rows,
        group_rows=group_rows,
        regions=wanted,
        cases=[c.case_id for c, _ in todo],
        case_source=source,
        checkpoints=[str(p) for p in paths],
        model_ids=[pr.model_id for pr in predictors],
        refine_ids=[getattr(pr, "refine_id", None) for pr in predictors],
        thresholds=th,
        postprocessed=bool(postprocess),
        notes=notes,
    )


def _region_owners(predictors) -> dict[str, Any]:
    """region -> the predictor that predicts it; a region of two checkpoints is refused."""
    owner: dict[str, Any] = {}
    for pr in predictors:
        for r in pr.regions:
            if r in owner:
                raise ValueError(
                    f"region {r} is predicted by both {owner[r].path.name} and {pr.path.name}; "
                    "pass one checkpoint per region"
                )
            owner[r] = pr
    return owner


def _cases_with_masks(chosen, wanted, data_root) -> tuple[list, list[str]]:
    """The chosen cases with masks of some wanted regions, each with those regions, and
    notes on the cases skipped or measured on fewer regions."""
    notes: list[str] = []
    todo = []
    partial = 0
    for c in chosen:
        regs = tuple(r for r in wanted if r in c.mask_paths)
        if not regs:
            continue
        partial += len(regs) < len(wanted)
        todo.append((c, regs))
    skipped = len(chosen) - len(todo)
    if skipped:
        notes.append(f"{skipped} case(s) without masks for {', '.join(wanted)} skipped")
    if partial:
        notes.append(
            f"{partial} case(s) have masks for only some of the regions; evaluated on those"
        )
    if not todo:
        raise ValueError(
            f"{data_root}: none of the {len(chosen)} selected case(s) "
            f"has masks for {', '.join(wanted)}"
        )
    return todo, notes


def _evaluate_case(case, regs, predictors, owner, th, *, postprocess: bool) -> tuple[list[dict], str]:
    """The rows of :func:`evaluate_masks` for one case, and where its pixel spacing came from."""
    from .predict import threshold

    img = case.load_image()
    truth = case.load_masks(regs)
    shape = next(iter(truth.values())).shape
    probs: dict[str, np.ndarray] = {}
    for pr in predictors:
        mine = [r for r in regs if owner[r] is pr]
        if mine:
            probs.update(pr.predict(img.data, regions=mine))
    probs = {r: _to_grid(probs[r], shape, f"case {case.case_id}: {r} prediction") for r in regs}
    masks = threshold(probs, th)
    if postprocess:
        from .postprocess import postprocess as clean

        masks = clean(masks)
    spacing, src = mask_spacing(img, shape, case.case_id)
    return evaluate_masks(masks, truth, spacing, case=case.case_id, groups=True), src


def _spacing_notes(spacing_src: dict[str, int]) -> list[str]:
    """Notes on the images whose contour distances rest on an assumed or no pixel spacing."""
    notes = []
    if spacing_src.get("jsrt"):
        notes.append(
            f"{spacing_src['jsrt']} image(s) without pixel spacing: "
            f"JSRT's {JSRT_MASK_SPACING_MM} mm "
            "assumed for their 1024 x 1024 masks"
        )
    if spacing_src.get("unknown"):
        notes.append(
            f"{spacing_src['unknown']} image(s) without pixel spacing (not JSRT 1024 x 1024): "
            "their contour distances are in pixels"
        )
    return notes


def _prob_to_grid(prob: np.ndarray, shape) -> np.ndarray:
    """A probability map resized to a mask grid (area down, bilinear up)."""
    if prob.shape == tuple(shape):
        return prob
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(prob, dtype=np.float32))[None, None]
    mode = "area" if prob.shape[0] >= shape[0] else "bilinear"
    kw = {} if mode == "area" else {"align_corners": False}
    return F.interpolate(t, size=tuple(shape), mode=mode, **kw)[0, 0].numpy()


def compare_predictors(reference, other, cases, *, progress: Callable[[int], None] | None = None) -> dict:
    """How far ``other``'s masks are from ``reference``'s (two predictors of the same
    checkpoint, e.g. fp32 and a lower precision) on ``cases`` with ground truth.

    Masks are thresholded at the reference's thresholds on the masks' grid, without
    post-processing. Per region: the reference's mean Jaccard against the truth, the mean
    and largest change of that Jaccard under ``other``, and the Jaccard between the two
    predictions (mean, min). ``max_abs_mean_delta`` is the largest mean change."""
    from .metrics import jaccard
    from .predict import threshold

    if not cases:
        raise ValueError("no case to compare on")
    regs = list(reference.regions)
    th = reference.thresholds
    j_ref: dict[str, list[float]] = {r: [] for r in regs}
    delta: dict[str, list[float]] = {r: [] for r in regs}
    agree: dict[str, list[float]] = {r: [] for r in regs}
    for i, c in enumerate(cases, start=1):
        img = c.load_image().data
        truth = c.load_masks(regs)
        a = reference.predict(img)
        b = other.predict(img)
        for r in regs:
            shape = truth[r].shape
            ma = threshold({r: _prob_to_grid(a[r], shape)}, th)[r]
            mb = threshold({r: _prob_to_grid(b[r], shape)}, th)[r]
            ja, jb = jaccard(ma, truth[r]), jaccard(mb, truth[r])
            j_ref[r].append(ja)
            delta[r].append(jb - ja)
            agree[r].append(jaccard(ma, mb))
        if progress is not None:
            progress(i)
    regions = {
        r: {
            "jaccard_reference": float(np.mean(j_ref[r])),
            "delta_mean": float(np.mean(delta[r])),
            "delta_max_abs": float(np.max(np.abs(delta[r]))),
            "agreement_mean": float(np.mean(agree[r])),
            "agreement_min": float(np.min(agree[r])),
        }
        for r in regs
    }
    return {
        "cases": [c.case_id for c in cases],
        "regions": regions,
        "max_abs_mean_delta": max(abs(e["delta_mean"]) for e in regions.values()),
    }
