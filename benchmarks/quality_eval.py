"""Fit and judge the no-ground-truth quality estimate (``cxrseg.quality``).

    python benchmarks/quality_folds.py MODEL DATA_ROOT FOLDS     # once: k-fold models
    python benchmarks/quality_eval.py MODEL DATA_ROOT --folds FOLDS --work WORK [--write]

1. Reference statistics (areas, ratios, positions) from the ground-truth masks of the
   development cases (all cases except the model's ``val_cases``).
2. Out-of-fold features: each development case is predicted by the fold model that did
   not train on it (``quality_folds.py``); its signals and true Jaccard per region are the
   rows the estimators (quick and full mode) are fitted on.
3. The shipped model on its validation cases (never trained on, never fitted on): the
   Spearman correlation between estimated and true Jaccard per region, and how many of
   the 5 truly worst cases per region are among the 10 estimated worst.
4. ``--write`` stores the statistics and the estimators in ``<MODEL>.quality.json``.

Per-case features are cached as JSON in ``WORK`` (delete it to recompute).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

#: signals tried on top of :data:`cxrseg.quality.FEATURES` (chosen by development CV)
CANDIDATE_EXTRAS: dict[str, tuple[tuple[str, ...], ...]] = {
    "quick": ((), ("self_gap",)),
    "full": ((), ("self_gap",), ("tta_worst",), ("self_gap", "tta_worst")),
}


def _case_rows(pred, case, params, regions) -> list[dict]:
    from cxrseg import quality as Q
    from cxrseg.io import read_image, read_mask
    from cxrseg.metrics import jaccard

    image = read_image(case.image_path).data
    probs = pred.predict(image)
    rows = []
    # the full report holds the quick mode's features too
    rep = Q.assess(image, probs, predictor=pred, mode="full", params=params)
    for r in regions:
        truth = read_mask(case.mask_paths[r], shape=image.shape)
        row = {"case": case.case_id, "region": r,
               "jaccard": jaccard(probs[r] >= pred.thresholds.get(r, 0.5), truth)}
        row.update(rep.regions[r].features)
        rows.append(row)
    return rows


def _features(path: Path, pred, cases, params, regions) -> list[dict]:
    done = json.loads(path.read_text()) if path.is_file() else []
    have = {r["case"] for r in done}
    for i, case in enumerate(cases):
        if case.case_id in have:
            continue
        done += _case_rows(pred, case, params, regions)
        path.write_text(json.dumps(done))
        print(f"  {path.stem}: {i + 1}/{len(cases)}", flush=True)
    ids = {c.case_id for c in cases}
    return [r for r in done if r["case"] in ids]


def judge(rows_val: list[dict], params: dict, mode: str, regions) -> dict:
    """Spearman and worst-5-in-estimated-worst-10 per region on held-out rows."""
    from scipy.stats import spearmanr

    from cxrseg.quality import estimate_jaccard

    out = {}
    for r in regions:
        rs = [x for x in rows_val if x["region"] == r]
        true = np.array([x["jaccard"] for x in rs])
        est = np.array([estimate_jaccard(x, params, r) for x in rs])
        rho = float(spearmanr(est, true).statistic)
        worst5 = set(np.argsort(true, kind="stable")[:5])
        est10 = set(np.argsort(est, kind="stable")[:10])
        out[r] = {"spearman": rho, "worst5_in_est10": len(worst5 & est10),
                  "mae": float(np.mean(np.abs(est - true))), "n": len(rs)}
    return out


def loo_on_validation(rows_val: list[dict], mode: str, regions) -> dict:
    """For comparison only: leave-one-case-out fit on the validation cases themselves."""
    from scipy.stats import spearmanr

    from cxrseg.quality import estimate_jaccard, fit_estimator

    out = {}
    for r in regions:
        rs = [x for x in rows_val if x["region"] == r]
        est = []
        for i in range(len(rs)):
            p = fit_estimator(rs[:i] + rs[i + 1:], mode=mode)
            est.append(estimate_jaccard(rs[i], p, r))
        true = np.array([x["jaccard"] for x in rs])
        est = np.array(est)
        worst5 = set(np.argsort(true, kind="stable")[:5])
        est10 = set(np.argsort(est, kind="stable")[:10])
        out[r] = {"spearman": float(spearmanr(est, true).statistic), "worst5_in_est10": len(worst5 & est10)}
    return out


def development_cv(rows: list[dict], mode: str, regions, *, pooled: bool, features=None, k: int = 5) -> dict:
    """Spearman per region of a k-fold (by case) cross-validation within the out-of-fold
    rows: how the estimator is chosen without looking at the validation cases."""
    from scipy.stats import spearmanr

    from cxrseg.quality import estimate_jaccard, fit_estimator

    cases = sorted({x["case"] for x in rows})
    perm = np.random.default_rng(0).permutation(len(cases))
    est = {}
    for f in range(k):
        test = {cases[i] for i in perm[f::k]}
        p = fit_estimator([x for x in rows if x["case"] not in test], mode=mode, pooled=pooled,
                          features=features)
        for x in rows:
            if x["case"] in test:
                est[(x["case"], x["region"])] = estimate_jaccard(x, p, x["region"])
    out = {}
    for r in regions:
        rs = [x for x in rows if x["region"] == r]
        out[r] = float(spearmanr([est[(x["case"], r)] for x in rs], [x["jaccard"] for x in rs]).statistic)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("data")
    p.add_argument("--folds", type=Path, required=True, help="output folder of quality_folds.py")
    p.add_argument("--work", type=Path, required=True, help="cache folder for per-case features")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--write", action="store_true", help="write <MODEL>.quality.json")
    args = p.parse_args(argv)

    import torch

    from cxrseg import quality as Q
    from cxrseg.dataset import DatasetIndex
    from cxrseg.io import read_mask
    from cxrseg.model import read_metadata
    from cxrseg.predict import Predictor

    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    meta = read_metadata(args.model)
    val_ids = sorted(meta["val_cases"])
    index = DatasetIndex(args.data)
    cases = {c.case_id: c for c in index.with_regions(None)}
    dev_ids = sorted(set(cases) - set(val_ids))
    regions = Q.REGIONS

    ref_path = args.work / "reference.json"
    if ref_path.is_file():
        reference = json.loads(ref_path.read_text())
    else:
        def gt(cid):
            c = cases[cid]
            return {r: read_mask(c.mask_paths[r]) > 0 for r in regions}
        reference = Q.reference_stats(gt(c) for c in dev_ids)
        ref_path.write_text(json.dumps(reference, indent=1))
    print(f"reference statistics from {reference['n_cases']} development cases")
    params = {"reference": reference}

    folds = json.loads((args.folds / "folds.json").read_text())["folds"]
    oof: list[dict] = []
    done = [k for k in range(len(folds)) if (args.folds / f"fold{k}" / "done").is_file()]
    if not done:
        raise SystemExit(f"{args.folds}: no fold model has finished training")
    if len(done) < len(folds):
        print(f"only folds {done} of {len(folds)} have finished: fitting on their cases only")
    folds = [folds[k] for k in done]
    for k, fold in zip(done, folds, strict=True):
        pred = Predictor(args.folds / f"fold{k}" / "best.safetensors", device="cpu")
        fold_size = pred.input_size
        oof += _features(args.work / f"oof_fold{k}.json", pred, [cases[c] for c in fold], params, regions)
    shipped = Predictor(args.model, device="cpu")
    val_rows = _features(args.work / "validation.json", shipped, [cases[c] for c in val_ids], params, regions)

    # pooled or per-region coefficients, and the signals: chosen by cross-validation within
    # the development rows (mean Spearman over the regions), never on the validation cases
    choice = {}
    for m in Q.MODES:
        cv = {}
        for extra in CANDIDATE_EXTRAS[m]:
            feats = tuple(Q.FEATURES[m]) + extra
            for pooled in (True, False):
                cv[(pooled, feats)] = development_cv(oof, m, regions, pooled=pooled, features=feats)
                print(f"{m}: development cross-validation, {'pooled' if pooled else 'per region'}, "
                      f"{'+'.join(extra) or 'default signals'}: mean Spearman "
                      f"{np.mean(list(cv[(pooled, feats)].values())):+.3f} ("
                      + ", ".join(f"{r} {v:+.2f}" for r, v in cv[(pooled, feats)].items()) + ")")
        choice[m] = max(cv, key=lambda key: np.mean(list(cv[key].values())))
        print(f"{m}: chose {'pooled' if choice[m][0] else 'per region'} on {', '.join(choice[m][1])}")
    estimators = {m: Q.fit_estimator(oof, mode=m, pooled=choice[m][0], features=choice[m][1])
                  for m in Q.MODES}
    print(f"\nfitted on {len(oof) // len(regions)} out-of-fold development cases "
          f"({len(folds)} fold models); judged on {len(val_ids)} validation cases of the shipped model")
    res = {}
    for m in Q.MODES:
        res[m] = judge(val_rows, estimators[m], m, regions)
        loo = loo_on_validation(val_rows, m, regions)
        print(f"\n{m} mode: region, Spearman (est vs true Jaccard), worst 5 in est. worst 10, MAE"
              f" | for comparison, leave-one-out fit on the validation cases")
        for r in regions:
            x, y = res[m][r], loo[r]
            print(f"  {r:15s} rho {x['spearman']:+.3f}  {x['worst5_in_est10']}/5  MAE {x['mae']:.3f}"
                  f"  | LOO rho {y['spearman']:+.3f}  {y['worst5_in_est10']}/5")
    oof_j = {r: float(np.mean([x["jaccard"] for x in oof if x["region"] == r])) for r in regions}
    val_j = {r: float(np.mean([x["jaccard"] for x in val_rows if x["region"] == r])) for r in regions}
    print("\nmean true Jaccard, out-of-fold models vs shipped model on validation: "
          + ", ".join(f"{r} {oof_j[r]:.3f}/{val_j[r]:.3f}" for r in regions))
    if args.write:
        data = {
            "format": "cxrseg-quality/1",
            "model_id": getattr(shipped, "model_id", None),
            "reference": reference,
            "estimators": estimators,
            "fitted_on": {"cases": len(oof) // len(regions), "kind": "out-of-fold", "folds": len(folds),
                          "fold_input_size": fold_size},
            "validation": {m: {r: {k: (round(v, 4) if isinstance(v, float) and math.isfinite(v) else v)
                                   for k, v in res[m][r].items()} for r in regions} for m in Q.MODES},
        }
        print(f"wrote {Q.save_quality_params(args.model, data)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
