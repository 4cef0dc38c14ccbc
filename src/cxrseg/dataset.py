"""Index of a JSRT/SCR-style dataset folder: images, region masks, folds, clinical data.

Discovery never reads an image: it only lists files, so indexing the 247 JSRT cases takes
milliseconds.

Accepted layouts::

    images/<CASE>.png                    masks/<region>/<CASE>.gif       (flat)
    All247images/<CASE>.IMG              fold1/masks/<region>/<CASE>.gif (official SCR)
                                         fold2/masks/<region>/<CASE>.gif
    <CASE>.dcm                           masks/left_lung/<CASE>.png
    case-folder/<CASE>.png               case-folder/heart.gif, case-folder/left lung.png

* Images are files with :data:`cxrseg.io.IMAGE_SUFFIXES` anywhere under the root except
  inside a ``masks`` folder; the case id is the file stem (JSRT stems such as ``jpcln001``
  are upper-cased to ``JPCLN001``; other stems are kept as they are). When a case has
  several image files the preferred is ``.IMG`` > ``.dcm`` > ``.png`` > others.
* **Ground truth comes only from these places**: the root's own ``masks/`` folder, SCR
  ``fold<N>/masks/`` folders (at any depth: the SCR archive unpacks into
  ``scratch/fold1/masks``), and case folders. Masks are
  ``masks/<region folder>/<case>.(gif|png|tif|bmp)``; the region folder may be spelled
  with spaces (official: ``left clavicle``), underscores or hyphens. Any other ``masks``
  folder (``preds/masks``, ``other/masks``) is never read as ground truth; they are
  listed in :attr:`DatasetIndex.ignored_masks`.
* A folder that holds exactly one image may hold its masks next to it, named after the
  region (``heart.gif``, ``left_lung.png``).
* One case's masks all come from **one** of these places: the root's ``masks/`` first,
  then the ``fold<N>/masks/`` folders (in path order), then its case folder.
* Folders that cxrseg wrote (``cxrseg predict`` output, a corrections store, a working
  folder: they hold the :data:`cxrseg.workspace.OUTPUT_MARKER` file) and hidden folders
  are never read as ground truth, nor is anything when the root lies in such a folder.
* JSRT clinical files ``CLNDAT_EN.txt`` / ``CNNDAT_EN.TXT`` anywhere under the root are
  parsed into :attr:`Case.clinical`.

Left and right are the **patient's** sides (left lung = image's right).
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .io import (
    IMAGE_SUFFIXES,
    MASK_SUFFIXES,
    CXRImage,
    CXRSegFileNotFoundError,
    CXRSegIOError,
    is_hidden,
    read_image,
    read_mask,
)
from .regions import REGIONS, canonical_region, parse_regions

__all__ = [
    "Case",
    "DatasetIndex",
    "case_fold",
    "is_nodule_case",
    "normalise_case_id",
    "find_case_files",
    "parse_clinical_file",
    "read_clinical",
    "IMAGE_PREFERENCE",
]

_JSRT_RE = re.compile(r"^(JPC[LN]N)(\d+)$", re.IGNORECASE)

#: Preference among several image files of one case (lower is preferred).
IMAGE_PREFERENCE: dict[str, int] = {".img": 0, ".dcm": 1, ".dicom": 1, ".png": 2}

_MASKS_DIR = "masks"


def normalise_case_id(stem: str) -> str:
    """The case id of a file stem: JSRT stems upper-cased (``jpcln001`` -> ``JPCLN001``),
    other stems unchanged.

    >>> normalise_case_id("jpcln001"), normalise_case_id("JPCNN010"), normalise_case_id("patient_7")
    ('JPCLN001', 'JPCNN010', 'patient_7')
    """
    return stem.upper() if _JSRT_RE.match(stem) else stem


def case_fold(case_id: str) -> int | None:
    """SCR fold of a JSRT case: odd-numbered cases fold 1, even-numbered fold 2.

    Numbering is per prefix: ``JPCLN001`` -> 1, ``JPCLN002`` -> 2, ``JPCNN001`` -> 1.
    Returns ``None`` for ids that are not JSRT ids.
    """
    m = _JSRT_RE.match(str(case_id).strip())
    if not m:
        return None
    return 1 if int(m.group(2)) % 2 == 1 else 2


def is_nodule_case(case_id: str) -> bool | None:
    """``True`` for ``JPCLN*`` (lung nodule), ``False`` for ``JPCNN*``, else ``None``."""
    m = _JSRT_RE.match(str(case_id).strip())
    if not m:
        return None
    return m.group(1).upper() == "JPCLN"


def _region_of(name: str) -> str | None:
    try:
        return canonical_region(name)
    except ValueError:
        return None


@dataclass
class Case:
    """One radiograph and its region masks.

    Attributes
    ----------
    case_id : str
    image_path : pathlib.Path
    mask_paths : dict
        Canonical region -> mask file, only for the regions that have one.
    nodule : bool or None
        JSRT nodule case (``JPCLN``), non-nodule (``JPCNN``) or unknown.
    fold : int or None
        SCR fold (1: odd-numbered, 2: even-numbered) or ``None``.
    clinical : dict or None
        The parsed CLNDAT/CNNDAT row, if the dataset has one.
    """

    case_id: str
    image_path: Path
    mask_paths: dict[str, Path] = field(default_factory=dict)
    nodule: bool | None = None
    fold: int | None = None
    clinical: dict | None = None

    def load_image(self) -> CXRImage:
        """Read the image (:func:`cxrseg.io.read_image`)."""
        return read_image(self.image_path)

    def load_masks(self, regions=None, *, shape=None) -> dict[str, np.ndarray]:
        """Read region masks as ``bool`` arrays.

        Parameters
        ----------
        regions : str or iterable of str, optional
            Regions or groups (:func:`cxrseg.regions.parse_regions`). By default all the
            regions this case has (:attr:`regions`).
        shape : (int, int), optional
            Expected mask shape; a mask of another shape raises :class:`CXRSegIOError`.

        Returns
        -------
        dict
            Canonical region -> 2-D bool mask, in :data:`cxrseg.regions.REGIONS` order.

        Raises
        ------
        KeyError
            A requested region has no mask for this case.
        """
        wanted = self.regions if regions is None else parse_regions(regions)
        missing = [r for r in wanted if r not in self.mask_paths]
        if missing:
            have = ", ".join(self.regions) or "none"
            raise KeyError(
                f"case {self.case_id} has no mask for {', '.join(missing)} (it has: {have})"
            )
        return {r: read_mask(self.mask_paths[r], shape=shape) for r in wanted}

    @property
    def regions(self) -> tuple[str, ...]:
        """Regions that have a mask, in :data:`cxrseg.regions.REGIONS` order."""
        return tuple(r for r in REGIONS if r in self.mask_paths)

    def has_regions(self, regions) -> bool:
        """Whether all these regions have masks."""
        return all(r in self.mask_paths for r in parse_regions(regions))


# ------------------------------------------------------------------------------- discovery


def _image_rank(p: Path) -> tuple[int, str]:
    return (IMAGE_PREFERENCE.get(p.suffix.lower(), 3), str(p))


def _scan_masks_dir(masks_dir: Path, out: dict[str, dict[str, Path]]) -> None:
    """Add ``<masks_dir>/<region>/<case>.<ext>`` files to ``out[case][region]``."""
    if _in_output(masks_dir):
        return  # cxrseg wrote it: never ground truth
    try:
        entries = sorted(os.scandir(masks_dir), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        if not entry.is_dir() or is_hidden(entry.name):
            continue
        region = _region_of(entry.name)
        if region is None:
            continue
        try:
            files = sorted(os.scandir(entry.path), key=lambda e: e.name)
        except OSError:
            continue
        for f in files:
            if is_hidden(f.name) or not f.is_file():
                continue
            stem, ext = os.path.splitext(f.name)
            if ext.lower() not in MASK_SUFFIXES:
                continue
            cid = normalise_case_id(stem)
            out.setdefault(cid, {}).setdefault(region, Path(f.path))


_CLINICAL_RE = re.compile(r"^(CLNDAT|CNNDAT).*\.txt$", re.IGNORECASE)
_FOLD_RE = re.compile(r"^fold\d+$", re.IGNORECASE)


def _in_output(folder: Path, stop: Path | None = None) -> bool:
    """Whether ``folder`` lies in a folder cxrseg wrote (it holds the output marker)."""
    from .workspace import output_root_of

    return output_root_of(folder, stop=stop) is not None


def _is_truth_masks_dir(masks_dir: Path, root: Path) -> bool:
    """The documented ground-truth places: ``<root>/masks`` and ``.../fold<N>/masks``."""
    return masks_dir.parent == root or bool(_FOLD_RE.match(masks_dir.parent.name))


def _discover(root: Path):
    """Walk ``root``: image files, ground-truth mask folders, clinical files, masks beside
    a single image. Returns ``masks`` as ``{masks folder: {case: {region: file}}}``."""
    from .workspace import OUTPUT_MARKER

    images: dict[str, list[Path]] = {}
    masks: dict[Path, dict[str, dict[str, Path]]] = {}
    ignored: list[Path] = []
    beside: list[tuple[Path, dict[str, Path]]] = []  # (single image, region -> file)
    clinical_files: list[Path] = []
    seen: set[str] = set()
    # a root inside cxrseg's own output holds no ground truth at all
    no_truth = _in_output(root)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink loop or a folder linked twice
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames.sort()
        keep = []
        for d in dirnames:
            if is_hidden(d) or d.lower() == "corrections":
                continue  # hidden folders and a corrections store are not ground truth
            sub = Path(dirpath) / d
            if (sub / OUTPUT_MARKER).is_file():
                continue  # cxrseg wrote it (predictions, corrections): never ground truth
            if d.lower() == _MASKS_DIR:
                if not no_truth and _is_truth_masks_dir(sub, root):
                    _scan_masks_dir(sub, masks.setdefault(sub, {}))
                else:
                    ignored.append(sub)
                continue
            keep.append(d)
        dirnames[:] = keep
        dir_images: list[Path] = []
        dir_region_files: dict[str, Path] = {}
        for name in sorted(filenames):
            if is_hidden(name):
                continue
            stem, ext = os.path.splitext(name)
            low = ext.lower()
            if _CLINICAL_RE.match(name):
                clinical_files.append(Path(dirpath) / name)
                continue
            if low not in IMAGE_SUFFIXES:
                continue
            region = _region_of(stem) if low in MASK_SUFFIXES else None
            if region is not None:
                dir_region_files.setdefault(region, Path(dirpath) / name)
                continue
            dir_images.append(Path(dirpath) / name)
        for p in dir_images:
            images.setdefault(normalise_case_id(p.stem), []).append(p)
        if (
            not no_truth
            and dir_region_files
            and len({normalise_case_id(p.stem) for p in dir_images}) == 1
        ):
            beside.append((min(dir_images, key=_image_rank), dir_region_files))
    return images, masks, beside, clinical_files, ignored


def _pick_source(cid: str, sources: list[dict[str, dict[str, Path]]], exact: bool):
    """The masks of ``cid`` from the first source that has any (one root per case)."""
    for src in sources:
        found = src.get(cid)
        if not found and not exact:
            low = cid.lower()
            found = next((v for k, v in src.items() if k.lower() == low), None)
        if found:
            return dict(found)
    return {}


# -------------------------------------------------------------------------------- clinical


def _to_int(s) -> int | None:
    try:
        return int(str(s).strip())
    except (TypeError, ValueError):
        try:
            f = float(str(s).strip())
        except (TypeError, ValueError):
            return None
        return int(f) if f.is_integer() else None


def _to_float(s) -> float | None:
    try:
        return float(str(s).strip())
    except (TypeError, ValueError):
        return None


def _sex(s) -> str | None:
    t = str(s).strip().lower()
    if t in ("male", "m"):
        return "male"
    if t in ("female", "f"):
        return "female"
    return None if t in ("", "?", "-", "unknown") else t


def _fields(line: str, minimum: int) -> list[str]:
    """Split a line on tabs (empty fields dropped); fall back to 2+ spaces, then spaces."""
    for pattern in (r"\t+", r"\s{2,}", r"\s+"):
        parts = [t.strip() for t in re.split(pattern, line.strip())]
        parts = [t for t in parts if t]
        if len(parts) >= minimum:
            return parts
    return parts


def _parse_clinical_line(line: str) -> dict | None:
    line = line.strip().lstrip("\ufeff")
    if not line:
        return None
    first = re.split(r"\s+", line, maxsplit=1)[0]
    stem = first.split(".")[0]
    m = _JSRT_RE.match(stem)
    if not m:
        return None
    cid = stem.upper()
    if m.group(1).upper() == "JPCLN":
        # file, subtlety, size [mm], age, sex, x, y, malignant/benign, location, diagnosis
        f = _fields(line, 9)
        if len(f) < 5:
            return None
        row = {
            "case_id": cid,
            "nodule": True,
            "subtlety": _to_int(f[1]),
            "size_mm": _to_float(f[2]),
            "age": _to_int(f[3]),
            "sex": _sex(f[4]),
            "x": _to_int(f[5]) if len(f) > 5 else None,
            "y": _to_int(f[6]) if len(f) > 6 else None,
            "malignancy": f[7].lower() if len(f) > 7 and f[7] != "?" else None,
            "location": f[8] if len(f) > 8 else None,
            "diagnosis": " ".join(f[9:]) if len(f) > 9 else None,
        }
        return row
    # JPCNN: file, age, sex, diagnosis (non-nodule)
    f = _fields(line, 3)
    if len(f) < 3:
        return None
    return {
        "case_id": cid,
        "nodule": False,
        "age": _to_int(f[1]),
        "sex": _sex(f[2]),
        "diagnosis": " ".join(f[3:]) if len(f) > 3 else None,
    }


def parse_clinical_file(path) -> dict[str, dict]:
    """Parse a JSRT ``CLNDAT_EN.txt`` or ``CNNDAT_EN.TXT`` file.

    Tolerant: fields separated by tabs (extra tabs are skipped) or runs of spaces; an age
    of ``?`` becomes ``None``; lines that are not case rows are ignored.

    Returns
    -------
    dict
        Case id -> row dict with ``case_id``, ``nodule``, ``age`` (int or None), ``sex``
        (``"male"``/``"female"``/None) and, for nodule cases, ``subtlety``, ``size_mm``,
        ``x``, ``y``, ``malignancy``, ``location``, ``diagnosis``; for non-nodule cases
        ``diagnosis``.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise CXRSegIOError(f"{p}: cannot read clinical file ({exc})") from exc
    for enc in ("utf-8-sig", "cp932", "latin-1"):
        try:
            text = raw.decode(enc)
            break
        except UnicodeDecodeError:
            continue
    rows: dict[str, dict] = {}
    for line in text.splitlines():
        try:
            row = _parse_clinical_line(line)
        except Exception:  # pragma: no cover - never fatal
            row = None
        if row is not None:
            rows.setdefault(row["case_id"], row)
    return rows


