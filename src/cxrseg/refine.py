"""Native-resolution refinement of the clavicles: a second stage after the whole-film model.

The clavicle is a thin structure drawn on the masks' 1024 x 1024 grid (0.35 mm pixels),
and the whole-film model sees the film at 512 px or less. The refinement network
segments a window around each clavicle at the grid's resolution:

1. the first stage's probability map of the region locates it: the box of its largest
   component above 0.5, grown by a margin;
2. a fixed-size crop (:data:`CROP`, rows x cols on the grid) is cut around that box from
   the film and from the first stage's map (a larger clavicle gets a proportionally larger
   window, resized to the crop);
3. the network takes four channels (the film, normalised like the first stage's three, and
   the first stage's probability) and returns the region's logits in the crop;
4. inside the window the refined probabilities replace the first stage's; outside it
   the first stage's stay.

One network serves both sides: a right clavicle's crop is mirrored left-right before the
network and its output mirrored back, so it keeps its side. This mirrors a *crop around
one bone*, never the whole film. The same mirroring doubles the training data.

The network is a cxrseg checkpoint (``ModelConfig`` with ``in_channels=4`` and one
region) stored beside the whole-film checkpoint as ``<name>.refine.safetensors``, with
its settings in the metadata's ``refine`` entry. :class:`cxrseg.predict.Predictor` uses it
when it is there (``refine=False`` turns it off). It is trained with
:func:`train_refiner_iter` (``cxrseg refine-train``), warm-started from the whole-film
model's weights.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "RefineSpec",
    "Window",
    "Refiner",
    "refiner_path",
    "find_refiner",
    "locate",
    "RefineTrainConfig",
    "train_refiner_iter",
    "REFINED_REGIONS",
]

#: The side of the grid the refinement works on (the SCR masks' grid): a film is seen as
#: if its padded square were resized to this side.
GRID = 1024
#: The crop the network sees, rows x cols on the grid (both multiples of 32).
CROP = (192, 320)
#: Grid pixels added around the first stage's box on every side.
MARGIN = 32
#: The regions refined, and the one whose orientation the network sees.
REFINED_REGIONS = ("left_clavicle", "right_clavicle")
CANONICAL = "left_clavicle"
SUFFIX = ".refine.safetensors"


@dataclass(frozen=True)
class RefineSpec:
    """How a refinement network is applied (saved in its checkpoint's metadata)."""

    regions: tuple[str, ...] = REFINED_REGIONS
    canonical: str = CANONICAL
    crop: tuple[int, int] = CROP
    grid: int = GRID
    margin: int = MARGIN
    level: float = 0.5
    first_stage: str | None = None  # model id of the whole-film model it was trained with

    @classmethod
    def from_meta(cls, meta: dict) -> RefineSpec:
        data = dict(meta)
        names = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"refine settings: unknown keys {unknown}")
        for k in ("regions", "crop"):
            if k in data:
                data[k] = tuple(data[k])
        spec = cls(**data)
        if len(spec.crop) != 2 or any(int(c) % 32 or int(c) <= 0 for c in spec.crop):
            raise ValueError(f"refine settings: crop must be two positive multiples of 32, got {spec.crop}")
        return spec

    def to_meta(self) -> dict:
        d = asdict(self)
        d["regions"], d["crop"] = list(self.regions), list(self.crop)
        return d

    def mirrored(self, region: str) -> bool:
        """Whether ``region``'s crop is mirrored to look like :attr:`canonical`'s."""
        return region != self.canonical


@dataclass(frozen=True)
class Window:
    """A window on a film, in the film's own pixels: rows ``top:bottom``, cols ``left:right``
    (may reach outside the film; the outside reads as zeros)."""

    top: int
    left: int
    bottom: int
    right: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.bottom - self.top, self.right - self.left


def grid_scale(shape: Sequence[int], grid: int = GRID) -> float:
    """Grid pixels per film pixel: the film's padded square resized to ``grid``."""
    return grid / float(max(int(shape[0]), int(shape[1])))


