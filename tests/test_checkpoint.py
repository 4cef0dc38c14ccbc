"""Checkpoints: safetensors round trip, fp16 export, metadata, and refusal of pickles."""

from __future__ import annotations

import builtins
import pickle
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from cxrseg.config import ModelConfig  # noqa: E402
from cxrseg.model import (  # noqa: E402
    CheckpointError,
    build_model,
    load_checkpoint,
    load_training_state,
    read_metadata,
    save_checkpoint,
    save_training_state,
)

TINY = dict(encoder_name="resnet18", decoder_channels=(16, 16, 16, 16, 16), input_size=64)


def _model(regions=("heart", "left_lung", "right_lung"), seed=0):
    cfg = ModelConfig(regions=regions, **TINY)
    torch.manual_seed(seed)
    model = build_model(cfg)
    # non-trivial BatchNorm statistics, so that buffers are part of the round trip
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    return model.eval(), cfg


def _x():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def test_round_trip_is_bitwise_identical(tmp_path):
    model, cfg = _model()
    path = save_checkpoint(model, cfg, tmp_path / "m.safetensors", metadata={"note": "hello"})
    ck = load_checkpoint(path)
    assert ck.config == cfg
    assert not ck.model.training
    with torch.inference_mode():
        a, b = model(_x()), ck.model(_x())
    assert a.shape == (2, 3, 64, 64)
    assert torch.equal(a, b)
    sa, sb = model.state_dict(), ck.model.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # a training folder resolves to its best.safetensors
    (tmp_path / "run").mkdir()
    save_checkpoint(model, cfg, tmp_path / "run" / "best.safetensors")
    assert load_checkpoint(tmp_path / "run").path.name == "best.safetensors"


def test_fp16_export_loads_within_tolerance(tmp_path):
    model, cfg = _model()
    full = save_checkpoint(model, cfg, tmp_path / "full.safetensors")
    half = save_checkpoint(model, cfg, tmp_path / "half.safetensors", half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    meta = read_metadata(half)
    assert meta["dtype"] == "float16"
    ck = load_checkpoint(half)
    assert all(p.dtype == torch.float32 for p in ck.model.parameters())
    with torch.inference_mode():
        a = torch.sigmoid(model(_x()))
        b = torch.sigmoid(ck.model(_x()))
    assert float((a - b).abs().max()) < 1e-2
    assert not torch.equal(a, b)  # it really was rounded


def test_metadata_fields_and_read_without_weights(tmp_path, monkeypatch):
    model, cfg = _model(regions=("heart",))
    path = save_checkpoint(
        model,
        cfg,
        tmp_path / "m.safetensors",
        metadata={"val_cases": ["A", "B"], "train_config": {"lr": 0.1}},
    )
    import safetensors.torch

    def no_weights(*a, **k):  # read_metadata must not load the tensors
        raise AssertionError("read_metadata loaded the weights")

    with monkeypatch.context() as m:  # scoped: undo() would also drop conftest's private cache
        m.setattr(safetensors.torch, "load_file", no_weights)
        meta = read_metadata(path)
    for key in (
        "format",
        "config",
        "regions",
        "code_version",
        "date",
        "model_id",
        "dtype",
        "parent_id",
    ):
        assert key in meta, key
    assert meta["regions"] == ["heart"]
    assert meta["val_cases"] == ["A", "B"]
    assert meta["train_config"] == {"lr": 0.1}
    assert meta["parent_id"] is None
    assert ModelConfig.from_dict(meta["config"]) == cfg
    assert len(meta["model_id"]) == 16
    # same weights -> same id; other weights -> another id
    again = save_checkpoint(model, cfg, tmp_path / "m2.safetensors")
    assert read_metadata(again)["model_id"] == meta["model_id"]
    other, _ = _model(regions=("heart",), seed=5)
    assert (
        read_metadata(save_checkpoint(other, cfg, tmp_path / "m3.safetensors"))["model_id"]
        != meta["model_id"]
    )


def test_reading_the_metadata_does_not_import_torch(tmp_path):
    """The docks read a model's header while the GUI starts: that must not import torch
    (whose import then holds every other thread that imports a module it is loading)."""
    import subprocess
    import sys

    model, cfg = _model(regions=("heart",))
    path = save_checkpoint(model, cfg, tmp_path / "m.safetensors")
    code = ("import sys; from cxrseg.model import read_metadata; from cxrseg.refine import refine_id_for; "
            f"m = read_metadata({str(path)!r}); refine_id_for({str(path)!r}, True); "
            "print(m['model_id'], 'torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.split() == [read_metadata(path)["model_id"], "False"], r.stderr


def test_safetensors_without_cxrseg_metadata_is_refused(tmp_path):
    from safetensors.torch import save_file

    p = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(3)}, str(p))
    with pytest.raises(CheckpointError, match="no 'cxrseg' metadata"):
        read_metadata(p)


