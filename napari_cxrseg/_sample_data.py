"""Sample data: a synthetic phantom (always) and a real chest CR (``sample`` extra).

* ``phantom``: :func:`cxrseg.phantom.make_phantom` generated on the fly (nothing to
  download or ship), returned as an image and its exact ground truth.
* ``rg1``: ``RG1_UNCR.dcm``, a real PA chest CR (MONOCHROME1, 1955 x 1841) from the
  ``pydicom-data`` package (MIT; originally a NEMA DICOM WG04 test image), which
  ``pip install napari-cxrseg[sample]`` installs. It is looked up locally only; nothing
  is ever downloaded.
"""

from __future__ import annotations

from pathlib import Path

from cxrseg.io import CXRImage, CXRSegIOError, read_dicom

from ._layers import GROUND_TRUTH_SUFFIX, ground_truth_layer_tuple, image_layer_tuple

__all__ = ["make_phantom_sample", "make_rg1_sample", "rg1_path", "PHANTOM_SEED"]

#: Seed of the phantom sample (the same case as ``sample_data/.../PHANTOM001``).
PHANTOM_SEED = 0
RG1_NAME = "RG1_UNCR.dcm"


def make_phantom_sample(seed: int = PHANTOM_SEED, *, size: int = 1024):
    """A synthetic PA chest radiograph and its ground truth (five regions).

    Returns
    -------
    list of layer data tuples
        ``[image, "<case> ground truth" labels]``; the case id is ``PHANTOM001`` for
        seed 0 (as in :func:`cxrseg.phantom.write_phantom_dataset`).
    """
    from cxrseg.phantom import make_phantom, phantom_case_id

    ph = make_phantom(seed, size=size)
    cid = phantom_case_id(seed + 1)
    source = f"cxrseg.phantom.make_phantom(seed={seed}, size={size})"
    img = CXRImage(ph.image, ph.spacing, None, {"format": "phantom", "seed": seed})
    info = {"synthetic": True, "seed": seed}
    return [
        image_layer_tuple(img, cid, case_id=cid, source=source, extra=info),
        ground_truth_layer_tuple(
            ph.masks,
            f"{cid}{GROUND_TRUTH_SUFFIX}",
            shape=ph.image.shape,
            scale=ph.spacing,
            case_id=cid,
            spacing=ph.spacing,
            source=source,
            extra=info,
        ),
    ]


def rg1_path() -> Path:
    """Local path of ``RG1_UNCR.dcm`` from pydicom-data, never downloading.

    Raises
    ------
    CXRSegIOError
        pydicom-data is not installed (the message says how to install it).
    """
    candidates: list[Path] = []
    try:  # pydicom-data installs the ``data_store`` package with the files in data/
        import data_store

        candidates.append(Path(data_store.__file__).parent / "data" / RG1_NAME)
    except ImportError:
        pass
    for c in candidates:
        if c.is_file():
            return c
    try:  # other local data sources registered with pydicom; download=False: no network
        from pydicom.data import get_testdata_file

        found = get_testdata_file(RG1_NAME, download=False)
    except Exception:
        found = None
    if found and Path(str(found)).is_file():
        return Path(str(found))
    raise CXRSegIOError(
        f"{RG1_NAME}: the RG1 chest radiograph sample needs the pydicom-data package; "
        "install it with: pip install 'napari-cxrseg[sample]' (or pip install pydicom-data)"
    )


def make_rg1_sample():
    """The real chest CR ``RG1_UNCR.dcm`` (pydicom-data) as an Image layer.

    Its PixelSpacing is 0, so the spacing is unknown and the layer scale is 1 pixel.

    Returns
    -------
    list of layer data tuples
        ``[image]``.

    Raises
    ------
    CXRSegIOError
        pydicom-data is not installed.
    """
    p = rg1_path()
    img = read_dicom(p)
    info = {
        "licence": "pydicom-data (MIT); image from the DICOM WG04 (NEMA) test set",
        "synthetic": False,
    }
    return [
        image_layer_tuple(img, "RG1", case_id="RG1", source=f"pydicom-data: {RG1_NAME}", extra=info)
    ]
