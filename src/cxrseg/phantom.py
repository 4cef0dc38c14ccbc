"""Synthetic PA chest radiographs with exact masks of the five SCR regions.

The phantom stands in for JSRT/SCR data wherever real images may not go: tests, sample
data, demos and documentation. It is **not** derived from any JSRT image. Every case is
drawn deterministically from a seed (:class:`numpy.random.Generator`): position, scale,
a rotation of a few degrees, lung height, heart size, clavicle angle, contrast and gamma
vary from seed to seed.

Anatomy (display polarity: bone and soft tissue bright, lungs dark), in the standard PA
orientation, **left and right being the patient's**: the left lung lies on the image's
right and is a little smaller, because the heart sits to the patient's left.

* body envelope with neck and shoulders, air outside it;
* two lung fields; like SCR, the lung masks exclude the heart, which overlaps the medial
  lower lung fields;
* the heart, an egg-shaped outline whose long axis points down to the patient's left;
* two clavicles: thin S-curved bars across the upper lung fields, medial ends below the
  neck near the midline, lateral ends up and out (they overlap the lungs, as in SCR);
* posterior ribs (bright curved bands, not in any mask), spine and mediastinum;
* smooth low-frequency intensity variation and Gaussian noise.

The module also writes phantoms as files in the real formats (JSRT ``.IMG``, PNG, DICOM)
in the SCR layout, for tests and :mod:`sample_data`.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from .regions import REGIONS

__all__ = [
    "Phantom",
    "make_phantom",
    "is_phantom_case_id",
    "phantom_case_id",
    "write_dicom",
    "write_phantom_case",
    "write_phantom_dataset",
]

#: Pixel spacing (mm) of a phantom of side 1024, as the SCR masks and the JSRT PNGs.
BASE_SPACING_MM = 0.35
#: Side of a JSRT ``.IMG`` file.
JSRT_SIDE = 2048


@dataclass
class Phantom:
    """A synthetic chest radiograph and its exact region masks.

    Attributes
    ----------
    image : ndarray of float32, shape (size, size)
        Display polarity (bone bright, lungs dark), values in [0, 1].
    masks : dict of str to ndarray of bool
        One exact mask per region of :data:`cxrseg.regions.REGIONS`, image shape.
    spacing : tuple of float
        Pixel spacing in mm, (row, col): ``0.35 * 1024 / size``.
    seed : int
        The seed that generated this phantom.
    params : dict
        The random anatomical parameters that were drawn (for inspection only).
    """

    image: np.ndarray
    masks: dict[str, np.ndarray]
    spacing: tuple[float, float]
    seed: int
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        """Image shape (rows, cols)."""
        return tuple(self.image.shape)  # type: ignore[return-value]


# --------------------------------------------------------------------------- geometry
def _catmull_rom(points: np.ndarray, *, n: int = 24, closed: bool = True) -> np.ndarray:
    """Dense uniform Catmull-Rom curve through ``points`` (k, 2), closed or open."""
    p = np.asarray(points, dtype=np.float64)
    if closed:
        ext = np.concatenate([p[-1:], p, p[:2]])
        segs = len(p)
    else:
        ext = np.concatenate([2 * p[:1] - p[1:2], p, 2 * p[-1:] - p[-2:-1]])
        segs = len(p) - 1
    t = np.linspace(0.0, 1.0, n, endpoint=False)[:, None]
    t2, t3 = t * t, t * t * t
    out = []
    for i in range(segs):
        p0, p1, p2, p3 = ext[i], ext[i + 1], ext[i + 2], ext[i + 3]
        out.append(
            0.5
            * (
                2 * p1
                + (-p0 + p2) * t
                + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t2
                + (-p0 + 3 * p1 - 3 * p2 + p3) * t3
            )
        )
    if not closed:
        out.append(p[-1:])
    return np.concatenate(out)


def _fill_polygon(vertices_rc: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Even-odd scanline fill: True where the pixel centre lies inside the polygon.

    ``vertices_rc`` are (row, col) in pixel units, pixel (r, c) centred at (r, c).
    Vectorised: cost is O(rows * edges) for the crossings plus one pass over the
    polygon's bounding box.
    """
    rows, cols = shape
    mask = np.zeros(shape, dtype=bool)
    v = np.asarray(vertices_rc, dtype=np.float64)
    r0 = max(int(math.floor(v[:, 0].min())), 0)
    r1 = min(int(math.ceil(v[:, 0].max())), rows - 1)
    c0 = max(int(math.floor(v[:, 1].min())), 0)
    c1 = min(int(math.ceil(v[:, 1].max())), cols - 1)
    if r1 < r0 or c1 < c0:
        return mask
    y0, x0 = v[:, 0], v[:, 1]
    y1, x1 = np.roll(y0, -1), np.roll(x0, -1)
    rr = np.arange(r0, r1 + 1, dtype=np.float64)[:, None]  # (R, 1)
    # half-open rule so a vertex on a scanline is counted once
    hit = ((y0 <= rr) & (rr < y1)) | ((y1 <= rr) & (rr < y0))
    with np.errstate(divide="ignore", invalid="ignore"):
        xc = x0 + (rr - y0) * (x1 - x0) / (y1 - y0)
    ri, ei = np.nonzero(hit)
    xs = xc[ri, ei]
    width = c1 - c0 + 1
    # first column whose centre is right of the crossing
    idx = np.clip(np.floor(xs).astype(np.int64) + 1 - c0, 0, width)
    counts = np.bincount(ri * (width + 1) + idx, minlength=(r1 - r0 + 1) * (width + 1))
    parity = np.cumsum(counts.reshape(r1 - r0 + 1, width + 1)[:, :width], axis=1) & 1
    mask[r0 : r1 + 1, c0 : c1 + 1] = parity.astype(bool)
    return mask


