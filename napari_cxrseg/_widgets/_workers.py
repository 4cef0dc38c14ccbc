"""Workers of the docks: run work off the GUI thread with error notifications.

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
import os
from collections.abc import Callable, Mapping
from typing import Any

from qtpy.QtCore import QTimer

from ._notify import notify_error
from ._torch_env import guard_triton_import

__all__ = ["WorkerRuntimeError", "ensure_pool_headroom", "start_worker", "sync_mode"]

#: Workers started by start_worker that have not finished (some may not run yet).
_LIVE_WORKERS = [0]


def ensure_pool_headroom(spare: int = 2) -> int:
    """Keep idle threads in Qt's global thread pool beyond the busy ones; returns its size.

    napari workers run in ``QThreadPool.globalInstance()``, which Qt also uses from the GUI
    thread (e.g. scaling the activity spinner's frames) and waits for while holding the
    GIL: with every pool thread a Python worker waiting for the GIL, the window freezes
    for good. A few spare threads avoid that (only a few: Qt splits its image work over
    every pool thread, and they compete with the model for the cores).
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
