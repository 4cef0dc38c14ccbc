"""The U-Net, its encoder weights, and safetensors checkpoints with JSON metadata.

A checkpoint is a single ``.safetensors`` file: the weights, and in the safetensors
header a ``cxrseg`` entry holding JSON metadata: ``config`` (:class:`ModelConfig`),
``regions``, ``train_config``, ``data_fingerprint``, ``metrics``, ``parent_id``,
``code_version``, ``date``, ``model_id`` and free-form extras. Loading never unpickles
anything: safetensors holds only tensors and strings.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .config import ModelConfig, to_dict

FORMAT_VERSION = "1"
DEFAULT_MODEL_NAME = "cxrseg-unet-r34-multilabel.safetensors"
FAST_MODEL_NAME = "cxrseg-unet-r34-multilabel-256.safetensors"

#: Shipped models by tier name (``--model fast``): the 512 px default and a 256 px model
#: about 3-4x faster at a Jaccard cost of 0.002 (lungs) to 0.017 (clavicles); see
#: ``models/MODEL_CARD.md``.
MODEL_TIERS = {"default": DEFAULT_MODEL_NAME, "fast": FAST_MODEL_NAME}


class CheckpointError(ValueError):
    """A checkpoint file is missing, not a cxrseg safetensors file, or inconsistent."""


class EncoderWeightsError(RuntimeError):
    """Pretrained encoder weights were asked for but cannot be found offline."""


def default_checkpoint_path() -> Path:
    """The model shipped inside the package (the plugin's and CLI's default)."""
    return Path(__file__).resolve().parent / "models" / DEFAULT_MODEL_NAME


def tier_checkpoint_path(tier: str) -> Path:
    """The shipped model of a tier: ``default`` (512 px) or ``fast`` (256 px).

    Raises
    ------
    ValueError
        An unknown tier name.
    """
    name = MODEL_TIERS.get(str(tier).strip().lower())
    if name is None:
        raise ValueError(f"unknown model tier {tier!r}; expected one of {', '.join(MODEL_TIERS)}")
    if name == DEFAULT_MODEL_NAME:
        return default_checkpoint_path()
    return Path(__file__).resolve().parent / "models" / name


#: File names a checkpoint folder is searched for, in this order: a training run's best
#: epoch, a model saved as ``model.safetensors``, the shipped models' names, and last a
#: run's latest epoch (a run that has not written a best one yet).
CHECKPOINT_FILE_NAMES: tuple[str, ...] = (
    "best.safetensors",
    "model.safetensors",
    DEFAULT_MODEL_NAME,
    FAST_MODEL_NAME,
    "last.safetensors",
)


def checkpoint_in_folder(folder: str | os.PathLike) -> Path | None:
    """The checkpoint file of a folder: the first of :data:`CHECKPOINT_FILE_NAMES` in it,
    or None."""
    folder = Path(folder)
    for name in CHECKPOINT_FILE_NAMES:
        if (folder / name).is_file():
            return folder / name
    return None


def resolve_checkpoint_path(checkpoint: str | os.PathLike | None = None) -> Path:
    """The checkpoint file that ``checkpoint`` names.

    ``None`` (or ``"default"``) is the model shipped in the package
    (:func:`default_checkpoint_path`, 512 px); ``"fast"`` the shipped 256 px model
    (:data:`MODEL_TIERS`), unless a file or folder of that name exists; a folder (a
    training output folder) is searched for :data:`CHECKPOINT_FILE_NAMES`
    (:func:`checkpoint_in_folder`).

    Raises
    ------
    CheckpointError
        The file (or the shipped model) does not exist, or the folder holds no checkpoint.
    """
    if checkpoint is not None and str(checkpoint).strip().lower() in MODEL_TIERS:
        if not Path(checkpoint).expanduser().exists():  # a file or folder of that name wins
            path = tier_checkpoint_path(str(checkpoint))
            if path.name == DEFAULT_MODEL_NAME:
                checkpoint = None
            elif not path.is_file():
                raise CheckpointError(f"the shipped {checkpoint} model {path} is not installed")
            else:
                return path.resolve()
    if checkpoint is None:
        path = default_checkpoint_path()
        if not path.is_file():
            raise CheckpointError(
                f"the shipped model {path} is not installed (this copy of cxrseg has no bundled "
                "weights); pass a checkpoint instead, e.g. --model runs/x/best.safetensors written "
                "by 'cxrseg train'"
            )
        return path.resolve()
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        found = checkpoint_in_folder(path)
        if found is None:
            raise CheckpointError(
                f"checkpoint folder {path} holds no {', '.join(CHECKPOINT_FILE_NAMES[:-1])} "
                f"or {CHECKPOINT_FILE_NAMES[-1]}"
            )
        return found.resolve()
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    return path.resolve()


def build_model(config: ModelConfig, *, encoder_weights: str | os.PathLike | None = None):
    """Build the ``segmentation_models_pytorch.Unet`` described by ``config``.

    The model outputs logits, one channel per region; apply a sigmoid for probabilities
    (the loss and the prediction engine do).

    Parameters
    ----------
    config : ModelConfig
    encoder_weights : None, "none", "imagenet" or a path
        ``"imagenet"`` uses smp's ImageNet weights if they are already in the local
        Hugging Face cache (nothing is downloaded); a path loads a torchvision/timm
        ResNet state dict (``.pth``/``.pt`` loaded with ``weights_only=True``, or
        ``.safetensors``).
    """
    import segmentation_models_pytorch as smp

    names = _encoder_names()
    if names and config.encoder_name not in names and not str(config.encoder_name).startswith("tu-"):
        raise ValueError(
            f"unknown encoder {config.encoder_name!r}; the {len(names)} encoders are: "
            + ", ".join(names)
            + " (and timm encoders as 'tu-<name>')"
        )
    model = smp.Unet(
        encoder_name=config.encoder_name,
        encoder_depth=config.encoder_depth,
        encoder_weights=None,
        decoder_channels=config.decoder_channels,
        in_channels=config.in_channels,
        classes=len(config.regions),
        activation=None,
    )
    spec = None if encoder_weights in (None, "none", "None", "") else encoder_weights
    if spec is not None:
        state = load_encoder_state(spec, config.encoder_name)
        missing, unexpected = model.encoder.load_state_dict(state, strict=False)
        if unexpected or len(missing) > 0:
            raise EncoderWeightsError(
                f"encoder weights {spec}: do not match encoder {config.encoder_name!r} "
                f"(missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]})"
            )
    return model


_HOW_TO_WEIGHTS = (
    "Provide them offline in one of these ways: (1) pass --encoder-weights PATH to a "
    "torchvision ResNet state dict (e.g. resnet34-b627a593.pth, from "
    "torchvision.models.resnet34(weights='IMAGENET1K_V1') on a machine with internet); "
    "(2) pre-fill the Hugging Face cache with smp-hub/{name}.imagenet (set HF_HOME); or "
    "(3) pass --encoder-weights none to train from scratch."
)


def _encoder_names() -> list[str]:
    """Every encoder segmentation_models_pytorch knows (sorted), or [] if it cannot say."""
    try:
        from segmentation_models_pytorch.encoders import encoders
    except ImportError:  # pragma: no cover
        return []
    return sorted(encoders)


def load_encoder_state(spec: str | os.PathLike, encoder_name: str = "resnet34") -> dict:
    """Encoder weights as a state dict, from ``"imagenet"`` (local cache only) or a file."""
    import torch

    if str(spec).lower() == "imagenet":
        try:
            from huggingface_hub import hf_hub_download
            from segmentation_models_pytorch.encoders import encoders

            settings = encoders[encoder_name]["pretrained_settings"]["imagenet"]
            path = None
            for fname in ("model.safetensors", "pytorch_model.bin"):
                try:
                    path = hf_hub_download(
                        settings["repo_id"],
                        filename=fname,
                        revision=settings.get("revision"),
                        local_files_only=True,
                    )
                    break
                except Exception:
                    continue
            if path is None:
                raise FileNotFoundError(settings["repo_id"])
        except Exception as exc:
            raise EncoderWeightsError(
                f"ImageNet weights for {encoder_name} are not available offline ({exc}). "
                + _HOW_TO_WEIGHTS.format(name=encoder_name)
            ) from None
        spec = path
    p = Path(spec)
    if not p.is_file():
        raise EncoderWeightsError(f"encoder weights file {p} not found. " + _HOW_TO_WEIGHTS.format(name=encoder_name))
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(p))
    else:
        try:
            state = torch.load(str(p), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise EncoderWeightsError(
                f"encoder weights file {p}: cannot be read as a plain state dict ({exc})"
            ) from None
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
    out = {}
    for k, v in state.items():
        for prefix in ("module.", "encoder.", "model."):
            if k.startswith(prefix):
                k = k[len(prefix) :]
        if k.startswith("fc.") or k.startswith("classifier."):
            continue
        out[k] = v
    return out


# --------------------------------------------------------------------------- checkpoints


@dataclass
class Checkpoint:
    """A loaded model with its configuration and metadata."""

    model: Any
    config: ModelConfig
    metadata: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def model_id(self) -> str:
        return str(self.metadata.get("model_id", "unknown"))


def _check_safetensors_file(path: Path) -> None:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    with open(path, "rb") as fh:
        head = fh.read(16)
    if len(head) < 10:
        raise CheckpointError(f"checkpoint {path}: empty or truncated; expected a .safetensors file")
    n = int.from_bytes(head[:8], "little")
    if 2 <= n <= 100_000_000 and head[8:9] == b"{":
        return  # a safetensors header: 8-byte little-endian length, then JSON
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        raise CheckpointError(
            f"checkpoint {path} is a pickle/torch.save file; cxrseg loads only .safetensors "
            "checkpoints, because unpickling can run arbitrary code. Convert trusted weights "
            "with safetensors.torch.save_file(state_dict, 'model.safetensors')."
        )
    raise CheckpointError(f"checkpoint {path}: not a safetensors file (bad header)")


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata of a checkpoint, without loading its weights."""
    from safetensors import safe_open

    path = Path(path)
    _check_safetensors_file(path)
    try:
        # the header only: the numpy flavour, because the torch one imports torch
        with safe_open(str(path), framework="numpy") as fh:
            raw = (fh.metadata() or {}).get("cxrseg")
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path}: unreadable safetensors file ({exc})") from None
    if raw is None:
        raise CheckpointError(
            f"checkpoint {path}: no 'cxrseg' metadata; expected a checkpoint written by cxrseg "
            "(save_checkpoint / cxrseg train)"
        )
    try:
        meta = json.loads(raw)
        ModelConfig.from_dict(meta["config"])
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path}: invalid metadata ({exc})") from None
    return meta


