"""A :class:`~cxrseg.predict.Predictor` in a child process.

An application that shows images (the napari workspace) can start the child before its own
heavy imports: torch's import and the model's load then run on another core, beside the
window's construction, instead of taking turns with it on one interpreter lock, and every
forward pass runs outside the application's process::

    server = PredictorProcess(checkpoint, device="auto")   # returns at once
    ...                                                     # build the window meanwhile
    probs = server.predict(image, regions=("heart",))       # waits for the load if needed
    server.close()

The child is a fresh interpreter (``python -m cxrseg.serve``) talking over a socket pair,
so nothing of the parent (its ``__main__``, Qt, OpenGL) is imported there. Images go in
and probability maps come back pickled over the socket. Errors raised by the model (a bad
image, an unknown region) come back as the same exception; if the child itself ends (killed,
out of memory), every waiting and later call raises :class:`PredictorProcessError` and the
caller decides whether to predict in its own process instead.

POSIX only (it hands the child a socket by file descriptor): :func:`supported` says.
"""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

__all__ = ["PredictorProcess", "PredictorProcessError", "supported"]

#: Seconds :meth:`PredictorProcess.close` waits for the child to exit before killing it.
CLOSE_TIMEOUT_S = 5.0


class PredictorProcessError(RuntimeError):
    """The prediction process could not start, or ended."""


def supported() -> bool:
    """Whether a prediction process can run here (POSIX: the socket is passed by descriptor)."""
    return os.name == "posix"


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else a ``RuntimeError`` carrying its text."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - any pickling failure
        return RuntimeError(f"{type(exc).__name__}: {exc}")


