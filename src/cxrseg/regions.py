"""The five SCR regions, their label values, colours and spellings.

Left and right are always the **patient's** sides: on a PA chest radiograph in the
standard orientation the left lung and the left clavicle lie on the *image's right*.
"""

from __future__ import annotations

from collections.abc import Iterable

#: Canonical region names, in label order (label value = index + 1).
REGIONS: tuple[str, ...] = (
    "heart",
    "left_clavicle",
    "right_clavicle",
    "left_lung",
    "right_lung",
)

#: Label value of each region in a napari Labels layer (0 is background).
LABEL_VALUES: dict[str, int] = {r: i + 1 for i, r in enumerate(REGIONS)}

#: Human-readable names (patient's side spelled out).
DISPLAY_NAMES: dict[str, str] = {
    "heart": "heart",
    "left_clavicle": "left clavicle (patient)",
    "right_clavicle": "right clavicle (patient)",
    "left_lung": "left lung (patient)",
    "right_lung": "right lung (patient)",
}

#: Short names for table columns and one-line summaries (patient's side, as everywhere).
SHORT_NAMES: dict[str, str] = {
    "heart": "heart",
    "left_clavicle": "L clav",
    "right_clavicle": "R clav",
    "left_lung": "L lung",
    "right_lung": "R lung",
}

#: RGBA colours (0-1) per region, from the Okabe-Ito palette (told apart with every common
#: colour-vision deficiency): warm for the patient's left, cool for the right, reddish
#: purple for the heart. Red and violet-blue are kept free for false positives/negatives.
COLORS: dict[str, tuple[float, float, float, float]] = {
    "heart": (0.80, 0.475, 0.655, 1.0),  # reddish purple #CC79A7
    "left_clavicle": (0.902, 0.624, 0.0, 1.0),  # orange #E69F00
    "right_clavicle": (0.0, 0.62, 0.451, 1.0),  # bluish green #009E73
    "left_lung": (0.941, 0.894, 0.259, 1.0),  # yellow #F0E442
    "right_lung": (0.337, 0.706, 0.914, 1.0),  # sky blue #56B4E9
}

#: Order in which regions are painted into a single Labels image: later regions win
#: where masks overlap (clavicles lie over the lung fields, so they are painted last).
PAINT_ORDER: tuple[str, ...] = ("left_lung", "right_lung", "heart", "left_clavicle", "right_clavicle")

#: Region groups accepted wherever a list of regions is.
GROUPS: dict[str, tuple[str, ...]] = {
    "all": REGIONS,
    "lungs": ("left_lung", "right_lung"),
    "clavicles": ("left_clavicle", "right_clavicle"),
}

#: Which reference-figure group a region belongs to (van Ginneken 2006 reports groups).
REGION_GROUP: dict[str, str] = {
    "heart": "heart",
    "left_clavicle": "clavicles",
    "right_clavicle": "clavicles",
    "left_lung": "lungs",
    "right_lung": "lungs",
}


def canonical_region(name: str) -> str:
    """Return the canonical name of a region spelled in any common way.

    Accepts ``"left clavicle"``, ``"left_clavicle"``, ``"Left-Clavicle"``, ``"leftclavicle"``.

    Raises
    ------
    ValueError
        If the name is not one of the five regions.
    """
    key = "".join(ch for ch in str(name).lower() if ch.isalnum())
    for r in REGIONS:
        if key == r.replace("_", ""):
            return r
    raise ValueError(
        f"unknown region {name!r}: expected one of {', '.join(REGIONS)} "
        f"(spaces, hyphens or underscores), or a group: {', '.join(GROUPS)}"
    )


def folder_spellings(region: str) -> tuple[str, ...]:
    """Folder names a region may have on disk: official SCR (spaces) and underscores."""
    r = canonical_region(region)
    return (r, r.replace("_", " "), r.replace("_", "-"))


def parse_regions(spec: str | Iterable[str] | None) -> tuple[str, ...]:
    """Parse a region selection into canonical names, in :data:`REGIONS` order.

    ``None``, ``"all"`` -> all five; ``"lungs"``, ``"clavicles"``; a comma-separated
    string or an iterable of names/groups.
    """
    if spec is None:
        return REGIONS
    items = [s for s in spec.replace(";", ",").split(",")] if isinstance(spec, str) else list(spec)
    chosen: set[str] = set()
    for item in items:
        item = str(item).strip()
        if not item:
            continue
        if item.lower() in GROUPS:
            chosen.update(GROUPS[item.lower()])
        else:
            chosen.add(canonical_region(item))
    if not chosen:
        raise ValueError(f"no region selected in {spec!r}: expected names from {', '.join(REGIONS)}")
    return tuple(r for r in REGIONS if r in chosen)
