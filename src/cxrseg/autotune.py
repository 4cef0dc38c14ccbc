"""Numeric precision and memory layout chosen by measurement, cached per machine.

Which of fp32 / bf16 (fp16 on GPUs) and contiguous / ``channels_last`` runs a model
fastest cannot be read off the hardware's feature flags: on one CPU reporting
AVX512-BF16 and AMX, a bf16 forward pass of the shipped U-Net took 1.5x as long as an
fp32 one; on another CPU of the same family it took 0.45x. So on first use of a model
on a device, :func:`choose` times every candidate for a bounded budget (3 s on a CPU)
and records the winner in ``$CXRSEG_CACHE/autotune.json`` (default
``~/.cache/cxrseg``), keyed by

* the machine: CPU model name, a hash of its feature flags, the CPU count and torch's
  thread count (or, on a GPU, its name and compute capability),
* the device (``cpu``, ``cuda:0``, ...),
* the torch version,
* the model id (a fingerprint of the weights) and its input size.

A change of any of them measures again. ``precision="auto"`` in
:class:`cxrseg.predict.Predictor` (hence ``cxrseg predict --precision auto``, the napari
plugin and ``cxrseg bench``) uses the choice; an explicit precision always wins; the
environment variable ``CXRSEG_AUTOTUNE=0`` skips the measurement and takes fp32
``channels_last``.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "Choice",
    "candidates",
    "cache_file",
    "cache_key",
    "lookup",
    "measure",
    "choose",
    "clear",
    "DEFAULT_BUDGET_S",
]

#: Seconds the measurement may take on first use, per device type.
DEFAULT_BUDGET_S = {"cpu": 3.0, "cuda": 5.0, "mps": 5.0}
CACHE_NAME = "autotune.json"
CACHE_VERSION = 1

#: After the warm-up round, candidates slower than this factor x the fastest are dropped
#: (a bf16 pass emulated in software is 3-10x slower: no need to time it again).
DROP_FACTOR = 1.5
MAX_ROUNDS = 5
#: A measurement that ran out of budget before timing every candidate (a busy machine) is
#: repeated on the next uses, up to this many attempts in all; then it stands.
MAX_ATTEMPTS = 3


@dataclass
class Choice:
    """The precision and layout a model runs with on a device.

    Attributes
    ----------
    precision : str
        ``fp32``, ``bf16`` or ``fp16``.
    channels_last : bool
    measured_ms : dict
        ``"<precision>/<layout>"`` -> median milliseconds of one batch-1 forward pass as
        measured (``None``: not timed; dropped candidates keep their warm-up time).
    source : str
        ``measured`` (just now), ``cache`` (an earlier measurement) or ``default``
        (measurement disabled).
    key : dict
        What the cache entry is keyed by.
    """

    precision: str
    channels_last: bool
    measured_ms: dict = field(default_factory=dict)
    source: str = "measured"
    key: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.precision}/{'channels_last' if self.channels_last else 'contiguous'}"

    def describe(self) -> str:
        """One line: the choice and the alternatives with their times."""
        parts = []
        for name, ms in sorted(self.measured_ms.items(), key=lambda kv: (kv[1] is None, kv[1] or 0)):
            parts.append(f"{name} {'not timed (budget spent)' if ms is None else f'{ms:.1f} ms'}")
        how = {"cache": "cached measurement", "measured": "measured now", "default": "not measured"}
        return f"{self.label} ({how.get(self.source, self.source)}: {', '.join(parts) or '-'})"


def _label(precision: str, channels_last: bool) -> str:
    return f"{precision}/{'channels_last' if channels_last else 'contiguous'}"


def candidates(device) -> list[tuple[str, bool]]:
    """(precision, channels_last) pairs worth timing on ``device``, the safe default
    (fp32, channels_last) first.

    CPUs: fp32, and bf16 where the CPU has native bf16 arithmetic (emulated bf16 is never
    faster); CUDA: fp32, bf16 where supported, fp16; MPS: fp32 and fp16.
    """
    from .device import cpu_supports_bf16

    precs = ["fp32"]
    if device.type == "cpu":
        if cpu_supports_bf16():
            precs.append("bf16")
    elif device.type == "cuda":
        import torch

        if torch.cuda.is_bf16_supported():
            precs.append("bf16")
        precs.append("fp16")
    elif device.type == "mps":
        precs.append("fp16")
    # channels_last of every precision first: when the budget runs out on a busy machine,
    # the likelier winners have been timed
    return [(p, cl) for cl in (True, False) for p in precs]


# --------------------------------------------------------------------------- keys and cache


@functools.lru_cache(maxsize=1)
def _cpu_identity() -> tuple[str, str]:
    """(model name, short hash of the feature flags) of this machine's CPU."""
    import platform

    name, flags = "", ""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as fh:
            for line in fh:
                if not name and line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                elif not flags and line.startswith(("flags", "Features")):
                    flags = " ".join(sorted(line.split(":", 1)[1].split()))
                if name and flags:
                    break
    except OSError:
        pass
    name = name or platform.processor() or platform.machine()
    return name, hashlib.sha256(flags.encode()).hexdigest()[:12]


