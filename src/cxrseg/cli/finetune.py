"""``cxrseg finetune``: fine-tune a checkpoint on corrected masks with replay
(:func:`cxrseg.finetune.finetune`)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ._common import add_data_argument, parse_case_list


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def add_arguments(p) -> None:
    """Arguments of ``cxrseg finetune``."""
    p.add_argument(
        "--corrections",
        required=True,
        type=Path,
        help="corrections store (masks/<region>/<case>.vNNN.png + .json sidecars)",
    )
    p.add_argument(
        "--from",
        dest="checkpoint",
        default=None,
        help="source checkpoint (.safetensors or its folder; default: the shipped model)",
    )
    p.add_argument(
        "--out",
        required=True,
        type=Path,
        help="new checkpoint: a .safetensors file, or a folder (best.safetensors in it)",
    )
    add_data_argument(
        p,
        "dataset root: ground truth for uncorrected regions, replay and validation cases "
        "(without it: no replay, and writing needs --force)",
    )
    p.add_argument(
        "--replay-ratio",
        type=float,
        default=None,
        help="replay samples of the original training data per correction sample (default 2)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="times each correction is shown per epoch (default 2)",
    )
    p.add_argument(
        "--val-cases",
        default=None,
        help="validation cases: comma list or file (default: the checkpoint's val_cases; "
        "corrected cases are always excluded)",
    )
    p.add_argument(
        "--regions", default=None, help="use only corrections of these regions (default: all)"
    )
    p.add_argument(
        "--epochs", type=int, default=None,
        help="most epochs to train (default 5; giving it, --lr or --replay-ratio trains that one setting)",
    )
    p.add_argument(
        "--lr", type=float, default=None, help="default: a tenth of the checkpoint's learning rate"
    )
    p.add_argument("--batch-size", type=int, default=None, help="default: the checkpoint's")
    p.add_argument(
        "--optimizer", choices=["sgd", "rmsprop", "adam", "adamw"], default=None, help="default: the checkpoint's"
    )
    p.add_argument(
        "--scheduler", choices=["onecycle", "cosine", "none"], default="cosine", help="learning-rate schedule"
    )
    p.add_argument("--aug-strength", type=float, default=None, help="default: the checkpoint's")
    p.add_argument(
        "--early-stopping",
        type=int,
        default=2,
        metavar="EPOCHS",
        help="stop after this many epochs without validation improvement (0: off; default 2)",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.005,
        help="largest allowed fall of any region's validation IoU (default 0.005)",
    )
    p.add_argument(
        "--force", action="store_true", help="write the new model even if validation got worse"
    )
    p.add_argument(
        "--no-search", action="store_true",
        help="train one setting instead of trying several (learning rate, epochs, replay ratio) "
        "when none of --lr, --epochs, --replay-ratio is given",
    )
    p.add_argument(
        "--search-budget", type=float, default=15.0, metavar="MIN",
        help="minutes for trying settings: none is started past it (default 15)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto", help="training precision")
    p.add_argument("--seed", type=int, default=0, help="seeds the sampling, augmentation and training")
    p.add_argument("--report", type=Path, default=None, help="also write the report as JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def run_cli(args) -> int:
    """Run ``cxrseg finetune``; exit status 0 when written, 1 when refused."""
    quiet = args.quiet or _rank() != 0
    bar = None

    def progress(ev: dict) -> None:
        nonlocal bar
        if quiet:
            return
        kind = ev["kind"]
        if kind == "stage":
            print(f"[{ev['stage']}] {ev['message']}", flush=True)
        elif kind == "start":
            from tqdm.auto import tqdm

            bar = tqdm(
                total=(ev["epochs"] - ev["start_epoch"] + 1) * ev["steps_per_epoch"],
                desc="finetune",
                dynamic_ncols=True,
            )
        elif kind == "step" and bar is not None:
            bar.update(1)
            bar.set_postfix(epoch=ev["epoch"], loss=f"{ev['loss']:.4f}")
        elif kind == "epoch":
            v = ev["val"]
            vs = " ".join(f"{k}={x:.4f}" for k, x in v.items()) if v else "-"
            msg = f"epoch {ev['epoch']}/{ev['epochs']} loss {ev['loss']:.4f} val IoU {vs}"
            (bar.write if bar is not None else print)(msg + (" *" if ev["improved"] else ""))
        elif kind == "candidate_start":
            st = ev["settings"]
            print(f"[search] setting {ev['i']}/{ev['n']}: lr {st['lr']:g}, {st['epochs']} epochs, "
                  f"replay ratio {st['replay_ratio']:g}", flush=True)
        elif kind == "candidate":
            if bar is not None:
                bar.close()
                bar = None
            print(ev["table"], flush=True)
        elif kind == "report":
            if bar is not None:
                bar.close()
                bar = None
            print(
                "\nIoU at native resolution "
                "(corrected cases vs corrected masks; validation vs ground truth):"
            )
            print(ev["table"])

    try:
        res = _run(args, progress)
    except FloatingPointError as exc:  # diverged: a message, not a traceback
        raise RuntimeError(f"{exc}") from None
    if bar is not None:
        bar.close()
    return _finish_cli(args, res)


def _run(args, progress):
    from ..finetune import finetune

    return finetune(
        args.corrections,
        args.checkpoint,
        args.out,
        progress=progress,
        data_root=args.data,
        replay_ratio=args.replay_ratio,
        repeats=args.repeats,
        val_cases=parse_case_list(args.val_cases),
        regions=args.regions,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        scheduler=args.scheduler,
        aug_strength=args.aug_strength,
        early_stopping=args.early_stopping,
        tolerance=args.tolerance,
        force=args.force,
        device=args.device,
        precision=args.precision,
        seed=args.seed,
        search=False if args.no_search else "auto",
        search_budget=60.0 * args.search_budget,
    )


def _finish_cli(args, res) -> int:
    if _rank() != 0:
        return 0
    if args.report is not None:
        from ..io import atomic_write

        doc = {
            "written": res.written,
            "path": str(res.path) if res.path else None,
            "reason": res.reason,
            "parent_id": res.parent_id,
            "model_id": res.model_id,
            "before": res.before,
            "after": res.after,
            "corrections": res.corrections,
            "val_cases": res.val_cases,
            "history": res.history,
            "label_sources": res.label_sources,
            "candidates": res.candidates,
        }
        text = json.dumps(doc, indent=1).encode()
        atomic_write(args.report, lambda fh: fh.write(text))
    if len(res.candidates) > 1 and not args.quiet:
        from ..finetune import format_candidates

        print("\nsettings tried (corrected: mean IoU change on the corrected cases; worst val: the "
              "largest validation change):")
        print(format_candidates(res.before, res.candidates))
    if res.written:
        print(f"wrote {res.path} (model {res.model_id}, parent {res.parent_id}): {res.reason}")
        return 0
    print(f"cxrseg finetune: {res.reason}", file=sys.stderr)
    return 1
