"""The corrections store and autosave: versions, crash safety, ground-truth protection."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from cxrseg.corrections import (
    AutosaveStore,
    CorrectionError,
    CorrectionStore,
    file_sha256,
    mask_stats,
)
from cxrseg.io import CXRSegIOError, read_mask
from cxrseg.phantom import write_phantom_dataset

REPO = Path(__file__).resolve().parent.parent


def _tree_hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def dataset(tmp_path) -> Path:
    root = tmp_path / "ds"
    write_phantom_dataset(root, 2, size=64)
    return root


def _square(shape=(64, 64), r0=10, r1=30, c0=10, c1=30):
    m = np.zeros(shape, bool)
    m[r0:r1, c0:c1] = True
    return m


def test_save_creates_versions_and_latest_wins(dataset):
    store = CorrectionStore.for_dataset(dataset)
    assert store.root == (dataset / "corrections").resolve()
    gt = read_mask(dataset / "masks" / "left_clavicle" / "PHANTOM001.gif")
    pred = np.zeros_like(gt)
    first = _square()
    v1 = store.save(
        "PHANTOM001",
        "left clavicle",
        first,
        prediction=pred,
        truth=gt,
        model_id="m1",
        annotator="ann",
        image_path=dataset / "images" / "PHANTOM001.png",
    )
    v2 = store.save(
        "PHANTOM001", "left_clavicle", gt, prediction=pred, truth=gt, model_id="m1", annotator="ann"
    )
    assert (v1.version, v2.version) == (1, 2)
    assert (
        v1.mask_path.name == "PHANTOM001.v001.png"
        and v1.sidecar_path.name == "PHANTOM001.v001.json"
    )
    assert v1.mask_path.parent == store.root / "masks" / "left_clavicle"
    # newest wins, older stays
    assert store.latest("PHANTOM001", "left_clavicle").version == 2
    np.testing.assert_array_equal(store.load("PHANTOM001", "left_clavicle"), gt)
    np.testing.assert_array_equal(store.load("PHANTOM001", "left_clavicle", version=1), first)
    rows = list(store.iter_latest())
    assert [(c, r) for c, r, _p, _m in rows] == [("PHANTOM001", "left_clavicle")]
    assert rows[0][2] == v2.mask_path and rows[0][3]["version"] == 2
    # sidecar content
    side = json.loads(v1.sidecar_path.read_text())
    assert (
        side["case"] == "PHANTOM001" and side["region"] == "left_clavicle" and side["version"] == 1
    )
    assert side["model_id"] == "m1" and side["annotator"] == "ann"
    t = dt.datetime.fromisoformat(side["time"])
    assert t.utcoffset() == dt.timedelta(0)
    assert side["pixels"] == int(first.sum())
    assert side["pixels_changed"] == int(first.sum())  # prediction was empty
    assert side["iou_prediction"] == 0.0
    inter, union = (first & gt).sum(), (first | gt).sum()
    assert side["iou_truth"] == pytest.approx(inter / union)
    assert side["shape"] == [64, 64]
    assert side["image_path"].endswith("PHANTOM001.png")
    assert side["mask_sha256"] == file_sha256(v1.mask_path)
    assert json.loads(v2.sidecar_path.read_text())["iou_truth"] == 1.0
    assert store.cases() == ["PHANTOM001"] and len(store) == 1


def test_mask_stats_compares_on_the_mask_grid():
    m = _square((8, 8), 0, 4, 0, 8)
    truth_big = np.kron(m, np.ones((2, 2), bool))  # same aspect, twice the size
    s = mask_stats(m, prediction=np.zeros((8, 8), bool), truth=truth_big)
    assert (
        s["iou_truth"] == 1.0
        and s["pixels_changed"] == 32
        and s["added"] == 32
        and s["removed"] == 0
    )
    assert mask_stats(m)["iou_prediction"] is None


def test_mask_without_sidecar_is_invisible_and_its_number_not_reused(tmp_path):
    store = CorrectionStore(tmp_path / "store")
    v1 = store.save("CASE1", "heart", _square())
    # a crash after the mask, before the sidecar
    orphan = v1.mask_path.with_name("CASE1.v002.png")
    orphan.write_bytes(v1.mask_path.read_bytes())
    assert store.latest("CASE1", "heart").version == 1
    assert [v.version for v in store.versions("CASE1", "heart")] == [1]
    v3 = store.save("CASE1", "heart", _square(r1=40))
    assert v3.version == 3
    # a broken sidecar is reported by name (an older version never silently wins)
    (v1.mask_path.parent / "CASE1.v004.json").write_text("{not json")
    with pytest.raises(CorrectionError, match="CASE1.v004.json"):
        store.latest("CASE1", "heart")


def test_concurrent_saves_get_distinct_versions(tmp_path):
    store = CorrectionStore(tmp_path / "store")
    out, errors = [], []

    def work(i):
        try:
            out.append(store.save("CASE1", "right_lung", _square(r1=10 + i)).version)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(out) == list(range(1, 9))
    for v in store.versions("CASE1", "right_lung"):
        assert file_sha256(v.mask_path) == v.meta["mask_sha256"]


def test_ground_truth_roots_are_refused(dataset, tmp_path):
    for bad in (dataset, dataset / "masks", dataset / "masks" / "heart", tmp_path):
        with pytest.raises(CorrectionError, match="ground-truth"):
            CorrectionStore(bad, dataset_root=dataset)
    # without the dataset: a folder whose masks/ holds non-version files looks like GT
    with pytest.raises(CorrectionError, match="ground-truth"):
        CorrectionStore(dataset)
    assert isinstance(CorrectionError("x"), (CXRSegIOError, ValueError))


def test_ground_truth_behind_links_is_protected_where_it_lies(dataset, tmp_path):
    """Mask files that are links (a dataset assembled from links): the folders they point
    into are ground truth too, and so is a linked mask folder."""
    from cxrseg.corrections import _ground_truth_dirs

    real = tmp_path / "elsewhere"
    (real / "heart").mkdir(parents=True)
    for f in sorted((dataset / "masks" / "heart").iterdir()):
        target = real / "heart" / f.name
        f.rename(target)
        f.symlink_to(target)
    linked = tmp_path / "linked-lung"
    (dataset / "masks" / "left_lung").rename(linked)
    (dataset / "masks" / "left_lung").symlink_to(linked, target_is_directory=True)
    dirs = _ground_truth_dirs(dataset.resolve(), (dataset / "corrections").resolve())
    assert (real / "heart").resolve() in dirs and linked.resolve() in dirs
    assert (dataset / "masks" / "right_lung").resolve() in dirs
    assert (dataset / "masks" / "heart").resolve() not in dirs  # only links there now
    with pytest.raises(CorrectionError, match="ground-truth"):
        CorrectionStore(real / "heart" / "sub", dataset_root=dataset)
    CorrectionStore(tmp_path / "store", dataset_root=dataset)  # a folder beside them is fine


def test_ground_truth_bytes_unchanged_by_saves(dataset):
    before = _tree_hashes(dataset / "masks")
    store = CorrectionStore.for_dataset(dataset)
    for r in ("heart", "left_lung"):
        for _ in range(2):
            store.save(
                "PHANTOM002",
                r,
                _square(),
                truth=read_mask(dataset / "masks" / r / "PHANTOM002.gif"),
            )
    assert _tree_hashes(dataset / "masks") == before


@pytest.mark.parametrize("bad", ["../evil", "a/b", "", ".hidden", "x*y"])
def test_bad_case_ids_are_refused(tmp_path, bad):
    with pytest.raises(CorrectionError, match="case id"):
        CorrectionStore(tmp_path / "s").save(bad, "heart", _square())


def test_bad_masks_are_refused_and_leave_nothing(tmp_path):
    store = CorrectionStore(tmp_path / "s")
    with pytest.raises(CorrectionError, match="2-D"):
        store.save("CASE1", "heart", np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="unknown region"):
        store.save("CASE1", "spleen", _square())
    assert not any(p.is_file() for p in (tmp_path / "s").rglob("*"))


# ---------------------------------------------------------------------------- killing a saver

_CHILD_PAUSE = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    import cxrseg.corrections as C
    store = C.CorrectionStore(sys.argv[1])
    real = C.write_mask
    def slow_write_mask(mask, path):
        out = real(mask, path)
        print("MASK-WRITTEN", flush=True)
        time.sleep(60)          # killed here: mask on disk, sidecar not yet
        return out
    C.write_mask = slow_write_mask
    m = np.ones((64, 64), bool)
    store.save("CASE1", "heart", m)
    """
)


