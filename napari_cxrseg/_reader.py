"""napari reader: chest radiographs, SCR masks, case folders and dataset roots.

:func:`napari_get_reader` decides quickly, from the path alone (and a bounded look into
folders), whether it can read something; it never raises and returns ``None`` otherwise.
The returned reader does the actual reading with :mod:`cxrseg.io` and
:mod:`cxrseg.dataset`; their :class:`~cxrseg.io.CXRSegIOError` (naming the file and what
was expected) propagates so napari can show it.

What is read
------------
* an image file (JSRT ``.IMG``, DICOM, PNG/JPEG/TIFF/BMP/GIF): an Image layer named after
  the case, scaled by the pixel spacing in mm, plus a ``"<case> ground truth"`` Labels
  layer when SCR masks are found for it (``../masks/<region>/<case>.gif`` and the other
  layouts of :func:`cxrseg.dataset.find_case_files`);
* a mask file (``masks/<region>/<case>.gif|png`` or ``<region>.gif`` in a case folder): a
  Labels layer holding that region's label value, laid over its image when that is found;
* a case folder (one image and its masks) or a dataset root: its first case (the first
  with masks), image and ground truth; the layers' metadata say how many cases there were;
* a list of any of these.

Nothing in a folder cxrseg wrote (``cxrseg predict`` output, a corrections store, a
working folder: they hold :data:`cxrseg.workspace.OUTPUT_MARKER`) is read as ground
truth: such a folder is not offered as a dataset, and a mask file opened from it becomes
a layer named ``"<case> <region> (cxrseg output)"`` whose metadata say
``ground_truth: False``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cxrseg.dataset import IMAGE_PREFERENCE, normalise_case_id
from cxrseg.io import (
    IMAGE_SUFFIXES,
    JSRT_NBYTES,
    JSRT_SHAPE,
    JSRT_SPACING,
    MASK_SUFFIXES,
    CXRSegIOError,
    is_dicom,
    is_hidden,
    read_image,
    read_mask,
)
from cxrseg.regions import canonical_region
from cxrseg.workspace import output_root_of

from ._layers import GROUND_TRUTH_SUFFIX, ground_truth_layer_tuple, image_layer_tuple

__all__ = ["napari_get_reader", "read_cxr"]

log = logging.getLogger(__name__)

LayerData = tuple[Any, dict, str]

#: Folder names that hold masks (never opened as images).
_MASKS = "masks"
#: Bounds of the look into a folder done by napari_get_reader.
_SCAN_DEPTH = 2
_SCAN_ENTRIES = 5000


def _region_or_none(name: str) -> str | None:
    try:
        return canonical_region(name)
    except ValueError:
        return None


def _mask_region(p: Path) -> str | None:
    """The region of a mask file, from its place (``masks/<region>/``) or its name."""
    if p.suffix.lower() not in MASK_SUFFIXES:
        return None
    if p.parent.parent.name.lower() == _MASKS:
        region = _region_or_none(p.parent.name)
        if region is not None:
            return region
    return _region_or_none(p.stem)


def _looks_like_dataset(d: Path) -> bool:
    """Whether a folder holds an image file within two levels (bounded, no reading)."""
    if d.name.lower() == _MASKS or d.parent.name.lower() == _MASKS:
        return False
    queue = [(d, 0)]
    seen = 0
    while queue:
        cur, depth = queue.pop(0)
        try:
            entries = sorted(os.scandir(cur), key=lambda e: e.name)
        except OSError:
            continue
        for e in entries:
            seen += 1
            if seen > _SCAN_ENTRIES:
                return False
            if is_hidden(e.name):
                continue
            try:
                if e.is_dir():
                    if depth < _SCAN_DEPTH and e.name.lower() != _MASKS:
                        queue.append((Path(e.path), depth + 1))
                    continue
                if not e.is_file():
                    continue
            except OSError:
                continue
            stem, ext = os.path.splitext(e.name)
            ext = ext.lower()
            if ext in IMAGE_SUFFIXES and not (ext in MASK_SUFFIXES and _region_or_none(stem)):
                return True
    return False


def _classify(path: Any) -> str | None:
    """``"image"``, ``"mask"``, ``"folder"`` or ``None`` (not for this reader)."""
    if not isinstance(path, (str, os.PathLike)):
        return None
    p = Path(path).expanduser()
    if p.is_dir():
        if output_root_of(p) is not None:
            return None  # cxrseg's own output: not a dataset with ground truth
        return "folder" if _looks_like_dataset(p) else None
    if not p.is_file():
        return None
    suffix = p.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "mask" if _mask_region(p) else "image"
    if suffix == "" and is_dicom(p):
        return "image"
    return None


def napari_get_reader(path: str | Sequence[str]) -> Callable[[Any], list[LayerData]] | None:
    """Return :func:`read_cxr` if this plugin can read ``path``, else ``None``.

    Never raises. ``path`` may be a string, a path or a list of them (then every item
    must be readable).
    """
    try:
        if isinstance(path, (list, tuple)):
            if not path or any(_classify(p) is None for p in path):
                return None
            return read_cxr
        return read_cxr if _classify(path) is not None else None
    except Exception:  # never raise from the get-reader hook
        return None


def read_cxr(path: str | Sequence[str]) -> list[LayerData]:
    """Read a path or a list of paths into napari layer data tuples.

    Raises
    ------
    CXRSegIOError
        Unreadable or invalid files; the message names the file.
    """
    if isinstance(path, (list, tuple)):
        out: list[LayerData] = []
        for p in path:
            out.extend(read_cxr(p))
        return out
    p = Path(path).expanduser()
    kind = _classify(p)
    try:
        if kind == "folder":
            return _read_folder(p)
        if kind == "mask":
            return _read_mask_file(p)
        if kind == "image":
            return _read_image_file(p)
    except CXRSegIOError:
        raise
    except Exception as exc:  # unexpected: still name the file
        raise CXRSegIOError(f"{p}: cannot read ({type(exc).__name__}: {exc})") from exc
    if not p.exists():
        raise CXRSegIOError(f"{p}: no such file or folder")
    raise CXRSegIOError(
        f"{p}: not a chest radiograph, mask, case folder or dataset folder "
        f"(expected {', '.join(IMAGE_SUFFIXES)} files)"
    )


# ----------------------------------------------------------------------------- cases
def _case_layers(case, *, extra: dict[str, Any] | None = None) -> list[LayerData]:
    """Image layer and (if the case has masks) ground-truth layer of a dataset Case."""
    img = case.load_image()
    cid = case.case_id
    info = {"image_path": str(case.image_path), **(extra or {})}
    layers: list[LayerData] = [image_layer_tuple(img, cid, case_id=cid, extra=info)]
    if case.mask_paths:
        masks = case.load_masks()
        for region, m in masks.items():
            if m.shape != img.shape and (m.shape[0] * img.shape[1] != m.shape[1] * img.shape[0]):
                raise CXRSegIOError(
                    f"{case.mask_paths[region]}: mask is {m.shape[0]}x{m.shape[1]}, its image "
                    f"{case.image_path.name} is {img.shape[0]}x{img.shape[1]}; expected the same "
                    "size or the same aspect ratio"
                )
        scale = img.spacing if img.spacing else (1.0, 1.0)
        layers.append(
            ground_truth_layer_tuple(
                masks,
                f"{cid}{GROUND_TRUTH_SUFFIX}",
                shape=img.shape,
                scale=scale,
                case_id=cid,
                spacing=img.spacing,
                source=case.mask_paths,
                extra=info,
            )
        )
    return layers


def _read_image_file(p: Path) -> list[LayerData]:
    from cxrseg.dataset import find_case_files

    layers = _case_layers(find_case_files(p))
    return layers + _dicom_seg_layers(p, layers[0])


def _dicom_seg_layers(p: Path, image: LayerData) -> list[LayerData]:
    """A Labels layer of the DICOM Segmentation beside a DICOM image (``<stem>.seg.dcm``
    referencing it, see :func:`cxrseg.dicom_seg.find_dicom_seg`), or nothing."""
    from cxrseg.dicom_seg import find_dicom_seg, read_dicom_seg

    from ._layers import labels_from_masks, labels_layer_tuple

    seg_path = find_dicom_seg(p) if is_dicom(p) else None
    if seg_path is None:
        return []
    seg = read_dicom_seg(seg_path)
    # a fractional segmentation shows where the probability is at least one half
    masks = {r: (m >= 0.5 if seg.fractional else m) for r, m in seg.masks.items()}
    md = image[1]["metadata"]["cxrseg"]
    meta = {"case_id": md.get("case_id"), "image_path": str(p), "source": str(seg_path), "masks": masks,
            "model_id": seg.model_id, "kind": "dicom-seg", "fractional": seg.fractional}
    name = f"{md.get('case_id')} DICOM SEG"
    return [labels_layer_tuple(labels_from_masks(masks, image[0].shape), name, scale=image[1]["scale"], metadata=meta)]


def _read_folder(d: Path) -> list[LayerData]:
    from cxrseg.dataset import DatasetIndex, find_case_files

    index = DatasetIndex(d)
    with_masks = [c for c in index.cases if c.mask_paths]
    case = with_masks[0] if with_masks else index.cases[0]
    if not case.mask_paths:  # e.g. the images/ folder of an SCR-layout dataset
        try:
            found = find_case_files(case.image_path)
        except CXRSegIOError:
            found = None
        if found is not None and found.mask_paths:
            case.mask_paths = found.mask_paths
    extra: dict[str, Any] = {"dataset_root": str(index.root), "n_cases": len(index)}
    if len(index) > 1:
        note = (
            f"{d} holds {len(index)} cases; opened {case.case_id}"
            f"{' (the first with masks)' if with_masks else ''}. "
            "Open an image file or a case folder to choose another case."
        )
        extra["note"] = note
        log.info(note)
    return _case_layers(case, extra=extra)


# ----------------------------------------------------------------------------- masks
def _companion_image(mask_path: Path, case_id: str) -> Path | None:
    """The image of a mask file's case, looked up near the mask (no reading)."""
    low = case_id.lower()
    if mask_path.parent.parent.name.lower() == _MASKS:
        base = mask_path.parent.parent.parent  # <base>/masks/<region>/<case>.gif
        dirs = [base / "images", base]
        for parent in (base, base.parent):
            try:
                dirs += sorted(
                    q for q in parent.iterdir() if q.is_dir() and q.name.lower() != _MASKS
                )
            except OSError:
                pass
    else:  # case folder: <dir>/<region>.gif next to its image
        dirs = [mask_path.parent]
    found: list[Path] = []
    seen: set[Path] = set()
    for d in dirs:
        if d in seen or not d.is_dir():
            continue
        seen.add(d)
        try:
            files = sorted(d.iterdir())
        except OSError:
            continue
        for f in files:
            if not f.is_file() or f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if f.suffix.lower() in MASK_SUFFIXES and _region_or_none(f.stem):
                continue
            if f.stem.lower() == low or mask_path.parent == d:
                found.append(f)
    if not found:
        return None
    return min(found, key=lambda f: (IMAGE_PREFERENCE.get(f.suffix.lower(), 3), str(f)))


