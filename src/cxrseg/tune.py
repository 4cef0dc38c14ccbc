"""``cxrseg tune``: k-fold cross-validated Bayesian hyper-parameter search (Optuna TPE).

Every trial draws a combination of optimiser, learning rate, loss, batch size and
augmentation strength, trains one model per fold with :func:`cxrseg.train.train_iter`
(``epochs`` epochs on the other folds) and scores it by the validation Jaccard (IoU) of
the held-out fold after the last epoch, averaged over the folds (and over the regions
of a multi-label model). Optuna's TPE sampler (seeded) proposes the next combination;
a median pruner may stop a poor trial after any fold.

The study lives in an SQLite file (default ``<out>/study.db``) so a search can be
stopped and resumed: running again with the same ``--study-name`` adds trials until
the study holds ``--trials`` finished trials. The data are pre-processed once
(:func:`cxrseg.training_arrays.build_arrays`, cached) and split by index; trial checkpoints go to a
temporary folder that is deleted after each fold.

Outputs in ``<out>``: ``study.db``, ``best_params.json`` (the best combination per study,
as :class:`cxrseg.config.TrainConfig` fields and as a ``cxrseg train`` command line) and
``trials-<study>.csv``.

The JSRT/SCR U-Net study tuned one model per region (``--per-region``: one study per region); without
it a single multi-label model over ``--regions`` is tuned.
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .config import ModelConfig, TrainConfig, to_dict
from .regions import DISPLAY_NAMES, REGIONS, parse_regions

#: The default search space. A value may be a list (categorical choice), a dict
#: ``{"low", "high"[, "log"]}`` or a 2-tuple ``(low, high)`` (a float range; log-uniform
#: for ``lr`` and ``weight_decay``), or a single value (fixed).
DEFAULT_SEARCH_SPACE: dict[str, Any] = {
    "optimizer": ["sgd", "rmsprop", "adam", "adamw"],
    "lr": {"low": 1e-5, "high": 1e-1, "log": True},
    "loss": ["bce+jaccard", "bce", "jaccard"],
    "batch_size": [1, 2, 4, 8],
    "aug_strength": {"low": 0.0, "high": 1.5},
}

#: ``loss`` choices -> (bce_weight, jaccard_weight).
LOSSES: dict[str, tuple[float, float]] = {
    "bce+jaccard": (1.0, 1.0),
    "bce": (1.0, 0.0),
    "jaccard": (0.0, 1.0),
}

_TUNABLE = {
    "optimizer",
    "lr",
    "loss",
    "bce_weight",
    "jaccard_weight",
    "batch_size",
    "aug_strength",
    "weight_decay",
    "momentum",
    "scheduler",
    "aug_multiplier",
}
_LOG_BY_DEFAULT = {"lr", "weight_decay"}
_INT_PARAMS = {"batch_size", "aug_multiplier"}

#: Study attributes that must match when a study is resumed.
_STUDY_KEYS = (
    "regions",
    "folds",
    "epochs",
    "input_size",
    "encoder_name",
    "decoder_channels",
    "cases",
)


# ----------------------------------------------------------------------------- results


@dataclass
class StudyResult:
    """The outcome of one Optuna study (one region, or one multi-label model)."""

    study_name: str
    regions: tuple[str, ...]
    best_value: float
    best_params: dict[str, Any]
    best_train_config: dict[str, Any]
    best_fold_ious: list[float] = field(default_factory=list)
    best_region_ious: dict[str, float] = field(default_factory=dict)
    best_trial: int | None = None
    #: The starting point's trial (see :func:`baseline_params`): its mean IoU and fold IoUs.
    baseline_value: float | None = None
    baseline_fold_ious: list[float] = field(default_factory=list)
    n_complete: int = 0
    n_pruned: int = 0
    n_failed: int = 0

    @property
    def label(self) -> str:
        if len(self.regions) == 1:
            return DISPLAY_NAMES[self.regions[0]]
        if tuple(self.regions) == REGIONS:
            return "all (multi-label)"
        return "+".join(self.regions) + " (multi-label)"

    def to_dict(self) -> dict[str, Any]:
        return {
            "study_name": self.study_name,
            "regions": list(self.regions),
            "mean_iou": self.best_value,
            "fold_ious": self.best_fold_ious,
            "region_ious": self.best_region_ious,
            "params": self.best_params,
            "train_config": self.best_train_config,
            "best_trial": self.best_trial,
            "baseline": {"mean_iou": self.baseline_value, "fold_ious": self.baseline_fold_ious},
            "trials": {
                "complete": self.n_complete,
                "pruned": self.n_pruned,
                "failed": self.n_failed,
            },
        }


@dataclass
class TuneResult:
    """All studies of a :func:`tune` run."""

    out_dir: Path
    storage: str
    studies: list[StudyResult]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def best(self) -> StudyResult:
        """The (first) study's result; with ``per_region`` see :attr:`studies`."""
        return self.studies[0]

    @property
    def best_params(self) -> dict[str, Any]:
        return self.best.best_params

    @property
    def best_value(self) -> float:
        return self.best.best_value

    def format_table(self) -> str:
        """The best combination per study, like the study's table."""
        head = [
            "region",
            "optimiser",
            "loss",
            "batch",
            "learning rate",
            "aug",
            "mean IoU",
            "starting point",
            "trials",
        ]
        rows = []
        for s in self.studies:
            tc = s.best_train_config
            if not tc:
                rows.append(
                    [s.label, "-", "-", "-", "-", "-", "no finished trial", "-", _trials_str(s)]
                )
                continue
            ious = s.best_fold_ious
            sd = f" ± {np.std(ious, ddof=1):.3f}" if len(ious) > 1 else ""
            rows.append(
                [
                    s.label,
                    {"sgd": "SGD", "rmsprop": "RMSprop", "adam": "Adam", "adamw": "AdamW"}[
                        tc["optimizer"]
                    ],
                    loss_label(tc["bce_weight"], tc["jaccard_weight"]),
                    str(tc["batch_size"]),
                    f"{tc['lr']:.5f}" if tc["lr"] >= 1e-4 else f"{tc['lr']:.2e}",
                    f"{tc['aug_strength']:.2f}",
                    f"{s.best_value:.4f}{sd}",
                    "-" if s.baseline_value is None else f"{s.baseline_value:.4f}",
                    _trials_str(s),
                ]
            )
        widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
        line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
        st = self.settings
        title = (
            f"Best hyper-parameters: mean validation IoU over {st.get('n_folds', '?')} folds "
            f"({st.get('fold_kind', '')}), {st.get('epochs', '?')} epoch(s) per fold, "
            f"input {st.get('input_size', '?')} px"
        )
        return "\n".join(
            [title, line(head), line(["-" * w for w in widths])] + [line(r) for r in rows]
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "objective": "mean validation IoU over the folds (and regions), after the last epoch",
            "storage": self.storage,
            "settings": self.settings,
            "studies": [s.to_dict() for s in self.studies],
        }


