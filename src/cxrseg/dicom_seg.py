"""DICOM Segmentation objects (via highdicom) for predictions on DICOM radiographs.

:func:`write_dicom_seg` turns region masks (or sigmoid maps) of a DICOM radiograph into a
DICOM Segmentation that references the source image, one segment per region:

==================  ==================================================  ===============
region              Segmented Property Type (SNOMED CT)                 modifier
==================  ==================================================  ===============
heart               80891009 Heart
left lung           44029006 Left lung
right lung          3341006  Right lung
left clavicle       51299004 Clavicle                                   7771000 Left
right clavicle      51299004 Clavicle                                   24028007 Right
==================  ==================================================  ===============

Left and right are the **patient's** sides. The category of every segment is SNOMED CT
91723000 "Anatomical Structure"; the algorithm is identified by name (``cxrseg``), family
(DCM 123110 "Artificial Intelligence"), version (the model id) and parameters (model id,
thresholds). Segmentations are ``BINARY`` by default, ``FRACTIONAL`` (probability,
8-bit) for sigmoid maps on request.

Projection radiographs (CR, DX) commonly have no Frame of Reference and no image plane
attributes, and some carry a zero ``PixelSpacing``. The segmentation then has no Frame of
Reference either: it is tied to the source's pixel grid by the source's SOP Instance UID,
and the spacing is left to the source (see :func:`_source_for_highdicom`).

:func:`read_dicom_seg` reads one back as region masks, and :func:`find_dicom_seg` finds the
segmentation written beside an image (``<stem>.seg.dcm``).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .io import CXRSegIOError, is_dicom
from .regions import DISPLAY_NAMES, REGIONS

__all__ = [
    "SEGMENT_CODES",
    "SEG_SUFFIX",
    "DicomSeg",
    "write_dicom_seg",
    "read_dicom_seg",
    "find_dicom_seg",
    "dicom_seg_path",
    "write_predict_outputs",
]

#: Suffix of segmentation files written beside their image.
SEG_SUFFIX = ".seg.dcm"

#: Region -> ((code value, meaning) of the Segmented Property Type, (value, meaning) of
#: its laterality modifier or ``None``); all SNOMED CT (``SCT``).
SEGMENT_CODES: dict[str, tuple[tuple[str, str], tuple[str, str] | None]] = {
    "heart": (("80891009", "Heart"), None),
    "left_clavicle": (("51299004", "Clavicle"), ("7771000", "Left")),
    "right_clavicle": (("51299004", "Clavicle"), ("24028007", "Right")),
    "left_lung": (("44029006", "Left lung"), None),
    "right_lung": (("3341006", "Right lung"), None),
}
_CATEGORY = ("91723000", "Anatomical Structure")
_ALGORITHM_NAME = "cxrseg"
_TYPE2_COPIED = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
    "ReferringPhysicianName", "AccessionNumber", "StudyID",
)


@dataclass
class DicomSeg:
    """A DICOM Segmentation read back as region masks.

    Attributes
    ----------
    masks : dict of str to ndarray
        Region -> ``(rows, cols)`` array: bool for a BINARY segmentation, float32 in
        [0, 1] for a FRACTIONAL one.
    fractional : bool
    source_sop_instance_uid : str
        The referenced image.
    model_id : str
        Algorithm version of the segments (the model id when written by cxrseg).
    labels : dict of str to str
        Region -> segment label.
    path : Path or None
    """

    masks: dict[str, np.ndarray]
    fractional: bool
    source_sop_instance_uid: str
    model_id: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    path: Path | None = None


def dicom_seg_path(image_path: str | os.PathLike) -> Path:
    """Where the segmentation of an image goes by default: ``<stem>.seg.dcm`` beside it."""
    p = Path(image_path)
    return p.with_name(p.stem + SEG_SUFFIX)


def _read_source(source):
    """A pydicom Dataset of a DICOM path or Dataset; a clear error for anything else."""
    import pydicom

    if isinstance(source, pydicom.Dataset):
        return source, getattr(source, "filename", None) or "source dataset"
    path = Path(source)
    if not path.is_file():
        raise CXRSegIOError(f"{path}: source image not found")
    if not is_dicom(path):
        raise CXRSegIOError(
            f"{path}: not a DICOM file. A DICOM Segmentation must reference a DICOM source "
            "image; for other formats write masks (PNG/GIF) instead"
        )
    return pydicom.dcmread(path), str(path)


def _source_for_highdicom(ds):
    """A copy of the source that highdicom can derive from: empty type-2 patient and study
    attributes added where missing, and pixel spacings removed when they are invalid (a CR
    may carry ``0\\0``) or the image has no plane description (most CR/DX): copied, they
    would make a Pixel Measures sequence that cannot be read back."""
    src = copy.deepcopy(ds)
    missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID") if not src.get(k)]
    if missing:
        raise CXRSegIOError(
            f"{getattr(ds, 'filename', None) or 'source'}: no {', '.join(missing)}; a segmentation "
            "must reference its source image by these identifiers"
        )
    # patient and study attributes the segmentation copies (type 2: present, may be empty)
    for key in _TYPE2_COPIED:
        if key not in src:
            setattr(src, key, "")
    planar = "ImageOrientationPatient" in src and "ImagePositionPatient" in src
    for key in ("PixelSpacing", "ImagerPixelSpacing"):
        v = src.get(key)
        if v is None:
            continue
        try:
            ok = len(v) == 2 and all(float(x) > 0 for x in v)
        except (TypeError, ValueError):
            ok = False
        # Without a plane description highdicom would write a pixel measure it cannot
        # read back; the segmentation is tied to the source's pixel grid by reference.
        if not ok or not planar:
            delattr(src, key)
    return src


def _codes(region: str):
    from highdicom.sr import CodedConcept

    (tv, tm), mod = SEGMENT_CODES[region]
    ptype = CodedConcept(value=tv, scheme_designator="SCT", meaning=tm)
    modifier = None if mod is None else CodedConcept(value=mod[0], scheme_designator="SCT", meaning=mod[1])
    return ptype, modifier


def write_dicom_seg(
    source,
    masks: dict[str, np.ndarray],
    path: str | os.PathLike,
    *,
    model_id: str,
    fractional: bool = False,
    thresholds: dict[str, float] | None = None,
    series_number: int = 900,
    series_description: str = "cxrseg anatomy segmentation",
    manufacturer: str = "napari-cxrseg",
) -> Path:
    """Write region masks of a DICOM radiograph as a DICOM Segmentation.

    Parameters
    ----------
    source : path-like or pydicom.Dataset
        The single-frame DICOM image the masks belong to (CR, DX, ...).
    masks : dict of str to ndarray
        Region -> ``(Rows, Columns)`` array: masks (bool or 0/1) for BINARY, sigmoid
        maps in [0, 1] with ``fractional=True``. Regions are written in
        :data:`cxrseg.regions.REGIONS` order as segments 1, 2, ...
    path : path-like
        Output file (written atomically).
    model_id : str
        Model id (algorithm version in the segment descriptions).
    fractional : bool
        FRACTIONAL (probability, 8-bit) instead of BINARY.
    thresholds : dict, optional
        Per-region thresholds used for binary masks, recorded as algorithm parameters.
    series_number, series_description, manufacturer
        Header values of the new series.

    Returns
    -------
    Path

    Raises
    ------
    CXRSegIOError
        The source is not a DICOM file, is multi-frame, or the masks do not match it.
    ValueError
        Unknown regions, no masks, or values outside [0, 1] for a fractional map.
    """
    import highdicom as hd

    from . import __version__
    from .io import atomic_write

    ds, name = _read_source(source)
    regions, pixel_array = _seg_pixels(ds, name, masks, fractional)
    descriptions = _segment_descriptions(regions, model_id, thresholds)
    seg = hd.seg.Segmentation(
        source_images=[_source_for_highdicom(ds)],
        pixel_array=pixel_array,
        segmentation_type=(
            hd.seg.SegmentationTypeValues.FRACTIONAL if fractional else hd.seg.SegmentationTypeValues.BINARY
        ),
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=int(series_number),
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=manufacturer,
        manufacturer_model_name=_ALGORITHM_NAME,
        software_versions=str(__version__),
        device_serial_number=str(model_id) or "unknown",
        fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
        max_fractional_value=255,
        content_description=series_description[:64],
        content_label="CXRSEG",
        omit_empty_frames=False,  # an empty region stays a segment: the round trip is exact
    )
    seg.SeriesDescription = series_description[:64]
    return atomic_write(Path(path), lambda fh: seg.save_as(fh, enforce_file_format=True))


def _seg_pixels(ds, name: str, masks: dict[str, np.ndarray], fractional: bool) -> tuple[list[str], np.ndarray]:
    """The regions to write, in :data:`REGIONS` order, and their masks as one
    ``(1 frame, rows, cols, segments)`` array; masks that do not fit the source are refused."""
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise CXRSegIOError(f"{name}: multi-frame image ({frames} frames); expected a single-frame radiograph")
    unknown = [r for r in masks if r not in SEGMENT_CODES]
    if unknown:
        raise ValueError(f"unknown regions {unknown}; expected some of {', '.join(REGIONS)}")
    regions = [r for r in REGIONS if r in masks]
    if not regions:
        raise ValueError("no masks to write")
    shape = (int(ds.Rows), int(ds.Columns))
    planes = []
    for r in regions:
        m = np.asarray(masks[r])
        if m.shape != shape:
            raise CXRSegIOError(
                f"{name}: the {r} mask has shape {m.shape} but the image is {shape[0]} x {shape[1]}; "
                "masks must be at the source image's own resolution"
            )
        if fractional:
            m = m.astype(np.float32)
            if not np.isfinite(m).all() or m.min() < 0 or m.max() > 1:
                raise ValueError(f"{r}: fractional maps must lie in [0, 1]")
        else:
            m = m.astype(bool)
        planes.append(m)
    return regions, np.stack(planes, axis=-1)[None]  # (1 frame, rows, cols, segments)


def _segment_descriptions(regions: list[str], model_id: str, thresholds: dict[str, float] | None) -> list:
    """One segment description per region (segments 1, 2, ...), naming the algorithm."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    params = {"model_id": str(model_id)}
    if thresholds:
        params["thresholds"] = ",".join(f"{r}={float(thresholds[r]):g}" for r in regions if r in thresholds)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=_ALGORITHM_NAME,
        family=codes.cid7162.ArtificialIntelligence,
        version=str(model_id) or "unknown",
        source="napari-cxrseg",
        parameters=params,
    )
    category = hd.sr.CodedConcept(value=_CATEGORY[0], scheme_designator="SCT", meaning=_CATEGORY[1])
    descriptions = []
    for i, r in enumerate(regions, start=1):
        ptype, modifier = _codes(r)
        d = hd.seg.SegmentDescription(
            segment_number=i,
            segment_label=DISPLAY_NAMES[r],
            segmented_property_category=category,
            segmented_property_type=ptype,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_id=r,
            tracking_uid=hd.UID(),
        )
        if modifier is not None:
            # laterality as a type modifier (DICOM PS3.3 C.8.20.2): Clavicle + Left/Right
            d.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [modifier]
        descriptions.append(d)
    return descriptions


