"""The prediction engine (cxrseg.predict) and mask clean-up (cxrseg.postprocess)."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
from _tiny_model import make_tiny_checkpoint

from cxrseg.regions import REGIONS


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.safetensors")


@pytest.fixture(scope="module")
def pred32(ckpt):
    from cxrseg.predict import Predictor

    return Predictor(ckpt, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def phantom():
    from cxrseg.phantom import make_phantom

    return make_phantom(3, size=128)


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("shape", [(64, 64), (100, 77), (37, 129), (65, 33), (200, 200)])
def test_probability_maps_have_the_input_shape(pred32, phantom, shape):
    img = np.resize(phantom.image, shape).astype(np.float32)
    out = pred32.predict(img)
    assert tuple(out) == REGIONS
    for r, p in out.items():
        assert p.shape == shape, r
        assert p.dtype == np.float32
        assert np.isfinite(p).all() and p.min() >= 0.0 and p.max() <= 1.0


def test_float16_output_and_region_subset(pred32, phantom):
    out = pred32.predict(phantom.image, regions="lungs", dtype=np.float16)
    assert list(out) == ["left_lung", "right_lung"]
    assert all(p.dtype == np.float16 and p.shape == phantom.image.shape for p in out.values())
    full = pred32.predict(phantom.image)
    np.testing.assert_allclose(out["left_lung"].astype(np.float32), full["left_lung"], atol=1e-3)


def test_predict_batch_matches_single_images(pred32, phantom):
    imgs = [phantom.image, phantom.image[:90, :70], phantom.image[10:, :]]
    batch = pred32.predict_batch(imgs, batch_size=2)
    assert len(batch) == 3
    for img, got in zip(imgs, batch, strict=True):
        single = pred32.predict(img)
        for r in REGIONS:
            assert got[r].shape == img.shape
            np.testing.assert_allclose(got[r], single[r], atol=1e-4)


def test_integer_images_are_scaled_and_bad_inputs_refused(pred32, phantom):
    u8 = np.rint(phantom.image * 255).astype(np.uint8)
    a = pred32.predict(u8)["heart"]
    b = pred32.predict(u8.astype(np.float32) / 255)["heart"]
    np.testing.assert_allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError, match="2-D"):
        pred32.predict(np.zeros((8, 8, 3), np.float32))


def test_region_the_model_lacks_is_refused(tmp_path, phantom):
    from cxrseg.predict import Predictor

    heart_only = Predictor(
        make_tiny_checkpoint(tmp_path / "heart.safetensors", regions=("heart",)),
        device="cpu",
        precision="fp32",
    )
    assert heart_only.regions == ("heart",)
    assert list(heart_only.predict(phantom.image)) == ["heart"]
    with pytest.raises(ValueError, match="does not predict left_lung"):
        heart_only.predict(phantom.image, regions="lungs")


# ----------------------------------------------------------------------------- numerics


def test_engine_equals_the_training_transforms_and_the_unfolded_model(pred32, ckpt, phantom):
    """Pre/post-processing are cxrseg.transforms' and folding batch norms changes nothing."""
    import torch

    from cxrseg.model import load_checkpoint
    from cxrseg.transforms import image_to_input, normalize, output_to_image

    assert pred32.folded_batchnorm > 0
    ck = load_checkpoint(ckpt)
    img = phantom.image[:120, :97]
    x, info = image_to_input(img, ck.config.input_size)
    with torch.no_grad():
        t = normalize(torch.from_numpy(x)[None, None], ck.config.mean, ck.config.std)
        ref = output_to_image(torch.sigmoid(ck.model(t))[0], info).numpy()
    got = pred32.predict(img)
    for j, r in enumerate(ck.config.regions):
        np.testing.assert_allclose(got[r], ref[j], atol=2e-5)


def test_bf16_agrees_with_fp32(ckpt, pred32, phantom):
    from cxrseg.predict import Predictor, threshold

    pb = Predictor(ckpt, device="cpu", precision="bf16")
    assert pb.precision == "bf16"
    a = pred32.predict(phantom.image)
    b = pb.predict(phantom.image)
    ma, mb = threshold(a), threshold(b)
    for r in REGIONS:
        assert np.abs(a[r] - b[r]).max() < 0.05, r
        assert np.abs(a[r] - b[r]).mean() < 0.01, r
        assert np.mean(ma[r] != mb[r]) < 0.01, r


