"""Shared pytest fixtures (GUI ones in tests/_gui_fixtures.py, the tiny test model in tests/_tiny_model.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _real_data_path() -> Path:
    env = os.environ.get("CXRSEG_DATA")
    if env:
        return Path(env).expanduser()
    return REPO.parent / "shared" / "data" / "jsrt-scr"


@pytest.fixture(scope="session")
def real_data_root() -> Path:
    """The JSRT/SCR folder (env ``CXRSEG_DATA``, else ``<repo>/../shared/data/jsrt-scr``).

    Skips the test when the folder is missing or empty.
    """
    root = _real_data_path()
    if not root.is_dir() or not any(root.iterdir()):
        pytest.skip("JSRT/SCR data not found: set CXRSEG_DATA")
    return root


@pytest.fixture(autouse=True, scope="session")
def _torch_one_thread():
    """Tiny test models run fastest, and steadiest on shared 2-core machines, on one torch
    thread (two threads competing with other work were 10-20x slower here)."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True, scope="session")
def _private_cache_session(tmp_path_factory):
    """The same private folders for the whole session, in ``os.environ`` itself: a test's
    ``monkeypatch.undo()`` (which also undoes :func:`_private_cache`) then falls back to
    these, never to the user's cache, and subprocesses started outside a test inherit them."""
    base = tmp_path_factory.getbasetemp()
    saved = {k: os.environ.get(k) for k in ("CXRSEG_CACHE", "CXRSEG_HOME")}
    os.environ["CXRSEG_CACHE"] = str(base / "cxrseg-cache")
    os.environ["CXRSEG_HOME"] = str(base / "cxrseg-home")
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(autouse=True)
def _private_cache(monkeypatch, tmp_path_factory, _private_cache_session):
    """Tests never write into the user's cache or home: arrays and working folders go to tmp."""
    base = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("CXRSEG_CACHE", str(base / "cxrseg-cache"))
    monkeypatch.setenv("CXRSEG_HOME", str(base / "cxrseg-home"))