def _region_of_segment(item) -> str | None:
    """Region of a segment by its codes (type + laterality), else by its tracking id."""
    try:
        t = item.SegmentedPropertyTypeCodeSequence[0]
        mod = t.get("SegmentedPropertyTypeModifierCodeSequence")
        mv = str(mod[0].CodeValue) if mod else None
        for r, ((tv, _tm), m) in SEGMENT_CODES.items():
            if str(t.CodeValue) == tv and (m[0] if m else None) == mv:
                return r
    except (AttributeError, IndexError):
        pass
    tid = str(item.get("TrackingID", "") or "")
    return tid if tid in SEGMENT_CODES else None


def read_dicom_seg(path: str | os.PathLike) -> DicomSeg:
    """Read a DICOM Segmentation of a single-frame radiograph as region masks.

    Segments whose codes are not one of :data:`SEGMENT_CODES` are skipped.

    Raises
    ------
    CXRSegIOError
        Not a readable DICOM Segmentation, or not of a single source image.
    """
    import highdicom as hd

    p = Path(path)
    try:
        seg = hd.seg.segread(p)
    except Exception as exc:
        raise CXRSegIOError(f"{p}: not a readable DICOM Segmentation ({exc})") from exc
    uids = [u[2] for u in seg.get_source_image_uids()]
    if len(set(uids)) != 1:
        raise CXRSegIOError(f"{p}: references {len(set(uids))} source images; expected one radiograph")
    numbers, regions, labels = [], [], {}
    model_id = ""
    for item in seg.SegmentSequence:
        r = _region_of_segment(item)
        if r is None or r in regions:
            continue
        numbers.append(int(item.SegmentNumber))
        regions.append(r)
        labels[r] = str(item.get("SegmentLabel", r))
        alg = item.get("SegmentationAlgorithmIdentificationSequence")
        if alg and not model_id:
            model_id = str(alg[0].get("AlgorithmVersion", ""))
    fractional = str(seg.SegmentationType) == "FRACTIONAL"
    if not numbers:
        raise CXRSegIOError(f"{p}: no segment is one of the cxrseg regions ({', '.join(REGIONS)})")
    arr = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[uids[0]],
        segment_numbers=numbers,
        dtype=np.float32 if fractional else np.uint8,
    )[0]
    masks = {r: (arr[..., i] if fractional else arr[..., i] > 0) for i, r in enumerate(regions)}
    ordered = {r: masks[r] for r in REGIONS if r in masks}
    return DicomSeg(ordered, fractional, uids[0], model_id, labels, p)


