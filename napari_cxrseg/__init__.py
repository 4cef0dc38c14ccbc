"""napari-cxrseg: napari plugin for anatomical segmentation of chest radiographs.

The plugin is a thin layer over the GUI-free core :mod:`cxrseg`: a reader (JSRT ``.IMG``,
DICOM, PNG/TIFF/..., SCR masks, case folders and dataset roots), a writer (Labels layer ->
SCR-layout masks), sample data (a synthetic phantom and, with the ``sample`` extra, a real
chest CR from pydicom-data) and widgets. Importing this package imports neither napari
nor torch: contributions are loaded by napari through ``napari.yaml`` when needed.
"""

from cxrseg import __version__

__all__ = ["__version__"]
