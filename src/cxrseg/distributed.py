"""Prediction beyond one process: deterministic parts, their merge, and a Dask runner.

Parts (``cxrseg predict --num-parts N --part-id K``, any scheduler: a job array, a
shell loop, several machines sharing a file system) split the sorted input list round
robin (:func:`shard`); case names are made from the whole list, so every part names a
case as a single run would. All parts write into the same output folder: masks,
heat-maps and done-markers are per case, and each part writes its rows to
``predictions.part-K-of-N.csv`` (errors to ``errors.part-K-of-N.csv``).
``cxrseg predict-merge OUT`` (:func:`merge_parts`) joins them into ``predictions.csv``
and ``errors.csv``, the same files a single run writes.

``cxrseg predict --scheduler ADDRESS`` (:func:`run_on_dask`) sends the parts to the
workers of a Dask distributed cluster (``pip install napari-cxrseg[cluster]``), each
worker process loading the model once (:func:`cxrseg.predict.get_predictor` caches it),
shows progress per finished part and merges at the end. Resuming works as for a single
run: done cases are skipped.
"""

from __future__ import annotations

import csv
import math
import os
import re
import sys
from pathlib import Path

__all__ = ["shard", "check_part", "part_names", "merge_parts", "run_on_dask"]

_PART = re.compile(r"^(predictions|errors)\.part-(\d+)-of-(\d+)\.csv$")


def check_part(num_parts: int, part_id: int) -> None:
    """Raise ``ValueError`` unless ``0 <= part_id < num_parts``."""
    if int(num_parts) < 1:
        raise ValueError(f"--num-parts must be >= 1, got {num_parts}")
    if not 0 <= int(part_id) < int(num_parts):
        raise ValueError(f"--part-id must be in 0..{int(num_parts) - 1}, got {part_id}")


def shard(items: list, num_parts: int, part_id: int) -> list:
    """Part ``part_id`` of ``num_parts`` of ``items`` (round robin: items ``part_id``,
    ``part_id + num_parts``, ...). Every item is in exactly one part, and the parts
    differ in size by at most one."""
    check_part(num_parts, part_id)
    return list(items)[int(part_id) :: int(num_parts)]


def part_names(num_parts: int, part_id: int) -> tuple[str, str]:
    """The (predictions, errors) CSV names of a part."""
    w = len(str(int(num_parts) - 1))
    tag = f"part-{int(part_id):0{w}d}-of-{int(num_parts)}"
    return f"predictions.{tag}.csv", f"errors.{tag}.csv"


def _part_files(out_dir: Path) -> dict[int, dict[str, dict[int, Path]]]:
    """N -> kind -> K -> file, for every part CSV in ``out_dir``."""
    found: dict[int, dict[str, dict[int, Path]]] = {}
    for f in out_dir.iterdir() if out_dir.is_dir() else []:
        m = _PART.match(f.name)
        if m:
            found.setdefault(int(m.group(3)), {}).setdefault(m.group(1), {})[int(m.group(2))] = f
    return found


def merge_parts(out_dir, *, num_parts: int | None = None, allow_missing: bool = False) -> tuple[int, int]:
    """Join the parts' CSVs of ``out_dir`` into ``predictions.csv`` and ``errors.csv``.

    Rows are ordered as a single run orders them (by case, then region). Returns
    (prediction rows, error rows).

    Raises
    ------
    FileNotFoundError
        No part CSVs, or (unless ``allow_missing``) a part's ``predictions`` CSV is missing.
    ValueError
        Parts of different splits (``-of-4`` and ``-of-8``) and no ``num_parts`` to choose.
    """
    from .batch import CSV_COLUMNS, ERROR_COLUMNS, _csv_text, _header, _write_text_atomic
    from .regions import REGIONS

    out_dir = Path(out_dir)
    found = _part_files(out_dir)
    if not found:
        raise FileNotFoundError(f"{out_dir}: no predictions.part-K-of-N.csv files to merge")
    if num_parts is None:
        if len(found) > 1:
            raise ValueError(
                f"{out_dir}: parts of several splits ({', '.join(f'of-{n}' for n in sorted(found))}); "
                "pass --num-parts"
            )
        num_parts = next(iter(found))
    parts = found.get(int(num_parts), {})
    preds = parts.get("predictions", {})
    missing = [k for k in range(int(num_parts)) if k not in preds]
    if missing and not allow_missing:
        raise FileNotFoundError(
            f"{out_dir}: parts {', '.join(map(str, missing))} of {num_parts} have no predictions CSV yet "
            "(run them, or merge with --allow-missing)"
        )
    order = {r: i for i, r in enumerate(REGIONS)}
    rows: list[dict] = []
    for k in sorted(preds):
        with open(preds[k], newline="", encoding="utf-8") as fh:
            rows += list(csv.DictReader(fh))
    rows.sort(key=lambda r: (r["case"], order.get(r["region"], 99)))
    _write_text_atomic(out_dir / "predictions.csv", _header(CSV_COLUMNS) + _csv_text(rows, CSV_COLUMNS))
    errs: list[dict] = []
    for k in sorted(parts.get("errors", {})):
        with open(parts["errors"][k], newline="", encoding="utf-8") as fh:
            errs += list(csv.DictReader(fh))
    err_path = out_dir / "errors.csv"
    if errs:
        _write_text_atomic(err_path, _header(ERROR_COLUMNS) + _csv_text(errs, ERROR_COLUMNS))
    else:
        err_path.unlink(missing_ok=True)
    return len(rows), len(errs)


# --------------------------------------------------------------------------- Dask


