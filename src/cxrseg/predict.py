"""The prediction engine: all five regions in one pass, as probability maps.

One multi-label U-Net predicts every region at once; the result is a probability map
(sigmoid) per region at the input image's own resolution. Thresholding
(:func:`threshold`) and clean-up (:func:`cxrseg.postprocess.postprocess`) are separate
steps, so a viewer can re-threshold without running the model again.

Pre- and post-processing are those of training (:mod:`cxrseg.transforms`): the image is
padded to a square and area-resized to the model's input size, normalised, and the
probabilities are resized back (bilinear, in torch) and cropped to the image's shape.

Speed
-----
* the model is loaded once (:func:`get_predictor` caches it per checkpoint, modification
  time, device and precision);
* batch-norm layers are folded into the preceding convolutions (exact in eval mode,
  checked numerically against the unfolded model once, then cached with the model);
* ``torch.inference_mode()``;
* precision (fp32, bf16; fp16 on GPUs) and memory layout chosen by measurement on the
  first use of a model on a device (:mod:`cxrseg.autotune`, cached per machine, torch
  version and model); the weights are stored in that type and the forward pass runs
  under :func:`cxrseg.device.autocast`; probabilities are always float32;
* on request (``precision="int8"``, CPUs): the networks quantised to int8 with the
  calibration stored beside the checkpoint (:mod:`cxrseg.quantize`);
* the network is built without random initialisation and, after the first load, from
  cached folded weights without importing smp (:func:`cxrseg.model.load_inference_model`);
* on CUDA: page-locked host buffers and asynchronous copies, cuDNN autotuning, and
  optionally ``torch.compile`` with CUDA graphs (``compile=True`` or ``CXRSEG_COMPILE=1``).
"""

from __future__ import annotations

import collections
import contextlib
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .config import ModelConfig
from .model import resolve_checkpoint_path
from .regions import canonical_region, parse_regions

__all__ = [
    "Predictor",
    "LazyPredictor",
    "get_predictor",
    "clear_cache",
    "predict",
    "threshold",
    "parse_thresholds",
    "resolve_checkpoint_path",
    "fold_batchnorm",
    "as_unit_image",
    "PRECISIONS",
]

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")


# --------------------------------------------------------------------------- model surgery


def fold_batchnorm(model) -> int:
    """Fold eval-mode ``BatchNorm2d`` layers into the ``Conv2d`` layers before them, in place.

    Handles the patterns of smp's U-Net and torchvision ResNets: ``Sequential(conv, bn,
    ...)`` and sibling attributes ``convN`` / ``bnN`` (the folded batch norm becomes an
    ``Identity``). The caller should check the result numerically (:class:`Predictor`
    does). Returns the number of folded layers.
    """
    import torch.nn as nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    def ok(conv, bn) -> bool:
        return (
            isinstance(conv, nn.Conv2d)
            and isinstance(bn, nn.BatchNorm2d)
            and bn.track_running_stats
            and bn.running_mean is not None
            and conv.out_channels == bn.num_features
        )

    count = 0
    for mod in list(model.modules()):
        names = list(mod._modules)
        if isinstance(mod, nn.Sequential):
            for a, b in zip(names, names[1:], strict=False):
                ca, cb = mod._modules[a], mod._modules[b]
                if ok(ca, cb):
                    mod._modules[a] = fuse_conv_bn_eval(ca, cb)
                    mod._modules[b] = nn.Identity()
                    count += 1
        else:
            for name in names:
                if not name.startswith("conv"):
                    continue
                bn_name = "bn" + name[4:]
                conv, bn = mod._modules.get(name), mod._modules.get(bn_name)
                if ok(conv, bn):
                    mod._modules[name] = fuse_conv_bn_eval(conv, bn)
                    mod._modules[bn_name] = nn.Identity()
                    count += 1
    return count


# --------------------------------------------------------------------------- inputs