def find_dicom_seg(image_path: str | os.PathLike) -> Path | None:
    """The segmentation written beside an image (``<stem>.seg.dcm``) that references it,
    or ``None``. Never raises."""
    try:
        import pydicom

        p = Path(image_path)
        cand = dicom_seg_path(p)
        if not cand.is_file() or not p.is_file():
            return None
        img = pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        seg = pydicom.dcmread(cand, stop_before_pixels=True)
        if str(seg.get("Modality", "")) != "SEG":
            return None
        uid = str(img.get("SOPInstanceUID", ""))
        for s in seg.get("ReferencedSeriesSequence", []):
            for inst in s.get("ReferencedInstanceSequence", []):
                if str(inst.get("ReferencedSOPInstanceUID", "")) == uid:
                    return cand
        return None
    except Exception:
        return None


def write_predict_outputs(
    inputs, out_dir: str | os.PathLike, *, mode: str = "binary", model_id: str = "",
    log=None,
) -> list[Path]:
    """DICOM Segmentations of a finished ``cxrseg predict`` run, one per DICOM input.

    Reads the run's masks (``OUT/masks/<region>/<case>.png|gif``) or, for
    ``mode="fractional"``, its probability maps (``OUT/heatmaps/<region>/<case>.npy``,
    written by ``--heatmaps``), and writes ``OUT/dicom-seg/<case>.seg.dcm``. Inputs that
    are not DICOM files, or whose outputs are missing (failed cases), are reported
    through ``log`` and skipped.

    Parameters
    ----------
    inputs : list of path-like
        The inputs of the run (files and folders, as given to ``cxrseg predict``).
    out_dir : path-like
        The run's output folder.
    mode : {"binary", "fractional"}
    model_id : str
        Fallback model id when a case's done-marker does not name one.
    log : callable, optional
        Receives one message per skipped input (default: print to stderr).

    Returns
    -------
    list of Path
        The segmentations written.
    """
    import json
    import sys

    from .batch import case_names, collect_inputs
    from .io import read_mask

    if mode not in ("binary", "fractional"):
        raise ValueError(f"DICOM SEG mode must be 'binary' or 'fractional', got {mode!r}")
    log = log or (lambda msg: print(msg, file=sys.stderr))
    out = Path(out_dir)
    files = collect_inputs(inputs, exclude=out)
    written: list[Path] = []
    for f, case in zip(files, case_names(files), strict=True):
        if not is_dicom(f):
            log(f"cxrseg predict: {f}: not a DICOM file, no DICOM SEG written (its masks are in {out / 'masks'})")
            continue
        marker_path = out / ".done" / f"{case}.json"
        marker = json.loads(marker_path.read_text()) if marker_path.is_file() else {}
        maps: dict[str, np.ndarray] = {}
        for r in REGIONS:
            if mode == "fractional":
                p = out / "heatmaps" / r / f"{case}.npy"
                if p.is_file():
                    maps[r] = np.clip(np.load(p).astype(np.float32), 0, 1)
            else:
                for ext in ("png", "gif"):
                    p = out / "masks" / r / f"{case}.{ext}"
                    if p.is_file():
                        maps[r] = read_mask(p)
                        break
        if not maps:
            what = "probability maps (run with --heatmaps)" if mode == "fractional" else "masks"
            log(f"cxrseg predict: {f}: no {what} of case {case} in {out}; no DICOM SEG written")
            continue
        written.append(
            write_dicom_seg(
                f, maps, out / "dicom-seg" / f"{case}{SEG_SUFFIX}",
                model_id=str(marker.get("model_id") or model_id),
                fractional=mode == "fractional",
                thresholds=marker.get("thresholds") if mode == "binary" else None,
            )
        )
    return written