def _run_part(spec: dict, planned: list, num_parts: int, part_id: int) -> dict:
    """Body of one Dask task: segment one part on a worker (the model is loaded once
    per worker process and cached)."""
    import torch

    from .batch import run_predict
    from .predict import get_predictor

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    pred = get_predictor(spec["model"], device=spec["device"], precision=spec["precision"],
                         refine=spec.get("refine"))
    errors: list[str] = []
    s = run_predict(
        [],
        spec["out"],
        predictor=pred,
        regions=spec["regions"],
        thresholds=spec["thresholds"],
        heatmaps=spec["heatmaps"],
        heatmap_png=spec["heatmap_png"],
        batch_size=spec["batch_size"],
        workers=0,  # Dask worker processes are daemons: no DataLoader processes under them
        streams=1,  # the cluster's processes are the streams
        postprocess=spec["postprocess"],
        overwrite=spec["overwrite"],
        mask_format=spec["mask_format"],
        progress=False,
        log=errors.append,
        num_parts=num_parts,
        part_id=part_id,
        planned=planned,
    )
    return {
        "part": part_id,
        "total": s.total,
        "predicted": s.predicted,
        "skipped": s.skipped,
        "failed": s.failed,
        "errors": errors,
        "seconds": s.seconds,
        "worker_pid": os.getpid(),
        "precision": pred.precision,
    }


def _client(address: str):
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise RuntimeError(
            "--scheduler needs Dask distributed: pip install 'napari-cxrseg[cluster]' "
            "(or pip install 'dask[distributed]')"
        ) from None
    addr = str(address).strip()
    if addr == "local" or addr.startswith("local:"):
        n = int(addr.split(":", 1)[1]) if ":" in addr else 2
        import logging

        cluster = LocalCluster(
            n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.ERROR
        )
        return Client(cluster), cluster
    return Client(addr), None


def run_on_dask(
    inputs,
    out_dir,
    *,
    scheduler,
    model=None,
    device: str = "auto",
    precision: str = "auto",
    regions=None,
    thresholds=None,
    heatmaps: bool = False,
    heatmap_png: bool = False,
    batch_size: int = 8,
    postprocess: bool = True,
    overwrite: bool = False,
    mask_format: str = "png",
    num_parts: int | None = None,
    threads: int | None = None,
    progress: bool = True,
    log=None,
    refine: bool | None = None,
) -> dict:
    """Segment ``inputs`` on a Dask distributed cluster into ``out_dir``.

    Parameters
    ----------
    scheduler : str or distributed.Client
        A scheduler address (``tcp://host:8786``), ``local`` / ``local:N`` (a local cluster
        of N worker processes, started and stopped here) or a connected ``Client``.
    num_parts : int, optional
        Parts to split the inputs into (default: 4 per worker, at most one per image and
        at least one per 256 images), sent to the workers as they free up.
    threads : int, optional
        ``torch.set_num_threads`` on the workers.
    Other parameters
        As :func:`cxrseg.batch.run_predict`; the workers need the same file system
        paths as this process.

    Returns
    -------
    dict
        ``total``, ``predicted``, ``skipped``, ``failed``, ``parts``, ``rows``, ``errors``
        (lines) and ``workers`` (the process ids that ran parts).
    """
    from .batch import case_names, collect_inputs
    from .predict import resolve_checkpoint_path

    out_dir = Path(out_dir).expanduser()
    files = collect_inputs(inputs, exclude=out_dir)
    if not files:
        raise FileNotFoundError(f"no image found in {', '.join(map(str, inputs))}")
    planned = [(n, str(f)) for n, f in zip(case_names(files), files, strict=True)]
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in out_dir.iterdir():  # part files of an earlier split would be merged in
        if _PART.match(f.name):
            f.unlink(missing_ok=True)
    spec = {
        "out": str(out_dir.resolve()),
        "model": str(resolve_checkpoint_path(model)),
        "device": device,
        "precision": precision,
        "regions": regions,
        "thresholds": thresholds,
        "heatmaps": heatmaps,
        "heatmap_png": heatmap_png,
        "batch_size": int(batch_size),
        "postprocess": postprocess,
        "overwrite": overwrite,
        "mask_format": mask_format,
        "threads": threads,
        "refine": refine,
    }
    own = None
    if hasattr(scheduler, "submit"):
        client = scheduler
    else:
        client, own = _client(scheduler)
    try:
        n_workers = max(1, len(client.scheduler_info().get("workers", {})))
        if num_parts is None:
            num_parts = max(4 * n_workers, math.ceil(len(planned) / 256))
        num_parts = max(1, min(int(num_parts), len(planned)))
        from distributed import as_completed
        from tqdm.auto import tqdm

        futures = [
            client.submit(_run_part, spec, shard(planned, num_parts, k), num_parts, k, pure=False)
            for k in range(num_parts)
        ]
        bar = tqdm(total=len(planned), desc="predict (dask)", unit="img", disable=not progress, file=sys.stderr)
        results = []
        try:
            for fut in as_completed(futures):
                r = fut.result()
                results.append(r)
                bar.update(r["total"])
                for line in r["errors"]:
                    (log or (lambda m: tqdm.write(m, file=sys.stderr)))(line)
        finally:
            bar.close()
    finally:
        if own is not None:
            client.close()
            own.close()
    rows, n_err = merge_parts(out_dir, num_parts=num_parts)
    return {
        "total": sum(r["total"] for r in results),
        "predicted": sum(r["predicted"] for r in results),
        "skipped": sum(r["skipped"] for r in results),
        "failed": sum(r["failed"] for r in results),
        "parts": num_parts,
        "rows": rows,
        "error_rows": n_err,
        "errors": [e for r in results for e in r["errors"]],
        "workers": sorted({r["worker_pid"] for r in results}),
    }
