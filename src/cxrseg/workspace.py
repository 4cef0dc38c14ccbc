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


# ------------------------------------------------------------------------- output marker

#: Name of the marker file in every folder cxrseg writes results into (``cxrseg predict``
#: output, a corrections store, a working folder). Readers never take masks below a
#: folder holding it as ground truth.
OUTPUT_MARKER = ".cxrseg-output"


def mark_output(folder: str | os.PathLike, kind: str) -> Path:
    """Create ``folder`` (if needed) and its :data:`OUTPUT_MARKER` file.

    Parameters
    ----------
    folder : path-like
        A folder cxrseg writes results into.
    kind : str
        What it holds (``"predict"``, ``"corrections"``, ``"workdir"``), recorded in the
        marker for people who look.

    Returns
    -------
    pathlib.Path
        The marker file.
    """
    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    m = d / OUTPUT_MARKER
    if not m.is_file():
        text = (
            f'{{"kind": "{kind}", "note": "written by cxrseg; never read as ground truth"}}\n'
        )
        from .io import atomic_write  # a temporary per writer: threads of one process too

        atomic_write(m, lambda fh: fh.write(text.encode("utf-8")))
    return m


def is_output(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds the :data:`OUTPUT_MARKER` (cxrseg wrote it)."""
    return (Path(folder) / OUTPUT_MARKER).is_file()


def output_root_of(path: str | os.PathLike, *, stop: str | os.PathLike | None = None) -> Path | None:
    """The nearest folder at or above ``path`` that holds the marker, or ``None``.

    The search stops after ``stop`` (inclusive) when given, else at the file-system root.
    """
    p = Path(os.path.abspath(path))
    stop_p = Path(os.path.abspath(stop)) if stop is not None else None
    for d in (p, *p.parents):
        if is_output(d):
            return d
        if stop_p is not None and d == stop_p:
            break
    return None