def test_kill_between_mask_and_sidecar_leaves_no_half_version(tmp_path):
    store = CorrectionStore(tmp_path / "store")
    v1 = store.save("CASE1", "heart", _square())
    sha1 = file_sha256(v1.mask_path)
    side1 = v1.sidecar_path.read_bytes()
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD_PAUSE, str(store.root)], stdout=subprocess.PIPE, text=True
    )
    try:
        line = proc.stdout.readline()
        assert line.strip() == "MASK-WRITTEN"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert (v1.mask_path.parent / "CASE1.v002.png").is_file()  # the orphan mask
    assert not (v1.mask_path.parent / "CASE1.v002.json").exists()
    latest = store.latest("CASE1", "heart")
    assert latest.version == 1
    assert file_sha256(latest.mask_path) == sha1 and latest.sidecar_path.read_bytes() == side1
    np.testing.assert_array_equal(store.load("CASE1", "heart"), _square())
    assert store.save("CASE1", "heart", _square(r1=50)).version == 3


_CHILD_LOOP = textwrap.dedent(
    """
    import sys
    import numpy as np
    import cxrseg.corrections as C
    store = C.CorrectionStore(sys.argv[1])
    rng = np.random.default_rng(int(sys.argv[2]))
    print("READY", flush=True)
    while True:
        m = rng.random((2048, 2048)) < 0.5      # a huge, incompressible mask
        store.save("CASE1", "left_lung", m)
    """
)


