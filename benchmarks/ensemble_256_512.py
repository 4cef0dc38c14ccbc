"""Would averaging the shipped 512 px and 256 px models help? Jaccard per region on the
validation cases, at the masks' native resolution, for each model alone and two averages.

    python benchmarks/ensemble_256_512.py $CXRSEG_DATA [--cases val] [--weight 0.7]

Both models run in fp32 without the clavicle refinement (the whole-film maps are compared);
the maps are averaged before the 0.5 threshold.
"""

from __future__ import annotations

import argparse

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", help="JSRT/SCR-layout folder with masks")
    ap.add_argument("--cases", default="val", help="val (the 512 px model's validation cases), all, or ids")
    ap.add_argument("--weight", type=float, default=0.7, help="the 512 px model's weight in the weighted average")
    args = ap.parse_args(argv)

    from cxrseg.dataset import DatasetIndex
    from cxrseg.evaluate import select_cases
    from cxrseg.model import default_checkpoint_path, read_metadata, tier_checkpoint_path
    from cxrseg.predict import Predictor, as_unit_image

    index = DatasetIndex(args.data)
    chosen, source = select_cases(index, args.cases, read_metadata(default_checkpoint_path()).get("val_cases"))
    p512 = Predictor(None, device="cpu", precision="fp32", refine=False)
    p256 = Predictor(tier_checkpoint_path("fast"), device="cpu", precision="fp32", refine=False)
    regs = p512.regions
    w = float(args.weight)
    names = ("512 px", "256 px", "mean", f"{w:g}/{1 - w:g}")
    scores = {n: {r: [] for r in regs} for n in names}
    for k, case in enumerate(chosen):
        img = as_unit_image(case.load_image().data)
        truth = case.load_masks(regs, shape=img.shape)
        a, b = p512.predict(img), p256.predict(img)
        for r in regs:
            maps = (a[r], b[r], (a[r] + b[r]) / 2, w * a[r] + (1 - w) * b[r])
            for n, p in zip(names, maps, strict=True):
                m, g = p >= 0.5, truth[r]
                union = np.logical_or(m, g).sum()
                scores[n][r].append(1.0 if union == 0 else np.logical_and(m, g).sum() / union)
        print(f"\r{k + 1}/{len(chosen)}", end="", flush=True)
    print(f"\n{len(chosen)} cases ({source}); mean Jaccard")
    print(f"{'region':<16s}" + "".join(f"{n:>10s}" for n in names))
    for r in regs:
        print(f"{r:<16s}" + "".join(f"{np.mean(scores[n][r]):10.4f}" for n in names))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
