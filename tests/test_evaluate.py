"""``cxrseg evaluate`` / :mod:`cxrseg.evaluate` on tiny checkpoints and phantom cases."""

from __future__ import annotations

import csv
import math
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cxrseg.config import ModelConfig  # noqa: E402
from cxrseg.evaluate import (  # noqa: E402
    CSV_COLUMNS,
    EvalResult,
    evaluate_masks,
    evaluate_model,
    mask_spacing,
)
from cxrseg.io import CXRImage  # noqa: E402
from cxrseg.metrics import all_metrics  # noqa: E402
from cxrseg.phantom import make_phantom, write_phantom_case, write_phantom_dataset  # noqa: E402
from cxrseg.regions import REGIONS  # noqa: E402

TINY = dict(encoder_name="resnet18", decoder_channels=(16, 16, 16, 16, 16), input_size=64)


def _checkpoint(path, regions=REGIONS, val_cases=("PHANTOM002",), seed=0):
    from cxrseg.model import build_model, save_checkpoint

    cfg = ModelConfig(regions=regions, **TINY)
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    # bias the outputs so that the random model predicts something non-trivial
    with torch.no_grad():
        model.segmentation_head[0].bias.fill_(0.3)
    meta = {"val_cases": list(val_cases)} if val_cases else {}
    return save_checkpoint(model, cfg, path, metadata=meta)


@pytest.fixture(scope="module")
def png_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("png")
    write_phantom_dataset(root, 2, seed=3, size=128)
    return root


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return _checkpoint(tmp_path_factory.mktemp("ck") / "best.safetensors")


def _expected_rows(ckpt_path, case, spacing, regions=REGIONS):
    """What evaluate_model should report for one case, computed step by step."""
    from cxrseg.predict import get_predictor, threshold

    pred = get_predictor(ckpt_path, device="cpu", precision="fp32")
    img = case.load_image()
    truth = case.load_masks(regions)
    probs = pred.predict(img.data, regions=regions)
    shape = truth[regions[0]].shape
    if img.shape != shape:
        k = img.shape[0] // shape[0]
        probs = {r: p.reshape(shape[0], k, shape[1], k).mean((1, 3)) for r, p in probs.items()}
    masks = threshold(probs, pred.thresholds)
    return {r: all_metrics(masks[r], truth[r], spacing=spacing) for r in regions}


# ------------------------------------------------------------------------ evaluate_masks


def test_evaluate_masks_rows_groups_units_and_resampling():
    ph = make_phantom(1, size=64)
    truth = ph.masks
    rows = evaluate_masks(truth, truth, (0.5, 0.5), case="X")
    assert [r["region"] for r in rows] == list(REGIONS)
    for r in rows:
        assert r["case"] == "X" and r["units"] == "mm"
        assert (r["jaccard"], r["dice"], r["mad_mm"], r["hd95_mm"]) == (1.0, 1.0, 0.0, 0.0)

    # a shifted heart: metrics equal all_metrics with that spacing
    pred = dict(truth)
    pred["heart"] = np.roll(truth["heart"], 2, axis=1)
    rows = evaluate_masks(pred, truth, (0.5, 2.0), groups=True)
    heart = next(r for r in rows if r["region"] == "heart")
    ref = all_metrics(pred["heart"], truth["heart"], spacing=(0.5, 2.0))
    assert {k: heart[k] for k in ref} == ref
    assert heart["jaccard"] < 1 and 0 < heart["hd95_mm"] <= 4.0  # at most 2 columns of 2 mm
    groups = [r for r in rows if r["region"] in ("lungs", "clavicles")]
    assert [g["region"] for g in groups] == ["lungs", "clavicles"]
    assert groups[0]["jaccard"] == 1.0

    # no spacing -> pixels
    assert {r["units"] for r in evaluate_masks(pred, truth, None)} == {"px"}

    # a prediction at twice the resolution is brought to the truth's grid
    big = {r: np.repeat(np.repeat(m, 2, 0), 2, 1) for r, m in pred.items()}
    rows2 = evaluate_masks(big, truth, (0.5, 2.0))
    for a, b in zip(rows2, evaluate_masks(pred, truth, (0.5, 2.0)), strict=True):
        assert a == b

    # only the regions both sides have, any spelling
    rows3 = evaluate_masks(
        {"Left Lung": truth["left_lung"]},
        {"left_lung": truth["left_lung"], "heart": truth["heart"]},
    )
    assert [r["region"] for r in rows3] == ["left_lung"]
    with pytest.raises(ValueError, match="field of view"):
        evaluate_masks({"heart": np.zeros((64, 32), bool)}, {"heart": truth["heart"]})


