"""Pre-processing shared by training and prediction, and on-the-fly augmentation.

Images are resized to the model's square input with area averaging (after padding a
non-square image to a square, so anatomy keeps its aspect ratio); probabilities are
resized back with bilinear interpolation and cropped to the input's shape.
Augmentation is geometric (small rotation, scale, shift, shear) and photometric
(gamma, contrast, brightness, blur/noise), applied to a batch in one call with
``torch.nn.functional.affine_grid``/``grid_sample`` so masks move exactly with their
images (bilinear for both: targets are soft, area-averaged masks). It **never flips
horizontally**: that would swap the patient's left and right.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PadInfo:
    """Where the original image sits in its padded square: (top, left, rows, cols)."""

    top: int
    left: int
    rows: int
    cols: int

    @property
    def side(self) -> int:
        return max(self.rows, self.cols)


def pad_to_square(image: np.ndarray, *, value: float | None = None) -> tuple[np.ndarray, PadInfo]:
    """Pad a 2-D image symmetrically to a square (edge-mean value by default)."""
    rows, cols = image.shape[-2:]
    side = max(rows, cols)
    top, left = (side - rows) // 2, (side - cols) // 2
    info = PadInfo(top, left, rows, cols)
    if rows == cols:
        return image, info
    if value is None:
        value = float(np.mean([image[0].mean(), image[-1].mean(), image[:, 0].mean(), image[:, -1].mean()]))
    out = np.full(image.shape[:-2] + (side, side), value, dtype=image.dtype)
    out[..., top : top + rows, left : left + cols] = image
    return out, info


def resize_area(batch, size: int):
    """Area-resize a torch tensor ``(..., H, W)`` to ``(..., size, size)``."""
    import torch.nn.functional as F

    shape = batch.shape
    x = batch.reshape(-1, 1, shape[-2], shape[-1]).float()
    if shape[-2] == size and shape[-1] == size:
        y = x
    elif shape[-2] >= size and shape[-1] >= size:
        y = F.interpolate(x, size=(size, size), mode="area")
    else:
        y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return y.reshape(*shape[:-2], size, size)


def image_to_input(image: np.ndarray, size: int) -> tuple[np.ndarray, PadInfo]:
    """A [0, 1] 2-D image -> padded, area-resized ``float32 (size, size)`` and its PadInfo."""
    import torch

    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got shape {img.shape}")
    sq, info = pad_to_square(img)
    out = resize_area(torch.from_numpy(np.ascontiguousarray(sq)), size).numpy()
    return out.astype(np.float32, copy=False), info


def normalize(batch01, mean, std):
    """``(B, 1, S, S)`` [0, 1] -> ``(B, C, S, S)`` normalised (grayscale replicated)."""
    import torch

    c = len(mean)
    x = batch01.expand(-1, c, -1, -1) if batch01.shape[1] == 1 else batch01
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, c, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, c, 1, 1)
    return (x - m) / s


def output_to_image(prob, info: PadInfo):
    """Resize ``(R, S, S)`` probabilities to the padded square, crop to the input's shape."""
    import torch.nn.functional as F

    x = prob.unsqueeze(0).float() if prob.dim() == 3 else prob.float()
    side = info.side
    if x.shape[-1] != side:
        x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
    x = x[..., info.top : info.top + info.rows, info.left : info.left + info.cols]
    return x[0] if prob.dim() == 3 else x


# --------------------------------------------------------------------------- augmentation


def augment_batch(images, masks, *, strength: float = 1.0, generator=None):
    """Random affine + intensity augmentation of a batch, masks moved with their images.

    Parameters
    ----------
    images : torch.Tensor ``(B, 1, S, S)`` in [0, 1]
    masks : torch.Tensor ``(B, R, S, S)`` in [0, 1]
    strength : float
        0 disables augmentation; 1 is the default range (rotation ±10°, scale ±10%,
        shift ±6%, shear ±5°, gamma 0.7-1.4, contrast ±20%, brightness ±8%).
    """
    import torch
    import torch.nn.functional as F

    if strength <= 0:
        return images, masks
    b = images.shape[0]
    dev = images.device
    g = generator

    def u(lo, hi, n=b):
        return lo + (hi - lo) * torch.rand(n, generator=g, device="cpu").to(dev)

    s = float(strength)
    rot = u(-10, 10) * s * math.pi / 180
    shear = u(-5, 5) * s * math.pi / 180
    scale = 1 + u(-0.10, 0.10) * s
    aspect = 1 + u(-0.05, 0.05) * s
    tx, ty = u(-0.06, 0.06) * s * 2, u(-0.06, 0.06) * s * 2  # grid units span 2
    cos, sin = torch.cos(rot), torch.sin(rot)
    sx, sy = 1 / (scale * aspect), aspect / scale
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0] = cos * sx
    theta[:, 0, 1] = (-sin + torch.tan(shear) * cos) * sy
    theta[:, 1, 0] = sin * sx
    theta[:, 1, 1] = cos * sy
    theta[:, 0, 2] = tx
    theta[:, 1, 2] = ty
    both = torch.cat([images, masks], dim=1)
    grid = F.affine_grid(theta, list(both.shape), align_corners=False)
    # border padding for the image (no black wedges), zeros for masks
    img = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    msk = F.grid_sample(masks, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    # photometric
    gamma = torch.exp(u(math.log(0.7), math.log(1.4)) * s).view(b, 1, 1, 1)
    img = img.clamp(1e-6, 1) ** gamma
    mean = img.mean(dim=(2, 3), keepdim=True)
    contrast = (1 + u(-0.2, 0.2) * s).view(b, 1, 1, 1)
    bright = (u(-0.08, 0.08) * s).view(b, 1, 1, 1)
    img = (img - mean) * contrast + mean + bright
    # random blur or noise on half the batch each
    which = torch.rand(b, generator=g).to(dev)
    if (which < 0.25).any():
        k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], device=dev)
        k = (k / k.sum()).view(1, 1, 1, 5)
        blurred = F.conv2d(F.pad(img, (2, 2, 0, 0), mode="replicate"), k)
        blurred = F.conv2d(F.pad(blurred, (0, 0, 2, 2), mode="replicate"), k.transpose(2, 3))
        sel = (which < 0.25).view(b, 1, 1, 1)
        img = torch.where(sel, blurred, img)
    noisy = (which > 0.75).view(b, 1, 1, 1)
    sigma = (u(0.0, 0.03) * s).view(b, 1, 1, 1)
    noise = torch.randn(img.shape, generator=g).to(dev) * sigma
    img = torch.where(noisy, img + noise, img)
    return img.clamp(0, 1), msk.clamp(0, 1)
