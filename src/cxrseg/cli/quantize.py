"""``cxrseg quantize``: calibrate a checkpoint for int8 prediction on CPUs and check it
against fp32 on the checkpoint's validation cases (:mod:`cxrseg.quantize`)."""

from __future__ import annotations

import argparse
import sys

from ._common import add_data_argument, parse_case_list, require_data


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_data_argument(p, "JSRT/SCR-style folder: calibration films, and validation cases with masks")
    p.add_argument("--model", default=None, help="the checkpoint (default: the shipped model)")
    p.add_argument("--calibration-cases", type=int, default=48,
                   help="films the activation ranges are measured on, drawn (seeded) from the cases that "
                        "are not the checkpoint's validation cases")
    p.add_argument("--cases", default=None,
                   help="draw the calibration films from these cases instead (comma list or file); the "
                        "checkpoint's validation cases are refused")
    p.add_argument("--val-cases", default=None,
                   help="cases the int8 masks are compared with fp32's on (default: the checkpoint's "
                        "validation cases found under --data)")
    p.add_argument("--max-change", type=float, default=0.002,
                   help="refuse to write when a region's mean Jaccard changes more than this")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration draw")
    p.add_argument("--no-refine", action="store_true",
                   help="calibrate the whole-film network only (not the clavicles' refinement network)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def run_cli(args) -> int:
    import numpy as np

    from ..dataset import DatasetIndex
    from ..evaluate import compare_predictors
    from ..predict import Predictor
    from ..quantize import calibrate, int8_engine, use_int8, write_calibration

    require_data(args)
    if args.calibration_cases < 1:
        raise ValueError(f"--calibration-cases must be >= 1, got {args.calibration_cases}")
    if args.threads:
        import torch

        torch.set_num_threads(int(args.threads))
    refine = False if args.no_refine else None
    p32 = Predictor(args.model, device="cpu", precision="fp32", refine=refine)
    index = DatasetIndex(args.data)
    by_id = {c.case_id: c for c in index}
    val_ids = parse_case_list(args.val_cases) or list(p32.metadata.get("val_cases") or [])
    held = set(p32.metadata.get("val_cases") or []) | set(val_ids)
    if args.cases:
        wanted = parse_case_list(args.cases) or []
        refused = sorted(set(wanted) & held)
        if refused:
            raise ValueError(f"--cases: {', '.join(refused[:5])} are validation cases; calibrate on others")
        missing = [c for c in wanted if c not in by_id]
        if missing:
            raise ValueError(f"--cases: {', '.join(missing[:5])} not found under {args.data}")
        pool = wanted
    else:
        pool = sorted(c for c in by_id if c not in held)
    if not pool:
        raise ValueError(f"{args.data}: no case left to calibrate on (all are validation cases)")
    rng = np.random.default_rng(args.seed)
    chosen = sorted(rng.choice(pool, size=min(args.calibration_cases, len(pool)), replace=False).tolist())
    val = [by_id[c] for c in val_ids if c in by_id and by_id[c].has_regions(p32.regions)]
    if not val:
        raise ValueError(
            f"{args.data}: none of the {len(val_ids)} validation cases with masks of every region is there; "
            "give --val-cases"
        )
    nets = "the whole-film network" + (" and the refinement network" if p32.refiner is not None else "")
    print(f"calibrating {nets} of {p32.path.name} ({p32.model_id}) on {len(chosen)} films "
          f"(engine {int8_engine()})", file=sys.stderr)
    qparams = calibrate(p32, (by_id[c].load_image().data for c in chosen),
                        progress=lambda n: print(f"  {n}/{len(chosen)}", end="\r", file=sys.stderr))
    print(file=sys.stderr)
    pq = Predictor(args.model, device="cpu", precision="fp32", refine=refine)
    use_int8(pq, qparams)
    print(f"comparing int8 with fp32 on {len(val)} validation cases", file=sys.stderr)
    cmp = compare_predictors(p32, pq, val,
                             progress=lambda n: print(f"  {n}/{len(val)}", end="\r", file=sys.stderr))
    print(file=sys.stderr)
    print(f"{'region':<16s} {'J fp32':>8s} {'J int8 - J fp32':>16s} {'max |diff|':>11s} {'J(int8, fp32)':>14s}")
    for r, e in cmp["regions"].items():
        print(f"{r:<16s} {e['jaccard_reference']:8.4f} {e['delta_mean']:+16.5f} {e['delta_max_abs']:11.5f} "
              f"{e['agreement_mean']:14.5f}")
    worst = cmp["max_abs_mean_delta"]
    if worst > args.max_change:
        print(f"largest mean Jaccard change {worst:.5f} > --max-change {args.max_change}: nothing written",
              file=sys.stderr)
        return 1
    ids = {p32.path: p32.model_id}
    if p32.refiner is not None:
        ids[p32.refiner.path] = p32.refiner.model_id
    meta = {
        "calibration_cases": chosen,
        "calibration_seed": args.seed,
        "validation": {"cases": cmp["cases"], "max_abs_mean_delta": worst,
                       "regions": {r: {k: round(v, 6) for k, v in e.items()} for r, e in cmp["regions"].items()}},
        "refined": p32.refiner is not None,
    }
    for path in write_calibration(qparams, ids, meta):
        print(f"wrote {path}")
    return 0
