"""``cxrseg probe``: transforms, counterfactual edits, determinism, files, and that the
geometric probe tells a position-prior model from one that saw the chest move."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _tiny_model import make_tiny_checkpoint  # noqa: E402

from cxrseg.phantom import make_phantom, write_phantom_dataset  # noqa: E402
from cxrseg.probe import (  # noqa: E402
    ProbeGrid,
    ProbeSample,
    counterfactual_probe,
    geometric_probe,
    move_structure,
    remove_structure,
    run_probe,
    translation_drop,
    warp,
    write_report,
)
from cxrseg.regions import REGIONS  # noqa: E402
from cxrseg.training_arrays import ArrayData, sample_to_arrays  # noqa: E402


def _samples(seeds, size=64) -> list[ProbeSample]:
    out = []
    for s in seeds:
        ph = make_phantom(s, size=2 * size)
        img, msk = sample_to_arrays(ph.image, ph.masks, REGIONS, size)
        out.append(ProbeSample(f"P{s:03d}", img.astype(np.float32), msk >= 0.5, REGIONS))
    return out


def _centroid(mask):
    r, c = np.nonzero(mask)
    return r.mean(), c.mean()


# ------------------------------------------------------------------------- transforms


def test_warp_identity_keeps_image_and_masks():
    s = _samples([0])[0]
    img, m = warp(s.image, s.truth)
    np.testing.assert_allclose(img, s.image, atol=1e-5)
    np.testing.assert_array_equal(m, s.truth)


def test_warp_moves_image_and_masks_the_documented_way():
    img = np.zeros((64, 64), np.float32)
    mask = np.zeros((1, 64, 64), bool)
    img[20:28, 40:48] = 1
    mask[0, 20:28, 40:48] = True
    r0, c0 = _centroid(mask[0])
    moved, m = warp(img, mask, tx=0.125)  # 8 px right
    r1, c1 = _centroid(m[0])
    assert abs(c1 - c0 - 8) < 0.6 and abs(r1 - r0) < 0.6
    assert np.allclose(_centroid(moved > 0.5), (r1, c1), atol=0.6)
    _, m = warp(img, mask, ty=-0.125)  # 8 px up
    assert abs(_centroid(m[0])[0] - (r0 - 8)) < 0.6
    # clockwise on screen: a spot right of the centre and above it moves right and down
    _, m = warp(img, mask, angle_deg=30)
    r2, c2 = _centroid(m[0])
    assert r2 > r0 + 3
    _, m = warp(img, mask, scale=1.5)  # away from the centre
    r3, c3 = _centroid(m[0])
    assert c3 - 32 > 1.3 * (c0 - 32) and 32 - r3 > 1.3 * (32 - r0)


def test_grid_always_holds_the_reference_amount():
    g = ProbeGrid(translate_x=(0.1,), translate_y=(), scale=(0.9,), rotate=(5,))
    items = g.items()
    assert ("translate_x", 0.0) in items and ("translate_y", 0.0) in items
    assert ("scale", 1.0) in items and ("rotate", 0.0) in items
    assert len(items) == 7


# ------------------------------------------------------------------------- counterfactual


def _bar_image():
    yy, xx = np.mgrid[0:96, 0:96]
    background = (0.3 + 0.3 * xx / 96 + 0.1 * yy / 96).astype(np.float32)
    mask = np.zeros((96, 96), bool)
    mask[30:36, 20:70] = True
    img = background.copy()
    img[mask] += 0.4
    return img, mask, background


def test_remove_structure_fills_the_hole_from_its_surroundings_only():
    img, mask, background = _bar_image()
    out = remove_structure(img, mask, margin=2)
    from scipy import ndimage

    hole = ndimage.binary_dilation(mask, iterations=3)
    np.testing.assert_array_equal(out[~hole], img[~hole])
    # the bar (0.4 above its background) is gone: the fill is close to the background
    assert np.abs(out[mask] - background[mask]).mean() < 0.05
    assert np.abs(img[mask] - background[mask]).mean() > 0.35


def test_move_structure_puts_its_contrast_at_the_new_place():
    img, mask, background = _bar_image()
    moved, removed, new_mask = move_structure(img, mask, dy=30, dx=0, margin=2)
    np.testing.assert_array_equal(new_mask, np.roll(mask, 30, axis=0))
    assert np.abs(moved[mask] - background[mask]).mean() < 0.05
    assert (moved[new_mask] - background[new_mask]).mean() > 0.3
    np.testing.assert_array_equal(removed, remove_structure(img, mask, margin=2))


# ------------------------------------------------------------------------- with a model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from cxrseg.predict import Predictor

    path = make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny.safetensors")
    return Predictor(path, device="cpu", precision="fp32")


def test_probes_are_deterministic_and_rows_are_complete(tiny):
    samples = _samples([1, 2])
    grid = ProbeGrid(translate_x=(-0.1, 0.1), translate_y=(0.1,), scale=(0.9,), rotate=(10,))
    a = geometric_probe(tiny, samples, grid=grid)
    b = geometric_probe(tiny, samples, grid=grid)
    assert a == b
    assert len(a) == 2 * len(grid.items()) * len(REGIONS)
    assert {r["transform"] for r in a} == {"translate_x", "translate_y", "scale", "rotate"}
    c1 = counterfactual_probe(tiny, samples, seed=3)
    c2 = counterfactual_probe(tiny, samples, seed=3)
    c3 = counterfactual_probe(tiny, samples, seed=4)
    assert c1 == c2
    assert [r["shift_px"] for r in c1] != [r["shift_px"] for r in c3]
    assert {(r["condition"], r["place"]) for r in c1} == {
        ("original", "old"), ("removed", "old"), ("moved", "old"),
        ("original", "new"), ("removed", "new"), ("moved", "new"),
    }
    assert all(0 <= r["recall"] <= 1 and 0 <= r["mean_prob"] <= 1 for r in c1)


def test_wrong_sample_size_is_refused(tiny):
    s = _samples([1], size=96)
    with pytest.raises(ValueError, match="size=64"):
        geometric_probe(tiny, s, grid=ProbeGrid(translate_x=(), translate_y=(), scale=(), rotate=()))


def test_report_files(tiny, tmp_path):
    res = run_probe(tiny, _samples([1]), grid=ProbeGrid(translate_x=(0.1,), translate_y=(), scale=(), rotate=()))
    paths = write_report(res, tmp_path / "out")
    for k in ("geometric_csv", "geometric_png", "counterfactual_csv", "counterfactual_png", "report"):
        assert paths[k].is_file() and paths[k].stat().st_size > 0, k
    text = paths["report"].read_text()
    assert "## Geometric probe" in text and "## Counterfactual probe" in text
    assert "geometric.png" in text
    header = paths["geometric_csv"].read_text().splitlines()[0]
    assert header == "case,transform,amount,region,jaccard,truth_pixels,pred_pixels,visible"


def test_structures_leaving_the_image_are_flagged_not_blamed_on_the_model(tiny, tmp_path):
    from cxrseg.probe import read_rows

    grid = ProbeGrid(translate_x=(), translate_y=(-0.4,), scale=(0.7,), rotate=())
    res = run_probe(tiny, _samples([1]), grid=grid, counterfactual=False)
    vis = {(r["transform"], r["region"], r["amount"]): r["visible"] for r in res.geometric}
    assert vis[("translate_y", "left_lung", 0.0)] == 1.0
    assert vis[("scale", "left_lung", 0.7)] > 0.9  # smaller, but all of it still in the image
    vis = {(r["region"], r["amount"]): r["visible"] for r in res.geometric if r["transform"] == "translate_y"}
    assert vis[("left_clavicle", -0.4)] < 0.5 < vis[("heart", -0.4)]
    paths = write_report(res, tmp_path)
    text = paths["report"].read_text()
    assert "†" in text and "less than half of the structure" in text
    back = read_rows(paths["geometric_csv"])
    assert [(r["case"], r["region"], r["amount"], r["truth_pixels"]) for r in back] == [
        (r["case"], r["region"], r["amount"], r["truth_pixels"]) for r in res.geometric
    ]


def test_cli_probe_on_a_phantom_folder(tmp_path, monkeypatch, capsys):
    from cxrseg import cli

    root = tmp_path / "data"
    write_phantom_dataset(root, 2, seed=0, size=128)
    ckpt = make_tiny_checkpoint(tmp_path / "tiny.safetensors")
    argv = [
        "probe", "--data", str(root), "--model", str(ckpt), "--cases", "all", "--out", str(tmp_path / "p"),
        "--translate=-0.1,0.1", "--scale", "1.1", "--rotate", "5", "--threads", "1", "--precision", "fp32",
        "--device", "cpu",
    ]
    monkeypatch.setattr(sys, "argv", ["cxrseg"] + argv)
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "# Probe: position or anatomy?" in out
    assert (tmp_path / "p" / "geometric.csv").is_file() and (tmp_path / "p" / "report.md").is_file()


# ------------------------------------------------------------------------- can it tell?


def _train(images, masks, out_dir):
    from cxrseg.config import ModelConfig, TrainConfig
    from cxrseg.train import train_iter

    mc = ModelConfig(encoder_name="resnet18", decoder_channels=(16,) * 5, input_size=64)
    tc = TrainConfig(
        epochs=8, batch_size=4, optimizer="adamw", lr=1e-2, scheduler="none", aug_strength=0,
        precision="fp32", channels_last=False, seed=0, val_fraction=0,
    )
    data = ArrayData(
        images.astype(np.float16), masks.astype(np.float16), [f"P{i}" for i in range(len(images))], REGIONS
    )
    events = list(train_iter(mc, tc, data, None, out_dir, device="cpu"))
    return events[-1]["result"].last_path


def test_probe_tells_a_position_prior_from_a_model_trained_with_shifts(tmp_path):
    """Same phantoms, same number of steps: one model only ever sees centred chests, the
    other sees them shifted by up to a quarter of the side. Under translation the first
    must lose clearly more Jaccard than the second."""
    from cxrseg.predict import Predictor

    train = _samples(range(6))
    images = np.stack([s.image for s in train])
    masks = np.stack([s.truth for s in train]).astype(np.float32)
    rng = np.random.default_rng(0)
    si, sm = [], []
    for img, m in zip(images, masks, strict=True):
        for _ in range(4):
            tx, ty = rng.uniform(-0.25, 0.25, 2)
            a, b = warp(img, m, tx=tx, ty=ty)
            si.append(a)
            sm.append(b.astype(np.float32))
    centred = _train(np.repeat(images, 4, axis=0), np.repeat(masks, 4, axis=0), tmp_path / "centred")
    shifted = _train(np.stack(si), np.stack(sm), tmp_path / "shifted")
    test = _samples(range(100, 104))
    grid = ProbeGrid(translate_x=(-0.25, 0.25), translate_y=(-0.25, 0.25), scale=(), rotate=())
    drops = {}
    for name, path in (("centred", centred), ("shifted", shifted)):
        rows = geometric_probe(Predictor(path, device="cpu", precision="fp32"), test, grid=grid)
        drops[name] = translation_drop(rows, amount=0.25)
    print("translation drop", drops)
    assert drops["centred"] > 0.05, drops
    assert drops["centred"] > drops["shifted"] + 0.04, drops
