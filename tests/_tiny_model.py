"""A tiny, deterministic cxrseg checkpoint for fast tests (shared by several test files).

    from _tiny_model import make_tiny_checkpoint
    ckpt = make_tiny_checkpoint(tmp_path / "tiny.safetensors")

The model is a randomly initialised U-Net (``torch.manual_seed``), small enough to run a
64 x 64 forward pass in a few milliseconds. Its predictions mean nothing; tests use it to
check shapes, plumbing, files and numerics, not accuracy. The segmentation head is
scaled up (``head_scale``) so that the probabilities spread well away from 0.5 and the
thresholded masks have both foreground and background.
"""

from __future__ import annotations

from pathlib import Path

from cxrseg.regions import REGIONS


def make_tiny_checkpoint(
    path,
    *,
    regions=REGIONS,
    input_size: int = 64,
    encoder: str = "resnet18",
    seed: int = 0,
    head_scale: float = 4.0,
    metadata: dict | None = None,
) -> Path:
    """Build and save a tiny random U-Net checkpoint (``.safetensors``); return its path.

    Parameters
    ----------
    path : path-like
        Output file.
    regions : iterable of str, optional
        Output channels (default: all five).
    input_size : int, optional
        Model input size (multiple of 32, >= 64).
    encoder : str, optional
        smp encoder name (``resnet18``, ``resnet34``); no pretrained weights.
    seed : int, optional
        ``torch.manual_seed`` value: the same arguments give the same weights and
        ``model_id``.
    head_scale : float, optional
        Multiplies the segmentation head's weights and adds a spread of biases per
        region, so the maps are not all near 0.5.
    metadata : dict, optional
        Extra checkpoint metadata.
    """
    import torch

    from cxrseg.config import ModelConfig
    from cxrseg.model import build_model, save_checkpoint

    torch.manual_seed(int(seed))
    cfg = ModelConfig(
        encoder_name=encoder,
        decoder_channels=(16, 16, 16, 16, 16),
        input_size=int(input_size),
        regions=tuple(regions),
    )
    model = build_model(cfg, encoder_weights=None).eval()
    with torch.no_grad():
        # Make the batch-norm statistics non-trivial so that folding them is tested.
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
        head = model.segmentation_head[0]
        head.weight.mul_(float(head_scale))
        if head.bias is not None:
            head.bias.copy_(torch.linspace(-0.5, 0.5, head.bias.numel()))
    return save_checkpoint(
        model, cfg, path, metadata=dict(metadata or {}, note="tiny random test model")
    )


def make_tiny_refiner(path, *, encoder: str = "resnet18", seed: int = 1) -> Path:
    """A tiny random clavicle refinement network (:mod:`cxrseg.refine`) saved at ``path``
    (put it beside a checkpoint as ``<name>.refine.safetensors`` for predictors to use it)."""
    import torch

    from cxrseg.config import ModelConfig
    from cxrseg.model import build_model, save_checkpoint
    from cxrseg.refine import RefineSpec

    torch.manual_seed(int(seed))
    cfg = ModelConfig(encoder_name=encoder, decoder_channels=(16, 16, 16, 16, 16), input_size=320,
                      in_channels=4, extra_channels=1, regions=("left_clavicle",))
    model = build_model(cfg, encoder_weights=None).eval()
    return save_checkpoint(model, cfg, path, metadata={"refine": RefineSpec().to_meta(),
                                                       "note": "tiny random test refiner"})
