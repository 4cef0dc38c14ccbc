"""Device selection and numeric precision (torch imported lazily)."""

from __future__ import annotations

import contextlib
import functools
import os
import sys


@functools.lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 arithmetic (AVX512-BF16 or AMX-BF16).

    On other CPUs bf16 autocast is emulated and slower than fp32, so ``auto``
    precision stays fp32 there.
    """
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as fh:
            flags = fh.read()
    except OSError:
        flags = ""
    if "avx512_bf16" in flags or "amx_bf16" in flags:
        return True
    try:  # macOS / Apple silicon and other platforms: ask torch's oneDNN
        import torch

        return bool(getattr(torch.backends.mkldnn, "is_available", lambda: False)()) and bool(
            torch.ops.mkldnn._is_mkldnn_bf16_supported()
        )
    except Exception:
        return False


#: the heap settings of :func:`tune_allocator` (bytes)
ALLOCATOR_MMAP_THRESHOLD = 1 << 30
ALLOCATOR_TRIM_THRESHOLD = (1 << 31) - 1
_allocator_state: dict = {}


def tune_allocator() -> bool:
    """Keep large blocks in glibc's heap instead of a fresh ``mmap`` per tensor.

    A U-Net pass allocates and frees activations of tens to hundreds of MB. glibc serves
    each block above its ``mmap`` threshold (at most 32 MB by default) with a new mapping
    and returns it on free, so every pass faults in and zeroes its activations again: on a
    2-core CPU that was a quarter of a 512 px pass's time, almost all of it in the kernel.
    With the thresholds raised (``mallopt``), freed blocks are reused by the next pass;
    the process keeps its peak heap until it ends instead of handing pages back after each
    pass. Called when a :class:`cxrseg.predict.Predictor` or a training run starts.

    Every thread also allocates from the main heap (``M_ARENA_MAX`` = 1): other threads
    would get heaps of their own of at most 64 MB, so a larger block (a 512 px batch's
    activations) made in one of them, e.g. by :func:`cxrseg.batch.run_predict`'s
    streams, would be mapped afresh on every pass again. This holds for threads that
    start allocating after the call.

    Linux with glibc only (a no-op elsewhere). ``CXRSEG_TUNE_ALLOCATOR=0`` turns it off.
    Process-wide, applied once.

    Returns
    -------
    bool
        Whether the heap is tuned (now or by an earlier call).
    """
    if "tuned" in _allocator_state:
        return _allocator_state["tuned"]
    tuned = False
    if os.environ.get("CXRSEG_TUNE_ALLOCATOR", "1").strip().lower() not in ("0", "no", "off", "false") and (
        sys.platform.startswith("linux")
    ):
        try:
            import ctypes

            libc = ctypes.CDLL("libc.so.6")
            m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8  # <malloc.h>
            tuned = (
                bool(libc.mallopt(m_mmap_threshold, ALLOCATOR_MMAP_THRESHOLD))
                and bool(libc.mallopt(m_trim_threshold, ALLOCATOR_TRIM_THRESHOLD))
                and bool(libc.mallopt(m_arena_max, 1))
            )
        except (OSError, AttributeError):  # not glibc (musl, ...)
            tuned = False
    _allocator_state["tuned"] = tuned
    return tuned


def allocator_tuned() -> bool:
    """Whether :func:`tune_allocator` has tuned this process's heap."""
    return bool(_allocator_state.get("tuned", False))


def available_devices() -> list[str]:
    """``["auto", "cpu", ...]`` plus ``cuda`` / ``cuda:N`` / ``mps`` where they exist (imports torch)."""
    import torch

    out = ["auto", "cpu"]
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        out += ["cuda"] + ([f"cuda:{i}" for i in range(n)] if n > 1 else [])
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append("mps")
    return out


def select_device(spec: str | None = "auto"):
    """Resolve ``auto|cpu|cuda|cuda:N|mps`` to a :class:`torch.device`.

    ``auto`` picks CUDA, then MPS, then CPU. Asking for an unavailable device raises a
    ``RuntimeError`` that says which devices are available.
    """
    import torch

    spec = (spec or "auto").lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {spec!r} requested but CUDA is not available here; use --device cpu")
    if dev.type == "mps" and not (
        getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    ):
        raise RuntimeError(f"device {spec!r} requested but MPS is not available here; use --device cpu")
    return dev


def resolve_precision(precision: str, device) -> str:
    """``auto`` -> ``bf16`` on CUDA with bf16 support and on CPUs with native bf16, else fp32."""
    precision = (precision or "auto").lower()
    if precision != "auto":
        return precision
    env = os.environ.get("CXRSEG_PRECISION", "").strip().lower()
    if env and env != "int8":  # int8 is a prediction precision: training resolves on
        return env
    import torch

    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_supports_bf16():
        return "bf16"
    return "fp32"


def autocast(device, precision: str):
    """An autocast context for ``precision`` (``bf16``, ``fp16``; any other -> none)."""
    import torch

    if precision not in ("bf16", "fp16"):
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
