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


def output_masks(prob, info: PadInfo, thresholds) -> np.ndarray:
    """Binary masks at the input's shape: ``output_to_image(prob, info) >= thresholds``.

    Parameters
    ----------
    prob : torch.Tensor, shape (R, S, S)
        One image's probabilities at the model's resolution.
    info : PadInfo
    thresholds : sequence of float
        One per channel.

    Returns
    -------
    ndarray of bool, shape (R, rows, cols)

    Notes
    -----
    A bilinear value is a weighted mean of two neighbours per axis, so it can reach a
    threshold only next to a model pixel that does. When the padded square's side is the
    model's size times a power of two (1024 or 2048 px films and a 256 or 512 px model),
    each region is therefore resized only around its pixels above the threshold, with a
    margin of two model pixels: the same sampling positions and weights as the full
    resize (exact in floating point for these factors), at a fraction of the cost. The
    resize of a small crop can take another loop of torch's kernel, whose rounding may
    differ from the full resize's in the last bit of float32: a mask pixel can differ only
    where the probability lies within that bit of the threshold. Other sizes take the full
    resize.
    """
    import torch
    import torch.nn.functional as F

    p = prob.float()
    n_reg, size = int(p.shape[0]), int(p.shape[-1])
    th = [float(t) for t in thresholds]
    if len(th) != n_reg:
        raise ValueError(f"{n_reg} channels but {len(th)} thresholds")
    side = info.side
    k = side // size
    if side % size or k & (k - 1) or p.device.type != "cpu":
        full = output_to_image(p, info)
        tt = torch.tensor(th, dtype=full.dtype, device=full.device).view(-1, 1, 1)
        return (full >= tt).cpu().numpy()
    out = np.zeros((n_reg, info.rows, info.cols), dtype=bool)
    for j in range(n_reg):
        hit = p[j] >= th[j]
        rows = torch.nonzero(hit.any(dim=1)).flatten()
        if rows.numel() == 0:
            continue
        cols = torch.nonzero(hit.any(dim=0)).flatten()
        r0, r1 = max(int(rows[0]) - 2, 0), min(int(rows[-1]) + 3, size)
        c0, c1 = max(int(cols[0]) - 2, 0), min(int(cols[-1]) + 3, size)
        crop = p[j, r0:r1, c0:c1]
        if k > 1:
            crop = F.interpolate(
                crop[None, None], size=((r1 - r0) * k, (c1 - c0) * k), mode="bilinear", align_corners=False
            )[0, 0]
        m = (crop >= th[j]).numpy()
        # padded-square rows/cols of the crop -> the image's, clipped to it
        y0, x0 = r0 * k - info.top, c0 * k - info.left
        ys, xs = max(y0, 0), max(x0, 0)
        ye, xe = min(y0 + m.shape[0], info.rows), min(x0 + m.shape[1], info.cols)
        if ye > ys and xe > xs:
            out[j, ys:ye, xs:xe] = m[ys - y0 : ye - y0, xs - x0 : xe - x0]
    return out


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