def read_clinical(root) -> dict[str, dict]:
    """Parse every ``CLNDAT*.txt`` / ``CNNDAT*.txt`` file under ``root`` (case-insensitive)."""
    out: dict[str, dict] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
        for name in sorted(filenames):
            if _CLINICAL_RE.match(name):
                for k, v in parse_clinical_file(Path(dirpath) / name).items():
                    out.setdefault(k, v)
    return out


# ---------------------------------------------------------------------------------- index


class DatasetIndex:
    """All cases of a dataset folder (see the module docstring for the layouts).

    Parameters
    ----------
    root : str or Path
        The dataset folder (or a single image file: one case, masks looked up beside it).
    require_masks : bool
        Keep only cases that have at least one region mask.

    Raises
    ------
    CXRSegIOError
        The root is missing or holds no case.

    Attributes
    ----------
    root : pathlib.Path
    cases : list of Case
        Sorted by case id.
    clinical : dict
        Case id -> clinical row, for every row of the clinical files found.
    orphan_masks : dict
        Case id -> {region: path} for masks whose image was not found.
    ignored_masks : list of pathlib.Path
        ``masks`` folders that are not a documented ground-truth place (or lie in cxrseg
        output) and were therefore not read.
    """

    def __init__(self, root, *, require_masks: bool = False):
        root = Path(root).expanduser()
        if not root.exists():
            raise CXRSegFileNotFoundError(
                f"{root}: dataset folder not found (expected a folder with images/ and "
                "masks/<region>/, or the official SCR layout)"
            )
        only: Path | None = None
        if root.is_file():
            if root.suffix.lower() not in IMAGE_SUFFIXES:
                raise CXRSegIOError(
                    f"{root}: expected a dataset folder or an image file "
                    f"({', '.join(IMAGE_SUFFIXES)})"
                )
            only = root
            root = root.parent
        self.root: Path = root
        images, masks_by_dir, beside, clinical_files, ignored = _discover(root)
        self.ignored_masks: list[Path] = ignored
        # priority: the root's masks/, then fold<N>/masks in path order
        sources = sorted(masks_by_dir, key=lambda d: (d.parent != root, str(d)))
        mask_sources = [masks_by_dir[d] for d in sources]
        clinical: dict[str, dict] = {}
        for cf in clinical_files:
            for k, v in parse_clinical_file(cf).items():
                clinical.setdefault(k, v)
        self.clinical: dict[str, dict] = clinical
        beside_by_image = {img: regs for img, regs in beside}

        cases: list[Case] = []
        for cid, paths in images.items():
            image_path = min(paths, key=_image_rank)
            if only is not None and image_path != only and only not in paths:
                continue
            if only is not None:
                image_path = only
            # other ids than JSRT's: case-insensitive match to mask file stems
            mask_paths = _pick_source(cid, mask_sources, exact=bool(_JSRT_RE.match(cid)))
            if not mask_paths:  # else its case folder (never mixed with a masks/ folder)
                for p in paths:
                    if beside_by_image.get(p):
                        mask_paths = dict(beside_by_image[p])
                        break
            mask_paths = {r: mask_paths[r] for r in REGIONS if r in mask_paths}
            cases.append(
                Case(
                    case_id=cid,
                    image_path=image_path,
                    mask_paths=mask_paths,
                    nodule=is_nodule_case(cid),
                    fold=case_fold(cid),
                    clinical=clinical.get(cid),
                )
            )
        known = {c.case_id.lower() for c in cases}
        orphans: dict[str, dict[str, Path]] = {}
        for src in mask_sources:
            for k, v in src.items():
                if k.lower() not in known:
                    orphans.setdefault(k, v)
        self.orphan_masks: dict[str, dict[str, Path]] = dict(sorted(orphans.items()))
        if require_masks:
            cases = [c for c in cases if c.mask_paths]
        cases.sort(key=lambda c: c.case_id)
        if not cases:
            what = "no case with masks" if require_masks and images else "no case"
            raise CXRSegIOError(
                f"{root}: contains {what} (expected image files "
                f"{'/'.join(IMAGE_SUFFIXES)} outside 'masks' folders"
                + (", with masks in masks/<region>/<case>.gif|png" if require_masks else "")
                + ")"
            )
        self.cases: list[Case] = cases
        self._by_id = {c.case_id: c for c in cases}

    # -- sequence protocol
    def __len__(self) -> int:
        return len(self.cases)

    def __iter__(self) -> Iterator[Case]:
        return iter(self.cases)

    def __contains__(self, key) -> bool:
        if isinstance(key, Case):
            return key.case_id in self._by_id
        return self._lookup(str(key)) is not None

    def _lookup(self, key: str) -> Case | None:
        c = self._by_id.get(key)
        if c is not None:
            return c
        k = Path(key).stem if Path(key).suffix.lower() in IMAGE_SUFFIXES else key
        c = self._by_id.get(normalise_case_id(k))
        if c is not None:
            return c
        low = k.lower()
        for cid, case in self._by_id.items():
            if cid.lower() == low:
                return case
        return None

    def __getitem__(self, key: int | str) -> Case:
        if isinstance(key, (int, np.integer)):
            return self.cases[int(key)]
        if isinstance(key, slice):
            return self.cases[key]  # type: ignore[return-value]
        c = self._lookup(str(key))
        if c is None:
            near = difflib.get_close_matches(
                str(key).upper(), [k.upper() for k in self._by_id], n=3
            )
            near_ids = [cid for cid in self._by_id if cid.upper() in near]
            hint = f"; did you mean {', '.join(near_ids)}?" if near_ids else ""
            raise KeyError(f"no case {key!r} in {self.root} ({len(self)} cases){hint}")
        return c

    def get(self, key: str, default=None) -> Case | None:
        """The case with this id, or ``default``."""
        c = self._lookup(str(key))
        return default if c is None else c

    def __repr__(self) -> str:
        return f"DatasetIndex({str(self.root)!r}, {len(self)} cases)"

    # -- views
    @property
    def case_ids(self) -> list[str]:
        """Case ids, sorted."""
        return [c.case_id for c in self.cases]

    def fold(self, k: int) -> list[Case]:
        """Cases of SCR fold ``k`` (1: odd-numbered, 2: even-numbered)."""
        if k not in (1, 2):
            raise ValueError(f"fold must be 1 or 2 (SCR folds), got {k!r}")
        return [c for c in self.cases if c.fold == k]

    def with_regions(self, regions) -> list[Case]:
        """Cases that have masks for all these regions (names or groups)."""
        wanted = parse_regions(regions)
        return [c for c in self.cases if all(r in c.mask_paths for r in wanted)]

    def subset(self, ids: Iterable[str]) -> list[Case]:
        """The cases with these ids, in the given order (KeyError for unknown ids)."""
        return [self[i] for i in ids]

    def summary(self) -> dict:
        """Counts: cases, nodule/non-nodule, per fold, per region."""
        return {
            "root": str(self.root),
            "cases": len(self),
            "nodule": sum(1 for c in self.cases if c.nodule is True),
            "non_nodule": sum(1 for c in self.cases if c.nodule is False),
            "fold1": sum(1 for c in self.cases if c.fold == 1),
            "fold2": sum(1 for c in self.cases if c.fold == 2),
            "regions": {r: sum(1 for c in self.cases if r in c.mask_paths) for r in REGIONS},
        }


