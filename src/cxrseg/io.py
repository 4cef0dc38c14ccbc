"""Reading and writing chest radiographs and binary masks.

Every reader returns images as a :class:`CXRImage` whose ``data`` is a 2-D ``float32`` array
in ``[0, 1]`` in *display polarity* (bone and soft tissue bright, air dark), ``(row, col)``
order, never flipped. Masks are 2-D ``bool`` arrays.

Supported inputs
----------------
* JSRT raw ``.IMG``: 2048x2048, 16-bit big-endian words holding 12-bit film densities
  (bone dark), no header, 0.175 mm pixels (:func:`read_jsrt_img`).
* DICOM through pydicom: modality LUT (rescale), VOI LUT / window, MONOCHROME1 inverted,
  pixel spacing (:func:`read_dicom`).
* PNG / JPEG / TIFF / BMP / GIF through Pillow (tifffile as a fallback for TIFF variants
  Pillow does not read) (:func:`read_raster`).

Size limits
-----------
An image's size is read from its header and checked **before** its pixels are decoded, for
every decoder (Pillow, the tifffile fallback, DICOM, JSRT ``.IMG``): images with more than
:func:`max_pixels` pixels (default :data:`DEFAULT_MAX_PIXELS`, 150 megapixels, about
12247 x 12247; set ``CXRSEG_MAX_PIXELS`` or pass ``max_pixels=``) are refused with a
:class:`CXRSegIOError`, and so are images with a side below ``min_side`` pixels when a
caller asks for one (``cxrseg predict`` refuses sides below :data:`MIN_SIDE`, 32 pixels).
``read_image(..., max_side=N)`` decodes a larger image at a reduced size (a box average
by an integer factor), so a huge radiograph never needs its full-size float copy.

12-bit data in 16-bit files
---------------------------
A 16-bit grayscale PNG/TIFF whose largest value is below 4096 is taken as 12-bit data
(as most radiographs are) and divided by 4095 instead of 65535, which would leave it
nearly black; ``CXRImage.meta["warning"]`` says so (``cxrseg predict`` prints it).

Bad input raises :class:`CXRSegIOError` (a :class:`ValueError`) whose message names the file
and what was expected. Writers are atomic: they write a temporary file in the target
directory, ``fsync`` it and ``os.replace`` it over the target, so an error never leaves a
half-written file behind.
"""

from __future__ import annotations

import errno
import os
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

__all__ = [
    "CXRSegIOError",
    "CXRSegFileNotFoundError",
    "CXRImage",
    "IMAGE_SUFFIXES",
    "RASTER_SUFFIXES",
    "DICOM_SUFFIXES",
    "MASK_SUFFIXES",
    "JSRT_SHAPE",
    "JSRT_SPACING",
    "JSRT_NBYTES",
    "JSRT_MAX",
    "read_image",
    "read_jsrt_img",
    "read_dicom",
    "read_raster",
    "read_mask",
    "write_mask",
    "write_jsrt_img",
    "is_dicom",
    "is_hidden",
    "resize_mask_nearest",
    "same_aspect",
    "atomic_write",
    "DEFAULT_MAX_PIXELS",
    "MIN_SIDE",
    "max_pixels",
    "check_image_size",
    "describe_oserror",
    "is_disk_error",
    "sweep_temporary",
    "pid_alive",
]


class CXRSegIOError(ValueError):
    """A file could not be read or written; the message names the file and what was expected."""


class CXRSegFileNotFoundError(CXRSegIOError, FileNotFoundError):
    """A file or folder that should exist does not (also a :class:`FileNotFoundError`)."""


#: JSRT raw image geometry.
JSRT_SHAPE: tuple[int, int] = (2048, 2048)
#: JSRT pixel size in mm (row, col).
JSRT_SPACING: tuple[float, float] = (0.175, 0.175)
#: Byte count of a JSRT ``.IMG`` file (2048 * 2048 * 2).
JSRT_NBYTES: int = JSRT_SHAPE[0] * JSRT_SHAPE[1] * 2
#: Largest 12-bit value.
JSRT_MAX: int = 4095

#: Suffixes handled by Pillow (and tifffile).
RASTER_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif")
#: Suffixes treated as DICOM.
DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom")
#: Suffixes :func:`read_image` accepts (lower-case, with the dot).
IMAGE_SUFFIXES: tuple[str, ...] = (".img",) + DICOM_SUFFIXES + RASTER_SUFFIXES
#: Suffixes :func:`read_mask` accepts; :func:`write_mask` writes ``.png`` and ``.gif``
#: (and ``.tif``/``.tiff``/``.bmp``).
MASK_SUFFIXES: tuple[str, ...] = (".gif", ".png", ".tif", ".tiff", ".bmp")

_RASTER_EXPECTED = "expected a PNG/JPEG/TIFF/BMP image"

#: Largest image, in pixels, read by default (150 MP, ~12247 x 12247); see :func:`max_pixels`.
DEFAULT_MAX_PIXELS: int = 150_000_000
#: Smallest side, in pixels, of an image that is segmented (``cxrseg predict``).
MIN_SIDE: int = 32


def max_pixels() -> int:
    """The pixel limit: ``$CXRSEG_MAX_PIXELS`` if set (an integer), else the default."""
    env = os.environ.get("CXRSEG_MAX_PIXELS", "").strip()
    if env:
        try:
            value = int(float(env))
        except ValueError:
            raise CXRSegIOError(
                f"CXRSEG_MAX_PIXELS={env!r}: expected a number of pixels, e.g. 150000000"
            ) from None
        if value > 0:
            return value
    return DEFAULT_MAX_PIXELS


def check_image_size(
    path,
    rows: int,
    cols: int,
    *,
    frames: int = 1,
    limit: int | None = None,
    min_side: int | None = None,
):
    """Refuse an image by its header size, before decoding it.

    Raises
    ------
    CXRSegIOError
        A side below ``min_side`` (when given), or more than ``limit`` (default
        :func:`max_pixels`) pixels in all.
    """
    rows, cols, frames = int(rows), int(cols), max(1, int(frames))
    lim = max_pixels() if limit is None else int(limit)
    if min_side and (rows < min_side or cols < min_side):
        raise CXRSegIOError(
            f"{path}: image is {rows}x{cols} pixels, expected a radiograph of at least "
            f"{min_side}x{min_side} pixels"
        )
    n = rows * cols * frames
    if n > lim:
        what = f"{rows}x{cols}" + (f"x{frames} frames" if frames > 1 else "")
        raise CXRSegIOError(
            f"{path}: image is {what} pixels ({n:,} pixels), above the limit of "
            f"{lim:,} pixels; refused before decoding it (raise the limit with "
            "CXRSEG_MAX_PIXELS=N or --max-pixels N if the image is genuine)"
        )