def _trials_str(s: StudyResult) -> str:
    extra = []
    if s.n_pruned:
        extra.append(f"{s.n_pruned} pruned")
    if s.n_failed:
        extra.append(f"{s.n_failed} failed")
    return f"{s.n_complete}" + (f" (+{', '.join(extra)})" if extra else "")


def loss_label(bce_weight: float, jaccard_weight: float) -> str:
    """``"BCE + Jaccard"``, ``"BCE"``, ``"Jaccard"`` or a weighted sum."""
    if bce_weight and not jaccard_weight:
        return "BCE"
    if jaccard_weight and not bce_weight:
        return "Jaccard"
    if math.isclose(bce_weight, jaccard_weight):
        return "BCE + Jaccard"
    return f"{bce_weight:.2f}·BCE + {jaccard_weight:.2f}·Jaccard"


# ------------------------------------------------------------------------------ folds


def kfold_split(case_ids: Sequence[str], k: int, seed: int = 0) -> list[list[str]]:
    """Deterministic k-fold split, stratified by id prefix (JPCLN / JPCNN / other).

    Each group is shuffled with ``seed`` and dealt round-robin to the folds (continuing
    where the previous group stopped), so the folds differ in size by at most one.

    Raises
    ------
    ValueError
        If ``k < 2`` or there are fewer cases than folds.
    """
    ids = sorted(set(case_ids))
    if k < 2:
        raise ValueError(f"k-fold cross-validation needs at least 2 folds, got {k}")
    if len(ids) < k:
        raise ValueError(f"{k} folds need at least {k} cases, got {len(ids)}")
    groups: dict[str, list[str]] = {}
    for cid in ids:
        groups.setdefault(cid[:5] if cid[:5] in ("JPCLN", "JPCNN") else "other", []).append(cid)
    rng = np.random.default_rng(seed)
    folds: list[list[str]] = [[] for _ in range(k)]
    pos = 0
    for key in sorted(groups):
        g = groups[key]
        for i in rng.permutation(len(g)):
            folds[pos % k].append(g[int(i)])
            pos += 1
    return [sorted(f) for f in folds]


