"""napari widgets of napari-cxrseg (Qt/magicgui; compute lives in :mod:`cxrseg`)."""
