"""The per-epoch progression figure of a tracked case, from ``cxrseg train --track-case`` runs.

One row per region, one column per chosen epoch: the case's sigmoid map after that epoch
(black 0, white 1), captioned with its Jaccard against the case's reference mask at the
map's resolution. An optional last column holds another model's map of the same case (for
instance the shipped multi-label model), resized to the same grid.

The maps of a good model are close copies of the case's reference masks, and the radiograph
and its masks are licensed data that may not be redistributed: the montage is for looking at
locally (``--with-image`` draws the case under the maps and the reference outline in red).
``--curves`` draws what can be published: each region's Jaccard on the tracked case and its
mean validation IoU (the runs' ``history.json``), epoch by epoch, as line charts.

Usage::

    python benchmarks/progression_figure.py RUNS/per_region $CXRSEG_DATA \\
        --epochs 1,2,3,5,10,20,30,40 --compare shipped --out progression.png \\
        --curves progression-curves.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from cxrseg.dataset import DatasetIndex  # noqa: E402
from cxrseg.regions import DISPLAY_NAMES, REGIONS  # noqa: E402


def region_runs(folder: Path) -> dict[str, dict]:
    """``{region: {"epochs", "probs" (E, S, S), "image", "case_id"}}`` of a per-region
    output folder (or of one run folder with several regions)."""
    out: dict[str, dict] = {}
    files = [folder / "progression.npz"] if (folder / "progression.npz").is_file() else [
        folder / r / "progression.npz" for r in REGIONS if (folder / r / "progression.npz").is_file()
    ]
    if not files:
        raise SystemExit(f"{folder}: no progression.npz (train with --track-case CASE)")
    for f in files:
        with np.load(f, allow_pickle=False) as z:
            regions = [str(r) for r in np.atleast_1d(z["regions"])]
            for j, r in enumerate(regions):
                out[r] = {
                    "epochs": [int(e) for e in z["epochs"]],
                    "probs": np.asarray(z["probs"][:, j], np.float32),
                    "image": np.asarray(z["image"], np.float32),
                    "case_id": str(z["case_id"]),
                }
    ids = {v["case_id"] for v in out.values()}
    if len(ids) != 1:
        raise SystemExit(f"{folder}: the runs tracked different cases {sorted(ids)}")
    return out


def truth_at(case, regions, size: int) -> dict[str, np.ndarray]:
    """The case's reference masks pre-processed like training targets, at ``size``."""
    import torch

    from cxrseg.transforms import pad_to_square, resize_area

    out = {}
    for r, m in case.load_masks(regions).items():
        sq, _ = pad_to_square(np.asarray(m, np.float32), value=0.0)
        out[r] = resize_area(torch.from_numpy(np.ascontiguousarray(sq)), size).numpy() >= 0.5
    return out


def model_maps(checkpoint: str, case, regions, size: int) -> dict[str, np.ndarray]:
    """Another model's sigmoid maps of the case, padded and resized to the runs' grid."""
    import torch

    from cxrseg.predict import Predictor
    from cxrseg.transforms import pad_to_square, resize_area

    ckpt = None if checkpoint == "shipped" else checkpoint
    probs = Predictor(ckpt, device="cpu").predict(case.load_image().data, regions=regions)
    out = {}
    for r, p in probs.items():
        sq, _ = pad_to_square(np.asarray(p, np.float32), value=0.0)
        out[r] = resize_area(torch.from_numpy(np.ascontiguousarray(sq)), size).numpy()
    return out


def jaccard(p: np.ndarray, t: np.ndarray) -> float:
    m = p >= 0.5
    union = np.logical_or(m, t).sum()
    return float(np.logical_and(m, t).sum() / union) if union else 1.0


