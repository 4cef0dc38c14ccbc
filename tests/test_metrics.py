"""cxrseg.metrics against values computed by hand (and a brute-force reference)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cxrseg import metrics


def _square(shape, r0, c0, side=3):
    m = np.zeros(shape, bool)
    m[r0 : r0 + side, c0 : c0 + side] = True
    return m


# ----------------------------------------------------------------------------- overlap


def test_jaccard_and_dice_by_hand():
    a = np.zeros((4, 4), bool)
    a[:2] = True  # 8 pixels
    b = np.zeros((4, 4), bool)
    b[1:3] = True  # 8 pixels, 4 shared, union 12
    assert metrics.jaccard(a, b) == pytest.approx(4 / 12)
    assert metrics.dice(a, b) == pytest.approx(2 * 4 / 16)
    # symmetric, and identical masks agree perfectly
    assert metrics.jaccard(b, a) == metrics.jaccard(a, b)
    assert metrics.jaccard(a, a) == 1.0 and metrics.dice(a, a) == 1.0
    # disjoint masks
    c = np.zeros((4, 4), bool)
    c[3, 3] = True
    assert metrics.jaccard(a, c) == 0.0 and metrics.dice(a, c) == 0.0


def test_non_bool_inputs_are_binarised():
    a = np.zeros((4, 4), np.uint8)
    a[:2] = 255
    b = np.zeros((4, 4), float)
    b[1:3] = 1.0
    assert metrics.jaccard(a, b) == pytest.approx(1 / 3)


def test_overlap_by_hand_matches_jaccard_and_dice():
    a = np.zeros((4, 4), bool)
    a[:2] = True  # 8 pixels
    b = np.zeros((4, 4), bool)
    b[1:3] = True  # 8 pixels, 4 shared
    assert metrics.overlap(a, b) == {"jaccard": pytest.approx(4 / 12), "dice": 0.5, "fp": 4, "fn": 4}
    rng = np.random.default_rng(0)
    p, t = rng.random((2, 9, 7)) > 0.6
    o = metrics.overlap(p, t)
    assert o["jaccard"] == metrics.jaccard(p, t) and o["dice"] == metrics.dice(p, t)
    assert o["fp"] == np.count_nonzero(p & ~t) and o["fn"] == np.count_nonzero(t & ~p)
    e = np.zeros((4, 4), bool)
    assert metrics.overlap(e, e) == {"jaccard": 1.0, "dice": 1.0, "fp": 0, "fn": 0}
    assert metrics.overlap(e, a) == {"jaccard": 0.0, "dice": 0.0, "fp": 0, "fn": 8}
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.overlap(np.zeros((4, 4)), np.zeros((4, 5)))


def test_shape_mismatch_and_bad_dims_raise():
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.jaccard(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="2-D"):
        metrics.dice(np.zeros((2, 4, 4)), np.zeros((2, 4, 4)))


# --------------------------------------------------------------------------- distances


def test_single_pixels_distance_isotropic_and_anisotropic():
    a = np.zeros((7, 7), bool)
    b = np.zeros((7, 7), bool)
    a[2, 2] = True
    b[2, 5] = True  # 3 columns apart
    assert metrics.mean_contour_distance(a, b) == pytest.approx(3.0)
    assert metrics.hd95(a, b) == pytest.approx(3.0)
    # columns are 0.5 mm apart, rows 2 mm
    assert metrics.mean_contour_distance(a, b, spacing=(2.0, 0.5)) == pytest.approx(1.5)
    c = np.zeros((7, 7), bool)
    c[5, 2] = True  # 3 rows below a
    assert metrics.hd95(a, c, spacing=(2.0, 0.5)) == pytest.approx(6.0)
    # diagonal: sqrt((3*2)^2 + (3*0.5)^2)
    assert metrics.mean_contour_distance(c, b, spacing=(2.0, 0.5)) == pytest.approx(
        math.hypot(6.0, 1.5)
    )


def test_shifted_squares_by_hand():
    """Two 3x3 squares, the second shifted one column right.

    Each boundary has 8 pixels (the centre is interior). From A to B: 4 pixels lie on
    B's boundary (distance 0), 4 are one column away (1). B to A likewise. So the 16
    distances are eight 0s and eight 1s: MAD 0.5, HD95 1. Overlap 6 of 12 pixels.
    """
    a = _square((8, 8), 1, 1)
    b = _square((8, 8), 1, 2)
    d = np.sort(metrics.boundary_distances(a, b))
    np.testing.assert_allclose(d, [0] * 8 + [1] * 8)
    m = metrics.all_metrics(a, b)
    assert m["jaccard"] == pytest.approx(0.5)
    assert m["dice"] == pytest.approx(2 / 3)
    assert m["mad_mm"] == pytest.approx(0.5)
    assert m["hd95_mm"] == pytest.approx(1.0)
    # anisotropic (2 mm rows, 0.5 mm columns): every non-zero distance is one column,
    # including A's (2, 3), whose nearest B boundary pixels are (2, 2)/(2, 4) (0.5 mm),
    # not (1, 3) (2 mm).
    m = metrics.all_metrics(a, b, spacing=(2.0, 0.5))
    assert m["mad_mm"] == pytest.approx(0.25)
    assert m["hd95_mm"] == pytest.approx(0.5)


def test_vertically_shifted_squares_anisotropic_by_hand():
    """Same squares, B one row lower, rows 2 mm and columns 0.5 mm apart.

    A -> B: A's top row (1, 1..3) is 2 mm from B's row 2; A's (3, 2) lies inside B, and
    its nearest B boundary pixels are (3, 1)/(3, 3), 0.5 mm away; 4 pixels are shared
    boundary (0). B -> A mirrors it. Distances: 8 x 0, 2 x 0.5, 6 x 2.0 -> MAD 13/16, HD95 2.0.
    """
    a = _square((8, 8), 1, 1)
    b = _square((8, 8), 2, 1)
    d = np.sort(metrics.boundary_distances(a, b, spacing=(2.0, 0.5)))
    np.testing.assert_allclose(d, [0] * 8 + [0.5] * 2 + [2.0] * 6)
    m = metrics.all_metrics(a, b, spacing=(2.0, 0.5))
    assert m["mad_mm"] == pytest.approx(13 / 16)
    assert m["hd95_mm"] == pytest.approx(2.0)
    assert metrics.mean_contour_distance(a, b, spacing=(2.0, 0.5)) == pytest.approx(13 / 16)
    assert metrics.hd95(a, b, spacing=(2.0, 0.5)) == pytest.approx(2.0)


def test_hd95_percentile_of_unequal_distances():
    """A 1x5 bar against a single pixel at its left end: the bar's boundary is its 5
    pixels (distances 0, 1, 2, 3, 4 to the pixel); the pixel is 0 from the bar.
    Six distances [0, 0, 1, 2, 3, 4]: MAD 10/6; HD95 = 95th percentile (linear) = 3.75."""
    bar = np.zeros((3, 9), bool)
    bar[1, 2:7] = True
    px = np.zeros((3, 9), bool)
    px[1, 2] = True
    m = metrics.all_metrics(bar, px)
    assert m["mad_mm"] == pytest.approx(10 / 6)
    assert m["hd95_mm"] == pytest.approx(np.percentile([0, 0, 1, 2, 3, 4], 95))
    assert m["hd95_mm"] == pytest.approx(3.75)


def _brute_boundary(m):
    p = np.pad(m, 1)
    inner = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return m & ~inner


def test_distances_match_brute_force_on_random_blobs():
    from scipy import ndimage
    from scipy.spatial.distance import cdist

    rng = np.random.default_rng(3)
    for _ in range(5):
        a = ndimage.binary_opening(rng.random((40, 50)) > 0.45, iterations=2)
        b = ndimage.binary_opening(rng.random((40, 50)) > 0.45, iterations=2)
        if not a.any() or not b.any():
            continue
        sp = (0.7, 1.3)
        pa = np.argwhere(_brute_boundary(a)) * sp
        pb = np.argwhere(_brute_boundary(b)) * sp
        dd = cdist(pa, pb)
        ref = np.concatenate([dd.min(1), dd.min(0)])
        m = metrics.all_metrics(a, b, spacing=sp)
        assert m["mad_mm"] == pytest.approx(ref.mean(), rel=1e-9)
        assert m["hd95_mm"] == pytest.approx(np.percentile(ref, 95), rel=1e-9)


def test_mask_touching_the_border_has_a_boundary_there():
    a = np.zeros((5, 5), bool)
    a[:, :2] = True  # touches the top, bottom and left borders: all 10 pixels are boundary
    b = np.zeros((5, 5), bool)
    b[:, :3] = True
    d = metrics.boundary_distances(a, b)
    # a -> b: column 0 and rows 0/4 lie on b's boundary (0); a's (1..3, 1) are inside b,
    # 1 px from b's column 0 or 2. b -> a: b's column 0 and (0, 1), (4, 1) are on a's
    # boundary (0); b's column 2 is 1 px from a's column 1.
    assert d.max() == pytest.approx(1.0)
    assert (
        d.size == 10 + 5 + 2 + 5
    )  # a: 10 boundary px; b: col 0 (5) + col 1 rows 0,4 (2) + col 2 (5)


# ------------------------------------------------------------------------ empty masks


def test_empty_mask_conventions():
    e = np.zeros((6, 6), bool)
    f = _square((6, 6), 1, 1)
    m = metrics.all_metrics(e, e)
    assert m == {"jaccard": 1.0, "dice": 1.0, "mad_mm": 0.0, "hd95_mm": 0.0}
    assert metrics.mean_contour_distance(e, e) == 0.0 and metrics.hd95(e, e) == 0.0
    for p, t in ((e, f), (f, e)):
        m = metrics.all_metrics(p, t)
        assert m["jaccard"] == 0.0 and m["dice"] == 0.0
        assert math.isinf(m["mad_mm"]) and math.isinf(m["hd95_mm"])
        assert math.isinf(metrics.hd95(p, t)) and math.isinf(metrics.mean_contour_distance(p, t))


def test_batch_jaccard():
    p = np.zeros((2, 2, 4, 4), bool)
    t = np.zeros((2, 2, 4, 4), bool)
    p[0, 0, :2] = True
    t[0, 0, 1:3] = True  # 1/3
    p[1, 0] = True
    t[1, 0] = True  # 1
    p[0, 1, 0, 0] = True  # pred only: 0
    # [1, 1]: both empty -> 1
    out = metrics.batch_jaccard(p, t)
    np.testing.assert_allclose(out, [[1 / 3, 0.0], [1.0, 1.0]])
