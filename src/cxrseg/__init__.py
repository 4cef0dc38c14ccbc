"""cxrseg: GUI-free core of napari-cxrseg.

Anatomical segmentation of chest radiographs (heart, clavicles, lungs) with a U-Net:
image and mask IO (JSRT ``.IMG``, DICOM, PNG/TIFF/...), the JSRT/SCR dataset index, a
phantom generator, training, tuning, evaluation, prediction and fine-tuning.

This package never imports napari, qtpy or magicgui, and importing it does not import
torch: heavy modules are imported by the functions that need them.
"""

__version__ = "0.1.0"

from .regions import REGIONS  # noqa: E402

__all__ = ["REGIONS", "__version__"]
