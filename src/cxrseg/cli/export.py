"""``cxrseg export``: write a checkpoint for shipping (:func:`cxrseg.export.export_checkpoint`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="source checkpoint (.safetensors or a training folder)")
    p.add_argument("out", type=Path, help="exported .safetensors file")
    p.add_argument("--fp32", action="store_true", help="keep float32 weights (default: float16)")
    p.add_argument("--evaluation", default=None, help="a cxrseg evaluate CSV to summarise into the metadata")
    p.add_argument("--note", default=None, help="a free-text note stored in the metadata")


def run_cli(args) -> int:
    from ..export import export_checkpoint

    path = export_checkpoint(args.checkpoint, args.out, half=not args.fp32, evaluation=args.evaluation,
                             note=args.note)
    size = path.stat().st_size / 1e6
    print(f"wrote {path} ({size:.1f} MB)")
    return 0
