"""``cxrseg refine-train``: train the clavicles' native-resolution refinement network for a
whole-film checkpoint (:func:`cxrseg.refine.train_refiner_iter`)."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from ._common import add_data_argument, parse_case_list, require_data


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..refine import RefineTrainConfig

    d = RefineTrainConfig()
    add_data_argument(p, "JSRT/SCR-style folder with clavicle masks")
    p.add_argument("--model", default=None, help="the whole-film checkpoint (default: the shipped model)")
    p.add_argument("--out", "-o", required=True, type=Path,
                   help="output folder (refine.safetensors: the best epoch; last.state: for --resume)")
    p.add_argument("--cases", default=None,
                   help="cases to train on and choose the epoch on: a comma list or a file with one id per "
                        "line (default: the checkpoint's training cases; its validation cases are refused)")
    p.add_argument("--selection-cases", default=None,
                   help="of those, the ones kept aside to choose the epoch (default: a seeded "
                        f"{d.selection_fraction:g} of them)")
    p.add_argument("--prior-folds", default=None, metavar="DIR",
                   help="k-fold models of the training cases (folds.json, fold<k>/best.safetensors, as "
                        "benchmarks/quality_folds.py writes): crops also get maps from a model that did not train "
                        "on them, and the epoch is chosen on such maps")
    p.add_argument("--oof-prior-p", type=float, default=d.oof_prior_p,
                   help="with --prior-folds: the share of training crops that get the fold model's map")
    p.add_argument("--epochs", type=int, default=d.epochs,
                   help="passes over the training crops (a larger value on --resume stretches the schedule)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="crops per step")
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (AdamW, one-cycle)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the selection split and the augmentation")
    p.add_argument("--no-mirror", action="store_true",
                   help="train on left clavicles only (no mirrored right-clavicle crops)")
    p.add_argument("--no-warm-start", action="store_true", help="start from random weights")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.state")
    p.add_argument("--install", action="store_true",
                   help="when done, copy the network beside the checkpoint, where predict, evaluate and the "
                        "plugin find it")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def run_cli(args) -> int:
    from ..refine import RefineTrainConfig, refiner_path, train_refiner_iter

    require_data(args)
    if args.epochs < 1 or args.batch_size < 1:
        raise ValueError("--epochs and --batch-size must be >= 1")
    if args.threads:
        import torch

        torch.set_num_threads(int(args.threads))
    cfg = RefineTrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        mirror=not args.no_mirror, warm_start=not args.no_warm_start, oof_prior_p=args.oof_prior_p,
    )
    if not 0.0 <= args.oof_prior_p <= 1.0:
        raise ValueError(f"--oof-prior-p must be in [0, 1], got {args.oof_prior_p}")
    done = None
    for ev in train_refiner_iter(
        args.data, args.out, first_stage=args.model, cases=parse_case_list(args.cases),
        selection_cases=parse_case_list(args.selection_cases), config=cfg, resume=args.resume,
        device=args.device, prior_folds=args.prior_folds,
    ):
        if ev.kind == "prepare" and ev.steps:
            print(f"\rfirst-stage maps: {ev.step}/{ev.steps}", end="\n" if ev.step == ev.steps else "",
                  file=sys.stderr, flush=True)
        elif ev.kind == "epoch":
            sc = ", ".join(f"{r} {v:.4f} (first stage {ev.baseline[r]:.4f})" for r, v in ev.scores.items())
            print(f"epoch {ev.epoch}/{ev.epochs}: loss {ev.loss:.4f}; selection Jaccard {sc}; "
                  f"best epoch {ev.best_epoch}", flush=True)
        elif ev.kind == "done":
            done = ev
    if done is None or done.best_epoch is None:
        print("cxrseg refine-train: no epoch was scored", file=sys.stderr)
        return 1
    print(f"best epoch {done.best_epoch} -> {done.path}")
    if args.install:
        dest = refiner_path(args.model)
        tmp = dest.with_name(f".{dest.name}.tmp")
        shutil.copyfile(done.path, tmp)
        tmp.replace(dest)  # a reader never sees half a file
        print(f"installed -> {dest}")
    return 0
