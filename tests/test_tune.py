"""``cxrseg tune``: folds, search space, a tiny Optuna study that persists and resumes."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
optuna = pytest.importorskip("optuna")

from cxrseg.config import ModelConfig, TrainConfig  # noqa: E402
from cxrseg.dataset import Case  # noqa: E402
from cxrseg.phantom import write_phantom_dataset  # noqa: E402
from cxrseg.regions import REGIONS  # noqa: E402
from cxrseg.tune import (  # noqa: E402
    DEFAULT_SEARCH_SPACE,
    TuneResult,
    baseline_params,
    kfold_split,
    loss_label,
    resolve_search_space,
    scr_folds,
    suggest,
    tune,
)

TINY = ModelConfig(encoder_name="resnet18", decoder_channels=(16, 16, 16, 16, 16), input_size=64)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("phantoms")
    write_phantom_dataset(r, 4, seed=0, size=128)
    return r


def _n_trials(storage, name):
    return len(optuna.load_study(study_name=name, storage=storage).trials)


# --------------------------------------------------------------------------- folds


def test_kfold_split_is_deterministic_disjoint_balanced_and_stratified():
    ids = (
        [f"JPCLN{i:03d}" for i in range(1, 11)]
        + [f"JPCNN{i:03d}" for i in range(1, 6)]
        + ["X1", "X2"]
    )
    folds = kfold_split(ids, 3, seed=0)
    assert folds == kfold_split(list(reversed(ids)), 3, seed=0)
    assert folds != kfold_split(ids, 3, seed=1)
    assert sorted(c for f in folds for c in f) == sorted(ids)
    assert max(map(len, folds)) - min(map(len, folds)) <= 1
    for f in folds:  # every fold gets its share of nodule and non-nodule cases
        assert 3 <= sum(c.startswith("JPCLN") for c in f) <= 4
        assert 1 <= sum(c.startswith("JPCNN") for c in f) <= 2
    with pytest.raises(ValueError, match="at least 2 folds"):
        kfold_split(ids, 1)
    with pytest.raises(ValueError, match="at least 5 cases"):
        kfold_split(ids[:4], 5)


def test_scr_folds_odd_and_even_numbers():
    from cxrseg.dataset import case_fold

    cases = [
        Case(c, None, fold=case_fold(c)) for c in ("JPCLN001", "JPCLN002", "JPCNN001", "JPCNN004")
    ]
    assert scr_folds(cases) == [["JPCLN001", "JPCNN001"], ["JPCLN002", "JPCNN004"]]
    with pytest.raises(ValueError, match="--folds K"):
        scr_folds(cases + [Case("PHANTOM001", None)])


# ---------------------------------------------------------------------- search space


def test_search_space_and_suggest():
    space = resolve_search_space(None)
    assert set(space) == set(DEFAULT_SEARCH_SPACE)
    assert space["optimizer"] == ["sgd", "rmsprop", "adam", "adamw"]
    assert space["lr"]["log"] is True
    p = suggest(
        optuna.trial.FixedTrial(
            {"optimizer": "sgd", "lr": 0.01, "loss": "bce", "batch_size": 2, "aug_strength": 0.5}
        ),
        space,
    )
    assert p == {
        "optimizer": "sgd",
        "lr": 0.01,
        "batch_size": 2,
        "aug_strength": 0.5,
        "bce_weight": 1.0,
        "jaccard_weight": 0.0,
    }
    TrainConfig(**p)  # valid training parameters
    # continuous loss weights instead of the loss choice; fixed values; dropped parameters
    space2 = resolve_search_space(
        {"bce_weight": (0.0, 1.0), "batch_size": [4], "aug_strength": None, "lr": 0.001}
    )
    assert "loss" not in space2 and "aug_strength" not in space2
    p2 = suggest(optuna.trial.FixedTrial({"optimizer": "adam", "bce_weight": 0.25}), space2)
    assert (
        p2["jaccard_weight"] == pytest.approx(0.75) and p2["batch_size"] == 4 and p2["lr"] == 0.001
    )
    with pytest.raises(ValueError, match="unknown parameters"):
        resolve_search_space({"momentumm": [0.9]})
    with pytest.raises(ValueError, match="log range"):
        resolve_search_space({"lr": {"low": 0, "high": 1, "log": True}})
    with pytest.raises(ValueError, match="unknown"):
        resolve_search_space({"loss": ["dice"]})
    assert (
        loss_label(1, 1) == "BCE + Jaccard"
        and loss_label(1, 0) == "BCE"
        and loss_label(0, 1) == "Jaccard"
    )


# ------------------------------------------------------------------------- studies


#: A tiny, fast study: two folds, one epoch, a 64 px ResNet18 U-Net on the CPU.
TINY_STUDY = dict(folds=2, epochs=1, input_size=64, model_config=TINY, precision="fp32", device="cpu")


def test_tune_two_trials_two_folds_then_resume_to_three(root, tmp_path):
    out = tmp_path / "tune"
    events = []
    kw = dict(regions="all", seed=0, **TINY_STUDY)
    res = tune(root, out, n_trials=2, progress=events.append, **kw)
    assert isinstance(res, TuneResult)
    storage = res.storage
    assert storage == f"sqlite:///{(out / 'study.db').resolve()}"
    assert (out / "study.db").is_file()
    assert _n_trials(storage, "cxrseg") == 2
    folds = [e for e in events if e["kind"] == "fold"]
    assert len(folds) == 4 and {e["fold"] for e in folds} == {1, 2}
    assert events[0] == {"kind": "data", "cases": 4, "folds": [2, 2]}
    best = res.best
    assert best.regions == REGIONS
    assert 0.0 <= best.best_value <= 1.0
    assert best.best_value == pytest.approx(np.mean(best.best_fold_ious))
    assert len(best.best_fold_ious) == 2
    assert set(best.best_region_ious) == set(REGIONS)
    assert best.best_params["optimizer"] in ("sgd", "rmsprop", "adam", "adamw")
    tc = TrainConfig.from_dict(best.best_train_config)
    assert tc.epochs == 1 and tc.lr == pytest.approx(best.best_params["lr"])

    data = json.loads((out / "best_params.json").read_text())
    study = data["studies"][0]
    assert study["mean_iou"] == pytest.approx(best.best_value)
    assert study["params"] == best.best_params
    assert study["trials"]["complete"] == 2
    assert study["command"].startswith("cxrseg train") and f"--lr {tc.lr:.6g}" in study["command"]
    assert data["settings"]["n_folds"] == 2
    assert (out / "trials-cxrseg.csv").read_text().count("\n") == 3

    table = res.format_table()
    for word in (
        "region",
        "optimiser",
        "loss",
        "batch",
        "learning rate",
        "mean IoU",
        "all (multi-label)",
    ):
        assert word in table

    # resume: the study in SQLite is continued up to 3 trials in total
    events.clear()
    res3 = tune(root, out, n_trials=3, progress=events.append, **kw)
    assert _n_trials(storage, "cxrseg") == 3
    assert [e["trial"] for e in events if e["kind"] == "trial"] == [2]
    assert res3.best.n_complete == 3
    assert res3.best.best_value >= best.best_value
    # asking for 3 again runs nothing
    events.clear()
    tune(root, out, n_trials=3, progress=events.append, **kw)
    assert not [e for e in events if e["kind"] == "trial"]
    assert _n_trials(storage, "cxrseg") == 3

    # a study cannot be continued with other settings
    with pytest.raises(ValueError, match="epochs"):
        tune(root, out, n_trials=4, **{**kw, "epochs": 2})


def test_baseline_params_are_the_study_setting_within_the_space():
    base = TrainConfig.for_regions("left_clavicle")
    space = resolve_search_space(None)
    start = baseline_params(base, space)
    assert start == {
        "optimizer": "sgd",
        "lr": pytest.approx(0.1),
        "loss": "bce+jaccard",
        "batch_size": 1,
        "aug_strength": pytest.approx(1.0),
    }
    # a default outside the space is left to the sampler; fixed values are not parameters
    narrow = resolve_search_space(
        {"lr": {"low": 1e-4, "high": 1e-2}, "optimizer": ["adam", "rmsprop"], "batch_size": [1]}
    )
    assert baseline_params(base, narrow) == {"loss": "bce+jaccard", "aug_strength": pytest.approx(1.0)}
    rms = baseline_params(TrainConfig.for_regions("right_clavicle"), space)
    assert rms["optimizer"] == "rmsprop" and rms["lr"] == pytest.approx(0.00035)
    assert baseline_params(TrainConfig(bce_weight=0.3, jaccard_weight=0.7), space).get("loss") is None


def test_tune_starts_with_the_study_setting_and_reports_it(root, tmp_path):
    kw = dict(regions="left_clavicle", search_space={"batch_size": [1, 2]}, prune=False, **TINY_STUDY)
    res = tune(root, tmp_path / "a", n_trials=2, **kw)
    trials = optuna.load_study(study_name="cxrseg", storage=res.storage).trials
    first = trials[0]
    assert first.user_attrs.get("baseline") is True
    assert first.params["optimizer"] == "sgd" and first.params["lr"] == pytest.approx(0.1)
    assert first.params["batch_size"] == 1 and first.params["loss"] == "bce+jaccard"
    assert not trials[1].user_attrs.get("baseline")
    s = res.best
    assert s.baseline_value == pytest.approx(first.value)
    assert s.baseline_fold_ious == pytest.approx(first.user_attrs["fold_ious"])
    assert "starting point" in res.format_table()
    assert f"{first.value:.4f}" in res.format_table()
    data = json.loads((tmp_path / "a" / "best_params.json").read_text())
    assert data["studies"][0]["baseline"]["mean_iou"] == pytest.approx(first.value)
    rows = (tmp_path / "a" / "trials-cxrseg.csv").read_text().splitlines()
    assert rows[0].endswith("note") and rows[1].endswith("starting point")
    assert not rows[2].endswith("starting point")
    # resuming does not enqueue it again
    tune(root, tmp_path / "a", n_trials=3, **kw)
    trials = optuna.load_study(study_name="cxrseg", storage=res.storage).trials
    assert [bool(t.user_attrs.get("baseline")) for t in trials] == [True, False, False]
    # switched off: no starting point
    res = tune(root, tmp_path / "b", n_trials=1, baseline=False, **kw)
    assert res.best.baseline_value is None
    trials = optuna.load_study(study_name="cxrseg", storage=res.storage).trials
    assert not trials[0].user_attrs.get("baseline")


def test_tune_per_region_runs_one_study_per_region(root, tmp_path):
    out = tmp_path / "per"
    space = {
        "optimizer": ["adam"],
        "batch_size": [2],
        "loss": ["bce+jaccard"],
        "lr": {"low": 1e-3, "high": 1e-2},
    }
    res = tune(
        root,
        out,
        regions="heart,left_lung",
        per_region=True,
        n_trials=1,
        folds=2,
        epochs=1,
        input_size=64,
        model_config=TINY,
        precision="fp32",
        device="cpu",
        search_space=space,
        study_name="baseline",
    )
    assert [s.study_name for s in res.studies] == ["baseline-heart", "baseline-left_lung"]
    assert [s.regions for s in res.studies] == [("heart",), ("left_lung",)]
    for s in res.studies:
        assert s.best_train_config["optimizer"] == "adam" and s.best_train_config["batch_size"] == 2
        assert s.best_train_config["scheduler"] == "none"  # the study's constant learning rate
        assert set(s.best_region_ious) == set(s.regions)
    table = res.format_table()
    assert "heart" in table and "left lung (patient)" in table and "Adam" in table
    data = json.loads((out / "best_params.json").read_text())
    assert [d["regions"] for d in data["studies"]] == [["heart"], ["left_lung"]]
    # no trial checkpoints left behind
    assert sorted(p.name for p in out.iterdir()) == [
        "best_params.json",
        "study.db",
        "trials-baseline-heart.csv",
        "trials-baseline-left_lung.csv",
    ]


def test_cli_tune_resumes(root, tmp_path, monkeypatch, capsys):
    from cxrseg import cli

    out = tmp_path / "cli"
    base = [
        "tune",
        "--data",
        str(root),
        "--out",
        str(out),
        "--encoder",
        "resnet18",
        "--encoder-weights",
        "none",
        "--input-size",
        "64",
        "--folds",
        "2",
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--precision",
        "fp32",
        "--regions",
        "heart",
        "--search-space",
        '{"batch_size": [2], "optimizer": ["adam", "sgd"]}',
    ]
    for n in (1, 2):
        argv = base + ["--trials", str(n)]
        monkeypatch.setattr(sys, "argv", ["cxrseg"] + argv)
        assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "learning rate" in text and "best_params.json" in text
    assert (
        text.count("trial 0:") == 1 and text.count("trial 1:") == 1
    )  # the second run only added trial 1
    assert _n_trials(f"sqlite:///{out / 'study.db'}", "cxrseg") == 2
    assert (
        json.loads((out / "best_params.json").read_text())["studies"][0]["trials"]["complete"] == 2
    )