@dataclass
class CXRImage:
    """A chest radiograph ready for display and inference.

    Attributes
    ----------
    data : numpy.ndarray
        2-D ``float32`` in ``[0, 1]``, display polarity (bone bright), ``(row, col)``.
    spacing : tuple of float or None
        Pixel size in mm ``(row, col)``; ``None`` if unknown.
    path : pathlib.Path or None
        The file it was read from.
    meta : dict
        Extra information: ``"format"`` (``"jsrt-img"``, ``"dicom"``, ``"png"``, ``"jpeg"``,
        ``"tiff"``, ...), and per format e.g. ``"modality"``, ``"photometric"``,
        ``"transfer_syntax"``, ``"n_frames"``, ``"note"``.
    """

    data: np.ndarray
    spacing: tuple[float, float] | None
    path: Path | None = None
    meta: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        """``data.shape``."""
        return tuple(self.data.shape)  # type: ignore[return-value]


# ----------------------------------------------------------------------------------- helpers


def _check_file(path) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise CXRSegFileNotFoundError(f"{p}: no such file")
    if p.is_dir():
        raise CXRSegIOError(f"{p}: is a folder, expected an image file")
    return p


def _finish(data: np.ndarray) -> np.ndarray:
    out = np.ascontiguousarray(data, dtype=np.float32)
    np.clip(out, 0.0, 1.0, out=out)
    return out


