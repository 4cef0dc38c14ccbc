"""cxrseg.quality: plausibility checks, test-time augmentation, the Jaccard estimate."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cxrseg import quality as Q
from cxrseg.regions import REGIONS


def _ellipse(shape, cy, cx, ry, rx):
    r, c = np.ogrid[: shape[0], : shape[1]]
    return ((r - cy) / ry) ** 2 + ((c - cx) / rx) ** 2 <= 1


def chest(shape=(256, 256), *, jitter=0.0, rng=None):
    """Plausible phantom masks in image coordinates: the patient's left on the image's right."""
    rng = rng or np.random.default_rng(0)
    j = (lambda: 1 + jitter * rng.standard_normal()) if jitter else (lambda: 1.0)
    h, w = shape
    return {
        "heart": _ellipse(shape, 0.62 * h, 0.53 * w, 0.14 * h * j(), 0.16 * w * j()),
        "left_clavicle": _ellipse(shape, 0.2 * h, 0.68 * w, 0.025 * h * j(), 0.14 * w * j()),
        "right_clavicle": _ellipse(shape, 0.2 * h, 0.32 * w, 0.025 * h * j(), 0.14 * w * j()),
        "left_lung": _ellipse(shape, 0.47 * h, 0.7 * w, 0.3 * h * j(), 0.13 * w * j()),
        "right_lung": _ellipse(shape, 0.47 * h, 0.3 * w, 0.3 * h * j(), 0.14 * w * j()),
    }


@pytest.fixture(scope="module")
def reference():
    rng = np.random.default_rng(1)
    return Q.reference_stats(chest(jitter=0.04, rng=rng) for _ in range(20))


def _failing(masks, reference=None):
    checks, _ = Q.run_checks(masks, reference=reference)
    return {c.name: c for c in checks if not c.passed}


def test_plausible_chest_passes_every_check(reference):
    checks, per = Q.run_checks(chest(), reference=reference)
    assert checks and all(c.passed for c in checks), [c.message for c in checks if not c.passed]
    assert {c.name for c in checks} >= {"components", "holes", "area", "area_ratio", "left_right_order",
                                        "clavicle_above_apex", "heart_between_lungs", "lung_symmetry"}
    assert all(v["failed"] == 0 for v in per.values())


def test_extra_components_and_holes_are_named():
    m = chest()
    for k in range(10):  # ten false patches, as over the abdomen
        m["left_lung"] |= _ellipse(m["left_lung"].shape, 235, 20 + 22 * k, 4, 4)
    m["heart"] &= ~_ellipse(m["heart"].shape, 0.62 * 256, 0.53 * 256, 8, 8)
    bad = _failing(m)
    assert bad["components"].message == "left lung: 11 components"
    assert bad["components"].regions == ("left_lung",)
    assert bad["holes"].message == "heart: 1 hole"


def test_tiny_specks_do_not_count():
    m = chest()
    m["right_lung"][250, 250] = True  # one pixel: below MIN_PIECE
    assert "components" not in _failing(m)


def test_swapped_sides_fail_the_order_check():
    m = chest()
    m["left_lung"], m["right_lung"] = m["right_lung"], m["left_lung"]
    bad = _failing(m)
    assert "left_right_order" in bad
    assert "expected: on the image's right" in bad["left_right_order"].message


def test_clavicle_below_apex_and_heart_outside_fail():
    m = chest()
    m["left_clavicle"] = _ellipse(m["heart"].shape, 0.7 * 256, 0.68 * 256, 6, 30)
    m["heart"] = _ellipse(m["heart"].shape, 0.62 * 256, 0.9 * 256, 20, 15)
    bad = _failing(m)
    assert "left_clavicle" in bad["clavicle_above_apex"].regions
    assert bad["heart_between_lungs"].message.startswith("heart centre outside")


def test_area_and_ratio_against_the_training_distribution(reference):
    m = chest()
    m["heart"] = _ellipse(m["heart"].shape, 0.62 * 256, 0.53 * 256, 0.25 * 256, 0.26 * 256)
    checks, per = Q.run_checks(m, reference=reference)
    bad = [c for c in checks if not c.passed]
    assert any(c.name == "area" and c.regions == ("heart",) and "× the training mean" in c.message for c in bad)
    assert any(c.name == "area_ratio" and "heart/lungs" in c.message for c in bad)
    assert per["heart"]["area_z"] > Q.Z_LIMIT
    # without reference statistics those checks do not run
    assert not any(c.name in ("area", "area_ratio") for c in Q.run_checks(m)[0])


def test_missing_region_is_reported():
    m = chest()
    m["right_clavicle"][:] = False
    assert _failing(m)["present"].message == "right clavicle: missing"


def test_checks_do_not_depend_on_resolution(reference):
    big = {r: np.kron(v, np.ones((4, 4), bool)) for r, v in chest().items()}
    small = Q.measure(chest())
    large = Q.measure(big)
    for r in REGIONS:
        assert large["area"][r] == pytest.approx(small["area"][r], rel=0.05)


def test_reference_stats_hold_numbers_only(reference):
    text = json.dumps(reference)
    assert len(text) < 20_000
    assert reference["n_cases"] == 20
    assert set(reference["area"]) == set(REGIONS)


def test_entropy_grows_with_uncertainty():
    sharp = np.where(chest()["heart"], 0.99, 0.01)
    blurred = np.where(chest()["heart"], 0.7, 0.3)
    assert Q.entropy_per_area(blurred) > 5 * Q.entropy_per_area(sharp)


def test_self_gap_is_the_soft_jaccard_of_the_mask():
    heart = chest()["heart"]
    assert Q.self_gap(np.where(heart, 1.0, 0.0)) == pytest.approx(0.0)
    sharp = Q.self_gap(np.where(heart, 0.99, 0.01))
    blurred = Q.self_gap(np.where(heart, 0.7, 0.3))
    assert 0 < sharp < blurred < 1
    # by hand on a small map: inside p = 0.8, 0.6; outside p = 0.3, 0.1 -> 1.4 / (2 + 0.4)
    p = np.array([[0.8, 0.6], [0.3, 0.1]], np.float32)
    assert Q.self_gap(p) == pytest.approx(1 - 1.4 / 2.4)
    assert Q.self_gap(np.zeros((4, 4))) == 0.0


def test_estimator_ranks_and_clips():
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(60):
        err = rng.uniform(0.01, 0.4)
        rows.append({"region": "heart", "jaccard": 1 - err, "entropy": err * rng.uniform(0.8, 1.2),
                     "area_z": 0.5, "pieces": 0, "failed": 0})
    params = Q.fit_estimator(rows, mode="quick")
    est = [Q.estimate_jaccard({"entropy": e, "area_z": 0.5, "pieces": 0, "failed": 0}, params, "heart")
           for e in (0.02, 0.1, 0.3)]
    assert est[0] > est[1] > est[2]
    assert all(0 <= e <= 1 for e in est)
    assert math.isnan(Q.estimate_jaccard({"entropy": 0.1}, None, "heart"))
    assert math.isnan(Q.estimate_jaccard({"entropy": 0.1}, params, "left_lung"))
    with pytest.raises(ValueError, match="mode"):
        Q.fit_estimator(rows, mode="slow")


class _ShiftPredictor:
    """Stands in for a Predictor whose 'probability' is the image itself: a correct inverse
    warp brings every augmented copy back onto the plain one."""

    regions = ("heart",)
    thresholds = {"heart": 0.5}
    path = "none.safetensors"

    def select(self, regions=None):
        return self.regions

    def preprocess(self, image):
        from cxrseg.transforms import image_to_input

        return image_to_input(image, 64)

    def forward(self, inputs, *, regions=None):
        import torch

        return torch.as_tensor(np.asarray(inputs), dtype=torch.float32)[:, None]


def test_tta_warps_predictions_back():
    img = np.zeros((64, 64), np.float32)
    img[16:48, 20:40] = 1.0
    geo_only = tuple((sr, sc, s, d, 1.0, 1.0) for sr, sc, s, d, *_ in Q.TTA_AUGMENTATIONS)
    probs, valid, _, names = Q.tta_predict(_ShiftPredictor(), img, augmentations=geo_only)
    assert probs.shape == (1 + len(geo_only), 1, 64, 64)
    for i in range(1, probs.shape[0]):
        both = valid[i]
        a, b = probs[0, 0][both] > 0.5, probs[i, 0][both] > 0.5
        assert (a & b).sum() / (a | b).sum() > 0.9  # back in place
    # without the inverse warp the shifted copy would be off by a few pixels
    feats = Q.tta_features(probs, valid, names)
    assert feats["heart"]["tta_disagreement"] < 0.1
    assert feats["heart"]["tta_disagreement"] <= feats["heart"]["tta_worst"] < 0.15
    # a copy that misses the region entirely: the worst copy says so, the mean less
    probs2 = probs.copy()
    probs2[1] = 0.0
    f2 = Q.tta_features(probs2, valid, names)["heart"]
    assert f2["tta_worst"] == 1.0 and f2["tta_disagreement"] < f2["tta_worst"]
    dmap = Q.disagreement_map(probs, valid)
    assert dmap.shape == (1, 64, 64) and dmap[0, 30, 30] < 0.05


def test_assess_quick_without_a_model_and_full_needs_one(reference):
    probs = {r: m.astype(np.float32) for r, m in chest().items()}
    rep = Q.assess(None, probs, mode="quick", params={"reference": reference})
    assert rep.mode == "quick" and not rep.failing
    assert set(rep.regions) == set(REGIONS)
    row = rep.csv_fields()
    assert row["failing_checks"] == "" and row["est_jaccard_heart"] == ""  # no estimator given
    with pytest.raises(ValueError, match="predictor"):
        Q.assess(None, probs, mode="full")
    with pytest.raises(ValueError, match="mode"):
        Q.assess(None, probs, mode="fast")


def test_rank_by_estimate_worst_first():
    def rep(j):
        return Q.QualityReport("quick", {"heart": Q.RegionQuality("heart", estimated_jaccard=j)}, [])

    reports = {"a": rep(0.9), "b": rep(0.5), "c": rep(float("nan")), "d": rep(0.7)}
    assert Q.rank_by_estimate(reports) == ["b", "d", "a", "c"]


def test_quality_file_beside_the_model(tmp_path):
    ck = tmp_path / "m.safetensors"
    assert Q.quality_path(ck).name == "m.quality.json"
    assert Q.load_quality_params(ck) is None
    Q.quality_path(ck).write_text("{not json")
    with pytest.raises(ValueError, match="m.quality.json"):
        Q.load_quality_params(ck)
    Q.save_quality_params(ck, {"reference": {}, "estimators": {}})
    assert Q.load_quality_params(ck) == {"reference": {}, "estimators": {}}


def test_shipped_model_has_a_quality_file():
    from cxrseg.model import default_checkpoint_path

    params = Q.load_quality_params(default_checkpoint_path())
    assert params is not None, "the shipped model has no quality file"
    assert params["reference"]["n_cases"] >= 100
    for mode in Q.MODES:
        est = params["estimators"][mode]
        # the signals it was fitted on are ones this mode measures
        allowed = set(Q.FEATURES[mode]) | {"self_gap"} | ({"tta_worst"} if mode == "full" else set())
        assert est["features"] and set(est["features"]) <= allowed, est["features"]
        assert set(est["regions"]) == set(REGIONS)


def test_full_assessment_with_a_tiny_model(tmp_path):
    from _tiny_model import make_tiny_checkpoint

    from cxrseg.predict import Predictor

    pred = Predictor(make_tiny_checkpoint(tmp_path / "tiny.safetensors"), device="cpu")
    img = np.random.default_rng(0).random((80, 70)).astype(np.float32)
    rep = Q.assess(img, predictor=pred, mode="full", maps=True)
    for q in rep.regions.values():
        assert q.uncertainty is not None and q.uncertainty.shape == img.shape
        assert {"tta_disagreement", "tta_spread", "entropy"} <= set(q.features)
    cost = Q.cost_ratio(pred, img, repeats=1)
    assert cost["full_s"] > 0 and cost["quick_ratio"] > 0


def test_real_validation_case(real_data_root):
    from cxrseg.io import read_image
    from cxrseg.predict import get_predictor

    pred = get_predictor(None, device="cpu")
    img = read_image(real_data_root / "images" / "JPCNN002.png").data
    rep = Q.assess(img, predictor=pred, mode="full", maps=True)
    for q in rep.regions.values():
        assert 0.5 < q.estimated_jaccard <= 1.0
        assert q.uncertainty.shape == img.shape
    assert not [c for c in rep.failing if c.name in ("left_right_order", "heart_between_lungs")]


def test_predict_command_quality_columns_and_maps(tmp_path):
    import csv

    from _tiny_model import make_tiny_checkpoint
    from PIL import Image

    from cxrseg.cli import main

    ck = make_tiny_checkpoint(tmp_path / "tiny.safetensors")
    imgs = tmp_path / "in"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for k in range(2):
        Image.fromarray((rng.random((72, 64)) * 255).astype(np.uint8)).save(imgs / f"c{k}.png")
    out = tmp_path / "out"
    assert main(["predict", str(imgs), "--out", str(out), "--model", str(ck), "--quiet",
                 "--workers", "0"]) == 0
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert rows and all(r["est_jaccard"] == "" and r["failing_checks"] == "" for r in rows)
    # asking for quality recomputes the cases that have none
    assert main(["predict", str(imgs), "--out", str(out), "--model", str(ck), "--quiet",
                 "--workers", "0", "--quality", "--uncertainty-maps"]) == 0
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert len(rows) == 10
    # a random model fails checks; the messages name the region
    assert any(r["failing_checks"] for r in rows)
    for r in rows:
        for msg in filter(None, r["failing_checks"].split("; ")):
            assert any(word in msg for word in ("heart", "lung", "clavicle"))
    m = np.load(out / "uncertainty" / "heart" / "c0.npy")
    assert m.shape == (72, 64) and m.dtype == np.float16
    assert main(["predict", str(imgs), "--out", str(out), "--model", str(ck), "--quiet",
                 "--quality", "quick", "--uncertainty-maps"]) == 2


def test_pooled_estimator_shares_coefficients():
    rng = np.random.default_rng(1)
    rows = []
    for region, offset in (("heart", 0.0), ("left_clavicle", 0.08)):
        for _ in range(30):
            err = rng.uniform(0.01, 0.3)
            rows.append({"region": region, "jaccard": 1 - err - offset, "entropy": err,
                         "area_z": 0.0, "pieces": 0, "failed": 0})
    pooled = Q.fit_estimator(rows, mode="quick", pooled=True)
    per = Q.fit_estimator(rows, mode="quick", pooled=False)
    assert pooled["regions"]["heart"]["coef"] == pooled["regions"]["left_clavicle"]["coef"]
    assert per["regions"]["heart"]["coef"] != per["regions"]["left_clavicle"]["coef"]
    f = {"entropy": 0.1, "area_z": 0.0, "pieces": 0, "failed": 0}
    # the per-region intercept keeps the clavicle's lower level
    assert Q.estimate_jaccard(f, pooled, "left_clavicle") < Q.estimate_jaccard(f, pooled, "heart")
