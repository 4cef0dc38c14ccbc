"""Train cheap k-fold models on the development cases, for out-of-fold quality features.

    python benchmarks/quality_folds.py MODEL.safetensors DATA_ROOT OUT \
        [--folds 4] [--input-size 256] [--epochs 30] [--threads 1]

The shipped model trained on all development cases (the cases that are not in its
``val_cases``), so its predictions on them are in-sample and too good to fit a quality
regression on. Each fold model here trains from scratch on the development cases outside
its fold (the model's validation cases are never used) and predicts its own fold: together
they give one out-of-fold prediction per development case. ``benchmarks/quality_eval.py``
turns those predictions into features and fits the Jaccard estimate on them.

Writes ``OUT/fold<k>/best.safetensors`` and ``OUT/folds.json`` (the cases of each fold).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def development_folds(model_path, data_root, folds: int) -> tuple[list[str], list[list[str]]]:
    """The development cases of ``data_root`` (all but the model's validation cases) and a
    deterministic, prefix-stratified split of them into ``folds`` groups."""
    import numpy as np

    from cxrseg.dataset import DatasetIndex
    from cxrseg.model import read_metadata

    val = set(read_metadata(model_path)["val_cases"])
    ids = sorted(c.case_id for c in DatasetIndex(data_root).with_regions(None) if c.case_id not in val)
    rng = np.random.default_rng(0)
    groups: list[list[str]] = [[] for _ in range(folds)]
    for prefix in sorted({i[:5] for i in ids}):
        members = [i for i in ids if i[:5] == prefix]
        for j, k in enumerate(rng.permutation(len(members))):
            groups[j % folds].append(members[k])
    return ids, [sorted(g) for g in groups]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("data")
    p.add_argument("out", type=Path)
    p.add_argument("--folds", type=int, default=4)
    p.add_argument("--input-size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)

    import torch

    from cxrseg.config import ModelConfig, TrainConfig
    from cxrseg.train import train_on_dataset

    torch.set_num_threads(args.threads)
    ids, groups = development_folds(args.model, args.data, args.folds)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "folds.json").write_text(json.dumps({"folds": groups}, indent=1))
    keep = set(ids)  # the model's validation cases never train a fold model
    for k, fold in enumerate(groups):
        out = args.out / f"fold{k}"
        if (out / "best.safetensors").is_file() and (out / "done").is_file():
            continue
        mcfg = ModelConfig(input_size=args.input_size)
        tcfg = TrainConfig.for_regions(mcfg.regions, epochs=args.epochs, lr=3e-3)
        res = train_on_dataset(
            args.data, out, model_config=mcfg, train_config=tcfg, val_cases=fold,
            case_filter=keep.__contains__, device="cpu", encoder_weights="none", quiet=True,
        )
        (out / "done").write_text(str(res.best_val_iou))
        print(f"fold {k}: {len(ids) - len(fold)} training cases, best IoU {res.best_val_iou:.4f} "
              f"at epoch {res.best_epoch}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