def _bar_outline(centre: np.ndarray, widths: np.ndarray, *, cap: int = 10) -> np.ndarray:
    """Outline (k, 2) of a bar of varying width around a polyline, with round ends."""
    d = np.gradient(centre, axis=0)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    nrm = np.stack([-d[:, 1], d[:, 0]], axis=1)
    half = (widths / 2.0)[:, None]
    side_a = centre + nrm * half
    side_b = centre - nrm * half

    def cap_pts(i: int, sign: float) -> np.ndarray:
        # semicircle from side_a[i] to side_b[i] bulging along sign * d[i]
        ang = np.linspace(0.0, np.pi, cap + 2)[1:-1][:, None]
        return centre[i] + half[i] * (np.cos(ang) * nrm[i] + sign * np.sin(ang) * d[i])

    return np.concatenate([side_a, cap_pts(-1, 1.0), side_b[::-1], cap_pts(0, -1.0)[::-1]])


# --------------------------------------------------------------------------- anatomy
_RIGHT_LUNG = np.array(  # patient's right lung = image's left; (x, y) normalised
    [
        (0.295, 0.080),  # apex
        (0.370, 0.100),
        (0.425, 0.160),
        (0.450, 0.280),
        (0.460, 0.420),
        (0.468, 0.560),
        (0.472, 0.700),  # cardiophrenic region (hidden by the heart)
        (0.415, 0.745),
        (0.335, 0.720),  # diaphragm dome
        (0.245, 0.765),
        (0.170, 0.840),  # costophrenic angle
        (0.145, 0.690),
        (0.143, 0.480),
        (0.160, 0.300),
        (0.200, 0.165),
        (0.242, 0.105),
    ]
)

_LEFT_LUNG = np.array(  # patient's left lung = image's right; (x, y) normalised
    [
        (0.695, 0.090),  # apex
        (0.625, 0.115),
        (0.583, 0.180),
        (0.572, 0.280),  # aortic knob
        (0.558, 0.380),
        (0.550, 0.500),
        (0.555, 0.650),
        (0.585, 0.770),  # hidden by the heart
        (0.665, 0.780),
        (0.735, 0.750),  # diaphragm dome (lower than the right)
        (0.800, 0.790),
        (0.848, 0.855),  # costophrenic angle
        (0.870, 0.690),
        (0.873, 0.500),
        (0.855, 0.310),
        (0.810, 0.175),
        (0.755, 0.110),
    ]
)


def _transform(points_xy: np.ndarray, p: dict[str, Any], size: int) -> np.ndarray:
    """Normalised anatomical (x, y) -> pixel (row, col) with the case's similarity."""
    c = np.array([0.5, 0.5])
    q = np.asarray(points_xy, dtype=np.float64) - c
    th = math.radians(p["rotation_deg"])
    rot = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    q = (q @ rot.T) * p["scale"] + c + np.array([p["shift_x"], p["shift_y"]])
    return np.stack([q[:, 1] * size - 0.5, q[:, 0] * size - 0.5], axis=1)


