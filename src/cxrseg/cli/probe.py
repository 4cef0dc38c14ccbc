"""``cxrseg probe``: position or anatomy? Jaccard under moves, structures removed or moved
(:func:`cxrseg.probe.run_probe`)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ._common import add_data_argument, require_data


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in str(text).split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..probe import ProbeGrid

    d = ProbeGrid()
    add_data_argument(p, "JSRT/SCR-style folder with ground truth")
    p.add_argument("--model", default=None, help="checkpoint (default: the shipped model)")
    p.add_argument("--cases", default=None,
                   help="val (default: the checkpoint's validation cases), all, fold1, fold2, or ids")
    p.add_argument("--max-cases", type=int, default=None, help="probe this many cases, drawn with --seed")
    p.add_argument("--out", default="probe", help="output folder (CSV, PNG, report.md)")
    p.add_argument("--translate", type=_floats, default=d.translate_x,
                   help="shifts, fractions of the side, for both axes (default %(default)s)")
    p.add_argument("--scale", type=_floats, default=d.scale, help="zoom factors (default %(default)s)")
    p.add_argument("--rotate", type=_floats, default=d.rotate, help="rotations in degrees (default %(default)s)")
    p.add_argument("--no-geometric", action="store_true", help="skip the geometric probe")
    p.add_argument("--no-counterfactual", action="store_true", help="skip the counterfactual probe")
    p.add_argument("--seed", type=int, default=0, help="seed of the moved structures' offsets")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="inference precision")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def run_cli(args) -> int:
    from ..predict import Predictor
    from ..probe import ProbeGrid, load_samples, run_probe, write_report

    require_data(args)
    if args.threads:
        import torch

        torch.set_num_threads(int(args.threads))
    predictor = Predictor(args.model, device=args.device, precision=args.precision)
    grid = ProbeGrid(translate_x=args.translate, translate_y=args.translate, scale=args.scale, rotate=args.rotate)

    def progress(stage, i, n):
        print(f"\r{stage}: {i}/{n}", end="\n" if i == n else "", flush=True)

    samples, source = load_samples(
        args.data, cases=args.cases, checkpoint=args.model, size=predictor.input_size,
        max_cases=args.max_cases, seed=args.seed, progress=lambda i, n: progress("load", i, n),
    )
    res = run_probe(predictor, samples, grid=grid, seed=args.seed, geometric=not args.no_geometric,
                    counterfactual=not args.no_counterfactual, source=source, progress=progress)
    paths = write_report(res, args.out, title=f"model {predictor.model_id}, {len(samples)} cases")
    print((Path(args.out) / "report.md").read_text())
    for k, v in paths.items():
        print(f"{k}: {os.fspath(v)}")
    return 0