def scr_folds(cases) -> list[list[str]]:
    """SCR's two official folds (odd / even case numbers) of :class:`cxrseg.dataset.Case` s."""
    other = [c.case_id for c in cases if c.fold not in (1, 2)]
    if other:
        raise ValueError(
            f"--scr-folds needs JSRT case ids (JPCLN/JPCNN + number); these cases have no SCR "
            f"fold: {other[:5]}{' ...' if len(other) > 5 else ''}. Use --folds K instead."
        )
    folds = [sorted(c.case_id for c in cases if c.fold == k) for k in (1, 2)]
    if not all(folds):
        raise ValueError("--scr-folds: one of the two SCR folds has no case")
    return folds


# ----------------------------------------------------------------------- search space


def _check_space(space: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(space) - _TUNABLE)
    if unknown:
        raise ValueError(
            f"search space: unknown parameters {unknown}; expected some of {sorted(_TUNABLE)}"
        )
    if "loss" in space and ("bce_weight" in space or "jaccard_weight" in space):
        raise ValueError(
            "search space: give either 'loss' (choices) or 'bce_weight'/'jaccard_weight', not both"
        )
    out = {}
    for k, v in space.items():
        if isinstance(v, dict):
            if set(v) - {"low", "high", "log"} or not {"low", "high"} <= set(v):
                raise ValueError(
                    f"search space {k!r}: a range is "
                    f"{{'low': .., 'high': .., 'log': bool}}, got {v}"
                )
            if not float(v["low"]) <= float(v["high"]):
                raise ValueError(f"search space {k!r}: low must be <= high, got {v}")
            v = {
                "low": float(v["low"]),
                "high": float(v["high"]),
                "log": bool(v.get("log", k in _LOG_BY_DEFAULT)),
            }
            if v["log"] and v["low"] <= 0:
                raise ValueError(f"search space {k!r}: a log range needs low > 0, got {v['low']}")
        elif isinstance(v, tuple):
            if len(v) != 2:
                raise ValueError(f"search space {k!r}: a (low, high) tuple has 2 values, got {v}")
            v = {"low": float(v[0]), "high": float(v[1]), "log": k in _LOG_BY_DEFAULT}
        elif isinstance(v, list):
            if not v:
                raise ValueError(f"search space {k!r}: empty list of choices")
            if k == "loss":
                bad = [x for x in v if x not in LOSSES]
                if bad:
                    raise ValueError(
                        f"search space 'loss': unknown {bad}; expected some of {list(LOSSES)}"
                    )
        out[k] = v
    return out


def resolve_search_space(search_space: dict[str, Any] | None) -> dict[str, Any]:
    """:data:`DEFAULT_SEARCH_SPACE` updated with ``search_space`` (a value ``None`` drops a
    parameter, which then keeps its :class:`TrainConfig` default), checked."""
    space = dict(DEFAULT_SEARCH_SPACE)
    for k, v in (search_space or {}).items():
        if k in ("bce_weight", "jaccard_weight"):
            space.pop("loss", None)
        if v is None:
            space.pop(k, None)
        else:
            space[k] = v
    return _check_space(space)


