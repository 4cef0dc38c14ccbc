"""Typed configuration: one dataclass per concern.

* :class:`ModelConfig` — architecture, regions, input size, normalisation, thresholds.
  Saved inside every checkpoint; the CLI and the napari widgets read it from there.
* :class:`TrainConfig` — optimiser, loss, schedule, augmentation, epochs.
* :data:`STUDY_PER_REGION_DEFAULTS` — the per-region baseline of the JSRT/SCR U-Net study.

All configs round-trip through plain dicts (JSON) with :func:`to_dict` / ``from_dict``,
which reject unknown keys and wrong values with a message naming them.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from .regions import REGIONS, parse_regions

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _from_dict(cls, data: dict[str, Any], what: str):
    if not isinstance(data, dict):
        raise ValueError(f"{what}: expected a JSON object, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{what}: unknown keys {unknown}; expected some of {sorted(names)}")
    return cls(**data)


def to_dict(cfg) -> dict[str, Any]:
    """A JSON-able dict of a config dataclass."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


@dataclass
class ModelConfig:
    """What a model is and how its input and output are interpreted.

    ``regions`` are the output channels in order: five for the multi-label model,
    one for a per-region model of the JSRT/SCR U-Net study.
    """

    arch: str = "Unet"
    encoder_name: str = "resnet34"
    encoder_depth: int = 5
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)
    in_channels: int = 3
    regions: tuple[str, ...] = REGIONS
    input_size: int = 256
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    thresholds: dict[str, float] = field(default_factory=dict)
    #: input channels after the normalised film (a refinement network's first-stage
    #: probability, :mod:`cxrseg.refine`); ``in_channels`` = ``len(mean)`` + these
    extra_channels: int = 0

    def __post_init__(self):
        self.regions = parse_regions(self.regions)
        self.decoder_channels = tuple(int(c) for c in self.decoder_channels)
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)
        if self.arch != "Unet":
            raise ValueError(f"ModelConfig.arch: only 'Unet' is supported, got {self.arch!r}")
        self.extra_channels = int(self.extra_channels)
        if self.extra_channels < 0:
            raise ValueError(f"ModelConfig.extra_channels must be >= 0, got {self.extra_channels}")
        film = self.in_channels - self.extra_channels
        if film not in (1, 3):
            raise ValueError(
                f"ModelConfig.in_channels must be 1 or 3 (plus extra_channels), got {self.in_channels}"
            )
        if len(self.mean) != film or len(self.std) != film:
            raise ValueError("ModelConfig.mean/std need one value per film input channel")
        if int(self.input_size) != self.input_size or self.input_size < 64 or self.input_size % 32:
            raise ValueError(
                f"ModelConfig.input_size must be a multiple of 32 and >= 64 "
                f"(the U-Net halves it 5 times), got {self.input_size}"
            )
        self.input_size = int(self.input_size)
        th = {r: 0.5 for r in self.regions}
        for k, v in dict(self.thresholds).items():
            from .regions import canonical_region

            r = canonical_region(k)
            if not 0.0 < float(v) < 1.0:
                raise ValueError(f"ModelConfig.thresholds[{k!r}] must be in (0, 1), got {v}")
            th[r] = float(v)
        self.thresholds = {r: th[r] for r in self.regions}

    @property
    def mode(self) -> str:
        """``"multilabel"`` (several output channels) or ``"per-region"`` (one)."""
        return "multilabel" if len(self.regions) > 1 else "per-region"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return _from_dict(cls, data, "model config")


#: The per-region baseline of the JSRT/SCR U-Net study (see the README): its optimiser,
#: batch and learning rate per region (loss: BCE + Jaccard; constant learning rate).
STUDY_PER_REGION_DEFAULTS: dict[str, dict[str, Any]] = {
    "heart": {"optimizer": "sgd", "batch_size": 1, "lr": 0.07879},
    "left_clavicle": {"optimizer": "sgd", "batch_size": 1, "lr": 0.10000},
    "left_lung": {"optimizer": "sgd", "batch_size": 1, "lr": 0.00358},
    "right_clavicle": {"optimizer": "rmsprop", "batch_size": 1, "lr": 0.00035},
    "right_lung": {"optimizer": "sgd", "batch_size": 1, "lr": 0.00139},
}

#: Defaults of the multi-label model (not in the study): Adam + one-cycle.
MULTILABEL_DEFAULTS: dict[str, Any] = {"optimizer": "adamw", "batch_size": 8, "lr": 3e-3}

OPTIMIZERS = ("sgd", "rmsprop", "adam", "adamw")
SCHEDULERS = ("onecycle", "cosine", "none")


@dataclass
class TrainConfig:
    """How a model is trained (or fine-tuned)."""

    epochs: int = 40
    batch_size: int = 8
    optimizer: str = "adamw"
    lr: float = 3e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    scheduler: str = "onecycle"
    bce_weight: float = 1.0
    jaccard_weight: float = 1.0
    aug_strength: float = 1.0
    #: Each epoch sees every training image this many times (differently augmented);
    #: the JSRT/SCR U-Net study multiplied its 247 images by 5.
    aug_multiplier: int = 1
    seed: int = 0
    val_fraction: float = 0.2
    num_workers: int = 0
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    channels_last: bool = True
    early_stopping_patience: int = 0  # 0 = off

    def __post_init__(self):
        self.optimizer = str(self.optimizer).lower()
        self.scheduler = str(self.scheduler).lower()
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"TrainConfig.optimizer: expected one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"TrainConfig.scheduler: expected one of {SCHEDULERS}, got {self.scheduler!r}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"TrainConfig.precision: expected auto|fp32|bf16|fp16, got {self.precision!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.aug_multiplier < 1:
            raise ValueError("TrainConfig: epochs, batch_size and aug_multiplier must be >= 1")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"TrainConfig.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.bce_weight < 0 or self.jaccard_weight < 0 or self.bce_weight + self.jaccard_weight == 0:
            raise ValueError("TrainConfig: bce_weight and jaccard_weight must be >= 0, not both 0")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return _from_dict(cls, data, "train config")

    @classmethod
    def for_regions(cls, regions, **overrides) -> TrainConfig:
        """Defaults for a model of these regions: the study's per-region table for one region,
        :data:`MULTILABEL_DEFAULTS` for several; ``overrides`` (not None) win."""
        regions = parse_regions(regions)
        base = dict(STUDY_PER_REGION_DEFAULTS[regions[0]]) if len(regions) == 1 else dict(MULTILABEL_DEFAULTS)
        if len(regions) == 1:
            base["scheduler"] = "none"
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)