def _largest_component(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    lab, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(np.argmax(sizes))


def locate(prob: np.ndarray, spec: RefineSpec = RefineSpec()) -> Window | None:
    """The window to refine for one region's first-stage probability map ``(rows, cols)``
    in film pixels, or ``None`` when the first stage found nothing above ``spec.level``."""
    prob = np.asarray(prob)
    mask = prob >= spec.level
    ys = np.flatnonzero(mask.any(axis=1))
    if not len(ys):
        return None
    xs = np.flatnonzero(mask.any(axis=0))
    y0, x0 = ys[0], xs[0]  # the components are labelled inside the box of all of them
    mask = _largest_component(mask[y0 : ys[-1] + 1, x0 : xs[-1] + 1])
    ys = y0 + np.flatnonzero(mask.any(axis=1))
    xs = x0 + np.flatnonzero(mask.any(axis=0))
    y0, y1, x0, x1 = ys[0], ys[-1] + 1, xs[0], xs[-1] + 1
    s = grid_scale(prob.shape, spec.grid)
    ch, cw = spec.crop
    need_h = (y1 - y0) * s + 2 * spec.margin
    need_w = (x1 - x0) * s + 2 * spec.margin
    z = max(1.0, need_h / ch, need_w / cw)
    h = max(1, int(round(ch * z / s)))
    w = max(1, int(round(cw * z / s)))
    cy, cx = (y0 + y1) / 2.0, (x0 + x1) / 2.0
    top = int(round(cy - h / 2.0))
    left = int(round(cx - w / 2.0))
    return Window(top, left, top + h, left + w)


def cut(array, win: Window):
    """``array[..., win]`` as a new tensor (zeros outside the array)."""
    import torch

    rows, cols = array.shape[-2:]
    h, w = win.shape
    out = torch.zeros((*array.shape[:-2], h, w), dtype=array.dtype, device=array.device)
    t0, l0 = max(win.top, 0), max(win.left, 0)
    b0, r0 = min(win.bottom, rows), min(win.right, cols)
    if b0 > t0 and r0 > l0:
        out[..., t0 - win.top : b0 - win.top, l0 - win.left : r0 - win.left] = array[..., t0:b0, l0:r0]
    return out


def paste(array, values, win: Window) -> None:
    """Write ``values`` (shaped like the window) into ``array[..., win]``, clipped, in place."""
    rows, cols = array.shape[-2:]
    t0, l0 = max(win.top, 0), max(win.left, 0)
    b0, r0 = min(win.bottom, rows), min(win.right, cols)
    if b0 > t0 and r0 > l0:
        array[..., t0:b0, l0:r0] = values[..., t0 - win.top : b0 - win.top, l0 - win.left : r0 - win.left]


def _resize(x, size: tuple[int, int]):
    """Resize a ``(B, C, H, W)`` tensor (area/antialiased bilinear down, bilinear up)."""
    import torch.nn.functional as F

    if tuple(x.shape[-2:]) == tuple(size):
        return x
    down = x.shape[-2] > size[0] or x.shape[-1] > size[1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=down)


def network_input(image_crop, prior_crop, mean, std):
    """``(B, 1, h, w)`` film and first-stage crops in [0, 1] -> the network's
    ``(B, len(mean) + 1, h, w)`` input (the film normalised like the first stage, the
    probability mapped to [-1, 1])."""
    import torch

    from .transforms import normalize

    return torch.cat([normalize(image_crop, mean, std), prior_crop * 2.0 - 1.0], dim=1)


def refiner_path(checkpoint) -> Path:
    """Where the refinement network of a whole-film checkpoint lives (it may not exist)."""
    from .model import resolve_checkpoint_path

    p = resolve_checkpoint_path(checkpoint)
    name = p.name[: -len(".safetensors")] if p.name.endswith(".safetensors") else p.stem
    return p.with_name(name + SUFFIX)


def find_refiner(checkpoint) -> Path | None:
    """The refinement network beside ``checkpoint``, or ``None``."""
    p = refiner_path(checkpoint)
    return p if p.is_file() else None


def refine_enabled(refine: bool | None = None) -> bool | None:
    """``refine`` after the environment: ``CXRSEG_REFINE=0`` turns the default off."""
    if refine is None and os.environ.get("CXRSEG_REFINE", "").strip().lower() in ("0", "no", "off", "false"):
        return False
    return refine


def refine_id_for(checkpoint, refine: bool | None = None) -> str | None:
    """The model id of the refinement network a :class:`cxrseg.predict.Predictor` of
    ``checkpoint`` would use (read from the file's header), or ``None``."""
    from .model import read_metadata

    if refine_enabled(refine) is False:
        return None
    path = find_refiner(checkpoint)
    if path is None:
        return None
    return str(read_metadata(path).get("model_id", "unknown"))


class Refiner:
    """A loaded refinement network.

    Parameters
    ----------
    path : str or Path
        The ``.refine.safetensors`` checkpoint.
    device : torch.device
    precision : str
        ``fp32``, ``bf16``, ``fp16`` or ``int8`` (the whole-film model's; ``int8`` needs the
        calibration file beside ``path``, see :mod:`cxrseg.quantize`).
    channels_last : bool
    """

    def __init__(self, path, *, device, precision: str = "fp32", channels_last: bool = True):
        import torch

        from .model import CheckpointError, load_inference_model

        self.path = Path(path)
        model, config, meta, _, _ = load_inference_model(self.path)
        if "refine" not in meta:
            raise CheckpointError(
                f"checkpoint {self.path}: not a refinement network (no 'refine' settings in its metadata)"
            )
        try:
            self.spec = RefineSpec.from_meta(meta["refine"])
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {self.path}: {exc}") from None
        if config.extra_channels != 1 or len(config.regions) != 1:
            raise CheckpointError(
                f"checkpoint {self.path}: a refinement network has {len(config.mean) + 1} input "
                f"channels and one output, got {config.in_channels} and {len(config.regions)}"
            )
        self.config = config
        self.metadata = dict(meta)
        self.model_id = str(meta.get("model_id", "unknown"))
        self.device = torch.device(device)
        self.precision = "fp32" if precision == "fp16" and self.device.type == "cpu" else precision
        self.channels_last = bool(channels_last)
        for p in model.parameters():
            p.requires_grad_(False)
        #: the int8 calibration file's metadata (precision ``int8``)
        self.int8 = None
        if self.precision == "int8":
            from .quantize import Int8Error, int8_path, load_quantized

            try:
                self.model, self.int8 = load_quantized(model, config, int8_path(self.path), self.model_id)
            except Int8Error as exc:
                raise CheckpointError(str(exc)) from None
            return
        model = model.eval().to(self.device)
        if self.precision in ("bf16", "fp16"):
            model = model.to(torch.bfloat16 if self.precision == "bf16" else torch.float16)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model

    def __repr__(self) -> str:
        return f"Refiner({str(self.path)!r}, regions={self.spec.regions}, model_id={self.model_id!r})"

    def logits(self, x):
        """The network's ``(B, 1, h, w)`` float32 logits for a prepared input."""
        import torch

        from .device import autocast

        if self.precision in ("bf16", "fp16"):
            x = x.to(torch.bfloat16 if self.precision == "bf16" else torch.float16)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), autocast(self.device, self.precision):
            return self.model(x).float()

    #: crops per forward pass of the network
    BATCH = 16

    def refine(self, image, probs: dict) -> dict:
        """Refine the regions of one film.

        Parameters
        ----------
        image : ndarray or torch.Tensor, shape (rows, cols)
            The film, [0, 1].
        probs : dict of str to torch.Tensor
            First-stage probability maps ``(rows, cols)`` (float32) of the film; only the
            regions in :attr:`spec` are read.

        Returns
        -------
        dict of str to torch.Tensor
            The refined maps of the regions that were refined (a region the first stage
            did not find is left out, and its map stays the first stage's).
        """
        return self.refine_many([image], [probs])[0]

    def refine_many(self, images: Sequence, probs: Sequence[dict]) -> list[dict]:
        """:meth:`refine` for several films, their crops batched through the network
        (:attr:`BATCH` per pass). Returns one dict per film."""
        import torch

        crops, where = [], []
        for k, (image, maps) in enumerate(zip(images, probs, strict=True)):
            todo = [r for r in self.spec.regions if r in maps]
            if not todo:
                continue
            img = torch.as_tensor(image).to(self.device, torch.float32)
            for r in todo:
                prior = maps[r]
                win = locate(prior.detach().float().cpu().numpy(), self.spec)
                if win is None:
                    continue
                pair = torch.stack([cut(img, win), cut(prior.to(self.device, torch.float32), win)])[None]
                pair = _resize(pair, self.spec.crop)
                if self.spec.mirrored(r):
                    pair = pair.flip(-1)
                crops.append(pair[0])
                where.append((k, r, win))
        out: list[dict] = [{} for _ in images]
        if not crops:
            return out
        with torch.inference_mode():
            batch = torch.stack(crops)
            x = network_input(batch[:, :1], batch[:, 1:], self.config.mean, self.config.std)
            logits = torch.cat([self.logits(x[i : i + self.BATCH]) for i in range(0, len(x), self.BATCH)])
            for j, (k, r, win) in enumerate(where):
                lg = logits[j : j + 1]
                if self.spec.mirrored(r):
                    lg = lg.flip(-1)
                lg = _resize(lg, win.shape)[0, 0]
                new = probs[k][r].to(self.device, torch.float32).clone()
                paste(new, torch.sigmoid(lg), win)
                out[k][r] = new
        return out


