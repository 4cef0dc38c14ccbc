"""int8 prediction on CPUs: post-training static quantisation of a cxrseg network.

On CPUs with 8-bit dot-product instructions (AVX512-VNNI, AVX-VNNI, AMX) an int8
convolution does several times the multiply-adds of a float one per cycle. Static
quantisation needs, besides the weights, the range of every activation in the network;
those ranges are measured once on real films (*calibration*) and stored beside the
checkpoint, in ``<name>.int8.safetensors`` (and ``<name>.refine.int8.safetensors`` for
the refinement network): one scale and zero point per activation, a few kilobytes, no
image data. The weights are quantised per output channel from the float weights when the
network is loaded.

``cxrseg quantize`` calibrates a checkpoint on training cases, checks the int8 pipeline
against fp32 on the checkpoint's validation cases and writes the files with that check
in their metadata; ``--precision int8`` (CLI, :class:`cxrseg.predict.Predictor`) then
uses them. ``auto`` never picks int8: its masks differ from fp32 a little more than
bf16's, so it is the user's choice.

The quantised network is built with PyTorch's FX graph-mode quantisation
(``torch.ao.quantization``), x86 back end (fbgemm/oneDNN): about half a second of tracing
and weight packing per network when a predictor is created, worth it for a folder, not
for one film. torch 2.14 announces that its quantised tensor types will move to torchao;
a torch without them makes ``--precision int8`` fail with :class:`Int8Error` (the other
precisions are unaffected).
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "INT8_FORMAT",
    "Int8Error",
    "int8_path",
    "int8_engine",
    "calibrating",
    "stored_qparams",
    "save_int8",
    "read_int8",
    "quantized_model",
    "load_quantized",
]

INT8_FORMAT = "1"
SUFFIX = ".int8.safetensors"


class Int8Error(ValueError):
    """An int8 calibration file is missing, unreadable or belongs to another network."""


def int8_path(checkpoint: str | os.PathLike) -> Path:
    """The calibration file beside ``checkpoint`` (``x.safetensors`` -> ``x.int8.safetensors``)."""
    p = Path(checkpoint)
    stem = p.name[: -len(".safetensors")] if p.name.endswith(".safetensors") else p.name
    return p.with_name(stem + SUFFIX)


def int8_engine() -> str:
    """The quantised back end of this torch build for x86/ARM CPUs (set as torch's engine)."""
    import torch

    engines = torch.backends.quantized.supported_engines
    for name in ("x86", "fbgemm", "onednn", "qnnpack"):
        if name in engines:
            torch.backends.quantized.engine = name
            return name
    raise Int8Error(f"this torch build has no quantised CPU engine (supported: {engines})")


@contextlib.contextmanager
def _quiet():
    """Silence torch's notices about its quantisation API (the observers' ``reduce_range``
    and the quantised tensor types' planned move to torchao): they are for PyTorch
    developers, not for the user of a prediction."""
    import torch.fx.config

    # and no Python stack trace recorded per graph node (for debugging graphs): recording
    # them imports torch._dynamo, over a second
    before = getattr(torch.fx.config, "do_not_emit_stack_traces", False)
    torch.fx.config.do_not_emit_stack_traces = True
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*reduce_range will be deprecated.*")
            warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
            warnings.filterwarnings("ignore", message=".*torch.ao.quantization is deprecated.*")
            yield
    finally:
        torch.fx.config.do_not_emit_stack_traces = before


def _stored_observer_class():
    import torch
    from torch.ao.quantization.observer import ObserverBase

    class StoredQParams(ObserverBase):
        """An activation observer that returns a stored scale and zero point (set by
        :func:`quantized_model` from a calibration file) instead of measuring."""

        def __init__(self, dtype=torch.quint8, qscheme=torch.per_tensor_affine, **_kw):
            super().__init__(dtype=dtype)
            self.qscheme = qscheme
            self.register_buffer("scale", torch.tensor([1.0]))
            self.register_buffer("zero_point", torch.tensor([0], dtype=torch.int64))

        def forward(self, x):
            return x

        def calculate_qparams(self):
            return self.scale, self.zero_point

    return StoredQParams


def _mapping(stored: bool):
    """The qconfig mapping: the engine's default (histogram activation observers) for
    calibration, or the same with stored activation parameters for loading."""
    from torch.ao.quantization import QConfig, QConfigMapping, get_default_qconfig

    engine = int8_engine()
    default = get_default_qconfig(engine)
    if not stored:
        return QConfigMapping().set_global(default)
    cls = _stored_observer_class()
    return QConfigMapping().set_global(QConfig(activation=cls.with_args(), weight=default.weight))


def _observers(prepared) -> dict[str, Any]:
    return {name: mod for name, mod in prepared.named_children() if name.startswith("activation_post_process_")}


def _example(config):
    import torch

    s = int(config.input_size) if config is not None else 64
    c = int(getattr(config, "in_channels", 3)) if config is not None else 3
    return torch.zeros(1, c, s, s)


def calibrating(model, config):
    """A copy of the float ``model`` with activation observers: run calibration batches
    through it, then pass it to :func:`stored_qparams`."""
    import copy

    from torch.ao.quantization.quantize_fx import prepare_fx

    with _quiet():
        return prepare_fx(copy.deepcopy(model).eval().float(), _mapping(stored=False),
                          example_inputs=(_example(config),))


def stored_qparams(prepared) -> dict:
    """The scale and zero point of every activation of a calibrated network."""
    import torch

    out = {}
    for name, obs in _observers(prepared).items():
        seen = getattr(obs, "max_val", None)
        if seen is not None and (seen.numel() == 0 or bool(torch.isinf(seen).all())):
            raise Int8Error(f"activation {name} saw no data: run calibration films first")
        scale, zp = obs.calculate_qparams()
        out[f"{name}.scale"] = torch.as_tensor(scale, dtype=torch.float32).reshape(1).clone()
        out[f"{name}.zero_point"] = torch.as_tensor(zp, dtype=torch.int64).reshape(1).clone()
    if not out:
        raise Int8Error("the network has no quantisable activation")
    return out


def save_int8(path: str | os.PathLike, qparams: dict, *, model_id: str, meta: dict | None = None) -> Path:
    """Write a calibration file atomically (a previous file stays intact on any error)."""
    from safetensors.torch import save

    from .io import atomic_write

    md = {"cxrseg_int8": INT8_FORMAT, "model_id": str(model_id), "engine": int8_engine()}
    md.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in (meta or {}).items()})
    blob = save({k: v.contiguous() for k, v in qparams.items()}, metadata=md)
    return atomic_write(path, lambda fh: fh.write(blob))


