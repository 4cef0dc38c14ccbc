"""Where torch runs in the GUI process: the triton guard and the one torch thread."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

log = logging.getLogger("napari_cxrseg")

__all__ = ["OnTorchThread", "guard_triton_import", "torch_call"]


def guard_triton_import() -> bool:
    """Stop ``triton`` from being imported into a process that already runs Mesa's LLVM.

    Mesa's OpenGL drivers (llvmpipe under Xvfb or without a GPU, radeonsi, ...) load
    ``libLLVM`` into the process when napari's canvas gets its GL context; importing
    ``triton`` afterwards (torch does it lazily, e.g. through torchvision or
    ``torch._dynamo``) loads a second, statically linked LLVM and crashes the process with
    a segmentation fault. cxrseg never uses ``torch.compile``, so when ``libLLVM`` is
    mapped and ``triton`` is not imported yet, this makes ``import triton`` raise
    ``ImportError`` (torch then carries on without it). Set ``CXRSEG_ALLOW_TRITON=1`` to
    disable the guard. Returns whether it blocked triton.
    """
    if "triton" in sys.modules or not sys.platform.startswith("linux"):
        return False
    if os.environ.get("CXRSEG_ALLOW_TRITON", "0") == "1":
        return False
    try:
        with open("/proc/self/maps", encoding="ascii", errors="ignore") as fh:
            mapped = "libLLVM" in fh.read()
    except OSError:
        return False
    if mapped:
        sys.modules["triton"] = None  # type: ignore[assignment]
        log.info("napari-cxrseg: Mesa's libLLVM is loaded; blocking the triton import (it would crash)")
    return mapped


_TORCH_EXECUTOR = None


def torch_call(fn: Callable, *args: Any, **kwargs: Any):
    """Run ``fn(*args, **kwargs)`` on the one thread that does all of the docks' torch work.

    Every OS thread that calls into torch on a CPU gets its own OpenMP thread team, and
    idle teams spin and steal the cores from the busy one; one long-lived thread keeps
    one warm team (figures: benchmarks/README.md, "GUI notes"). Call from a worker,
    never from the GUI thread (it blocks until done).
    """
    global _TORCH_EXECUTOR
    if _TORCH_EXECUTOR is None:
        from concurrent.futures import ThreadPoolExecutor

        _TORCH_EXECUTOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cxrseg-torch")
    return _TORCH_EXECUTOR.submit(fn, *args, **kwargs).result()


class OnTorchThread:
    """A predictor whose ``predict`` runs through :func:`torch_call` (other attributes pass)."""

    def __init__(self, predictor):
        self._predictor = predictor

    def __getattr__(self, name: str):
        return getattr(self._predictor, name)

    def predict(self, image, **kwargs):
        return torch_call(self._predictor.predict, image, **kwargs)