def test_fp16_on_cpu_falls_back_to_fp32(ckpt):
    from cxrseg.predict import Predictor

    assert Predictor(ckpt, device="cpu", precision="fp16").precision == "fp32"
    with pytest.raises(ValueError, match="precision"):
        Predictor(ckpt, device="cpu", precision="int4")


# ----------------------------------------------------------------------------- checkpoints


def test_missing_shipped_model_is_a_clear_error(tmp_path, monkeypatch):
    import cxrseg.model
    import cxrseg.predict as P
    from cxrseg.model import CheckpointError

    monkeypatch.setattr(cxrseg.model, "default_checkpoint_path", lambda: tmp_path / "nothing.safetensors")
    with pytest.raises(CheckpointError, match="shipped model"):
        P.Predictor()


def test_pickle_checkpoint_is_refused(tmp_path):
    import torch

    from cxrseg.model import CheckpointError
    from cxrseg.predict import Predictor

    bad = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, bad)
    with pytest.raises(CheckpointError, match="weights.pt"):
        Predictor(bad, device="cpu")


def test_training_folder_resolves_to_best(tmp_path):
    from cxrseg.predict import resolve_checkpoint_path

    make_tiny_checkpoint(tmp_path / "best.safetensors")
    assert resolve_checkpoint_path(tmp_path) == (tmp_path / "best.safetensors").resolve()


def test_checkpoint_folder_file_names(tmp_path):
    from cxrseg.model import (
        CHECKPOINT_FILE_NAMES,
        DEFAULT_MODEL_NAME,
        CheckpointError,
        checkpoint_in_folder,
        load_checkpoint,
        resolve_checkpoint_path,
    )

    assert CHECKPOINT_FILE_NAMES[0] == "best.safetensors" and CHECKPOINT_FILE_NAMES[-1] == "last.safetensors"
    # a run that has no best epoch yet: its last one; a saved model.safetensors wins over it
    make_tiny_checkpoint(tmp_path / "last.safetensors")
    assert resolve_checkpoint_path(tmp_path) == (tmp_path / "last.safetensors").resolve()
    make_tiny_checkpoint(tmp_path / DEFAULT_MODEL_NAME)
    assert checkpoint_in_folder(tmp_path) == tmp_path / DEFAULT_MODEL_NAME
    make_tiny_checkpoint(tmp_path / "model.safetensors")
    assert checkpoint_in_folder(tmp_path) == tmp_path / "model.safetensors"
    make_tiny_checkpoint(tmp_path / "best.safetensors")
    assert checkpoint_in_folder(tmp_path) == tmp_path / "best.safetensors"
    assert load_checkpoint(tmp_path).path == tmp_path / "best.safetensors"
    # a folder without any of the names: an error that names them; .pt files are not looked for
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "weights.pt").write_bytes(b"x")
    assert checkpoint_in_folder(empty) is None
    with pytest.raises(CheckpointError, match="best.safetensors.*last.safetensors"):
        resolve_checkpoint_path(empty)
    with pytest.raises(CheckpointError, match="not found"):
        resolve_checkpoint_path(tmp_path / "missing.safetensors")


# ----------------------------------------------------------------------------- cache


