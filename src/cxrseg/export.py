"""``cxrseg export``: write a checkpoint for shipping (fp16 safetensors, metadata kept).

The exported file keeps the source's metadata (config, regions, split, lineage) and adds
``exported_from`` (the source's model id) and, with ``--evaluation``, the per-region
mean ± sd from a ``cxrseg evaluate`` CSV, so the numbers travel with the weights.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path


def summarize_evaluation(csv_path) -> dict:
    """Per-region mean and sd of each metric in a ``cxrseg evaluate`` CSV."""
    vals: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    with open(csv_path, newline="") as fh:
        for row in csv.DictReader(fh):
            for m in ("jaccard", "dice", "mad_mm", "hd95_mm"):
                if row.get(m) not in (None, ""):
                    vals[row["region"]][m].append(float(row[m]))
    out = {}
    for region, ms in vals.items():
        out[region] = {}
        for m, xs in ms.items():
            mean = sum(xs) / len(xs)
            sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / max(len(xs) - 1, 1))
            out[region][m] = [round(mean, 5), round(sd, 5), len(xs)]
    return out


def export_checkpoint(src, dst, *, half: bool = True, evaluation=None, note: str | None = None) -> Path:
    from .model import load_checkpoint, save_checkpoint

    ck = load_checkpoint(src)
    meta = dict(ck.metadata)
    meta["exported_from"] = ck.model_id
    meta.pop("model_id", None)
    if evaluation:
        meta["evaluation"] = {"source": Path(evaluation).name, "per_region": summarize_evaluation(evaluation)}
    if note:
        meta["note"] = note
    return save_checkpoint(ck.model, ck.config, dst, metadata=meta, half=half)