def as_unit_image(image, *, name: str = "image") -> np.ndarray:
    """A 2-D ``float32`` image in [0, 1] from any 2-D array.

    Floats already in [0, 1] pass unchanged; ``bool`` -> {0, 1}; ``uint8`` / ``uint16`` are
    divided by their maximum; other values are min-max scaled; NaN becomes the minimum.

    Raises
    ------
    ValueError
        Not a non-empty 2-D array.
    """
    a = np.asarray(image)
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"{name}: expected a non-empty 2-D grayscale image, got shape {a.shape}")
    if a.dtype == np.bool_:
        return a.astype(np.float32)
    if a.dtype == np.uint8:
        return a.astype(np.float32) / np.float32(255)
    if a.dtype == np.uint16:
        return a.astype(np.float32) / np.float32(65535)
    a = a.astype(np.float32, copy=False)
    finite = np.isfinite(a)
    if not finite.all():
        if not finite.any():
            return np.zeros(a.shape, np.float32)
        a = np.where(finite, a, np.nanmin(np.where(finite, a, np.nan)))
    lo, hi = float(a.min()), float(a.max())
    if lo >= 0.0 and hi <= 1.0:
        return a
    if hi <= lo:
        return np.zeros(a.shape, np.float32)
    return ((a - lo) / (hi - lo)).astype(np.float32)


# --------------------------------------------------------------------------- predictor


