"""``cxrseg evaluate``: Jaccard, Dice, contour distance and HD95 per case and region
(:func:`cxrseg.evaluate.evaluate_model`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import add_data_argument, add_refine_argument, require_data


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        action="append",
        default=None,
        metavar="CKPT",
        help="checkpoint, training folder, or folder of per-region folders (repeatable; "
        "default: the shipped model)",
    )
    add_data_argument(p, "JSRT/SCR root with ground-truth masks")
    p.add_argument(
        "--cases",
        default=None,
        help="val (the checkpoint's validation cases: the default when it lists them), all, "
        "fold1, fold2, a comma list of ids, or a file with one id per line",
    )
    p.add_argument(
        "--regions", default=None, help="regions to evaluate (default: all the model predicts)"
    )
    p.add_argument("--out", type=Path, default=None, help="write the per-case rows to this CSV")
    p.add_argument(
        "--groups-csv",
        action="store_true",
        help="also write the lungs/clavicles group rows to --out",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16", "int8"],
        default="auto",
        help="inference precision (int8: see `cxrseg predict --help`)",
    )
    p.add_argument(
        "--thresholds",
        default=None,
        help="override the checkpoint's thresholds: 0.4 or heart=0.4,left_lung=0.6",
    )
    p.add_argument(
        "--postprocess",
        action="store_true",
        help="keep each mask's largest component and fill holes before measuring",
    )
    add_refine_argument(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run_cli(args) -> int:
    from ..evaluate import evaluate_model

    require_data(args)
    bar = None
    if not args.quiet:
        from tqdm.auto import tqdm

        def progress(i, n):
            nonlocal bar
            if bar is None:
                bar = tqdm(total=n, desc="evaluate", dynamic_ncols=True)
            bar.update(1)
    else:
        progress = None
    try:
        res = evaluate_model(
            args.model if args.model else None,
            args.data,
            cases=args.cases,
            regions=args.regions,
            device=args.device,
            precision=args.precision,
            refine=args.refine,
            progress=progress,
            postprocess=args.postprocess,
            thresholds=args.thresholds,
        )
    finally:
        if bar is not None:
            bar.close()
    print(res.format_table())
    if args.out:
        path = res.to_csv(args.out, groups=args.groups_csv)
        print(f"per-case metrics: {path}")
    return 0
