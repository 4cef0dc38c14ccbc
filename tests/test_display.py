"""cxrseg.display: window/level from each image's own histogram, inside the body."""

from __future__ import annotations

import numpy as np
import pytest

from cxrseg.display import PRESETS, auto_window, body_pixels, limits_to_window, window_to_limits


def _radiograph(scale: float = 1.0, offset: float = 0.0, seed: int = 0) -> np.ndarray:
    """A chest-like image: black collimator border and a burnt-in white label around a body
    whose dark lungs and bright bones span 0.2-0.9 (then scaled, as another detector would)."""
    rng = np.random.default_rng(seed)
    img = np.zeros((400, 300), np.float32)
    body = rng.uniform(0.45, 0.6, (340, 260)).astype(np.float32)
    body[40:260, 30:120] = rng.uniform(0.2, 0.3, (220, 90))  # lung fields (dark)
    body[40:260, 140:230] = rng.uniform(0.2, 0.3, (220, 90))
    body[20:35, 20:240] = rng.uniform(0.8, 0.9, (15, 220))  # clavicles (bright)
    img[30:370, 20:280] = body
    img[0:12, 0:60] = 1.0  # a burnt-in label in the corner
    return img * scale + offset


def test_auto_window_ignores_border_and_labels_and_follows_the_units():
    img = _radiograph()
    lo, hi = auto_window(img)
    assert 0.19 < lo < 0.25 and 0.8 < hi <= 0.9, (lo, hi)  # not 0 (border) nor 1 (label)
    lo2, hi2 = auto_window(_radiograph(scale=4095.0, offset=100.0))  # a 12-bit detector
    assert lo2 == pytest.approx(lo * 4095 + 100, rel=0.02) and hi2 == pytest.approx(hi * 4095 + 100, rel=0.02)


def test_presets_are_ordered_and_bone_is_bright():
    img = _radiograph()
    got = {p: auto_window(img, preset=p) for p in PRESETS}
    assert got["lung"][1] < got["auto"][1] and got["soft tissue"][0] > got["lung"][0]
    # bone: a narrower window (more contrast) inside the body's range
    assert got["auto"][0] < got["bone"][0] < got["bone"][1] < got["auto"][1]
    assert got["soft tissue"][1] > got["bone"][1]
    assert got["full"] == (0.0, 1.0)
    assert auto_window(img, percentiles=(5, 95)) != got["auto"]


def test_flat_and_bad_input():
    assert auto_window(np.full((50, 50), 7.0)) == (6.5, 7.5)
    with pytest.raises(ValueError, match="unknown window preset"):
        auto_window(_radiograph(), preset="brain")
    with pytest.raises(ValueError, match="percentiles"):
        auto_window(_radiograph(), percentiles=(90, 10))
    with pytest.raises(ValueError, match="2-D"):
        body_pixels(np.zeros((3, 3, 3)))
    with pytest.raises(ValueError, match="width"):
        window_to_limits(0.0, 0.5)
    assert window_to_limits(*limits_to_window(0.2, 0.8)) == pytest.approx((0.2, 0.8))


def test_large_images_are_subsampled():
    img = np.tile(_radiograph(), (6, 7))  # 2400 x 2100
    assert body_pixels(img).size <= 300_000


def test_presets_on_real_radiographs(real_data_root):
    """On JSRT films: the lung window holds the lung fields, the bone window the clavicles
    (brighter than the lung behind them) with more contrast than the automatic one."""
    from cxrseg.dataset import DatasetIndex

    index = DatasetIndex(real_data_root)
    for case in index.cases[:4]:
        img = case.load_image().data
        masks = case.load_masks(["left_clavicle", "left_lung", "heart"], shape=img.shape)
        med = {r: float(np.median(img[m])) for r, m in masks.items()}
        auto, bone, lung, soft = (auto_window(img, preset=p) for p in ("auto", "bone", "lung", "soft tissue"))
        assert bone[0] < med["left_clavicle"] < bone[1], (case.case_id, bone, med)
        assert bone[1] - bone[0] < auto[1] - auto[0]
        assert lung[0] < med["left_lung"] < lung[1], (case.case_id, lung, med)
        assert soft[0] < med["heart"] < soft[1], (case.case_id, soft, med)
