"""``cxrseg predict`` end to end on phantom files (JSRT .IMG, DICOM, PNG)."""

from __future__ import annotations

import csv
import json
import os
import shutil

import numpy as np
import pytest
from _tiny_model import make_tiny_checkpoint

from cxrseg.regions import REGIONS


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.safetensors")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """SCR layout: images/ (IMG 2048^2, DICOM 96^2, PNG 100x77) and masks/<region>/*.gif."""
    from PIL import Image

    from cxrseg.phantom import make_phantom, write_phantom_case

    root = tmp_path_factory.mktemp("data")
    write_phantom_case(root, "PH_IMG", 1, image_format="img", size=128)
    write_phantom_case(root, "PH_DCM", 2, image_format="dcm", size=96)
    ph = make_phantom(3, size=128)
    Image.fromarray(np.rint(ph.image[:100, :77] * 255).astype(np.uint8)).save(
        root / "images" / "PH_PNG.png"
    )
    return root


@pytest.fixture(scope="module")
def small(data, tmp_path_factory):
    """The PNG and DICOM cases only (fast)."""
    root = tmp_path_factory.mktemp("small")
    for name in ("PH_PNG.png", "PH_DCM.dcm"):
        shutil.copy(data / "images" / name, root / name)
    return root


EXPECTED = {  # case -> (height, width, spacing)
    "PH_IMG": (2048, 2048, 0.175),
    "PH_DCM": (96, 96, 0.35 * 1024 / 96),
    "PH_PNG": (100, 77, None),
}


def _cli(*argv):
    from cxrseg.cli import main

    return main(["predict", *map(str, argv)])


def _rows(out):
    with open(out / "predictions.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _mtimes(out):
    return {p: p.stat().st_mtime_ns for p in sorted((out / "masks").rglob("*.png"))}


def test_end_to_end(ckpt, data, tmp_path, capsys):
    from cxrseg.io import read_mask

    out = tmp_path / "out"
    rc = _cli(
        data,
        "--out",
        out,
        "--model",
        ckpt,
        "--heatmaps",
        "--heatmap-png",
        "--workers",
        "0",
        "--quiet",
        "--no-postprocess",
        "--precision",
        "fp32",
    )
    assert rc == 0
    assert "3 segmented" in capsys.readouterr().out
    rows = _rows(out)
    assert list(rows[0]) == [
        "case",
        "source",
        "region",
        "area_px",
        "area_mm2",
        "height",
        "width",
        "model_id",
        "threshold",
        "est_jaccard",
        "failing_checks",
    ]
    # one row per case and region; the masks/ folder of the data set was not taken as input
    assert sorted((r["case"], r["region"]) for r in rows) == sorted(
        (c, r) for c in EXPECTED for r in REGIONS
    )
    model_id = json.loads((out / ".done" / "PH_PNG.json").read_text())["model_id"]
    for row in rows:
        h, w, sp = EXPECTED[row["case"]]
        assert (int(row["height"]), int(row["width"])) == (h, w)
        assert row["model_id"] == model_id and float(row["threshold"]) == 0.5
        assert os.path.isfile(row["source"]) and os.path.basename(row["source"]).startswith(
            row["case"]
        )
        mask = read_mask(out / "masks" / row["region"] / f"{row['case']}.png")
        assert mask.shape == (h, w)  # native resolution
        assert int(row["area_px"]) == int(mask.sum())
        if sp is None:
            assert row["area_mm2"] == ""
        else:
            assert float(row["area_mm2"]) == pytest.approx(mask.sum() * sp * sp, rel=1e-3)
        heat = np.load(out / "heatmaps" / row["region"] / f"{row['case']}.npy")
        assert heat.dtype == np.float16 and heat.shape == (h, w)
        # without post-processing the mask is exactly the thresholded heatmap
        assert np.mean((heat.astype(np.float32) >= 0.5) != mask) < 1e-3
        assert (out / "heatmaps" / row["region"] / f"{row['case']}.png").is_file()
    assert not (out / "errors.csv").exists()
    assert any(0 < int(r["area_px"]) < int(r["height"]) * int(r["width"]) for r in rows)


def test_resume_skips_done_cases(ckpt, small, tmp_path, capsys):
    out = tmp_path / "out"
    args = (small, "--out", out, "--model", ckpt, "--workers", "0", "--quiet")
    assert _cli(*args) == 0
    first = _mtimes(out)
    rows1 = _rows(out)
    assert len(first) == 2 * 5 and len(rows1) == 10
    capsys.readouterr()
    assert _cli(*args) == 0
    assert "0 segmented, 2 already done" in capsys.readouterr().out
    assert _mtimes(out) == first and _rows(out) == rows1
    # delete one case's mask: only that case runs again
    (out / "masks" / "heart" / "PH_DCM.png").unlink()
    assert _cli(*args) == 0
    assert "1 segmented, 1 already done" in capsys.readouterr().out
    again = _mtimes(out)
    changed = {p.name for p in again if again[p] != first.get(p)}
    assert changed == {"PH_DCM.png"}
    assert sorted(map(sorted, map(dict.items, _rows(out)))) == sorted(
        map(sorted, map(dict.items, rows1))
    )
    # other settings (threshold) make the cases stale; --overwrite recomputes everything
    assert _cli(*args, "--threshold", "0.4") == 0
    assert "2 segmented" in capsys.readouterr().out
    assert {r["threshold"] for r in _rows(out)} == {"0.4"}
    assert _cli(*args, "--threshold", "0.4", "--overwrite") == 0
    assert "2 segmented, 0 already done" in capsys.readouterr().out


def test_killed_run_leaves_a_repairable_csv(ckpt, small, tmp_path, capsys):
    out = tmp_path / "out"
    args = (small, "--out", out, "--model", ckpt, "--workers", "0", "--quiet")
    assert _cli(*args) == 0
    rows = _rows(out)
    # as if killed: a case's marker half-written and the CSV gone
    (out / ".done" / "PH_PNG.json").write_text('{"version": 1, "case": "PH_')
    (out / "predictions.csv").unlink()
    assert _cli(*args) == 0
    assert "1 segmented, 1 already done" in capsys.readouterr().out
    assert sorted(map(sorted, map(dict.items, _rows(out)))) == sorted(
        map(sorted, map(dict.items, rows))
    )


def test_corrupt_files_are_reported_and_the_rest_done(ckpt, small, tmp_path, capsys):
    inp = tmp_path / "in"
    shutil.copytree(small, inp)
    (inp / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    (inp / "short.IMG").write_bytes(b"\x00" * 1000)
    out = tmp_path / "out"
    rc = _cli(inp, "--out", out, "--model", ckpt, "--workers", "1", "--batch-size", "2", "--quiet")
    assert rc == 1
    io = capsys.readouterr()
    assert "2 segmented" in io.out and "2 failed" in io.out
    assert "broken.png" in io.err and "short.IMG" in io.err
    with open(out / "errors.csv", newline="") as fh:
        errs = {os.path.basename(r["path"]): r["reason"] for r in csv.DictReader(fh)}
    assert set(errs) == {"broken.png", "short.IMG"}
    assert "8388608 bytes" in errs["short.IMG"]  # the reason says what was expected
    assert errs["broken.png"]
    assert {r["case"] for r in _rows(out)} == {"PH_PNG", "PH_DCM"}
    # a later run retries only the failures
    rc = _cli(inp, "--out", out, "--model", ckpt, "--workers", "0", "--quiet")
    assert rc == 1 and "0 segmented, 2 already done, 2 failed" in capsys.readouterr().out


def test_regions_subset_thresholds_and_gif(ckpt, data, tmp_path):
    out = tmp_path / "out"
    rc = _cli(
        data / "images" / "PH_PNG.png",
        data / "images" / "PH_DCM.dcm",
        "--out",
        out,
        "--model",
        ckpt,
        "--regions",
        "lungs,heart",
        "--threshold",
        "0.3,left_lung=0.6",
        "--mask-format",
        "gif",
        "--quiet",
    )
    assert rc == 0
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["heart", "left_lung", "right_lung"]
    assert (out / "masks" / "heart" / "PH_PNG.gif").is_file()
    th = {(r["case"], r["region"]): r["threshold"] for r in _rows(out)}
    assert len(th) == 6
    assert th[("PH_PNG", "left_lung")] == "0.6" and th[("PH_PNG", "heart")] == "0.3"


def test_duplicate_names_and_output_inside_input(ckpt, data, tmp_path, capsys):
    root = tmp_path / "in"
    for sub in ("a", "b"):
        (root / sub).mkdir(parents=True)
        shutil.copy(data / "images" / "PH_PNG.png", root / sub / "x.png")
    out = root / "results"
    assert _cli(root, "--out", out, "--model", ckpt, "--quiet", "--heatmap-png") == 0
    assert {r["case"] for r in _rows(out)} == {"a__x", "b__x"}
    capsys.readouterr()
    # the output folder (with its PNG previews) is not read as input on the next run
    assert _cli(root, "--out", out, "--model", ckpt, "--quiet", "--heatmap-png") == 0
    assert "2 image(s): 0 segmented, 2 already done" in capsys.readouterr().out


def test_usage_errors_exit_2(ckpt, data, tmp_path, capsys):
    import torch

    pickle = tmp_path / "stolen_weights.pt"
    torch.save({"w": torch.zeros(3)}, pickle)
    img = data / "images" / "PH_PNG.png"
    assert _cli(img, "--out", tmp_path / "o1", "--model", pickle) == 2
    err = capsys.readouterr().err
    assert "stolen_weights.pt" in err and "pickle" in err
    assert _cli(tmp_path / "nope.png", "--out", tmp_path / "o2", "--model", ckpt) == 2
    assert "nope.png" in capsys.readouterr().err
    assert _cli(img, "--out", tmp_path / "o3", "--model", ckpt, "--threshold", "2") == 2
    assert _cli(img, "--out", tmp_path / "o4", "--model", ckpt, "--regions", "spleen") == 2
    assert _cli(img, "--out", tmp_path / "o6", "--model", ckpt, "--streams", "0") == 2
    assert "--streams must be >= 1" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _cli(empty, "--out", tmp_path / "o5", "--model", ckpt) == 2
    assert "no image found" in capsys.readouterr().err


def test_case_names():
    from pathlib import Path

    from cxrseg.batch import case_names

    files = [
        Path("/d/a/img/x.png"),
        Path("/d/b/img/x.png"),
        Path("/d/c/y.png"),
        Path("/d/c/y.dcm"),
        Path("/d/c/we ird.png"),
    ]
    assert case_names(files) == ["a__img__x", "b__img__x", "y_png", "y_dcm", "we_ird"]