def test_mask_spacing_rules():
    img = CXRImage(np.zeros((2048, 2048), np.float32), (0.175, 0.175))
    assert mask_spacing(img, (1024, 1024), "JPCLN001") == ((0.35, 0.35), "image")
    nosp = CXRImage(np.zeros((2048, 2048), np.float32), None)
    assert mask_spacing(nosp, (1024, 1024), "JPCNN010") == ((0.35, 0.35), "jsrt")
    assert mask_spacing(nosp, (1024, 1024), "PHANTOM001") == (None, "unknown")
    assert mask_spacing(
        CXRImage(np.zeros((512, 512), np.float32), None), (512, 512), "JPCLN001"
    ) == (None, "unknown")
    aniso = CXRImage(np.zeros((300, 200), np.float32), (0.2, 0.1))
    assert mask_spacing(aniso, (150, 100)) == ((0.4, 0.2), "image")


# ------------------------------------------------------------------------ evaluate_model


def test_evaluate_model_default_cases_are_the_checkpoints_validation_cases(png_root, ckpt):
    from cxrseg.dataset import DatasetIndex

    res = evaluate_model(ckpt, png_root, device="cpu", precision="fp32")
    assert isinstance(res, EvalResult)
    assert res.cases == ["PHANTOM002"]
    assert "validation" in res.case_source
    assert [(r["case"], r["region"]) for r in res.rows] == [("PHANTOM002", r) for r in REGIONS]
    assert res.units == "px"  # PNG phantoms have no pixel spacing and are not JSRT cases
    assert any("pixels" in n for n in res.notes)
    expected = _expected_rows(ckpt, DatasetIndex(png_root)["PHANTOM002"], (1.0, 1.0))
    for row in res.rows:
        for k, v in expected[row["region"]].items():
            assert row[k] == pytest.approx(v, nan_ok=True), (row["region"], k)
    assert {r["region"] for r in res.group_rows} == {"lungs", "clavicles"}


def test_evaluate_all_cases_summary_and_csv(png_root, ckpt, tmp_path):
    res = evaluate_model(
        ckpt, png_root, cases="all", device="cpu", precision="fp32", postprocess=True
    )
    assert res.cases == ["PHANTOM001", "PHANTOM002"]
    assert len(res.rows) == 10 and res.postprocessed
    assert set(res.summary()) == set(REGIONS)
    s = res.summary(groups=True)
    assert set(s) == set(REGIONS) | {"lungs", "clavicles"}
    for key, metrics in s.items():
        assert set(metrics) == {"jaccard", "dice", "mad_mm", "hd95_mm"}
        vals = [r["jaccard"] for r in res.rows + res.group_rows if r["region"] == key]
        assert metrics["jaccard"][0] == pytest.approx(np.mean(vals))
        assert metrics["jaccard"][1] == pytest.approx(np.std(vals, ddof=1))
    path = res.to_csv(tmp_path / "out" / "res.csv")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0].keys()) == CSV_COLUMNS
    assert len(rows) == 10
    assert rows[0]["case"] == "PHANTOM001" and rows[0]["region"] == "heart"
    assert float(rows[0]["jaccard"]) == pytest.approx(res.rows[0]["jaccard"], abs=1e-6)
    table = res.format_table()
    for word in (
        "Jaccard",
        "HD95",
        "van Ginneken",
        "human observer",
        "InvertedNet",
        "Frid-Adar",
        "lung fields",
    ):
        assert word in table
    assert "0.946 ± 0.018" in table and "0.736" in table


