"""Training arrays: cases pre-processed once to the model's input size, and cached.

The cache holds every case's image (float16, ``(N, S, S)``) and soft target masks
(float16, ``(N, R, S, S)``, area-averaged from the 1024x1024 SCR masks), so an epoch
never decodes or resizes a radiograph. It is stored as ``.npz`` under
``$CXRSEG_CACHE`` (default ``~/.cache/cxrseg``), keyed by the files' names, sizes and
modification times, the input size and the regions.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .regions import parse_regions
from .transforms import image_to_input, pad_to_square, resize_area


@dataclass
class ArrayData:
    """Pre-processed samples: ``images (N, S, S)`` and ``masks (N, R, S, S)`` in [0, 1]."""

    images: np.ndarray
    masks: np.ndarray
    case_ids: list[str]
    regions: tuple[str, ...]
    sources: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.case_ids)

    def subset(self, idx: Sequence[int]) -> ArrayData:
        idx = list(idx)
        return ArrayData(
            self.images[idx],
            self.masks[idx],
            [self.case_ids[i] for i in idx],
            self.regions,
            [self.sources[i] for i in idx] if self.sources else [],
        )

    def index_of(self, case_id: str) -> int:
        try:
            return self.case_ids.index(case_id)
        except ValueError:
            raise KeyError(f"case {case_id!r} is not in this data set") from None

    @staticmethod
    def concat(parts: Sequence[ArrayData]) -> ArrayData:
        parts = [p for p in parts if len(p)]
        if not parts:
            raise ValueError("no samples to concatenate")
        regions = parts[0].regions
        if any(p.regions != regions for p in parts):
            raise ValueError("cannot concatenate samples of different regions")
        return ArrayData(
            np.concatenate([p.images for p in parts]),
            np.concatenate([p.masks for p in parts]),
            [c for p in parts for c in p.case_ids],
            regions,
            [s for p in parts for s in (p.sources or [""] * len(p))],
        )


def sample_to_arrays(image: np.ndarray, masks: dict, regions, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One image (any size, [0, 1]) and its masks -> ``(S, S)`` image, ``(R, S, S)`` soft masks."""
    import torch

    img, _info = image_to_input(image, size)
    stack = []
    for r in regions:
        m = np.asarray(masks[r], dtype=np.float32)
        if m.shape != image.shape:
            # SCR masks are 1024x1024 while a JSRT .IMG is 2048x2048: same field of view.
            if m.shape[0] * image.shape[1] != m.shape[1] * image.shape[0]:
                raise ValueError(f"mask {r} shape {m.shape} does not match image shape {image.shape}")
        sq, _ = pad_to_square(m, value=0.0)
        stack.append(sq)
    msk = resize_area(torch.from_numpy(np.stack(stack)), size).numpy()
    return img.astype(np.float16), msk.astype(np.float16)


def _files_key(cases, regions, size) -> str:
    h = hashlib.sha256(f"v1|{size}|{','.join(regions)}".encode())
    for c in cases:
        for p in [c.image_path] + [c.mask_paths[r] for r in regions]:
            st = os.stat(p)
            h.update(f"{c.case_id}|{Path(p).name}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def data_fingerprint(cases, regions) -> str:
    """Content-independent fingerprint of a training set: case ids and file sizes."""
    h = hashlib.sha256()
    for c in sorted(cases, key=lambda c: c.case_id):
        h.update(c.case_id.encode())
        h.update(str(os.path.getsize(c.image_path)).encode())
        for r in regions:
            h.update(f"{r}:{os.path.getsize(c.mask_paths[r])}".encode())
    return h.hexdigest()[:16]


def default_cache_dir() -> Path:
    return Path(os.environ.get("CXRSEG_CACHE", Path.home() / ".cache" / "cxrseg"))


def build_arrays(
    cases,
    regions,
    size: int,
    *,
    cache_dir: str | os.PathLike | None | bool = None,
    progress: Callable[[int, int], None] | None = None,
) -> ArrayData:
    """Pre-process ``cases`` (:class:`cxrseg.dataset.Case`) to ``size`` (cached).

    ``cache_dir=False`` disables the cache.
    """
    regions = parse_regions(regions)
    cases = list(cases)
    missing = [(c.case_id, r) for c in cases for r in regions if r not in c.mask_paths]
    if missing:
        raise ValueError(f"cases lack masks needed for training: {missing[:5]}")
    path = None
    if cache_dir is not False:
        cdir = Path(cache_dir) if cache_dir else default_cache_dir()
        path = cdir / f"arrays-{_files_key(cases, regions, size)}.npz"
        if path.is_file():
            try:
                with np.load(path) as z:
                    return ArrayData(z["images"], z["masks"], [c.case_id for c in cases], regions,
                                     [str(c.image_path) for c in cases])
            except Exception:
                pass  # a broken cache file is rebuilt
    n = len(cases)
    images = np.zeros((n, size, size), np.float16)
    masks = np.zeros((n, len(regions), size, size), np.float16)
    for i, c in enumerate(cases):
        img = c.load_image().data
        m = c.load_masks(regions)
        images[i], masks[i] = sample_to_arrays(img, m, regions, size)
        if progress:
            progress(i + 1, n)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npz")
            np.savez(tmp, images=images, masks=masks)
            os.replace(tmp, path)
        except OSError:
            pass  # caching is an optimisation only
    return ArrayData(images, masks, [c.case_id for c in cases], regions, [str(c.image_path) for c in cases])


def split_cases(case_ids: Sequence[str], val_fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """Deterministic train/validation split, stratified by id prefix (JPCLN / JPCNN / other).

    The same ids, fraction and seed always give the same split.
    """
    ids = sorted(case_ids)
    groups: dict[str, list[str]] = {}
    for cid in ids:
        groups.setdefault(cid[:5] if cid[:5] in ("JPCLN", "JPCNN") else "other", []).append(cid)
    rng = np.random.default_rng(seed)
    val: list[str] = []
    for key in sorted(groups):
        g = groups[key]
        k = int(round(len(g) * val_fraction))
        if val_fraction > 0 and k == 0 and len(g) > 1:
            k = 1
        val += [g[i] for i in sorted(rng.permutation(len(g))[:k])]
    vs = set(val)
    return [c for c in ids if c not in vs], sorted(val)
