"""Where per-dataset working files live: review ledger, corrections, autosaves.

By default ``<dataset>/.cxrseg/`` (ledger, autosave) and ``<dataset>/corrections/``
(corrected masks). A read-only dataset (e.g. a shared, licensed copy) gets a folder
under ``$CXRSEG_HOME`` (default ``~/.local/share/cxrseg``) named after the dataset's
absolute path instead, so nothing is ever written into it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def _writable(folder: Path) -> bool:
    probe = folder
    while not probe.exists():
        probe = probe.parent
    # os.access says yes to root even for a read-only (r-x) folder: honour the mode bits too,
    # so a shared, licensed dataset marked read-only is never written into.
    return os.access(probe, os.W_OK) and bool(os.stat(probe).st_mode & 0o222)


def home() -> Path:
    return Path(os.environ.get("CXRSEG_HOME", Path.home() / ".local" / "share" / "cxrseg"))


def _fallback(root: Path) -> Path:
    h = hashlib.sha1(str(root).encode()).hexdigest()[:10]
    return home() / "datasets" / f"{root.name}-{h}"


def workdir(dataset_root: str | os.PathLike) -> Path:
    """The working folder of a dataset (created on demand by the callers that write)."""
    root = Path(dataset_root).resolve()
    d = root / ".cxrseg"
    return d if _writable(root) else _fallback(root) / ".cxrseg"


def corrections_dir(dataset_root: str | os.PathLike) -> Path:
    """The default corrections store of a dataset."""
    root = Path(dataset_root).resolve()
    return root / "corrections" if _writable(root) else _fallback(root) / "corrections"