# =========================================================================== training


@dataclass
class RefineTrainConfig:
    """Settings of :func:`train_refiner_iter` (saved with the network)."""

    epochs: int = 30
    batch_size: int = 8
    lr: float = 3e-4
    weight_decay: float = 1e-4
    bce_weight: float = 1.0
    jaccard_weight: float = 1.0
    #: context cut around each window, as a multiple of the window (room for jitter)
    context: float = 1.5
    shift: float = 0.08  # of the crop's size, each way
    zoom: tuple[float, float] = (0.85, 1.2)
    rotate: float = 8.0  # degrees, each way
    prior_blur: float = 4.0  # grid pixels (sigma up to)
    prior_shift: float = 6.0  # grid pixels, each way
    prior_drop: float = 0.1  # probability of an empty first-stage channel
    #: with out-of-fold maps (``prior_folds``): the probability that a training crop gets
    #: the out-of-fold map instead of the first stage's own (in-sample) one
    oof_prior_p: float = 0.5
    selection_fraction: float = 0.125
    seed: int = 0
    precision: str = "auto"  # training autocast: auto = bf16 on CPUs that have it
    mirror: bool = True  # both clavicles train the one network (mirrored crops)
    warm_start: bool = True  # start from the first stage's weights

    @classmethod
    def from_dict(cls, data: dict) -> RefineTrainConfig:
        d = dict(data)
        if "zoom" in d:
            d["zoom"] = tuple(d["zoom"])
        return cls(**d)