def machine_identity(device) -> dict:
    """What identifies the hardware ``device`` runs on (see the module docstring)."""
    import torch

    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        cap = torch.cuda.get_device_capability(idx)
        return {"gpu": torch.cuda.get_device_name(idx), "capability": f"{cap[0]}.{cap[1]}"}
    name, flags = _cpu_identity()
    return {"cpu": name, "cpu_flags": flags, "cpus": os.cpu_count(), "threads": torch.get_num_threads()}


def cache_key(device, *, model_id: str, input_size: int, torch_version: str | None = None) -> dict:
    """The cache key of a model on a device (a JSON-able dict)."""
    import torch

    return {
        "machine": machine_identity(device),
        "device": str(device),
        "torch": torch_version or torch.__version__,
        "model_id": str(model_id),
        "input_size": int(input_size),
    }


def _key_hash(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def cache_file() -> Path:
    """``$CXRSEG_CACHE/autotune.json`` (default ``~/.cache/cxrseg/autotune.json``)."""
    from .training_arrays import default_cache_dir

    return default_cache_dir() / CACHE_NAME


def _read_cache() -> dict:
    try:
        data = json.loads(cache_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
        return {}
    entries = data.get("entries")
    return entries if isinstance(entries, dict) else {}


def _write_entry(key: dict, entry: dict) -> None:
    """Add one entry (read-modify-replace; a lost race only costs a re-measurement)."""
    from .io import atomic_write

    entries = _read_cache()
    entries[_key_hash(key)] = entry
    text = json.dumps({"version": CACHE_VERSION, "entries": entries}, indent=1, sort_keys=True)
    path = cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))
    except OSError:
        pass  # a read-only cache folder: measure again next time


def lookup(key: dict) -> Choice | None:
    """The cached choice for ``key``, or ``None``."""
    e = _read_cache().get(_key_hash(key))
    if not isinstance(e, dict) or e.get("key") != key:
        return None
    if not e.get("complete", True) and int(e.get("attempts", 1)) < MAX_ATTEMPTS:
        return None  # measure again: some candidates were never timed
    if e.get("precision") not in ("fp32", "bf16", "fp16"):
        return None
    return Choice(
        precision=e["precision"],
        channels_last=bool(e.get("channels_last", True)),
        measured_ms=dict(e.get("measured_ms") or {}),
        source="cache",
        key=key,
    )


def clear() -> None:
    """Forget every cached choice (the next use of each model measures again)."""
    cache_file().unlink(missing_ok=True)


# --------------------------------------------------------------------------- measurement


