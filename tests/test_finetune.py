"""Fine-tuning on corrections: it learns them, keeps its lineage, and refuses to forget."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cxrseg.corrections import CorrectionStore, file_sha256  # noqa: E402
from cxrseg.dataset import DatasetIndex  # noqa: E402
from cxrseg.finetune import FinetuneError, _replay_sampler, finetune, finetune_iter  # noqa: E402
from cxrseg.model import read_metadata  # noqa: E402

REGION = "left_lung"


def _tree_hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def make_weak_model(root: Path, *, n_cases: int = 12, steps: int = 4) -> tuple[Path, Path]:
    """A phantom dataset (128 px) and a tiny U-Net trained for a few steps only."""
    from cxrseg.config import ModelConfig, TrainConfig
    from cxrseg.phantom import write_phantom_dataset
    from cxrseg.train import train_on_dataset

    ds = root / "ds"
    write_phantom_dataset(ds, n_cases, size=128)
    mc = ModelConfig(encoder_name="resnet18", decoder_channels=(16, 16, 16, 16, 16), input_size=64)
    tc = TrainConfig(
        epochs=1, batch_size=4, lr=3e-3, precision="fp32", val_fraction=0.3, aug_strength=0.3
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CXRSEG_CACHE", str(root / "cache"))  # the array cache stays in the test folder
        res = train_on_dataset(
            ds,
            root / "weak",
            model_config=mc,
            train_config=tc,
            encoder_weights=None,
            device="cpu",
            quiet=True,
            max_steps=steps,
        )
    return ds, res.last_path


@pytest.fixture(scope="module")
def weak(tmp_path_factory):
    root = tmp_path_factory.mktemp("weak")
    ds, ck = make_weak_model(root)
    return ds, ck


def _correct(store: CorrectionStore, ds: Path, cases, regions=(REGION,)):
    """The phantoms' exact masks stand in for a person's corrections."""
    index = DatasetIndex(ds)
    for c in cases:
        masks = index[c].load_masks(regions)
        for r in regions:
            store.save(
                c, r, masks[r], annotator="test", model_id="weak", image_path=index[c].image_path
            )


FAST = dict(device="cpu", precision="fp32", batch_size=4, aug_strength=0.2, cache_dir=False)


def test_replay_sampler_mixes_and_covers_the_pool():
    sampler, per_epoch = _replay_sampler(3, 10, repeats=2, ratio=2.0, seed=0)
    assert per_epoch == 12
    seen = set()
    rng = np.random.default_rng(0)
    for epoch in range(1, 4):
        order = sampler(epoch, rng)
        corr = [i for i in order if i < 3]
        replay = [i - 3 for i in order if i >= 3]
        assert sorted(corr) == [0, 0, 1, 1, 2, 2]
        assert len(replay) == 12
        seen.update(replay)
    assert seen == set(range(10))
    assert len(sampler(0, rng)) == 18  # train_iter counts steps with epoch 0
    s0, n0 = _replay_sampler(3, 0, repeats=1, ratio=2.0, seed=0)
    assert n0 == 0 and sorted(s0(1, rng)) == [0, 1, 2]


def test_finetune_learns_corrections_with_lineage(weak, tmp_path):
    ds, ck = weak
    gt_before = _tree_hashes(ds / "masks")
    src_meta = read_metadata(ck)
    train_cases = src_meta["train_cases"]
    store = CorrectionStore(tmp_path / "corrections", dataset_root=ds)
    corrected = train_cases[:3]
    _correct(store, ds, corrected)
    out = tmp_path / "new"
    events = []
    res = finetune(
        store,
        ck,
        out,
        data_root=ds,
        epochs=3,
        lr=3e-3,
        tolerance=1.0,
        progress=events.append,
        **FAST,
    )
    kinds = [e["kind"] for e in events]
    assert kinds[-1] == "done" and "step" in kinds and "report" in kinds
    assert res.written and res.path == out / "best.safetensors" and res.path.is_file()
    b, a = res.before["corrected"][REGION], res.after["corrected"][REGION]
    assert a > b + 0.1, res.table()
    assert set(res.before["corrected_cases"]) == set(corrected)
    assert not set(corrected) & set(res.val_cases)
    assert set(res.val_cases) == set(src_meta["val_cases"])
    assert res.replay_cases and not set(res.replay_cases) & (set(corrected) | set(res.val_cases))
    # lineage in the new checkpoint
    meta = read_metadata(res.path)
    assert meta["parent_id"] == src_meta["model_id"] == res.parent_id
    assert meta["model_id"] == res.model_id != src_meta["model_id"]
    assert meta["date"] and meta["finetune"]["replay_ratio"] == 2.0
    got = {(c["case"], c["region"], c["version"]): c for c in meta["corrections"]}
    assert set(got) == {(c, REGION, 1) for c in corrected}
    for v in store.latest_versions():
        assert got[(v.case, v.region, v.version)]["sidecar_sha256"] == file_sha256(v.sidecar_path)
    assert meta["finetune"]["label_sources"][corrected[0]] == {
        "heart": "ground truth",
        "left_clavicle": "ground truth",
        "right_clavicle": "ground truth",
        "left_lung": "correction v1",
        "right_lung": "ground truth",
    }
    assert meta["finetune"]["after"]["corrected"][REGION] == pytest.approx(a, abs=1e-4)
    assert meta["val_cases"] == res.val_cases
    # nothing left behind but the checkpoint; ground truth untouched
    assert [p.name for p in out.iterdir()] == ["best.safetensors"]
    assert _tree_hashes(ds / "masks") == gt_before


def test_refuses_when_validation_drops_and_force_writes(weak, tmp_path, capsys):
    from cxrseg.cli import main

    ds, ck = weak
    store = CorrectionStore(tmp_path / "corrections", dataset_root=ds)
    _correct(store, ds, read_metadata(ck)["train_cases"][:2])
    out = tmp_path / "wrecked.safetensors"
    args = [
        "finetune",
        "--corrections",
        str(store.root),
        "--from",
        str(ck),
        "--out",
        str(out),
        "--data",
        str(ds),
        "--epochs",
        "1",
        "--optimizer",
        "sgd",
        "--lr",
        "5",
        "--replay-ratio",
        "0",
        "--early-stopping",
        "0",
        "--device",
        "cpu",
        "--precision",
        "fp32",
        "--quiet",
        "--aug-strength",
        "0",
    ]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "tolerance" in err and "--force" in err
    assert not out.exists()
    assert not list(tmp_path.glob(".cxrseg-finetune-*"))
    report = tmp_path / "report.json"
    assert main(args + ["--force", "--report", str(report)]) == 0
    meta = read_metadata(out)
    assert meta["finetune"]["forced"] is True and "tolerance" in meta["finetune"]["reason"]
    doc = json.loads(report.read_text())
    assert doc["written"] is True
    assert any(
        doc["after"]["validation"][r] < doc["before"]["validation"][r] - 0.005
        for r in doc["before"]["validation"]
    )


def test_without_dataset_uses_pseudo_labels_and_needs_force(weak, tmp_path):
    ds, ck = weak
    store = CorrectionStore(tmp_path / "corrections")
    _correct(store, ds, ["PHANTOM002"])
    res = finetune(store, ck, tmp_path / "a.safetensors", epochs=1, **FAST)
    assert not res.written and res.refused and "no validation cases" in res.reason
    assert not (tmp_path / "a.safetensors").exists()
    src = res.label_sources["PHANTOM002"]
    assert src[REGION] == "correction v1" and src["heart"] == "pseudo-label"
    assert res.before["validation"] == {} and REGION in res.before["corrected"]
    res = finetune(store, ck, tmp_path / "a.safetensors", epochs=1, force=True, **FAST)
    assert res.written and read_metadata(res.path)["finetune"]["forced"] is True


def test_cancel_by_closing_the_generator(weak, tmp_path):
    ds, ck = weak
    store = CorrectionStore(tmp_path / "corrections", dataset_root=ds)
    _correct(store, ds, ["PHANTOM002"])
    out = tmp_path / "models" / "x.safetensors"
    gen = finetune_iter(store, ck, out, data_root=ds, epochs=50, **FAST)
    for ev in gen:
        if ev["kind"] == "step":
            break
    assert list((tmp_path / "models").glob(".cxrseg-finetune-*"))
    gen.close()
    assert not out.exists()
    assert list((tmp_path / "models").iterdir()) == []


def test_bad_inputs(weak, tmp_path):
    ds, ck = weak
    empty = CorrectionStore(tmp_path / "empty")
    with pytest.raises(FinetuneError, match="no correction"):
        finetune(empty, ck, tmp_path / "o.safetensors", **FAST)
    store = CorrectionStore(tmp_path / "c", dataset_root=ds)
    _correct(store, ds, ["PHANTOM002"])
    with pytest.raises(FinetuneError, match="source checkpoint"):
        finetune(store, ck, ck, **FAST)
    with pytest.raises(FinetuneError, match="validation cases not in"):
        finetune(store, ck, tmp_path / "o.safetensors", data_root=ds, val_cases=["NOPE"], **FAST)
    with pytest.raises(FinetuneError, match="not found"):
        finetune(tmp_path / "missing", ck, tmp_path / "o.safetensors", **FAST)


def test_progress_during_data_preparation_and_cache_beside_the_dataset(weak, tmp_path, monkeypatch):
    import shutil

    from cxrseg.workspace import workdir

    ds0, ck = weak
    ds = tmp_path / "ds"
    shutil.copytree(ds0, ds)
    monkeypatch.delenv("CXRSEG_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # where a home-folder cache would land
    store = CorrectionStore(tmp_path / "corrections", dataset_root=ds)
    corrected = read_metadata(ck)["train_cases"][:2]
    _correct(store, ds, corrected)
    events = list(finetune_iter(store, ck, tmp_path / "new.safetensors", data_root=ds, epochs=1,
                                tolerance=1.0, max_steps=1,
                                **{k: v for k, v in FAST.items() if k != "cache_dir"}))
    kinds = [e["kind"] for e in events]
    prep = [e for e in events if e["kind"] == "prepare"]
    res = events[-1]["result"]
    n = len(corrected) + len(res.replay_cases) + len(res.val_cases)
    # one event per prepared case, counting up to the total, all before training starts
    assert [e["done"] for e in prep] == list(range(1, n + 1)) and prep[-1]["total"] == n
    assert {e["what"] for e in prep} == {"corrections", "replay", "validation"}
    assert max(i for i, k in enumerate(kinds) if k == "prepare") < kinds.index("start")
    cache = workdir(ds) / "cache"
    assert len(list(cache.glob("arrays-*.npz"))) == 2  # replay and validation arrays
    # no pre-processed licensed image lands in the home folder (model-speed caches may)
    assert not list((tmp_path / "home").rglob("arrays-*.npz"))
    # a second run finds the cache: no per-case events for the cached sets
    again = list(finetune_iter(store, ck, tmp_path / "new2.safetensors", data_root=ds, epochs=1,
                               tolerance=1.0, max_steps=1,
                               **{k: v for k, v in FAST.items() if k != "cache_dir"}))
    assert {e["what"] for e in again if e["kind"] == "prepare"} == {"corrections"}


def test_plan_explains_the_validation_set(weak, tmp_path):
    from cxrseg.finetune import plan_finetune

    ds, ck = weak
    meta = read_metadata(ck)
    store = CorrectionStore(tmp_path / "corrections", dataset_root=ds)
    empty = plan_finetune(store.root, ck, data_root=ds)
    assert empty.corrected_cases == [] and "no corrections" in empty.message
    corrected = [meta["val_cases"][0], meta["train_cases"][0]]
    _correct(store, ds, corrected)
    plan = plan_finetune(store.root, ck, data_root=ds)
    assert plan.corrected_cases == sorted(corrected)
    assert plan.val_cases == sorted(set(meta["val_cases"]) - set(corrected))
    assert plan.dropped == [meta["val_cases"][0]]
    assert not set(plan.candidates) & set(corrected) and set(plan.val_cases) <= set(plan.candidates)
    none = plan_finetune(store.root, ck, data_root=ds, val_cases=[])
    assert none.val_cases == [] and none.message.startswith("0 validation cases")
    assert "Tick validation cases" in none.message
    nodata = plan_finetune(store.root, ck)
    assert nodata.val_cases == [] and "no dataset" in nodata.message


# ----------------------------------------------------------------------- settings search


def test_candidate_settings_search_only_when_the_recipe_is_left_open():
    from cxrseg.finetune import SEARCH_CANDIDATES, candidate_settings

    auto = candidate_settings(lr=None, epochs=None, replay_ratio=None)
    assert auto == [dict(c) for c in SEARCH_CANDIDATES] and len(auto) >= 4
    assert auto[0] == {"lr_factor": 0.1, "epochs": 5, "replay_ratio": 2.0}  # the single run's default
    # any of the three given: that one setting
    assert candidate_settings(lr=None, epochs=3, replay_ratio=None) == [
        {"lr_factor": 0.1, "epochs": 3, "replay_ratio": 2.0}
    ]
    assert candidate_settings(lr=1e-4, epochs=None, replay_ratio=None) == [
        {"lr": 1e-4, "epochs": 5, "replay_ratio": 2.0}
    ]
    assert len(candidate_settings(lr=None, epochs=None, replay_ratio=None, search=False)) == 1
    # forced search with a fixed value: duplicates collapse
    fixed = candidate_settings(lr=None, epochs=None, replay_ratio=3.0, search=True)
    assert all(c["replay_ratio"] == 3.0 for c in fixed)
    assert len(fixed) == len({tuple(sorted(c.items())) for c in fixed}) < len(SEARCH_CANDIDATES)


SEARCH = dict(FAST, max_steps=3, search_budget=3600.0)


def test_search_tries_the_settings_and_writes_the_best_that_passes(weak, tmp_path):
    ds, ck = weak
    store = CorrectionStore(tmp_path / "corrections", dataset_root=ds)
    _correct(store, ds, read_metadata(ck)["train_cases"][:2])
    events, kept = [], []

    def progress(ev):
        events.append(ev)
        if ev["kind"] == "candidate":  # only the candidates' weights stay on disk
            kept.append(sorted(p.name for p in tmp_path.glob(".cxrseg-finetune-*/candidate-*/*.[ps]*")))

    res = finetune(store, ck, tmp_path / "new.safetensors", data_root=ds, tolerance=1.0,
                   progress=progress, **SEARCH)
    rows = res.candidates
    from cxrseg.finetune import SEARCH_CANDIDATES

    assert len(rows) == len(SEARCH_CANDIDATES) and all(r["passed"] for r in rows)
    starts = [e for e in events if e["kind"] == "candidate_start"]
    done = [e for e in events if e["kind"] == "candidate"]
    assert [e["i"] for e in starts] == [e["i"] for e in done] == list(range(1, len(rows) + 1))
    src_lr = read_metadata(ck)["train_config"]["lr"]
    assert [r["settings"]["lr"] for r in rows] == pytest.approx([src_lr * c["lr_factor"] for c in SEARCH_CANDIDATES])
    assert [r["settings"]["epochs"] for r in rows] == [c["epochs"] for c in SEARCH_CANDIDATES]
    # the one written raised the corrected cases most, and the report is its own
    best = max(range(len(rows)), key=lambda k: rows[k]["gain"])
    assert [r["chosen"] for r in rows] == [k == best for k in range(len(rows))]
    assert res.written and f"setting {best + 1} of {len(rows)}" in res.reason
    assert res.after["corrected"] == rows[best]["corrected"]
    assert res.after["corrected"][REGION] - res.before["corrected"][REGION] == pytest.approx(rows[best]["gain"])
    meta = read_metadata(res.path)
    assert len(meta["finetune"]["search"]) == len(rows)
    assert meta["finetune"]["lr"] == pytest.approx(rows[best]["settings"]["lr"])
    assert meta["finetune"]["replay_ratio"] == rows[best]["settings"]["replay_ratio"]
    assert "<- written" in done[-1]["table"] or rows[-1]["chosen"] is False
    # one before-evaluation for all the candidates
    assert sum(1 for e in events if e["kind"] == "evaluate" and e["which"] == "before") == 1
    assert sum(1 for e in events if e["kind"] == "evaluate" and e["which"] == "after") == len(rows)
    assert kept[0] == ["best.safetensors"] and len(kept[-1]) == len(rows)
    assert all(set(k) == {"best.safetensors"} for k in kept)
    # candidates' checkpoints are not left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrections", "new.safetensors"]


def test_search_budget_and_no_setting_passing(weak, tmp_path, monkeypatch):
    from cxrseg import finetune as ft

    ds, ck = weak
    store = CorrectionStore(tmp_path / "corrections", dataset_root=ds)
    _correct(store, ds, read_metadata(ck)["train_cases"][:1])
    # a spent budget: the first setting runs, the others are reported as not tried
    res = finetune(store, ck, tmp_path / "a.safetensors", data_root=ds, tolerance=1.0,
                   **{**SEARCH, "search_budget": 0.0})
    assert res.written and res.candidates[0]["passed"]
    assert [r.get("skipped") for r in res.candidates[1:]] == ["time budget"] * (len(res.candidates) - 1)
    assert "not tried (time budget)" in ft.format_candidates(res.before, res.candidates)

    # no setting passes the guard: nothing written, and the reason says so
    monkeypatch.setattr(ft._FinetuneRun, "_guard_of", lambda self, b, a: (False, "validation fell (test)"))
    res = finetune(store, ck, tmp_path / "b.safetensors", data_root=ds, **{**SEARCH, "search_budget": 3600.0})
    assert not res.written and res.refused and not (tmp_path / "b.safetensors").exists()
    assert f"none of the {len(ft.SEARCH_CANDIDATES)} settings tried" in res.reason
    assert not any(r["chosen"] for r in res.candidates)
    # --force writes the one best for the corrected cases
    res = finetune(store, ck, tmp_path / "c.safetensors", data_root=ds, force=True, **SEARCH)
    best = max(range(len(res.candidates)), key=lambda k: res.candidates[k]["gain"])
    assert res.written and res.candidates[best]["chosen"] and "--force" in res.reason


def test_search_needs_validation_cases(weak, tmp_path):
    ds, ck = weak
    store = CorrectionStore(tmp_path / "corrections")
    _correct(store, ds, ["PHANTOM002"])
    res = finetune(store, ck, tmp_path / "a.safetensors", force=True, **SEARCH)
    assert len(res.candidates) == 1 and res.written


def test_cli_finetune_searches_by_default_and_reports_the_settings(weak, tmp_path, capsys):
    from cxrseg import cli

    ds, ck = weak
    store = CorrectionStore(tmp_path / "corrections", dataset_root=ds)
    _correct(store, ds, read_metadata(ck)["train_cases"][:1])
    report = tmp_path / "report.json"
    argv = ["finetune", "--corrections", str(store.root), "--from", str(ck), "--out",
            str(tmp_path / "new.safetensors"), "--data", str(ds), "--tolerance", "1", "--device", "cpu",
            "--precision", "fp32", "--batch-size", "4", "--search-budget", "0", "--report", str(report)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "[search] setting 1/" in out and "not tried (time budget)" in out and "<- written" in out
    doc = json.loads(report.read_text())
    assert doc["written"] and doc["candidates"][0]["chosen"] and doc["candidates"][1]["skipped"]
    # a given setting trains once
    argv2 = [a if a != str(tmp_path / "new.safetensors") else str(tmp_path / "one.safetensors") for a in argv]
    assert cli.main(argv2 + ["--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "[search]" not in out
    assert len(json.loads(report.read_text())["candidates"]) == 1
