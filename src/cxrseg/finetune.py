"""Fine-tune a checkpoint on hand-corrected masks, with replay, without forgetting.

``cxrseg finetune --corrections DIR --from CKPT --out NEW [--data ROOT]`` trains from
``CKPT`` (same architecture, regions and normalisation) on the newest version of every
corrected case and region in the :class:`~cxrseg.corrections.CorrectionStore` ``DIR``,
and writes ``NEW`` only if the model did not get worse on a fixed validation set.

Training targets of a corrected case
    * a corrected region: the newest corrected mask;
    * the other regions of a multi-label model: the **ground truth** when the case is in
      the dataset (``--data``) and has that mask, else the **source model's own
      prediction** (thresholded at its thresholds) as a pseudo-label, so that the
      correction of one region does not teach the model to forget the others. The
      checkpoint's metadata records which source each target came from.

Replay
    Every epoch shows each correction ``--repeats`` times (differently augmented) and
    ``--replay-ratio`` times as many samples of the dataset's original training cases
    (the checkpoint's ``train_cases``, else every dataset case that is neither corrected
    nor validation), walking through all of them over the epochs. Replay keeps the
    model from drifting towards the few corrected cases.

Validation and the tolerance guard
    The validation set is fixed: ``--val-cases``, by default the checkpoint's own
    ``val_cases`` present in the dataset, always **without** the corrected cases. Early
    stopping (``--early-stopping`` epochs) keeps the epoch with the best validation mean
    IoU. Before and after, both models are evaluated at native resolution through the
    prediction engine (:func:`cxrseg.predict.get_predictor`): IoU on the corrected cases
    against the corrected masks, and on the validation cases against the ground truth.
    If the validation IoU of any region falls by more than ``--tolerance`` (default
    0.005), nothing is written, unless ``--force``. Without validation cases (no
    ``--data``) there is no evidence against forgetting and writing needs ``--force``.

Settings search
    When the learning rate, the epochs and the replay ratio are all left to their defaults,
    a small set of settings (:data:`SEARCH_CANDIDATES`: learning rate, epochs, replay
    ratio) is tried in turn within a time budget (``search_budget``, 15 minutes by
    default); every candidate is evaluated like above, and the one that raises the
    corrected cases' IoU most *among those that pass the tolerance guard* is written.
    Every candidate's figures are reported; when none passes, nothing is written and the
    reason says so. Under ``torchrun`` one setting is trained (no search).

Lineage
    The new checkpoint's metadata has ``parent_id`` (the source's ``model_id``),
    ``corrections`` (case, region, version, SHA-256 of the sidecar and of the mask),
    ``date`` and a ``finetune`` entry (settings, label sources, before/after IoU).

Under ``torchrun`` the training runs distributed (see :func:`cxrseg.train.train_iter`);
only rank 0 evaluates and writes.

The Python API is :func:`finetune_iter`, a generator of progress events (a napari worker
drives it; closing the generator cancels cleanly), and :func:`finetune`, which runs it.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .corrections import CorrectionError, CorrectionStore, CorrectionVersion
from .io import resize_mask_nearest, same_aspect
from .metrics import jaccard
from .regions import REGIONS, parse_regions

__all__ = [
    "SEARCH_CANDIDATES",
    "candidate_settings",
    "FinetuneError",
    "FinetuneResult",
    "finetune_iter",
    "FinetunePlan",
    "plan_finetune",
    "finetune",
    "format_report",
]

Event = dict[str, Any]

#: Default replay ratio and epochs of one fine-tuning run (the first search candidate).
DEFAULT_REPLAY_RATIO = 2.0
DEFAULT_EPOCHS = 5

#: The settings tried, in this order, when the recipe is left to the tool: the learning
#: rate as a factor of the source's, the epochs (most; early stopping may end sooner) and
#: the replay ratio. The first is the single run's default; the others learn more gently
#: or replay more of the original data, the two remedies for forgetting.
SEARCH_CANDIDATES: tuple[dict[str, float], ...] = (
    {"lr_factor": 0.1, "epochs": 5, "replay_ratio": 2.0},
    {"lr_factor": 0.03, "epochs": 5, "replay_ratio": 2.0},
    {"lr_factor": 0.1, "epochs": 5, "replay_ratio": 4.0},
    {"lr_factor": 0.03, "epochs": 8, "replay_ratio": 4.0},
    {"lr_factor": 0.01, "epochs": 8, "replay_ratio": 2.0},
)


def candidate_settings(
    *, lr: float | None, epochs: int | None, replay_ratio: float | None, search: bool | str = "auto"
) -> list[dict[str, Any]]:
    """The settings a fine-tuning run tries: ``[{"lr" or "lr_factor", "epochs",
    "replay_ratio"}]``.

    ``search="auto"`` searches only when ``lr``, ``epochs`` and ``replay_ratio`` are all
    None (the recipe is left to the tool); ``True`` searches with the given values fixed
    in every candidate; ``False`` runs one setting.

    >>> candidate_settings(lr=None, epochs=3, replay_ratio=None)
    [{'lr_factor': 0.1, 'epochs': 3, 'replay_ratio': 2.0}]
    >>> [c["lr_factor"] for c in candidate_settings(lr=None, epochs=None, replay_ratio=None)]
    [0.1, 0.03, 0.1, 0.03, 0.01]
    >>> candidate_settings(lr=1e-4, epochs=None, replay_ratio=None, search=True)[:2]
    [{'epochs': 5, 'replay_ratio': 2.0, 'lr': 0.0001}, {'epochs': 5, 'replay_ratio': 4.0, 'lr': 0.0001}]
    """
    given = {"lr": lr, "epochs": epochs, "replay_ratio": replay_ratio}
    do_search = all(v is None for v in given.values()) if search == "auto" else bool(search)
    pool = SEARCH_CANDIDATES if do_search else SEARCH_CANDIDATES[:1]
    out: list[dict[str, Any]] = []
    for c in pool:
        d = dict(c)
        if lr is not None:
            d.pop("lr_factor")
            d["lr"] = float(lr)
        if epochs is not None:
            d["epochs"] = int(epochs)
        if replay_ratio is not None:
            d["replay_ratio"] = float(replay_ratio)
        d["epochs"] = int(d["epochs"])
        if d not in out:
            out.append(d)
    return out


class FinetuneError(ValueError):
    """Fine-tuning cannot start: no usable corrections, an image not found, bad options."""


@dataclass
class FinetuneResult:
    """What a fine-tuning run did.

    Attributes
    ----------
    before, after : dict
        ``{"corrected": {region: mean IoU}, "validation": {region: mean IoU},
        "corrected_cases": {case: {region: IoU}}, "validation_cases": {case: {region: IoU}}}``
        of the source and the fine-tuned model (native resolution; corrected cases against
        the corrected masks, validation cases against the ground truth). Empty on ranks
        other than 0.
    written : bool
        Whether the new checkpoint was written.
    path : Path or None
        The new checkpoint (None when not written).
    reason : str
        Why it was (not) written.
    parent_id, model_id : str or None
        The source's and the new model's ids.
    corrections : list of dict
        Lineage of the corrections used (case, region, version, sidecar/mask SHA-256).
    corrected_cases, val_cases, replay_cases : list of str
    label_sources : dict
        ``{case: {region: "correction vN" | "ground truth" | "pseudo-label"}}``.
    history : list of dict
        Per-epoch training record (loss, validation IoU at training resolution).
    best_epoch : int
    cancelled : bool
    candidates : list of dict
        Every setting tried (one without a search): ``settings`` (lr, epochs,
        replay_ratio), ``corrected`` and ``validation`` (region -> IoU after), ``gain``
        (mean change on the corrected regions), ``passed`` (the tolerance guard),
        ``reason``, ``best_epoch``, ``seconds`` and ``chosen``; a setting left out by the
        time budget has ``skipped``.
    """

    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    written: bool = False
    path: Path | None = None
    reason: str = ""
    parent_id: str | None = None
    model_id: str | None = None
    corrections: list = field(default_factory=list)
    corrected_cases: list = field(default_factory=list)
    val_cases: list = field(default_factory=list)
    replay_cases: list = field(default_factory=list)
    label_sources: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    best_epoch: int = 0
    cancelled: bool = False
    candidates: list = field(default_factory=list)

    @property
    def refused(self) -> bool:
        """True when the run finished but the tolerance guard kept the model out."""
        return not self.written and not self.cancelled and bool(self.after)

    def table(self) -> str:
        """The before/after report as text (see :func:`format_report`)."""
        return format_report(self.before, self.after)


# ------------------------------------------------------------------------------ helpers


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _fit(mask: np.ndarray, shape) -> np.ndarray:
    """A mask on another grid of the same aspect ratio, nearest neighbour."""
    mask = np.asarray(mask, bool)
    if mask.shape != tuple(shape) and not same_aspect(mask.shape, shape):
        raise FinetuneError(
            f"mask of shape {mask.shape} does not fit an image of shape {tuple(shape)}"
        )
    return resize_mask_nearest(mask, shape)


def _resolve_out(out: str | os.PathLike) -> Path:
    """``NEW.safetensors`` is a file; anything else is a folder holding ``best.safetensors``."""
    p = Path(out).expanduser()
    if p.suffix.lower() == ".safetensors":
        return p
    return p / "best.safetensors"


def _predictor(checkpoint, device, precision, *, cache: bool = True):
    """The prediction engine for a checkpoint (``cache=False`` for throw-away candidates).

    Always the whole-film model alone: the source and the candidates are compared like for
    like, without the source's clavicle refinement (:mod:`cxrseg.refine`), which a new
    checkpoint does not have."""
    from .predict import Predictor, get_predictor

    if cache:
        return get_predictor(checkpoint, device=device, precision=precision, refine=False)
    return Predictor(checkpoint, device=device, precision=precision, refine=False)


def _binarise(probs: dict, thresholds: dict) -> dict[str, np.ndarray]:
    return {r: np.asarray(p) >= float(thresholds.get(r, 0.5)) for r, p in probs.items()}


@dataclass
class _EvalItem:
    case: str
    load_image: Callable[[], np.ndarray]
    load_masks: Callable[[], dict]  # region -> bool mask (any grid of the image's aspect)


def _evaluate(
    checkpoint,
    items: Sequence[_EvalItem],
    thresholds: dict,
    *,
    device,
    precision,
    cache=True,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, dict[str, float]]:
    """``{case: {region: IoU}}`` at native resolution through the predictor."""
    pred = _predictor(checkpoint, device, precision, cache=cache)
    out: dict[str, dict[str, float]] = {}
    for i, it in enumerate(items):
        image = it.load_image()
        masks = it.load_masks()
        probs = pred.predict(image, regions=tuple(masks))
        bins = _binarise(probs, thresholds)
        out[it.case] = {r: jaccard(bins[r], _fit(m, bins[r].shape)) for r, m in masks.items()}
        if progress:
            progress(i + 1, len(items))
    return out


def _summarise(per_case: dict[str, dict[str, float]]) -> dict[str, float]:
    acc: dict[str, list[float]] = {}
    for row in per_case.values():
        for r, v in row.items():
            acc.setdefault(r, []).append(v)
    return {r: float(np.mean(acc[r])) for r in REGIONS if r in acc}


def format_report(before: dict, after: dict) -> str:
    """A per-region before/after table of IoU on the corrected and the validation cases.

    Examples
    --------
    >>> b = {"corrected": {"heart": 0.5}, "validation": {"heart": 0.8},
    ...      "corrected_cases": {"A": {"heart": 0.5}}, "validation_cases": {"B": {"heart": 0.8}}}
    >>> a = {"corrected": {"heart": 0.7}, "validation": {"heart": 0.81},
    ...      "corrected_cases": {"A": {"heart": 0.7}}, "validation_cases": {"B": {"heart": 0.81}}}
    >>> print(format_report(b, a))  # doctest: +NORMALIZE_WHITESPACE
    region            corrected n   before   after  change | validation n   before   after  change
    heart                       1    0.500   0.700  +0.200 |            1    0.800   0.810  +0.010
    """

    def n_of(d: dict, region: str) -> int:
        return sum(1 for row in d.values() if region in row)

    head = (
        f"{'region':<16} {'corrected n':>13} {'before':>8} {'after':>7} {'change':>7} | "
        f"{'validation n':>12} {'before':>8} {'after':>7} {'change':>7}"
    )
    lines = [head]
    regions = [
        r for r in REGIONS if r in before.get("corrected", {}) or r in before.get("validation", {})
    ]

    def cols(key: str, region: str) -> str:
        b = before.get(key, {}).get(region)
        a = after.get(key, {}).get(region)
        n = n_of(before.get(f"{key}_cases", {}), region)
        if b is None:
            return f"{'-':>{13 if key == 'corrected' else 12}} {'-':>8} {'-':>7} {'-':>7}"
        a_s = f"{a:7.3f}" if a is not None else f"{'-':>7}"
        d_s = f"{a - b:+7.3f}" if a is not None else f"{'-':>7}"
        return f"{n:>{13 if key == 'corrected' else 12}} {b:8.3f} {a_s} {d_s}"

    for r in regions:
        lines.append(f"{r:<16} {cols('corrected', r)} | {cols('validation', r)}")
    return "\n".join(lines)


def _mean_change(before: dict, after: dict) -> float:
    """Mean change of the regions in ``before`` (NaN when there are none)."""
    d = [after[r] - before[r] for r in before if r in after]
    return float(np.mean(d)) if d else float("nan")


def format_candidates(before: dict, rows: list[dict]) -> str:
    """One line per setting tried: its settings, the corrected cases' change, the largest
    validation fall and whether it passed the guard.

    >>> b = {"corrected": {"heart": 0.5}, "validation": {"heart": 0.8}}
    >>> rows = [{"settings": {"lr": 3e-4, "epochs": 5, "replay_ratio": 2.0},
    ...          "corrected": {"heart": 0.6}, "validation": {"heart": 0.79}, "gain": 0.1,
    ...          "passed": False, "best_epoch": 3, "seconds": 60.0, "chosen": False},
    ...         {"settings": {"lr_factor": 0.01, "epochs": 8, "replay_ratio": 2.0}, "skipped": "time budget"}]
    >>> print(format_candidates(b, rows))  # doctest: +NORMALIZE_WHITESPACE
      #        lr  epochs  replay  corrected  worst val  guard    time
      1  0.0003       5       2     +0.100     -0.010  fails     60 s
      2       -       8       2          -          -  not tried (time budget)
    """
    lines = [f"{'#':>3} {'lr':>9} {'epochs':>7} {'replay':>7} {'corrected':>10} {'worst val':>10} "
             f"{'guard':<6} {'time':>6}"]
    for i, r in enumerate(rows, 1):
        st = r["settings"]
        lr = f"{st['lr']:9.2g}" if "lr" in st else f"{'-':>9}"
        head = f"{i:>3} {lr} {st['epochs']:>7} {st['replay_ratio']:>7g}"
        if r.get("skipped"):
            lines.append(f"{head} {'-':>10} {'-':>10}  not tried ({r['skipped']})")
            continue
        worst = min((r["validation"][k] - v for k, v in before["validation"].items() if k in r["validation"]),
                    default=float("nan"))
        guard = "passes" if r["passed"] else "fails"
        mark = "  <- written" if r.get("chosen") else ""
        lines.append(f"{head} {r['gain']:>+10.3f} {worst:>+10.3f} {guard:<6} {r['seconds']:>4.0f} s{mark}")
    return "\n".join(lines)


def _open_store(corrections, data_root) -> CorrectionStore:
    if isinstance(corrections, CorrectionStore):
        return corrections
    p = Path(corrections).expanduser()
    if not p.is_dir():
        raise FinetuneError(
            f"corrections folder {p} not found "
            "(expected a store with masks/<region>/<case>.vNNN.png)"
        )
    return CorrectionStore(p, dataset_root=data_root)


def _replay_sampler(n_corr: int, n_replay: int, *, repeats: int, ratio: float, seed: int):
    """Epoch order: every correction ``repeats`` times and ``ratio`` times as many replay
    samples, taken in turn from one fixed shuffled stream over the replay pool (so all
    replay cases are seen over the epochs). Returns ``(sampler, replay samples per epoch)``."""
    per_epoch = int(round(ratio * n_corr * repeats)) if n_replay else 0
    stream: list[int] = []
    stream_rng = np.random.default_rng(seed + 12345)

    def sampler(epoch: int, rng: np.random.Generator) -> list[int]:
        corr = [i for _ in range(repeats) for i in range(n_corr)]
        e = max(int(epoch), 1)  # train_iter asks for epoch 0 to count steps
        start, stop = (e - 1) * per_epoch, e * per_epoch
        while len(stream) < stop:
            stream.extend(int(i) for i in stream_rng.permutation(n_replay))
        order = corr + [n_corr + i for i in stream[start:stop]]
        rng.shuffle(order)
        return order

    return sampler, per_epoch


def _select_cases(
    meta: dict, full_ids: Sequence[str], corrected_ids: Sequence[str], *, val_cases, replay_ratio: float,
    data_root, model_regions,
) -> tuple[list[str], list[str], list[str]]:
    """Validation, dropped (corrected, so not validated) and replay case ids."""
    if val_cases is None:
        wanted_val = list(meta.get("val_cases") or [])
    else:
        wanted_val = list(val_cases)
        unknown = sorted(set(wanted_val) - set(full_ids))
        if unknown:
            raise FinetuneError(
                f"validation cases not in {data_root} "
                f"(or lacking masks of {', '.join(model_regions)}): {unknown[:5]}"
            )
    val_ids = sorted(set(wanted_val) & set(full_ids) - set(corrected_ids))
    dropped = sorted(set(wanted_val) & set(corrected_ids))
    replay_ids: list[str] = []
    if full_ids and replay_ratio > 0:
        pool = [c for c in (meta.get("train_cases") or []) if c in set(full_ids)]
        if not pool:
            pool = list(full_ids)
        replay_ids = sorted(set(pool) - set(corrected_ids) - set(val_ids))
    return val_ids, dropped, replay_ids


def _build_with_progress(build_arrays, cases, regions, size, cache_dir, event_of):
    """Run :func:`cxrseg.training_arrays.build_arrays` in a helper thread, yielding ``event_of(k)``
    as ``k`` more cases are ready (its progress callback cannot yield itself); returns
    the arrays. A cached set returns at once without events."""
    import queue
    import threading

    q: queue.Queue = queue.Queue()
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["data"] = build_arrays(cases, regions, size, cache_dir=cache_dir,
                                       progress=lambda i, n: q.put(i))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the generator
            box["error"] = exc
        finally:
            q.put(None)

    t = threading.Thread(target=run, name="cxrseg-finetune-prepare", daemon=True)
    t.start()
    seen = 0
    while True:
        i = q.get()
        if i is None:
            break
        yield event_of(int(i) - seen)
        seen = int(i)
    t.join()
    if "error" in box:
        raise box["error"]
    return box["data"]


@dataclass
class FinetunePlan:
    """What a fine-tuning run would use, before it starts (:func:`plan_finetune`).

    Attributes
    ----------
    corrected_cases : list of str
        Cases with a correction of a region the model predicts.
    val_cases : list of str
        The validation cases it would use.
    replay_cases : list of str
        Cases replayed from the original training data.
    candidates : list of str
        Every dataset case that could validate (full ground truth, not corrected).
    dropped : list of str
        Default validation cases left out because they were corrected.
    message : str
        A sentence for the user; explains an empty validation set.
    """

    corrected_cases: list = field(default_factory=list)
    val_cases: list = field(default_factory=list)
    replay_cases: list = field(default_factory=list)
    candidates: list = field(default_factory=list)
    dropped: list = field(default_factory=list)
    message: str = ""


def _header_metadata(path: Path) -> dict:
    """The cxrseg metadata of a ``.safetensors`` checkpoint, read from its JSON header
    without importing torch (which a GUI thread must not do: it is slow, and it can load a
    second LLVM into a process that already runs Mesa's)."""
    import struct

    try:
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if not 0 < n < 100_000_000:
                raise ValueError(f"header length {n}")
            header = json.loads(fh.read(n))
        return json.loads(header["__metadata__"]["cxrseg"])
    except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        raise FinetuneError(f"checkpoint {path}: no readable cxrseg metadata ({exc})") from None


def plan_finetune(
    corrections, checkpoint: str | os.PathLike | None = None, *, data_root=None, val_cases=None,
    replay_ratio: float = 2.0, regions=None, index=None,
) -> FinetunePlan:
    """The cases a :func:`finetune_iter` run with these arguments would use (reads only
    the checkpoint's header and the store's sidecars, never torch; fast enough for a GUI
    thread). ``index``: the dataset's :class:`cxrseg.dataset.DatasetIndex` if already
    built (else it is built from ``data_root``).

    Raises
    ------
    FinetuneError
        Unknown validation cases (see :func:`finetune_iter`).
    CheckpointError
        The checkpoint does not exist (:func:`cxrseg.model.resolve_checkpoint_path`).
    """
    from .dataset import DatasetIndex
    from .model import resolve_checkpoint_path

    src = resolve_checkpoint_path(checkpoint)
    meta = _header_metadata(src)
    from .config import ModelConfig

    model_regions = tuple(ModelConfig.from_dict(meta["config"]).regions)
    use = model_regions if regions is None else tuple(r for r in parse_regions(regions) if r in model_regions)
    corrected: list[str] = []
    where = corrections.root if isinstance(corrections, CorrectionStore) else corrections
    if where is not None and Path(where).expanduser().is_dir():
        store = _open_store(corrections, data_root)
        corrected = sorted({v.case for v in store.latest_versions() if v.region in use})
    full_ids: list[str] = []
    if data_root is not None:
        index = index if index is not None else DatasetIndex(data_root)
        full_ids = [c.case_id for c in index.with_regions(model_regions)]
    val_ids, dropped, replay_ids = _select_cases(
        meta, full_ids, corrected, val_cases=val_cases, replay_ratio=replay_ratio,
        data_root=data_root, model_regions=model_regions,
    )
    candidates = sorted(set(full_ids) - set(corrected))
    if not corrected:
        msg = "no corrections yet: edit a case and save a correction first"
    elif data_root is None:
        msg = "no dataset open: without validation cases nothing is written unless forced"
    elif not val_ids:
        if not full_ids:
            why = f"no case of the dataset has ground truth for every region of the model ({', '.join(model_regions)})"
        elif not meta.get("val_cases") and val_cases is None:
            why = "the model records no validation cases of its own"
        elif val_cases is None and not (set(meta.get("val_cases") or []) & set(full_ids)):
            why = "none of the model's own validation cases is in this dataset"
        else:
            why = "every chosen validation case is corrected (a corrected case cannot validate)"
        msg = (f"0 validation cases: {why}. Tick validation cases below (cases with ground truth), "
               "or nothing is written unless 'write even if validation gets worse' is ticked")
    else:
        msg = (f"{len(corrected)} corrected case(s), {len(val_ids)} validation case(s), "
               f"{len(replay_ids)} replay case(s)")
    return FinetunePlan(corrected, val_ids, replay_ids, candidates, dropped, msg)


# ------------------------------------------------------------------------------ main loop


def finetune_iter(
    corrections,
    checkpoint: str | os.PathLike | None,
    out: str | os.PathLike,
    *,
    data_root: str | os.PathLike | None = None,
    replay_ratio: float | None = None,
    repeats: int = 2,
    val_cases: Sequence[str] | None = None,
    regions=None,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    optimizer: str | None = None,
    scheduler: str = "cosine",
    aug_strength: float | None = None,
    early_stopping: int = 2,
    tolerance: float = 0.005,
    force: bool = False,
    device: str = "auto",
    precision: str = "auto",
    seed: int = 0,
    cache_dir: str | os.PathLike | None | bool = None,
    max_steps: int | None = None,
    search: bool | str = "auto",
    search_budget: float = 900.0,
) -> Iterator[Event]:
    """Fine-tune ``checkpoint`` on corrected masks; yield progress events.

    Parameters
    ----------
    corrections : CorrectionStore or path
        The corrections store (its newest version per case and region is used).
    checkpoint : path or None
        The source checkpoint (None: the shipped model).
    out : path
        The new checkpoint: a ``.safetensors`` file, or a folder (``best.safetensors``
        in it). Never the source checkpoint.
    data_root : path, optional
        The dataset: ground truth for the other regions of corrected cases, replay data
        and validation cases. Without it there is no replay and no validation.
    replay_ratio : float, optional
        Replay samples per correction sample in every epoch (0: no replay; default 2).
    repeats : int
        Times each correction is shown per epoch.
    val_cases : sequence of str, optional
        Validation cases (default: the checkpoint's ``val_cases`` in the dataset);
        corrected cases are always removed from it.
    regions : optional
        Use only corrections of these regions (default: every region of the model).
    epochs, lr, batch_size, optimizer, scheduler, aug_strength, seed
        Training settings; by default the checkpoint's own, with ``lr`` a tenth of its
        learning rate, 5 epochs and a cosine schedule.
    early_stopping : int
        Stop after this many epochs without validation improvement (0: off); the best
        validation epoch is kept.
    tolerance : float
        Largest allowed fall of any region's validation IoU.
    force : bool
        Write even when the tolerance guard (or the lack of validation cases) says no.
    device, precision : str
        ``auto|cpu|cuda|mps`` and ``auto|fp32|bf16|fp16``.
    cache_dir : optional
        Array cache of :func:`cxrseg.training_arrays.build_arrays` (False: no cache; default:
        ``cache/`` in the dataset's working folder, :func:`cxrseg.workspace.workdir`, so
        the pre-processed licensed images stay with the dataset; ``$CXRSEG_CACHE`` when
        set).
    max_steps : int, optional
        Stop training after this many optimiser steps (tests).
    search : "auto", bool
        Try several settings (see :func:`candidate_settings`; "auto": when ``lr``,
        ``epochs`` and ``replay_ratio`` are all None) and write the best that passes the
        tolerance guard.
    search_budget : float
        Seconds: no further setting is started when the time spent plus the longest
        candidate so far would pass it (the first always runs).

    Yields
    ------
    dict
        ``{"kind": "stage", "stage", "message"}``; while the data is prepared,
        ``{"kind": "prepare", "what", "done", "total", "message"}`` once per case (none
        for cached arrays); the training events of
        :func:`cxrseg.train.train_iter` (``start``, ``step``, ``epoch``);
        ``{"kind": "evaluate", "which", "i", "n"}``; with several settings, before each
        ``{"kind": "candidate_start", "i", "n", "settings"}`` and after it ``{"kind":
        "candidate", "i", "n", "row", "table"}`` (``row`` as in
        :attr:`FinetuneResult.candidates`); ``{"kind": "report", "before", "after",
        "table"}`` of the model kept; last ``{"kind": "done", "result": FinetuneResult}``.
        Closing the generator cancels the run and removes its temporary files.

    Raises
    ------
    FinetuneError
        No usable correction, an image that cannot be found, or bad options.
    """
    from .model import resolve_checkpoint_path

    if replay_ratio is not None and replay_ratio < 0:
        raise FinetuneError(f"replay_ratio must be >= 0, got {replay_ratio}")
    if epochs is not None and int(epochs) < 1:
        raise FinetuneError(f"epochs must be >= 1, got {epochs}")
    if os.environ.get("WORLD_SIZE", "1") != "1":
        search = False  # every rank must train the same settings
    cands = candidate_settings(lr=lr, epochs=epochs, replay_ratio=replay_ratio, search=search)
    if repeats < 1:
        raise FinetuneError(f"repeats must be >= 1, got {repeats}")
    if tolerance < 0:
        raise FinetuneError(f"tolerance must be >= 0, got {tolerance}")
    src = resolve_checkpoint_path(checkpoint)
    out_path = _resolve_out(out)
    if out_path.exists() and src.exists() and out_path.resolve() == src.resolve():
        raise FinetuneError(
            f"--out {out_path} is the source checkpoint; the parent is never overwritten"
        )
    run = _FinetuneRun(
        src, out_path, data_root, replay_ratio=max(c["replay_ratio"] for c in cands),
        repeats=repeats, tolerance=tolerance, force=force, device=device, precision=precision,
        seed=seed, cache_dir=cache_dir, max_steps=max_steps,
    )
    yield from run.load(corrections, regions)
    yield from run.select_cases(val_cases)
    yield from run.prepare_data()
    fixed = dict(batch_size=batch_size, optimizer=optimizer, scheduler=scheduler,
                 aug_strength=aug_strength, early_stopping=early_stopping)
    run.start()
    try:
        yield from run.search(cands, fixed, budget=float(search_budget))
        yield {"kind": "done", "result": run.result}
    finally:
        run.close()


class _FinetuneRun:
    """The state of one :func:`finetune_iter` run, one method per stage it reports.

    The stage generators yield the run's progress events; the driver calls them in order.
    """

    def __init__(self, src: Path, out_path: Path, data_root, *, replay_ratio, repeats, tolerance,
                 force, device, precision, seed, cache_dir, max_steps) -> None:
        self.src, self.out_path, self.data_root = src, out_path, data_root
        self.replay_ratio, self.repeats, self.tolerance = replay_ratio, repeats, tolerance
        self.force, self.device, self.precision, self.seed = force, device, precision, seed
        self.cache_dir, self.max_steps = cache_dir, max_steps
        self.rank = _rank()
        self.is_main = self.rank == 0
        self.events = None
        self.tmp_dir: Path | None = None

    # ---- the source checkpoint, the corrections and the images of the corrected cases
    def load(self, corrections, regions) -> Iterator[Event]:
        from .config import ModelConfig
        from .dataset import DatasetIndex
        from .model import read_metadata

        src = self.src
        yield {"kind": "stage", "stage": "load", "message": f"reading {src}"}
        self.meta = read_metadata(src)
        self.mcfg = ModelConfig.from_dict(self.meta["config"])
        self.parent_id = self.meta.get("model_id")
        model_regions = self.model_regions = tuple(self.mcfg.regions)
        use_regions = (
            model_regions
            if regions is None
            else tuple(r for r in parse_regions(regions) if r in model_regions)
        )
        if not use_regions:
            raise FinetuneError(
                f"none of the requested regions is predicted by {src} ({', '.join(model_regions)})"
            )
        self.thresholds = dict(self.mcfg.thresholds)

        self.store = _open_store(corrections, self.data_root)
        self.latest = [v for v in self.store.latest_versions() if v.region in use_regions]
        if not self.latest:
            raise FinetuneError(
                f"{self.store.root}: no correction of {', '.join(use_regions)} (expected "
                "masks/<region>/<case>.vNNN.png with its .json sidecar)"
            )
        self.by_case: dict[str, dict[str, CorrectionVersion]] = {}
        for v in self.latest:
            self.by_case.setdefault(v.case, {})[v.region] = v
        self.corrected_ids = sorted(self.by_case)

        self.index = None
        if self.data_root is not None:
            self.index = DatasetIndex(self.data_root)
        self.img_paths = {c: self._image_path_of(c) for c in self.corrected_ids}

    def _image_path_of(self, case: str) -> Path:
        index, data_root = self.index, self.data_root
        if index is not None and case in index:
            return Path(index[case].image_path)
        for v in self.by_case[case].values():
            p = v.meta.get("image_path")
            if p and Path(p).is_file():
                return Path(p)
        raise FinetuneError(
            f"correction of {case}: image not found (not in --data"
            f"{' ' + str(data_root) if data_root else ''}, "
            "and the sidecar's image_path is missing or gone)"
        )

    # ---- validation and replay cases
    def select_cases(self, val_cases) -> Iterator[Event]:
        index, data_root = self.index, self.data_root
        full_cases = index.with_regions(self.model_regions) if index is not None else []
        self.by_id = {c.case_id: c for c in full_cases}
        self.val_ids, dropped, self.replay_ids = _select_cases(
            self.meta, [c.case_id for c in full_cases], self.corrected_ids, val_cases=val_cases,
            replay_ratio=self.replay_ratio if index is not None else 0.0, data_root=data_root,
            model_regions=self.model_regions,
        )
        if dropped:
            yield {
                "kind": "stage",
                "stage": "data",
                "message": f"corrected cases left out of validation: {', '.join(dropped)}",
            }
        if self.cache_dir is None and data_root is not None and not os.environ.get("CXRSEG_CACHE"):
            # arrays of licensed images stay beside their dataset, not in the home folder
            from .workspace import workdir

            self.cache_dir = workdir(data_root) / "cache"

    # ---- training (and validation) arrays
    def prepare_data(self) -> Iterator[Event]:
        from .io import read_image
        from .training_arrays import ArrayData, build_arrays, sample_to_arrays

        corrected_ids, replay_ids, val_ids = self.corrected_ids, self.replay_ids, self.val_ids
        model_regions, by_id = self.model_regions, self.by_id
        yield {
            "kind": "stage",
            "stage": "data",
            "message": f"{len(self.latest)} correction(s) of {len(corrected_ids)} case(s); "
            f"{len(replay_ids)} replay case(s); {len(val_ids)} validation case(s)",
        }
        self.pdev = self.device
        if os.environ.get("WORLD_SIZE", "1") != "1" and self.device in ("auto", "cuda"):
            import torch

            if torch.cuda.is_available():
                self.pdev = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
        size = self.mcfg.input_size
        corr_images = np.zeros((len(corrected_ids), size, size), np.float16)
        corr_masks = np.zeros((len(corrected_ids), len(model_regions), size, size), np.float16)
        self.label_sources: dict[str, dict[str, str]] = {}
        self._pseudo = None
        n_prep = len(corrected_ids) + len(replay_ids) + len(val_ids)
        prep = {"done": 0}

        def prepared(what: str, k: int = 1) -> Event:
            prep["done"] += k
            return {"kind": "prepare", "what": what, "done": prep["done"], "total": n_prep,
                    "message": f"preparing the data: {prep['done']}/{n_prep} case(s) ({what})"}

        for i, case in enumerate(corrected_ids):
            image = read_image(self.img_paths[case]).data
            targets, src_of = self._targets_of(case, image)
            corr_images[i], corr_masks[i] = sample_to_arrays(image, targets, model_regions, size)
            self.label_sources[case] = src_of
            yield prepared("corrections")
        self._pseudo = None
        self.corr_data = ArrayData(
            corr_images,
            corr_masks,
            list(corrected_ids),
            model_regions,
            [str(self.img_paths[c]) for c in corrected_ids],
        )
        parts = [self.corr_data]
        if replay_ids:
            yield {
                "kind": "stage",
                "stage": "data",
                "message": f"preparing {len(replay_ids)} replay case(s)",
            }
        if replay_ids:
            replay_data = yield from _build_with_progress(
                build_arrays, [by_id[c] for c in replay_ids], model_regions, size, self.cache_dir,
                lambda k: prepared("replay", k),
            )
            parts.append(replay_data)
        self.train_data = ArrayData.concat(parts)
        self.val_data = None
        if val_ids:
            self.val_data = yield from _build_with_progress(
                build_arrays, [by_id[c] for c in val_ids], model_regions, size, self.cache_dir,
                lambda k: prepared("validation", k),
            )

    def _targets_of(self, case: str, image: np.ndarray) -> tuple[dict, dict[str, str]]:
        """Training targets of a corrected case and where each came from."""
        index = self.index
        targets: dict[str, np.ndarray] = {}
        src_of: dict[str, str] = {}
        need_pseudo = []
        for r in self.model_regions:
            v = self.by_case[case].get(r)
            if v is not None:
                targets[r] = self._checked_mask(v, image, self.img_paths[case])
                src_of[r] = f"correction v{v.version}"
            elif index is not None and case in index and r in index[case].mask_paths:
                targets[r] = index[case].load_masks([r])[r]
                src_of[r] = "ground truth"
            else:
                need_pseudo.append(r)
        if need_pseudo:
            if self._pseudo is None:
                self._pseudo = _predictor(self.src, self.pdev, self.precision)
            probs = self._pseudo.predict(image, regions=tuple(need_pseudo))
            for r, m in _binarise(probs, self.thresholds).items():
                targets[r] = m
                src_of[r] = "pseudo-label"
        return targets, src_of

    @staticmethod
    def _checked_mask(v: CorrectionVersion, image: np.ndarray, image_path: Path) -> np.ndarray:
        """A correction's mask, refused when it changed outside cxrseg or misfits its image."""
        m = v.load_mask()
        sha = v.meta.get("mask_sha256")
        if sha:
            from .corrections import file_sha256

            if file_sha256(v.mask_path) != sha:
                raise CorrectionError(
                    f"{v.mask_path}: does not match the SHA-256 in its sidecar "
                    f"{v.sidecar_path.name}; "
                    "the file was changed outside cxrseg"
                )
        if m.shape != image.shape:  # corrections are stored at their image's size
            raise CorrectionError(
                f"{v.mask_path}: mask is {m.shape[0]}x{m.shape[1]}, its image "
                f"{image_path} is {image.shape[0]}x{image.shape[1]}; refused"
            )
        return m

    # ---- training configuration and lineage
    def configure(self, setting: dict, *, batch_size, optimizer, scheduler, aug_strength,
                  early_stopping) -> None:
        """The training config of one setting (``lr`` or ``lr_factor``, ``epochs``,
        ``replay_ratio``; see :func:`candidate_settings`)."""
        from .config import TrainConfig

        self.replay_ratio = float(setting["replay_ratio"])
        epochs = int(setting["epochs"])

        model_regions = self.model_regions
        base = self.meta.get("train_config")
        try:
            tcfg0 = (
                TrainConfig.from_dict(base)
                if isinstance(base, dict)
                else TrainConfig.for_regions(model_regions)
            )
        except (TypeError, ValueError):
            tcfg0 = TrainConfig.for_regions(model_regions)
        self.sampler, n_replay_epoch = _replay_sampler(
            len(self.corr_data), len(self.replay_ids), repeats=self.repeats,
            ratio=self.replay_ratio, seed=self.seed,
        )
        per_epoch = self.per_epoch = len(self.corr_data) * self.repeats + n_replay_epoch
        self.tcfg = TrainConfig(
            **{
                **{k: v for k, v in vars(tcfg0).items()},
                "epochs": int(epochs),
                "lr": float(setting["lr"]) if "lr" in setting else tcfg0.lr * setting["lr_factor"],
                "batch_size": int(batch_size)
                if batch_size is not None
                else max(1, min(tcfg0.batch_size, per_epoch)),
                "optimizer": optimizer or tcfg0.optimizer,
                "scheduler": scheduler,
                "aug_strength": tcfg0.aug_strength if aug_strength is None else float(aug_strength),
                "aug_multiplier": 1,
                "seed": int(self.seed),
                "precision": self.precision,
                "early_stopping_patience": int(early_stopping) if self.val_data is not None else 0,
                "num_workers": 0,
            }
        )
        self._lineage(n_replay_epoch)

    def _lineage(self, n_replay_epoch: int) -> None:
        data_root = self.data_root
        self.date = _now()
        self.settings = {
            "source_checkpoint": str(self.src),
            "corrections_root": str(self.store.root),
            "data_root": str(Path(data_root).resolve()) if data_root is not None else None,
            "replay_ratio": float(self.replay_ratio),
            "lr": float(self.tcfg.lr),
            "epochs": int(self.tcfg.epochs),
            "repeats": int(self.repeats),
            "replay_per_epoch": int(n_replay_epoch),
            "n_replay_cases": len(self.replay_ids),
            "tolerance": float(self.tolerance),
            "label_sources": self.label_sources,
        }
        self.train_meta = {
            "corrections": self.lineage,
            "date": self.date,
            "finetune": self.settings,
        }
        if data_root is not None:
            self.train_meta["data_root"] = str(Path(data_root).resolve())

    # ---- train in a temporary folder next to the output
    def start(self) -> None:
        self.out_path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp_dir = Path(tempfile.mkdtemp(prefix=".cxrseg-finetune-", dir=self.out_path.parent))
        self.train_dir = self.tmp_dir
        self.before: dict | None = None
        self.events = None
        self.lineage = [
            self.by_case[c][r].lineage()
            for c in self.corrected_ids for r in self.model_regions if r in self.by_case[c]
        ]
        self.result = FinetuneResult(
            parent_id=self.parent_id,
            corrections=self.lineage,
            corrected_cases=list(self.corrected_ids),
            val_cases=list(self.val_ids),
            replay_cases=list(self.replay_ids),
            label_sources=self.label_sources,
        )

    def close(self) -> None:
        """Stop the training generator and remove the temporary folder (also on cancel)."""
        if self.events is not None:
            self.events.close()
        shutil.rmtree(self.tmp_dir, ignore_errors=True)

    def train(self) -> Iterator[Event]:
        """Yield the training events; return the candidate checkpoint (None off rank 0)."""
        from .train import train_iter

        tcfg, result = self.tcfg, self.result
        yield {
            "kind": "stage",
            "stage": "train",
            "message": f"fine-tuning {tcfg.epochs} epoch(s) of {self.per_epoch} samples "
            f"(lr {tcfg.lr:g}, batch {tcfg.batch_size})",
        }
        self.events = train_iter(
            self.mcfg,
            tcfg,
            self.train_data,
            self.val_data,
            self.train_dir,
            device=self.device,
            init_checkpoint=self.src,
            metadata=self.train_meta,
            sampler=self.sampler,
            max_steps=self.max_steps,
        )
        tres = None
        for ev in self.events:
            if ev["kind"] == "done":
                tres = ev["result"]
                break
            yield ev
        self.events.close()
        self.events = None
        if tres is None:  # pragma: no cover - train_iter always ends with "done"
            raise RuntimeError("training ended without a result")
        result.history = list(tres.history)
        result.best_epoch = int(tres.best_epoch)
        if not self.is_main:
            result.reason = f"rank {self.rank}: only rank 0 evaluates and writes"
            return None
        cand = tres.best_path or tres.last_path
        if cand is None:  # pragma: no cover
            raise RuntimeError(f"training wrote no checkpoint into {self.train_dir}")
        return cand

    # ---- several settings, the best that passes the guard
    def search(self, cands: list[dict], fixed: dict, *, budget: float) -> Iterator[Event]:
        """Train and evaluate each setting of ``cands`` within ``budget`` seconds, then write
        the best that passes the tolerance guard (see the module docstring)."""
        import time

        if not self.val_ids:
            cands = cands[:1]  # without validation cases nothing tells the settings apart
        n, rows, kept = len(cands), [], {}
        t0, longest = time.monotonic(), 0.0
        if n > 1:
            yield {"kind": "stage", "stage": "search",
                   "message": f"trying up to {n} settings within {budget / 60:.0f} min; the one that "
                   "raises the corrected cases most while every validation region stays within "
                   f"{self.tolerance:g} is written"}
        for i, setting in enumerate(cands):
            if i and time.monotonic() - t0 + longest > budget:
                rows += [{"settings": dict(c), "skipped": "time budget"} for c in cands[i:]]
                yield {"kind": "stage", "stage": "search",
                       "message": f"time budget {budget / 60:.0f} min: {n - i} setting(s) not tried"}
                break
            t1 = time.monotonic()
            self.configure(setting, **fixed)
            self.train_dir = self.tmp_dir / f"candidate-{i + 1}" if n > 1 else self.tmp_dir
            resolved = {"lr": float(self.tcfg.lr), "epochs": int(self.tcfg.epochs),
                        "replay_ratio": float(self.replay_ratio)}
            if n > 1:
                yield {"kind": "candidate_start", "i": i + 1, "n": n, "settings": resolved}
            cand = yield from self.train()
            if cand is None:  # ranks other than 0 neither evaluate nor write
                return
            if n > 1:  # keep the candidate's weights only (the optimiser state is twice their size)
                for f in self.train_dir.iterdir():
                    if f.is_file() and f != cand and f.suffix in (".pt", ".safetensors"):
                        f.unlink()
            t_before = 0.0
            if self.before is None:
                tb = time.monotonic()
                self.before = yield from self._evaluate_model("before", self.src)
                t_before = time.monotonic() - tb
            after = yield from self._evaluate_model("after", cand)
            ok, reason = self._guard_of(self.before, after)
            row = {
                "settings": resolved,
                "corrected": dict(after["corrected"]),
                "validation": dict(after["validation"]),
                "gain": _mean_change(self.before["corrected"], after["corrected"]),
                "passed": bool(ok),
                "reason": reason,
                "best_epoch": int(self.result.best_epoch),
                "seconds": round(time.monotonic() - t1, 1),
                "chosen": False,
            }
            rows.append(row)
            kept[len(rows) - 1] = (cand, after, list(self.result.history), self.result.best_epoch,
                                   dict(self.settings))
            longest = max(longest, time.monotonic() - t1 - t_before)
            if n > 1:
                yield {"kind": "candidate", "i": i + 1, "n": n, "row": row,
                       "table": format_candidates(self.before, rows)}
        yield from self._keep_best(rows, kept)

    def _keep_best(self, rows: list[dict], kept: dict) -> Iterator[Event]:
        result, n = self.result, len(rows)
        tried = [k for k in kept]
        passed = [k for k in tried if rows[k]["passed"]]
        pool = passed or (tried if self.force else [])
        best = max(pool or tried, key=lambda k: (rows[k]["gain"], min(rows[k]["validation"].values(), default=0)))
        cand, after, history, best_epoch, settings = kept[best]
        rows[best]["chosen"] = bool(pool)
        result.before, result.after = self.before, after
        result.history, result.best_epoch, result.candidates = history, int(best_epoch), rows
        self.settings = settings
        yield {"kind": "report", "before": result.before, "after": result.after,
               "table": format_report(result.before, result.after)}
        ok, reason = rows[best]["passed"], rows[best]["reason"]
        if len(tried) > 1:
            if passed:
                st = rows[best]["settings"]
                reason = (f"{reason}; setting {best + 1} of {n} tried (lr {st['lr']:g}, {st['epochs']} "
                          f"epochs, replay {st['replay_ratio']:g}), corrected IoU {rows[best]['gain']:+.3f}")
            else:
                reason = (f"none of the {len(tried)} settings tried kept every validation region within "
                          f"{self.tolerance:g} (the best for the corrected cases: {reason})")
        yield from self.write(cand, ok, reason)

    # ---- before / after at native resolution
    def _evaluate_model(self, which: str, ck) -> Iterator[Event]:
        """IoU of ``ck`` on the corrected and the validation cases (native resolution)."""
        yield {"kind": "stage", "stage": "evaluate", "message": f"evaluating the {which} model"}
        cache = which == "before"
        corr_items, val_items = self._eval_items()
        kw = dict(device=self.device, precision=self.precision, cache=cache)
        per_corr = _evaluate(ck, corr_items, self.thresholds, **kw)
        per_val = _evaluate(ck, val_items, self.thresholds, **kw)
        yield {"kind": "evaluate", "which": which, "i": 1, "n": 1}
        return {
            "corrected": _summarise(per_corr),
            "validation": _summarise(per_val),
            "corrected_cases": per_corr,
            "validation_cases": per_val,
        }

    def _eval_items(self) -> tuple[list, list]:
        from .io import read_image

        by_id, model_regions = self.by_id, self.model_regions
        corr_items = []
        for case in self.corrected_ids:
            vs = self.by_case[case]

            def _img(p=self.img_paths[case]):
                return read_image(p).data

            def _msk(vs=vs):
                return {r: v.load_mask() for r, v in vs.items()}

            corr_items.append(_EvalItem(case, _img, _msk))
        val_items = [
            _EvalItem(
                c,
                (lambda c=c: by_id[c].load_image().data),
                (lambda c=c: by_id[c].load_masks(model_regions)),
            )
            for c in self.val_ids
        ]
        return corr_items, val_items

    # ---- the tolerance guard
    def _guard_of(self, before: dict, after: dict) -> tuple[bool, str]:
        """Whether a fine-tuned model may be written, and why (not)."""
        tolerance = self.tolerance
        drops = {
            r: before["validation"][r] - after["validation"].get(r, float("nan"))
            for r in before["validation"]
        }
        bad = {r: d for r, d in drops.items() if not (d <= tolerance)}
        if not self.val_ids:
            ok, reason = (
                False,
                (
                    "no validation cases (pass --data, and --val-cases if the checkpoint has no "
                    "val_cases): forgetting cannot be ruled out"
                ),
            )
        elif bad:
            ok = False
            reason = "validation IoU fell by more than the tolerance {:g}: {}".format(
                tolerance,
                ", ".join(
                    f"{r} {before['validation'][r]:.4f} -> {after['validation'][r]:.4f}"
                    for r in bad
                ),
            )
        else:
            ok, reason = True, f"validation IoU within tolerance {tolerance:g} in every region"
        return ok, reason

    # ---- the new checkpoint, with its lineage
    def write(self, cand: Path, ok: bool, reason: str) -> Iterator[Event]:
        from .model import load_checkpoint, read_metadata, save_checkpoint

        result, force, out_path = self.result, self.force, self.out_path
        if not ok and force:
            reason = f"written with --force although {reason}"
        if ok or force:
            yield {"kind": "stage", "stage": "write", "message": f"writing {out_path}"}
            ck = load_checkpoint(cand, device="cpu")
            new_meta = dict(ck.metadata)
            for k in ("format", "config", "regions", "code_version", "model_id", "dtype"):
                new_meta.pop(k, None)
            new_meta["parent_id"] = self.parent_id
            new_meta["corrections"] = self.lineage
            new_meta["date"] = self.date
            new_meta["finetune"] = dict(
                self.settings,
                before=_round(result.before),
                after=_round(result.after),
                forced=bool(force and not ok),
                best_epoch=result.best_epoch,
                reason=reason,
            )
            if len(result.candidates) > 1:
                new_meta["finetune"]["search"] = _round({"rows": result.candidates})["rows"]
            save_checkpoint(ck.model, ck.config, out_path, metadata=new_meta)
            result.written, result.path = True, out_path
            result.model_id = read_metadata(out_path).get("model_id")
        else:
            reason = f"not written: {reason} (use --force to write anyway)"
        result.reason = reason


def _round(report: dict) -> dict:
    def rnd(x):
        if isinstance(x, dict):
            return {k: rnd(v) for k, v in x.items()}
        return round(float(x), 5) if isinstance(x, float) and math.isfinite(x) else x

    return rnd(report)


def finetune(
    corrections, checkpoint, out, *, progress: Callable[[Event], None] | None = None, **kwargs
) -> FinetuneResult:
    """Run :func:`finetune_iter` to the end and return its :class:`FinetuneResult`.

    ``progress`` is called with every event.
    """
    result = None
    for ev in finetune_iter(corrections, checkpoint, out, **kwargs):
        if progress is not None:
            progress(ev)
        if ev["kind"] == "done":
            result = ev["result"]
    if result is None:  # pragma: no cover - finetune_iter always ends with "done"
        raise RuntimeError("fine-tuning ended without a result")
    return result