def test_predictor_cache(ckpt, tmp_path):
    import shutil

    from cxrseg import predict as P

    P.clear_cache()
    a = P.get_predictor(ckpt, device="cpu", precision="fp32")
    assert P.get_predictor(str(ckpt), device="cpu", precision="fp32") is a
    assert P.get_predictor(ckpt, device="cpu", precision="bf16") is not a
    got = []
    threads = [
        threading.Thread(
            target=lambda: got.append(P.get_predictor(ckpt, device="cpu", precision="fp32"))
        )
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(g is a for g in got)
    # a rewritten checkpoint (new modification time) is loaded afresh
    copy = tmp_path / "copy.safetensors"
    shutil.copy(ckpt, copy)
    c1 = P.get_predictor(copy, device="cpu", precision="fp32")
    st = os.stat(copy)
    os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert P.get_predictor(copy, device="cpu", precision="fp32") is not c1
    P.clear_cache()
    assert P.get_predictor(ckpt, device="cpu", precision="fp32") is not a
    # module-level predict() uses the cache
    out = P.predict(
        np.zeros((40, 50), np.float32),
        checkpoint=ckpt,
        device="cpu",
        precision="fp32",
        regions="heart",
    )
    assert list(out) == ["heart"] and out["heart"].shape == (40, 50)
    P.clear_cache()


# ----------------------------------------------------------------------------- thresholds


def test_threshold():
    from cxrseg.predict import threshold

    p = {"heart": np.array([[0.2, 0.5, 0.7]]), "left_lung": np.array([[0.2, 0.5, 0.7]])}
    assert threshold(p)["heart"].tolist() == [[False, True, True]]
    assert threshold(p, 0.6)["left_lung"].tolist() == [[False, False, True]]
    out = threshold(p, {"Heart": 0.1, "left lung": 0.65})
    assert out["heart"].tolist() == [[True, True, True]]
    assert out["left_lung"].tolist() == [[False, False, True]]
    assert out["heart"].dtype == bool


def test_parse_thresholds():
    from cxrseg.predict import parse_thresholds

    regs = ("heart", "left_clavicle", "left_lung")
    assert parse_thresholds(None, regs) == {"heart": 0.5, "left_clavicle": 0.5, "left_lung": 0.5}
    assert parse_thresholds("0.4", regs)["left_lung"] == 0.4
    got = parse_thresholds("heart=0.3, left clavicle=0.6", regs, default={"left_lung": 0.45})
    assert got == {"heart": 0.3, "left_clavicle": 0.6, "left_lung": 0.45}
    assert parse_thresholds("0.45,heart=0.4", regs) == {
        "heart": 0.4,
        "left_clavicle": 0.45,
        "left_lung": 0.45,
    }
    assert parse_thresholds("right_lung=0.2", regs)["heart"] == 0.5  # other regions ignored
    for bad in ("1.5", "heart=0", "spleen=0.3", "heart=abc"):
        with pytest.raises(ValueError):
            parse_thresholds(bad, regs)


# ----------------------------------------------------------------------------- postprocess


def _disk(shape, centre, radius):
    rr, cc = np.ogrid[: shape[0], : shape[1]]
    return (rr - centre[0]) ** 2 + (cc - centre[1]) ** 2 <= radius**2


def test_postprocess_keeps_largest_component_and_fills_holes():
    from cxrseg.postprocess import postprocess

    shape = (60, 80)
    big = _disk(shape, (30, 25), 15)
    big &= ~_disk(shape, (30, 25), 4)  # a hole
    small = _disk(shape, (10, 70), 4)
    heart = big | small
    clav = np.zeros(shape, bool)
    clav[5:8, 5:30] = True  # the larger bar
    clav[20:22, 60:70] = True  # a smaller one
    inp = {"heart": heart.copy(), "left_clavicle": clav.copy(), "right_lung": np.zeros(shape, bool)}
    out = postprocess(inp)
    assert out["heart"].dtype == bool
    np.testing.assert_array_equal(out["heart"], _disk(shape, (30, 25), 15))
    expect = np.zeros(shape, bool)
    expect[5:8, 5:30] = True
    np.testing.assert_array_equal(out["left_clavicle"], expect)
    assert not out["right_lung"].any()
    np.testing.assert_array_equal(inp["heart"], heart)  # input untouched
    only_fill = postprocess(inp, largest_component=False)["heart"]
    assert only_fill[10, 70] and only_fill[30, 25]
    only_cc = postprocess(inp, fill_holes=False)["heart"]
    assert not only_cc[10, 70] and not only_cc[30, 25]
    same = postprocess(inp, largest_component=False, fill_holes=False)["heart"]
    np.testing.assert_array_equal(same, heart)


def test_fill_holes_matches_scipy_and_keeps_border_openings():
    from scipy import ndimage

    from cxrseg.postprocess import fill_holes, largest_component

    rng = np.random.default_rng(0)
    for k in range(25):
        m = ndimage.binary_opening(rng.random((41, 57)) > 0.4)
        if k % 3 == 0:
            m[0, :] = True
        if k % 4 == 0:
            m[:, -1] = True
        np.testing.assert_array_equal(fill_holes(m), ndimage.binary_fill_holes(m))
    # a notch open to the image border is not a hole
    u = np.zeros((10, 10), bool)
    u[:, 2:8] = True
    u[:5, 4:6] = False
    np.testing.assert_array_equal(fill_holes(u), u)
    # 8-connected diagonal pixels form one component
    d = np.eye(6, dtype=bool)
    np.testing.assert_array_equal(largest_component(d), d)
    assert not fill_holes(np.zeros((5, 5), bool)).any()


# ------------------------------------------------------------- masks resized near regions


def _blobs(rng, size):
    import torch

    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    p = torch.zeros(4, size, size)
    for j in range(3):
        cy, cx, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(2, size / 3)
        p[j] = torch.sigmoid((r - ((yy - cy) ** 2 + (xx - cx) ** 2).sqrt()) / rng.uniform(0.5, 4))
    p[3] = torch.rand(size, size, generator=torch.Generator().manual_seed(int(rng.integers(1 << 30)))) ** 8
    return p


@pytest.mark.parametrize("factor", [1, 2, 4, 8, 3])
def test_output_masks_equal_the_full_resize(factor):
    """Masks resized only around each region are the full resize's, bit for bit, for
    power-of-two factors (and other factors take the full resize)."""
    import torch

    from cxrseg.transforms import PadInfo, output_masks, output_to_image

    rng = np.random.default_rng(factor)
    size = 64
    side = size * factor
    for rows, cols in [(side, side), (side, side * 2 // 3 + 1), (side * 3 // 4, side)]:
        info = PadInfo((side - rows) // 2, (side - cols) // 2, rows, cols)
        for _ in range(4):
            p = _blobs(rng, size)
            th = [0.5, 0.3, 0.9, 0.5]
            got = output_masks(p, info, th)
            want = (output_to_image(p, info) >= torch.tensor(th).view(-1, 1, 1)).numpy()
            assert got.shape == (4, rows, cols) and got.dtype == bool
            assert np.array_equal(got, want)
    empty = output_masks(torch.zeros(2, size, size), PadInfo(0, 0, side, side), [0.5, 0.5])
    assert empty.shape == (2, side, side) and not empty.any()
    with pytest.raises(ValueError, match="thresholds"):
        output_masks(torch.zeros(2, size, size), PadInfo(0, 0, side, side), [0.5])


def test_batch_masks_equal_the_predict_api(ckpt, tmp_path):
    """cxrseg predict's masks (resized near each region) equal thresholding predict()'s
    full-size maps, on a film whose side is a power-of-two multiple of the model's."""
    from PIL import Image

    from cxrseg.batch import run_predict
    from cxrseg.phantom import make_phantom
    from cxrseg.predict import Predictor, threshold

    pred = Predictor(ckpt, device="cpu", precision="fp32")
    case = make_phantom(5, size=pred.input_size * 4)
    (tmp_path / "in").mkdir()
    Image.fromarray((case.image * 255).astype(np.uint8)).save(tmp_path / "in" / "p5.png")
    run_predict([tmp_path / "in"], tmp_path / "out", predictor=pred, postprocess=False, progress=False)
    from cxrseg.io import read_image

    img = read_image(tmp_path / "in" / "p5.png").data
    want = threshold(pred.predict(img), pred.thresholds)
    for r in pred.regions:
        got = np.asarray(Image.open(tmp_path / "out" / "masks" / r / "p5.png")) > 0
        assert np.array_equal(got, want[r]), r


def test_allocator_tuning_can_be_turned_off():
    import subprocess
    import sys

    code = "from cxrseg.device import tune_allocator, allocator_tuned; print(tune_allocator(), allocator_tuned())"
    env = dict(os.environ, CXRSEG_TUNE_ALLOCATOR="0")
    off = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert off.stdout.split() == ["False", "False"]
    env["CXRSEG_TUNE_ALLOCATOR"] = "1"
    on = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    if sys.platform.startswith("linux") and os.path.exists("/lib/x86_64-linux-gnu/libc.so.6"):
        assert on.stdout.split() == ["True", "True"]
