"""Where a model's clavicle masks spill over: false positives below the clavicle.

The JSRT/SCR U-Net study reported that its left-clavicle model took the second rib and its
costal cartilage for the clavicle. This script measures that failure on the validation
cases: for each model and case, the predicted clavicle area (at the reference masks' grid)
that lies outside the reference *and below it* (more than ``--margin`` mm under the
reference's lower edge in the same column, where the ribs run), and the number of
predicted components that do not touch the reference at all.

Usage::

    python benchmarks/clavicle_false_positives.py $CXRSEG_DATA --cases val_cases.txt \\
        --model shipped --model RUNS/per_region/left_clavicle/best.safetensors [--region left_clavicle]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from cxrseg.dataset import DatasetIndex  # noqa: E402
from cxrseg.evaluate import mask_spacing  # noqa: E402
from cxrseg.io import resize_mask_nearest  # noqa: E402
from cxrseg.predict import Predictor  # noqa: E402


def below_area(pred: np.ndarray, truth: np.ndarray, margin_px: int) -> int:
    """Pixels of ``pred`` outside ``truth`` and more than ``margin_px`` below its lowest
    pixel in the same column (columns the reference does not cover are not counted)."""
    rows = np.arange(truth.shape[0])[:, None]
    has = truth.any(axis=0)
    low = np.where(has, truth.shape[0] - 1 - np.argmax(truth[::-1], axis=0), -1)
    under = (rows > low[None, :] + margin_px) & has[None, :]
    return int((pred & ~truth & under).sum())


def stray_components(pred: np.ndarray, truth: np.ndarray) -> int:
    from scipy import ndimage

    lab, n = ndimage.label(pred)
    if not n:
        return 0
    touching = set(np.unique(lab[truth & (lab > 0)]).tolist())
    return sum(1 for k in range(1, n + 1) if k not in touching)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--cases", required=True, help="file with one case id per line")
    ap.add_argument("--model", action="append", required=True, help="'shipped' or a checkpoint (repeatable)")
    ap.add_argument("--region", default="left_clavicle")
    ap.add_argument("--margin", type=float, default=3.0, help="mm under the reference's lower edge")
    ap.add_argument("--min-area", type=float, default=20.0, help="mm² that count a case as spilling")
    args = ap.parse_args(argv)

    index = DatasetIndex(args.data)
    cases = [c for c in Path(args.cases).read_text().split() if c]
    for spec in args.model:
        pred = Predictor(None if spec == "shipped" else spec, device="cpu")
        th = pred.thresholds.get(args.region, 0.5)
        areas, strays, worst = [], 0, []
        for c in cases:
            case = index[c]
            img = case.load_image()
            truth = case.load_masks([args.region])[args.region].astype(bool)
            p = pred.predict(img.data, regions=[args.region])[args.region] >= th
            p = resize_mask_nearest(p, truth.shape) if p.shape != truth.shape else p
            sp, _src = mask_spacing(img, truth.shape, c)
            if sp is None:
                raise SystemExit(f"{c}: pixel spacing unknown; the areas need it")
            mm = float(sp[0])
            a = below_area(p, truth, int(round(args.margin / mm))) * mm * mm
            areas.append(a)
            s = stray_components(p, truth)
            strays += s > 0
            worst.append((a, c))
        areas = np.array(areas)
        worst.sort(reverse=True)
        print(f"{spec} ({pred.model_id}), {args.region}, {len(cases)} cases:")
        print(f"  area below the reference (> {args.margin:g} mm under its edge): median {np.median(areas):.1f} mm², "
              f"mean {areas.mean():.1f} mm²; cases with >= {args.min_area:g} mm²: "
              f"{int((areas >= args.min_area).sum())}")
        print(f"  cases with a predicted component that does not touch the reference: {strays}")
        print("  most below: " + ", ".join(f"{c} {a:.0f} mm²" for a, c in worst[:5]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