def draw(runs, truth, epochs, compare, compare_label, out: Path, with_image: bool, tile: int) -> list[str]:
    """Write the figure; returns the caption lines (one per region) for the text."""
    from PIL import Image, ImageDraw

    regions = [r for r in REGIONS if r in runs]
    cols = len(epochs) + (1 if compare else 0)
    head, label_w, gap = 22, 150, 4
    step = tile + gap
    canvas = Image.new("RGB", (label_w + cols * step, head + len(regions) * (tile + 16)), (255, 255, 255))
    d = ImageDraw.Draw(canvas)
    titles = [f"epoch {e}" for e in epochs] + ([compare_label] if compare else [])
    for c, t in enumerate(titles):
        d.text((label_w + c * step + 4, 5), t, fill=(0, 0, 0))
    lines = []
    for i, r in enumerate(regions):
        run = runs[r]
        y = head + i * (tile + 16)
        d.text((4, y + tile // 2 - 6), DISPLAY_NAMES[r], fill=(0, 0, 0))
        cells = []
        for e in epochs:
            if e in run["epochs"]:
                cells.append(run["probs"][run["epochs"].index(e)])
            else:
                cells.append(None)
        if compare:
            cells.append(compare.get(r))
        row = []
        for c, p in enumerate(cells):
            x = label_w + c * step
            if p is None:
                d.text((x + 8, y + tile // 2 - 6), f"(stopped at epoch {run['epochs'][-1]})", fill=(120, 120, 120))
                continue
            rgb = np.repeat(p[..., None], 3, axis=2)
            if with_image:
                img = run["image"][..., None]
                rgb = 0.5 * img + 0.5 * rgb
            if with_image and r in truth:
                t = truth[r]
                edge = t & ~(np.roll(t, 1, 0) & np.roll(t, -1, 0) & np.roll(t, 1, 1) & np.roll(t, -1, 1))
                rgb[edge] = (1.0, 0.0, 0.0)
            im = Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8)).resize((tile, tile), Image.BILINEAR)
            canvas.paste(im, (x, y))
            j = jaccard(p, truth[r]) if r in truth else float("nan")
            row.append(f"{titles[c]}: {j:.3f}")
            d.text((x + 4, y + tile + 2), f"J {j:.3f}", fill=(0, 0, 0))
        lines.append(f"{DISPLAY_NAMES[r]}: " + ", ".join(row))
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return lines


def curves(runs, truth, folder: Path, compare, compare_label, out: Path) -> None:
    """Line charts: the tracked case's Jaccard per epoch, and the validation IoU per epoch."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cxrseg.regions import COLORS

    case_id = next(iter(runs.values()))["case_id"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for r in [r for r in REGIONS if r in runs]:
        run, colour = runs[r], tuple(COLORS[r][:3])
        j = [jaccard(p, truth[r]) for p in run["probs"]]
        axes[0].plot(run["epochs"], j, "-o", ms=3, color=colour, label=DISPLAY_NAMES[r])
        if compare and r in compare:
            axes[0].axhline(jaccard(compare[r], truth[r]), color=colour, ls=":", lw=1)
        hist = folder / r / "history.json" if (folder / r).is_dir() else folder / "history.json"
        if hist.is_file():
            h = json.loads(hist.read_text())
            axes[1].plot([e["epoch"] for e in h], [e["val_iou"][r] for e in h], "-o", ms=3, color=colour,
                         label=DISPLAY_NAMES[r])
    axes[0].set_title(f"{case_id}: Jaccard of the sigmoid map (> 0.5) per epoch" +
                      (f"\n(dotted: {compare_label})" if compare else ""), fontsize=9)
    axes[1].set_title("validation cases: mean IoU per epoch (training's own check)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("Jaccard / IoU at the maps' grid")
    axes[1].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", type=Path, help="a per-region training output (or one run folder)")
    ap.add_argument("data", type=Path, help="the dataset holding the tracked case (for its reference masks)")
    ap.add_argument("--epochs", default="1,2,3,5,10", help="comma list of epochs to show")
    ap.add_argument("--compare", default=None, help="a checkpoint, or 'shipped', drawn in a last column")
    ap.add_argument("--compare-label", default="shipped multi-label")
    ap.add_argument("--with-image", action="store_true",
                    help="draw the radiograph and the reference outline (licensed data: local use only)")
    ap.add_argument("--tile", type=int, default=192)
    ap.add_argument("--out", type=Path, default=None, help="the montage of sigmoid maps (local use)")
    ap.add_argument("--curves", type=Path, default=None, help="the line charts (publishable)")
    args = ap.parse_args(argv)

    runs = region_runs(args.runs)
    case_id = next(iter(runs.values()))["case_id"]
    size = next(iter(runs.values()))["image"].shape[0]
    case = DatasetIndex(args.data).get(case_id)
    if case is None:
        raise SystemExit(f"{args.data}: no case {case_id}")
    truth = truth_at(case, list(runs), size)
    compare = model_maps(args.compare, case, list(runs), size) if args.compare else None
    epochs = [int(e) for e in args.epochs.split(",") if e.strip()]
    if args.out is None and args.curves is None:
        raise SystemExit("nothing to draw: give --out and/or --curves")
    if args.out is not None:
        lines = draw(runs, truth, epochs, compare, args.compare_label, args.out, args.with_image, args.tile)
        print(f"{case_id}, Jaccard of each map (thresholded at 0.5) with the reference at {size} px:")
        print("\n".join(lines))
        print(f"wrote {args.out}")
    if args.curves is not None:
        curves(runs, truth, args.runs, compare, args.compare_label, args.curves)
        print(f"wrote {args.curves}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
