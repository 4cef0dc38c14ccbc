"""Fixtures and helpers shared by the widget tests (import them into a test module).

    from _gui_fixtures import phantom_root, tiny_ckpt, wait_worker  # noqa: F401
"""

from __future__ import annotations

from pathlib import Path

import pytest

#: Side of the phantom cases used by the widget tests (small: fast to read and predict).
SIZE = 256


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Keep ledgers, caches and autosaves of a test under its tmp_path."""
    monkeypatch.setenv("CXRSEG_HOME", str(tmp_path / "cxrseg-home"))
    monkeypatch.setenv("CXRSEG_CACHE", str(tmp_path / "cxrseg-cache"))
    monkeypatch.delenv("CXRSEG_SYNC", raising=False)


@pytest.fixture
def phantom_root(tmp_path) -> Path:
    """Three 256 px phantom cases (PNG, SCR layout) under tmp_path."""
    from cxrseg.phantom import write_phantom_dataset

    root = tmp_path / "data"
    write_phantom_dataset(root, 3, seed=0, image_format="png", size=SIZE)
    return root


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A tiny random five-region U-Net checkpoint (64 px input)."""
    from _tiny_model import make_tiny_checkpoint

    from napari_cxrseg._widgets._torch_env import guard_triton_import

    guard_triton_import()  # torch may pull in triton: fatal once Mesa's LLVM is loaded

    return make_tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.safetensors")


def wait_worker(qtbot, worker, timeout: int = 60_000) -> None:
    """Block (running the event loop) until a worker from a widget handler has finished."""
    if worker is None:
        return
    with qtbot.waitSignal(worker.finished, timeout=timeout):
        pass


def open_case(qtbot, session, root, case_id: str = "PHANTOM001") -> None:
    """Open a dataset and load one case with real workers."""
    wait_worker(qtbot, session.open_dataset(root))
    wait_worker(qtbot, session.load_case(case_id))
    assert session.case_id == case_id


def notifications():
    """Start collecting napari notifications; returns the list they are appended to."""
    from napari.utils.notifications import notification_manager

    got: list = []
    notification_manager.notification_ready.connect(got.append)
    return got