def test_random_sigkill_during_saves_keeps_every_visible_version_whole(tmp_path):
    store = CorrectionStore(tmp_path / "store")
    base = store.save("CASE1", "left_lung", _square((2048, 2048)))
    base_sha = file_sha256(base.mask_path)
    rnd = random.Random(1234)
    for round_ in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD_LOOP, str(store.root), str(round_)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout.readline().strip() == "READY"
            time.sleep(rnd.uniform(0.2, 1.5))
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(timeout=30)
            proc.stdout.close()
        versions = store.versions("CASE1", "left_lung")
        assert versions[0].version == 1 and file_sha256(versions[0].mask_path) == base_sha
        for v in versions:  # every visible version is complete and matches its sidecar
            assert file_sha256(v.mask_path) == v.meta["mask_sha256"]
            assert v.meta["version"] == v.version
        latest = store.latest("CASE1", "left_lung")
        assert read_mask(latest.mask_path).shape == (2048, 2048)
    # no temporary file is mistaken for a version
    names = [p.name for p in (store.root / "masks" / "left_lung").iterdir()]
    assert all(n.startswith(("CASE1.v", ".")) for n in names)


# ---------------------------------------------------------------------------- autosave


def test_autosave_roundtrip_pending_discard(tmp_path):
    auto = AutosaveStore(tmp_path / "work")
    assert auto.pending() == []
    m = _square((100, 37))
    p = auto.save("CASE.1", "left_clavicle", m, model_id="abc", source="prediction")
    assert p == tmp_path / "work" / "autosave" / "CASE.1.left_clavicle.npz"
    auto.save("CASE2", "heart", _square())
    pend = auto.pending()
    assert {(e.case, e.region) for e in pend} == {("CASE.1", "left_clavicle"), ("CASE2", "heart")}
    assert [e.region for e in auto.pending("CASE.1")] == ["left_clavicle"]
    np.testing.assert_array_equal(auto.restore("CASE.1", "left clavicle"), m)
    assert auto.info("CASE.1", "left_clavicle")["model_id"] == "abc"
    dt.datetime.fromisoformat(pend[0].time)
    assert auto.discard("CASE.1", "left_clavicle") is True
    assert auto.discard("CASE.1", "left_clavicle") is False
    with pytest.raises(KeyError):
        auto.restore("CASE.1", "left_clavicle")
    assert [e.case for e in auto.pending()] == ["CASE2"]
    # no temporary files left behind; a corrupt autosave is skipped, not fatal
    assert sorted(f.name for f in auto.dir.iterdir()) == ["CASE2.heart.npz"]
    (auto.dir / "CASE3.heart.npz").write_bytes(b"garbage")
    assert [e.case for e in auto.pending()] == ["CASE2"]
    with pytest.raises(CorrectionError, match="CASE3"):
        auto.restore("CASE3", "heart")