class _Evil:
    """Unpickling this creates the marker file (stands in for arbitrary code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


def _evil_files(tmp_path: Path, marker: Path) -> list[Path]:
    files = []
    for proto in (0, 2, pickle.HIGHEST_PROTOCOL):
        data = pickle.dumps({"weights": _Evil(marker)}, protocol=proto)
        for name in (f"evil{proto}.safetensors", f"evil{proto}.pt"):
            (tmp_path / name).write_bytes(data)
            files.append(tmp_path / name)
    # torch.save's zip format around the same object
    zpath = tmp_path / "evil_zip.pt"
    torch.save({"optimizer": _Evil(marker), "epoch": 3}, zpath)
    files.append(zpath)
    zs = tmp_path / "evil_zip.safetensors"
    zs.write_bytes(zpath.read_bytes())
    files.append(zs)
    return files


# torch's weights-only unpickler warns about the crafted files' pickle protocol before refusing them
@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_malicious_pickles_are_refused_without_running_them(tmp_path):
    marker = tmp_path / "PWNED"
    # sanity: the payload does create the marker when unpickled naively
    pickle.loads(pickle.dumps(_Evil(marker)))
    assert marker.exists()
    marker.unlink()

    for f in _evil_files(tmp_path, marker):
        with pytest.raises(CheckpointError) as ei:
            load_checkpoint(f)
        assert f.name in str(ei.value)
        with pytest.raises(CheckpointError) as ei:
            read_metadata(f)
        assert f.name in str(ei.value)
        with pytest.raises(CheckpointError) as ei:
            load_training_state(f)
        assert f.name in str(ei.value)
        assert not marker.exists(), f"unpickling {f.name} ran code"


def test_truncated_files_are_refused_with_their_name(tmp_path):
    model, cfg = _model()
    good = save_checkpoint(model, cfg, tmp_path / "good.safetensors")
    data = good.read_bytes()
    for n, name in (
        (len(data) // 2, "half.safetensors"),
        (5, "tiny.safetensors"),
        (0, "empty.safetensors"),
        (200, "header.safetensors"),
    ):
        p = tmp_path / name
        p.write_bytes(data[:n])
        with pytest.raises(CheckpointError) as ei:
            load_checkpoint(p)
        assert name in str(ei.value)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")

    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    model(torch.randn(2, 3, 64, 64)).mean().backward()
    opt.step()
    st = save_training_state(
        {"optimizer": opt.state_dict(), "epoch": 2, "best": 0.5}, tmp_path / "state.pt"
    )
    back = load_training_state(st)
    assert back["epoch"] == 2 and back["best"] == 0.5
    assert back["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-3)
    raw = st.read_bytes()
    (tmp_path / "cut_state.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError) as ei:
        load_training_state(tmp_path / "cut_state.pt")
    assert "cut_state.pt" in str(ei.value)


def test_weights_must_match_config(tmp_path):
    model, cfg = _model()
    path = save_checkpoint(model, cfg, tmp_path / "m.safetensors")
    # rewrite the metadata with another number of regions: the weights no longer fit
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads(fh.metadata()["cxrseg"])
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    meta["config"]["regions"] = ["heart"]
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={"cxrseg": json.dumps(meta)})
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        load_checkpoint(bad)


def test_header_length_with_pickle_like_first_byte_loads(tmp_path):
    """A safetensors header length whose low byte is 0x80 (a pickle's first byte) or whose
    first bytes spell 'PK' must still load: the format is recognised before sniffing."""
    import torch

    from cxrseg.config import ModelConfig
    from cxrseg.model import build_model, load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    cfg = ModelConfig(encoder_name="resnet18", decoder_channels=(16, 16, 16, 16, 16), input_size=64)
    model = build_model(cfg)
    path = tmp_path / "m.safetensors"
    for pad in range(600):
        save_checkpoint(model, cfg, path, metadata={"pad": "." * pad})
        if path.read_bytes()[:1] == b"\x80":
            break
    else:
        raise AssertionError("could not produce a header length with low byte 0x80")
    ck = load_checkpoint(path)
    assert ck.config.regions == cfg.regions