@dataclass
class _Sample:
    case: str
    region: str
    image: np.ndarray  # (Hc, Wc) float16, context at crop scale
    prior: np.ndarray  # (Hc, Wc) float16
    target: np.ndarray  # (Hc, Wc) float16
    prior_oof: np.ndarray | None = None  # (Hc, Wc) float16: an out-of-fold model's map


@dataclass
class RefineEvent:
    """One progress report of :func:`train_refiner_iter`."""

    kind: str  # "prepare", "step", "epoch", "done"
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    steps: int = 0
    loss: float | None = None
    scores: dict = field(default_factory=dict)  # region -> selection Jaccard
    baseline: dict = field(default_factory=dict)  # region -> first stage's Jaccard
    best_epoch: int | None = None
    path: Path | None = None
    message: str = ""


def _context_sample(case, region, image, prior, target, spec: RefineSpec, context: float,
                    prior_oof=None) -> _Sample | None:
    """One training sample: the window the first stage gives, grown by ``context``,
    resized so the window is the crop, mirrored to the canonical side (``prior_oof``, an
    out-of-fold model's map, is cut the same way)."""
    import torch

    win = locate(prior, spec)
    if win is None:  # the first stage missed it: centre on the reference instead
        win = locate(target.astype(np.float32), spec)
        if win is None:
            return None
    h, w = win.shape
    ch, cw = spec.crop
    H, W = int(round(ch * context)), int(round(cw * context))
    gh, gw = int(round(h * context)), int(round(w * context))
    cy, cx = (win.top + win.bottom) / 2.0, (win.left + win.right) / 2.0
    big = Window(int(round(cy - gh / 2)), int(round(cx - gw / 2)), 0, 0)
    big = Window(big.top, big.left, big.top + gh, big.left + gw)
    layers = [image, prior, target] + ([prior_oof] if prior_oof is not None else [])
    stack = torch.from_numpy(np.stack(layers).astype(np.float32))
    arr = _resize(cut(stack, big)[None], (H, W))[0]
    if spec.mirrored(region):
        arr = arr.flip(-1)
    a = arr.numpy().astype(np.float16)
    return _Sample(case, region, a[0], a[1], a[2], a[3] if prior_oof is not None else None)


