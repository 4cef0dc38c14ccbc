"""``cxrseg train``: the poster's per-region models or one multi-label model."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def default_data_root() -> str | None:
    return os.environ.get("CXRSEG_DATA")


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--regions", default="all",
                   help="regions to train: all, lungs, clavicles or a comma list (heart,left_clavicle,...)")
    g.add_argument("--per-region", action="store_true",
                   help="the poster's approach: one binary model per region (in OUT/<region>/)")
    g.add_argument("--input-size", type=int, default=256, help="square input size (multiple of 32)")
    g.add_argument("--encoder", default="resnet34")
    g.add_argument("--encoder-weights", default="imagenet",
                   help="imagenet (local cache only, nothing is downloaded), none, or a path to a "
                        "torchvision/timm ResNet state dict")


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training (defaults: the poster's table per region, AdamW+one-cycle multi-label)")
    g.add_argument("--epochs", type=int, default=None)
    g.add_argument("--batch-size", type=int, default=None)
    g.add_argument("--optimizer", choices=["sgd", "rmsprop", "adam", "adamw"], default=None)
    g.add_argument("--lr", type=float, default=None)
    g.add_argument("--weight-decay", type=float, default=None)
    g.add_argument("--scheduler", choices=["onecycle", "cosine", "none"], default=None)
    g.add_argument("--bce-weight", type=float, default=None)
    g.add_argument("--jaccard-weight", type=float, default=None)
    g.add_argument("--aug-strength", type=float, default=None, help="0 disables augmentation")
    g.add_argument("--aug-multiplier", type=int, default=None,
                   help="passes over the training images per epoch (the poster used 5)")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default=None)
    g.add_argument("--early-stopping", type=int, default=None, metavar="EPOCHS",
                   help="stop after this many epochs without validation improvement (0: off)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")


def train_config_from_args(args, regions):
    from .config import TrainConfig

    return TrainConfig.for_regions(
        regions,
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        lr=args.lr,
        weight_decay=args.weight_decay,
        scheduler=args.scheduler,
        bce_weight=args.bce_weight,
        jaccard_weight=args.jaccard_weight,
        aug_strength=args.aug_strength,
        aug_multiplier=args.aug_multiplier,
        seed=args.seed,
        precision=args.precision,
        early_stopping_patience=args.early_stopping,
        val_fraction=getattr(args, "val_fraction", None),
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=default_data_root(),
                   help="JSRT/SCR root (images + masks/<region>/); default $CXRSEG_DATA")
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


def parse_case_list(spec: str | None) -> list[str] | None:
    if not spec:
        return None
    p = Path(spec)
    if p.is_file():
        return [ln.strip() for ln in p.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    return [s.strip() for s in spec.split(",") if s.strip()]


def run_cli(args) -> int:
    from .config import ModelConfig
    from .regions import parse_regions
    from .train import train_on_dataset

    if not args.data:
        raise ValueError("no data folder: pass --data or set CXRSEG_DATA")
    regions = parse_regions(args.regions)
    if str(args.encoder_weights).lower() not in ("none", "") and not args.init:
        # Fail before the (slow) pre-processing of the data when the weights are missing.
        from .model import load_encoder_state

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
