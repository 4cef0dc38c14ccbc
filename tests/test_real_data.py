"""The real JSRT/SCR folder (200 cases) reads correctly; skipped without the data.

Only figures are checked; no image or mask leaves the data folder.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from cxrseg.dataset import DatasetIndex, case_fold, is_nodule_case
from cxrseg.regions import REGIONS

pytestmark = pytest.mark.realdata

SIZE = (1024, 1024)


@pytest.fixture(scope="module")
def index(real_data_root):
    return DatasetIndex(real_data_root)


def test_discovery_is_fast_and_complete(real_data_root):
    t0 = time.perf_counter()
    ix = DatasetIndex(real_data_root, require_masks=True)
    elapsed = time.perf_counter() - t0
    assert elapsed < 1.0, f"discovery took {elapsed:.2f} s"
    assert len(ix) == 200
    assert all(c.regions == REGIONS for c in ix)
    assert all(c.image_path.suffix.lower() == ".png" for c in ix)
    assert all(c.case_id.startswith(("JPCLN", "JPCNN")) for c in ix)
    assert all(c.fold == case_fold(c.case_id) and c.fold in (1, 2) for c in ix)
    assert all(c.nodule is is_nodule_case(c.case_id) for c in ix)
    assert len(ix.fold(1)) + len(ix.fold(2)) == 200
    assert len(ix.with_regions("all")) == 200
    assert not ix.orphan_masks


def _centroid_col(m: np.ndarray) -> float:
    cols = m.sum(axis=0, dtype=np.int64)
    return float((cols * np.arange(m.shape[1])).sum() / cols.sum())


def test_all_cases_load_binary_masks_and_sides(index):
    problems: list[str] = []
    for case in index:
        im = case.load_image()
        d = im.data
        if d.shape != SIZE or d.dtype != np.float32:
            problems.append(f"{case.case_id}: image {d.shape} {d.dtype}")
        if not (0.0 <= float(d.min()) and float(d.max()) <= 1.0) or float(d.max()) == float(
            d.min()
        ):
            problems.append(f"{case.case_id}: image range {d.min()}..{d.max()}")
        masks = case.load_masks(shape=SIZE)
        if tuple(masks) != REGIONS:
            problems.append(f"{case.case_id}: regions {tuple(masks)}")
            continue
        for r, m in masks.items():
            if m.dtype != bool or m.shape != SIZE:
                problems.append(f"{case.case_id}/{r}: mask {m.shape} {m.dtype}")
            elif not m.any():
                problems.append(f"{case.case_id}/{r}: empty mask")
        if problems and problems[-1].startswith(case.case_id):
            continue
        # patient's left = image's right (column > 512)
        mid = SIZE[1] / 2
        if not _centroid_col(masks["left_lung"]) > mid:
            problems.append(f"{case.case_id}: left lung centroid not on the image's right")
        if not _centroid_col(masks["right_lung"]) < mid:
            problems.append(f"{case.case_id}: right lung centroid not on the image's left")
        if not _centroid_col(masks["left_clavicle"]) > mid:
            problems.append(f"{case.case_id}: left clavicle centroid not on the image's right")
        if not _centroid_col(masks["right_clavicle"]) < mid:
            problems.append(f"{case.case_id}: right clavicle centroid not on the image's left")
    assert not problems, "\n".join(problems[:20])
    assert len(index) == 200
