"""Layer naming and the small layer helpers of the session (no napari internals here).

Layer names (:func:`layer_name`): image ``"<case>"``, ground truth ``"<case> ground truth"``,
prediction labels ``"<case> prediction"``, heatmap ``"<case> heatmap <region>"``, false
positive/negative overlay ``"<case> errors"``, editable mask ``"<case> edit <region>"``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from cxrseg.regions import COLORS, canonical_region

from .._colors import ERROR_COLORS, errors_colormap

__all__ = [
    "LAYER_KINDS",
    "ERROR_COLORS",
    "layer_name",
    "is_case_layer",
    "display_stride",
    "heat_display",
    "_heat_colormap",
    "_errors_colormap",
]

#: Kinds of layers a session creates or recognises (see :func:`layer_name`).
LAYER_KINDS = ("image", "ground_truth", "prediction", "heatmap", "errors", "edit")

_SUFFIX = {
    "image": "",
    "ground_truth": " ground truth",
    "gt": " ground truth",
    "prediction": " prediction",
    "heatmap": " heatmap",
    "errors": " errors",
    "edit": " edit",
}



def layer_name(case_id: str | None, kind: str, region: str | None = None) -> str:
    """Name of a layer of a case.

    ``kind`` is one of ``image``, ``ground_truth`` (``gt``), ``prediction``,
    ``heatmap`` and ``edit`` (these two need ``region``), ``errors``.
    """
    if case_id is None:
        raise ValueError("no case is loaded")
    kind = kind.replace(" ", "_").lower()
    if kind not in _SUFFIX:
        raise ValueError(f"unknown layer kind {kind!r}: expected one of {', '.join(LAYER_KINDS)}")
    name = f"{case_id}{_SUFFIX[kind]}"
    if kind in ("heatmap", "edit"):
        if region is None:
            raise ValueError(f"a {kind} layer needs a region")
        name += f" {canonical_region(region)}"
    return name


def is_case_layer(name: str, case_id: str) -> bool:
    """Whether ``name`` is one of the layer names of ``case_id`` (by the naming scheme)."""
    if name == case_id:
        return True
    if not name.startswith(case_id + " "):
        return False
    rest = name[len(case_id):]
    return any(rest == s or rest.startswith(s + " ") for s in _SUFFIX.values() if s)


def display_stride(shape, max_side: int | None) -> int:
    """Stride that brings ``shape`` to at most ``max_side`` pixels a side (1: none)."""
    if not max_side:
        return 1
    return max(1, -(-max(shape) // int(max_side)))


def heat_display(probs: Mapping[str, np.ndarray], stride: int) -> dict[str, np.ndarray]:
    """Probability maps subsampled for display (the session keeps the full ones): strided
    views, copied once, into the heatmap layers' own arrays."""
    if stride <= 1:
        return dict(probs)
    return {r: p[::stride, ::stride] for r, p in probs.items()}


def _heat_colormap(region: str):
    from napari.utils.colormaps import Colormap

    r, g, b, _ = COLORS[region]
    return Colormap([[0.0, 0.0, 0.0, 1.0], [r, g, b, 1.0]], name=f"cxrseg heat {region}",
                    display_name=f"cxrseg {region}")


_errors_colormap = errors_colormap
