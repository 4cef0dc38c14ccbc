"""napari notifications from the docks: errors with a short context, information."""

from __future__ import annotations

import logging

log = logging.getLogger("napari_cxrseg")

__all__ = ["notify_error", "notify_info"]


def notify_error(context: str, exc: BaseException | str) -> None:
    """Show an error notification ``"<context>: <message>"`` (with the traceback attached)."""
    from napari.utils.notifications import ErrorNotification, Notification, NotificationSeverity, notification_manager

    if isinstance(exc, BaseException):
        log.error("%s", context, exc_info=(type(exc), exc, exc.__traceback__))
        note = ErrorNotification(exc)
        text = str(exc) or type(exc).__name__
        note.message = f"{context}: {text}"
    else:
        log.error("%s: %s", context, exc)
        note = Notification(f"{context}: {exc}", severity=NotificationSeverity.ERROR)
    notification_manager.dispatch(note)


def notify_info(message: str) -> None:
    """Show an information notification."""
    from napari.utils.notifications import show_info

    show_info(message)
