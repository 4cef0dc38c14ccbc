"""Docks that scroll instead of forcing their full height on the main window."""

from __future__ import annotations

__all__ = ["scrollable"]


def scrollable(widget):
    """``widget`` in a frameless vertical scroll area, for a dock.

    A dock otherwise forces its widget's full minimum height onto the main window (a few
    tall docks stacked made the window taller than a 1080 px screen); in a scroll area
    it can be shorter and scrolls. The area is always as wide as the widget needs (its
    minimum width follows the widget's, which changes as texts change), so nothing is cut
    off at the side and nothing scrolls sideways.
    """
    from qtpy.QtCore import QEvent, QSize, Qt
    from qtpy.QtWidgets import QFrame, QScrollArea

    class DockScrollArea(QScrollArea):
        def eventFilter(self, obj, event):  # noqa: N802 - Qt API
            # the widget's minimum width changed (a longer text): tell the dock about it
            if obj is self.widget() and event.type() == QEvent.Type.LayoutRequest:
                self.updateGeometry()
            return super().eventFilter(obj, event)

        def _bar(self) -> int:
            return self.verticalScrollBar().sizeHint().width() + 2

        def minimumSizeHint(self):  # noqa: N802 - Qt API
            w = self.widget()
            if w is None:
                return super().minimumSizeHint()
            return QSize(w.minimumSizeHint().width() + self._bar(), min(120, w.minimumSizeHint().height()))

        def sizeHint(self):  # noqa: N802 - Qt API
            w = self.widget()
            if w is None:
                return super().sizeHint()
            hint = w.sizeHint()
            return QSize(hint.width() + self._bar(), hint.height())

    area = DockScrollArea()
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    area.setWidget(widget)
    widget.installEventFilter(area)
    area.setObjectName(f"{type(widget).__name__}Scroll")
    return area
