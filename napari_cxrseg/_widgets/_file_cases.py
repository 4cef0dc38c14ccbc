"""A case list made of image files, for a session opened on files rather than a dataset folder."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FileCases"]


class FileCases:
    """A case list made of image files (duck-types :class:`cxrseg.dataset.DatasetIndex`).

    A file in the ``images/`` folder of an SCR-layout dataset gets its masks from the
    dataset's ``masks/<region>/``; any other file is indexed on its own (masks beside it
    are found as by ``DatasetIndex``).
    """

    def __init__(self, paths: Iterable[str | os.PathLike]):
        from cxrseg.dataset import DatasetIndex

        paths = [Path(p).expanduser() for p in paths]
        if not paths:
            raise ValueError("no file given")
        cases = []
        parents: dict[Path, Any] = {}
        for p in paths:
            case = None
            top = p.parent.parent
            if p.parent.name.lower() == "images" and (top / "masks").is_dir():
                if top not in parents:
                    try:
                        parents[top] = DatasetIndex(top)
                    except ValueError:
                        parents[top] = None
                idx = parents[top]
                case = idx.get(p.stem) if idx is not None else None
                if case is not None and Path(case.image_path).resolve() != p.resolve():
                    case = None
            cases.extend([case] if case is not None else DatasetIndex(p).cases)
        seen: dict[str, Any] = {}
        for c in cases:
            seen.setdefault(c.case_id, c)
        self.cases = sorted(seen.values(), key=lambda c: c.case_id)
        self.root = Path(os.path.commonpath([str(p.resolve().parent) for p in paths]))
        self._by_id = {c.case_id: c for c in self.cases}

    def __len__(self) -> int:
        return len(self.cases)

    def __iter__(self):
        return iter(self.cases)

    def __contains__(self, key) -> bool:
        return getattr(key, "case_id", key) in self._by_id

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return self.cases[int(key)]
        try:
            return self._by_id[str(key)]
        except KeyError:
            raise KeyError(f"no case {key!r} among the opened files") from None

    def get(self, key, default=None):
        return self._by_id.get(str(key), default)

    @property
    def case_ids(self) -> list[str]:
        return [c.case_id for c in self.cases]

    def __repr__(self) -> str:
        return f"FileCases({str(self.root)!r}, {len(self)} cases)"
