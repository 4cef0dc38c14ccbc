"""Small helpers shared by the dock widgets: workers, error notifications, debouncing.

Workers
-------
:func:`start_worker` runs a function (or generator) in a napari ``thread_worker`` with a
napari ``progress`` bar, connects the callbacks, and *starts the thread on the next turn
of the event loop*: the handler that called it can return the worker, and a test can
``qtbot.waitSignal(worker.finished)`` without a race, even for a worker that finishes
at once. Errors raised in the worker become napari error notifications with a short
context ("Predict failed: ..."), never an exception on the GUI thread.

With ``CXRSEG_SYNC=1`` in the environment, or ``sync=True`` (a session's
``synchronous`` flag), the function runs inline and the callbacks are called directly
(stardist-napari style); :func:`start_worker` then returns ``None``.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

from qtpy.QtCore import QObject, QTimer

log = logging.getLogger("napari_cxrseg")

__all__ = [
    "OnTorchThread",
    "torch_call",
    "ensure_pool_headroom",
    "guard_triton_import",
    "sync_mode",
    "start_worker",
    "notify_error",
    "notify_info",
    "Debouncer",
    "fmt_score",
    "scrollable",
]


def guard_triton_import() -> bool:
    """Stop ``triton`` from being imported into a process that already runs Mesa's LLVM.

    Mesa's OpenGL drivers (llvmpipe under Xvfb or without a GPU, radeonsi, ...) load
    ``libLLVM`` into the process when napari's canvas gets its GL context; importing
    ``triton`` afterwards (torch does it lazily, e.g. through torchvision or
    ``torch._dynamo``) loads a second, statically linked LLVM and crashes the process with
    a segmentation fault. cxrseg never uses ``torch.compile``, so when ``libLLVM`` is
    mapped and ``triton`` is not imported yet, this makes ``import triton`` raise
    ``ImportError`` (torch then carries on without it). Set ``CXRSEG_ALLOW_TRITON=1`` to
    disable the guard. Returns whether it blocked triton.
    """
    if "triton" in sys.modules or not sys.platform.startswith("linux"):
        return False
    if os.environ.get("CXRSEG_ALLOW_TRITON", "0") == "1":
        return False
    try:
        with open("/proc/self/maps", encoding="ascii", errors="ignore") as fh:
            mapped = "libLLVM" in fh.read()
    except OSError:
        return False
    if mapped:
        sys.modules["triton"] = None  # type: ignore[assignment]
        log.info("napari-cxrseg: Mesa's libLLVM is loaded; blocking the triton import (it would crash)")
    return mapped


_TORCH_EXECUTOR = None
#: Workers started by start_worker that have not finished (some may not run yet).
_LIVE_WORKERS = [0]


def torch_call(fn: Callable, *args: Any, **kwargs: Any):
    """Run ``fn(*args, **kwargs)`` on the one thread that does all of the docks' torch work.

    On a CPU, torch parallelises each operation over an OpenMP thread team, and every OS
    thread that calls into torch gets its own team; idle teams keep spinning for a while
    and steal the cores from the busy one (measured: a 70 ms forward pass becomes
    100-300 ms once a second thread has used torch, on 2 cores). Funnelling every
    forward pass through one long-lived thread keeps one warm team. Call from a worker,
    never from the GUI thread (it blocks until done).
    """
    global _TORCH_EXECUTOR
    if _TORCH_EXECUTOR is None:
        from concurrent.futures import ThreadPoolExecutor

        _TORCH_EXECUTOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cxrseg-torch")
    return _TORCH_EXECUTOR.submit(fn, *args, **kwargs).result()


class OnTorchThread:
    """A predictor whose ``predict`` runs through :func:`torch_call` (other attributes pass)."""

    def __init__(self, predictor):
        self._predictor = predictor

    def __getattr__(self, name: str):
        return getattr(self._predictor, name)

    def predict(self, image, **kwargs):
        return torch_call(self._predictor.predict, image, **kwargs)


def ensure_pool_headroom(spare: int = 2) -> int:
    """Keep idle threads in Qt's global thread pool beyond the busy ones; returns its size.

    napari/superqt workers run in ``QThreadPool.globalInstance()``, whose size defaults to
    the number of CPU cores (2 on a small machine). Qt also uses that pool from the GUI
    thread, e.g. to scale the images of napari's activity spinner (``QMovie`` ->
    ``QImage::smoothScaled``), and waits for those tasks while holding Python's GIL. If
    every pool thread is running a Python worker that is waiting for the GIL, the tasks
    never run and the application freezes for good (seen with two workers on two cores).
    Spare threads keep a pool thread free for Qt's own tasks. (Only a few: Qt splits
    those image conversions over every pool thread, and many of them compete with the
    model for the cores.)
    """
    from qtpy.QtCore import QThread, QThreadPool

    pool = QThreadPool.globalInstance()
    busy = max(pool.activeThreadCount(), _LIVE_WORKERS[0])
    want = max(busy + spare, QThread.idealThreadCount())
    if pool.maxThreadCount() < want:
        pool.setMaxThreadCount(want)
    return pool.maxThreadCount()


def sync_mode(flag: bool | None = None) -> bool:
    """Whether workers run inline: ``flag`` if given, else env ``CXRSEG_SYNC=1``."""
    if flag:
        return True
    return os.environ.get("CXRSEG_SYNC", "0").strip().lower() in ("1", "true", "yes", "on")


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


class WorkerRuntimeError(Exception):
    """A ``RuntimeError`` raised in a generator worker, carried out as a plain exception.

    superqt's ``GeneratorWorker`` takes any ``RuntimeError`` from the generator for a
    deleted Qt object: it only warns, and emits neither ``errored`` nor ``finished``. torch
    raises ``RuntimeError`` for most failures (out of memory included), so a dock would
    wait forever. :func:`start_worker` re-raises them as this class; callbacks get the
    original exception (:attr:`original`)."""

    def __init__(self, original: RuntimeError):
        super().__init__(str(original) or type(original).__name__)
        self.original = original


def _plain_errors(genfunc: Callable) -> Callable:
    """Wrap a generator function so a ``RuntimeError`` it raises leaves as
    :class:`WorkerRuntimeError` (``send`` values pass through)."""

    @functools.wraps(genfunc)
    def wrapper(*args: Any, **kwargs: Any):
        try:
            return (yield from genfunc(*args, **kwargs))
        except RuntimeError as exc:
            raise WorkerRuntimeError(exc) from exc

    return wrapper


def start_worker(
    func: Callable,
    *args: Any,
    context: str,
    returned: Callable[[Any], None] | None = None,
    yielded: Callable[[Any], None] | None = None,
    errored: Callable[[BaseException], None] | None = None,
    finished: Callable[[], None] | None = None,
    progress: Mapping[str, Any] | bool | None = False,
    sync: bool | None = None,
    **kwargs: Any,
):
    """Run ``func(*args, **kwargs)`` off the GUI thread; return the (not yet started) worker.

    Parameters
    ----------
    func : callable
        A function (``returned`` gets its value) or a generator function (``yielded`` gets
        every value, ``returned`` the generator's return value).
    context : str
        What is being done, for the progress bar and the error message ("Predict").
    returned, yielded, errored, finished : callable, optional
        GUI-thread callbacks. ``errored`` runs after the error notification.
    progress : bool or mapping
        ``True``: an indeterminate napari progress bar; a mapping: ``{"total": n}`` etc.
        Use it for long work only: napari's activity indicator (an animated GIF) costs
        CPU time while it spins (under a software-rendered display, a lot of it). Env
        ``CXRSEG_NAPARI_PROGRESS=0`` turns napari progress bars off altogether.
    sync : bool, optional
        Run inline (see the module docstring).

    Returns
    -------
    napari.qt.threading.WorkerBase or None
        ``None`` when run synchronously. The thread starts on the next event-loop turn.
    """

    guard_triton_import()

    def _on_error(exc: BaseException) -> None:
        exc = exc.original if isinstance(exc, WorkerRuntimeError) else exc
        notify_error(f"{context} failed", exc)
        if errored is not None:
            errored(exc)

    if sync_mode(sync):
        try:
            if inspect.isgeneratorfunction(func):
                gen = func(*args, **kwargs)
                try:
                    while True:
                        value = next(gen)
                        if yielded is not None:
                            yielded(value)
                except StopIteration as stop:
                    result = stop.value
            else:
                result = func(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - every worker error becomes a notification
            _on_error(exc)
        else:
            if returned is not None:
                returned(result)
        finally:
            if finished is not None:
                finished()
        return None

    from napari.qt.threading import create_worker

    _LIVE_WORKERS[0] += 1
    ensure_pool_headroom()
    prog: Any = None
    if progress and os.environ.get("CXRSEG_NAPARI_PROGRESS", "1") != "0":
        prog = dict(progress) if isinstance(progress, Mapping) else {}
        prog.setdefault("desc", context)
    if inspect.isgeneratorfunction(func):
        func = _plain_errors(func)
    worker = create_worker(func, *args, _start_thread=False, _progress=prog, _ignore_errors=True, **kwargs)
    # napari relays worker errors to the notification manager itself; we show one
    # notification with context instead of two.
    relay = getattr(worker, "_relay_error", None)
    if relay is not None:
        try:
            worker.errored.disconnect(relay)
        except (TypeError, RuntimeError):  # pragma: no cover - napari internals changed
            pass
    worker.errored.connect(_on_error)
    if returned is not None:
        worker.returned.connect(returned)
    if yielded is not None and hasattr(worker, "yielded"):
        worker.yielded.connect(yielded)
    if finished is not None:
        worker.finished.connect(finished)

    def _done() -> None:
        _LIVE_WORKERS[0] = max(0, _LIVE_WORKERS[0] - 1)

    worker.finished.connect(_done)
    from qtpy.QtCore import QThread

    if QThread.currentThread().loopLevel():
        worker.start()  # superqt itself queues the start on the running event loop
    else:  # no loop running yet (a test, a script): start once one runs
        QTimer.singleShot(0, worker.start)
    return worker


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


def fmt_score(v: float | None) -> str:
    """``0.9312`` -> ``"0.931"``; ``None``/NaN -> ``"–"``."""
    if v is None or v != v:
        return "–"
    return f"{v:.3f}"


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
