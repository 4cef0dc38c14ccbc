"""The colours of the review workspace, in one place, and the legend that explains them.

* Regions: :data:`cxrseg.regions.COLORS` (Okabe-Ito, safe with the common colour-vision
  deficiencies): orange/yellow for the patient's left, green/sky blue for the right,
  reddish purple for the heart.
* Errors of the prediction against the ground truth: false positives red, false negatives
  violet-blue -- hues no region uses (:func:`hue_distance` of at least 30 degrees from
  every region colour, tested), so an error is never mistaken for a region.
* Ground truth: an outline in its own colour (white), never filled, so it reads as "the
  reference" over the filled, region-coloured prediction.
"""

from __future__ import annotations

import colorsys
import html

from cxrseg.regions import COLORS, DISPLAY_NAMES, LABEL_VALUES, REGIONS

__all__ = [
    "REGION_COLORS",
    "ERROR_COLORS",
    "GT_COLOR",
    "hue_distance",
    "hex_color",
    "errors_colormap",
    "ground_truth_colormap",
    "legend_html",
]

#: Region -> RGBA (0-1).
REGION_COLORS = dict(COLORS)
#: False positive / false negative overlay colours.
ERROR_COLORS = {"fp": (0.95, 0.10, 0.10, 1.0), "fn": (0.45, 0.30, 1.0, 1.0)}
#: Ground-truth outline colour.
GT_COLOR = (1.0, 1.0, 1.0, 1.0)


def hue_distance(a, b) -> float:
    """Angle in degrees (0-180) between the hues of two RGB(A) colours."""
    ha = colorsys.rgb_to_hsv(*a[:3])[0] * 360.0
    hb = colorsys.rgb_to_hsv(*b[:3])[0] * 360.0
    d = abs(ha - hb) % 360.0
    return min(d, 360.0 - d)


def hex_color(rgba) -> str:
    """``(r, g, b[, a])`` in 0-1 -> ``"#rrggbb"``."""
    return "#" + "".join(f"{int(round(float(c) * 255)):02x}" for c in rgba[:3])


def errors_colormap() -> dict:
    """Label value -> RGBA of the error overlay (1 false positive, 2 false negative)."""
    return {0: (0.0, 0.0, 0.0, 0.0), 1: ERROR_COLORS["fp"], 2: ERROR_COLORS["fn"], None: (0.5, 0.5, 0.5, 1.0)}


def ground_truth_colormap() -> dict:
    """Label value -> RGBA of the ground-truth layer: every region in :data:`GT_COLOR`."""
    cmap: dict = {0: (0.0, 0.0, 0.0, 0.0), None: GT_COLOR}
    for r in REGIONS:
        cmap[LABEL_VALUES[r]] = GT_COLOR
    return cmap


def _swatch(rgba, *, outline: bool = False) -> str:
    c = hex_color(rgba)
    if outline:
        return f"<span style='color:{c}'>&#9634;</span>"  # a hollow square
    return f"<span style='color:{c}'>&#9632;</span>"  # a filled square


def legend_html() -> str:
    """The legend as rich text for a QLabel: region swatches, errors, ground truth."""
    regions = " ".join(
        f"{_swatch(REGION_COLORS[r])}&nbsp;{html.escape(DISPLAY_NAMES[r].replace(' (patient)', ''))}"
        for r in REGIONS
    )
    return (
        f"{regions}<br>"
        f"{_swatch(ERROR_COLORS['fp'])}&nbsp;false positive "
        f"{_swatch(ERROR_COLORS['fn'])}&nbsp;false negative "
        f"{_swatch(GT_COLOR, outline=True)}&nbsp;ground truth (outline)"
    )