def find_case_files(path) -> Case:
    """The :class:`Case` of one image file, with its ground truth from a documented place.

    The masks come from the first of these that has any for the case (never from two):
    ``<dir>/masks/<region>/<stem>.*`` (the image at a dataset root),
    ``<dir>/../masks/<region>/<stem>.*`` (``images/`` next to ``masks/``),
    ``<dir>/../fold<N>/masks/<region>/<stem>.*`` (official SCR) and, when the folder holds
    only this image, ``<dir>/<region>.*`` (a case folder). A sibling folder's ``masks``
    (``../preds/masks``) is never read, nor is anything in a folder cxrseg wrote (marked by
    :data:`cxrseg.workspace.OUTPUT_MARKER`).

    Raises
    ------
    CXRSegIOError
        The file is missing or not an image file.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise CXRSegFileNotFoundError(f"{p}: no such image file")
    if p.suffix.lower() not in IMAGE_SUFFIXES:
        raise CXRSegIOError(f"{p}: expected an image file ({', '.join(IMAGE_SUFFIXES)})")
    cid = normalise_case_id(p.stem)
    candidates = [p.parent / _MASKS_DIR, p.parent.parent / _MASKS_DIR]
    try:
        candidates += sorted(
            d / _MASKS_DIR
            for d in p.parent.parent.iterdir()
            if d.is_dir() and _FOLD_RE.match(d.name)
        )
    except OSError:
        pass
    sources: list[dict[str, dict[str, Path]]] = []
    seen = set()
    if not _in_output(p.parent):
        for md in candidates:
            if md in seen or not md.is_dir():
                continue
            seen.add(md)
            found: dict[str, dict[str, Path]] = {}
            _scan_masks_dir(md, found)
            sources.append(found)
    mask_paths = _pick_source(cid, sources, exact=False)
    if not mask_paths and not _in_output(p.parent):
        others = [
            q
            for q in p.parent.iterdir()
            if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES and q != p
        ]
        regionfiles = {}
        single = True
        for q in others:
            r = _region_of(q.stem) if q.suffix.lower() in MASK_SUFFIXES else None
            if r is not None:
                regionfiles.setdefault(r, q)
            elif normalise_case_id(q.stem) != cid:
                single = False
        if single:
            mask_paths = regionfiles
    return Case(
        case_id=cid,
        image_path=p,
        mask_paths={r: mask_paths[r] for r in REGIONS if r in mask_paths},
        nodule=is_nodule_case(cid),
        fold=case_fold(cid),
        clinical=None,
    )
