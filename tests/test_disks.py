"""Full and read-only disks: one line naming the path and the cause, exit 3, valid outputs."""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import subprocess

import numpy as np
import pytest
from _tiny_model import make_tiny_checkpoint
from PIL import Image

from cxrseg.io import describe_oserror, is_disk_error
from cxrseg.regions import REGIONS

N = 6


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.safetensors")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("in")
    rng = np.random.default_rng(1)
    for i in range(N):
        Image.fromarray(rng.integers(0, 255, (256, 256), dtype=np.uint8)).save(d / f"IM{i}.png")
    return d


def _predict(ckpt, images, out, *extra):
    from cxrseg.cli import main

    return main(["predict", str(images), "--out", str(out), "--model", str(ckpt), "--workers", "0",
                 "--batch-size", "1", "--quiet", *extra])


def _check_consistent(out):
    """Done cases are complete, errors.csv lists only cases not done, the CSV = the markers."""
    done = {p.stem: json.loads(p.read_text()) for p in (out / ".done").glob("*.json")}
    for case in done:
        for r in REGIONS:
            m = np.asarray(Image.open(out / "masks" / r / f"{case}.png"))
            assert m.shape == (256, 256)
    failed = set()
    if (out / "errors.csv").exists():
        with open(out / "errors.csv", newline="") as fh:
            failed = {row["case"] for row in csv.DictReader(fh)}
    assert not failed & set(done)
    with open(out / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted({r["case"] for r in rows}) == sorted(done)
    assert len(rows) == 5 * len(done)
    assert not list(out.rglob("*.tmp"))
    return done, failed


def test_full_disk_stops_at_once_with_one_line(ckpt, images, tmp_path, monkeypatch, capsys):
    import cxrseg.io as cio

    real = cio.atomic_write
    calls = {"n": 0, "paths": []}

    def filling(path, write):
        calls["n"] += 1
        calls["paths"].append(str(path))
        if calls["n"] > 8:  # case 1 (5 masks + marker), then the disk is full in case 2
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, write)

    monkeypatch.setattr(cio, "atomic_write", filling)
    out = tmp_path / "out"
    rc = _predict(ckpt, images, out)
    err = capsys.readouterr().err
    assert rc == 3
    assert "Traceback" not in err
    final = [ln for ln in err.splitlines() if ln.startswith("cxrseg predict: error:")]
    assert len(final) == 1
    assert "no space left on device" in final[0] and str(out) in final[0]
    assert "not attempted" in final[0]
    # stopped at the first failing write: no later case was tried
    assert not [p for p in calls["paths"] if any(f"IM{i}" in p for i in range(2, N))]
    done, failed = _check_consistent(out)
    assert sorted(done) == ["IM0"] and failed == {"IM1"}
    # space again: the next run resumes and finishes
    monkeypatch.setattr(cio, "atomic_write", real)
    assert _predict(ckpt, images, out) == 0
    done, failed = _check_consistent(out)
    assert len(done) == N and not failed and not (out / "errors.csv").exists()


@contextlib.contextmanager
def _tmpfs(path, *options):
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(path)],
                       capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_real_full_disk(ckpt, images, tmp_path, capsys):
    with _tmpfs(tmp_path / "disk", "size=900k") as disk:
        out = disk / "out"
        rc = _predict(ckpt, images, out, "--heatmaps")  # ~650 KB per case
        err = capsys.readouterr().err
        assert rc == 3, err
        assert "no space left on device" in err and "Traceback" not in err
        done, failed = _check_consistent(out)
        assert len(done) < N and len(failed) <= 1


def test_read_only_output(ckpt, images, tmp_path, capsys):
    with _tmpfs(tmp_path / "ro", "size=64k", "ro") as ro:
        rc = _predict(ckpt, images, ro / "out")
        err = capsys.readouterr().err
        assert rc == 3
        assert err.strip().count("\n") == 0, err  # one line
        assert "read-only file system" in err and str(ro / "out") in err
        from cxrseg.cli import main

        assert main(["samples", str(ro / "s"), "-n", "1", "--size", "64"]) == 3
        err = capsys.readouterr().err
        assert "read-only file system" in err and "Traceback" not in err


def test_read_only_output_simulated(ckpt, images, tmp_path, monkeypatch, capsys):
    """The same without mounting anything: every write is refused by the file system."""
    real_open = os.open

    def ro_open(path, flags, *a, **k):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and str(path).startswith(str(tmp_path)):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(os, "open", ro_open)
    import builtins

    real_b_open = builtins.open

    def ro_builtin_open(file, mode="r", *a, **k):
        if any(c in mode for c in "wax+") and str(file).startswith(str(tmp_path)):
            raise OSError(errno.EROFS, "Read-only file system", str(file))
        return real_b_open(file, mode, *a, **k)

    monkeypatch.setattr(builtins, "open", ro_builtin_open)
    (tmp_path / "out").mkdir()
    rc = _predict(ckpt, images, tmp_path / "out")
    err = capsys.readouterr().err
    assert rc == 3 and "read-only file system" in err and str(tmp_path / "out") in err
    assert "Traceback" not in err


def test_messages():
    e = OSError(errno.ENOSPC, "No space left on device", "/o/masks/heart/a.png")
    assert describe_oserror(e) == "/o/masks/heart/a.png: no space left on device (the disk or quota is full)"
    assert is_disk_error(e)
    short = OSError("1048576 requested and 0 written")
    assert "only 0 of 1048576 bytes could be written: no space left on device" in describe_oserror(
        short, "/o/x.npy"
    )
    assert describe_oserror(short, "/o/x.npy").startswith("/o/x.npy: ")
    assert is_disk_error(short)
    ro = OSError(errno.EROFS, "Read-only file system", "/ro")
    assert describe_oserror(ro) == "/ro: read-only file system"
    assert not is_disk_error(ValueError("x"))


def test_atomic_write_names_the_target_not_its_temporary(tmp_path):
    from cxrseg.io import atomic_write

    def full(_fh):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as e:
        atomic_write(tmp_path / "x.png", full)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []
