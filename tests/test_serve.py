"""The prediction process (cxrseg.serve): same maps as in this process, errors, endings."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from _tiny_model import make_tiny_checkpoint

from cxrseg.serve import PredictorProcess, PredictorProcessError, supported

pytestmark = pytest.mark.skipif(not supported(), reason="the prediction process needs a POSIX system")

ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("serve") / "tiny.safetensors")


@pytest.fixture(scope="module")
def server(ckpt):
    proc = PredictorProcess(ckpt, device="cpu", precision="fp32", env=ONE_THREAD)
    yield proc
    proc.close()


def _image(seed=0, shape=(90, 70)):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def test_the_process_gives_the_same_maps_as_this_process(server, ckpt):
    from cxrseg.predict import get_predictor

    here = get_predictor(ckpt, device="cpu", precision="fp32")
    info = server.info()
    assert info["model_id"] == here.model_id and tuple(info["regions"]) == here.regions
    assert info["thresholds"] == dict(here.config.thresholds)
    assert info["precision"] == "fp32" and info["device"] == "cpu"
    assert "cpu" in server.devices() and info["load_s"] > 0
    image = _image()
    got, want = server.predict(image), here.predict(image)
    assert set(got) == set(want)
    for r in want:
        assert got[r].dtype == np.float32 and got[r].shape == image.shape
        np.testing.assert_array_equal(got[r], want[r])
    only = server.predict(image, regions=("heart", "left_clavicle"))
    assert set(only) == {"heart", "left_clavicle"}
    np.testing.assert_array_equal(only["heart"], want["heart"])


def test_calls_from_several_threads_are_served_one_at_a_time(server):
    images = [_image(seed, (64 + seed, 80)) for seed in range(4)]
    want = [server.predict(im, regions=("heart",))["heart"] for im in images]
    got: dict[int, np.ndarray] = {}

    def run(i):
        got[i] = server.predict(images[i], regions=("heart",))["heart"]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i in range(4):
        np.testing.assert_array_equal(got[i], want[i])


def test_a_model_error_comes_back_as_the_same_exception_and_the_process_serves_on(server):
    with pytest.raises(ValueError, match="2-D grayscale image"):
        server.predict(np.zeros((2, 3, 4, 5), np.float32))
    with pytest.raises(ValueError, match="unknown region"):
        server.predict(_image(), regions=("spleen",))
    assert server.alive
    assert set(server.predict(_image(), regions=("heart",))) == {"heart"}


def test_a_model_that_does_not_load_raises_its_error(tmp_path):
    from cxrseg.model import CheckpointError

    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"not a safetensors file")
    proc = PredictorProcess(bad, device="cpu", precision="fp32", env=ONE_THREAD)
    try:
        with pytest.raises(CheckpointError, match="broken.safetensors"):
            proc.info()
        assert not proc.alive
        with pytest.raises(PredictorProcessError, match="could not load the model"):
            proc.predict(_image())
    finally:
        proc.close()


def test_a_killed_process_makes_every_later_call_fail_clearly(ckpt):
    proc = PredictorProcess(ckpt, device="cpu", precision="fp32", env=ONE_THREAD)
    try:
        proc.info()
        os.kill(proc._proc.pid, signal.SIGKILL)
        proc._proc.wait(10)
        with pytest.raises(PredictorProcessError, match=r"ended \(exit status -9\)"):
            proc.predict(_image())
        assert not proc.alive
        with pytest.raises(PredictorProcessError, match="ended"):
            proc.predict(_image())
    finally:
        proc.close()


def test_close_ends_the_process_and_later_calls_say_so(ckpt):
    proc = PredictorProcess(ckpt, device="cpu", precision="fp32", env=ONE_THREAD)
    proc.info()
    proc.close()
    assert proc._proc.poll() == 0  # it exited by itself, not killed
    assert not proc.alive
    with pytest.raises(PredictorProcessError, match="was closed"):
        proc.predict(_image())
    proc.close()  # twice is fine


def test_close_while_loading_does_not_wait_for_the_load(ckpt):
    proc = PredictorProcess(ckpt, device="cpu", precision="fp32", env=ONE_THREAD)
    t0 = time.perf_counter()
    proc.close()
    assert proc._proc.poll() is not None
    assert time.perf_counter() - t0 < 8


def test_the_process_ends_when_its_parent_dies(ckpt, tmp_path):
    code = textwrap.dedent(f"""
        import os, sys
        from cxrseg.serve import PredictorProcess
        p = PredictorProcess({str(ckpt)!r}, device="cpu", precision="fp32", env={{"OMP_NUM_THREADS": "1"}})
        p.info()
        print(p._proc.pid, flush=True)
        os._exit(0)  # no close, no finaliser: as if killed
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, **ONE_THREAD})
    assert out.returncode == 0, out.stderr
    pid = int(out.stdout.split()[-1])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        # a zombie (our grandchild, reparented) counts as ended
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().split(") ", 1)[1].startswith("Z"):
                    break
        except OSError:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
        pytest.fail("the prediction process outlived its parent")


def test_matches_compares_model_device_and_refinement(server, ckpt):
    assert server.matches(str(ckpt), "cpu", None)
    assert not server.matches(str(ckpt), "auto", None)
    assert not server.matches(None, "cpu", None)
    assert not server.matches(str(ckpt), "cpu", False)
