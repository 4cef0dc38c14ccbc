"""Window/level of a chest radiograph from its own histogram (GUI-free).

A radiograph's grey values depend on the detector, the exposure and the file format, so
one fixed contrast range fits no image: the bones of one look washed out, the lungs of
the next black. :func:`auto_window` picks ``(low, high)`` display limits from
percentiles of the pixels *inside the body*: the outer margin (collimator edges, burnt-in
labels, air beside the patient) is left out, so it cannot stretch the range. Presets
(:data:`PRESETS`) are percentile pairs of that same histogram, so "bone" means "the
brightest part of this image's body" on every image, whatever its units.

Examples
--------
>>> import numpy as np
>>> img = np.zeros((100, 100), np.float32)
>>> img[10:90, 10:90] = np.linspace(0.2, 0.8, 80)[None, :]
>>> lo, hi = auto_window(img)
>>> 0.19 < lo < 0.25 and 0.75 < hi < 0.81
True
>>> window_to_limits(*limits_to_window(lo, hi)) == (lo, hi)
True
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["PRESETS", "PRESET_HELP", "body_pixels", "auto_window", "limits_to_window", "window_to_limits"]

#: Display presets: (low, high) percentiles of the body's histogram. On chest films the
#: lung fields are the dark part of the body, the heart, mediastinum and diaphragm the
#: bright part, and the clavicles and ribs lie *over* the lungs, a little brighter than
#: them. ``lung`` spreads the dark lung fields over the grey scale (vessels, nodules);
#: ``bone`` narrows the window onto the lung-to-bone range, so clavicles and ribs stand
#: out from the lung behind them; ``soft tissue`` the bright part (heart, mediastinum,
#: diaphragm); ``auto`` the whole body; ``full`` every pixel of the image.
PRESETS: Mapping[str, tuple[float, float]] = {
    "auto": (1.0, 99.0),
    "lung": (0.5, 65.0),
    "soft tissue": (40.0, 99.5),
    "bone": (10.0, 80.0),
    "full": (0.0, 100.0),
}

#: One line per preset, for tooltips.
PRESET_HELP: Mapping[str, str] = {
    "auto": "the whole body: 1st-99th percentile of the pixels inside the body",
    "lung": "dark lung fields spread out: vessels, nodules, lung edges",
    "soft tissue": "heart, mediastinum and diaphragm",
    "bone": "clavicles and ribs against the lung behind them (a narrower window)",
    "full": "every grey value of the image (no clipping)",
}


def body_pixels(image: np.ndarray, *, margin: float = 0.08, max_pixels: int = 250_000) -> np.ndarray:
    """The pixels of the central part of a radiograph, subsampled, as a flat float array.

    Parameters
    ----------
    image : (H, W) array
        The radiograph (any numeric dtype).
    margin : float
        Fraction of each side left out (collimator edges, labels, air beside the body).
    max_pixels : int
        Sample at most about this many pixels (a regular stride), which keeps the
        percentiles of a 2048 x 2048 image to a few milliseconds.

    Raises
    ------
    ValueError
        ``image`` is not 2-D or is empty.
    """
    a = np.asarray(image)
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"expected a non-empty 2-D image, got shape {a.shape}")
    if not 0.0 <= margin < 0.5:
        raise ValueError(f"margin must be in [0, 0.5), got {margin}")
    h, w = a.shape
    dy, dx = int(h * margin), int(w * margin)
    core = a[dy : h - dy or h, dx : w - dx or w]
    stride = max(1, int(np.ceil(np.sqrt(core.size / max(1, int(max_pixels))))))
    px = core[::stride, ::stride].astype(np.float32, copy=False).ravel()
    px = px[np.isfinite(px)]
    # constant borders that reach into the core (padding, burnt-in blocks) are not body
    if px.size:
        lo, hi = float(px.min()), float(px.max())
        inner = px[(px > lo) & (px < hi)]
        if inner.size >= 0.5 * px.size:
            px = inner
    return px


def auto_window(
    image: np.ndarray, *, preset: str = "auto", percentiles: tuple[float, float] | None = None,
    margin: float = 0.08,
) -> tuple[float, float]:
    """Display limits ``(low, high)`` of a radiograph from percentiles of its body pixels.

    Parameters
    ----------
    image : (H, W) array
    preset : str
        One of :data:`PRESETS` (ignored when ``percentiles`` is given).
    percentiles : (float, float), optional
        Low and high percentile (0-100) of the body's histogram.
    margin : float
        See :func:`body_pixels`.

    Returns
    -------
    (float, float)
        ``low < high`` always (a flat image gets a range of width 1 around its value).

    Raises
    ------
    ValueError
        Unknown preset, percentiles out of order, or not a 2-D image.
    """
    if percentiles is None:
        if preset not in PRESETS:
            raise ValueError(f"unknown window preset {preset!r}; expected one of {', '.join(PRESETS)}")
        percentiles = PRESETS[preset]
    p_lo, p_hi = (float(p) for p in percentiles)
    if not 0.0 <= p_lo < p_hi <= 100.0:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles}")
    if preset == "full" and percentiles == PRESETS["full"]:
        a = np.asarray(image, dtype=np.float32)
        if a.ndim != 2 or a.size == 0:
            raise ValueError(f"expected a non-empty 2-D image, got shape {a.shape}")
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
    else:
        px = body_pixels(image, margin=margin)
        if px.size == 0:
            return 0.0, 1.0
        lo, hi = (float(v) for v in np.percentile(px, [p_lo, p_hi]))
    if not hi > lo:
        lo, hi = lo - 0.5, lo + 0.5
    return lo, hi


def limits_to_window(low: float, high: float) -> tuple[float, float]:
    """``(low, high)`` -> ``(window width, level)`` (the radiologist's terms)."""
    return float(high) - float(low), (float(high) + float(low)) / 2.0


def window_to_limits(width: float, level: float) -> tuple[float, float]:
    """``(window width, level)`` -> ``(low, high)``; a width <= 0 raises ``ValueError``."""
    if not width > 0:
        raise ValueError(f"window width must be > 0, got {width}")
    return float(level) - float(width) / 2.0, float(level) + float(width) / 2.0