class PredictorProcess:
    """A predictor loaded and run in a child process (see the module docstring).

    Parameters
    ----------
    checkpoint : path, optional
        Model file (``None``: the shipped model), as :func:`cxrseg.predict.get_predictor`.
    device, precision, refine
        As :func:`cxrseg.predict.get_predictor`.
    env : mapping, optional
        Extra environment variables for the child.

    The constructor starts the child and returns at once; :meth:`info`, :meth:`predict`
    and :meth:`devices` wait for the load. Thread-safe: calls from several threads are
    served one at a time.
    """

    def __init__(self, checkpoint=None, *, device: str = "auto", precision: str = "auto",
                 refine: bool | None = None, env: Mapping[str, str] | None = None):
        if not supported():
            raise PredictorProcessError("a prediction process needs a POSIX system")
        self.checkpoint = None if checkpoint in (None, "") else str(checkpoint)
        self.device = str(device or "auto")
        self.precision = str(precision or "auto")
        self.refine = refine
        self._lock = threading.Lock()
        self._info: dict | None = None
        self._failure: str | None = None
        self.started_at = time.perf_counter()
        parent, child = socket.socketpair()
        args = {"checkpoint": self.checkpoint, "device": self.device, "precision": self.precision,
                "refine": refine}
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "cxrseg.serve", str(child.fileno()), pickle.dumps(args).hex()],
                pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})},
                close_fds=True,
            )
        except OSError as exc:
            parent.close()
            raise PredictorProcessError(f"could not start the prediction process: {exc}") from exc
        finally:
            child.close()
        from multiprocessing.connection import Connection

        self._conn = Connection(parent.detach())

    # ------------------------------------------------------------------ state
    def matches(self, checkpoint=None, device: str | None = "auto", refine: bool | None = None) -> bool:
        """Whether this process serves ``checkpoint`` on ``device`` with ``refine``."""
        ck = None if checkpoint in (None, "") else str(checkpoint)
        return ck == self.checkpoint and str(device or "auto") == self.device and refine == self.refine

    @property
    def alive(self) -> bool:
        """The child runs and has not failed."""
        return self._failure is None and self._proc.poll() is None

    @property
    def ready(self) -> bool:
        """The model is loaded (:meth:`info` would not wait)."""
        return self._info is not None

    def _fail(self, why: str) -> PredictorProcessError:
        if self._failure is None:
            code = self._proc.poll()
            self._failure = why + ("" if code is None else f" (exit status {code})")
            self._kill()
        return PredictorProcessError(f"the prediction process {self._failure}")

    def _recv(self) -> Any:
        try:
            return self._conn.recv()
        except (EOFError, OSError) as exc:
            raise self._fail("ended") from exc

    def _wait_ready(self) -> dict:
        if self._info is not None:
            return self._info
        if self._failure is not None:
            raise PredictorProcessError(f"the prediction process {self._failure}")
        kind, payload = self._recv()
        if kind == "error":
            self._fail("could not load the model")
            raise payload
        self._info = payload
        return payload

    # ------------------------------------------------------------------ calls
    def info(self) -> dict:
        """``model_id``, ``refine_id``, ``regions``, ``thresholds``, ``device``, ``precision``,
        ``devices`` (what :func:`cxrseg.device.available_devices` says in the child) and
        ``load_s`` (the child's import and load time). Waits for the load."""
        with self._lock:
            return dict(self._wait_ready())

    def devices(self) -> list[str]:
        """The devices torch sees (:func:`cxrseg.device.available_devices`), from the child."""
        return list(self.info()["devices"])

    def predict(self, image: np.ndarray, *, regions: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """:meth:`cxrseg.predict.Predictor.predict` run in the child: region -> float32
        probability map at the image's size."""
        arr = np.ascontiguousarray(np.asarray(image))
        with self._lock:
            self._wait_ready()
            if self._failure is not None:
                raise PredictorProcessError(f"the prediction process {self._failure}")
            try:
                self._conn.send(("predict", arr, None if regions is None else tuple(regions)))
            except (OSError, ValueError) as exc:
                raise self._fail("ended") from exc
            kind, payload = self._recv()
        if kind == "error":
            raise payload
        return payload

    # ------------------------------------------------------------------ shutdown
    def _kill(self) -> None:
        try:
            self._conn.close()
        except OSError:
            pass
        if self._proc.poll() is None:
            self._proc.kill()
            try:
                self._proc.wait(CLOSE_TIMEOUT_S)
            except subprocess.TimeoutExpired:  # pragma: no cover - an unkillable child
                pass

    def close(self) -> None:
        """Ask the child to exit (it is killed if it has not after :data:`CLOSE_TIMEOUT_S`).
        Waits for a call in progress on another thread no longer than that."""
        got = self._lock.acquire(timeout=CLOSE_TIMEOUT_S)
        try:
            if self._failure is None:
                self._failure = "was closed"
                try:
                    self._conn.send(("quit",))
                except (OSError, ValueError):
                    pass
                try:
                    self._proc.wait(CLOSE_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    pass
            self._kill()
        finally:
            if got:
                self._lock.release()

    def __enter__(self) -> PredictorProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # a forgotten process must not outlive its parent's object
        try:
            if getattr(self, "_proc", None) is not None and self._proc.poll() is None:
                self._kill()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def __repr__(self) -> str:
        state = "ready" if self.ready else (self._failure or "loading")
        return f"PredictorProcess(checkpoint={self.checkpoint!r}, device={self.device!r}, {state})"


# --------------------------------------------------------------------------- child


def _serve(conn, checkpoint, device: str, precision: str, refine) -> None:
    t0 = time.perf_counter()
    try:
        from .device import available_devices
        from .predict import get_predictor

        pred = get_predictor(checkpoint, device=device, precision=precision, refine=refine)
        info = {
            "model_id": str(pred.model_id),
            "refine_id": pred.refine_id,
            "regions": tuple(pred.regions),
            "thresholds": dict(pred.config.thresholds),
            "device": str(pred.device),
            "precision": str(getattr(pred, "precision", precision)),
            "devices": available_devices(),
            "load_s": time.perf_counter() - t0,
        }
    except BaseException as exc:  # noqa: BLE001 - said to the parent, which raises it
        conn.send(("error", _portable(exc)))
        return
    conn.send(("ready", info))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # the parent ended
            return
        if msg[0] != "predict":
            return
        _, image, regions = msg
        try:
            probs = pred.predict(image, regions=regions)
            out = {r: np.asarray(p, dtype=np.float32) for r, p in probs.items()}
        except Exception as exc:  # noqa: BLE001 - said to the parent, which raises it
            conn.send(("error", _portable(exc)))
        else:
            conn.send(("ok", out))


def main(argv: list[str] | None = None) -> int:
    """Child entry point: ``python -m cxrseg.serve FD ARGS_HEX``."""
    from multiprocessing.connection import Connection

    argv = sys.argv[1:] if argv is None else argv
    conn = Connection(int(argv[0]))
    args = pickle.loads(bytes.fromhex(argv[1]))
    try:
        _serve(conn, **args)
    finally:
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