def _minmax(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    finite = np.isfinite(a)
    if not finite.all():
        a = np.where(finite, a, np.nan)
        if not finite.any():
            return np.zeros(a.shape, np.float32)
        lo, hi = np.nanmin(a), np.nanmax(a)
        a = np.nan_to_num(a, nan=lo)
    else:
        lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(a.shape, np.float32)
    return ((a - lo) / (hi - lo)).astype(np.float32)


def _luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma of the first three channels (last axis)."""
    rgb = np.asarray(rgb)
    return (
        0.299 * rgb[..., 0].astype(np.float64)
        + 0.587 * rgb[..., 1].astype(np.float64)
        + 0.114 * rgb[..., 2].astype(np.float64)
    )


def _to_unit(arr: np.ndarray, path: Path, meta: dict | None = None) -> np.ndarray:
    """Normalise a 2-D (or channel-last 3-D) array to float32 [0, 1] grayscale.

    bool -> {0, 1}; uint8 -> /255; uint16 -> /65535, except gray 16-bit data whose maximum
    is below 4096, taken as 12-bit and divided by 4095 (``meta["warning"]`` says so);
    other integer types -> /255 when in [0, 255], /65535 when in [0, 65535], else min-max;
    floats -> as is when already in [0, 1], else min-max.
    """
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[-1] in (1, 2):
        a = a[..., 0]
    if a.ndim == 2 and a.dtype == np.uint16 and a.size:
        top = int(a.max())
        if 0 < top <= JSRT_MAX:
            if meta is not None:
                meta["bits_stored"] = 12
                meta["warning"] = (
                    f"16-bit image with values up to {top} (< 4096): read as 12-bit data "
                    "(divided by 4095, not 65535)"
                )
            return _finish(a / np.float32(JSRT_MAX))
    if a.ndim == 3:
        if a.shape[-1] in (3, 4):
            scale = _dtype_scale(a[..., :3])
            a = _luminance(a)
            return _minmax(a) if scale is None else _finish(a / scale)
        if a.shape[-1] in (1, 2):  # gray (+ alpha)
            a = a[..., 0]
        else:
            raise CXRSegIOError(
                f"{path}: image has shape {a.shape}; {_RASTER_EXPECTED} (2-D grayscale or RGB)"
            )
    if a.ndim != 2:
        raise CXRSegIOError(
            f"{path}: image has shape {a.shape}; {_RASTER_EXPECTED} (2-D grayscale or RGB)"
        )
    if a.size == 0:
        raise CXRSegIOError(f"{path}: image is empty, {_RASTER_EXPECTED}")
    if a.dtype == np.bool_:
        return a.astype(np.float32)
    scale = _dtype_scale(a)
    if scale is None:
        return _minmax(a)
    return _finish(a.astype(np.float64) / scale if a.dtype.itemsize > 2 else a / np.float32(scale))


def _dtype_scale(a: np.ndarray) -> float | None:
    """The divisor that maps the array to [0, 1], or None for min-max scaling."""
    if a.dtype == np.bool_:
        return 1.0
    if a.dtype == np.uint8:
        return 255.0
    if a.dtype == np.uint16:
        return 65535.0
    if np.issubdtype(a.dtype, np.integer):
        lo, hi = int(a.min()), int(a.max())
        if lo >= 0 and hi <= 65535:
            return 65535.0 if hi > 255 else 255.0
        return None
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            return None
        lo, hi = float(a.min()), float(a.max())
        if lo >= 0.0 and hi <= 1.0:
            return 1.0
        return None
    return None


def atomic_write(path, write: Callable[[BinaryIO], Any]) -> Path:
    """Write a file atomically.

    ``write(fileobj)`` writes the content into a temporary file in the target directory,
    which is flushed, ``fsync``-ed and moved over ``path`` with :func:`os.replace`. On any
    error the temporary file is removed and a previous file at ``path`` is left intact.

    Returns
    -------
    pathlib.Path
        The path written.
    """
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        if isinstance(exc, OSError) and not isinstance(exc, CXRSegIOError):
            # name the file being written, not its temporary
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
    try:  # make the rename durable (best effort; not possible on every platform)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


_DISK_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.EFBIG,
    errno.EIO,
}
_SHORT_WRITE_RE = re.compile(r"(\d+) requested and (\d+) written")


def is_disk_error(exc: BaseException) -> bool:
    """Whether an error says the destination cannot take writes (full, read-only, denied)."""
    if not isinstance(exc, OSError) or isinstance(exc, CXRSegIOError):
        return False
    return exc.errno in _DISK_ERRNOS or bool(_SHORT_WRITE_RE.search(str(exc)))


def describe_oserror(exc: BaseException, path=None) -> str:
    """One line naming the path and the cause of an ``OSError``.

    >>> import errno
    >>> describe_oserror(OSError(errno.ENOSPC, "No space left on device", "/out/a.png"))
    '/out/a.png: no space left on device (the disk or quota is full)'
    """
    if not isinstance(exc, OSError) or isinstance(exc, CXRSegIOError):
        return str(exc)
    where = exc.filename if exc.filename is not None else path
    code = exc.errno
    short = _SHORT_WRITE_RE.search(str(exc))
    if code in (errno.ENOSPC, errno.EDQUOT):
        cause = "no space left on device (the disk or quota is full)"
    elif short:
        cause = (
            f"only {short.group(2)} of {short.group(1)} bytes could be written: no space "
            "left on device (the disk is probably full)"
        )
    elif code == errno.EROFS:
        cause = "read-only file system"
    elif code in (errno.EACCES, errno.EPERM):
        cause = "permission denied"
    elif code == errno.ENOENT:
        cause = "no such file or folder"
    else:
        cause = exc.strerror or str(exc) or type(exc).__name__
        if code is not None:
            cause = f"{cause} (errno {code})"
    return f"{where}: {cause}" if where is not None else cause


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:  # pragma: no cover
        return False
    return True


#: Temporary files of :func:`atomic_write` (``.<name>.<pid>.<hex>.tmp``) and older
#: ``.<name>.<pid>.tmp`` ones.
_TMP_RE = re.compile(r"^\..+\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")
_OLD_TMP_RE = re.compile(r"^\..+\.(?P<pid>\d+)\.tmp$")


def _temporary_writer(name: str) -> int | None:
    """The writer's process id in a temporary file's name, or None for other files.

    The random part of :func:`atomic_write`'s names is eight hex digits that may all be
    decimal digits, so it is matched by position, never taken for the process id.
    """
    m = _TMP_RE.match(name) or _OLD_TMP_RE.match(name)
    return int(m.group("pid")) if m else None


def sweep_temporary(folder, *, recursive: bool = True) -> list[Path]:
    """Remove temporary files left under ``folder`` by killed writers.

    A file named like :func:`atomic_write`'s temporaries (``.<name>.<pid>.<hex>.tmp``) is
    removed when the process that wrote it is gone; a live writer's file is left alone.
    Symbolic links are not followed. Returns the files removed.
    """
    root = Path(folder)
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    walker = os.walk(root) if recursive else [(str(root), [], os.listdir(root))]
    for dirpath, _dirs, files in walker:
        for name in files:
            pid = _temporary_writer(name)
            if pid is None:
                continue
            if pid == os.getpid() or pid_alive(pid):
                continue  # a live writer's (possibly another thread of this process)
            f = Path(dirpath) / name
            try:
                if f.is_symlink() or not f.is_file():
                    continue
                f.unlink()
                removed.append(f)
            except OSError:
                continue
    return removed


def _reduce(a: np.ndarray, k: int) -> np.ndarray:
    """Box-average a 2-D (or channel-last) array by an integer factor, keeping its dtype."""
    if k <= 1:
        return a
    h, w = (a.shape[0] // k) * k, (a.shape[1] // k) * k
    v = a[:h, :w]
    v = v.reshape(h // k, k, w // k, k, *a.shape[2:])
    m = v.mean(axis=(1, 3), dtype=np.float32)
    if a.dtype == np.bool_:
        return m >= 0.5
    if np.issubdtype(a.dtype, np.integer):
        return np.rint(m).astype(a.dtype)
    return m.astype(a.dtype, copy=False)


def _reduce_factor(shape, max_side: int | None) -> int:
    if not max_side:
        return 1
    longest = max(int(shape[0]), int(shape[1]))
    return max(1, -(-longest // int(max_side)))


# ------------------------------------------------------------------------------------- JSRT


def read_jsrt_img(path, *, max_pixels: int | None = None, min_side: int | None = None) -> CXRImage:
    """Read a JSRT raw ``.IMG`` file.

    The file is 2048x2048 big-endian 16-bit words holding 12-bit film densities (bone
    dark), no header. The result is in display polarity: ``1 - value / 4095``, spacing
    ``(0.175, 0.175)`` mm.

    Raises
    ------
    CXRSegIOError
        If the file is not exactly 8388608 bytes or holds values above 4095.
    """
    p = _check_file(path)
    size = p.stat().st_size
    if size != JSRT_NBYTES:
        raise CXRSegIOError(
            f"{p}: file is {size} bytes, expected a JSRT .IMG of {JSRT_NBYTES} bytes "
            f"({JSRT_SHAPE[0]}x{JSRT_SHAPE[1]} big-endian 16-bit words, no header)"
        )
    check_image_size(p, *JSRT_SHAPE, limit=max_pixels, min_side=min_side)
    raw = np.fromfile(p, dtype=">u2")
    if raw.size != JSRT_SHAPE[0] * JSRT_SHAPE[1]:  # pragma: no cover - file changed meanwhile
        raise CXRSegIOError(f"{p}: could read only {raw.size * 2} of {JSRT_NBYTES} bytes")
    vmax = int(raw.max())
    if vmax > JSRT_MAX:
        raise CXRSegIOError(
            f"{p}: holds value {vmax}, expected 12-bit JSRT values in 0..{JSRT_MAX} "
            "(big-endian 16-bit words); is it a JSRT .IMG file?"
        )
    data = 1.0 - raw.reshape(JSRT_SHAPE).astype(np.float32) / np.float32(JSRT_MAX)
    return CXRImage(
        _finish(data),
        JSRT_SPACING,
        p,
        {"format": "jsrt-img", "bits_stored": 12, "raw_polarity": "film density (bone dark)"},
    )


def write_jsrt_img(image01, path) -> Path:
    """Write a display-polarity ``[0, 1]`` 2048x2048 image as a JSRT raw ``.IMG`` (atomic).

    The inverse of :func:`read_jsrt_img`: ``value = round((1 - x) * 4095)`` as big-endian
    16-bit words.

    Raises
    ------
    ValueError
        If the image is not 2-D 2048x2048 (the only size the format has).
    """
    a = np.asarray(image01, dtype=np.float64)
    if a.shape != JSRT_SHAPE:
        raise CXRSegIOError(
            f"{path}: cannot write a {'x'.join(map(str, a.shape))} image, "
            f"expected {JSRT_SHAPE[0]}x{JSRT_SHAPE[1]} (the only JSRT .IMG size)"
        )
    a = np.nan_to_num(a, nan=0.0)
    raw = np.rint((1.0 - np.clip(a, 0.0, 1.0)) * JSRT_MAX).astype(">u2")
    return atomic_write(path, lambda fh: fh.write(raw.tobytes()))


# ------------------------------------------------------------------------------------ DICOM


def is_dicom(path) -> bool:
    """``True`` if the file has a ``.dcm``/``.dicom`` suffix or ``DICM`` at byte 128.

    ``path`` is a str or path-like; a file that cannot be read is not DICOM.
    """
    p = Path(path)
    if p.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(p, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


#: Packages that decode each compressed transfer syntax (pip names).
_LIBJPEG = "pip install pylibjpeg pylibjpeg-libjpeg"
_OPENJPEG = "pip install pylibjpeg pylibjpeg-openjpeg"
_DECODERS: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": f"{_LIBJPEG} (or pillow, or python-gdcm)",
    "1.2.840.10008.1.2.4.51": f"{_LIBJPEG} (or pillow, or python-gdcm)",
    "1.2.840.10008.1.2.4.57": f"{_LIBJPEG} (or python-gdcm)",
    "1.2.840.10008.1.2.4.70": f"{_LIBJPEG} (or python-gdcm)",
    "1.2.840.10008.1.2.4.80": f"{_LIBJPEG} (or pyjpegls, or python-gdcm)",
    "1.2.840.10008.1.2.4.81": f"{_LIBJPEG} (or pyjpegls, or python-gdcm)",
    "1.2.840.10008.1.2.4.90": f"{_OPENJPEG} (or pillow with OpenJPEG, or python-gdcm)",
    "1.2.840.10008.1.2.4.91": f"{_OPENJPEG} (or pillow with OpenJPEG, or python-gdcm)",
    "1.2.840.10008.1.2.4.201": _OPENJPEG,
    "1.2.840.10008.1.2.4.202": _OPENJPEG,
    "1.2.840.10008.1.2.4.203": _OPENJPEG,
    "1.2.840.10008.1.2.5": "pip install pylibjpeg pylibjpeg-rle (or python-gdcm)",
}
_DEFAULT_DECODER = "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg (or python-gdcm)"

_MISSING_HANDLER_HINTS = (
    "no pixel data handler",
    "not supported by any of the available",
    "required to decode",
    "are required",
    "is required",
    "no available plugin",
    "missing required dependencies",
    "plugins are missing dependencies",
    "unable to decompress",
    "the following packages",
    "not installed",
)


def _ts_name(uid) -> str:
    try:
        name = getattr(uid, "name", "") or ""
    except Exception:  # pragma: no cover
        name = ""
    return f"{name} ({uid})" if name and name != str(uid) else str(uid)


def _pydicom_luts():
    try:  # pydicom >= 3
        from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut
    except ImportError:  # pragma: no cover - pydicom 2.x
        from pydicom.pixel_data_handlers.util import (
            apply_color_lut,
            apply_modality_lut,
            apply_voi_lut,
        )
    return apply_modality_lut, apply_voi_lut, apply_color_lut


def _spacing_of(ds) -> tuple[tuple[float, float] | None, str | None]:
    for key in ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing"):
        val = ds.get(key)
        if val is None:
            continue
        try:
            vals = [float(v) for v in val]
        except (TypeError, ValueError):
            continue
        if len(vals) == 1:
            vals = vals * 2
        if len(vals) >= 2 and vals[0] > 0 and vals[1] > 0:
            return (vals[0], vals[1]), key
    return None, None


def read_dicom(path, *, max_pixels: int | None = None, min_side: int | None = None) -> CXRImage:
    """Read a DICOM radiograph with pydicom.

    Applies the modality LUT (rescale slope/intercept), then the VOI LUT or window when the
    file has one, normalises to ``[0, 1]`` (by the VOI output range, or by the data's
    min/max without VOI) and inverts ``MONOCHROME1``. Colour images are converted to
    grayscale (luma). Of a multi-frame image only the first frame is returned
    (``meta["n_frames"]`` and ``meta["note"]`` say so). Spacing comes from ``PixelSpacing``,
    else ``ImagerPixelSpacing``, else ``NominalScannedPixelSpacing``.

    Raises
    ------
    CXRSegIOError
        Not a DICOM file, no pixel data, or a compressed transfer syntax whose decoder is
        missing (the message names the syntax and the package to install).
    """
    p = _check_file(path)
    ds = _dicom_dataset(p)
    _check_dicom_image(p, ds, max_pixels=max_pixels, min_side=min_side)
    ts = _transfer_syntax(ds)
    arr = _dicom_pixels(p, ds, ts)

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper().strip()
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    meta: dict[str, Any] = {
        "format": "dicom",
        "modality": str(ds.get("Modality", "")) or None,
        "photometric": photometric,
        "transfer_syntax": str(ts),
    }
    colour = spp > 1 or photometric in ("PALETTE COLOR",) or photometric.startswith(("RGB", "YBR"))
    if n_frames > 1:
        expected_ndim = 4 if (spp > 1) else 3
        if arr.ndim == expected_ndim:
            arr = arr[0]
        meta["n_frames"] = n_frames
        meta["note"] = f"multi-frame DICOM ({n_frames} frames): only the first frame is used"

    if photometric == "PALETTE COLOR":
        _, _, apply_color_lut = _pydicom_luts()
        try:
            arr = apply_color_lut(arr, ds)
        except Exception as exc:
            raise CXRSegIOError(f"{p}: cannot apply the DICOM palette colour LUT ({exc})") from exc
    if colour or arr.ndim == 3:
        return _dicom_colour(p, ds, arr, photometric, meta)
    if arr.ndim != 2:
        raise CXRSegIOError(f"{p}: DICOM pixel data has shape {arr.shape}, expected a 2-D image")
    return _dicom_grayscale(p, ds, arr, photometric, meta)


def _dicom_dataset(p: Path):
    """The pydicom dataset of ``p``; a file without the DICM marker is read when it has
    image attributes."""
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError as exc:  # pragma: no cover
        raise CXRSegIOError(f"{p}: reading DICOM needs pydicom: pip install pydicom") from exc
    try:
        ds = pydicom.dcmread(p)
    except InvalidDicomError:
        try:
            ds = pydicom.dcmread(p, force=True)
        except Exception as exc:
            raise CXRSegIOError(f"{p}: not a readable DICOM file ({exc})") from exc
        if len(ds) == 0 or not any(k in ds for k in ("Rows", "Columns", "SOPClassUID", "Modality")):
            raise CXRSegIOError(
                f"{p}: not a DICOM file (no 'DICM' marker at byte 128, no image attributes); "
                "expected a DICOM radiograph"
            ) from None
    except Exception as exc:
        raise CXRSegIOError(f"{p}: not a readable DICOM file ({exc})") from exc
    return ds


def _check_dicom_image(p: Path, ds, *, max_pixels: int | None, min_side: int | None) -> None:
    """Refuse a dataset without pixel data, a Segmentation, or an image of a refused size
    (before its pixels are decoded)."""
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise CXRSegIOError(
            f"{p}: DICOM file has no pixel data, expected an image "
            f"(SOP class {ds.get('SOPClassUID', 'unknown')}, modality {ds.get('Modality', '?')})"
        )
    if str(ds.get("Modality", "")) == "SEG":  # its frames are masks, not a radiograph
        raise CXRSegIOError(
            f"{p}: is a DICOM Segmentation, not an image; open the radiograph it belongs to "
            "(cxrseg.dicom_seg.read_dicom_seg reads it)"
        )
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        raise CXRSegIOError(f"{p}: DICOM file has no valid Rows/Columns") from None
    check_image_size(p, rows, cols, frames=frames, limit=max_pixels, min_side=min_side)


def _transfer_syntax(ds):
    """The dataset's transfer syntax; without file meta, the one the reader found (set in it)."""
    fm = getattr(ds, "file_meta", None)
    ts = getattr(fm, "TransferSyntaxUID", None) if fm is not None else None
    if ts is None:  # no file meta: assume what the reader found
        import pydicom
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

        if fm is None:
            ds.file_meta = pydicom.dataset.FileMetaDataset()
        implicit = getattr(ds, "is_implicit_VR", True)
        if implicit is None:
            implicit = True
        ts = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
        ds.file_meta.TransferSyntaxUID = ts
    return ts


def _dicom_pixels(p: Path, ds, ts) -> np.ndarray:
    """The decoded pixel array; a missing decoder is named with the package to install."""
    try:
        return ds.pixel_array
    except Exception as exc:
        msg = str(exc)
        compressed = bool(getattr(ts, "is_compressed", False))
        if compressed and (
            isinstance(exc, (NotImplementedError, ImportError))
            or any(h in msg.lower() for h in _MISSING_HANDLER_HINTS)
        ):
            hint = _DECODERS.get(str(ts), _DEFAULT_DECODER)
            raise CXRSegIOError(
                f"{p}: cannot decode DICOM pixel data compressed with transfer syntax "
                f"{_ts_name(ts)}: no decoder is installed; {hint}"
            ) from exc
        raise CXRSegIOError(
            f"{p}: cannot decode DICOM pixel data (transfer syntax {_ts_name(ts)}): {msg}"
        ) from exc


def _dicom_colour(p: Path, ds, arr: np.ndarray, photometric: str, meta: dict) -> CXRImage:
    """A colour DICOM as grayscale (luma) in ``[0, 1]``."""
    if arr.ndim != 3 or arr.shape[-1] < 3:
        raise CXRSegIOError(
            f"{p}: colour DICOM has shape {arr.shape}, expected (rows, cols, 3)"
        )
    meta["note"] = (meta.get("note", "") + "; " if "note" in meta else "") + (
        "colour DICOM converted to grayscale"
    )
    bits = int(ds.get("BitsStored", 8) or 8)
    if photometric == "PALETTE COLOR":
        bits = 16 if arr.dtype.itemsize > 1 else 8
    scale = float(2**bits - 1)
    data = _luminance(arr) / scale
    if data.max() > 1.0 or data.min() < 0.0:
        data = _minmax(data)
    return CXRImage(_finish(data), _spacing_of(ds)[0], p, meta)


def _dicom_grayscale(p: Path, ds, arr: np.ndarray, photometric: str, meta: dict) -> CXRImage:
    """A grayscale DICOM through its modality LUT and VOI LUT (or window), in ``[0, 1]``,
    ``MONOCHROME1`` inverted."""
    apply_modality_lut, apply_voi_lut, _ = _pydicom_luts()
    data = apply_modality_lut(arr, ds)
    if "RescaleSlope" in ds or "RescaleIntercept" in ds:
        meta["rescale"] = (
            float(ds.get("RescaleSlope", 1) or 1),
            float(ds.get("RescaleIntercept", 0) or 0),
        )
    has_window = "WindowCenter" in ds and "WindowWidth" in ds
    has_voi_lut = "VOILUTSequence" in ds and len(ds.VOILUTSequence) > 0
    lo = hi = None
    if has_voi_lut or has_window:
        try:
            voi = apply_voi_lut(data, ds, index=0, prefer_lut=True)
        except Exception as exc:
            meta["note"] = (meta.get("note", "") + "; " if "note" in meta else "") + (
                f"VOI LUT/window ignored ({exc})"
            )
        else:
            if has_voi_lut:
                meta["voi"] = "lut"
                lo, hi = float(np.min(voi)), float(np.max(voi))
            else:
                meta["voi"] = "window"
                meta["window"] = (_first(ds.WindowCenter), _first(ds.WindowWidth))
                probe = np.array([-1e15, 1e15], dtype=np.float64)
                try:
                    ends = apply_voi_lut(probe, ds, index=0, prefer_lut=False)
                    lo, hi = float(np.min(ends)), float(np.max(ends))
                except Exception:  # pragma: no cover - fall back to the data range
                    lo, hi = float(np.min(voi)), float(np.max(voi))
            data = voi
    data = np.asarray(data, dtype=np.float64)
    if lo is not None and hi is not None and hi > lo:
        data = (data - lo) / (hi - lo)
    else:
        data = _minmax(data)
    if photometric == "MONOCHROME1":
        data = 1.0 - np.clip(data, 0.0, 1.0)
    spacing, key = _spacing_of(ds)
    if key:
        meta["spacing_tag"] = key
    return CXRImage(_finish(data), spacing, p, meta)


def _first(v) -> float:
    try:
        return float(v[0])
    except TypeError:
        return float(v)


# ----------------------------------------------------------------------------------- raster


class _SizeRefused(CXRSegIOError):
    """An image refused by its header size (never retried with another decoder)."""


#: Pillow's own pixel limit is global state: changed only under this lock.
_PIL_LIMIT_LOCK = threading.Lock()


def _open_pil(p: Path, expected: str, *, check=None):
    """Open with Pillow; ``check(rows, cols)`` runs on the header size before decoding.

    With a ``check``, it replaces Pillow's decompression-bomb limit (so the size in the
    message is the header's, and a configured limit above Pillow's applies).
    """
    import warnings

    from PIL import Image, UnidentifiedImageError

    im = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if check is None:
                im = Image.open(p)
            else:
                with _PIL_LIMIT_LOCK:
                    saved = Image.MAX_IMAGE_PIXELS
                    Image.MAX_IMAGE_PIXELS = None
                    try:
                        im = Image.open(p)
                    finally:
                        Image.MAX_IMAGE_PIXELS = saved
                try:
                    check(im.size[1], im.size[0])
                except CXRSegIOError as exc:
                    im.close()
                    raise _SizeRefused(str(exc)) from None
            im.load()
    except _SizeRefused:
        raise
    except Image.DecompressionBombError as exc:
        raise _SizeRefused(f"{p}: image is too large ({exc}); {expected}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        if im is not None:
            im.close()  # opened, but its data is unreadable (a truncated file)
        raise CXRSegIOError(f"{p}: cannot read ({exc}); {expected}") from exc
    return im


def _pil_to_array(im, p: Path) -> tuple[np.ndarray, dict]:
    """A Pillow image as a numpy array: gray 2-D, or channel-last colour; palette resolved."""
    info: dict[str, Any] = {"mode": im.mode}
    mode = im.mode
    if mode == "P" or mode == "PA":
        im = im.convert("RGBA" if mode == "PA" or "transparency" in im.info else "RGB")
        a = np.asarray(im)
        rgb = a[..., :3]
        if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
            return rgb[..., 0].copy(), info
        return rgb, info
    if mode in ("1", "L", "LA", "I", "F", "RGB", "RGBA") or mode.startswith("I;16"):
        a = np.asarray(im)
        if mode.startswith("I;16"):
            a = a.astype(np.uint16)
        if mode == "I" and a.size and a.min() >= 0 and a.max() <= 65535:
            a = a.astype(np.uint16)
        if mode == "LA":
            a = a[..., 0]
        if mode == "RGBA":
            a = a[..., :3]
        return a, info
    # CMYK, YCbCr, LAB, HSV, I;16 variants unknown to numpy ...
    return np.asarray(im.convert("RGB")), info


def _tifffile_read(p: Path, *, check=None) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(p) as tf:
        page = tf.pages[0]
        shape = tuple(int(s) for s in page.shape)
        if check is not None:
            planar = len(shape) == 3 and shape[0] in (3, 4) and shape[-1] not in (3, 4)
            rows, cols = (shape[1], shape[2]) if planar else (shape[0], shape[1] if len(shape) > 1 else 1)
            check(rows, cols)  # before any pixel is decoded
        a = page.asarray()
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[0] in (3, 4) and a.shape[-1] not in (3, 4):
        a = np.moveaxis(a, 0, -1)  # planar RGB
    return a


def read_raster(
    path,
    *,
    max_pixels: int | None = None,
    max_side: int | None = None,
    min_side: int | None = None,
) -> CXRImage:
    """Read a PNG/JPEG/TIFF/BMP/GIF image as grayscale ``[0, 1]``.

    Any bit depth is accepted: 1-bit, 8-bit (``/255``), 16-bit (``/65535``; gray 16-bit
    data whose maximum is below 4096 is taken as 12-bit and divided by 4095, with a
    ``meta["warning"]``), float TIFF (kept when already in ``[0, 1]``, else min-max
    scaled). Palette images are read through their palette; colour images become luma
    (ITU-R 601). Of multi-frame files (animated GIF, multi-page TIFF) the first frame is
    used. Spacing is taken from the file's DPI when it records one (``25.4 / dpi`` mm).

    Parameters
    ----------
    path : str or Path
    max_pixels : int, optional
        Refuse larger images before decoding (default :func:`max_pixels`).
    min_side : int, optional
        Refuse images with a shorter side (by the header).
    max_side : int, optional
        Box-average an image whose longer side exceeds this by an integer factor right
        after decoding (``meta["original_shape"]``, ``meta["original_spacing"]`` keep the
        file's geometry).

    Raises
    ------
    CXRSegIOError
        Empty, truncated, non-image, too small or too large files.
    """
    p = _check_file(path)
    if p.stat().st_size == 0:
        raise CXRSegIOError(f"{p}: file is empty, {_RASTER_EXPECTED}")
    suffix = p.suffix.lower()

    def check(rows, cols):
        check_image_size(p, rows, cols, limit=max_pixels, min_side=min_side)

    try:
        im = _open_pil(p, _RASTER_EXPECTED, check=check)
    except _SizeRefused:
        raise
    except CXRSegIOError:
        if suffix in (".tif", ".tiff"):
            try:
                arr = _tifffile_read(p, check=check)
            except CXRSegIOError:
                raise
            except Exception as exc:
                raise CXRSegIOError(f"{p}: cannot read ({exc}); {_RASTER_EXPECTED}") from exc
            meta = {"format": "tiff", "reader": "tifffile"}
            arr, spacing = _maybe_reduce(arr, None, max_side, meta)
            return CXRImage(_to_unit(arr, p, meta), spacing, p, meta)
        raise
    fmt = (im.format or suffix.lstrip(".") or "raster").lower()
    meta: dict[str, Any] = {"format": {"tif": "tiff", "jpg": "jpeg"}.get(fmt, fmt)}
    n_frames = int(getattr(im, "n_frames", 1) or 1)
    if n_frames > 1:
        meta["n_frames"] = n_frames
        meta["note"] = f"{n_frames} frames: only the first is used"
    try:
        arr, info = _pil_to_array(im, p)
    except Exception as exc:
        if suffix in (".tif", ".tiff"):
            arr, info = _tifffile_read(p, check=check), {"reader": "tifffile"}
        else:
            raise CXRSegIOError(f"{p}: cannot decode ({exc}); {_RASTER_EXPECTED}") from exc
    meta.update(info)
    spacing = None
    dpi = im.info.get("dpi")
    try:
        if dpi and float(dpi[0]) > 1 and float(dpi[1]) > 1 and not _default_dpi(dpi):
            spacing = (25.4 / float(dpi[1]), 25.4 / float(dpi[0]))
    except (TypeError, ValueError, IndexError):
        spacing = None
    im.close()
    del im  # the decoded copy in ``arr`` is all that is needed now
    arr, spacing = _maybe_reduce(arr, spacing, max_side, meta)
    return CXRImage(_to_unit(arr, p, meta), spacing, p, meta)


def _maybe_reduce(arr, spacing, max_side, meta):
    """Reduce a decoded array when its longer side exceeds ``max_side`` (see read_raster)."""
    k = _reduce_factor(arr.shape, max_side)
    if k <= 1:
        return arr, spacing
    meta["original_shape"] = (int(arr.shape[0]), int(arr.shape[1]))
    meta["original_spacing"] = spacing
    meta["reduced_by"] = k
    arr = _reduce(arr, k)
    if spacing is not None:
        spacing = (spacing[0] * k, spacing[1] * k)
    return arr, spacing


def _default_dpi(dpi) -> bool:
    # 72 and 96 dpi are what tools write when they know nothing about the pixel size.
    return round(float(dpi[0])) in (72, 96) and round(float(dpi[1])) in (72, 96)


# ------------------------------------------------------------------------------------ image


_FORMAT_ALIASES = {
    "jsrt-img": "jsrt",
    "jsrt": "jsrt",
    "img": "jsrt",
    ".img": "jsrt",
    "dicom": "dicom",
    "dcm": "dicom",
    ".dcm": "dicom",
    "raster": "raster",
    "pillow": "raster",
}


def read_image(
    path,
    *,
    format: str | None = None,  # noqa: A002 - API name
    max_pixels: int | None = None,
    max_side: int | None = None,
    min_side: int | None = None,
) -> CXRImage:
    """Read a chest radiograph of any supported format.

    Parameters
    ----------
    path : str or Path
        The file.
    format : str, optional
        ``"jsrt-img"``, ``"dicom"``, ``"raster"`` (or a raster suffix such as ``"png"``);
        by default chosen from the suffix, then from the content (``DICM`` marker, the
        JSRT byte count, else Pillow).
    max_pixels : int, optional
        Refuse images with more pixels, by their header, before decoding (default
        :func:`max_pixels`: ``$CXRSEG_MAX_PIXELS`` or :data:`DEFAULT_MAX_PIXELS`).
    min_side : int, optional
        Refuse images with a shorter side, by the header (e.g. :data:`MIN_SIDE`).
    max_side : int, optional
        Return an image whose longer side exceeds this reduced by an integer factor (box
        average; ``meta["original_shape"]`` keeps the file's size).

    Returns
    -------
    CXRImage
    """
    p = _check_file(path)
    if format is not None:
        key = str(format).lower().strip()
        kind = _FORMAT_ALIASES.get(key)
        if kind is None and ("." + key.lstrip(".")) in RASTER_SUFFIXES:
            kind = "raster"
        if kind is None:
            raise CXRSegIOError(
                f"{p}: unknown format {format!r}, expected 'jsrt-img', 'dicom' or 'raster' "
                f"(or one of {', '.join(RASTER_SUFFIXES)})"
            )
    else:
        suffix = p.suffix.lower()
        if suffix == ".img":
            kind = "dicom" if is_dicom(p) else "jsrt"
        elif is_dicom(p):
            kind = "dicom"
        elif suffix in RASTER_SUFFIXES:
            kind = "raster"
        elif p.stat().st_size == JSRT_NBYTES:
            kind = "jsrt"
        else:
            kind = "raster"
    if kind in ("jsrt", "dicom"):
        reader = read_jsrt_img if kind == "jsrt" else read_dicom
        img = reader(p, max_pixels=max_pixels, min_side=min_side)
        data, spacing = _maybe_reduce(img.data, img.spacing, max_side, img.meta)
        if data is not img.data:
            img = CXRImage(data, spacing, img.path, img.meta)
        return img
    try:
        return read_raster(p, max_pixels=max_pixels, max_side=max_side, min_side=min_side)
    except CXRSegIOError as exc:
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            raise CXRSegIOError(f"{exc}; supported suffixes: {', '.join(IMAGE_SUFFIXES)}") from exc
        raise


# ------------------------------------------------------------------------------------ masks


def _shape_str(shape) -> str:
    return "x".join(str(int(s)) for s in shape)


def read_mask(path, *, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a binary mask (SCR GIF, PNG, TIFF, BMP) as a 2-D ``bool`` array.

    Values must be ``{0, 255}`` or ``{0, 1}`` (16-bit: ``{0, 65535}``); ``True`` where
    non-zero. Palette images are read through their palette. RGB/RGBA masks are accepted
    only when the colour channels are equal (alpha is ignored).

    Parameters
    ----------
    path : str or Path
    shape : (int, int), optional
        The expected ``(rows, cols)``; a mask of another shape is refused.

    Raises
    ------
    CXRSegIOError
        Unreadable file, a colour or non-binary mask, or the wrong shape.
    """
    expected = "expected a binary mask image (GIF/PNG/TIFF/BMP, values {0,255} or {0,1})"
    p = _check_file(path)
    if p.stat().st_size == 0:
        raise CXRSegIOError(f"{p}: file is empty, {expected}")

    def check(rows, cols):
        lim = max_pixels()
        if int(rows) * int(cols) > lim:
            raise CXRSegIOError(
                f"{p}: mask is {rows}x{cols} pixels, above the limit of {lim} pixels "
                "(CXRSEG_MAX_PIXELS); refused before decoding it"
            )

    try:
        im = _open_pil(p, expected, check=check)
        try:
            arr, _ = _pil_to_array(im, p)
        finally:
            im.close()  # Pillow keeps a GIF's file open for its other frames
    except _SizeRefused:
        raise
    except CXRSegIOError:
        if p.suffix.lower() not in (".tif", ".tiff"):
            raise
        try:
            arr = _tifffile_read(p, check=check)
        except CXRSegIOError:
            raise
        except Exception as exc:
            raise CXRSegIOError(f"{p}: cannot read ({exc}); {expected}") from exc
    arr = np.asarray(arr)
    if arr.ndim == 3:
        if arr.shape[-1] in (3, 4):
            c = arr[..., :3]
            if not ((c[..., 0] == c[..., 1]).all() and (c[..., 1] == c[..., 2]).all()):
                raise CXRSegIOError(
                    f"{p}: is a colour (RGB) image with differing channels, expected a "
                    "single-channel binary mask (values {0,255} or {0,1})"
                )
            arr = c[..., 0]
        elif arr.shape[-1] in (1, 2):
            arr = arr[..., 0]
    if arr.ndim != 2:
        raise CXRSegIOError(f"{p}: mask has shape {arr.shape}, expected a 2-D single-channel mask")
    if shape is not None and tuple(arr.shape) != tuple(int(s) for s in shape):
        raise CXRSegIOError(
            f"{p}: mask is {_shape_str(arr.shape)}, expected {_shape_str(shape)} "
            "(rows x cols, the size of its image)"
        )
    if arr.dtype == np.bool_:
        return np.ascontiguousarray(arr)
    if arr.dtype == np.uint8:  # fast path (SCR GIFs): a histogram instead of a sort
        values = np.flatnonzero(np.bincount(arr.ravel(), minlength=256)).astype(np.uint8)
    else:
        values = np.unique(arr)
    nonzero = values[values != 0]
    if nonzero.size > 1 or (nonzero.size == 1 and float(nonzero[0]) not in (1.0, 255.0, 65535.0)):
        shown = ", ".join(str(v) for v in values[:6]) + (", ..." if values.size > 6 else "")
        raise CXRSegIOError(
            f"{p}: mask holds {values.size} distinct values ({shown}), expected a binary "
            "mask with values {0,255} or {0,1}"
        )
    return arr != 0


_MASK_WRITE_FORMATS = {".png": "PNG", ".gif": "GIF", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP"}


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def png_gray8(pixels) -> bytes:
    """A 2-D ``uint8`` array as an 8-bit grayscale PNG file (bytes).

    Masks are long runs of 0 and 255: with no row filter and zlib's run-length strategy
    they encode about twice as fast as Pillow's PNG writer (which tries every row filter)
    and into smaller files. Any PNG reader returns the same pixels.

    Examples
    --------
    >>> import io, numpy as np
    >>> from PIL import Image
    >>> a = np.zeros((3, 4), np.uint8); a[1, 1:3] = 255
    >>> bool((np.asarray(Image.open(io.BytesIO(png_gray8(a)))) == a).all())
    True
    """
    import struct
    import zlib

    a = np.asarray(pixels)
    if a.ndim != 2 or a.dtype != np.uint8 or a.size == 0:
        raise ValueError(f"expected a non-empty 2-D uint8 array, got {a.dtype} {a.shape}")
    h, w = a.shape
    raw = np.zeros((h, w + 1), dtype=np.uint8)  # a leading 0 per row: filter type None
    raw[:, 1:] = a
    z = zlib.compressobj(6, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    idat = z.compress(raw.data) + z.flush()
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)),
            _png_chunk(b"IDAT", idat),
            _png_chunk(b"IEND", b""),
        )
    )


def write_mask(mask, path) -> Path:
    """Write a 2-D binary mask as an 8-bit image with values ``{0, 255}`` (atomic).

    The suffix chooses the format: ``.png`` (default for SCR-like tools), ``.gif`` (the
    SCR format; a grayscale palette so that it reads back as ``{0, 255}``), ``.tif``/
    ``.tiff``/``.bmp``. Parent folders are created. The file is written to a temporary
    file in the same folder, ``fsync``-ed and moved over ``path``; on error the previous
    file is left intact and the temporary file removed.

    Parameters
    ----------
    mask : array-like
        2-D; ``True``/non-zero is foreground (floats: ``> 0.5``).
    path : str or Path

    Returns
    -------
    pathlib.Path
    """
    from PIL import Image

    p = Path(path).expanduser()
    fmt = _MASK_WRITE_FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise CXRSegIOError(
            f"{p}: cannot write a mask with suffix {p.suffix!r}, expected .png or .gif "
            "(or .tif/.tiff/.bmp)"
        )
    m = np.asarray(mask)
    if m.ndim != 2 or m.size == 0:
        raise CXRSegIOError(f"{p}: mask has shape {m.shape}, expected a non-empty 2-D array")
    if m.dtype == bool:
        binary = np.ascontiguousarray(m)
    elif np.issubdtype(m.dtype, np.floating):
        binary = m > 0.5
    else:
        binary = m != 0
    pixels = binary.view(np.uint8) * np.uint8(255)  # {0, 255}
    if fmt == "PNG":
        data = png_gray8(pixels)
        return atomic_write(p, lambda fh: fh.write(data))
    img = Image.fromarray(pixels)  # mode "L"

    def _save(fh):
        img.save(fh, format=fmt)

    return atomic_write(p, _save)


def same_aspect(src_shape, dst_shape, *, tolerance: float = 0.01) -> bool:
    """Whether two ``(rows, cols)`` grids have the same aspect ratio, within ``tolerance``.

    A mask may be laid over an image of another size only when this holds (SCR masks are
    1024x1024 for 2048x2048 JSRT images).

    Examples
    --------
    >>> same_aspect((1024, 1024), (2048, 2048)), same_aspect((100, 200), (200, 200))
    (True, False)
    """
    r0, c0 = int(src_shape[0]), int(src_shape[1])
    r1, c1 = int(dst_shape[0]), int(dst_shape[1])
    return abs(r0 * c1 - r1 * c0) <= max(r0 * c1, r1 * c0) * tolerance


def resize_mask_nearest(mask, shape) -> np.ndarray:
    """Nearest-neighbour resize of a 2-D array (pixel centres mapped, no smoothing).

    The dtype is kept, and the array itself is returned when it already has ``shape``. An
    integer up-sampling factor replicates pixels exactly (1024 SCR masks onto a 2048 JSRT
    image). The aspect ratio is not checked (see :func:`same_aspect`).

    Parameters
    ----------
    mask : array-like
        2-D array (bool masks, label images).
    shape : (int, int)
        The output ``(rows, cols)``.

    Raises
    ------
    ValueError
        If ``mask`` is not 2-D.

    Examples
    --------
    >>> m = np.array([[1, 0], [0, 1]], bool)
    >>> resize_mask_nearest(m, (4, 4)).astype(int)
    array([[1, 1, 0, 0],
           [1, 1, 0, 0],
           [0, 0, 1, 1],
           [0, 0, 1, 1]])
    """
    a = np.asarray(mask)
    rows, cols = int(shape[0]), int(shape[1])
    if a.shape == (rows, cols):
        return a
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {a.shape}")
    ri = np.minimum(((np.arange(rows) + 0.5) * a.shape[0] / rows).astype(np.intp), a.shape[0] - 1)
    ci = np.minimum(((np.arange(cols) + 0.5) * a.shape[1] / cols).astype(np.intp), a.shape[1] - 1)
    return a[ri[:, None], ci[None, :]]


# ---------------------------------------------------------------------------------- folders


def is_hidden(name: str) -> bool:
    """Whether a file or folder name is skipped when scanning folders (dot files,
    ``__pycache__``).

    >>> is_hidden(".DS_Store"), is_hidden("__pycache__"), is_hidden("JPCLN001.IMG")
    (True, True, False)
    """
    return name.startswith(".") or name == "__pycache__"