def test_evaluate_native_resolution_and_mm_spacing(tmp_path):
    """A JSRT-format image (2048 x 2048, 0.175 mm) with 128 x 128 masks: the maps are
    area-averaged to the mask grid and distances are in mm at 0.175 * 16 = 2.8 mm."""
    from cxrseg.dataset import DatasetIndex

    root = tmp_path / "img"
    write_phantom_case(root, "PHIMG001", 4, image_format="img", size=128)
    ck = _checkpoint(tmp_path / "ck.safetensors", val_cases=None)
    res = evaluate_model(ck, root, regions="heart,left_lung", device="cpu", precision="fp32")
    assert res.case_source.startswith("all cases")
    assert res.units == "mm" and [r["region"] for r in res.rows] == ["heart", "left_lung"]
    expected = _expected_rows(
        ck, DatasetIndex(root)["PHIMG001"], (2.8, 2.8), regions=("heart", "left_lung")
    )
    for row in res.rows:
        for k, v in expected[row["region"]].items():
            assert row[k] == pytest.approx(v, rel=1e-6, nan_ok=True), (row["region"], k)
    assert res.group_rows == []  # only one lung: no lungs group


def test_evaluate_per_region_checkpoints_and_errors(png_root, tmp_path):
    per = tmp_path / "per"
    _checkpoint(per / "heart" / "best.safetensors", regions=("heart",))
    _checkpoint(per / "left_lung" / "best.safetensors", regions=("left_lung",), seed=1)
    res = evaluate_model(
        per, png_root, cases="PHANTOM001,PHANTOM002", device="cpu", precision="fp32"
    )
    assert res.regions == ("heart", "left_lung")
    assert len(res.rows) == 4 and len(res.model_ids) == 2
    with pytest.raises(ValueError, match="do not predict"):
        evaluate_model(per, png_root, regions="right_lung", device="cpu")
    with pytest.raises(KeyError, match="NOPE"):
        evaluate_model(per, png_root, cases=["NOPE"], device="cpu")
    noval = _checkpoint(tmp_path / "noval.safetensors", val_cases=None)
    with pytest.raises(ValueError, match="no validation cases"):
        evaluate_model(noval, png_root, cases="val", device="cpu")
    # validation cases that are not in the data folder are an error, not a silent "all"
    other = _checkpoint(tmp_path / "other.safetensors", val_cases=("JPCLN001",))
    with pytest.raises(KeyError, match="--cases all"):
        evaluate_model(other, png_root, device="cpu")
    # thresholds override
    res_hi = evaluate_model(
        per, png_root, cases="all", regions="heart", device="cpu", precision="fp32", thresholds=0.99
    )
    assert res_hi.thresholds == {"heart": 0.99}


def test_cli_evaluate(png_root, ckpt, tmp_path, monkeypatch, capsys):
    from cxrseg import cli

    out = tmp_path / "r.csv"
    argv = [
        "evaluate",
        "--model",
        str(ckpt),
        "--data",
        str(png_root),
        "--cases",
        "all",
        "--out",
        str(out),
        "--device",
        "cpu",
        "--precision",
        "fp32",
        "--quiet",
    ]
    monkeypatch.setattr(sys, "argv", ["cxrseg"] + argv)
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "van Ginneken" in text and "InvertedNet" in text and "Frid-Adar" in text
    assert "left lung (patient)" in text
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 10 and set(rows[0]) == set(CSV_COLUMNS)
    assert all(0.0 <= float(r["jaccard"]) <= 1.0 for r in rows)
    assert all(r["units"] == "px" for r in rows)
    assert all(math.isfinite(float(r["dice"])) for r in rows)

    # a bad request exits with 2 and a message
    argv = [
        "evaluate",
        "--model",
        str(ckpt),
        "--data",
        str(png_root),
        "--regions",
        "bogus",
        "--quiet",
    ]
    monkeypatch.setattr(sys, "argv", ["cxrseg"] + argv)
    assert cli.main(argv) == 2
    assert "bogus" in capsys.readouterr().err
