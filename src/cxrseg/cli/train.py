"""``cxrseg train``: the study's per-region models or one multi-label model."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ._common import (
    add_data_argument,
    add_model_arguments,
    add_train_arguments,
    parse_case_list,
    require_data,
    train_config_from_args,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_data_argument(p, "JSRT/SCR root (images + masks/<region>/)")
    p.add_argument("--out", required=True, type=Path, help="output folder (checkpoints, history, progression)")
    add_model_arguments(p)
    add_train_arguments(p)
    s = p.add_argument_group("data split and monitoring")
    s.add_argument("--val-fraction", type=float, default=None, help="validation share (default 0.2)")
    s.add_argument("--val-cases", default=None,
                   help="comma list or a file with one case id per line: the validation cases")
    s.add_argument("--resume", action="store_true", help="continue from OUT/last_state.pt")
    s.add_argument("--init", default=None, help="start from this checkpoint's weights")
    s.add_argument("--track-case", default=None, metavar="CASE",
                   help="store this case's sigmoid maps after every epoch (progression.npz/.png)")
    s.add_argument("--quiet", action="store_true")


def run_cli(args) -> int:
    from ..config import ModelConfig
    from ..regions import parse_regions
    from ..train import train_on_dataset

    require_data(args)
    regions = parse_regions(args.regions)
    if str(args.encoder_weights).lower() not in ("none", "") and not args.init:
        # Fail before the (slow) pre-processing of the data when the weights are missing.
        from ..model import load_encoder_state

        load_encoder_state(args.encoder_weights, args.encoder)
    jobs = [(r,) for r in regions] if args.per_region else [regions]
    for regs in jobs:
        out = args.out / regs[0] if args.per_region else args.out
        mcfg = ModelConfig(regions=regs, input_size=args.input_size, encoder_name=args.encoder)
        tcfg = train_config_from_args(args, regs)
        res = train_on_dataset(
            args.data, out, model_config=mcfg, train_config=tcfg,
            val_cases=parse_case_list(args.val_cases), device=args.device,
            encoder_weights=args.encoder_weights, resume=args.resume, init_checkpoint=args.init,
            track_case=args.track_case, quiet=args.quiet,
        )
        if res is not None and int(os.environ.get("RANK", "0")) == 0:
            print(f"{'/'.join(regs)}: best validation mean IoU {res.best_val_iou:.4f} at epoch "
                  f"{res.best_epoch} -> {res.best_path}")
    return 0
