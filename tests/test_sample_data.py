"""Sample data: the phantom and RG1 contributions, and the files in sample_data/."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from cxrseg.dataset import DatasetIndex
from cxrseg.io import CXRSegIOError
from cxrseg.phantom import make_phantom
from cxrseg.regions import LABEL_VALUES, REGIONS
from napari_cxrseg import _sample_data
from napari_cxrseg._sample_data import make_phantom_sample, make_rg1_sample

SAMPLE_DIR = Path(__file__).resolve().parent.parent / "sample_data"


def test_phantom_sample_layers():
    layers = make_phantom_sample()
    assert [kind for _, _, kind in layers] == ["image", "labels"]
    (img, ikw, _), (lab, lkw, _) = layers
    assert img.shape == (1024, 1024) and img.dtype == np.float32
    assert 0.0 <= img.min() and img.max() <= 1.0
    assert ikw["name"] == "PHANTOM001" and lkw["name"] == "PHANTOM001 ground truth"
    assert tuple(ikw["scale"]) == tuple(lkw["scale"]) == (0.35, 0.35)
    assert lab.shape == img.shape and lab.dtype == np.uint8
    assert set(np.unique(lab)) == {0} | set(LABEL_VALUES.values())
    md = lkw["metadata"]["cxrseg"]
    ph = make_phantom(0)
    assert np.array_equal(img, ph.image)
    for r in REGIONS:
        assert np.array_equal(md["masks"][r], ph.masks[r])
    assert ikw["metadata"]["cxrseg"]["synthetic"] is True


def test_rg1_sample_loads_real_dicom():
    pytest.importorskip("data_store", reason="pydicom-data (the 'sample' extra) is not installed")
    path = _sample_data.rg1_path()
    assert path.name == "RG1_UNCR.dcm" and path.is_file()
    layers = make_rg1_sample()
    assert len(layers) == 1
    data, kwargs, kind = layers[0]
    assert kind == "image" and kwargs["name"] == "RG1"
    assert data.shape == (1955, 1841) and data.dtype == np.float32
    assert 0.0 <= data.min() and data.max() <= 1.0 and data.std() > 0.05
    md = kwargs["metadata"]["cxrseg"]
    assert md["meta"]["photometric"] == "MONOCHROME1" and md["format"] == "dicom"
    # PixelSpacing is 0 in this file: spacing unknown, scale one pixel
    assert md["spacing"] is None and tuple(kwargs["scale"]) == (1.0, 1.0)


def test_rg1_sample_without_pydicom_data_says_how_to_install(monkeypatch):
    import pydicom.data

    monkeypatch.setitem(sys.modules, "data_store", None)  # import fails
    monkeypatch.setattr(pydicom.data, "get_testdata_file", lambda *a, **k: None)
    with pytest.raises(CXRSegIOError, match=r"napari-cxrseg\[sample\]"):
        make_rg1_sample()


def test_rg1_never_downloads(monkeypatch):
    import pydicom.data

    seen = {}

    def fake(name, read=False, download=True):
        seen["download"] = download
        return None

    monkeypatch.setitem(sys.modules, "data_store", None)
    monkeypatch.setattr(pydicom.data, "get_testdata_file", fake)
    with pytest.raises(CXRSegIOError):
        _sample_data.rg1_path()
    assert seen == {"download": False}


def test_shipped_sample_data_is_a_phantom_dataset():
    index = DatasetIndex(SAMPLE_DIR, require_masks=True)
    assert index.case_ids == ["PHANTOM001", "PHANTOM002", "PHANTOM003"]
    for case in index:
        assert case.image_path.suffix == ".IMG" and case.image_path.parent.name == "images"
        assert case.image_path.stat().st_size == 2048 * 2048 * 2
        assert case.regions == REGIONS
        masks = case.load_masks(shape=(1024, 1024))
        for r, m in masks.items():
            assert 0.003 < m.mean() < 0.3, (case.case_id, r)
        assert case.nodule is None and case.fold is None  # never JSRT ids
    readme = (SAMPLE_DIR / "README.md").read_text()
    assert "synthetic" in readme.lower() and "make_samples.py" in readme
    assert (SAMPLE_DIR / "make_samples.py").is_file()


def test_shipped_sample_matches_the_generator():
    """PHANTOM001 is make_phantom(0) replicated to 2048 (regenerate if this fails)."""
    case = DatasetIndex(SAMPLE_DIR)["PHANTOM001"]
    ph = make_phantom(0)
    img = case.load_image()
    assert img.shape == (2048, 2048)
    diff = np.abs(img.data[::2, ::2] - ph.image)
    assert diff.mean() < 1e-3 and diff.max() < 0.01
    masks = case.load_masks()
    for r in REGIONS:
        assert np.array_equal(masks[r], ph.masks[r]), r


def test_open_samples_in_viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    layers = viewer.open_sample("napari-cxrseg", "phantom")
    assert [type(layer).__name__ for layer in layers] == ["Image", "Labels"]
    assert [layer.name for layer in viewer.layers] == ["PHANTOM001", "PHANTOM001 ground truth"]