class Predictor:
    """A loaded model that turns radiographs into per-region probability maps.

    Parameters
    ----------
    checkpoint : str or Path, optional
        A cxrseg ``.safetensors`` checkpoint or a training output folder; ``None`` is
        the model shipped with the package.
    device : str, optional
        ``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
    precision : str, optional
        ``auto`` (the fastest of fp32, bf16 and - on GPUs - fp16 as measured on this
        machine, see :mod:`cxrseg.autotune`; the environment variable
        ``CXRSEG_PRECISION`` overrides it), ``fp32``, ``bf16``, ``fp16`` (fp16 needs
        CUDA or MPS; on a CPU it falls back to fp32) or ``int8`` (CPU only, with the
        calibration file made by ``cxrseg quantize`` beside the checkpoint; never chosen by
        ``auto``, see :mod:`cxrseg.quantize`). An explicit value always wins.
    channels_last : bool, optional
        Run convolutions in NHWC memory format; default: the measured choice with
        ``auto`` precision, else ``True``.
    compile : bool, optional
        ``torch.compile`` the network (CUDA graphs on GPUs); default: the environment
        variable ``CXRSEG_COMPILE=1``. The first batches are slow while it compiles.
    autotune_budget : float, optional
        Seconds the first-use measurement may take (default 3 on a CPU, 5 on a GPU).
    refine : bool, optional
        Refine the clavicles at the masks' native resolution with the network stored
        beside the checkpoint (:mod:`cxrseg.refine`). ``None`` (default): when there is
        one and the environment variable ``CXRSEG_REFINE`` is not ``0``; ``True``: it must
        be there; ``False``: the whole-film model alone.

    Attributes
    ----------
    config : ModelConfig
        The checkpoint's model configuration.
    regions : tuple of str
        The regions the model predicts, in output-channel order.
    model_id : str
        Fingerprint of the weights (from the checkpoint metadata).
    metadata : dict
        The checkpoint's metadata.
    path : Path
        The checkpoint file.
    device : torch.device
    precision : str
        The resolved precision: ``fp32``, ``bf16``, ``fp16`` or ``int8``.
    autotune : cxrseg.autotune.Choice or None
        With ``auto`` precision: the choice and the times measured for the alternatives.
    thresholds : dict
        The checkpoint's per-region thresholds (0.5 unless calibrated).
    refiner : cxrseg.refine.Refiner or None
        The native-resolution second stage, when it is used.

    Raises
    ------
    CheckpointError
        The checkpoint is missing, not a cxrseg safetensors file (a pickle is refused),
        or inconsistent.
    """

    def __init__(
        self,
        checkpoint=None,
        *,
        device="auto",
        precision="auto",
        channels_last=None,
        compile: bool | None = None,
        autotune_budget: float | None = None,
        refine: bool | None = None,
    ):
        import torch

        from .device import select_device, tune_allocator
        from .model import load_inference_model

        tune_allocator()
        if str(precision).lower() not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.path: Path = resolve_checkpoint_path(checkpoint)
        self.device = select_device(device)
        requested = str(precision).lower()
        if requested == "auto" and os.environ.get("CXRSEG_PRECISION"):
            requested = os.environ["CXRSEG_PRECISION"].strip().lower()
            if requested not in PRECISIONS:
                raise ValueError(f"CXRSEG_PRECISION must be one of {', '.join(PRECISIONS)}, got {requested!r}")
        model, config, meta, _, n_folded = load_inference_model(self.path)
        self.config: ModelConfig = config
        self.metadata: dict[str, Any] = dict(meta)
        self.model_id: str = str(meta.get("model_id", "unknown"))
        self.regions: tuple[str, ...] = tuple(config.regions)
        self.thresholds: dict[str, float] = dict(config.thresholds)
        self.input_size: int = int(config.input_size)
        self.folded_batchnorm = n_folded
        for p in model.parameters():
            p.requires_grad_(False)
        model = model.eval().to(self.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick its kernels
        #: the autotune decision (:class:`cxrseg.autotune.Choice`) when precision was ``auto``
        self.autotune = None
        if requested == "auto":
            from .autotune import choose

            self.autotune = choose(
                self.device,
                model_id=self.model_id,
                input_size=self.input_size,
                make_runner=lambda prec, cl: self._runner(model, prec, cl),
                budget_s=autotune_budget,
            )
            prec, cl = self.autotune.precision, self.autotune.channels_last
        else:
            prec, cl = requested, True
        if prec == "fp16" and self.device.type == "cpu":
            prec = "fp32"
        if channels_last is not None:  # an explicit layout wins over the measured one
            cl = bool(channels_last)
        self.precision: str = prec
        self.channels_last = bool(cl)
        #: the int8 calibration file's metadata (precision ``int8``), see :mod:`cxrseg.quantize`
        self.int8: dict | None = None
        if prec == "int8":
            self.model = self._quantized(model)
        else:
            self.model = self._prepared(model, prec, self.channels_last, copy=False)
        if compile is None:
            compile = os.environ.get("CXRSEG_COMPILE", "").strip().lower() in ("1", "yes", "on", "true")
        self.compiled = False
        if compile and prec != "int8":
            # CUDA graphs ("reduce-overhead") on GPUs; plain inductor elsewhere
            mode = "reduce-overhead" if self.device.type == "cuda" else None
            self.model = torch.compile(self.model, mode=mode, dynamic=False)
            self.compiled = True
        self._lock = threading.Lock()
        self._pinned: dict = {}
        self.refiner = self._load_refiner(refine)

    def _quantized(self, model):
        """The int8 network from the calibration file beside the checkpoint."""
        from .model import CheckpointError
        from .quantize import Int8Error, int8_path, load_quantized

        if self.device.type != "cpu":
            raise ValueError(f"int8 runs on a CPU, not on {self.device}; choose fp16 or bf16 there")
        try:
            qmodel, self.int8 = load_quantized(model, self.config, int8_path(self.path), self.model_id)
        except Int8Error as exc:
            raise CheckpointError(str(exc)) from None
        return qmodel

    def _load_refiner(self, refine: bool | None):
        from .model import CheckpointError
        from .refine import Refiner, find_refiner, refine_enabled, refiner_path

        refine = refine_enabled(refine)
        if refine is None and find_refiner(self.path) is None:
            return None
        if refine is False:
            return None
        path = refiner_path(self.path)
        if not path.is_file():
            raise CheckpointError(
                f"checkpoint {self.path.name} has no refinement network (expected {path})"
            )
        ref = Refiner(path, device=self.device, precision=self.precision, channels_last=self.channels_last)
        missing = [r for r in ref.spec.regions if r not in self.regions]
        if missing:
            raise CheckpointError(
                f"{path}: refines {', '.join(missing)}, which {self.path.name} does not predict"
            )
        return ref

    @property
    def refine_id(self) -> str | None:
        """The model id of the refinement network in use, or ``None``."""
        return None if self.refiner is None else self.refiner.model_id

    @property
    def concurrent(self) -> bool:
        """Whether passes may run in several threads at once (``exclusive=False``): on a
        CPU, without ``torch.compile``."""
        return self.device.type == "cpu" and not self.compiled

    def refine_native(self, image, native, names) -> None:
        """Refine, in place, the rows of ``native`` (``(R, rows, cols)`` probabilities of
        ``image`` for the regions ``names``) that the refinement network covers."""
        self.refine_natives([image], [native], names)

    def refine_natives(self, images, natives, names, *, unit: bool = False, exclusive: bool = True) -> None:
        """:meth:`refine_native` for several films at once (their crops share the
        network's forward passes). ``unit``: the films are already float32 in [0, 1]
        (:func:`as_unit_image`'s output), so not scanned again. ``exclusive``: see
        :meth:`forward`."""
        if self.refiner is None:
            return
        import torch

        rows = [(j, r) for j, r in enumerate(names) if r in self.refiner.spec.regions]
        if not rows:
            return
        films, maps = [], []
        for image, native in zip(images, natives, strict=True):
            img = image if unit else as_unit_image(image)
            if img.shape != tuple(native.shape[-2:]):  # a film decoded at another size
                import torch.nn.functional as F

                t = torch.from_numpy(np.ascontiguousarray(img))[None, None]
                img = F.interpolate(t, size=tuple(native.shape[-2:]), mode="bilinear", align_corners=False,
                                    antialias=True)[0, 0].numpy()
            films.append(img)
            maps.append({r: native[j] for j, r in rows})
        with self._lock if exclusive else contextlib.nullcontext():
            new = self.refiner.refine_many(films, maps)
        with torch.inference_mode():
            for native, got in zip(natives, new, strict=True):
                for j, r in rows:
                    if r in got:
                        native[j] = got[r].to(native.device)

    def _prepared(self, model, precision: str, channels_last: bool, *, copy: bool = True):
        """``model`` (or a copy) in the weights' type and memory layout of a precision."""
        import copy as _copy

        import torch

        m = _copy.deepcopy(model) if copy else model
        if precision in ("bf16", "fp16"):
            m = m.to(torch.bfloat16 if precision == "bf16" else torch.float16)
        if channels_last:
            m = m.to(memory_format=torch.channels_last)
        return m

    def _runner(self, model, precision: str, channels_last: bool):
        """A function running one batch-1 forward pass of ``model`` prepared for
        ``precision``/``channels_last`` on a fixed input (for :mod:`cxrseg.autotune`)."""
        import torch

        from .device import autocast

        if precision == "fp16" and self.device.type == "cpu":
            raise ValueError("fp16 is not run on a CPU")
        m = self._prepared(model, precision, channels_last)
        s = self.input_size
        x = torch.rand(1, self.config.in_channels, s, s, generator=torch.Generator().manual_seed(0)) * 4 - 2
        x = x.to(self.device)
        if precision != "fp32":
            x = x.to(torch.bfloat16 if precision == "bf16" else torch.float16)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)

        def run():
            with torch.inference_mode(), autocast(self.device, precision):
                return m(x)

        return run

    def __repr__(self) -> str:
        return (
            f"Predictor({str(self.path)!r}, regions={self.regions}, device={self.device}, "
            f"precision={self.precision!r}, model_id={self.model_id!r}, "
            f"refine={self.refine_id!r})"
        )

    # ----------------------------------------------------------------- building blocks
    def select(self, regions=None) -> tuple[str, ...]:
        """The requested regions (names or groups), checked against the model's."""
        if regions is None:
            return self.regions
        wanted = parse_regions(regions)
        missing = [r for r in wanted if r not in self.regions]
        if missing:
            raise ValueError(
                f"model {self.path.name} does not predict {', '.join(missing)}; "
                f"it predicts {', '.join(self.regions)}"
            )
        return wanted

    def preprocess(self, image) -> tuple[np.ndarray, Any]:
        """One 2-D image -> the model's ``(S, S)`` float32 input and its
        :class:`cxrseg.transforms.PadInfo` (padding to a square, area resize)."""
        from .transforms import image_to_input

        return image_to_input(as_unit_image(image), self.input_size)

    def forward(self, inputs, *, regions=None, exclusive: bool = True):
        """Probabilities at the model's resolution for pre-processed inputs.

        Parameters
        ----------
        inputs : ndarray or torch.Tensor, shape (B, S, S) or (B, 1, S, S)
            [0, 1] images from :meth:`preprocess`.
        regions : optional
            Output channels to keep.
        exclusive : bool
            Run one pass at a time (calls from other threads wait), the default: each pass
            already uses all of the device. ``False`` lets passes of several threads run
            at once, for callers that split the CPU's cores between them (see
            :attr:`concurrent`).

        Returns
        -------
        torch.Tensor, shape (B, R, S, S), float32, on :attr:`device`
        """
        import torch

        from .device import autocast
        from .transforms import normalize

        idx = [self.regions.index(r) for r in self.select(regions)]
        x = torch.as_tensor(np.asarray(inputs) if not isinstance(inputs, torch.Tensor) else inputs)
        if x.dim() == 3:
            x = x.unsqueeze(1)
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(
                f"expected inputs of shape (B, S, S) or (B, 1, S, S), got {tuple(x.shape)}"
            )
        if self.device.type == "cuda" and not x.is_cuda:
            x = self._to_device_pinned(x)
        else:
            x = x.to(self.device, dtype=torch.float32)
        x = normalize(x, self.config.mean, self.config.std)
        if self.precision in ("bf16", "fp16"):
            x = x.to(torch.bfloat16 if self.precision == "bf16" else torch.float16)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if not exclusive and not self.concurrent:
            exclusive = True
        with self._lock if exclusive else contextlib.nullcontext(), torch.inference_mode(), autocast(
            self.device, self.precision
        ):
            logits = self.model(x)
        with torch.inference_mode():
            if len(idx) != logits.shape[1]:
                logits = logits[:, idx]
            return torch.sigmoid(logits.float()).contiguous()

    def _to_device_pinned(self, x):
        """Copy a host batch to the GPU through a page-locked buffer reused per shape
        (asynchronous copy; the buffer is not refilled before its last copy finished)."""
        import torch

        x = x.to(torch.float32)
        key = tuple(x.shape)
        with self._lock:
            buf, event = self._pinned.get(key, (None, None))
            if buf is None:
                if len(self._pinned) > 4:
                    self._pinned.clear()
                buf = torch.empty(key, dtype=torch.float32).pin_memory()
            elif event is not None:
                event.synchronize()
            buf.copy_(x)
            out = buf.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self._pinned[key] = (buf, event)
        return out

    def to_native(self, prob, info):
        """One image's ``(R, S, S)`` probabilities (a tensor from :meth:`forward`) resized
        back to its own shape: ``(R, rows, cols)`` float32 tensor on :attr:`device`
        (bilinear, :func:`cxrseg.transforms.output_to_image`)."""
        import torch

        from .transforms import output_to_image

        with torch.inference_mode():
            return output_to_image(prob, info)

    # ----------------------------------------------------------------- public API
    def predict(self, image, *, regions=None, dtype=np.float32) -> dict[str, np.ndarray]:
        """Probability maps of one radiograph.

        Parameters
        ----------
        image : ndarray, shape (rows, cols)
            Grayscale, values in [0, 1] (``uint8``/``uint16`` are scaled, other ranges
            min-max scaled), any size.
        regions : str or iterable of str, optional
            Regions or groups to return (default: all the model predicts).
        dtype : numpy dtype, optional
            ``float32`` (default) or ``float16``.

        Returns
        -------
        dict of str to ndarray
            Region -> probability map in [0, 1], shape ``(rows, cols)``.
        """
        return self.predict_batch([image], regions=regions, dtype=dtype)[0]

    def predict_batch(
        self, images: Sequence[np.ndarray], *, regions=None, dtype=np.float32, batch_size: int = 8
    ) -> list[dict[str, np.ndarray]]:
        """Probability maps of several radiographs (any sizes), ``batch_size`` per forward
        pass. Returns one dict per image, as :meth:`predict`."""
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float16):
            raise ValueError(f"dtype must be float32 or float16, got {dtype}")
        names = self.select(regions)
        out: list[dict[str, np.ndarray]] = []
        images = list(images)
        bs = max(1, int(batch_size))
        for start in range(0, len(images), bs):
            chunk = images[start : start + bs]
            pre = [self.preprocess(im) for im in chunk]
            prob = self.forward(np.stack([p[0] for p in pre]), regions=names)
            natives = [self.to_native(prob[i], info) for i, (_, info) in enumerate(pre)]
            self.refine_natives(chunk, natives, names)
            for native in natives:
                if dtype == np.float16:
                    native = native.half()
                arr = native.cpu().numpy()
                out.append({r: arr[j] for j, r in enumerate(names)})
        return out

    def predict_logits_input(self, inputs, *, regions=None) -> np.ndarray:
        """Probabilities ``(B, R, S, S)`` float32 (numpy) for pre-processed ``(B, S, S)``
        inputs, at the model's resolution (no resize back)."""
        return self.forward(inputs, regions=regions).cpu().numpy()


