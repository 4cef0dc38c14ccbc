"""Hand-corrected masks: a versioned store beside the dataset, and crash-safe autosaves.

Corrections store
-----------------
:class:`CorrectionStore` keeps every saved correction as a new *version* in the SCR
layout, so the files can be read by any SCR tool::

    <root>/masks/<region>/<case>.v001.png     the corrected mask ({0, 255} PNG)
    <root>/masks/<region>/<case>.v001.json    its sidecar (provenance and statistics)
    <root>/masks/<region>/<case>.v002.png     a later correction of the same region
    ...

The default root is :func:`cxrseg.workspace.corrections_dir` of the dataset,
``<dataset>/corrections/``. The newest version of a case and region wins
(:meth:`CorrectionStore.latest`, :meth:`CorrectionStore.iter_latest`); older versions
stay, so nothing a person drew is ever lost.

Crash safety: a save reserves its version number by creating the version's mask file
with ``O_CREAT | O_EXCL`` (two savers never get the same number), writes the mask
atomically over the reservation (:func:`cxrseg.io.write_mask`: temporary file, ``fsync``,
``os.replace``), then writes the sidecar atomically, **last**. A version exists only when
its sidecar exists, and the sidecar records the SHA-256 of the mask, so a process killed
at any point leaves either the complete new version or no visible new version (a stray
mask without a sidecar is ignored and its number is not reused). A reservation holds the
saver's process id until the mask replaces it; reservations and temporary files of
savers that are gone are removed when the store is next opened, so they are never read.

Reading is strict: a sidecar that cannot be parsed, or whose mask is missing, raises a
:class:`CorrectionError` naming the file (an older version never silently wins), and so
does a file whose case id is not a safe id (``..``, ``-rf``). A mask whose shape differs
from its image's (``image_path``) or from the shape its sidecar records is refused.

The store's root holds :data:`cxrseg.workspace.OUTPUT_MARKER`, so dataset readers never
take corrections for ground truth.

Ground truth is never written: a store refuses a root that is, contains or lies inside
a folder holding the dataset's reference masks, and refuses a root whose ``masks/``
folder holds files that are not correction versions (an SCR ground-truth folder).

Autosave
--------
:class:`AutosaveStore` holds *unsaved* edits, one file per case and region,
``<workdir>/autosave/<case>.<region>.npz`` (written atomically), so an edit survives a
crash or a closed viewer and can be offered back (:meth:`AutosaveStore.pending`,
:meth:`AutosaveStore.restore`); it is discarded once the edit is saved as a correction.

Left and right are the **patient's** sides, as everywhere in cxrseg.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io as _io
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .io import (
    MASK_SUFFIXES,
    CXRSegIOError,
    atomic_write,
    read_mask,
    resize_mask_nearest,
    same_aspect,
    write_mask,
)
from .metrics import jaccard
from .regions import REGIONS, canonical_region

__all__ = [
    "CorrectionError",
    "CorrectionVersion",
    "CorrectionStore",
    "AutosaveEntry",
    "AutosaveStore",
    "mask_stats",
    "file_sha256",
]

#: ``<case>.v<NNN>.png`` / ``.json``; the case id may itself contain dots.
_VERSION_RE = re.compile(r"^(?P<case>.+)\.v(?P<version>\d{3,})\.(?P<ext>png|json)$")
_SAFE_CASE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


class CorrectionError(CXRSegIOError):
    """A correction cannot be stored or read (bad root, bad case id, broken version)."""


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_case_id(case: str) -> str:
    case = str(case).strip()
    if not _SAFE_CASE_RE.match(case) or ".." in case:
        raise CorrectionError(
            f"case id {case!r}: expected letters, digits, '.', '_', '+' or '-' (no path "
            "separators), starting with a letter or digit"
        )
    return case


def _as_mask(mask, what: str) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 2 or m.size == 0:
        raise CorrectionError(f"{what}: expected a non-empty 2-D mask, got shape {m.shape}")
    if m.dtype == bool:
        return m
    if np.issubdtype(m.dtype, np.floating):
        return m > 0.5
    return m != 0


def _image_shape(path: Path) -> tuple[int, int] | None:
    """(rows, cols) of an image from its header (no decoding), or None if unknown."""
    from .io import DICOM_SUFFIXES, JSRT_NBYTES, JSRT_SHAPE, is_dicom

    p = Path(path)
    try:
        if p.suffix.lower() == ".img" and p.stat().st_size == JSRT_NBYTES and not is_dicom(p):
            return JSRT_SHAPE
        if p.suffix.lower() in DICOM_SUFFIXES or is_dicom(p):
            import pydicom

            ds = pydicom.dcmread(p, stop_before_pixels=True, force=True)
            return int(ds.Rows), int(ds.Columns)
        from PIL import Image

        with Image.open(p) as im:
            return int(im.size[1]), int(im.size[0])
    except Exception:
        return None


def _fit(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray | None:
    """``mask`` on the grid ``shape`` (nearest neighbour), or None for another aspect ratio."""
    if mask.shape != tuple(shape) and not same_aspect(mask.shape, shape):
        return None
    return resize_mask_nearest(mask, shape)


def mask_stats(mask, *, prediction=None, truth=None) -> dict[str, Any]:
    """Statistics of a corrected mask, as stored in its sidecar.

    Parameters
    ----------
    mask : array-like
        The corrected 2-D mask.
    prediction, truth : array-like, optional
        The model's (binarised) prediction and the reference mask; masks of another size
        with the same aspect ratio are compared on the corrected mask's grid.

    Returns
    -------
    dict
        ``pixels`` (foreground count), ``pixels_changed`` (pixels that differ from the
        prediction, or None), ``added``/``removed`` (vs the prediction), ``iou_prediction``
        and ``iou_truth`` (Jaccard against each, or None).

    Examples
    --------
    >>> import numpy as np
    >>> m = np.zeros((4, 4), bool); m[:2] = True
    >>> p = np.zeros((4, 4), bool); p[:1] = True
    >>> s = mask_stats(m, prediction=p)
    >>> s["pixels_changed"], s["iou_prediction"]
    (4, 0.5)
    """
    m = _as_mask(mask, "mask")
    out: dict[str, Any] = {
        "pixels": int(np.count_nonzero(m)),
        "pixels_changed": None,
        "added": None,
        "removed": None,
        "iou_prediction": None,
        "iou_truth": None,
    }
    if prediction is not None:
        p = _fit(_as_mask(prediction, "prediction"), m.shape)
        if p is not None:
            out["pixels_changed"] = int(np.count_nonzero(p != m))
            out["added"] = int(np.count_nonzero(m & ~p))
            out["removed"] = int(np.count_nonzero(p & ~m))
            out["iou_prediction"] = jaccard(m, p)
    if truth is not None:
        t = _fit(_as_mask(truth, "truth"), m.shape)
        if t is not None:
            out["iou_truth"] = jaccard(m, t)
    return out


# ------------------------------------------------------------------------------ store


@dataclass(frozen=True)
class CorrectionVersion:
    """One saved version of a corrected mask.

    Attributes
    ----------
    case : str
    region : str
        Canonical region name.
    version : int
        1, 2, ...; the newest version wins for training.
    mask_path, sidecar_path : pathlib.Path
    meta : dict
        The sidecar's content (see :meth:`CorrectionStore.save`).
    """

    case: str
    region: str
    version: int
    mask_path: Path
    sidecar_path: Path
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def load_mask(self) -> np.ndarray:
        """The corrected mask (``bool``).

        Raises
        ------
        CorrectionError
            The mask's shape is not the one its sidecar records.
        """
        m = read_mask(self.mask_path)
        shape = self.meta.get("shape")
        if isinstance(shape, list) and len(shape) == 2 and tuple(m.shape) != tuple(shape):
            raise CorrectionError(
                f"{self.mask_path}: mask is {m.shape[0]}x{m.shape[1]}, its sidecar "
                f"{self.sidecar_path.name} records {shape[0]}x{shape[1]}; refused"
            )
        return m

    @property
    def sidecar_sha256(self) -> str:
        """SHA-256 of the sidecar file (identifies this version in a model's lineage)."""
        return file_sha256(self.sidecar_path)

    def lineage(self) -> dict[str, Any]:
        """The record a fine-tuned checkpoint keeps of this correction."""
        return {
            "case": self.case,
            "region": self.region,
            "version": self.version,
            "sidecar_sha256": self.sidecar_sha256,
            "mask_sha256": self.meta.get("mask_sha256"),
            "annotator": self.meta.get("annotator"),
            "time": self.meta.get("time"),
        }


def _ground_truth_dirs(dataset_root: Path, store_root: Path) -> set[Path]:
    """Folders that hold the dataset's reference masks (and their ``masks`` ancestors)."""
    from .dataset import DatasetIndex

    dirs: set[Path] = set()
    try:
        index = DatasetIndex(dataset_root)
    except CXRSegIOError:
        index = None
    if index is not None:
        # resolved per folder, not per file (a few calls instead of one per mask file: this
        # runs on the GUI thread when a case is first shown); a mask file that is itself a
        # link counts where it points
        names: dict[Path, set[str]] = {}
        for case in index:
            for p in case.mask_paths.values():
                p = Path(p)
                names.setdefault(p.parent, set()).add(p.name)
        for parent, files in names.items():
            try:
                links = {e.name for e in os.scandir(parent) if e.name in files and e.is_symlink()}
            except OSError:
                links = set()
            found = {parent.resolve()} if files - links else set()
            found.update((parent / n).resolve().parent for n in links)
            for d in found:
                if d == store_root or store_root in d.parents:
                    continue
                dirs.add(d)
                if d.parent.name.lower() == "masks":
                    dirs.add(d.parent)
    for cand in (
        dataset_root / "masks",
        dataset_root / "fold1" / "masks",
        dataset_root / "fold2" / "masks",
    ):
        if cand.is_dir():
            dirs.add(cand.resolve())
    return dirs


def _looks_like_ground_truth(root: Path) -> Path | None:
    """A mask file under ``root/masks/<region>/`` that is not a correction version."""
    masks = root / "masks"
    if not masks.is_dir():
        return None
    for sub in masks.iterdir():
        if not sub.is_dir():
            continue
        for f in sub.iterdir():
            if f.is_file() and f.suffix.lower() in MASK_SUFFIXES and not f.name.startswith("."):
                if not _VERSION_RE.match(f.name):
                    return f
    return None


def _write_reserved_mask(m: np.ndarray, mask_path: Path) -> None:
    """Write a mask into its reserved file; on failure remove the (still empty) reservation."""
    try:
        write_mask(m, mask_path)
    except BaseException:
        # an empty reservation is invisible (no sidecar); remove it when we can
        try:
            if mask_path.stat().st_size <= 32:
                mask_path.unlink()
        except OSError:
            pass
        raise


class CorrectionStore:
    """Versioned hand-corrected masks under ``root`` (SCR layout; see the module docstring).

    Parameters
    ----------
    root : str or Path
        The store folder (created on the first save).
    dataset_root : str or Path, optional
        The dataset the corrections belong to. Its reference-mask folders are protected:
        a ``root`` that is, contains or lies inside one of them is refused.

    Raises
    ------
    CorrectionError
        ``root`` overlaps the ground truth, or its ``masks/`` holds files that are not
        correction versions.

    Examples
    --------
    >>> import numpy as np, tempfile
    >>> store = CorrectionStore(tempfile.mkdtemp())
    >>> m = np.zeros((8, 8), bool); m[2:6, 2:6] = True
    >>> v = store.save("CASE1", "heart", m, annotator="me")
    >>> v.version, store.latest("CASE1", "heart").version
    (1, 1)
    """

    def __init__(self, root: str | os.PathLike, *, dataset_root: str | os.PathLike | None = None):
        self.root = Path(root).expanduser().resolve()
        self.dataset_root = (
            Path(dataset_root).expanduser().resolve() if dataset_root is not None else None
        )
        self._protected: set[Path] = set()
        if self.dataset_root is not None:
            self._protected = _ground_truth_dirs(self.dataset_root, self.root)
            for d in self._protected:
                if d == self.root or d in self.root.parents or self.root in d.parents:
                    raise CorrectionError(
                        f"corrections root {self.root}: overlaps the ground-truth mask folder {d}; "
                        f"ground truth is never overwritten. Use a separate folder such as "
                        f"{self.dataset_root / 'corrections'} (the default)"
                    )
        stray = _looks_like_ground_truth(self.root)
        if stray is not None:
            raise CorrectionError(
                f"corrections root {self.root}: {stray} is not a correction version "
                "(<case>.vNNN.png); this looks like a ground-truth folder, which is never "
                "written to. Choose an empty folder or an existing corrections store"
            )
        self.swept: list[Path] = self.sweep()

    def sweep(self) -> list[Path]:
        """Remove what killed savers left: temporary files and empty reservations.

        A temporary file (``.<name>.<pid>.<hex>.tmp``) or a reservation (a mask file of
        a few bytes holding a process id, with no sidecar) is removed when its process is
        gone. Returns the files removed.
        """
        from .io import pid_alive, sweep_temporary

        masks = self.root / "masks"
        if not masks.is_dir():
            return []
        try:
            removed = sweep_temporary(masks)
        except OSError:
            return []
        for d in masks.iterdir():
            if not d.is_dir():
                continue
            for f in d.iterdir():
                m = _VERSION_RE.match(f.name)
                if not m or m.group("ext") != "png" or f.with_suffix(".json").exists():
                    continue
                try:
                    if f.stat().st_size > 32:
                        continue  # a whole mask: ignored, its number not reused
                    text = f.read_bytes().decode("ascii", "replace").strip()
                    pid = int(text) if text.isdigit() else 0
                    if pid == os.getpid() or (pid and pid_alive(pid)):
                        continue
                    if not pid and time_since(f) < 60:
                        continue  # an empty reservation being written right now
                    f.unlink()
                    removed.append(f)
                except OSError:
                    continue
        return removed

    @classmethod
    def for_dataset(cls, dataset_root: str | os.PathLike) -> CorrectionStore:
        """The default store of a dataset (:func:`cxrseg.workspace.corrections_dir`)."""
        from .workspace import corrections_dir

        return cls(corrections_dir(dataset_root), dataset_root=dataset_root)

    def __repr__(self) -> str:
        return f"CorrectionStore({str(self.root)!r})"

    # -- paths
    def region_dir(self, region: str) -> Path:
        """``root/masks/<region>``."""
        return self.root / "masks" / canonical_region(region)

    def _paths(self, case: str, region: str, version: int) -> tuple[Path, Path]:
        d = self.region_dir(region)
        stem = f"{case}.v{version:03d}"
        return d / f"{stem}.png", d / f"{stem}.json"

    def _numbers(self, case: str, region: str) -> list[int]:
        """Every version number in use, complete or not (never reused)."""
        d = self.region_dir(region)
        if not d.is_dir():
            return []
        out = []
        for f in d.iterdir():
            m = _VERSION_RE.match(f.name)
            if m and m.group("case") == case:
                out.append(int(m.group("version")))
        return out

    def _check_target(self, path: Path) -> None:
        rp = path.resolve()
        if self.root not in rp.parents:
            raise CorrectionError(f"{path}: outside the corrections store {self.root}")
        for d in self._protected:
            if d == rp.parent or d in rp.parents:
                raise CorrectionError(f"{path}: inside the ground-truth folder {d}; refused")

    def _reserve(self, case: str, region: str) -> tuple[int, Path, Path]:
        d = self.region_dir(region)
        d.mkdir(parents=True, exist_ok=True)
        for _attempt in range(1000):
            n = max(self._numbers(case, region), default=0) + 1
            mask_path, side_path = self._paths(case, region, n)
            self._check_target(mask_path)
            try:
                fd = os.open(mask_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                continue  # another saver took it: scan again
            try:  # who holds it: a reservation of a dead saver is swept later
                os.write(fd, f"{os.getpid()}\n".encode())
            finally:
                os.close(fd)
            return n, mask_path, side_path
        raise CorrectionError(f"{d}: could not reserve a new version number for {case}")

    # -- writing
    def save(
        self,
        case: str,
        region: str,
        mask,
        *,
        prediction=None,
        truth=None,
        model_id: str | None = None,
        annotator: str | None = None,
        image_path: str | os.PathLike | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> CorrectionVersion:
        """Save a corrected mask as a new version.

        Parameters
        ----------
        case : str
            Case id (no path separators).
        region : str
            Region (any spelling).
        mask : array-like
            2-D; non-zero (floats: > 0.5) is foreground. Stored at this size (the image's).
        prediction : array-like, optional
            The binarised model prediction the correction started from (for
            ``pixels_changed`` and ``iou_prediction``).
        truth : array-like, optional
            The reference mask, if there is one (for ``iou_truth``); never written.
        model_id : str, optional
            Id of the model whose prediction was corrected.
        annotator : str, optional
        image_path : path-like, optional
            The image the mask belongs to (lets fine-tuning find it without a dataset).
        extra : mapping, optional
            More JSON-able sidecar entries (they never override the standard keys).

        Returns
        -------
        CorrectionVersion
            With the sidecar: ``case``, ``region``, ``version``, ``model_id``,
            ``annotator``, ``time`` (UTC ISO 8601), ``pixels``, ``pixels_changed``,
            ``added``, ``removed``, ``iou_prediction``, ``iou_truth``, ``image_path``,
            ``shape``, ``mask_file``, ``mask_sha256``.
        """
        case = _check_case_id(case)
        region = canonical_region(region)
        m = _as_mask(mask, f"correction of {case} {region}")
        if image_path is not None:
            shape = _image_shape(Path(image_path))
            if shape is not None and tuple(m.shape) != tuple(shape):
                raise CorrectionError(
                    f"correction of {case} {region}: mask is {m.shape[0]}x{m.shape[1]}, its "
                    f"image {Path(image_path).name} is {shape[0]}x{shape[1]}; expected a mask "
                    "of the image's size"
                )
        stats = mask_stats(m, prediction=prediction, truth=truth)
        from .workspace import mark_output

        mark_output(self.root, "corrections")
        n, mask_path, side_path = self._reserve(case, region)
        _write_reserved_mask(m, mask_path)
        meta: dict[str, Any] = dict(extra or {})
        meta.update(
            {
                "case": case,
                "region": region,
                "version": n,
                "model_id": model_id,
                "annotator": annotator,
                "time": _utc_now(),
                **stats,
                "image_path": str(Path(image_path).resolve()) if image_path else None,
                "shape": [int(m.shape[0]), int(m.shape[1])],
                "mask_file": mask_path.name,
                "mask_sha256": file_sha256(mask_path),
            }
        )
        text = json.dumps(meta, indent=1, sort_keys=True).encode()
        self._check_target(side_path)
        atomic_write(side_path, lambda fh: fh.write(text))
        return CorrectionVersion(case, region, n, mask_path, side_path, meta)

    # -- reading
    def _read(self, side_path: Path) -> CorrectionVersion | None:
        m = _VERSION_RE.match(side_path.name)
        if not m or m.group("ext") != "json" or side_path.name.startswith("."):
            return None
        try:
            _check_case_id(m.group("case"))
        except CorrectionError:
            raise CorrectionError(
                f"{side_path}: case id {m.group('case')!r} is not a safe case id (letters, "
                "digits, '.', '_', '+', '-', starting with a letter or digit); refused"
            ) from None
        mask_path = side_path.with_suffix(".png")
        try:
            meta = json.loads(side_path.read_text())
        except (OSError, ValueError) as exc:
            raise CorrectionError(
                f"{side_path}: corrupt correction sidecar ({exc}); repair or remove it "
                "(its version would otherwise hide behind an older one)"
            ) from None
        if not isinstance(meta, dict):
            raise CorrectionError(f"{side_path}: corrupt correction sidecar (not a JSON object)")
        if not mask_path.is_file():
            raise CorrectionError(
                f"{side_path}: its mask {mask_path.name} is missing; the version is incomplete"
            )
        region = side_path.parent.name
        try:
            region = canonical_region(region)
        except ValueError:
            return None
        return CorrectionVersion(
            m.group("case"), region, int(m.group("version")), mask_path, side_path, meta
        )

    def versions(self, case: str, region: str) -> list[CorrectionVersion]:
        """Complete versions of a case and region, oldest first.

        Raises
        ------
        CorrectionError
            An unsafe case id, or a corrupt sidecar (named).
        """
        case = _check_case_id(case)
        d = self.region_dir(region)
        if not d.is_dir():
            return []
        out = []
        for f in d.glob(f"{glob_escape(case)}.v*.json"):
            v = self._read(f)
            if v is not None and v.case == case:
                out.append(v)
        return sorted(out, key=lambda v: v.version)

    def latest(self, case: str, region: str) -> CorrectionVersion | None:
        """The newest complete version, or None."""
        vs = self.versions(case, region)
        return vs[-1] if vs else None

    def load(self, case: str, region: str, version: int | None = None) -> np.ndarray:
        """The mask of a version (default: the newest).

        Raises
        ------
        KeyError
            No such version.
        """
        vs = self.versions(case, region)
        if version is not None:
            vs = [v for v in vs if v.version == int(version)]
        if not vs:
            what = f"version {version}" if version is not None else "correction"
            raise KeyError(f"no {what} of {case} {canonical_region(region)} in {self.root}")
        return vs[-1].load_mask()

    def all_versions(self) -> list[CorrectionVersion]:
        """Every complete version in the store (region order, then case, then version)."""
        out = []
        for r in REGIONS:
            d = self.region_dir(r)
            if not d.is_dir():
                continue
            for f in d.glob("*.v*.json"):
                v = self._read(f)
                if v is not None:
                    out.append(v)
        return sorted(out, key=lambda v: (REGIONS.index(v.region), v.case, v.version))

    def latest_versions(self) -> list[CorrectionVersion]:
        """The newest version of every corrected case and region (sorted by case, region)."""
        best: dict[tuple[str, str], CorrectionVersion] = {}
        for v in self.all_versions():
            key = (v.case, v.region)
            if key not in best or v.version > best[key].version:
                best[key] = v
        return sorted(best.values(), key=lambda v: (v.case, REGIONS.index(v.region)))

    def iter_latest(self) -> Iterator[tuple[str, str, Path, dict]]:
        """``(case, region, mask_path, sidecar)`` of the newest version of each case and region."""
        for v in self.latest_versions():
            yield v.case, v.region, v.mask_path, v.meta

    def cases(self) -> list[str]:
        """Case ids with at least one correction."""
        return sorted({v.case for v in self.all_versions()})

    def __len__(self) -> int:
        return len(self.latest_versions())


def time_since(path: Path) -> float:
    """Seconds since ``path`` was last modified."""
    import time

    return time.time() - path.stat().st_mtime


def glob_escape(text: str) -> str:
    """Escape ``*?[`` for :meth:`pathlib.Path.glob`."""
    return re.sub(r"([*?\[])", r"[\1]", text)


# ------------------------------------------------------------------------------ autosave


@dataclass(frozen=True)
class AutosaveEntry:
    """An unsaved edit kept by :class:`AutosaveStore`."""

    case: str
    region: str
    path: Path
    time: str
    meta: dict = field(default_factory=dict, compare=False, hash=False)


class AutosaveStore:
    """Unsaved edits of masks, one atomic file per case and region.

    Parameters
    ----------
    workdir : str or Path
        The working folder (e.g. :func:`cxrseg.workspace.workdir` of the dataset); files
        go to ``workdir/autosave/<case>.<region>.npz``.
    """

    def __init__(self, workdir: str | os.PathLike):
        self.workdir = Path(workdir).expanduser()
        self.dir = self.workdir / "autosave"

    def __repr__(self) -> str:
        return f"AutosaveStore({str(self.workdir)!r})"

    def path(self, case: str, region: str) -> Path:
        """``workdir/autosave/<case>.<region>.npz``."""
        return self.dir / f"{_check_case_id(case)}.{canonical_region(region)}.npz"

    def save(self, case: str, region: str, mask, **meta) -> Path:
        """Write (atomically) the current state of an edit; ``meta`` is kept with it."""
        m = _as_mask(mask, f"autosave of {case} {region}")
        from .workspace import mark_output

        mark_output(self.workdir, "workdir")
        info = {k: v for k, v in meta.items() if v is not None}
        info.update(
            {
                "case": _check_case_id(case),
                "region": canonical_region(region),
                "time": _utc_now(),
                "shape": list(m.shape),
            }
        )
        buf = _io.BytesIO()
        np.savez(
            buf,
            bits=np.packbits(m, axis=None),
            shape=np.array(m.shape, np.int64),
            meta=np.array(json.dumps(info)),
        )
        data = buf.getvalue()
        return atomic_write(self.path(case, region), lambda fh: fh.write(data))

    def _load(self, path: Path) -> tuple[np.ndarray, dict]:
        try:
            with np.load(path, allow_pickle=False) as z:
                shape = tuple(int(s) for s in z["shape"])
                bits = z["bits"]
                meta = json.loads(str(z["meta"]))
        except Exception as exc:
            raise CorrectionError(
                f"{path}: unreadable autosave ({type(exc).__name__}: {exc})"
            ) from None
        mask = np.unpackbits(bits, count=int(np.prod(shape))).reshape(shape).astype(bool)
        return mask, meta

    def pending(self, case: str | None = None) -> list[AutosaveEntry]:
        """Unsaved edits (of one case, or all), oldest first; unreadable files are skipped."""
        if not self.dir.is_dir():
            return []
        out = []
        for f in sorted(self.dir.glob("*.npz")):
            if f.name.startswith("."):
                continue
            try:
                _mask, meta = self._load(f)
            except CorrectionError:
                continue
            if case is not None and meta.get("case") != case:
                continue
            out.append(
                AutosaveEntry(
                    meta.get("case", ""), meta.get("region", ""), f, meta.get("time", ""), meta
                )
            )
        return sorted(out, key=lambda e: (e.time, e.case, e.region))

    def restore(self, case: str, region: str) -> np.ndarray:
        """The autosaved mask of a case and region.

        Raises
        ------
        KeyError
            Nothing autosaved for it.
        """
        p = self.path(case, region)
        if not p.is_file():
            raise KeyError(f"no autosaved edit of {case} {canonical_region(region)} in {self.dir}")
        return self._load(p)[0]

    def info(self, case: str, region: str) -> dict:
        """The metadata saved with an autosave."""
        p = self.path(case, region)
        if not p.is_file():
            raise KeyError(f"no autosaved edit of {case} {canonical_region(region)} in {self.dir}")
        return self._load(p)[1]

    def discard(self, case: str, region: str) -> bool:
        """Delete an autosave; True if there was one."""
        p = self.path(case, region)
        try:
            p.unlink()
            return True
        except FileNotFoundError:
            return False