def weights_fingerprint(state: dict) -> str:
    """A short, stable id of a set of weights (sha256 over names, shapes and bytes)."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().contiguous().cpu()
        h.update(k.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.float().numpy().tobytes() if t.dtype.is_floating_point else t.numpy().tobytes())
    return h.hexdigest()[:16]


def save_checkpoint(
    model,
    config: ModelConfig,
    path: str | os.PathLike,
    *,
    metadata: dict[str, Any] | None = None,
    half: bool = False,
) -> Path:
    """Write ``model`` and its metadata to ``path`` (``.safetensors``), atomically.

    ``half=True`` stores float16 weights (the shipped model; about 49 MB for ResNet34).
    Returns the path. The metadata gets ``config``, ``regions``, ``code_version``, ``date``,
    ``format`` and ``model_id`` (a fingerprint of the weights) filled in.
    """
    import torch
    from safetensors.torch import save_file

    path = Path(path)
    module = model.module if hasattr(model, "module") else model
    state = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    if half:
        state = {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}
    else:
        state = {k: (v.float() if v.is_floating_point() and v.dtype != torch.float32 else v) for k, v in state.items()}
    meta = dict(metadata or {})
    meta.update(
        {
            "format": FORMAT_VERSION,
            "config": to_dict(config),
            "regions": list(config.regions),
            "code_version": __version__,
            "date": meta.get("date") or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "model_id": weights_fingerprint(state),
            "dtype": "float16" if half else "float32",
        }
    )
    meta.setdefault("parent_id", None)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(state, tmp, metadata={"cxrseg": json.dumps(meta), "format": "pt"})
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; a model is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike | None = None, *, device="cpu", dtype=None) -> Checkpoint:
    """Load a checkpoint (default: the shipped model) into a ready-to-use ``eval()`` model.

    Weights are converted to float32 (or ``dtype``) on ``device``. Files that are not
    cxrseg safetensors checkpoints (a pickle, a ``.pt``, a truncated file) are refused
    with a :class:`CheckpointError` naming the file.
    """
    import torch
    from safetensors.torch import load_file

    path = Path(path) if path is not None else default_checkpoint_path()
    if path.is_dir():
        path = checkpoint_in_folder(path) or path
    meta = read_metadata(path)
    config = ModelConfig.from_dict(meta["config"])
    try:
        state = load_file(str(path))
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path}: cannot read weights ({exc})") from None
    target = dtype or torch.float32
    state = {k: (v.to(target) if v.is_floating_point() else v) for k, v in state.items()}
    # built on the meta device and given the file's tensors by assignment: no random
    # initialisation of weights that would be overwritten at once
    with torch.device("meta"):
        model = build_model(config)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path}: weights do not match its config ({exc})") from None
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):  # a buffer not in the file
        model = build_model(config)
        model.load_state_dict(state, strict=True)
    model.to(device).eval()
    return Checkpoint(model=model, config=config, metadata=meta, path=path)


def fold_checked(model, in_channels: int = 3):
    """Batch norms folded into the convolutions before them, on a copy; the copy is kept
    only if it gives the same logits as ``model`` (fp32, a random 64 x 64 input).

    Returns ``(model, number of folded layers)``: the original and 0 when folding failed.
    """
    import copy

    from .predict import fold_batchnorm

    folded = copy.deepcopy(model)
    try:
        n = fold_batchnorm(folded)
    except Exception:
        return model, 0
    if n == 0 or not _same_logits(model, folded, in_channels):
        return model, 0
    return folded, n


def _same_logits(a, b, in_channels: int) -> bool:
    import torch

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, in_channels, 64, 64, generator=gen) * 4 - 2
    dev = next(a.parameters()).device
    x = x.to(dev)
    with torch.inference_mode():
        ya, yb = a(x).float(), b(x).float()
    tol = 1e-3 * max(1.0, float(ya.abs().max()))
    return bool(torch.isfinite(yb).all()) and float((ya - yb).abs().max()) <= tol


#: How many checkpoints keep their folded weights in the cache. Each entry is as large as
#: its checkpoint (about 50 MB for the shipped models); the least recently used go first.
FOLDED_CACHE_ENTRIES = 8


def folded_cache_path(path: str | os.PathLike, model_id: str) -> Path:
    """Where the folded weights of the checkpoint ``path`` are cached:
    ``$CXRSEG_CACHE/folded/<model id>-<file size>-v<format>.safetensors``. The folder
    keeps the :data:`FOLDED_CACHE_ENTRIES` most recently used entries."""
    from .lean_unet import LEAN_FORMAT
    from .training_arrays import default_cache_dir

    size = Path(path).stat().st_size
    return default_cache_dir() / "folded" / f"{model_id}-{size}-v{LEAN_FORMAT}.safetensors"


def load_inference_model(path: str | os.PathLike | None = None):
    """The checkpoint's network for prediction: fp32 on the CPU, ``eval()``, batch norms
    folded, built without random initialisation.

    The first load folds the batch norms of the smp U-Net, checks the fold and the
    torch-only :mod:`cxrseg.lean_unet` against it numerically, and caches the folded
    weights (``folded_cache_path``); later loads build the lean network from the cache
    and never import ``segmentation_models_pytorch``. Encoders the lean network does not
    cover get the folded smp model.

    Returns
    -------
    (model, Checkpoint-like metadata): tuple of the module, :class:`ModelConfig`, the
    metadata dict, the resolved path and the number of folded batch norms.
    """
    from safetensors.torch import load_file

    from .lean_unet import build_lean_unet, supports

    path = Path(path) if path is not None else default_checkpoint_path()
    meta = read_metadata(path)
    config = ModelConfig.from_dict(meta["config"])
    model_id = str(meta.get("model_id", "unknown"))
    cache = folded_cache_path(path, model_id) if supports(config) else None
    if cache is not None and cache.is_file():
        try:
            state = load_file(str(cache))
            n = int(json.loads((_safe_meta(cache) or {}).get("folded", "0")))
            lean = build_lean_unet(config, state)
            _touch(cache)
            return lean, config, meta, path, n
        except Exception:
            cache.unlink(missing_ok=True)  # unreadable or stale: rebuild it below
    ck = load_checkpoint(path, device="cpu")
    model, n = fold_checked(ck.model.eval(), config.in_channels)
    if cache is None or n == 0:
        return model, config, meta, path, n
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    try:
        lean = build_lean_unet(config, dict(state))
    except ValueError:
        return model, config, meta, path, n
    if not _same_logits(model, lean, config.in_channels):
        return model, config, meta, path, n
    _save_folded(cache, state, n)
    return lean, config, meta, path, n


def _safe_meta(path: Path) -> dict | None:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as fh:  # the header only (no torch import)
        return fh.metadata()


def _save_folded(cache: Path, state: dict, n: int) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{cache.name}.", suffix=".tmp", dir=cache.parent)
        os.close(fd)
        try:
            save_file(state, tmp, metadata={"folded": str(int(n)), "format": "pt"})
            os.replace(tmp, cache)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except (OSError, SafetensorError):
        return  # a read-only or full disk: fold again next time (safetensors raises its own error)
    prune_folded_cache(cache.parent, keep=FOLDED_CACHE_ENTRIES, protect=cache)


def _touch(path: Path) -> None:
    """Mark a cache entry as used (its modification time orders the pruning)."""
    try:
        os.utime(path)
    except OSError:
        pass


def prune_folded_cache(folder: str | os.PathLike, keep: int = FOLDED_CACHE_ENTRIES,
                       protect: str | os.PathLike | None = None) -> list[Path]:
    """Delete all but the ``keep`` most recently used folded-weight files in ``folder``
    (never ``protect``, the entry just written); returns the files deleted. Files that
    vanish or cannot be deleted meanwhile (another process) are skipped."""
    folder = Path(folder)
    protect = Path(protect) if protect is not None else None
    entries = []
    for f in folder.glob("*.safetensors"):
        try:
            entries.append((f.stat().st_mtime, f))
        except OSError:
            continue
    entries.sort(key=lambda e: e[0], reverse=True)
    budget = max(0, int(keep)) - any(f == protect for _, f in entries)
    removed = []
    for _, f in entries:
        if f == protect:
            continue
        if budget > 0:
            budget -= 1
            continue
        try:
            f.unlink()
            removed.append(f)
        except OSError:
            pass
    return removed


def save_training_state(state: dict, path: str | os.PathLike) -> Path:
    """Optimiser/scheduler/epoch state for resuming (torch.save, read back with weights_only)."""
    import torch

    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_training_state(path: str | os.PathLike) -> dict:
    """Read a resume state with ``weights_only=True``: a restricted unpickler that refuses
    arbitrary objects (a malicious pickle raises :class:`CheckpointError`)."""
    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"training state {path}: refused or unreadable ({type(exc).__name__}: {str(exc)[:200]})"
        ) from None
