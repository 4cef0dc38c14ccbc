"""The synthetic chest phantom: determinism, anatomy, and its files in the real formats."""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pytest
from scipy import ndimage

from cxrseg.dataset import DatasetIndex
from cxrseg.io import read_dicom, read_image
from cxrseg.phantom import (
    Phantom,
    is_phantom_case_id,
    make_phantom,
    phantom_case_id,
    write_dicom,
    write_phantom_case,
    write_phantom_dataset,
)
from cxrseg.regions import REGIONS

SIZE = 256


@pytest.fixture(scope="module")
def phantoms() -> list[Phantom]:
    return [make_phantom(seed, size=SIZE) for seed in range(8)]


def test_same_seed_gives_identical_phantom():
    a, b = make_phantom(7, size=128), make_phantom(7, size=128)
    assert np.array_equal(a.image, b.image)
    assert a.params == b.params
    for r in REGIONS:
        assert np.array_equal(a.masks[r], b.masks[r])


def test_different_seeds_differ():
    a, b = make_phantom(1, size=128), make_phantom(2, size=128)
    assert not np.array_equal(a.image, b.image)
    assert any(not np.array_equal(a.masks[r], b.masks[r]) for r in REGIONS)
    assert a.params != b.params


@pytest.mark.parametrize("size", [64, 256, 1024])
def test_shapes_dtypes_range_spacing(size):
    ph = make_phantom(0, size=size)
    assert ph.image.shape == (size, size)
    assert ph.image.dtype == np.float32
    assert 0.0 <= float(ph.image.min()) and float(ph.image.max()) <= 1.0
    assert tuple(ph.masks) == REGIONS
    for r, m in ph.masks.items():
        assert m.dtype == bool and m.shape == (size, size), r
        assert m.any(), f"{r} is empty at size {size}"
    assert ph.spacing == pytest.approx((0.35 * 1024 / size,) * 2)
    assert ph.seed == 0


def test_invalid_arguments():
    with pytest.raises(ValueError, match="size"):
        make_phantom(0, size=32)
    with pytest.raises(ValueError, match="noise"):
        make_phantom(0, size=64, noise=-1)


def test_noise_changes_only_the_image():
    clean = make_phantom(3, size=128, noise=0.0)
    noisy = make_phantom(3, size=128, noise=0.05)
    for r in REGIONS:
        assert np.array_equal(clean.masks[r], noisy.masks[r])
    diff = (noisy.image - clean.image)[clean.masks["right_lung"]]
    assert 0.03 < float(diff.std()) < 0.07


def _centroid(m):
    return np.array(ndimage.center_of_mass(m))


def test_anatomy_is_plausible(phantoms):
    half = SIZE / 2
    for ph in phantoms:
        m = ph.masks
        frac = {r: float(v.mean()) for r, v in m.items()}
        c = {r: _centroid(v) for r, v in m.items()}
        # patient's left lung and clavicle on the image's right
        assert c["left_lung"][1] > half > c["right_lung"][1], ph.seed
        assert c["left_clavicle"][1] > half > c["right_clavicle"][1], ph.seed
        # heart: a little towards the patient's left, in the lower half of the lungs
        assert half < c["heart"][1] < 0.7 * SIZE, ph.seed
        assert c["heart"][0] > max(c["left_lung"][0], c["right_lung"][0]), ph.seed
        # clavicles above the lung centroids, at the top of the lung fields
        for side in ("left", "right"):
            assert c[f"{side}_clavicle"][0] < c[f"{side}_lung"][0] - 0.15 * SIZE, ph.seed
        # areas like SCR's (lungs ~0.12-0.22 of the image, heart ~0.07-0.10, clavicles ~0.01)
        for lung in ("left_lung", "right_lung"):
            assert 0.08 < frac[lung] < 0.28, (ph.seed, lung, frac[lung])
        assert frac["left_lung"] < frac["right_lung"], ph.seed  # the heart sits left
        assert 0.03 < frac["heart"] < 0.14, ph.seed
        for clav in ("left_clavicle", "right_clavicle"):
            assert 0.003 < frac[clav] < 0.025, (ph.seed, clav, frac[clav])
        # SCR conventions: lungs exclude the heart, clavicles overlap the lungs
        assert not (m["heart"] & (m["left_lung"] | m["right_lung"])).any(), ph.seed
        assert (m["left_clavicle"] & m["left_lung"]).any(), ph.seed
        assert (m["right_clavicle"] & m["right_lung"]).any(), ph.seed
        # each region is one connected piece
        for r in REGIONS:
            assert ndimage.label(m[r])[1] == 1, (ph.seed, r)