def read_prior_folds(folder) -> dict[str, Path]:
    """Case -> the checkpoint of the fold model that did *not* train on it, from a folder
    of k-fold models (``folds.json`` with ``{"folds": [[case, ...], ...]}`` and
    ``fold<k>/best.safetensors``, as ``benchmarks/quality_folds.py`` writes)."""
    folder = Path(folder)
    f = folder / "folds.json"
    try:
        folds = json.loads(f.read_text())["folds"]
    except FileNotFoundError:
        raise FileNotFoundError(f"{f}: not found (expected folds.json and fold<k>/best.safetensors)") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{f}: expected {{\"folds\": [[case, ...], ...]}} ({exc})") from None
    out: dict[str, Path] = {}
    for k, members in enumerate(folds):
        ck = folder / f"fold{k}" / "best.safetensors"
        if not ck.is_file():
            raise FileNotFoundError(f"{ck}: not found (the model of fold {k} in {f})")
        for c in members:
            out[str(c)] = ck
    return out


def _augment(batch, cfg: RefineTrainConfig, spec: RefineSpec, gen):
    """A training batch ``(B, 3, h, w)`` (film, prior, target) from context patches
    ``(B, 3, H, W)``: random shift/zoom/rotation (one affine for all three channels), a
    degraded first-stage channel (blur, shift, gamma, dropout) and photometric changes."""
    import torch
    import torch.nn.functional as F

    B, _, H, W = batch.shape
    ch, cw = spec.crop

    def u(lo, hi, n=B):
        return lo + (hi - lo) * torch.rand(n, generator=gen)

    ang = torch.deg2rad(u(-cfg.rotate, cfg.rotate))
    zoom = u(*cfg.zoom)
    dy = u(-cfg.shift, cfg.shift) * ch
    dx = u(-cfg.shift, cfg.shift) * cw
    # output pixel centres (crop), relative to its centre, in context pixels
    yy = (torch.arange(ch, dtype=torch.float32) - (ch - 1) / 2.0)
    xx = (torch.arange(cw, dtype=torch.float32) - (cw - 1) / 2.0)
    gy, gx = torch.meshgrid(yy, xx, indexing="ij")

    def grid_for(oy, ox):
        c, s = torch.cos(ang).view(B, 1, 1), torch.sin(ang).view(B, 1, 1)
        z = zoom.view(B, 1, 1)
        py = z * (c * gy + s * gx) + (H - 1) / 2.0 + oy.view(B, 1, 1)
        px = z * (-s * gy + c * gx) + (W - 1) / 2.0 + ox.view(B, 1, 1)
        return torch.stack([px / (W - 1) * 2 - 1, py / (H - 1) * 2 - 1], dim=-1)

    g = grid_for(dy, dx)
    out = F.grid_sample(batch, g, mode="bilinear", padding_mode="zeros", align_corners=True)
    # the first stage's channel: sampled with its own small offset, blurred, re-shaped
    psh = cfg.prior_shift
    gp = grid_for(dy + u(-psh, psh), dx + u(-psh, psh))
    prior = F.grid_sample(batch[:, 1:2], gp, mode="bilinear", padding_mode="zeros", align_corners=True)
    sig = u(0.0, cfg.prior_blur)
    blurred = []
    for k in range(B):
        s = float(sig[k])
        p = prior[k : k + 1]
        if s > 0.5:
            r = int(math.ceil(2.5 * s))
            t = torch.arange(-r, r + 1, dtype=torch.float32)
            kern = torch.exp(-(t**2) / (2 * s * s))
            kern = kern / kern.sum()
            p = F.conv2d(F.pad(p, (r, r, 0, 0), mode="replicate"), kern.view(1, 1, 1, -1))
            p = F.conv2d(F.pad(p, (0, 0, r, r), mode="replicate"), kern.view(1, 1, -1, 1))
        blurred.append(p)
    prior = torch.cat(blurred).clamp(0, 1)
    gamma = torch.exp(u(-0.7, 0.7)).view(B, 1, 1, 1)
    prior = prior.clamp_min(1e-6) ** gamma
    drop = (torch.rand(B, generator=gen) < cfg.prior_drop).view(B, 1, 1, 1)
    prior = torch.where(drop, torch.zeros_like(prior), prior)
    # the film: gamma, contrast, brightness, noise
    img = out[:, :1].clamp(0, 1)
    img = img ** torch.exp(u(-0.3, 0.3)).view(B, 1, 1, 1)
    mean = img.mean(dim=(2, 3), keepdim=True)
    img = (img - mean) * u(0.8, 1.25).view(B, 1, 1, 1) + mean + u(-0.08, 0.08).view(B, 1, 1, 1)
    img = img + torch.randn(img.shape, generator=gen) * u(0.0, 0.02).view(B, 1, 1, 1)
    return img.clamp(0, 1), prior, (out[:, 2:3] >= 0.5).float()


def _warm_state(first_stage_state: dict, config, canonical_index: int) -> dict:
    """The whole-film model's weights reshaped for the refinement network: the extra
    input channel's first-layer weights start at zero, the head keeps one region's row."""
    import torch

    state = {}
    for k, v in first_stage_state.items():
        v = v.float()
        if k == "encoder.conv1.weight":
            extra = torch.zeros(v.shape[0], config.in_channels - v.shape[1], *v.shape[2:])
            v = torch.cat([v, extra], dim=1)
        elif k.startswith("segmentation_head.0."):
            v = v[canonical_index : canonical_index + 1]
        state[k] = v
    return state


def train_refiner_iter(
    data_root,
    out_dir,
    *,
    first_stage=None,
    cases: Sequence[str] | None = None,
    selection_cases: Sequence[str] | None = None,
    config: RefineTrainConfig | None = None,
    resume: bool = False,
    device: str = "auto",
    prior_folds=None,
) -> Iterator[RefineEvent]:
    """Train a refinement network for ``first_stage`` (default: the shipped model);
    yield :class:`RefineEvent` s.

    The samples are the clavicles of ``cases`` (default: the first stage's training
    cases found in ``data_root``) with the first stage's own probability maps as the
    prior channel. A part of them (``selection_cases``, default a seeded
    ``selection_fraction``) is kept aside: after each epoch the whole pipeline is scored
    there (Jaccard at the masks' resolution, refined vs the first stage alone) and the
    best epoch is written to ``out_dir/refine.safetensors``. ``out_dir/last.state``
    is written every epoch; ``resume=True`` continues from it.

    The first stage trained on these cases, so its maps of them are better than on new
    films. ``prior_folds`` (a folder of k-fold models, :func:`read_prior_folds`) gives each
    case a map from a model that did not train on it: training crops then get that map
    with probability ``config.oof_prior_p``, and the selection cases are scored with it
    (the first stage's baseline there too), so the epoch is not chosen on in-sample maps.
    """
    import torch

    from .config import ModelConfig
    from .dataset import DatasetIndex
    from .device import autocast, select_device, tune_allocator
    from .losses import BCEJaccardLoss
    from .metrics import jaccard as _jaccard
    from .model import (
        build_model,
        load_checkpoint,
        load_training_state,
        read_metadata,
        save_checkpoint,
        save_training_state,
    )
    from .predict import Predictor, as_unit_image
    from .train import seed_everything

    cfg = config or RefineTrainConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tune_allocator()
    dev = select_device(device)
    first = Predictor(first_stage, device=str(dev), precision="fp32", refine=False)
    spec = RefineSpec(first_stage=first.model_id)
    index = DatasetIndex(data_root)
    meta = read_metadata(first.path)
    if cases is None:
        cases = [c for c in meta.get("train_cases") or [] if c in index]
        if not cases:
            raise ValueError(
                f"{first.path.name} names no training cases found in {data_root}; pass the cases to train on"
            )
    cases = [str(c) for c in cases]
    missing = [c for c in cases if c not in index]
    if missing:
        raise ValueError(f"{data_root}: no case {', '.join(missing[:5])}")
    if selection_cases is None:
        rng = np.random.default_rng(cfg.seed)
        order = list(rng.permutation(len(cases)))
        n_sel = max(1, int(round(len(cases) * cfg.selection_fraction)))
        selection_cases = [cases[i] for i in sorted(order[:n_sel])]
    selection_cases = [str(c) for c in selection_cases]
    train_cases = [c for c in cases if c not in set(selection_cases)]
    val_overlap = sorted(set(cases) & set(meta.get("val_cases") or []))
    if val_overlap:
        raise ValueError(
            f"{', '.join(val_overlap[:5])}: validation cases of {first.path.name}; "
            "the refinement must not train or choose settings on them"
        )

    oof_of: dict[str, Path] = {}
    if prior_folds is not None:
        oof_of = read_prior_folds(prior_folds)
        lacking = [c for c in cases if c not in oof_of]
        if lacking:
            raise ValueError(f"{prior_folds}: no fold holds {', '.join(lacking[:5])}")
    oof_preds: dict[Path, Any] = {}

    def oof_maps(cid, img):
        ck = oof_of.get(cid)
        if ck is None:
            return None
        if ck not in oof_preds:
            oof_preds[ck] = Predictor(ck, device=str(dev), precision="fp32", refine=False)
        return oof_preds[ck].predict(img, regions=spec.regions)

    # ---- samples: the first stage's maps of every case, cut around each clavicle
    yield RefineEvent("prepare", message=f"first-stage maps of {len(cases)} cases")
    samples: list[_Sample] = []
    selection: list[tuple[str, np.ndarray, dict, dict]] = []
    for k, cid in enumerate(cases):
        case = index[cid]
        img = as_unit_image(case.load_image().data)
        masks = case.load_masks(spec.regions, shape=img.shape)
        probs = first.predict(img, regions=spec.regions)
        oof = oof_maps(cid, img)
        if cid in selection_cases:
            src = oof if oof is not None else probs
            maps = {r: src[r].astype(np.float16) for r in spec.regions}
            selection.append((cid, img.astype(np.float16), maps, masks))
        else:
            for r in spec.regions:
                if not cfg.mirror and spec.mirrored(r):
                    continue
                s = _context_sample(cid, r, img, probs[r], masks[r], spec, cfg.context,
                                    None if oof is None else oof[r])
                if s is not None:
                    samples.append(s)
        yield RefineEvent("prepare", step=k + 1, steps=len(cases))
    del first
    oof_preds.clear()  # the fold models are not needed any more
    if not samples:
        raise ValueError("no training samples (no case has clavicle masks)")

    # ---- the network
    seed_everything(cfg.seed)
    ck = load_checkpoint(first_stage, device="cpu")
    mcfg = ModelConfig(
        arch=ck.config.arch,
        encoder_name=ck.config.encoder_name,
        encoder_depth=ck.config.encoder_depth,
        decoder_channels=tuple(ck.config.decoder_channels),
        in_channels=len(ck.config.mean) + 1,
        extra_channels=1,
        regions=(spec.canonical,),
        input_size=max(spec.crop),
        mean=tuple(ck.config.mean),
        std=tuple(ck.config.std),
    )
    model = build_model(mcfg)
    if cfg.warm_start:
        model.load_state_dict(_warm_state(ck.model.state_dict(), mcfg, list(ck.config.regions).index(spec.canonical)))
    del ck
    model = model.to(dev).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(samples) / cfg.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.1
    )
    loss_fn = BCEJaccardLoss(cfg.bce_weight, cfg.jaccard_weight)
    prec = cfg.precision
    if prec == "auto":
        from .device import cpu_supports_bf16

        prec = "bf16" if dev.type != "cpu" or cpu_supports_bf16() else "fp32"
    start, best, best_epoch, history = 0, -1.0, None, []
    last = out / "last.state"
    if resume and last.is_file():
        st = load_training_state(last)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        saved = dict(st["scheduler"])
        # another --epochs: the schedule is stretched to the new length, at the same step
        saved.pop("total_steps", None)
        saved.pop("_schedule_phases", None)
        sched.load_state_dict(saved)
        start, best, best_epoch = int(st["epoch"]), float(st["best"]), st.get("best_epoch")
        history = json.loads(st.get("history") or "[]")
        torch.set_rng_state(st["rng"])
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + start)
    stack = torch.from_numpy(np.stack([np.stack([s.image, s.prior, s.target]) for s in samples]).astype(np.float32))
    has_oof = all(s.prior_oof is not None for s in samples)
    oof_stack = torch.from_numpy(np.stack([s.prior_oof for s in samples]).astype(np.float32)) if has_oof else None

    baseline = {r: float(np.mean([_jaccard(p[r] >= 0.5, m[r]) for _, _, p, m in selection])) for r in spec.regions}

    for epoch in range(start, cfg.epochs):
        model.train()
        perm = torch.randperm(len(samples), generator=gen)
        losses = []
        for step in range(steps_per_epoch):
            idx = perm[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            if len(idx) == 0:
                continue
            batch = stack[idx]
            if oof_stack is not None:  # some crops get the out-of-fold map
                use = torch.rand(len(idx), generator=gen) < cfg.oof_prior_p
                batch = batch.clone()
                batch[use, 1] = oof_stack[idx][use]
            img, prior, target = _augment(batch, cfg, spec, gen)
            x = network_input(img, prior, mcfg.mean, mcfg.std).to(dev).contiguous(memory_format=torch.channels_last)
            with autocast(dev, prec):
                logits = model(x)
            loss = loss_fn(logits, target.to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            yield RefineEvent("step", epoch=epoch + 1, epochs=cfg.epochs, step=step + 1, steps=steps_per_epoch,
                              loss=float(np.mean(losses)))
        # ---- score the whole pipeline on the selection cases
        model.eval()
        tmp = out / "epoch.safetensors"
        meta_out = {"refine": spec.to_meta(), "refine_train": asdict(cfg)}
        save_checkpoint(model, mcfg, tmp, metadata=meta_out)
        ref = Refiner(tmp, device=dev, precision="fp32", channels_last=True)
        scores = {r: [] for r in spec.regions}
        for _cid, img, probs, masks in selection:
            pt = {r: torch.from_numpy(probs[r].astype(np.float32)) for r in spec.regions}
            new = ref.refine(img.astype(np.float32), pt)
            for r in spec.regions:
                pm = (new[r] if r in new else pt[r]).cpu().numpy() >= 0.5
                scores[r].append(_jaccard(pm, masks[r]))
        means = {r: float(np.mean(v)) for r, v in scores.items()}
        mean = float(np.mean(list(means.values())))
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "selection": means})
        if mean > best:
            best, best_epoch = mean, epoch + 1
            meta_best = dict(meta_out)
            meta_best.update(
                {
                    "train_cases": train_cases,
                    "selection_cases": selection_cases,
                    "val_cases": list(meta.get("val_cases") or []),
                    "data": Path(data_root).name,  # the folder's name: no machine path in a model file
                    "epoch": epoch + 1,
                    "metrics": {"selection_jaccard": means, "first_stage_selection_jaccard": baseline,
                                "selection_maps": "out-of-fold" if oof_of else "first stage (in-sample)"},
                    "history": history,
                    "parent_id": spec.first_stage,
                }
            )
            save_checkpoint(model, mcfg, out / "refine.safetensors", metadata=meta_best)
        tmp.unlink(missing_ok=True)
        save_training_state(
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "epoch": epoch + 1,
                "best": best,
                "best_epoch": best_epoch,
                "history": json.dumps(history),
                "rng": torch.get_rng_state(),
            },
            last,
        )
        (out / "history.json").write_text(json.dumps({"baseline": baseline, "history": history}, indent=1))
        yield RefineEvent("epoch", epoch=epoch + 1, epochs=cfg.epochs, loss=float(np.mean(losses)),
                          scores=means, baseline=baseline, best_epoch=best_epoch)
    yield RefineEvent("done", epoch=cfg.epochs, epochs=cfg.epochs, best_epoch=best_epoch,
                      path=out / "refine.safetensors", baseline=baseline,
                      scores=history[best_epoch - 1]["selection"] if best_epoch else {})
