"""napari_cxrseg._widgets._quality: uncertainty layers and review rows without ground truth."""

from __future__ import annotations

import math

import numpy as np
from _gui_fixtures import tiny_ckpt  # noqa: F401

from cxrseg.quality import Check, QualityReport, RegionQuality
from cxrseg.regions import REGIONS


def _report(est: dict[str, float], failing: dict[str, list[str]] | None = None, *, shape=(40, 30)):
    failing = failing or {}
    checks = [Check("components", (r,), False, m) for r, ms in failing.items() for m in ms]
    regions = {}
    for i, r in enumerate(REGIONS):
        regions[r] = RegionQuality(
            r, estimated_jaccard=est.get(r, 0.95), failing=[c for c in checks if r in c.regions],
            uncertainty=np.full(shape, 0.01 * (i + 1), np.float32),
        )
    return QualityReport("full", regions, checks)


def test_uncertainty_layers_hidden_and_refreshed(make_napari_viewer):
    from napari_cxrseg._widgets._quality import add_uncertainty_layers, remove_uncertainty_layers

    viewer = make_napari_viewer()
    rep = _report({"left_lung": 0.6}, {"left_lung": ["left lung: 11 components"]})
    layers = add_uncertainty_layers(viewer, rep, "RG1")
    assert [ly.name for ly in layers] == [f"RG1 uncertainty {r}" for r in REGIONS]
    assert not any(ly.visible for ly in layers)  # off by default
    lung = viewer.layers["RG1 uncertainty left_lung"]
    assert lung.data.shape == (40, 30)
    assert lung.metadata["cxrseg"]["failing"] == ["left lung: 11 components"]
    assert lung.metadata["cxrseg"]["estimated_jaccard"] == 0.6
    lung.visible = True
    # a second run of the same case refreshes the layers instead of stacking copies
    rep2 = _report({}, shape=(40, 30))
    rep2.regions["left_lung"].uncertainty[:] = 0.3
    add_uncertainty_layers(viewer, rep2, "RG1")
    assert len(viewer.layers) == len(REGIONS)
    assert lung.visible and float(lung.data.max()) == np.float32(0.3)
    add_uncertainty_layers(viewer, rep2, "OTHER", regions=["heart"])
    assert remove_uncertainty_layers(viewer, "RG1") == len(REGIONS)
    assert [ly.name for ly in viewer.layers] == ["OTHER uncertainty heart"]


def test_quick_reports_have_no_layers(make_napari_viewer):
    from napari_cxrseg._widgets._quality import add_uncertainty_layers

    viewer = make_napari_viewer()
    rep = _report({})
    for q in rep.regions.values():
        q.uncertainty = None
    assert add_uncertainty_layers(viewer, rep, "X") == []
    assert len(viewer.layers) == 0


def test_queue_rows_rank_by_estimate_and_show_failing_checks():
    from napari_cxrseg._widgets._quality import failing_text, queue_rows

    reports = {
        "good": _report({}),
        "bad": _report({"left_clavicle": 0.55}, {"left_clavicle": ["left clavicle: 3 components"]}),
        "medium": _report({"heart": 0.8}),
        "unknown": _report({r: math.nan for r in REGIONS}),
    }
    rows = queue_rows(reports)
    assert [r["case"] for r in rows] == ["bad", "medium", "good", "unknown"]
    assert rows[0]["estimate"] == "~0.55" and rows[0]["worst_region"].startswith("left clavicle")
    assert rows[0]["failing"] == "left clavicle: 3 components"
    assert rows[2]["tooltip"] == "all plausibility checks pass"
    assert rows[3]["estimate"] == "–"
    # per region ranking
    assert [r["case"] for r in queue_rows(reports, region="heart")][:1] == ["medium"]
    many = _report({}, {"left_lung": [f"left lung: check {i}" for i in range(5)]})
    assert failing_text(many).endswith("; +2 more")


def test_quality_job_with_a_tiny_model(tiny_ckpt):  # noqa: F811
    from napari_cxrseg._widgets._quality import quality_job, uncertainty_layer_tuples

    ck = tiny_ckpt
    img = np.random.default_rng(0).random((70, 60)).astype(np.float32)
    rep = quality_job(img, checkpoint=ck, device="cpu")
    tuples = uncertainty_layer_tuples(rep, "C1")
    assert len(tuples) == len(REGIONS) and all(t[0].shape == img.shape for t in tuples)
    assert all(t[2] == "image" and t[1]["visible"] is False for t in tuples)


def test_quality_review_job_yields_small_messages(tiny_ckpt):  # noqa: F811
    from napari_cxrseg._widgets._quality import quality_review_job

    class _Case:
        def __init__(self, cid, ok=True):
            self.case_id, self.ok = cid, ok

        def load_image(self):
            if not self.ok:
                raise OSError(f"{self.case_id}.png: cannot read")
            return np.random.default_rng(len(self.case_id)).random((50, 60)).astype(np.float32)

    msgs = list(quality_review_job(tiny_ckpt, "cpu", [_Case("A"), _Case("BAD", ok=False), _Case("C")],
                                   mode="quick"))
    assert msgs[0][0] == "model" and msgs[0][2] == 3
    assert [m[0] for m in msgs[1:]] == ["case", "error", "case"]
    assert "cannot read" in msgs[2][2]
    _, i, n, cid, est, failing = msgs[3]
    assert (i, n, cid) == (3, 3, "C") and set(est) == set(REGIONS)
    assert all(isinstance(m, str) for m in failing)
