"""int8 prediction: calibration files, the quantised predictor and ``cxrseg quantize``."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")


@pytest.fixture
def tiny_pair(tmp_path):
    """A tiny checkpoint with a tiny clavicle refinement network beside it."""
    from _tiny_model import make_tiny_checkpoint, make_tiny_refiner

    from cxrseg.refine import refiner_path

    ckpt = make_tiny_checkpoint(tmp_path / "m" / "tiny.safetensors")
    make_tiny_refiner(refiner_path(ckpt))
    return ckpt


def _films(n, size=256):
    from cxrseg.phantom import make_phantom

    return [make_phantom(i, size=size).image for i in range(n)]


def _calibrated(ckpt, n=3):
    from cxrseg.predict import Predictor
    from cxrseg.quantize import calibrate, write_calibration

    p32 = Predictor(ckpt, device="cpu", precision="fp32")
    q = calibrate(p32, _films(n))
    ids = {p32.path: p32.model_id}
    if p32.refiner is not None:
        ids[p32.refiner.path] = p32.refiner.model_id
    return p32, write_calibration(q, ids, {"calibration_cases": n})


def test_int8_predictor_runs_quantised_networks_close_to_fp32(tiny_pair):
    from cxrseg.predict import Predictor
    from cxrseg.quantize import int8_path
    from cxrseg.refine import refiner_path

    p32, written = _calibrated(tiny_pair)
    assert sorted(written) == sorted([int8_path(tiny_pair), int8_path(refiner_path(tiny_pair))])
    p8 = Predictor(tiny_pair, device="cpu", precision="int8")
    assert p8.precision == "int8" and p8.refiner is not None and p8.refiner.precision == "int8"
    assert p8.int8["model_id"] == p8.model_id
    for net in (p8.model, p8.refiner.model):
        kinds = {type(m).__module__ for m in net.modules()}
        assert any(k.startswith("torch.ao.nn") and "quantized" in k for k in kinds), kinds
    # the fp32 predictor's networks were given back after calibration
    assert not any("quantized" in type(m).__module__ for m in p32.model.modules())
    for img in _films(2):
        a, b = p32.predict(img), p8.predict(img)
        for r in p32.regions:
            assert b[r].dtype == np.float32 and b[r].shape == a[r].shape
            assert float(np.abs(a[r] - b[r]).mean()) < 0.05, r
            ma, mb = a[r] > 0.5, b[r] > 0.5
            agree = (ma & mb).sum() / max(1, (ma | mb).sum())
            assert agree > 0.8, (r, agree)


def test_int8_without_calibration_names_the_missing_file(tiny_pair):
    from cxrseg.model import CheckpointError
    from cxrseg.predict import Predictor

    with pytest.raises(CheckpointError, match=r"tiny\.int8\.safetensors.*cxrseg quantize"):
        Predictor(tiny_pair, device="cpu", precision="int8", refine=False)


def test_int8_refinement_needs_its_own_calibration(tiny_pair):
    from cxrseg.model import CheckpointError
    from cxrseg.predict import Predictor
    from cxrseg.quantize import int8_path
    from cxrseg.refine import refiner_path

    _calibrated(tiny_pair)
    int8_path(refiner_path(tiny_pair)).unlink()
    with pytest.raises(CheckpointError, match=r"refine\.int8\.safetensors"):
        Predictor(tiny_pair, device="cpu", precision="int8")
    assert Predictor(tiny_pair, device="cpu", precision="int8", refine=False).precision == "int8"


def test_calibration_of_other_weights_is_refused(tmp_path, tiny_pair):
    import shutil

    from _tiny_model import make_tiny_checkpoint

    from cxrseg.model import CheckpointError
    from cxrseg.predict import Predictor
    from cxrseg.quantize import int8_path

    _calibrated(tiny_pair)
    other = make_tiny_checkpoint(tmp_path / "o" / "other.safetensors", seed=7)
    shutil.copy(int8_path(tiny_pair), int8_path(other))
    with pytest.raises(CheckpointError, match="calibrated for model .* not "):
        Predictor(other, device="cpu", precision="int8")


def test_unreadable_and_foreign_calibration_files_are_refused(tmp_path, tiny_pair):
    import torch
    from safetensors.torch import save_file

    from cxrseg.quantize import Int8Error, int8_path, read_int8

    bad = int8_path(tiny_pair)
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(Int8Error, match=r"tiny\.int8\.safetensors: not a readable int8 calibration file"):
        read_int8(bad)
    save_file({"x": torch.zeros(1)}, str(bad), metadata={"format": "pt"})
    with pytest.raises(Int8Error, match="not a cxrseg int8 calibration file"):
        read_int8(bad)


def test_qparams_of_another_architecture_are_refused(tiny_pair):
    from cxrseg.predict import Predictor
    from cxrseg.quantize import Int8Error, calibrate, quantized_model

    p32 = Predictor(tiny_pair, device="cpu", precision="fp32", refine=False)
    q = calibrate(p32, _films(1))[p32.path]
    q.pop(next(iter(q)))
    with pytest.raises(Int8Error, match="another architecture"):
        quantized_model(p32.model, p32.config, q, source="x.int8.safetensors")


def test_calibrating_needs_films_and_an_fp32_cpu_predictor(tiny_pair):
    from cxrseg.predict import Predictor
    from cxrseg.quantize import Int8Error, calibrate

    p32 = Predictor(tiny_pair, device="cpu", precision="fp32", refine=False)
    model = p32.model
    with pytest.raises(Int8Error, match="no calibration film"):
        calibrate(p32, [])
    assert p32.model is model
    with pytest.raises(ValueError, match="fp32 predictor"):
        calibrate(Predictor(tiny_pair, device="cpu", precision="bf16", refine=False), _films(1))


def test_a_failed_write_keeps_the_previous_calibration(tiny_pair, monkeypatch):
    import cxrseg.io as cio
    from cxrseg.quantize import int8_path

    _calibrated(tiny_pair)
    before = int8_path(tiny_pair).read_bytes()

    def broken(fh):
        raise OSError(28, "No space left on device")

    real = cio.atomic_write
    monkeypatch.setattr(cio, "atomic_write", lambda path, write: real(path, broken))
    with pytest.raises(OSError, match="int8.safetensors"):
        _calibrated(tiny_pair)
    assert int8_path(tiny_pair).read_bytes() == before


def _phantom_with_val(tmp_path, n=6):
    from _tiny_model import make_tiny_checkpoint

    from cxrseg.phantom import write_phantom_dataset

    root = tmp_path / "data"
    write_phantom_dataset(root, n, seed=0, image_format="png", size=256)
    ids = sorted(p.stem for p in (root / "images").iterdir())
    ckpt = make_tiny_checkpoint(tmp_path / "m" / "tiny.safetensors", metadata={"val_cases": ids[-2:]})
    return root, ids, ckpt


def test_cli_quantize_calibrates_checks_and_writes(tmp_path, capsys):
    from cxrseg.cli import main
    from cxrseg.quantize import int8_path, read_int8

    root, ids, ckpt = _phantom_with_val(tmp_path)
    rc = main(["quantize", "--data", str(root), "--model", str(ckpt), "--calibration-cases", "3",
               "--max-change", "1"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "J int8 - J fp32" in out.out and "wrote" in out.out
    _, md = read_int8(int8_path(ckpt))
    import json

    cal = json.loads(md["calibration_cases"])
    assert len(cal) == 3 and not set(cal) & set(ids[-2:])
    val = json.loads(md["validation"])
    assert val["cases"] == ids[-2:] and set(val["regions"]) == {"heart", "left_clavicle", "right_clavicle",
                                                                 "left_lung", "right_lung"}


def test_cli_quantize_writes_nothing_when_int8_changes_the_masks_too_much(tmp_path, capsys):
    from cxrseg.cli import main
    from cxrseg.quantize import int8_path

    root, ids, ckpt = _phantom_with_val(tmp_path)
    rc = main(["quantize", "--data", str(root), "--model", str(ckpt), "--calibration-cases", "2",
               "--max-change", "-1"])
    assert rc == 1
    assert "nothing written" in capsys.readouterr().err
    assert not int8_path(ckpt).exists()


def test_cli_quantize_refuses_validation_cases_for_calibration(tmp_path, capsys):
    from cxrseg.cli import main
    from cxrseg.quantize import int8_path

    root, ids, ckpt = _phantom_with_val(tmp_path)
    rc = main(["quantize", "--data", str(root), "--model", str(ckpt), "--cases", ",".join(ids[-3:])])
    assert rc != 0
    assert "validation cases" in capsys.readouterr().err
    assert not int8_path(ckpt).exists()


def test_a_torch_that_cannot_quantise_gives_a_clear_error(tiny_pair, monkeypatch):
    import torch.ao.quantization.quantize_fx as qfx

    from cxrseg.model import CheckpointError
    from cxrseg.predict import Predictor

    _calibrated(tiny_pair)

    def gone(*_a, **_k):
        raise NotImplementedError("quantized tensors moved to torchao")

    monkeypatch.setattr(qfx, "convert_fx", gone)
    with pytest.raises(CheckpointError, match=r"tiny\.int8\.safetensors: torch .* cannot build the int8 network"):
        Predictor(tiny_pair, device="cpu", precision="int8", refine=False)
    assert Predictor(tiny_pair, device="cpu", precision="bf16", refine=False).precision == "bf16"


def test_int8_in_the_environment_does_not_reach_training(monkeypatch):
    import torch

    from cxrseg.device import resolve_precision

    monkeypatch.setenv("CXRSEG_PRECISION", "int8")
    assert resolve_precision("auto", torch.device("cpu")) in ("bf16", "fp32")
    monkeypatch.setenv("CXRSEG_PRECISION", "fp32")
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
