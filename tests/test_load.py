"""Cold start: checkpoints built without random initialisation, batch norms folded once
and cached, the torch-only lean U-Net, and the shipped model tiers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from _tiny_model import make_tiny_checkpoint

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("encoder", ["resnet18", "resnet34"])
def test_lean_unet_gives_the_smp_models_logits(tmp_path, encoder):
    import torch

    from cxrseg.model import folded_cache_path, load_checkpoint, load_inference_model, read_metadata

    ck = make_tiny_checkpoint(tmp_path / "m.safetensors", encoder=encoder)
    ref = load_checkpoint(ck).model.eval()
    lean, cfg, meta, _, n = load_inference_model(ck)
    assert type(lean).__name__ == "LeanUnet" and n > 0
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in lean.modules())
    assert folded_cache_path(ck, read_metadata(ck)["model_id"]).is_file()
    x = torch.rand(2, 3, 96, 64, generator=torch.Generator().manual_seed(1)) * 4 - 2
    with torch.inference_mode():
        a, b = ref(x), lean(x)
    assert float((a - b).abs().max()) <= 1e-4 * max(1.0, float(a.abs().max()))
    # the second load comes from the cache and gives the same weights
    lean2 = load_inference_model(ck)[0]
    for (k1, v1), (k2, v2) in zip(lean.state_dict().items(), lean2.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2)


def test_cached_load_does_not_import_smp_and_a_bad_cache_is_rebuilt(tmp_path):
    from cxrseg.model import folded_cache_path, load_inference_model, read_metadata

    ck = make_tiny_checkpoint(tmp_path / "m.safetensors", seed=7)  # a model id no other test folds
    code = (
        "import sys; from cxrseg.model import load_inference_model; "
        f"m = load_inference_model({str(ck)!r})[0]; "
        "print(type(m).__name__, 'segmentation_models_pytorch' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}

    def run():
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        return r.stdout.split()

    assert run() == ["LeanUnet", "True"]  # first load: smp builds and checks the fold
    assert run() == ["LeanUnet", "False"]  # from the cache: no smp import
    cache = folded_cache_path(ck, read_metadata(ck)["model_id"])
    cache.write_bytes(b"garbage")
    model = load_inference_model(ck)[0]
    assert type(model).__name__ == "LeanUnet" and cache.stat().st_size > 100


def test_the_folded_cache_keeps_the_most_recently_used_entries(tmp_path, monkeypatch):
    import cxrseg.model as M

    monkeypatch.setenv("CXRSEG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(M, "FOLDED_CACHE_ENTRIES", 2)
    cks = [make_tiny_checkpoint(tmp_path / f"m{i}.safetensors", seed=20 + i) for i in range(3)]
    paths = [M.folded_cache_path(ck, M.read_metadata(ck)["model_id"]) for ck in cks]
    M.load_inference_model(cks[0])
    M.load_inference_model(cks[1])
    os.utime(paths[0], (1, 1))  # entry 0 used long ago, entry 1 just now
    os.utime(paths[1], (2, 2))
    M.load_inference_model(cks[1])  # a load from the cache marks entry 1 as used
    assert paths[1].stat().st_mtime > 1000
    M.load_inference_model(cks[2])  # a third entry: the least recently used one goes
    assert sorted(p.name for p in paths[0].parent.glob("*.safetensors")) == sorted([paths[1].name, paths[2].name])
    # a pruned checkpoint folds again and takes the place of the oldest entry
    model = M.load_inference_model(cks[0])[0]
    assert type(model).__name__ == "LeanUnet"
    assert paths[0].is_file() and len(list(paths[0].parent.glob("*.safetensors"))) == 2


def test_prune_folded_cache_never_deletes_the_protected_entry(tmp_path):
    from cxrseg.model import prune_folded_cache

    for i, name in enumerate(["a", "b", "c", "new"]):
        f = tmp_path / f"{name}.safetensors"
        f.write_bytes(b"x")
        os.utime(f, (100 + i, 100 + i))
    (tmp_path / ".a.safetensors.123.tmp").write_bytes(b"x")  # a write in progress elsewhere
    os.utime(tmp_path / "new.safetensors", (1, 1))  # the protected one, even if oldest
    removed = prune_folded_cache(tmp_path, keep=2, protect=tmp_path / "new.safetensors")
    assert sorted(p.name for p in removed) == ["a.safetensors", "b.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".a.safetensors.123.tmp", "c.safetensors",
                                                          "new.safetensors"]
    assert prune_folded_cache(tmp_path / "missing") == []


def test_a_full_disk_leaves_the_load_working_and_no_partial_cache(tmp_path, monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    import cxrseg.model as M

    monkeypatch.setenv("CXRSEG_CACHE", str(tmp_path / "cache"))
    ck = make_tiny_checkpoint(tmp_path / "m.safetensors", seed=30)

    def full(*a, **k):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    model = M.load_inference_model(ck)[0]
    assert type(model).__name__ == "LeanUnet"
    assert list((tmp_path / "cache" / "folded").iterdir()) == []


def test_checkpoint_loaded_without_init_is_trainable_and_equal(tmp_path):
    import torch
    from safetensors.torch import load_file

    from cxrseg.config import ModelConfig
    from cxrseg.model import build_model, load_checkpoint, read_metadata

    ck = make_tiny_checkpoint(tmp_path / "m.safetensors")
    loaded = load_checkpoint(ck)
    assert all(p.requires_grad and not p.is_meta for p in loaded.model.parameters())
    assert not any(b.is_meta for b in loaded.model.buffers())
    ref = build_model(ModelConfig.from_dict(read_metadata(ck)["config"]))
    ref.load_state_dict({k: v.float() for k, v in load_file(str(ck)).items()})
    for (k, a), b in zip(loaded.model.state_dict().items(), ref.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_model_tiers(tmp_path, monkeypatch):
    from cxrseg.model import MODEL_TIERS, read_metadata, tier_checkpoint_path
    from cxrseg.predict import resolve_checkpoint_path

    fast = resolve_checkpoint_path("fast")
    assert fast.name == MODEL_TIERS["fast"]
    assert resolve_checkpoint_path("default") == resolve_checkpoint_path(None)
    if fast.is_file():
        assert read_metadata(fast)["config"]["input_size"] == 256
        assert read_metadata(resolve_checkpoint_path(None))["config"]["input_size"] == 512
    with pytest.raises(ValueError, match="unknown model tier"):
        tier_checkpoint_path("turbo")
    # a file of that name in the working folder wins over the tier
    monkeypatch.chdir(tmp_path)
    make_tiny_checkpoint(tmp_path / "fast")
    assert resolve_checkpoint_path("fast") == (tmp_path / "fast").resolve()


def test_rerun_with_everything_done_does_not_load_the_model(tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    from cxrseg import predict as P
    from cxrseg.cli import main

    ck = make_tiny_checkpoint(tmp_path / "m.safetensors")
    img = tmp_path / "in" / "x.png"
    img.parent.mkdir()
    Image.fromarray((np.arange(80 * 60).reshape(80, 60) % 251).astype(np.uint8)).save(img)
    argv = ["predict", str(img), "--out", str(tmp_path / "out"), "--model", str(ck), "--quiet"]
    assert main(argv) == 0

    def boom(*a, **k):
        raise AssertionError("the model was loaded for a run with nothing to do")

    monkeypatch.setattr(P, "Predictor", boom)
    assert main(argv) == 0
    assert (tmp_path / "out" / "masks" / "heart" / "x.png").is_file()
    # a lazy predictor answers header questions without loading
    lazy = P.LazyPredictor(ck, device="cpu")
    assert lazy.select("lungs") == ("left_lung", "right_lung") and not lazy.loaded
