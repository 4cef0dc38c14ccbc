"""Shared pytest fixtures (keep small; add helpers to tests/_helpers.py)."""

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
