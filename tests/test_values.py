"""Values, regions, resume keys, claims, corrections checks and clearer messages."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from _tiny_model import make_tiny_checkpoint
from PIL import Image

from cxrseg.io import CXRSegIOError, read_image

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.safetensors")


def _images(d, n=3, seed=0):
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(d / f"IM{i}.png")
    return d


def _predict(ckpt, inputs, out, *extra):
    from cxrseg.cli import main

    return main(["predict", str(inputs), "--out", str(out), "--model", str(ckpt), "--workers", "0",
                 "--quiet", *map(str, extra)])


def _no_model_load(monkeypatch):
    import cxrseg.predict as cp

    def refuse(*_a, **_k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(cp.Predictor, "__init__", refuse)


# ----------------------------------------------------------------------- 12-bit data


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_12_bit_data_in_16_bit_files_is_rescaled(tmp_path, suffix, ckpt, capsys):
    a = np.linspace(0, 4095, 64 * 64).reshape(64, 64).astype(np.uint16)
    p = tmp_path / "in" / f"twelve{suffix}"
    p.parent.mkdir()
    if suffix == ".png":
        Image.fromarray(a).save(p)
    else:
        import tifffile

        tifffile.imwrite(p, a)
    img = read_image(p)
    assert img.data.max() == pytest.approx(1.0)
    np.testing.assert_allclose(img.data, a / 4095.0, atol=1e-6)
    assert "12-bit" in img.meta["warning"] and img.meta["bits_stored"] == 12
    # full 16-bit data keeps the /65535 rule
    b = a.astype(np.uint32) * 16
    b[0, 0] = 65535
    Image.fromarray(b.astype(np.uint16)).save(tmp_path / "full.png")
    full = read_image(tmp_path / "full.png")
    assert "warning" not in full.meta and full.data[0, 0] == pytest.approx(1.0)
    assert _predict(ckpt, p.parent, tmp_path / "out") == 0
    assert "12-bit" in capsys.readouterr().err  # said loudly
    marker = json.loads((tmp_path / "out" / ".done" / "twelve.json").read_text())
    assert "12-bit" in marker["note"]


# ----------------------------------------------------------------------- regions


def test_default_regions_are_the_models_and_checked_before_loading(tmp_path, monkeypatch, capsys):
    sub = make_tiny_checkpoint(tmp_path / "sub.safetensors", regions=("heart", "left_lung"))
    ins = _images(tmp_path / "in", 2)
    assert _predict(sub, ins, tmp_path / "out") == 0
    assert sorted(p.name for p in (tmp_path / "out" / "masks").iterdir()) == ["heart", "left_lung"]
    _no_model_load(monkeypatch)
    capsys.readouterr()
    assert _predict(sub, ins, tmp_path / "out2", "--regions", "clavicles") == 2
    err = capsys.readouterr().err
    assert "does not predict left_clavicle, right_clavicle" in err
    assert "model was loaded" not in err


def test_a_rerun_with_nothing_to_do_does_not_load_the_model(ckpt, tmp_path, monkeypatch, capsys):
    ins = _images(tmp_path / "in", 3)
    assert _predict(ckpt, ins, tmp_path / "out") == 0
    _no_model_load(monkeypatch)
    capsys.readouterr()
    assert _predict(ckpt, ins, tmp_path / "out") == 0
    assert "0 segmented, 3 already done" in capsys.readouterr().out


# ----------------------------------------------------------------------- resume key


def test_resume_is_keyed_on_the_input_content_and_options(ckpt, tmp_path, capsys):
    ins = _images(tmp_path / "in", 2)
    out = tmp_path / "out"
    assert _predict(ckpt, ins, out) == 0
    before = np.asarray(Image.open(out / "masks" / "heart" / "IM0.png")).copy()
    # the same name, other content (and size)
    Image.fromarray(np.zeros((64, 80), np.uint8)).save(ins / "IM0.png")
    capsys.readouterr()
    assert _predict(ckpt, ins, out) == 0
    assert "1 segmented, 1 already done" in capsys.readouterr().out
    after = np.asarray(Image.open(out / "masks" / "heart" / "IM0.png"))
    assert after.shape == (64, 80) != before.shape
    # other bytes with the same size and modification time: the hash tells
    f = ins / "IM1.png"
    st = f.stat()
    raw = bytearray(f.read_bytes())
    other = np.asarray(Image.open(f)).copy()
    other[0, 0] ^= 1
    Image.fromarray(other).save(f)
    if f.stat().st_size != st.st_size:  # keep the size: pad or cut within the PNG's end
        pytest.skip("PNG size changed")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert bytes(raw) != f.read_bytes()
    assert _predict(ckpt, ins, out) == 0
    assert "1 segmented, 1 already done" in capsys.readouterr().out
    # other options
    assert _predict(ckpt, ins, out, "--max-output-side", "64") == 0
    assert "2 segmented" in capsys.readouterr().out


# ----------------------------------------------------------------------- claims


def test_a_live_runs_claims_are_left_to_it(ckpt, tmp_path, capsys):
    import socket

    ins = _images(tmp_path / "in", 3)
    out = tmp_path / "out"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        (out / ".claims").mkdir(parents=True)
        (out / ".claims" / "IM0").write_text(f"{sleeper.pid} {socket.gethostname()}\n")
        (out / ".claims" / "IM1").write_text(f"{dead.pid} {socket.gethostname()}\n")
        assert _predict(ckpt, ins, out) == 0
        captured = capsys.readouterr()
        assert "2 segmented, 0 already done, 0 failed, 1 left to another run" in captured.out
        assert not (out / "masks" / "heart" / "IM0.png").exists()
        assert (out / ".claims" / "IM0").exists() and not (out / ".claims" / "IM1").exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert _predict(ckpt, ins, out) == 0  # the claimer is gone: its case is taken over
    assert "1 segmented, 2 already done" in capsys.readouterr().out
    assert list((out / ".claims").iterdir()) == []


_SLOW = """
import sys, time
import cxrseg.batch as pc
orig = pc.DecodeDataset.__getitem__
def slow(self, i):
    time.sleep(0.4)
    return orig(self, i)