def test_clavicles_rise_laterally(phantoms):
    for ph in phantoms:
        for side, lateral_is_right in (("left", True), ("right", False)):
            rows, cols = np.nonzero(ph.masks[f"{side}_clavicle"])
            lo, hi = np.percentile(cols, [10, 90])
            medial = rows[cols <= lo] if lateral_is_right else rows[cols >= hi]
            lateral = rows[cols >= hi] if lateral_is_right else rows[cols <= lo]
            assert lateral.mean() < medial.mean(), (ph.seed, side)  # lateral end higher up
            width = cols.max() - cols.min()
            assert 0.15 * SIZE < width < 0.4 * SIZE, (ph.seed, side, width)


def test_display_polarity(phantoms):
    for ph in phantoms:
        img, m = ph.image, ph.masks
        lungs = (m["left_lung"] | m["right_lung"]) & ~(m["left_clavicle"] | m["right_clavicle"])
        assert img[lungs].mean() + 0.15 < img[m["heart"]].mean(), ph.seed
        ring = ndimage.binary_dilation(m["left_clavicle"], iterations=4) & ~m["left_clavicle"]
        assert img[m["left_clavicle"]].mean() > img[ring].mean(), ph.seed  # bone bright
        assert img[:4, :4].mean() < img[lungs].mean()  # air outside the body darkest


def test_phantom_case_ids():
    assert phantom_case_id(1) == "PHANTOM001"
    assert phantom_case_id(12, prefix="SYN") == "SYN012"
    with pytest.raises(ValueError, match="JSRT"):
        phantom_case_id(1, prefix="JPCLN")
    with pytest.raises(ValueError, match="JSRT"):
        write_phantom_case("unused", "JPCNN001", 0, image_format="png", size=64)
    with pytest.raises(ValueError, match="image_format"):
        write_phantom_case("unused", "PHANTOM001", 0, image_format="jpeg", size=64)
    # the default ids mark a case as synthetic (the napari workspace says so)
    assert is_phantom_case_id(phantom_case_id(3)) and is_phantom_case_id("PHANTOM1000")
    assert not any(is_phantom_case_id(c) for c in ("JPCLN001", "RG1_UNCR", "PHANTOM", "SYN012", None))


@pytest.mark.parametrize("fmt", ["png", "dcm", "img"])
def test_write_phantom_case_reads_back(tmp_path, fmt):
    out = write_phantom_case(tmp_path, "PHANTOM007", 5, image_format=fmt, size=SIZE)
    ph = make_phantom(5, size=SIZE)
    assert out.parent == tmp_path / "images" and out.stem == "PHANTOM007"
    index = DatasetIndex(tmp_path)
    assert index.case_ids == ["PHANTOM007"]
    case = index[0]
    assert case.regions == REGIONS
    masks = case.load_masks()
    for r in REGIONS:
        assert np.array_equal(masks[r], ph.masks[r]), r
        assert (tmp_path / "masks" / r / "PHANTOM007.gif").is_file()
    img = case.load_image()
    if fmt == "img":
        assert out.suffix == ".IMG" and out.stat().st_size == 2048 * 2048 * 2
        assert img.shape == (2048, 2048) and img.spacing == (0.175, 0.175)
        k = 2048 // SIZE
        assert np.array_equal(img.data[::k, ::k], img.data[k - 1 :: k, k - 1 :: k])  # replicated
        np.testing.assert_allclose(img.data[::k, ::k], ph.image, atol=0.6 / 4095)
    elif fmt == "dcm":
        assert img.shape == (SIZE, SIZE) and img.spacing == pytest.approx(ph.spacing)
        np.testing.assert_allclose(img.data, ph.image, atol=0.6 / 4095)
    else:
        assert img.shape == (SIZE, SIZE)
        np.testing.assert_allclose(img.data, ph.image, atol=0.6 / 255)


