"""Arguments shared by several commands: the dataset folder, the model and training options."""

from __future__ import annotations

import argparse
import os

from . import UsageError

#: One line for a command that reads the dataset and was given none.
NO_DATA = "no data folder: pass --data DIR or set the CXRSEG_DATA environment variable"


def default_data_root() -> str | None:
    """The dataset folder named by ``$CXRSEG_DATA`` (None when unset)."""
    return os.environ.get("CXRSEG_DATA")


def add_data_argument(p: argparse.ArgumentParser, help: str) -> None:
    """``--data``, defaulting to ``$CXRSEG_DATA``."""
    p.add_argument("--data", default=default_data_root(), help=f"{help}; default $CXRSEG_DATA")


def require_data(args) -> str:
    """``args.data``; a :class:`UsageError` naming ``--data`` and ``CXRSEG_DATA`` when neither
    was given."""
    if not args.data:
        raise UsageError(NO_DATA)
    return args.data


def parse_case_list(spec: str | None) -> list[str] | None:
    """Case ids from a comma list or a file with one id per line (None for none)."""
    from ..evaluate import parse_case_list as parse

    return parse(spec)


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--regions", default="all",
                   help="regions to train: all, lungs, clavicles or a comma list (heart,left_clavicle,...)")
    g.add_argument("--per-region", action="store_true",
                   help="the JSRT/SCR U-Net study's baseline: one binary model per region (in OUT/<region>/)")
    g.add_argument("--input-size", type=int, default=256, help="square input size (multiple of 32)")
    g.add_argument("--encoder", default="resnet34", help="U-Net encoder (a segmentation_models_pytorch encoder name)")
    g.add_argument("--encoder-weights", default="imagenet",
                   help="imagenet (local cache only, nothing is downloaded), none, or a path to a "
                        "torchvision/timm ResNet state dict")


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training (defaults: the study's per-region table, AdamW+one-cycle multi-label)")
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
                   help="passes over the training images per epoch (the JSRT/SCR U-Net study used 5)")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default=None)
    g.add_argument("--early-stopping", type=int, default=None, metavar="EPOCHS",
                   help="stop after this many epochs without validation improvement (0: off)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")


def train_config_from_args(args, regions):
    from ..config import TrainConfig

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


def add_refine_argument(p: argparse.ArgumentParser) -> None:
    """``--refine/--no-refine``: the clavicles' native-resolution second stage."""
    p.add_argument(
        "--refine",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="refine the clavicles at the masks' native resolution with the network stored beside "
        "the checkpoint (default: when the checkpoint has one; CXRSEG_REFINE=0 turns it off)",
    )
