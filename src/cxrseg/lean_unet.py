"""An inference-only U-Net with batch norms folded away, in plain ``torch.nn``.

``segmentation_models_pytorch`` pulls in timm and more: importing it takes longer than
importing torch itself. For prediction only the arithmetic of a trained ResNet U-Net is
needed, so this module rebuilds that network - the same layers, names and order as
smp's ``Unet`` with a ResNet encoder (depth 5, no attention, no centre block) after
:func:`cxrseg.predict.fold_batchnorm` - directly from a folded state dict. It is built
on the ``meta`` device and takes the weights by assignment: nothing is initialised and
then overwritten.

:func:`cxrseg.model.load_inference_model` checks the result once against the smp model
and caches the folded weights, so that later runs never import smp.
"""

from __future__ import annotations

__all__ = ["supports", "build_lean_unet"]

LEAN_FORMAT = "1"
_RESNET_LAYERS = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}


def supports(config) -> bool:
    """True when the lean network can stand in for ``config``'s smp U-Net."""
    return (
        config.encoder_name in _RESNET_LAYERS
        and int(config.encoder_depth) == 5
        and len(tuple(config.decoder_channels)) == 5
    )


def _conv_from(state: dict):
    """``conv(name, stride)``: an empty biased Conv2d shaped like ``state``'s ``name`` weight."""
    import torch.nn as nn

    def conv(name, stride=1):
        w = state[f"{name}.weight"]
        out_c, in_c, k, _ = w.shape
        return nn.Conv2d(in_c, out_c, k, stride=stride, padding=k // 2, bias=True)

    return conv


def _encoder_class(conv, state: dict, kind: str, layers: tuple):
    """The ResNet encoder class (stem and four stages of ``kind`` blocks) built with ``conv``."""
    import torch.nn as nn
    import torch.nn.functional as F

    class Block(nn.Module):
        def __init__(self, prefix, stride):
            super().__init__()
            self.bottleneck = kind == "bottleneck"
            self.conv1 = conv(f"{prefix}.conv1", 1 if self.bottleneck else stride)
            self.conv2 = conv(f"{prefix}.conv2", stride if self.bottleneck else 1)
            if self.bottleneck:
                self.conv3 = conv(f"{prefix}.conv3")
            if f"{prefix}.downsample.0.weight" in state:
                self.downsample = nn.Sequential(conv(f"{prefix}.downsample.0", stride))
            else:
                self.downsample = None

        def forward(self, x):
            out = F.relu(self.conv1(x), inplace=True)
            if self.bottleneck:
                out = F.relu(self.conv2(out), inplace=True)
                out = self.conv3(out)
            else:
                out = self.conv2(out)
            idt = x if self.downsample is None else self.downsample(x)
            return F.relu(out + idt, inplace=True)

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = conv("encoder.conv1", 2)
            for li, n in enumerate(layers, start=1):
                blocks = [Block(f"encoder.layer{li}.{b}", 2 if (li > 1 and b == 0) else 1) for b in range(n)]
                setattr(self, f"layer{li}", nn.Sequential(*blocks))

        def forward(self, x):
            feats = [x]
            x = F.relu(self.conv1(x), inplace=True)
            feats.append(x)
            x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
            for li in range(1, 5):
                x = getattr(self, f"layer{li}")(x)
                feats.append(x)
            return feats

    return Encoder


def _decoder_class(conv):
    """The five-block U-Net decoder class (nearest upsampling, skip concatenation)."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class DecoderBlock(nn.Module):
        def __init__(self, prefix):
            super().__init__()
            self.conv1 = nn.Sequential(conv(f"{prefix}.conv1.0"))
            self.conv2 = nn.Sequential(conv(f"{prefix}.conv2.0"))

        def forward(self, x, size, skip):
            x = F.interpolate(x, size=size, mode="nearest")
            if skip is not None:
                x = torch.cat([x, skip], dim=1)
            x = F.relu(self.conv1(x), inplace=True)
            return F.relu(self.conv2(x), inplace=True)

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList(DecoderBlock(f"decoder.blocks.{i}") for i in range(5))

        def forward(self, feats):
            shapes = [f.shape[2:] for f in feats][::-1]
            feats = feats[1:][::-1]
            x, skips = feats[0], feats[1:]
            for i, block in enumerate(self.blocks):
                x = block(x, shapes[i + 1], skips[i] if i < len(skips) else None)
            return x

    return Decoder


def build_lean_unet(config, state: dict):
    """The folded U-Net of ``config`` holding ``state`` (a folded state dict, by assignment).

    Raises
    ------
    ValueError
        ``config`` is not supported (:func:`supports`) or ``state`` does not fit it.
    """
    import torch
    import torch.nn as nn

    if not supports(config):
        raise ValueError(f"lean U-Net: unsupported encoder {config.encoder_name!r}/depth {config.encoder_depth}")
    kind, layers = _RESNET_LAYERS[config.encoder_name]
    conv = _conv_from(state)
    Encoder = _encoder_class(conv, state, kind, layers)
    Decoder = _decoder_class(conv)

    class LeanUnet(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = Encoder()
            self.decoder = Decoder()
            self.segmentation_head = nn.Sequential(conv("segmentation_head.0"))

        def forward(self, x):
            return self.segmentation_head(self.decoder(self.encoder(x)))

    try:
        with torch.device("meta"):
            model = LeanUnet()
        model.load_state_dict(state, strict=True, assign=True)
    except (KeyError, RuntimeError) as exc:
        raise ValueError(f"lean U-Net: the folded weights do not fit {config.encoder_name} ({exc})") from None
    return model.eval()