def measure(
    factories: dict[tuple[str, bool], Callable[[], Callable[[], object]]],
    *,
    budget_s: float,
    sync: Callable[[], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float | None]:
    """Time each candidate within ``budget_s`` seconds; milliseconds per call by label.

    ``factories[c]()`` prepares candidate ``c`` (a copy of the model in its precision and
    layout) and returns the function to time; it is called only when the candidate's
    turn comes, inside the budget. One untimed warm-up call each (its time is kept as the
    estimate of candidates that get no timed call), candidates slower than
    :data:`DROP_FACTOR` x the fastest warm-up are dropped, the others are timed
    round-robin (so a change of machine load hits all alike) until the budget is spent or
    :data:`MAX_ROUNDS` rounds are done; the median counts. A candidate that raises, or
    whose turn never came, is reported as ``None``.
    """
    sync = sync or (lambda: None)
    t_end = clock() + float(budget_s)
    warm: dict[tuple[str, bool], float] = {}
    runners: dict[tuple[str, bool], Callable[[], object]] = {}
    out: dict[str, float | None] = {_label(*c): None for c in factories}
    for c, make in factories.items():
        if warm and clock() >= t_end:
            break  # out of budget: the rest stay unmeasured
        try:
            fn = make()
            t0 = clock()
            fn()
            sync()
        except Exception:
            continue
        warm[c] = clock() - t0
        runners[c] = fn
    if not warm:
        return out
    best = min(warm.values())
    live = [c for c in warm if warm[c] <= DROP_FACTOR * best]
    times: dict[tuple[str, bool], list[float]] = {c: [] for c in live}
    for _ in range(MAX_ROUNDS):
        est = sum(statistics.median(times[c]) if times[c] else warm[c] for c in live)
        if clock() + est > t_end and any(times.values()):
            break
        if clock() + est > t_end + est / 2:
            break  # not even one round fits
        for c in live:
            t0 = clock()
            runners[c]()
            sync()
            times[c].append(clock() - t0)
    for c, t in warm.items():
        out[_label(*c)] = 1000 * (statistics.median(times[c]) if times.get(c) else t)
    return out


def pick(measured_ms: dict[str, float | None], order: Sequence[tuple[str, bool]]) -> tuple[str, bool]:
    """The fastest measured candidate; ties and an empty measurement go to the first of
    ``order`` (the safe default)."""
    timed = [(measured_ms.get(_label(*c)), i, c) for i, c in enumerate(order)]
    timed = [t for t in timed if t[0] is not None]
    if not timed:
        return order[0]
    return min(timed)[2]


def choose(
    device,
    *,
    model_id: str,
    input_size: int,
    make_runner: Callable[[str, bool], Callable[[], object]],
    budget_s: float | None = None,
    force: bool = False,
) -> Choice:
    """The precision and layout for a model on ``device``: cached, or measured now.

    Parameters
    ----------
    device : torch.device
    model_id, input_size
        Identify the model (part of the cache key).
    make_runner : callable
        ``make_runner(precision, channels_last)`` returns a function running one batch-1
        forward pass of the model prepared that way.
    budget_s : float, optional
        Seconds for the measurement (default :data:`DEFAULT_BUDGET_S` of the device type).
    force : bool
        Measure even when a cached choice exists (and replace it).
    """
    key = cache_key(device, model_id=model_id, input_size=input_size)
    order = candidates(device)
    if os.environ.get("CXRSEG_AUTOTUNE", "1").strip().lower() in ("0", "no", "off", "false"):
        return Choice("fp32", True, {}, "default", key)
    if not force:
        hit = lookup(key)
        if hit is not None:
            return hit
    old = _read_cache().get(_key_hash(key))
    attempts = 1 + (int(old.get("attempts", 1)) if isinstance(old, dict) and not old.get("complete", True) else 0)
    if budget_s is None:
        budget_s = DEFAULT_BUDGET_S.get(device.type, 3.0)

    def sync():
        if device.type == "cuda":
            import torch

            torch.cuda.synchronize(device)

    factories = {c: (lambda c=c: make_runner(*c)) for c in order}
    measured = measure(factories, budget_s=budget_s, sync=sync)
    prec, cl = pick(measured, order)
    choice = Choice(prec, cl, measured, "measured", key)
    _write_entry(
        key,
        {
            "key": key,
            "precision": prec,
            "channels_last": cl,
            "measured_ms": measured,
            "complete": all(v is not None for v in measured.values()),
            "attempts": attempts,
            "budget_s": budget_s,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        },
    )
    return choice
