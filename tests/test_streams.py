"""``cxrseg predict``'s streams: batches run through the model at once on a CPU."""

from __future__ import annotations

import csv
import threading
import time

import numpy as np
import pytest
from _tiny_model import make_tiny_checkpoint, make_tiny_refiner


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny model with a refinement network beside it (both stages run in the streams)."""
    folder = tmp_path_factory.mktemp("model")
    path = make_tiny_checkpoint(folder / "tiny.safetensors")
    make_tiny_refiner(folder / "tiny.refine.safetensors")
    return path


@pytest.fixture(scope="module")
def films(tmp_path_factory):
    """Seven phantom films of several sizes and one file that is not an image."""
    from PIL import Image

    from cxrseg.phantom import make_phantom

    root = tmp_path_factory.mktemp("films")
    for k, (h, w) in enumerate([(160, 160), (200, 150), (128, 180), (256, 256), (150, 150), (190, 170), (140, 200)]):
        ph = make_phantom(k + 1, size=max(h, w))
        Image.fromarray(np.rint(ph.image[:h, :w] * 255).astype(np.uint8)).save(root / f"film{k}.png")
    (root / "broken.png").write_bytes(b"not a png")
    return root


def _run(ckpt, films, out, streams, **kw):
    from cxrseg.batch import run_predict
    from cxrseg.predict import Predictor

    pred = kw.pop("pred", None) or Predictor(ckpt, device="cpu", precision="fp32")
    assert pred.refiner is not None
    return run_predict([films], out, predictor=pred, batch_size=2, workers=0, streams=streams,
                       heatmaps=True, progress=False, log=lambda _m: None, **kw)


def _rows(path):
    with open(path, newline="") as fh:
        return sorted((r["case"], r["region"], r["area_px"], r["height"], r["width"]) for r in csv.DictReader(fh))


def test_two_streams_write_what_one_stream_writes(ckpt, films, tmp_path):
    from PIL import Image

    from cxrseg.regions import REGIONS

    s1 = _run(ckpt, films, tmp_path / "one", 1)
    s2 = _run(ckpt, films, tmp_path / "two", 2)
    assert (s1.predicted, s1.failed) == (s2.predicted, s2.failed) == (7, 1)
    # the same files; probabilities equal up to the rounding of another thread count, and
    # masks equal wherever the probability is not at the threshold itself
    for k in range(7):
        for r in REGIONS:
            h1 = np.load(tmp_path / "one" / "heatmaps" / r / f"film{k}.npy").astype(np.float32)
            h2 = np.load(tmp_path / "two" / "heatmaps" / r / f"film{k}.npy").astype(np.float32)
            np.testing.assert_allclose(h1, h2, atol=2e-3)
            m1 = np.asarray(Image.open(tmp_path / "one" / "masks" / r / f"film{k}.png")) > 0
            m2 = np.asarray(Image.open(tmp_path / "two" / "masks" / r / f"film{k}.png")) > 0
            assert m1.shape == m2.shape == h1.shape
            sure = np.abs(h1 - 0.5) > 5e-3
            assert np.array_equal(m1[sure], m2[sure]), (k, r)
    assert len(_rows(tmp_path / "two" / "predictions.csv")) == 7 * len(REGIONS)
    assert [r[0] for r in _rows(tmp_path / "one" / "predictions.csv")] == [
        r[0] for r in _rows(tmp_path / "two" / "predictions.csv")
    ]
    errors = (tmp_path / "two" / "errors.csv").read_text()
    assert "broken.png" in errors


def test_streams_overlap_the_passes_and_restore_the_threads(ckpt, films, tmp_path):
    import torch

    from cxrseg.predict import Predictor

    pred = Predictor(ckpt, device="cpu", precision="fp32")
    real = pred.forward
    state = {"now": 0, "most": 0, "exclusive": set(), "threads": set()}
    lock = threading.Lock()

    def slow_forward(x, **kw):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
            state["exclusive"].add(kw.get("exclusive", True))
            state["threads"].add(torch.get_num_threads())
        time.sleep(0.3)  # long enough for the other stream's pass to start meanwhile
        try:
            return real(x, **kw)
        finally:
            with lock:
                state["now"] -= 1

    pred.forward = slow_forward
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        s = _run(ckpt, films, tmp_path / "two", 2, pred=pred)
        assert s.predicted == 7
        assert state["most"] == 2 and state["exclusive"] == {False}
        assert state["threads"] == {1}  # each stream has half of the 2 threads
        assert torch.get_num_threads() == 2  # given back after the run
        state.update(most=0, exclusive=set(), threads=set())
        _run(ckpt, films, tmp_path / "one", 1, pred=pred, overwrite=True)
        assert state["most"] == 1 and state["exclusive"] == {True} and state["threads"] == {2}
    finally:
        torch.set_num_threads(before)


def test_exclusive_passes_wait_for_each_other_and_shared_ones_do_not(ckpt):
    from cxrseg.predict import Predictor
    from cxrseg.transforms import PadInfo

    pred = Predictor(ckpt, device="cpu", precision="fp32")
    assert pred.concurrent
    x = np.zeros((1, pred.input_size, pred.input_size), np.float32)
    done = {}

    def call(name, exclusive):
        prob = pred.forward(x, exclusive=exclusive)
        native = pred.to_native(prob[0], PadInfo(0, 0, 160, 160))
        film = np.zeros((160, 160), np.float32)
        pred.refine_natives([film], [native], list(pred.regions), unit=True, exclusive=exclusive)
        done[name] = True

    with pred._lock:  # a pass of another thread in progress
        shared = threading.Thread(target=call, args=("shared", False))
        shared.start()
        shared.join(timeout=30)
        assert done.get("shared"), "a shared pass waited for the lock"
        waiting = threading.Thread(target=pred.forward, args=(x,))
        waiting.start()
        waiting.join(timeout=0.5)
        assert waiting.is_alive(), "an exclusive pass did not wait for the lock"
    waiting.join(timeout=30)
    assert not waiting.is_alive()


def test_default_streams(ckpt, monkeypatch):
    import torch

    from cxrseg.batch import default_streams
    from cxrseg.predict import Predictor

    pred = Predictor(ckpt, device="cpu", precision="fp32")
    before = torch.get_num_threads()
    monkeypatch.delenv("CXRSEG_STREAMS", raising=False)
    try:
        torch.set_num_threads(2)
        assert default_streams(pred) == 2
        torch.set_num_threads(1)
        assert default_streams(pred) == 1
        monkeypatch.setattr(pred, "compiled", True)  # torch.compile'd models run one pass at a time
        torch.set_num_threads(2)
        assert not pred.concurrent and default_streams(pred) == 1
    finally:
        torch.set_num_threads(before)
    monkeypatch.setenv("CXRSEG_STREAMS", "3")
    assert default_streams(pred) == 3
    for bad in ("0", "two"):
        monkeypatch.setenv("CXRSEG_STREAMS", bad)
        with pytest.raises(ValueError, match="CXRSEG_STREAMS"):
            default_streams(pred)


def test_bad_streams_are_refused_before_anything_is_read(ckpt, films, tmp_path):
    with pytest.raises(ValueError, match="--streams must be >= 1"):
        _run(ckpt, films, tmp_path / "out", 0)
    assert not (tmp_path / "out").exists()
