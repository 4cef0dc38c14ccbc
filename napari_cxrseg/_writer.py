"""napari writer: a Labels layer of regions -> SCR-layout binary masks.

* ``something.gif`` / ``something.png`` and the layer holds exactly one region: that
  region's mask is written to the file.
* ``something.gif`` / ``something.png`` and several regions: the SCR layout is written in
  the folder ``something/``: ``something/masks/<region>/<case>.gif`` (or ``.png``).
* a folder (an existing one, or a path without a suffix): ``<folder>/masks/<region>/<case>.gif``.

``something.dcm`` (a separate writer, :func:`write_dicom_seg_labels`): a DICOM
Segmentation of a Labels layer whose image is a DICOM file.

(napari adds the first extension, ``.gif``, to a path typed without one, which then
lands in the folder case above.) The case id comes from the layer's
``metadata["cxrseg"]["case_id"]``, else from its name without ``" ground truth"``.

When the label image still equals the exact masks stored in its metadata (a ground truth
opened by the reader, not edited since), those masks are written, so regions hidden under
others (clavicles over lungs) survive; otherwise each region is ``labels == value``.

All or nothing: every mask is first written to a hidden temporary file beside its target
and only then moved into place; on any error the temporary files (and folders this call
created) are removed and :class:`~cxrseg.io.CXRSegIOError` names the problem.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from cxrseg.io import CXRSegIOError, write_mask
from cxrseg.regions import LABEL_VALUES, REGIONS

from ._layers import case_id_from_layer, exact_masks_from_layer

__all__ = ["write_labels", "write_masks_layout", "write_dicom_seg_labels"]

_SUFFIXES = (".gif", ".png")
_UNSAFE = re.compile(r"[^A-Za-z0-9._ -]+")


def _safe_case_id(case_id: str | None) -> str:
    cid = _UNSAFE.sub("_", str(case_id or "").strip()).strip(" .")
    return cid or "case"


def _layer_masks(data: Any, meta: dict | None) -> dict[str, np.ndarray]:
    """Validated non-empty region masks of a Labels layer."""
    name = (meta or {}).get("name") or "labels layer"
    if isinstance(data, (list, tuple)):
        raise CXRSegIOError(
            f"{name}: multiscale labels cannot be written as masks; expected a 2-D label image"
        )
    lab = np.asarray(data)
    if lab.ndim != 2:
        raise CXRSegIOError(
            f"{name}: label image has shape {lab.shape}, expected a 2-D (rows, cols) image"
        )
    if lab.size == 0:
        raise CXRSegIOError(f"{name}: label image is empty")
    if not (np.issubdtype(lab.dtype, np.integer) or lab.dtype == np.bool_):
        raise CXRSegIOError(f"{name}: label image has dtype {lab.dtype}, expected integer labels")
    values = {int(v) for v in np.unique(lab)}
    allowed = {0} | set(LABEL_VALUES.values())
    unknown = sorted(values - allowed)
    if unknown:
        legend = ", ".join(f"{v}={r}" for r, v in LABEL_VALUES.items())
        raise CXRSegIOError(
            f"{name}: label values {unknown} are not regions; expected 0 (background) and "
            f"{legend}. Nothing was written."
        )
    masks = exact_masks_from_layer(lab, (meta or {}).get("metadata"))
    if not masks:
        raise CXRSegIOError(f"{name}: holds no region (all background); nothing to write")
    return masks


def write_masks_layout(
    masks: dict[str, np.ndarray], folder: str | os.PathLike, case_id: str, *, suffix: str = ".gif"
) -> list[str]:
    """Write masks as ``<folder>/masks/<region>/<case_id><suffix>``, all or nothing.

    Parameters
    ----------
    masks : dict of str to ndarray
        Region -> 2-D bool mask.
    folder : path-like
        Dataset root to write into.
    case_id : str
        File stem (sanitised for the file system).
    suffix : {".gif", ".png"}
        Mask format.

    Returns
    -------
    list of str
        The files written, in :data:`~cxrseg.regions.REGIONS` order.
    """
    if suffix not in _SUFFIXES:
        raise CXRSegIOError(
            f"{folder}: mask suffix {suffix!r} not supported, expected .gif or .png"
        )
    cid = _safe_case_id(case_id)
    root = Path(folder).expanduser()
    targets = {root / "masks" / r / f"{cid}{suffix}": masks[r] for r in REGIONS if r in masks}
    return _write_all(targets)


def _make_dirs(d: Path, created: list[Path]) -> None:
    """mkdir -p that records the folders it created (outermost first)."""
    missing = []
    cur = d
    while not cur.exists():
        missing.append(cur)
        if cur.parent == cur:
            break
        cur = cur.parent
    for m in reversed(missing):
        m.mkdir()
        created.append(m)


def _write_all(targets: dict[Path, np.ndarray]) -> list[str]:
    """Write every mask or none (staged in hidden temporary files, then renamed)."""
    for t in targets:
        if t.is_dir():
            raise CXRSegIOError(f"{t}: is a folder, expected a mask file path; nothing was written")
        for parent in t.parents:
            if parent.exists() and not parent.is_dir():
                raise CXRSegIOError(
                    f"{parent}: is a file, cannot create the folder for {t}; nothing was written"
                )
    created: list[Path] = []
    staged: dict[Path, Path] = {}
    moved: list[tuple[Path, Path | None]] = []  # (target, backup of a previous file)
    token = uuid.uuid4().hex[:8]
    try:
        for t, m in targets.items():
            _make_dirs(t.parent, created)
            tmp = t.with_name(f".{t.stem}.cxrseg-{token}{t.suffix}")
            write_mask(m, tmp)
            staged[t] = tmp
        for t, tmp in staged.items():
            backup = None
            if t.exists():
                backup = t.with_name(f".{t.stem}.cxrseg-{token}.bak")
                os.replace(t, backup)
            moved.append((t, backup))
            os.replace(tmp, t)
    except BaseException as exc:
        for t, backup in reversed(moved):
            try:
                if backup is not None:
                    os.replace(backup, t)
                elif t.exists():
                    t.unlink()
            except OSError:
                pass
        for tmp in staged.values():
            try:
                tmp.unlink()
            except OSError:
                pass
        for d in reversed(created):
            try:
                d.rmdir()
            except OSError:
                pass
        if isinstance(exc, CXRSegIOError):
            raise
        if isinstance(exc, Exception):
            where = next(iter(targets), "")
            raise CXRSegIOError(
                f"{where}: cannot write masks ({exc}); nothing was written"
            ) from exc
        raise
    for _, backup in moved:
        if backup is not None:
            try:
                backup.unlink()
            except OSError:
                pass
    return [str(t) for t in targets]


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """npe2 single-layer writer: a region Labels layer -> mask file(s).

    Parameters
    ----------
    path : str
        ``*.gif``/``*.png`` (one region, or a folder of that name for several) or a
        folder (an existing one or a path without a suffix).
    data : ndarray
        2-D integer label image (values from :data:`~cxrseg.regions.LABEL_VALUES`).
    meta : dict
        The layer's attributes (``name``, ``metadata``, ...).

    Returns
    -------
    list of str
        The files written.

    Raises
    ------
    CXRSegIOError
        Not a 2-D region label image, values that are not regions, nothing to write, or
        the files cannot be written (then nothing is written).
    """
    meta = meta or {}
    masks = _layer_masks(data, meta)
    case_id = case_id_from_layer(meta.get("name"), meta.get("metadata"))
    p = Path(path).expanduser()
    suffix = p.suffix.lower()
    if p.is_dir() or suffix == "":
        return write_masks_layout(masks, p, case_id, suffix=".gif")
    if suffix not in _SUFFIXES:
        raise CXRSegIOError(
            f"{p}: cannot write masks as {p.suffix!r}; expected a .gif or .png file, or a folder"
        )
    if len(masks) == 1:
        (mask,) = masks.values()
        return _write_all({p: mask})
    return write_masks_layout(masks, p.with_suffix(""), case_id, suffix=suffix)


def _dicom_source(meta: dict) -> Path | None:
    """The DICOM image a Labels layer belongs to: a path in its metadata, else the image
    layer of the same case in the current viewer."""
    from cxrseg.io import is_dicom

    md = (meta.get("metadata") or {}).get("cxrseg") or {}
    cands = [md.get(k) for k in ("image_path", "path", "source")]
    try:
        import napari

        viewer = napari.current_viewer()
        cid = case_id_from_layer(meta.get("name"), meta.get("metadata"))
        for ly in viewer.layers if viewer is not None else []:
            lmd = ly.metadata.get("cxrseg") or {}
            if isinstance(ly, napari.layers.Image) and lmd.get("case_id") == cid:
                cands.append(lmd.get("path"))
    except Exception:  # no viewer: the metadata must say
        pass
    for c in cands:
        if isinstance(c, (str, os.PathLike)) and Path(c).is_file() and is_dicom(c):
            return Path(c)
    return None


def write_dicom_seg_labels(path: str, data: Any, meta: dict) -> list[str]:
    """npe2 single-layer writer: a region Labels layer of a DICOM image -> DICOM SEG.

    The segmentation references the layer's source image (its metadata, else the image
    layer of the same case) and is BINARY, one segment per non-empty region
    (:func:`cxrseg.dicom_seg.write_dicom_seg`).

    Raises
    ------
    CXRSegIOError
        Not a region label image, or its image is not a DICOM file (nothing is written).
    """
    from cxrseg.dicom_seg import write_dicom_seg

    meta = meta or {}
    masks = _layer_masks(data, meta)
    source = _dicom_source(meta)
    if source is None:
        raise CXRSegIOError(
            f"{meta.get('name') or 'labels layer'}: its image is not a DICOM file (or is not open); "
            "a DICOM Segmentation must reference a DICOM source image. Save .gif/.png masks instead"
        )
    md = (meta.get("metadata") or {}).get("cxrseg") or {}
    out = write_dicom_seg(source, masks, Path(path).expanduser(), model_id=str(md.get("model_id") or "manual"),
                          thresholds=md.get("thresholds") or None)
    return [str(out)]
