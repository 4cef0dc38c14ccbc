"""The demo's samples in the workspace: opening one, and saying when a case is synthetic.

The bundled sample cases are phantoms (:mod:`cxrseg.phantom`): cartoons drawn from simple
shapes, with exact ground truth, for trying the tools. The shipped model was trained on
real radiographs and scores poorly on them, so while one is shown the Cases dock says so
(:class:`SyntheticNote`) and offers the real RG1 chest CR instead.
"""

from __future__ import annotations

from collections.abc import Callable

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFrame, QLabel, QPushButton, QVBoxLayout

__all__ = ["SyntheticNote", "is_synthetic_case", "open_rg1", "show_first_case"]

NOTE = (
    "<b>Synthetic phantom.</b> This case is a cartoon drawn by cxrseg for trying the tools "
    "(no patient data). The model was trained on real radiographs and scores poorly on it: "
    "judge the model on the real RG1 chest CR (button below, or File ▸ Open Sample ▸ "
    "CXR Segmentation) or on your own images (Folder… / Files…)."
)


def is_synthetic_case(case_id: str | None, image=None) -> bool:
    """Whether a case is a cxrseg phantom: its id (``PHANTOM001``...) or its image's metadata."""
    from cxrseg.phantom import is_phantom_case_id

    meta = getattr(image, "meta", None) or {}
    return meta.get("format") == "phantom" or bool(meta.get("synthetic")) or is_phantom_case_id(case_id)


def show_first_case(session, case: str | None = None, *, on_empty: Callable[[], None] | None = None) -> None:
    """Load ``case`` (default: the first) as soon as the next dataset is open."""

    def first(_root) -> None:
        session.dataset_changed.disconnect(first)
        ids = session.case_ids
        target = case or (ids[0] if ids else None)
        if target is None:
            if on_empty is not None:
                on_empty()
            return
        session.load_case(target)

    session.dataset_changed.connect(first)


def open_rg1(session):
    """Open the real chest CR ``RG1_UNCR.dcm`` (pydicom-data) as the dataset and show it;
    returns the worker. Raises :class:`cxrseg.io.CXRSegIOError` when pydicom-data is missing."""
    from .._sample_data import rg1_path

    path = rg1_path()
    show_first_case(session)
    return session.open_files([path])


class SyntheticNote(QFrame):
    """A note shown while the session's case is a synthetic phantom, with a button to the
    real RG1 sample (hidden otherwise)."""

    def __init__(self, session, parent=None):
        super().__init__(parent)
        self.session = session
        self.setObjectName("SyntheticNote")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.label = QLabel(NOTE)
        self.label.setWordWrap(True)
        self.label.setTextFormat(Qt.TextFormat.RichText)
        self.rg1_button = QPushButton("Open the real RG1 chest CR")
        self.rg1_button.setToolTip("RG1_UNCR.dcm from pydicom-data (pip install 'napari-cxrseg[sample]')")
        self.rg1_button.clicked.connect(self.open_rg1)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 4, 6, 4)
        lay.addWidget(self.label)
        lay.addWidget(self.rg1_button, 0, Qt.AlignmentFlag.AlignLeft)
        session.case_changed.connect(self.update_note)
        self.update_note()

    def shown_for_case(self) -> bool:
        """Whether the note is on (the current case is synthetic); independent of the dock's visibility."""
        return not self.isHidden()

    def update_note(self, *_args) -> None:
        s = self.session
        self.setHidden(not (s.case_id is not None and is_synthetic_case(s.case_id, s.image)))

    def open_rg1(self):
        """Open the RG1 sample; a missing pydicom-data becomes a notification. Returns the worker."""
        from cxrseg.io import CXRSegIOError

        from ._notify import notify_error

        try:
            return open_rg1(self.session)
        except CXRSegIOError as exc:
            notify_error("RG1 sample unavailable", exc)
            return None
