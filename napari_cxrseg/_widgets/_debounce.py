"""A Qt debouncer: one call after a burst of triggers (slider moves, brush strokes)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QObject, QTimer

__all__ = ["Debouncer"]


class Debouncer(QObject):
    """Call ``func`` once, ``ms`` milliseconds after the last :meth:`trigger`."""

    def __init__(self, func: Callable[[], Any], ms: int = 150, parent: QObject | None = None):
        super().__init__(parent)
        self._func = func
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(int(ms))
        self._timer.timeout.connect(self._fire)

    def trigger(self, *_: Any) -> None:
        """(Re)start the countdown; extra arguments (event objects) are ignored."""
        self._timer.start()

    def pending(self) -> bool:
        """Whether a call is scheduled."""
        return self._timer.isActive()

    def flush(self) -> None:
        """Call now if a call is pending."""
        if self._timer.isActive():
            self._timer.stop()
            self._fire()

    def _fire(self) -> None:
        self._func()