pc.DecodeDataset.__getitem__ = slow
from cxrseg.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_two_concurrent_runs_compute_each_case_once(ckpt, tmp_path):
    ins = _images(tmp_path / "in", 8)
    out = tmp_path / "out"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO), env.get("PYTHONPATH", "")])
    args = ["predict", str(ins), "--out", str(out), "--model", str(ckpt), "--workers", "0",
            "--batch-size", "1", "--quiet"]
    results = []

    def run():
        r = subprocess.run([sys.executable, "-c", _SLOW, *args], capture_output=True, text=True,
                           env=env, timeout=300)
        results.append(r)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    done = [int(re.search(r"(\d+) segmented", r.stdout).group(1)) for r in results]
    assert sum(done) == 8, [r.stdout for r in results]
    assert len(list((out / ".done").glob("*.json"))) == 8


# ----------------------------------------------------------------------- corrections


def test_corrections_refuse_bad_shapes_ids_and_corrupt_sidecars(tmp_path):
    from cxrseg.corrections import CorrectionError, CorrectionStore

    img = tmp_path / "CASE1.png"
    Image.fromarray(np.zeros((2048, 2048), np.uint8)).save(img)
    store = CorrectionStore(tmp_path / "store")
    with pytest.raises(CorrectionError, match=r"mask is 1x1, its image CASE1.png is 2048x2048"):
        store.save("CASE1", "heart", np.ones((1, 1), bool), image_path=img)
    m = np.zeros((2048, 2048), bool)
    m[100:200, 100:200] = True
    v1 = store.save("CASE1", "heart", m, image_path=img)
    for bad in ("..", "-rf", "../x", "a/b"):
        with pytest.raises(CorrectionError, match="case id"):
            store.versions(bad, "heart")
        with pytest.raises(CorrectionError, match="case id"):
            store.latest(bad, "heart")
    # a file with an unsafe id planted in the store is refused by name, not listed
    d = store.region_dir("heart")
    (d / "-rf.v001.png").write_bytes(v1.mask_path.read_bytes())
    (d / "-rf.v001.json").write_text(v1.sidecar_path.read_text())
    with pytest.raises(CorrectionError, match=r"-rf\.v001\.json"):
        store.all_versions()
    (d / "-rf.v001.png").unlink()
    (d / "-rf.v001.json").unlink()
    # a corrupt newest sidecar is named instead of letting v1 win
    v2 = store.save("CASE1", "heart", m)
    v2.sidecar_path.write_text('{"case": "CASE1", ')
    with pytest.raises(CorrectionError, match=r"CASE1\.v002\.json.*corrupt"):
        store.latest("CASE1", "heart")
    with pytest.raises(CorrectionError, match=r"CASE1\.v002\.json"):
        list(store.iter_latest())
    # a mask swapped for one of another size than its sidecar records
    v2.sidecar_path.write_text(v1.sidecar_path.read_text().replace('"version": 1', '"version": 2'))
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(v2.mask_path)
    with pytest.raises(CorrectionError, match="mask is 1x1, its sidecar"):
        store.load("CASE1", "heart")


# ----------------------------------------------------------------------- messages


def test_samples_prefix_cannot_leave_the_root(tmp_path, capsys):
    from cxrseg.cli import main

    root = tmp_path / "a" / "b" / "root"
    assert main(["samples", str(root), "--prefix", "../../x", "-n", "1", "--size", "64"]) == 2
    assert "prefix '../../x'" in capsys.readouterr().err
    assert not any(p.is_file() for p in tmp_path.rglob("*"))
    assert main(["samples", str(root), "--prefix", "OK_1", "-n", "1", "--size", "64"]) == 0


def test_random_bytes_named_dcm(tmp_path):
    p = tmp_path / "noise.dcm"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(CXRSegIOError, match="noise.dcm: not a DICOM file") as e:
        read_image(p)
    assert "no pixel data" not in str(e.value)


def test_out_equal_to_the_input_folder_or_ground_truth_is_refused(ckpt, tmp_path, capsys):
    from cxrseg.io import write_mask

    ins = _images(tmp_path / "in", 1)
    assert _predict(ckpt, ins, ins) == 2
    assert "is the input folder" in capsys.readouterr().err
    assert not (ins / "masks").exists()
    ds = tmp_path / "ds"
    write_mask(np.ones((64, 64), bool), ds / "masks" / "heart" / "IM0.gif")
    assert _predict(ckpt, ins, ds) == 2
    assert "did not write" in capsys.readouterr().err
    assert sorted(p.name for p in (ds / "masks" / "heart").iterdir()) == ["IM0.gif"]


def test_unknown_encoder_lists_every_encoder():
    from segmentation_models_pytorch.encoders import encoders

    from cxrseg.config import ModelConfig
    from cxrseg.model import build_model

    with pytest.raises(ValueError, match="unknown encoder 'resnet9000'") as e:
        build_model(ModelConfig(encoder_name="resnet9000"))
    msg = str(e.value)
    assert all(name in msg for name in encoders)
    assert f"the {len(encoders)} encoders are" in msg
