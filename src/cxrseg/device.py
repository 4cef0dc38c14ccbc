"""Device selection and numeric precision (torch imported lazily)."""

from __future__ import annotations

import contextlib
import functools
import os


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
    if os.environ.get("CXRSEG_PRECISION"):
        return os.environ["CXRSEG_PRECISION"].lower()
    import torch

    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_supports_bf16():
        return "bf16"
    return "fp32"


def autocast(device, precision: str):
    """An autocast context for ``precision`` (``fp32`` -> no autocast)."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
