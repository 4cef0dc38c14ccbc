"""Does the no-ground-truth quality estimate still hold on refined clavicles?

    python benchmarks/quality_refine_check.py $CXRSEG_DATA [--mode quick|full]

On the shipped model's validation cases: the estimated against the true Jaccard of each
clavicle (Spearman correlation, mean estimate, mean truth, mean absolute error), with the
clavicle refinement off and on. The estimators were fitted on whole-film maps.
"""

from __future__ import annotations

import argparse

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", help="JSRT/SCR-layout folder with masks")
    ap.add_argument("--mode", choices=("quick", "full"), default="full")
    args = ap.parse_args(argv)

    from scipy.stats import spearmanr

    from cxrseg.dataset import DatasetIndex
    from cxrseg.model import default_checkpoint_path, read_metadata
    from cxrseg.predict import Predictor, as_unit_image
    from cxrseg.quality import assess

    index = DatasetIndex(args.data)
    val = read_metadata(default_checkpoint_path())["val_cases"]
    regs = ("left_clavicle", "right_clavicle")
    for refine in (False, True):
        p = Predictor(None, device="cpu", refine=refine)
        est: dict = {r: [] for r in regs}
        true: dict = {r: [] for r in regs}
        for cid in val:
            case = index[cid]
            img = as_unit_image(case.load_image().data)
            truth = case.load_masks(regs, shape=img.shape)
            probs = p.predict(img)
            rep = assess(img, probs, predictor=p, mode=args.mode)
            for r in regs:
                m = probs[r] >= p.thresholds[r]
                true[r].append(np.logical_and(m, truth[r]).sum() / max(1, np.logical_or(m, truth[r]).sum()))
                est[r].append(rep.regions[r].estimated_jaccard)
        for r in regs:
            e, t = np.array(est[r]), np.array(true[r])
            print(f"{'refined' if refine else 'alone':8s} {r:15s} Spearman {spearmanr(e, t)[0]:.3f}  "
                  f"mean estimate {e.mean():.4f}  mean truth {t.mean():.4f}  MAE {np.abs(e - t).mean():.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