def suggest(trial, space: dict[str, Any]) -> dict[str, Any]:
    """Draw one combination from ``space`` with an Optuna trial; returns TrainConfig fields
    (``loss`` is translated into ``bce_weight``/``jaccard_weight``)."""
    params: dict[str, Any] = {}
    for k, v in space.items():
        if isinstance(v, list):
            params[k] = trial.suggest_categorical(k, v) if len(v) > 1 else v[0]
        elif isinstance(v, dict):
            if k in _INT_PARAMS:
                params[k] = trial.suggest_int(k, int(v["low"]), int(v["high"]), log=v["log"])
            else:
                params[k] = trial.suggest_float(k, v["low"], v["high"], log=v["log"])
        else:
            params[k] = v
    if "loss" in params:
        params["bce_weight"], params["jaccard_weight"] = LOSSES[params.pop("loss")]
    elif "bce_weight" in params and "jaccard_weight" not in params:
        params["jaccard_weight"] = 1.0 - float(params["bce_weight"])
    elif "jaccard_weight" in params and "bce_weight" not in params:
        params["bce_weight"] = 1.0 - float(params["jaccard_weight"])
    if params.get("bce_weight", 1) + params.get("jaccard_weight", 1) <= 0:
        params["bce_weight"], params["jaccard_weight"] = 1.0, 1.0
    return params


def baseline_params(base: TrainConfig, space: dict[str, Any]) -> dict[str, Any]:
    """``base`` (the study's setting for the region, or the multi-label defaults) written as
    Optuna parameters of ``space``: the first trial of a new study, so that the search's best
    is read against the starting point under the same folds and epochs. Parameters whose
    default lies outside the space are left to the sampler."""
    values: dict[str, Any] = {k: getattr(base, k) for k in _TUNABLE if hasattr(base, k)}
    for name, weights in LOSSES.items():
        if math.isclose(base.bce_weight, weights[0]) and math.isclose(base.jaccard_weight, weights[1]):
            values["loss"] = name
    out: dict[str, Any] = {}
    for k, v in space.items():
        if k not in values:
            continue
        x = values[k]
        if isinstance(v, list):
            if len(v) > 1 and x in v:
                out[k] = x
        elif isinstance(v, dict) and v["low"] <= float(x) <= v["high"] and v["low"] < v["high"]:
            out[k] = int(x) if k in _INT_PARAMS else float(x)
    return out


# ------------------------------------------------------------------------------- tune


def _default_storage(out_dir: Path) -> str:
    return f"sqlite:///{(out_dir / 'study.db').resolve()}"


def _trial_train_config(base: TrainConfig, params: dict[str, Any]) -> TrainConfig:
    d = to_dict(base)
    d.update(params)
    return TrainConfig.from_dict(d)


def _count(study) -> tuple[int, int, int]:
    from optuna.trial import TrialState

    states = [t.state for t in study.get_trials(deepcopy=False)]
    return (
        states.count(TrialState.COMPLETE),
        states.count(TrialState.PRUNED),
        states.count(TrialState.FAIL),
    )


def _study_result(study, regions, base: TrainConfig) -> StudyResult:
    from optuna.trial import TrialState

    n_c, n_p, n_f = _count(study)
    done = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.state == TrialState.COMPLETE and t.value is not None
    ]
    if not done:
        return StudyResult(
            study.study_name,
            tuple(regions),
            float("nan"),
            {},
            {},
            n_complete=n_c,
            n_pruned=n_p,
            n_failed=n_f,
        )
    bt = max(done, key=lambda t: t.value)
    start = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("baseline")]
    params = dict(bt.user_attrs.get("train_params", {}))
    tc = to_dict(_trial_train_config(base, params)) if params else {}
    return StudyResult(
        study_name=study.study_name,
        regions=tuple(regions),
        best_value=float(bt.value),
        best_params=dict(bt.params),
        best_train_config=tc,
        best_fold_ious=list(bt.user_attrs.get("fold_ious", [])),
        best_region_ious=dict(bt.user_attrs.get("region_ious", {})),
        best_trial=bt.number,
        baseline_value=(
            float(start[0].value)
            if start and start[0].state == TrialState.COMPLETE and start[0].value is not None
            else None
        ),
        baseline_fold_ious=list(start[0].user_attrs.get("fold_ious", [])) if start else [],
        n_complete=n_c,
        n_pruned=n_p,
        n_failed=n_f,
    )