def _inverse_grid(p: dict[str, Any], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Anatomical (x, y) of every pixel centre (float32 arrays of the image shape)."""
    ax = (np.arange(size, dtype=np.float32) + 0.5) / size
    px = ax[None, :] - 0.5 - p["shift_x"]
    py = ax[:, None] - 0.5 - p["shift_y"]
    th = math.radians(p["rotation_deg"])
    cs, sn = math.cos(th) / p["scale"], math.sin(th) / p["scale"]
    x = (cs * px + sn * py + 0.5).astype(np.float32)
    y = (-sn * px + cs * py + 0.5).astype(np.float32)
    return x, y


def _draw_params(rng: np.random.Generator) -> dict[str, Any]:
    u = rng.uniform
    return {
        "scale": float(u(0.92, 1.04)),
        "rotation_deg": float(u(-3.0, 3.0)),
        "shift_x": float(u(-0.025, 0.025)),
        "shift_y": float(u(-0.02, 0.03)),
        "lung_height": float(u(0.90, 1.08)),  # vertical stretch of the lung bases
        "lung_width": float(u(0.95, 1.05)),
        "heart_size": float(u(0.88, 1.15)),
        "heart_tilt_deg": float(u(-30.0, -16.0)),
        "heart_shift_x": float(u(-0.015, 0.02)),
        "clavicle_angle": float(u(-0.03, 0.03)),  # lateral end up (-) / down (+)
        "clavicle_height": float(u(-0.02, 0.02)),
        "clavicle_width": float(u(0.028, 0.036)),
        "clavicle_s": float(u(0.008, 0.016)),
        "rib_period": float(u(0.058, 0.068)),
        "rib_phase": float(u(0.0, 1.0)),
        "contrast": float(u(0.85, 1.15)),
        "gamma": float(u(0.8, 1.25)),
        "brightness": float(u(-0.04, 0.04)),
    }


def _lung_points(base: np.ndarray, p: dict[str, Any], *, mid: float) -> np.ndarray:
    pts = base.copy()
    top = pts[:, 1].min()
    pts[:, 1] = top + (pts[:, 1] - top) * p["lung_height"]
    pts[:, 0] = mid + (pts[:, 0] - mid) * p["lung_width"]
    return pts


def _heart_points(p: dict[str, Any]) -> np.ndarray:
    s = p["heart_size"]
    a, b = 0.185 * s, 0.13 * s  # semi-axes (x, y)
    cx, cy = 0.582 + p["heart_shift_x"] + 0.03 * (s - 1), 0.600 + 0.08 * (p["lung_height"] - 1)
    t = np.linspace(0.0, 2 * np.pi, 96, endpoint=False)
    # egg shape: broader towards the apex (image right, down)
    egg = 1.0 + 0.12 * np.cos(t)
    ex, ey = a * np.cos(t) * egg, b * np.sin(t) * (1.0 + 0.08 * np.cos(t))
    th = math.radians(p["heart_tilt_deg"])
    x = cx + ex * math.cos(th) - ey * math.sin(th)
    y = cy - (ex * math.sin(th) + ey * math.cos(th))
    return np.stack([x, y], axis=1)


def _clavicle_centreline(p: dict[str, Any], *, side: str) -> np.ndarray:
    """Centreline (n, 2) from the medial to the lateral end, (x, y) normalised."""
    sign = -1.0 if side == "right" else 1.0  # patient's right = image left
    dy = p["clavicle_height"]
    medial = np.array([0.5 + sign * 0.04, 0.195 + dy])
    lateral = np.array([0.5 + sign * 0.31, 0.100 + dy + p["clavicle_angle"]])
    t = np.linspace(0.0, 1.0, 48)[:, None]
    line = medial + t * (lateral - medial)
    d = lateral - medial
    nrm = np.array([-d[1], d[0]]) / np.linalg.norm(d)
    # S-shape: one bow each way (medial convex forward, lateral concave)
    bow = p["clavicle_s"] * np.sin(2 * np.pi * t) * sign
    return line + bow * nrm


def _clavicle_widths(p: dict[str, Any], n: int) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n)
    # sternal end a little thicker, lateral end a little flatter
    return p["clavicle_width"] * (1.15 - 0.25 * t + 0.1 * np.sin(np.pi * t))


def _body_points(p: dict[str, Any]) -> np.ndarray:
    return np.array(
        [
            (0.385, -0.10),
            (0.39, 0.000),  # neck
            (0.30, 0.030),
            (0.15, 0.050),  # shoulder
            (0.03, 0.085),
            (-0.06, 0.15),
            (-0.06, 1.10),
            (1.06, 1.10),
            (1.06, 0.15),
            (0.97, 0.085),
            (0.85, 0.050),
            (0.70, 0.030),
            (0.61, 0.000),
            (0.615, -0.10),
        ]
    )


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a mask (labelled within its bounding box)."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return mask
    cols = np.flatnonzero(mask.any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    lab, n = ndimage.label(mask[box])
    if n <= 1:
        return mask
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    out = np.zeros_like(mask)
    out[box] = lab == int(np.argmax(sizes))
    return out


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _phantom_masks(p: dict[str, Any], size: int) -> tuple[np.ndarray, dict, np.ndarray, np.ndarray]:
    """Exact polygon masks: the body, the five regions, and each lung including behind the heart."""
    shape = (size, size)

    def fill(points_xy: np.ndarray) -> np.ndarray:
        return _fill_polygon(_transform(points_xy, p, size), shape)

    body = fill(_body_points(p))
    heart = fill(_heart_points(p))
    lung_r_full = fill(_catmull_rom(_lung_points(_RIGHT_LUNG, p, mid=0.5)))
    lung_l_full = fill(_catmull_rom(_lung_points(_LEFT_LUNG, p, mid=0.5)))
    clav = {}
    for side in ("left", "right"):
        c = _clavicle_centreline(p, side=side)
        clav[side] = fill(_bar_outline(c, _clavicle_widths(p, len(c))))
    # like SCR, lung masks exclude the heart; slivers the heart cuts off are dropped
    lung_l = _largest_component(lung_l_full & ~heart)
    lung_r = _largest_component(lung_r_full & ~heart)
    lung_l_full = lung_l | (lung_l_full & heart)
    lung_r_full = lung_r | (lung_r_full & heart)
    masks = {
        "heart": heart,
        "left_clavicle": clav["left"],
        "right_clavicle": clav["right"],
        "left_lung": lung_l,
        "right_lung": lung_r,
    }
    return body, masks, lung_l_full, lung_r_full


def _spine(x: np.ndarray, y: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """Spine + mediastinum: bright vertical band, vertebrae faintly periodic."""
    f32 = np.float32
    return np.exp(-((dx / f32(0.028)) ** 2)) * (
        f32(0.16) + f32(0.03) * np.cos(y * f32(2 * np.pi / 0.05))
    )


def _ribs(y: np.ndarray, dx: np.ndarray, p: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Posterior ribs (curved bands rising laterally from the spine then falling) and the
    soft window of the rib cage they show in."""
    f32 = np.float32
    yy = y - (f32(-0.22) * dx + f32(1.25) * dx * dx)
    yy = yy - f32(0.03)
    phase = (yy - f32(0.2) * yy * yy) / f32(p["rib_period"]) + f32(p["rib_phase"])
    band = f32(0.5) + f32(0.5) * np.cos(phase * f32(2 * np.pi))
    ribs = _smoothstep((band - f32(0.5)) / f32(0.3))
    cage = (
        _smoothstep((dx - f32(0.035)) / f32(0.05))
        * _smoothstep((f32(0.43) - dx) / f32(0.06))
        * _smoothstep((y - f32(0.03)) / f32(0.05))
        * _smoothstep((f32(0.92) - y) / f32(0.08))
    )
    return ribs, cage


def _low_frequency(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth low-frequency variation: a few random separable cosines."""
    f32 = np.float32
    lowfreq = np.zeros((size, size), dtype=f32)
    ax = np.linspace(0.0, 1.0, size, dtype=f32)
    for _ in range(4):
        fx, fy = rng.uniform(0.3, 1.6, size=2)
        ph1, ph2 = rng.uniform(0.0, 2 * np.pi, size=2)
        amp = rng.uniform(0.008, 0.02)
        lowfreq += f32(amp) * np.outer(
            np.cos(f32(2 * np.pi * fy) * ax + f32(ph2)), np.cos(f32(2 * np.pi * fx) * ax + f32(ph1))
        )
    return lowfreq


def _attenuation(p, size, rng, body, masks, lungs_full) -> np.ndarray:
    """Attenuation-like map (larger = brighter in display polarity), edges softened."""
    heart = masks["heart"]
    x, y = _inverse_grid(p, size)
    f32 = np.float32
    att = body.astype(f32) * f32(0.60)
    att -= lungs_full.astype(f32) * f32(0.36)
    att += (lungs_full & heart).astype(f32) * f32(0.30)  # heart in front of the lung fields
    att += (heart & ~lungs_full).astype(f32) * f32(0.05)
    dx = np.abs(x - f32(0.5))
    att += _spine(x, y, dx) * body
    ribs, cage = _ribs(y, dx, p)
    att += ribs * cage * (f32(0.035) + f32(0.05) * lungs_full) * body
    # clavicles (bone over whatever lies behind)
    att += (masks["left_clavicle"] | masks["right_clavicle"]).astype(f32) * f32(0.17)
    att += _low_frequency(rng, size)
    # soft anatomical edges
    return ndimage.gaussian_filter(att, sigma=1.6 * size / 1024.0 + 0.4, mode="nearest")


def _display_image(att, p, size, noise, rng) -> np.ndarray:
    """Contrast, brightness, gamma and noise; clipped to [0, 1]."""
    f32 = np.float32
    img = np.clip(
        (att - f32(0.12)) * f32(1.25 * p["contrast"]) + f32(0.1 + p["brightness"]), 0.0, 1.0
    )
    img = img ** f32(p["gamma"])
    if noise > 0:
        img += rng.standard_normal((size, size), dtype=f32) * f32(noise)
    np.clip(img, 0.0, 1.0, out=img)
    return img


def make_phantom(seed: int = 0, *, size: int = 1024, noise: float = 0.02) -> Phantom:
    """Generate a synthetic PA chest radiograph with exact masks of the five regions.

    Parameters
    ----------
    seed : int
        Seed of the :class:`numpy.random.Generator`; the same seed (and size, noise)
        gives an identical phantom.
    size : int, optional
        Side of the square image in pixels (>= 64). 1024 matches the SCR masks.
    noise : float, optional
        Standard deviation of the additive Gaussian noise (image range [0, 1]).

    Returns
    -------
    Phantom
        ``image`` (float32, [0, 1], display polarity), ``masks`` (bool, all five
        regions), ``spacing`` (``0.35 * 1024 / size`` mm) and ``seed``.

    Examples
    --------
    >>> ph = make_phantom(3, size=256)
    >>> ph.image.shape, ph.image.dtype.name, sorted(ph.masks) == sorted(REGIONS)
    ((256, 256), 'float32', True)
    >>> bool(ph.masks["left_lung"][:, 128:].sum() > ph.masks["left_lung"][:, :128].sum())
    True
    """
    size = int(size)
    if size < 64:
        raise ValueError(f"make_phantom: size must be >= 64 pixels, got {size}")
    if not noise >= 0:
        raise ValueError(f"make_phantom: noise must be >= 0, got {noise}")
    rng = np.random.default_rng(seed)
    p = _draw_params(rng)
    body, masks, lung_l_full, lung_r_full = _phantom_masks(p, size)
    att = _attenuation(p, size, rng, body, masks, lung_r_full | lung_l_full)
    img = _display_image(att, p, size, noise, rng)
    spacing = BASE_SPACING_MM * 1024.0 / size
    return Phantom(
        image=img.astype(np.float32, copy=False),
        masks={r: masks[r] for r in REGIONS},
        spacing=(spacing, spacing),
        seed=int(seed),
        params=p,
    )


# --------------------------------------------------------------------------- writing
_PREFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def phantom_case_id(index: int, *, prefix: str = "PHANTOM") -> str:
    """Case id of the ``index``-th phantom: ``PHANTOM001``, ``PHANTOM002``, ...

    Phantom ids never look like JSRT ids (``JPCLNnnn`` / ``JPCNNnnn``).
    """
    if not _PREFIX_RE.match(str(prefix)):
        raise ValueError(
            f"phantom case id prefix {prefix!r}: expected letters, digits, '_' or '-', "
            "starting with a letter or digit (no path separators or '..')"
        )
    cid = f"{prefix}{int(index):03d}"
    if cid.upper().startswith(("JPCLN", "JPCNN")):
        raise ValueError(f"phantom case id {cid!r} must not look like a JSRT case id")
    return cid


_DEFAULT_ID_RE = re.compile(r"^PHANTOM\d{3,}$")


def is_phantom_case_id(case_id: str | None) -> bool:
    """Whether ``case_id`` is a phantom's id with the default prefix (``PHANTOM001``, ...),
    as in the bundled ``sample_data/`` and ``cxrseg samples`` output."""
    return bool(_DEFAULT_ID_RE.match(str(case_id or "")))


def _to_uint(image01: np.ndarray, maxval: int) -> np.ndarray:
    a = np.asarray(image01, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("image has NaN or infinite values")
    return np.rint(np.clip(a, 0.0, 1.0) * maxval).astype(np.uint16)


def write_dicom(
    image01: np.ndarray,
    path: str | os.PathLike,
    *,
    monochrome1: bool = False,
    spacing: tuple[float, float] | float | None = (BASE_SPACING_MM, BASE_SPACING_MM),
    bits_stored: int = 12,
    rescale: tuple[float, float] = (1.0, 0.0),
    window: bool = True,
    patient_id: str = "PHANTOM",
    patient_name: str | None = None,
) -> Path:
    """Write a 2-D image in [0, 1] as an uncompressed 16-bit DICOM CR file (atomic).

    Parameters
    ----------
    image01 : ndarray, shape (rows, cols)
        Display polarity (bone bright), values in [0, 1].
    path : path-like
        Output file (``.dcm`` customary); parent folders are created.
    monochrome1 : bool, optional
        Store as MONOCHROME1 (stored values inverted: bone dark), as many CR/DR
        systems do; readers must invert it back.
    spacing : (float, float) or float or None, optional
        PixelSpacing in mm (row, col); ``None`` leaves the tag out.
    bits_stored : int, optional
        Bits stored (<= 16); values span ``0 .. 2**bits_stored - 1``.
    rescale : (float, float), optional
        RescaleSlope and RescaleIntercept written into the header (the stored values
        are not changed by them).
    window : bool, optional
        Write a full-range linear VOI window (WindowCenter/WindowWidth covering
        ``0 .. 2**bits_stored - 1`` after rescale), so that readers map the stored range
        onto [0, 1] exactly; without it readers fall back to min-max scaling.
    patient_id : str, optional
        PatientID.
    patient_name : str, optional
        PatientName, a DICOM person name (``family^given``); default ``"Phantom^<patient_id>"``.

    Returns
    -------
    Path
        The written file.
    """
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    if not 1 <= int(bits_stored) <= 16:
        raise ValueError(f"bits_stored must be in 1..16, got {bits_stored}")
    maxval = (1 << int(bits_stored)) - 1
    arr = _to_uint(image01, maxval)
    if monochrome1:
        arr = (maxval - arr).astype(np.uint16)
    path = Path(path)
    digest = hashlib.sha256(arr.tobytes()).hexdigest()
    entropy = [digest, str(monochrome1), str(spacing), patient_id]

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=entropy + ["sop"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=entropy + ["study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=entropy + ["series"])
    ds.Modality = "CR"
    ds.PatientID = patient_id
    ds.PatientName = patient_name if patient_name is not None else f"Phantom^{patient_id}"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.ImageComments = "synthetic phantom (cxrseg.phantom), not patient data"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.Rows, ds.Columns = arr.shape
    ds.BitsAllocated = 16
    ds.BitsStored = int(bits_stored)
    ds.HighBit = int(bits_stored) - 1
    ds.PixelRepresentation = 0
    ds.RescaleSlope = f"{float(rescale[0]):g}"
    ds.RescaleIntercept = f"{float(rescale[1]):g}"
    ds.RescaleType = "US"
    if window:
        slope, icpt = float(rescale[0]), float(rescale[1])
        lo, hi = sorted((icpt, slope * (maxval + 1) + icpt))
        ds.WindowCenter = f"{(lo + hi) / 2:g}"
        ds.WindowWidth = f"{hi - lo:g}"
    if spacing is not None:
        sp = (
            (float(spacing), float(spacing)) if np.isscalar(spacing) else tuple(map(float, spacing))
        )
        ds.PixelSpacing = [f"{sp[0]:.6g}", f"{sp[1]:.6g}"]
        ds.ImagerPixelSpacing = ds.PixelSpacing
    ds.PixelData = arr.astype("<u2").tobytes()

    from .io import atomic_write

    return atomic_write(path, lambda fh: pydicom.dcmwrite(fh, ds, enforce_file_format=True))


def _write_png8(image01: np.ndarray, path: Path) -> Path:
    from PIL import Image

    from .io import atomic_write

    arr = np.rint(np.clip(image01, 0.0, 1.0) * 255).astype(np.uint8)
    return atomic_write(path, lambda fh: Image.fromarray(arr).save(fh, format="PNG"))


def _jsrt_image(image01: np.ndarray) -> np.ndarray:
    """Upsample (pixel replication) a square phantom image to the 2048 JSRT grid."""
    side = image01.shape[0]
    if JSRT_SIDE % side:
        raise ValueError(f"an .IMG phantom needs a size dividing {JSRT_SIDE}, got {side}")
    k = JSRT_SIDE // side
    return np.repeat(np.repeat(image01, k, axis=0), k, axis=1)


def write_phantom_case(
    root: str | os.PathLike,
    case_id: str,
    seed: int,
    *,
    image_format: str = "img",
    size: int = 1024,
    noise: float = 0.02,
    monochrome1: bool = False,
) -> Path:
    """Write one phantom case in the SCR layout under ``root``.

    Writes ``root/images/<case_id>.<ext>`` and ``root/masks/<region>/<case_id>.gif``
    (masks at ``size`` x ``size``, 1024 by default as in SCR).

    Parameters
    ----------
    root : path-like
        Dataset root (created if missing).
    case_id : str
        Case identifier, e.g. ``"PHANTOM001"``.
    seed : int
        Phantom seed.
    image_format : {"img", "png", "dcm"}, optional
        ``"img"``: JSRT raw 2048 x 2048 12-bit big-endian (the phantom upsampled by
        pixel replication, 0.175 mm); ``"png"``: 8-bit PNG at ``size``; ``"dcm"``:
        16-bit DICOM at ``size`` (MONOCHROME1 if ``monochrome1``).
    size : int, optional
        Phantom side (mask grid). For ``"img"`` it must divide 2048.
    noise : float, optional
        Noise level passed to :func:`make_phantom`.
    monochrome1 : bool, optional
        For ``"dcm"`` only: store MONOCHROME1.

    Returns
    -------
    Path
        The image file written.
    """
    from .io import write_jsrt_img, write_mask

    fmt = str(image_format).lower().lstrip(".")
    if fmt not in ("img", "png", "dcm"):
        raise ValueError(f"image_format must be 'img', 'png' or 'dcm', got {image_format!r}")
    if str(case_id).upper().startswith(("JPCLN", "JPCNN")):
        raise ValueError(f"phantom case id {case_id!r} must not look like a JSRT case id")
    root = Path(root)
    ph = make_phantom(seed, size=size, noise=noise)
    images = root / "images"
    if fmt == "img":
        out = write_jsrt_img(_jsrt_image(ph.image), images / f"{case_id}.IMG")
    elif fmt == "png":
        out = _write_png8(ph.image, images / f"{case_id}.png")
    else:
        out = write_dicom(
            ph.image,
            images / f"{case_id}.dcm",
            monochrome1=monochrome1,
            spacing=ph.spacing,
            patient_id=case_id,
        )
    for region in REGIONS:
        write_mask(ph.masks[region], root / "masks" / region / f"{case_id}.gif")
    return Path(out)


def write_phantom_dataset(
    root: str | os.PathLike,
    n: int,
    *,
    seed: int = 0,
    image_format: str = "png",
    prefix: str = "PHANTOM",
    size: int = 1024,
    noise: float = 0.02,
) -> list[Path]:
    """Write ``n`` phantom cases (ids ``<prefix>001`` ...; seeds ``seed``, ``seed+1``, ...).

    Parameters
    ----------
    root : path-like
        Dataset root (SCR layout: ``images/`` and ``masks/<region>/``).
    n : int
        Number of cases.
    seed : int, optional
        Seed of the first case.
    image_format : {"png", "img", "dcm"}, optional
        See :func:`write_phantom_case`.
    prefix : str, optional
        Case id prefix.
    size, noise : optional
        Passed to :func:`write_phantom_case`.

    Returns
    -------
    list of Path
        The image files, in case order.
    """
    if int(n) < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return [
        write_phantom_case(
            root,
            phantom_case_id(i + 1, prefix=prefix),
            seed + i,
            image_format=image_format,
            size=size,
            noise=noise,
        )
        for i in range(int(n))
    ]