def _image_geometry(p: Path) -> tuple[tuple[int, int], tuple[float, float] | None]:
    """(shape, spacing) of an image, reading as little as possible."""
    if p.suffix.lower() == ".img" and p.stat().st_size == JSRT_NBYTES and not is_dicom(p):
        return JSRT_SHAPE, JSRT_SPACING
    img = read_image(p)
    return img.shape, img.spacing


def _read_mask_file(p: Path) -> list[LayerData]:
    region = _mask_region(p)
    if region is None:  # pragma: no cover - _classify said "mask"
        raise CXRSegIOError(f"{p}: not a region mask (expected masks/<region>/<case>.gif)")
    mask = read_mask(p)
    if p.parent.parent.name.lower() == _MASKS:
        case_id = normalise_case_id(p.stem)
    else:  # <case folder>/<region>.gif: the case is the folder's image, or the folder
        case_id = p.parent.name
    scale: tuple[float, float] = (1.0, 1.0)
    spacing = None
    image_path = None
    try:
        companion = _companion_image(p, case_id)
        if companion is not None:
            if p.parent.parent.name.lower() != _MASKS:
                case_id = normalise_case_id(companion.stem)
            shape, img_spacing = _image_geometry(companion)
            if shape[0] * mask.shape[1] == shape[1] * mask.shape[0]:
                image_path = str(companion)
                base = img_spacing if img_spacing else (1.0, 1.0)
                scale = (base[0] * shape[0] / mask.shape[0], base[1] * shape[1] / mask.shape[1])
                spacing = scale if img_spacing else None
    except (CXRSegIOError, OSError) as exc:  # the mask itself is fine: no overlay scale
        log.info("%s: its image could not be used for scaling (%s)", p, exc)
    output = output_root_of(p.parent)
    name = f"{case_id} {region}" + (" (cxrseg output)" if output is not None else "")
    layer = ground_truth_layer_tuple(
        {region: mask},
        name,
        shape=mask.shape,
        scale=scale,
        case_id=case_id,
        spacing=spacing,
        source={region: p},
        extra={
            "region": region,
            "image_path": image_path,
            # a mask cxrseg wrote (a prediction, a correction) is never ground truth
            "ground_truth": output is None,
            **({"cxrseg_output": str(output)} if output is not None else {}),
        },
    )
    return [layer]