def read_int8(path: str | os.PathLike, model_id: str | None = None) -> tuple[dict, dict]:
    """``(qparams, metadata)`` of a calibration file, checked against ``model_id``.

    Raises
    ------
    Int8Error
        Missing, not a cxrseg int8 file, or made for other weights.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise Int8Error(f"{path}: no int8 calibration file (make one with `cxrseg quantize`)")
    try:
        with safe_open(str(path), framework="pt") as fh:
            md = dict(fh.metadata() or {})
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types
        raise Int8Error(f"{path}: not a readable int8 calibration file ({exc})") from exc
    if md.get("cxrseg_int8") != INT8_FORMAT:
        raise Int8Error(f"{path}: not a cxrseg int8 calibration file (format {md.get('cxrseg_int8')!r})")
    if model_id is not None and md.get("model_id") != str(model_id):
        raise Int8Error(
            f"{path}: calibrated for model {md.get('model_id')}, not {model_id}; "
            "calibrate this checkpoint again with `cxrseg quantize`"
        )
    return tensors, md


def quantized_model(model, config, qparams: dict, *, source: str | os.PathLike = "calibration"):
    """The int8 network of the float ``model`` with the stored activation parameters.

    Takes and returns float32 NCHW (or channels-last) tensors; runs on the CPU."""
    import torch
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    with _quiet():
        prepared = prepare_fx(model.eval().float().cpu(), _mapping(stored=True), example_inputs=(_example(config),))
    observers = _observers(prepared)
    want = {f"{n}.{b}" for n in observers for b in ("scale", "zero_point")}
    if set(qparams) != want:
        raise Int8Error(
            f"{source}: holds {len(qparams) // 2} activations, the network has {len(observers)}; "
            "it was made for another architecture"
        )
    with torch.no_grad():
        for name, obs in observers.items():
            obs.scale.copy_(qparams[f"{name}.scale"].reshape(1).float())
            obs.zero_point.copy_(qparams[f"{name}.zero_point"].reshape(1).long())
    with _quiet():
        return convert_fx(prepared)


def load_quantized(model, config, path: str | os.PathLike, model_id: str | None):
    """:func:`quantized_model` from the calibration file at ``path``; returns ``(module, metadata)``."""
    import torch

    qparams, md = read_int8(path, model_id)
    try:
        return quantized_model(model, config, qparams, source=path), md
    except Int8Error:
        raise
    except (ImportError, AttributeError, RuntimeError, NotImplementedError) as exc:
        raise Int8Error(f"{path}: torch {torch.__version__} cannot build the int8 network ({exc})") from exc



def _networks(predictor) -> list[tuple[Any, Any, str, Path]]:
    """``(owner, config, model_id, checkpoint path)`` of the predictor's networks (the
    whole-film model, then the refinement network when it is used)."""
    nets = [(predictor, predictor.config, predictor.model_id, predictor.path)]
    if getattr(predictor, "refiner", None) is not None:
        r = predictor.refiner
        nets.append((r, r.config, r.model_id, r.path))
    return nets


def calibrate(predictor, films, *, progress: Callable[[int], None] | None = None) -> dict[Path, dict]:
    """Measure the activation ranges of an fp32 CPU ``predictor``'s networks on ``films``
    (2-D images, run through the predictor's own pre-processing and refinement).

    Returns ``{checkpoint path: qparams}`` for :func:`quantized_model` / :func:`save_int8`.
    The predictor's networks are restored afterwards."""
    if predictor.precision != "fp32" or predictor.device.type != "cpu":
        raise ValueError("calibrate an fp32 predictor on the CPU")
    nets = _networks(predictor)
    saved = [owner.model for owner, *_ in nets]
    n = 0
    try:
        for owner, config, *_ in nets:
            owner.model = calibrating(owner.model, config)
        for img in films:
            predictor.predict(img)
            n += 1
            if progress is not None:
                progress(n)
        if n == 0:
            raise Int8Error("no calibration film")
        return {path: stored_qparams(owner.model) for owner, _, _, path in nets}
    finally:
        for (owner, *_), model in zip(nets, saved, strict=True):
            owner.model = model


def use_int8(predictor, qparams: dict[Path, dict]) -> None:
    """Switch an fp32 CPU ``predictor`` (and its refinement network) to int8 networks built
    from ``qparams`` (:func:`calibrate`'s result), without files."""
    for owner, config, _, path in _networks(predictor):
        if path not in qparams:
            raise Int8Error(f"no calibration of {path}")
        owner.model = quantized_model(owner.model, config, qparams[path], source=path)
        owner.precision = "int8"


def write_calibration(qparams: dict[Path, dict], model_ids: dict[Path, str], meta: dict) -> list[Path]:
    """Write one calibration file per network (each atomically); returns their paths."""
    return [save_int8(int8_path(path), q, model_id=model_ids[path], meta=meta) for path, q in qparams.items()]
