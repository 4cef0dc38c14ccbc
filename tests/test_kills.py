"""Killed and terminated runs: workers die with their parent, leftovers are swept, never read.

These tests run ``cxrseg predict`` and correction saves in real subprocesses and kill them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from _tiny_model import make_tiny_checkpoint
from PIL import Image

psutil = pytest.importorskip("psutil")
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux signals")

REPO = Path(__file__).resolve().parent.parent

#: ``cxrseg predict`` whose decoding of each image takes SECONDS (argv[1]): a run that is
#: surely busy in its DataLoader workers when it is killed.
_SLOW_PREDICT = """
import sys, time
import cxrseg.batch as pc
SECONDS = float(sys.argv[1])  # read now: main() rewrites sys.argv
orig = pc.DecodeDataset.__getitem__
def slow(self, i):
    print("DECODING", i, flush=True)
    time.sleep(SECONDS)
    return orig(self, i)
pc.DecodeDataset.__getitem__ = slow
from cxrseg.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.safetensors")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("in")
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(d / f"IM{i}.png")
    return d


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO), env.get("PYTHONPATH", "")])
    return env


def _start(ckpt, images, out, seconds):
    args = ["predict", str(images), "--out", str(out), "--model", str(ckpt), "--workers", "2",
            "--batch-size", "1", "--quiet"]
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_PREDICT, str(seconds), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    got = threading.Event()

    def watch():
        for line in proc.stdout:
            if line.startswith("DECODING"):
                got.set()

    threading.Thread(target=watch, daemon=True).start()
    assert got.wait(120), "the run never started decoding"
    workers = psutil.Process(proc.pid).children(recursive=True)
    assert workers, "no DataLoader worker process"
    return proc, workers


def _gone(procs, timeout):
    """Whether every process ends (or is a zombie) within ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        alive = []
        for p in procs:
            try:
                if p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.NoSuchProcess:
                pass
        if not alive:
            return []
        time.sleep(0.2)
    return alive


def _leftovers(out: Path):
    return sorted(
        str(p.relative_to(out))
        for p in out.rglob("*")
        if p.is_file() and (p.name.endswith(".tmp") or p.parent.name == ".claims")
    )


def test_sigkill_takes_the_workers_with_it(ckpt, images, tmp_path):
    out = tmp_path / "out"
    proc, workers = _start(ckpt, images, out, seconds=120)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    try:
        alive = _gone(workers, 10)
        assert not alive, f"orphaned workers still running: {[p.pid for p in alive]}"
    finally:
        for p in workers:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
    # the dead run's claims are taken over by the next run, which finishes every case
    from cxrseg.cli import main

    assert main(["predict", str(images), "--out", str(out), "--model", str(ckpt),
                 "--workers", "0", "--quiet"]) == 0
    assert len(list((out / "masks" / "heart").glob("*.png"))) == 6
    assert _leftovers(out) == []


def test_sigterm_exits_cleanly_like_sigint(ckpt, images, tmp_path):
    out = tmp_path / "out"
    proc, workers = _start(ckpt, images, out, seconds=120)
    os.kill(proc.pid, signal.SIGTERM)
    try:
        rc = proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    err = proc.stderr.read()
    proc.stderr.close()
    assert rc == 143, err
    assert "terminated" in err and "Traceback" not in err
    try:
        assert not _gone(workers, 10)
    finally:
        for p in workers:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
    assert _leftovers(out) == []  # claims released, no temporary file


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temporary_files_are_swept_and_never_results(ckpt, images, tmp_path):
    from cxrseg.cli import main

    out = tmp_path / "out"
    args = ["predict", str(images), "--out", str(out), "--model", str(ckpt), "--workers", "0",
            "--quiet", "--heatmaps"]
    assert main(args) == 0
    dead = _dead_pid()
    stale = [
        out / "heatmaps" / "heart" / f".IM0.npy.{dead}.tmp",
        out / "masks" / "heart" / f".IM9.png.{dead}.0a1b2c3d.tmp",
        out / ".done" / f".IM9.json.{dead}.0a1b2c3d.tmp",
        out / f".predictions.csv.{dead}.0a1b2c3d.tmp",
    ]
    for f in stale:
        f.write_bytes(b"half")
    live = out / "masks" / "heart" / f".IM8.png.{os.getpid()}.0a1b2c3d.tmp"
    live.write_bytes(b"a live writer")
    assert main(args) == 0
    assert not any(f.exists() for f in stale)
    assert live.exists()  # another live process's file is left alone
    rows = (out / "predictions.csv").read_text().splitlines()
    assert len(rows) == 1 + 6 * 5 and not any("IM9" in r or "IM8" in r for r in rows)


def test_a_live_writers_temporary_with_an_all_digit_random_part_is_kept(tmp_path):
    """The random part of a temporary's name can be all decimal digits; it must not be
    read as the writer's process id (parallel parts sweeping one folder lost their CSVs)."""
    from cxrseg.io import sweep_temporary

    dead = _dead_pid()
    live = [tmp_path / f".predictions.part-0-of-7.csv.{os.getpid()}.83920417.tmp",
            tmp_path / f".IM1.png.{os.getppid()}.00000001.tmp"]
    stale = [tmp_path / f".predictions.csv.{dead}.12345678.tmp", tmp_path / f".IM0.npy.{dead}.tmp"]
    for f in live + stale:
        f.write_bytes(b"x")
    (tmp_path / "notes.12345678.tmp").write_bytes(b"not ours")  # not hidden: not a temporary of ours
    removed = sweep_temporary(tmp_path)
    assert sorted(removed) == sorted(stale)
    assert all(f.exists() for f in live) and (tmp_path / "notes.12345678.tmp").exists()


_CHILD_RESERVE = """
import sys, time
from cxrseg.corrections import CorrectionStore
store = CorrectionStore(sys.argv[1])
n, mask_path, _side = store._reserve("CASE1", "heart")
print("RESERVED", n, flush=True)
time.sleep(120)
"""


def test_killed_correction_save_leaves_nothing_that_is_read(tmp_path):
    from cxrseg.corrections import CorrectionStore

    store = CorrectionStore(tmp_path / "store")
    m = np.zeros((40, 40), bool)
    m[5:20, 5:20] = True
    store.save("CASE1", "heart", m)
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD_RESERVE, str(store.root)],
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        assert proc.stdout.readline().split() == ["RESERVED", "2"]
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
        proc.stdout.close()
    d = store.region_dir("heart")
    reservation = d / "CASE1.v002.png"
    assert reservation.is_file() and reservation.stat().st_size <= 32
    tmp = d / f".CASE1.v003.png.{proc.pid}.0a1b2c3d.tmp"
    tmp.write_bytes(b"half a png")
    # zero-byte reservations (older savers): swept once they are clearly abandoned
    old_empty = d / "CASE2.v001.png"
    old_empty.touch()
    os.utime(old_empty, (time.time() - 600, time.time() - 600))
    fresh_empty = d / "CASE3.v001.png"
    fresh_empty.touch()
    assert store.latest("CASE1", "heart").version == 1  # never read as a version
    assert store.latest("CASE2", "heart") is None
    again = CorrectionStore(store.root)  # the next session on the store
    assert sorted(p.name for p in again.swept) == sorted(
        [reservation.name, tmp.name, old_empty.name]
    )
    assert not reservation.exists() and not tmp.exists() and not old_empty.exists()
    assert fresh_empty.exists()  # may be a saver at work right now
    assert again.save("CASE1", "heart", m).version == 2
    assert [p.name for p in d.iterdir() if p.name.endswith(".tmp")] == []
