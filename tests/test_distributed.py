"""Sharded prediction (--num-parts/--part-id), the merge of the parts' CSVs, and the
Dask distributed runner on a local cluster of two worker processes.

Outputs are compared byte for byte with a single-process run at batch size 1: oneDNN may
choose other convolution kernels for another batch size, which changes the last bits of
a float16 heat-map (masks and CSV rows were identical at batch 2 as well)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from _tiny_model import make_tiny_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.safetensors")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Seven phantom PNGs of different sizes, two of them with the same stem in
    different sub-folders (their case names depend on the whole list)."""
    from PIL import Image

    from cxrseg.phantom import make_phantom

    root = tmp_path_factory.mktemp("images")
    sizes = [(96, 96), (100, 77), (64, 90), (128, 128), (80, 80), (70, 100), (96, 64)]
    for i, (h, w) in enumerate(sizes):
        ph = make_phantom(i, size=128)
        sub = root / ("a" if i == 5 else "b" if i == 6 else "")
        sub.mkdir(exist_ok=True)
        name = "same.png" if i >= 5 else f"case{i}.png"
        Image.fromarray(np.rint(ph.image[:h, :w] * 255).astype(np.uint8)).save(sub / name)
    return root


def _tree(out: Path) -> dict[str, str]:
    """Relative path -> sha256 of every mask/heat-map file under ``out``."""
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.parts[len(out.parts)] in ("masks", "heatmaps")
    }


def _single(ckpt, folder, out):
    from cxrseg.batch import run_predict
    from cxrseg.predict import get_predictor

    pred = get_predictor(ckpt, device="cpu", precision="fp32")
    return run_predict([folder], out, predictor=pred, batch_size=1, workers=0, progress=False, heatmaps=True)


def test_shard_is_a_partition():
    from cxrseg.distributed import shard

    items = list(range(23))
    parts = [shard(items, 4, k) for k in range(4)]
    assert sorted(x for p in parts for x in p) == items
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert shard(items, 4, 1) == shard(items, 4, 1)  # deterministic
    with pytest.raises(ValueError, match="part-id"):
        shard(items, 4, 4)
    with pytest.raises(ValueError, match="num-parts"):
        shard(items, 0, 0)


def test_parts_then_merge_equal_a_single_run(ckpt, folder, tmp_path, capsys):
    from cxrseg.cli import main

    single = tmp_path / "single"
    _single(ckpt, folder, single)
    sharded = tmp_path / "sharded"
    for k in range(3):
        rc = main(["predict", str(folder), "--out", str(sharded), "--model", str(ckpt), "--device", "cpu",
                   "--precision", "fp32", "--batch-size", "1", "--workers", "0", "--heatmaps", "--quiet",
                   "--num-parts", "3", "--part-id", str(k)])
        assert rc == 0
        if k == 0:  # before the merge: the parts' CSVs only, no predictions.csv rows of others
            assert (sharded / "predictions.part-0-of-3.csv").is_file()
    part_rows = sum(
        len((sharded / f"predictions.part-{k}-of-3.csv").read_text().splitlines()) - 1 for k in range(3)
    )
    assert part_rows == 7 * 5
    assert main(["predict-merge", str(sharded)]) == 0
    assert (sharded / "predictions.csv").read_text() == (single / "predictions.csv").read_text()
    assert _tree(sharded) == _tree(single)
    assert {"a__same", "b__same"} <= {p.stem for p in (sharded / "masks" / "heart").iterdir()}
    # a missing part is an error unless asked for
    (sharded / "predictions.part-1-of-3.csv").unlink()
    assert main(["predict-merge", str(sharded)]) == 2
    assert "parts 1 of 3" in capsys.readouterr().err


def test_bad_part_options_are_usage_errors(ckpt, folder, tmp_path, capsys):
    from cxrseg.cli import main

    rc = main(["predict", str(folder), "--out", str(tmp_path / "o"), "--model", str(ckpt),
               "--num-parts", "2", "--part-id", "2"])
    assert rc == 2 and "--part-id must be in 0..1" in capsys.readouterr().err


@pytest.mark.slow
def test_dask_local_cluster_equals_single_run_and_resumes(ckpt, folder, tmp_path):
    pytest.importorskip("distributed")
    from distributed import Client, LocalCluster

    from cxrseg.distributed import run_on_dask

    single = tmp_path / "single"
    _single(ckpt, folder, single)
    out = tmp_path / "dask"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        kw = dict(scheduler=client, model=str(ckpt), device="cpu", precision="fp32", batch_size=1,
                  heatmaps=True, progress=False, threads=1)
        s = run_on_dask([folder], out, num_parts=4, **kw)
        assert (s["total"], s["predicted"], s["failed"], s["parts"]) == (7, 7, 0, 4)
        assert len(s["workers"]) == 2  # both worker processes took parts
        assert (out / "predictions.csv").read_text() == (single / "predictions.csv").read_text()
        assert _tree(out) == _tree(single)
        # resumable: a second run skips everything; a lost mask is redone
        lost = out / "masks" / "heart" / "case3.png"
        lost.unlink()
        s2 = run_on_dask([folder], out, **kw)
        assert (s2["predicted"], s2["skipped"]) == (1, 6)
        assert _tree(out) == _tree(single)
        assert (out / "predictions.csv").read_text() == (single / "predictions.csv").read_text()
