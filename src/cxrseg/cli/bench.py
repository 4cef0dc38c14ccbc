"""``cxrseg bench``: how fast the prediction engine is (:func:`cxrseg.bench.run_bench`;
the sections are described in :mod:`cxrseg.bench`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..bench import SECTIONS


def add_arguments(p: argparse.ArgumentParser) -> None:
    _add_run_arguments(p)
    _add_timing_arguments(p)
    _add_section_arguments(p)


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    """What to time, where, and where the results go."""
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument(
        "--model",
        default=None,
        help="checkpoint to time (default: the shipped model if installed, else a random "
        "ResNet34 U-Net; a tiny random model with --smoke)",
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes and repeats: "
        "checks that everything runs, in seconds (numbers meaningless)",
    )
    p.add_argument(
        "--json", type=Path, default=None, metavar="OUT", help="also write the results as JSON"
    )


def _add_timing_arguments(p: argparse.ArgumentParser) -> None:
    """How each measurement is taken."""
    p.add_argument(
        "--repeats", type=int, default=None, help="timed runs per measurement (default 7; smoke 2)"
    )
    p.add_argument(
        "--warmup", type=int, default=None, help="untimed runs first (default 2; smoke 1)"
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: as it is)"
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=8,
        help="batch size of the batched engine runs (default 8)",
    )


def _add_section_arguments(p: argparse.ArgumentParser) -> None:
    """Sizes, data and budgets of the individual sections."""
    p.add_argument(
        "--images",
        type=int,
        default=None,
        help="phantom files for the folder test (default 16; smoke 4)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="DataLoader workers for the folder test (default: cxrseg predict's default)",
    )
    p.add_argument(
        "--only", default=None, help=f"comma list of sections to run: {', '.join(SECTIONS)}"
    )
    p.add_argument(
        "--accuracy-data",
        type=Path,
        default=None,
        metavar="ROOT",
        help="JSRT/SCR folder: compare bf16 with fp32 Jaccard on real cases",
    )
    p.add_argument(
        "--throughput-rounds",
        type=int,
        default=2,
        metavar="N",
        help="throughput section: rounds of (baseline, engine runs), median (default 2)",
    )
    p.add_argument(
        "--gui-rounds",
        type=int,
        default=3,
        metavar="N",
        help="gui section: rounds of (reference, cxrseg-gui, the same --in-process, that with the background load), "
        "median (default 3)",
    )
    p.add_argument(
        "--autotune-budget",
        type=float,
        default=20.0,
        metavar="S",
        help="seconds the bench's own --precision auto measurement may take when nothing is cached "
        "(default 20: every alternative timed even on a busy machine; predict and the GUI use 3)",
    )
    p.add_argument(
        "--folder-data",
        type=Path,
        default=None,
        metavar="ROOT",
        help="throughput and refine sections: use the first --images images of ROOT/images (e.g. "
        "$CXRSEG_DATA; linked from a temporary folder, not copied) instead of synthetic PNGs; the "
        "coldstart section its first image",
    )
    p.add_argument(
        "--accuracy-cases",
        type=int,
        default=20,
        help="cases for the accuracy check (default 20; the checkpoint's validation cases first)",
    )


def run_cli(args) -> int:
    from ..bench import run_bench

    run_bench(args)
    return 0
