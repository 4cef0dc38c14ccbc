"""``cxrseg tune``: k-fold cross-validated Bayesian hyper-parameter search
(:func:`cxrseg.tune.tune`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ._common import add_data_argument, add_model_arguments, parse_case_list, require_data


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_data_argument(p, "JSRT/SCR root (images + masks/<region>/)")
    p.add_argument(
        "--out",
        required=True,
        type=Path,
        help="output folder: study.db (default storage), best_params.json, trials-*.csv",
    )
    add_model_arguments(p)
    g = p.add_argument_group("search")
    fg = g.add_mutually_exclusive_group()
    fg.add_argument(
        "--folds", type=int, default=5, metavar="K", help="k-fold cross-validation (default 5)"
    )
    fg.add_argument(
        "--scr-folds",
        action="store_true",
        help="use SCR's two official folds (odd/even JSRT case numbers) instead of --folds",
    )
    g.add_argument(
        "--trials",
        type=int,
        default=20,
        help="total trials per study; a resumed study only runs the missing ones (default 20)",
    )
    g.add_argument("--epochs", type=int, default=10, help="epochs per fold and trial (default 10)")
    g.add_argument(
        "--storage", default=None, help="Optuna storage URL (default sqlite:///OUT/study.db)"
    )
    g.add_argument("--study-name", default="cxrseg", help="study name (per region: NAME-<region>)")
    g.add_argument(
        "--seed", type=int, default=0, help="seeds the folds, the TPE sampler and training"
    )
    g.add_argument(
        "--search-space",
        default=None,
        metavar="JSON",
        help="JSON object or file updating the default space, e.g. "
        '\'{"optimizer": ["sgd", "adam"], "lr": {"low": 1e-4, "high": 1e-2, "log": true}, '
        '"batch_size": [2, 4]}\' (null drops a parameter)',
    )
    g.add_argument("--no-prune", action="store_true", help="never stop a trial early")
    g.add_argument(
        "--no-baseline",
        action="store_true",
        help="do not start a new study with the default setting (the study's per-region "
        "table, or the multi-label defaults) as its first trial",
    )
    g.add_argument("--cases", default=None, help="restrict to these case ids (comma list or file)")
    g.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        default="auto",
        help="training precision (auto: bf16 where the device supports it)",
    )
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    g.add_argument("--quiet", action="store_true", help="print only the result table")


def _load_space(spec: str | None) -> dict | None:
    if not spec:
        return None
    p = Path(spec)
    text = p.read_text() if p.is_file() else spec
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--search-space: not a JSON object or a JSON file ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError("--search-space: expected a JSON object of parameter -> choices/range")
    return data


def _show(ev: dict) -> None:
    """Print one progress event of :func:`cxrseg.tune.tune`."""
    k = ev["kind"]
    if k == "data":
        print(
            f"{ev['cases']} cases in {len(ev['folds'])} folds "
            f"({', '.join(map(str, ev['folds']))})",
            flush=True,
        )
    elif k == "trial":
        ps = ", ".join(
            f"{a}={b:.3g}" if isinstance(b, float) else f"{a}={b}"
            for a, b in ev["params"].items()
        )
        print(f"[{ev['study']}] trial {ev['trial']}: {ps}", flush=True)
    elif k == "fold":
        print(
            f"[{ev['study']}]   fold {ev['fold']}/{ev['folds']}: IoU {ev['iou']:.4f}",
            flush=True,
        )
    elif k == "trial_end":
        v = "-" if ev["value"] is None else f"{ev['value']:.4f}"
        print(
            f"[{ev['study']}] trial {ev['trial']} {ev['state'].lower()}: mean IoU {v}",
            flush=True,
        )


def run_cli(args) -> int:
    from ..config import ModelConfig
    from ..tune import tune

    require_data(args)
    mcfg = ModelConfig(encoder_name=args.encoder, input_size=args.input_size)

    def show(ev: dict) -> None:
        if not args.quiet:
            _show(ev)

    res = tune(
        args.data,
        args.out,
        regions=args.regions,
        n_trials=args.trials,
        folds="scr" if args.scr_folds else args.folds,
        epochs=args.epochs,
        input_size=args.input_size,
        storage=args.storage,
        seed=args.seed,
        search_space=_load_space(args.search_space),
        progress=show,
        study_name=args.study_name,
        per_region=args.per_region,
        model_config=mcfg,
        encoder_weights=args.encoder_weights,
        device=args.device,
        precision=args.precision,
        prune=not args.no_prune,
        cases=parse_case_list(args.cases),
        baseline=not args.no_baseline,
    )
    print(res.format_table())
    print(f"study: {res.storage}; best parameters: {res.out_dir / 'best_params.json'}")
    return 0
