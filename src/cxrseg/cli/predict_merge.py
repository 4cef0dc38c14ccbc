"""``cxrseg predict-merge``: join the CSVs of a sharded ``cxrseg predict`` run
(:func:`cxrseg.distributed.merge_parts`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", type=Path, help="the output folder the parts wrote into")
    p.add_argument("--num-parts", type=int, default=None, help="the split to merge (default: the only one there)")
    p.add_argument("--allow-missing", action="store_true", help="merge the parts that are there")


def run_cli(args) -> int:
    from ..distributed import merge_parts

    rows, errs = merge_parts(args.out, num_parts=args.num_parts, allow_missing=args.allow_missing)
    print(
        f"merged -> {args.out / 'predictions.csv'} ({rows} rows)"
        + (f", {args.out / 'errors.csv'} ({errs} failed files)" if errs else "")
    )
    return 1 if errs else 0