@pytest.mark.parametrize("monochrome1", [False, True])
def test_write_dicom(tmp_path, monochrome1):
    import pydicom

    ph = make_phantom(2, size=128)
    p = write_dicom(
        ph.image, tmp_path / "sub" / "x.dcm", monochrome1=monochrome1, spacing=(0.5, 0.6)
    )
    ds = pydicom.dcmread(p)
    assert ds.PhotometricInterpretation == ("MONOCHROME1" if monochrome1 else "MONOCHROME2")
    assert ds.BitsAllocated == 16 and ds.BitsStored == 12 and ds.Modality == "CR"
    assert [float(v) for v in ds.PixelSpacing] == [0.5, 0.6]
    assert float(ds.RescaleSlope) == 1.0 and float(ds.RescaleIntercept) == 0.0
    assert not ds.file_meta.TransferSyntaxUID.is_compressed
    stored = ds.pixel_array
    if monochrome1:  # stored inverted: bone dark
        assert stored[ph.masks["heart"]].mean() < stored[ph.masks["right_lung"]].mean()
    img = read_dicom(p)
    assert img.meta["photometric"] == ds.PhotometricInterpretation
    assert img.spacing == (0.5, 0.6)
    np.testing.assert_allclose(img.data, ph.image, atol=0.6 / 4095)
    assert [q.name for q in p.parent.iterdir()] == ["x.dcm"]  # no temporary left behind


def test_write_dicom_rescale_and_no_spacing(tmp_path):
    ph = make_phantom(2, size=64)
    p = write_dicom(ph.image, tmp_path / "r.dcm", rescale=(2.0, -100.0), spacing=None)
    img = read_image(p)
    assert img.spacing is None
    np.testing.assert_allclose(img.data, ph.image, atol=1.0 / 4095)
    with pytest.raises(ValueError, match="2-D"):
        write_dicom(np.zeros((2, 3, 4)), tmp_path / "bad.dcm")
    assert not (tmp_path / "bad.dcm").exists()


def test_write_phantom_dataset(tmp_path):
    paths = write_phantom_dataset(tmp_path, 3, seed=10, image_format="png", size=128)
    assert [p.name for p in paths] == ["PHANTOM001.png", "PHANTOM002.png", "PHANTOM003.png"]
    index = DatasetIndex(tmp_path, require_masks=True)
    assert index.case_ids == ["PHANTOM001", "PHANTOM002", "PHANTOM003"]
    m = index["PHANTOM002"].load_masks(["heart"])["heart"]
    assert np.array_equal(m, make_phantom(11, size=128).masks["heart"])  # seed + index
    assert all(c.fold is None and c.nodule is None for c in index)  # not JSRT ids


def test_samples_cli(tmp_path, monkeypatch, capsys):
    from cxrseg import cli
    from cxrseg.cli import samples

    parser = argparse.ArgumentParser()
    samples.add_arguments(parser)
    args = parser.parse_args([str(tmp_path / "a"), "-n", "2", "--size", "64", "--format", "dcm"])
    assert samples.run_cli(args) == 0
    assert sorted(p.name for p in (tmp_path / "a" / "images").iterdir()) == [
        "PHANTOM001.dcm",
        "PHANTOM002.dcm",
    ]
    monkeypatch.setattr(sys, "argv", ["cxrseg"])
    rc = cli.main(["samples", str(tmp_path / "b"), "-n", "1", "--size", "64", "--prefix", "SYN"])
    assert rc == 0
    assert (tmp_path / "b" / "images" / "SYN001.png").is_file()
    assert "not patient data" in capsys.readouterr().out
