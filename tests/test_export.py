"""cxrseg export: fp16 shipping checkpoints keep metadata and carry the evaluation summary."""

import csv

import numpy as np
import pytest
from _tiny_model import make_tiny_checkpoint

from cxrseg.cli import main
from cxrseg.export import export_checkpoint, summarize_evaluation
from cxrseg.model import load_checkpoint, read_metadata


def _write_eval_csv(path):
    rows = [
        {"case": "A", "region": "heart", "jaccard": 0.8, "dice": 0.9, "mad_mm": 1.0, "hd95_mm": 2.0},
        {"case": "B", "region": "heart", "jaccard": 0.6, "dice": 0.7, "mad_mm": 3.0, "hd95_mm": 4.0},
    ]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_summarize_evaluation_mean_sd(tmp_path):
    _write_eval_csv(tmp_path / "e.csv")
    s = summarize_evaluation(tmp_path / "e.csv")
    mean, sd, n = s["heart"]["jaccard"]
    assert n == 2 and mean == pytest.approx(0.7) and sd == pytest.approx(np.std([0.8, 0.6], ddof=1), abs=1e-4)


def test_export_half_keeps_metadata_and_outputs(tmp_path):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    src = make_tiny_checkpoint(tmp_path / "src.safetensors", metadata={"val_cases": ["X1", "X2"]})
    _write_eval_csv(tmp_path / "e.csv")
    dst = export_checkpoint(src, tmp_path / "out.safetensors", evaluation=tmp_path / "e.csv")
    meta = read_metadata(dst)
    src_meta = read_metadata(src)
    assert meta["dtype"] == "float16"
    assert meta["val_cases"] == ["X1", "X2"]
    assert meta["exported_from"] == src_meta["model_id"]
    assert meta["evaluation"]["per_region"]["heart"]["jaccard"][0] == pytest.approx(0.7)
    assert dst.stat().st_size < src.stat().st_size * 0.6
    a, b = load_checkpoint(src), load_checkpoint(dst)
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        pa, pb = torch.sigmoid(a.model(x)), torch.sigmoid(b.model(x))
    assert float((pa - pb).abs().max()) < 0.02


def test_export_cli_refuses_pickle(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x80\x04K\x01.")
    rc = main(["export", str(bad), str(tmp_path / "o.safetensors")])
    assert rc == 2
    assert "bad.pt" in capsys.readouterr().err
    assert not (tmp_path / "o.safetensors").exists()
