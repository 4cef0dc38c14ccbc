"""The "Review workspace" widget: the whole cxrseg-gui workspace from napari's plugin menu.

``napari -w napari-cxrseg`` opens the manifest's first widget, this one. It lays out every
dock with the launcher's own code (:func:`napari_cxrseg._launch.build_workspace`) and, in a
viewer without layers, opens the launcher's default data (the bundled sample) at its first case.
"""

from __future__ import annotations

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QDockWidget, QVBoxLayout, QWidget

from .. import _launch
from ._scroll import scrollable

__all__ = ["ReviewWorkspace"]


class ReviewWorkspace(QWidget):
    """Every dock, laid out as by ``cxrseg-gui``; the bundled sample's first case in a viewer
    without layers.

    The widget itself is the Cases dock (:attr:`cases`, in its scroll area), which napari
    docks; the other docks join it on the next event-loop turn, once napari has made its dock.
    """

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        # the layout uses the main window's Qt API, like the launcher; the plugin proxy would only warn
        self.viewer = getattr(napari_viewer, "__wrapped__", napari_viewer)
        self.name, module, cls_name, _group = _launch.DOCKS[0]
        self.cases = _launch._make_widget(self.viewer, module, cls_name)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(scrollable(self.cases))
        #: Dock name -> widget, once the docks are laid out.
        self.widgets: dict = {}
        QTimer.singleShot(0, self._finish)

    def _finish(self) -> None:
        from ._layer_pool import viewer_closed
        from ._state import get_session

        viewer, name = self.viewer, self.name
        if viewer_closed(viewer):
            return
        dock = self.parentWidget()
        while dock is not None and not isinstance(dock, QDockWidget):
            dock = dock.parentWidget()
        if dock is None:  # made directly, not by napari's plugin menu: dock it here
            dock = viewer.window.add_dock_widget(self, name=name, area="right", tabify=False)
        # titled as in cxrseg-gui (napari named it after the contribution)
        dock.setWindowTitle(name)
        label = getattr(getattr(dock, "title", None), "title", None)
        if hasattr(label, "setText"):
            label.setText(name)
        bare = get_session(viewer).index is None and len(viewer.layers) == 0
        self.widgets = _launch.build_workspace(viewer, docked={name: (self.cases, dock)})
        if bare:
            _launch.open_data(viewer, self.widgets, _launch.default_data_root())