def _write_trials_csv(study, path: Path) -> None:
    trials = study.get_trials(deepcopy=False)
    keys = sorted({k for t in trials for k in t.params})
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["trial", "state", "mean_iou", "fold_ious"] + keys + ["seconds", "note"])
        for t in trials:
            secs = (
                (t.datetime_complete - t.datetime_start).total_seconds()
                if t.datetime_complete and t.datetime_start
                else ""
            )
            w.writerow(
                [
                    t.number,
                    t.state.name,
                    "" if t.value is None else f"{t.value:.6f}",
                    " ".join(f"{v:.4f}" for v in t.user_attrs.get("fold_ious", [])),
                ]
                + [t.params.get(k, "") for k in keys]
                + [f"{secs:.1f}" if secs != "" else ""]
                + ["starting point" if t.user_attrs.get("baseline") else ""]
            )
    os.replace(tmp, path)


def tune(
    data_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    regions="all",
    n_trials: int = 20,
    folds: int | str = 5,
    epochs: int = 10,
    input_size: int = 256,
    storage: str | None = None,
    seed: int = 0,
    search_space: dict[str, Any] | None = None,
    progress: Callable[[dict], None] | None = None,
    study_name: str = "cxrseg",
    per_region: bool = False,
    model_config: ModelConfig | None = None,
    encoder_weights=None,
    device: str = "auto",
    precision: str = "auto",
    prune: bool = True,
    cases: Sequence[str] | None = None,
    baseline: bool = True,
    cache_dir=None,
) -> TuneResult:
    """Cross-validated Bayesian search of training hyper-parameters.

    Parameters
    ----------
    data_root : path-like
        A JSRT/SCR-layout folder (:class:`cxrseg.dataset.DatasetIndex`).
    out_dir : path-like
        Where ``study.db`` (default storage), ``best_params.json`` and the trial tables go.
    regions : str or sequence of str
        Regions of the model (one region: a per-region model; several: multi-label).
    n_trials : int
        Total number of finished (complete, pruned or failed) trials wanted in each study;
        a resumed study only runs the missing ones.
    folds : int or "scr"
        Number of folds ``k`` of a seeded, stratified k-fold split, or ``"scr"`` for SCR's
        two official folds (odd / even JSRT case numbers).
    epochs : int
        Epochs per fold and trial.
    input_size : int
        Square input size of the model.
    storage : str, optional
        Optuna storage URL; default ``sqlite:///<out_dir>/study.db``.
    seed : int
        Seeds the fold split, the TPE sampler and every training run.
    search_space : dict, optional
        Updates :data:`DEFAULT_SEARCH_SPACE` (see there for the value forms).
    progress : callable, optional
        Called with event dicts: ``{"kind": "data", "cases", "folds"}``, ``{"kind":
        "trial", "study", "trial", "params"}``, ``{"kind": "fold", "study", "trial", "fold",
        "iou"}``, ``{"kind": "trial_end", "study", "trial", "value", "state"}``.
    study_name : str
        Name of the study in the storage (``<name>-<region>`` with ``per_region``).
    per_region : bool
        Run one study per region (the study's per-region models).
    model_config : ModelConfig, optional
        Template of the architecture (encoder, decoder channels); ``regions`` and
        ``input_size`` replace its own. Default: ResNet34 U-Net.
    encoder_weights : None, "none", "imagenet" or path
        Encoder initialisation of every trial's model (see :func:`cxrseg.model.build_model`).
    device, precision : str
        Passed to the training loop.
    prune : bool
        Stop unpromising trials after a fold (Optuna median pruner).
    cases : sequence of str, optional
        Restrict the search to these case ids (default: every case with the masks).
    cache_dir : optional
        Cache folder of the pre-processed arrays (``False`` disables the cache).
    baseline : bool
        Make the first trial of a new study the starting point (:func:`baseline_params`:
        the study's per-region setting, or the multi-label defaults), so that the result
        reads the best combination against it under the same folds and epochs.

    Returns
    -------
    TuneResult
    """
    import optuna

    out_dir = Path(out_dir)
    regions = parse_regions(regions)
    if int(n_trials) < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")
    space = resolve_search_space(search_space)
    template = model_config or ModelConfig()
    if encoder_weights not in (None, "none", "None", ""):
        # fail before any data is read when the weights are not available offline
        from .model import load_encoder_state

        load_encoder_state(encoder_weights, template.encoder_name)

    run = _TuneRun(
        regions, space, template, n_trials=n_trials, epochs=epochs, input_size=input_size, seed=seed,
        encoder_weights=encoder_weights, device=device, precision=precision, prune=prune,
        progress=progress,
    )
    run.baseline = bool(baseline)
    all_cases = run.prepare_data(data_root, folds, cases, cache_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    storage = run.storage = storage or _default_storage(out_dir)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    jobs = [(r,) for r in regions] if per_region else [regions]
    settings = run.settings(data_root, all_cases)
    results: list[StudyResult] = []
    for job_regions in jobs:
        name = f"{study_name}-{job_regions[0]}" if per_region else study_name
        results.append(run.run_study(name, job_regions, out_dir))

    result = TuneResult(out_dir=out_dir, storage=storage, studies=results, settings=settings)
    _write_best_params(result, settings, data_root)
    return result


class _TuneRun:
    """The data, folds and settings of one :func:`tune` call, with one method per stage:
    the data, a study, a trial and a fold."""

    def __init__(self, regions, space, template: ModelConfig, *, n_trials, epochs, input_size, seed,
                 encoder_weights, device, precision, prune, progress) -> None:
        self.regions, self.space, self.template = regions, space, template
        self.n_trials, self.epochs, self.input_size, self.seed = n_trials, epochs, input_size, seed
        self.encoder_weights, self.device, self.precision = encoder_weights, device, precision
        self.prune, self.progress = prune, progress
        self.baseline = True
        self.storage: str | None = None

    def prepare_data(self, data_root, folds, cases, cache_dir) -> list:
        """Select the cases, split them into folds and pre-process them once (in fold order);
        return the cases."""
        from .dataset import DatasetIndex
        from .training_arrays import build_arrays

        regions = self.regions
        index = DatasetIndex(data_root)
        all_cases = index.with_regions(regions)
        if cases is not None:
            wanted = set(cases)
            unknown = sorted(wanted - {c.case_id for c in all_cases})
            if unknown:
                raise KeyError(
                    f"cases not found in {data_root} "
                    f"(with masks for {', '.join(regions)}): {unknown[:5]}"
                )
            all_cases = [c for c in all_cases if c.case_id in wanted]
        if not all_cases:
            raise ValueError(f"{data_root}: no case has masks for {', '.join(regions)}")
        if str(folds).lower() == "scr":
            self.fold_ids = scr_folds(all_cases)
            self.fold_kind = "SCR folds"
        else:
            self.fold_ids = kfold_split([c.case_id for c in all_cases], int(folds), self.seed)
            self.fold_kind = f"seeded {int(folds)}-fold split"
        order = self.order = [cid for f in self.fold_ids for cid in f]
        by_id = {c.case_id: c for c in all_cases}
        self.arrays = build_arrays([by_id[i] for i in order], regions, self.input_size, cache_dir=cache_dir)
        self.pos = {cid: i for i, cid in enumerate(order)}
        if self.progress:
            self.progress({"kind": "data", "cases": len(order), "folds": [len(f) for f in self.fold_ids]})
        return all_cases

    def settings(self, data_root, all_cases) -> dict:
        """The settings recorded in ``best_params.json``."""
        from .training_arrays import data_fingerprint

        encoder_weights, space = self.encoder_weights, self.space
        return {
            "data_root": str(Path(data_root).resolve()),
            "n_folds": len(self.fold_ids),
            "fold_kind": self.fold_kind,
            "epochs": int(self.epochs),
            "input_size": int(self.input_size),
            "encoder_name": self.template.encoder_name,
            "encoder_weights": None
            if encoder_weights in (None, "none", "None", "")
            else str(encoder_weights),
            "seed": int(self.seed),
            "search_space": {k: (list(v) if isinstance(v, tuple) else v) for k, v in space.items()},
            "data_fingerprint": data_fingerprint(all_cases, self.regions),
        }

    def run_study(self, name: str, job_regions, out_dir: Path) -> StudyResult:
        """Run (or resume) the study ``name`` of a model of ``job_regions``; write its trial table."""
        template, regions, arrays = self.template, self.regions, self.arrays
        mcfg = replace(template, regions=job_regions, input_size=int(self.input_size), thresholds={})
        ch = [regions.index(r) for r in job_regions]
        data = (
            arrays
            if list(ch) == list(range(len(regions)))
            else replace(arrays, masks=arrays.masks[:, ch], regions=tuple(job_regions))
        )
        base = TrainConfig.for_regions(
            job_regions, epochs=int(self.epochs), seed=int(self.seed), precision=self.precision
        )
        attrs = {
            "regions": list(job_regions),
            "folds": [list(f) for f in self.fold_ids],
            "epochs": int(self.epochs),
            "input_size": int(self.input_size),
            "encoder_name": template.encoder_name,
            "decoder_channels": list(template.decoder_channels),
            "cases": len(self.order),
        }
        study, n_done = self._open_study(name, attrs)
        if self.baseline and not study.get_trials(deepcopy=False):
            start = baseline_params(base, self.space)
            if start:
                study.enqueue_trial(start, user_attrs={"baseline": True})

        def objective(trial):
            return self._objective(trial, name, job_regions, data, mcfg, base)

        def callback(study_, trial):
            if self.progress:
                self.progress(
                    {
                        "kind": "trial_end",
                        "study": name,
                        "trial": trial.number,
                        "value": trial.value,
                        "state": trial.state.name,
                    }
                )

        remaining = max(0, int(self.n_trials) - n_done)
        if remaining:
            study.optimize(objective, n_trials=remaining, callbacks=[callback], catch=())
        _write_trials_csv(study, out_dir / f"trials-{name}.csv")
        return _study_result(study, job_regions, base)

    def _open_study(self, name: str, attrs: dict):
        """The study ``name`` (created, or resumed when its settings match) and its number
        of finished trials."""
        import optuna

        storage, seed, n_trials = self.storage, self.seed, self.n_trials
        probe = optuna.create_study(
            study_name=name, storage=storage, direction="maximize", load_if_exists=True
        )
        n_done = sum(_count(probe))
        if n_done or probe.user_attrs:
            for k in _STUDY_KEYS:
                if k in probe.user_attrs and probe.user_attrs[k] != attrs[k]:
                    raise ValueError(
                        f"study {name!r} in {storage} was run with another {k} "
                        f"({probe.user_attrs[k]!r} vs now {attrs[k]!r}); "
                        "use another --study-name or --storage"
                    )
        if probe.direction != optuna.study.StudyDirection.MAXIMIZE:
            raise ValueError(
                f"study {name!r} in {storage} does not maximise; use another --study-name"
            )
        # A resumed study gets a fresh sampler seed, or TPE's random start would repeat itself.
        sampler = optuna.samplers.TPESampler(
            seed=int(seed) + n_done, n_startup_trials=min(10, max(2, n_trials // 3))
        )
        pruner = (
            optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
            if self.prune
            else optuna.pruners.NopPruner()
        )
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
        for k, v in attrs.items():
            if k not in study.user_attrs:
                study.set_user_attr(k, v)
        return study, n_done

    def _objective(self, trial, name: str, regions, data, mcfg: ModelConfig, base: TrainConfig) -> float:
        """One trial: train and validate every fold; the mean IoU of the held-out folds."""
        import optuna

        progress, fold_ids = self.progress, self.fold_ids
        params = suggest(trial, self.space)
        trial.set_user_attr("train_params", params)
        tcfg = _trial_train_config(base, params)
        if progress:
            progress({"kind": "trial", "study": name, "trial": trial.number, "params": params})
        fold_ious: list[float] = []
        region_sum = np.zeros(len(regions))
        for k, val_ids in enumerate(fold_ids):
            last_val = self._train_fold(trial, k, val_ids, tcfg, regions, data, mcfg)
            iou = float(last_val.get("mean", 0.0))
            fold_ious.append(iou)
            region_sum += [float(last_val.get(r, 0.0)) for r in regions]
            trial.set_user_attr("fold_ious", fold_ious)
            if progress:
                progress(
                    {
                        "kind": "fold",
                        "study": name,
                        "trial": trial.number,
                        "fold": k + 1,
                        "folds": len(fold_ids),
                        "iou": iou,
                    }
                )
            trial.report(float(np.mean(fold_ious)), step=k)
            if k + 1 < len(fold_ids) and trial.should_prune():
                raise optuna.TrialPruned(
                    f"mean IoU {np.mean(fold_ious):.4f} after {k + 1} fold(s)"
                )
        trial.set_user_attr(
            "region_ious",
            {r: float(v) for r, v in zip(regions, region_sum / len(fold_ids), strict=True)},
        )
        return float(np.mean(fold_ious))

    def _train_fold(self, trial, k: int, val_ids, tcfg: TrainConfig, regions, data, mcfg) -> dict:
        """Train on the other folds; the validation IoUs of fold ``k`` after the last epoch."""
        from .train import train_iter

        order, pos = self.order, self.pos
        vset = set(val_ids)
        tr_idx = [pos[c] for c in order if c not in vset]
        va_idx = [pos[c] for c in val_ids]
        last_val: dict = {}
        try:
            with tempfile.TemporaryDirectory(prefix="cxrseg-trial-") as tmp:
                for ev in train_iter(
                    mcfg,
                    tcfg,
                    data.subset(tr_idx),
                    data.subset(va_idx),
                    tmp,
                    device=self.device,
                    encoder_weights=self.encoder_weights,
                ):
                    if ev["kind"] == "epoch":
                        last_val = ev["val"]
        except FloatingPointError as exc:
            # a diverged run is a (very) bad result, not an error of the search
            trial.set_user_attr("diverged", f"fold {k + 1}: {exc}")
            last_val = {"mean": 0.0, **{r: 0.0 for r in regions}}
        return last_val


def _write_best_params(result: TuneResult, settings: dict, data_root) -> None:
    """``best_params.json`` in the output folder, with a ``cxrseg train`` command per study."""
    payload = result.to_json()
    for s, d in zip(result.studies, payload["studies"], strict=True):
        d["command"] = train_command(s, settings, data_root)
    tmp = result.out_dir / "best_params.json.tmp"
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    os.replace(tmp, result.out_dir / "best_params.json")


def train_command(s: StudyResult, settings: dict, data_root) -> str | None:
    """A ``cxrseg train`` command line that trains with a study's best combination."""
    tc = s.best_train_config
    if not tc:
        return None
    regs = ",".join(s.regions)
    parts = [
        "cxrseg train",
        f"--data {data_root}",
        f"--out runs/{s.study_name}",
        f"--regions {regs}",
        f"--input-size {settings['input_size']}",
        f"--encoder {settings['encoder_name']}",
        f"--optimizer {tc['optimizer']}",
        f"--lr {tc['lr']:.6g}",
        f"--batch-size {tc['batch_size']}",
        f"--bce-weight {tc['bce_weight']:g}",
        f"--jaccard-weight {tc['jaccard_weight']:g}",
        f"--aug-strength {tc['aug_strength']:.3g}",
        f"--scheduler {tc['scheduler']}",
    ]
    if settings.get("encoder_weights"):
        parts.append(f"--encoder-weights {settings['encoder_weights']}")
    return " ".join(parts)
