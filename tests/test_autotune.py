"""Precision and layout chosen by measurement (cxrseg.autotune) and its per-machine cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _tiny_model import make_tiny_checkpoint


@pytest.fixture(autouse=True)
def _empty_cache(tmp_path, monkeypatch):
    """Each test starts from an empty autotune cache (tests of other files fill the session's)."""
    monkeypatch.setenv("CXRSEG_CACHE", str(tmp_path / "cxrseg-cache"))


@pytest.fixture()
def ckpt(tmp_path):
    return make_tiny_checkpoint(tmp_path / "tiny.safetensors")


def _fake_runner(times_ms, calls):
    """make_runner for choose(): each candidate 'runs' by advancing nothing but is
    recorded; the measurement is replaced by a fixed table through measure()."""

    def make(prec, cl):
        def run():
            calls.append((prec, cl))

        return run

    return make


def test_measure_times_round_robin_and_drops_slow_candidates():
    from cxrseg.autotune import measure

    now = [0.0]
    cost = {("fp32", True): 0.010, ("bf16", True): 0.004, ("fp32", False): 0.050}
    calls = []

    def runner(c):
        def run():
            calls.append(c)
            now[0] += cost[c]

        return run

    out = measure({c: (lambda c=c: runner(c)) for c in cost}, budget_s=1.0, clock=lambda: now[0])
    assert out["bf16/channels_last"] == pytest.approx(4.0)
    assert out["fp32/channels_last"] == pytest.approx(10.0)
    # the contiguous fp32 pass is > 1.5x the fastest after warm-up: timed once, then dropped
    assert calls.count(("fp32", False)) == 1
    assert calls.count(("bf16", True)) > 1
    # a budget smaller than the first warm-up run leaves the others unmeasured
    now[0] = 0.0
    out = measure({c: (lambda c=c: runner(c)) for c in cost}, budget_s=0.001, clock=lambda: now[0])
    assert out["fp32/channels_last"] is not None and out["bf16/channels_last"] is None


def test_pick_fastest_and_default_when_nothing_measured():
    from cxrseg.autotune import pick

    order = [("fp32", True), ("bf16", True), ("fp32", False)]
    assert pick({"fp32/channels_last": 9.0, "bf16/channels_last": 4.0}, order) == ("bf16", True)
    assert pick({"fp32/channels_last": 3.0, "bf16/channels_last": 4.0}, order) == ("fp32", True)
    assert pick({}, order) == ("fp32", True)


def test_choice_is_cached_and_invalidated_by_torch_model_and_device(monkeypatch):
    import torch

    from cxrseg import autotune as A

    dev = torch.device("cpu")
    calls = []
    # an ample budget (MAX_ROUNDS ends the loop): a loaded machine must not leave it incomplete
    kw = dict(model_id="abc", input_size=64, make_runner=_fake_runner({}, calls), budget_s=30.0)
    first = A.choose(dev, **kw)
    assert first.source == "measured" and calls
    entry = json.loads(A.cache_file().read_text())["entries"]
    assert len(entry) == 1
    calls.clear()
    again = A.choose(dev, **kw)
    assert again.source == "cache" and not calls
    assert (again.precision, again.channels_last) == (first.precision, first.channels_last)
    # another model id: measured again
    assert A.choose(dev, **{**kw, "model_id": "other"}).source == "measured"
    # another torch version: measured again (a scoped patch: ``monkeypatch.undo()`` would also
    # undo the private cache folder of conftest and write into the user's cache)
    with monkeypatch.context() as m:
        m.setattr(torch, "__version__", "9.9.9")
        assert A.choose(dev, **kw).source == "measured"
    assert A.choose(dev, **kw).source == "cache"
    # another device (a different key for the same model): a miss
    key_cpu = A.cache_key(dev, model_id="abc", input_size=64)
    key_gpu = {**key_cpu, "device": "cuda:0", "machine": {"gpu": "X", "capability": "9.0"}}
    assert A.lookup(key_cpu) is not None and A.lookup(key_gpu) is None
    # another thread count is another machine configuration
    n = torch.get_num_threads()
    torch.set_num_threads(n + 1)
    try:
        assert A.lookup(A.cache_key(dev, model_id="abc", input_size=64)) is None
    finally:
        torch.set_num_threads(n)
    # a corrupt cache file is ignored, not an error
    A.cache_file().write_text("{not json")
    assert A.choose(dev, **kw).source == "measured"


def test_cached_choice_is_used_and_explicit_precision_wins(ckpt, monkeypatch):
    import torch

    from cxrseg import autotune as A
    from cxrseg.predict import Predictor, clear_cache, get_predictor

    clear_cache()
    p = Predictor(ckpt, device="cpu")
    assert p.autotune is not None and p.autotune.source == "measured"
    assert (p.precision, p.channels_last) == (p.autotune.precision, p.autotune.channels_last)
    assert p.autotune.measured_ms["fp32/channels_last"] is not None
    # plant a different choice in the cache: "auto" follows it without measuring
    key = A.cache_key(torch.device("cpu"), model_id=p.model_id, input_size=p.input_size)
    A._write_entry(key, {"key": key, "precision": "bf16", "channels_last": False, "measured_ms": {}})
    q = Predictor(ckpt, device="cpu", precision="auto")
    assert q.autotune.source == "cache"
    assert (q.precision, q.channels_last) == ("bf16", False)
    assert next(q.model.parameters()).dtype == torch.bfloat16
    assert get_predictor(ckpt, device="cpu").precision == "bf16"
    # an explicit precision wins and measures nothing
    monkeypatch.setattr(A, "choose", lambda *a, **k: pytest.fail("measured despite --precision"))
    r = Predictor(ckpt, device="cpu", precision="fp32")
    assert r.precision == "fp32" and r.autotune is None and r.channels_last
    assert next(r.model.parameters()).dtype == torch.float32
    monkeypatch.setenv("CXRSEG_PRECISION", "fp32")
    assert Predictor(ckpt, device="cpu").precision == "fp32"
    clear_cache()


def test_autotune_can_be_switched_off(ckpt, monkeypatch):
    from cxrseg.predict import Predictor

    monkeypatch.setenv("CXRSEG_AUTOTUNE", "0")
    p = Predictor(ckpt, device="cpu")
    assert (p.precision, p.channels_last, p.autotune.source) == ("fp32", True, "default")


def test_incomplete_measurement_is_repeated_then_kept():
    import time

    import torch

    from cxrseg import autotune as A

    dev = torch.device("cpu")

    def make(prec, cl):
        def run():
            time.sleep(0.05)

        return run

    kw = dict(model_id="slow", input_size=64, make_runner=make, budget_s=0.01)
    if len(A.candidates(dev)) < 2:
        pytest.skip("one candidate only: every measurement is complete")
    sources = [A.choose(dev, **kw).source for _ in range(A.MAX_ATTEMPTS + 1)]
    # the budget only fits the first candidate: measured again until MAX_ATTEMPTS, then cached
    assert sources == ["measured"] * A.MAX_ATTEMPTS + ["cache"]


def test_a_test_undoing_its_patches_still_writes_into_the_private_cache(monkeypatch):
    from cxrseg.autotune import cache_file

    monkeypatch.undo()  # also undoes conftest's per-test folders: the session's remain
    assert Path.home() not in cache_file().parents