class LazyPredictor:
    """A :class:`Predictor` that loads its model only when something needs it.

    The checkpoint's header (regions, thresholds, input size, model id) is read at once;
    the network is loaded and autotuned on the first access to anything else (a forward
    pass, ``precision``, ``device``...). ``cxrseg predict`` uses it so that a rerun with
    every case done, or a region the model does not predict, never loads the model.

    Parameters
    ----------
    checkpoint : path-like, optional
        As for :class:`Predictor`.
    on_load : callable, optional
        Called with the loaded predictor (e.g. to print its device).
    **kwargs
        Passed to :class:`Predictor` (``device``, ``precision``, ...).
    """

    _HEADER = ("path", "config", "metadata", "model_id", "regions", "thresholds", "input_size")

    def __init__(self, checkpoint=None, *, on_load=None, **kwargs):
        from .model import CheckpointError, read_metadata

        self.path = resolve_checkpoint_path(checkpoint)
        self.metadata = dict(read_metadata(self.path))
        try:
            self.config = ModelConfig.from_dict(self.metadata["config"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {self.path}: invalid config ({exc})") from None
        self.model_id = str(self.metadata.get("model_id", "unknown"))
        self.regions = tuple(self.config.regions)
        self.thresholds = dict(self.config.thresholds)
        self.input_size = int(self.config.input_size)
        self._kwargs = kwargs
        self._on_load = on_load
        self._real: Predictor | None = None
        self._lock = threading.Lock()
        from .refine import refine_id_for

        #: the refinement network's model id (from its header), or None
        self.refine_id = refine_id_for(self.path, kwargs.get("refine"))

    @property
    def loaded(self) -> bool:
        """Whether the network has been loaded."""
        return self._real is not None

    def load(self) -> Predictor:
        """The real :class:`Predictor` (loaded on the first call)."""
        with self._lock:
            if self._real is None:
                self._real = Predictor(self.path, **self._kwargs)
                if self._on_load is not None:
                    self._on_load(self._real)
            return self._real

    select = Predictor.select  # needs only the header

    def __getattr__(self, name):
        if name.startswith("__") or name in ("_real", "_kwargs", "_lock", "_on_load"):
            raise AttributeError(name)
        return getattr(self.load(), name)


# --------------------------------------------------------------------------- cache

_CACHE: collections.OrderedDict = collections.OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 4


def get_predictor(checkpoint=None, *, device="auto", precision="auto", refine: bool | None = None) -> Predictor:
    """A :class:`Predictor`, cached: the same checkpoint file (resolved path and
    modification time), device and precision give the same object. Thread-safe.

    ``precision="auto"`` is the measured choice of :mod:`cxrseg.autotune` (measured on
    the first use of a model on a device, then read from the user cache). A checkpoint
    rewritten on disk (a new modification time) is loaded afresh. The cache keeps the
    four most recently used predictors. ``refine`` is :class:`Predictor`'s.
    """
    from .device import select_device

    path = resolve_checkpoint_path(checkpoint)
    st = path.stat()
    dev = select_device(device)
    prec = str(precision).lower()
    if prec not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if prec == "fp16" and dev.type == "cpu":
        prec = "fp32"
    from .refine import refine_enabled, refiner_path

    refine = refine_enabled(refine)
    rp = refiner_path(path)
    rst = rp.stat() if rp.is_file() and refine is not False else None
    key = (str(path), st.st_mtime_ns, st.st_size, str(dev), prec, refine,
           None if rst is None else (rst.st_mtime_ns, rst.st_size))
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
            return hit
        pred = Predictor(path, device=str(dev), precision=prec, refine=refine)
        _CACHE[key] = pred
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
        return pred


def clear_cache() -> None:
    """Forget every cached :class:`Predictor` (frees their models)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def predict(
    image, *, checkpoint=None, regions=None, device="auto", precision="auto"
) -> dict[str, np.ndarray]:
    """Probability maps of one radiograph with a cached predictor (see
    :meth:`Predictor.predict` and :func:`get_predictor`)."""
    return get_predictor(checkpoint, device=device, precision=precision).predict(
        image, regions=regions
    )


# --------------------------------------------------------------------------- thresholds


def threshold(
    probs: dict[str, np.ndarray], thresholds: float | dict[str, float] = 0.5
) -> dict[str, np.ndarray]:
    """Binary masks from probability maps: ``prob >= threshold``.

    Parameters
    ----------
    probs : dict of str to ndarray
        Region -> probability map.
    thresholds : float or dict, optional
        One threshold for all regions, or region -> threshold (any spelling of the region
        names; regions not in it use 0.5).

    Returns
    -------
    dict of str to ndarray of bool
    """
    if isinstance(thresholds, dict):
        th = {canonical_region(k): float(v) for k, v in thresholds.items()}
    else:
        th = None
        t_all = float(thresholds)
    out = {}
    for r, p in probs.items():
        if th is None:
            t = t_all
        else:
            try:
                t = th.get(canonical_region(r), 0.5)
            except ValueError:
                t = th.get(r, 0.5)
        out[r] = np.asarray(p) >= t
    return out


def parse_thresholds(
    spec: str | float | dict | None,
    regions: Sequence[str],
    *,
    default: dict[str, float] | None = None,
) -> dict[str, float]:
    """Per-region thresholds from ``0.4``, ``"heart=0.4,left_clavicle=0.5"`` or a mix
    (``"0.45,heart=0.4"``: 0.45 for all but the heart).

    Regions not named keep ``default`` (the model's calibrated thresholds) or 0.5;
    names of regions not in ``regions`` are ignored.

    Raises
    ------
    ValueError
        A value outside (0, 1), or an unknown region name.
    """
    base = {r: float((default or {}).get(r, 0.5)) for r in regions}
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return base
    if isinstance(spec, dict):
        items = [(k, v) for k, v in spec.items()]
    elif isinstance(spec, (int, float)):
        items = [(None, spec)]
    else:
        items = []
        for tok in str(spec).replace(";", ",").split(","):
            tok = tok.strip()
            if not tok:
                continue
            if "=" in tok:
                k, v = tok.split("=", 1)
                items.append((k.strip(), v.strip()))
            else:
                items.append((None, tok))
    out = dict(base)
    named: dict[str, float] = {}
    for k, v in items:
        try:
            val = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"threshold {v!r}: expected a number in (0, 1)") from None
        if not 0.0 < val < 1.0:
            raise ValueError(f"threshold {val}: expected a number in (0, 1)")
        if k is None:
            out = {r: val for r in regions}
        else:
            named[canonical_region(k)] = val
    for r, val in named.items():
        if r in out:
            out[r] = val
    return out
