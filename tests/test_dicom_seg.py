"""DICOM Segmentation out and back: codes, references, exact round trips, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("highdicom")
import pydicom  # noqa: E402

from cxrseg.dicom_seg import (  # noqa: E402
    SEGMENT_CODES,
    dicom_seg_path,
    find_dicom_seg,
    read_dicom_seg,
    write_dicom_seg,
)
from cxrseg.io import CXRSegIOError  # noqa: E402
from cxrseg.phantom import make_phantom, write_dicom  # noqa: E402
from cxrseg.regions import REGIONS  # noqa: E402


@pytest.fixture
def phantom_dicom(tmp_path):
    """A synthetic single-frame CR without a frame of reference, and its exact masks."""
    ph = make_phantom(3, size=96)
    path = write_dicom(ph.image, tmp_path / "phantom.dcm")
    ds = pydicom.dcmread(path)
    assert "FrameOfReferenceUID" not in ds and "ImageOrientationPatient" not in ds
    return path, ph


def _rg1():
    from napari_cxrseg._sample_data import rg1_path

    try:
        return rg1_path()
    except Exception as exc:  # pydicom-data missing
        pytest.skip(str(exc))


def test_binary_round_trip_on_a_synthetic_cr_without_frame_of_reference(phantom_dicom, tmp_path):
    path, ph = phantom_dicom
    out = write_dicom_seg(path, ph.masks, tmp_path / "phantom.seg.dcm", model_id="m0123")
    back = read_dicom_seg(out)
    assert list(back.masks) == list(REGIONS)
    assert not back.fractional
    for r in REGIONS:
        assert back.masks[r].dtype == bool
        np.testing.assert_array_equal(back.masks[r], ph.masks[r])
    src = pydicom.dcmread(path)
    assert back.source_sop_instance_uid == src.SOPInstanceUID
    assert back.model_id == "m0123"


def test_segments_carry_snomed_codes_patient_sides_and_the_algorithm(phantom_dicom, tmp_path):
    path, ph = phantom_dicom
    out = write_dicom_seg(path, ph.masks, tmp_path / "s.dcm", model_id="m0123")
    ds = pydicom.dcmread(out)
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    src = pydicom.dcmread(path)
    assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.PatientID == src.PatientID
    ref = ds.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == src.SeriesInstanceUID
    assert ref.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    got = {}
    for item in ds.SegmentSequence:
        t = item.SegmentedPropertyTypeCodeSequence[0]
        assert t.CodingSchemeDesignator == "SCT"
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"
        mod = t.get("SegmentedPropertyTypeModifierCodeSequence")
        got[item.SegmentLabel] = (t.CodeValue, mod[0].CodeValue if mod else None)
        alg = item.SegmentationAlgorithmIdentificationSequence[0]
        assert alg.AlgorithmName == "cxrseg" and alg.AlgorithmVersion == "m0123"
        assert item.SegmentAlgorithmType == "AUTOMATIC"
    assert got == {
        "heart": ("80891009", None),
        "left clavicle (patient)": ("51299004", "7771000"),
        "right clavicle (patient)": ("51299004", "24028007"),
        "left lung (patient)": ("44029006", None),
        "right lung (patient)": ("3341006", None),
    }
    assert set(SEGMENT_CODES) == set(REGIONS)


def test_left_and_right_are_not_swapped_on_the_way_back(phantom_dicom, tmp_path):
    path, ph = phantom_dicom
    only_left = {"left_lung": ph.masks["left_lung"]}
    back = read_dicom_seg(write_dicom_seg(path, only_left, tmp_path / "l.dcm", model_id="x"))
    assert list(back.masks) == ["left_lung"]
    np.testing.assert_array_equal(back.masks["left_lung"], ph.masks["left_lung"])


def test_fractional_round_trip_keeps_8_bit_probabilities(phantom_dicom, tmp_path):
    path, ph = phantom_dicom
    rng = np.random.default_rng(0)
    probs = {r: rng.random(ph.image.shape).astype(np.float32) for r in ("heart", "right_lung")}
    back = read_dicom_seg(write_dicom_seg(path, probs, tmp_path / "f.dcm", model_id="x", fractional=True))
    assert back.fractional
    assert pydicom.dcmread(tmp_path / "f.dcm").SegmentationFractionalType == "PROBABILITY"
    for r, p in probs.items():
        np.testing.assert_array_equal(back.masks[r], np.round(p * 255).astype(np.float32) / 255)


def test_empty_region_survives_as_an_empty_segment(phantom_dicom, tmp_path):
    path, ph = phantom_dicom
    masks = dict(ph.masks, heart=np.zeros_like(ph.masks["heart"]))
    back = read_dicom_seg(write_dicom_seg(path, masks, tmp_path / "e.dcm", model_id="x"))
    assert not back.masks["heart"].any()
    np.testing.assert_array_equal(back.masks["left_lung"], ph.masks["left_lung"])


def test_dx_with_frame_of_reference_but_no_plane_attributes(phantom_dicom, tmp_path):
    path, ph = phantom_dicom
    ds = pydicom.dcmread(path)
    ds.Modality = "DX"
    ds.FrameOfReferenceUID = pydicom.uid.generate_uid()
    ds.PixelSpacing = ["0", "0"]  # seen on real CRs: must not be copied as a pixel measure
    dx = tmp_path / "dx.dcm"
    ds.save_as(dx)
    back = read_dicom_seg(write_dicom_seg(dx, ph.masks, tmp_path / "dx.seg.dcm", model_id="x"))
    for r in REGIONS:
        np.testing.assert_array_equal(back.masks[r], ph.masks[r])


def test_rg1_round_trip(tmp_path):
    path = _rg1()
    src = pydicom.dcmread(path)
    assert "FrameOfReferenceUID" not in src  # the case other tools fail on
    shape = (int(src.Rows), int(src.Columns))
    rng = np.random.default_rng(1)
    masks = {r: rng.random(shape) < 0.2 for r in REGIONS}
    back = read_dicom_seg(write_dicom_seg(path, masks, tmp_path / "rg1.seg.dcm", model_id="m"))
    assert back.source_sop_instance_uid == src.SOPInstanceUID
    for r in REGIONS:
        np.testing.assert_array_equal(back.masks[r], masks[r])


def test_non_dicom_source_gets_a_clear_message(tmp_path):
    png = tmp_path / "chest.png"
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(png)
    with pytest.raises(CXRSegIOError, match=r"chest\.png: not a DICOM file.*DICOM Segmentation"):
        write_dicom_seg(png, {"heart": np.zeros((8, 8), bool)}, tmp_path / "x.dcm", model_id="x")
    assert not (tmp_path / "x.dcm").exists()


def test_wrong_shape_and_bad_values_are_refused_and_nothing_is_written(phantom_dicom, tmp_path):
    path, ph = phantom_dicom
    out = tmp_path / "bad.dcm"
    with pytest.raises(CXRSegIOError, match="heart mask has shape"):
        write_dicom_seg(path, {"heart": np.zeros((5, 5), bool)}, out, model_id="x")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        write_dicom_seg(path, {"heart": np.full(ph.image.shape, 2.0)}, out, model_id="x", fractional=True)
    with pytest.raises(ValueError, match="unknown regions"):
        write_dicom_seg(path, {"liver": ph.masks["heart"]}, out, model_id="x")
    assert not out.exists()


def test_find_dicom_seg_beside_its_image(phantom_dicom, tmp_path):
    path, ph = phantom_dicom
    assert find_dicom_seg(path) is None
    seg = write_dicom_seg(path, ph.masks, dicom_seg_path(path), model_id="x")
    assert seg.name == "phantom.seg.dcm"
    assert find_dicom_seg(path) == seg
    # a segmentation of another image under that name is not offered
    other = write_dicom(make_phantom(4, size=96).image, tmp_path / "other.dcm", patient_id="B")
    write_dicom_seg(other, make_phantom(4, size=96).masks, seg, model_id="x")
    assert find_dicom_seg(path) is None


def test_read_refuses_a_plain_image(phantom_dicom):
    path, _ = phantom_dicom
    with pytest.raises(CXRSegIOError, match="not a readable DICOM Segmentation"):
        read_dicom_seg(path)


# ------------------------------------------------------------------------- cxrseg predict


def _predict_command(monkeypatch, *argv):
    import sys

    from cxrseg import cli

    argv = ["predict", *map(str, argv)]
    monkeypatch.setattr(sys, "argv", ["cxrseg"] + argv)
    return cli.main(argv)


@pytest.fixture
def tiny_ckpt(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from _tiny_model import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path / "tiny.safetensors")


def test_predict_dicom_seg_for_dicom_inputs_and_a_message_for_others(phantom_dicom, tiny_ckpt, tmp_path,
                                                                      monkeypatch, capsys):
    from PIL import Image

    from cxrseg.io import read_mask

    path, ph = phantom_dicom
    inp = tmp_path / "in"
    inp.mkdir()
    path.rename(inp / "chest.dcm")
    Image.fromarray((ph.image * 255).astype(np.uint8)).save(inp / "other.png")
    out = tmp_path / "out"
    rc = _predict_command(monkeypatch, inp, "--out", out, "--model", tiny_ckpt, "--workers", "0", "--quiet",
                      "--device", "cpu", "--dicom-seg")
    assert rc == 0
    err = capsys.readouterr().err
    assert "other.png: not a DICOM file, no DICOM SEG written" in err
    segs = sorted((out / "dicom-seg").iterdir())
    assert [s.name for s in segs] == ["chest.seg.dcm"]
    back = read_dicom_seg(segs[0])
    assert not back.fractional and list(back.masks) == list(REGIONS)
    for r in REGIONS:
        np.testing.assert_array_equal(back.masks[r], read_mask(out / "masks" / r / "chest.png"))
    from cxrseg.predict import Predictor

    assert back.model_id == Predictor(tiny_ckpt, device="cpu").model_id


def test_predict_dicom_seg_fractional_needs_and_uses_the_heatmaps(phantom_dicom, tiny_ckpt, tmp_path,
                                                                   monkeypatch, capsys):
    path, _ = phantom_dicom
    out = tmp_path / "out"
    common = (path, "--out", out, "--model", tiny_ckpt, "--workers", "0", "--quiet", "--device", "cpu")
    assert _predict_command(monkeypatch, *common, "--dicom-seg", "fractional") == 2
    assert "add --heatmaps" in capsys.readouterr().err
    assert not out.exists()
    assert _predict_command(monkeypatch, *common, "--heatmaps", "--dicom-seg", "fractional") == 0
    back = read_dicom_seg(out / "dicom-seg" / "phantom.seg.dcm")
    assert back.fractional
    for r in REGIONS:
        p = np.load(out / "heatmaps" / r / "phantom.npy").astype(np.float32)
        np.testing.assert_array_equal(back.masks[r], np.round(p * 255).astype(np.float32) / 255)


# ------------------------------------------------------------------------- napari reader / writer


def test_reader_opens_the_segmentation_beside_its_image_as_labels(phantom_dicom):
    from napari_cxrseg._layers import labels_from_masks
    from napari_cxrseg._reader import napari_get_reader

    path, ph = phantom_dicom
    layers = napari_get_reader(str(path))(str(path))
    assert [lt for _, _, lt in layers] == ["image"]  # nothing beside it yet
    write_dicom_seg(path, ph.masks, dicom_seg_path(path), model_id="m7")
    layers = napari_get_reader(str(path))(str(path))
    assert [lt for _, _, lt in layers] == ["image", "labels"]
    data, kw, _ = layers[1]
    assert kw["name"].endswith("DICOM SEG")
    np.testing.assert_array_equal(data, labels_from_masks(ph.masks, ph.image.shape))
    assert kw["scale"] == layers[0][1]["scale"]
    md = kw["metadata"]["cxrseg"]
    assert md["model_id"] == "m7" and md["source"] == str(dicom_seg_path(path))


def test_writer_round_trip_keeps_overlapping_regions(phantom_dicom, tmp_path):
    from napari_cxrseg._layers import labels_from_masks
    from napari_cxrseg._writer import write_dicom_seg_labels

    path, ph = phantom_dicom
    labels = labels_from_masks(ph.masks, ph.image.shape)
    meta = {"name": "phantom prediction",
            "metadata": {"cxrseg": {"image_path": str(path), "masks": ph.masks, "model_id": "m9"}}}
    (out,) = write_dicom_seg_labels(str(tmp_path / "pred.dcm"), labels, meta)
    back = read_dicom_seg(out)
    assert back.model_id == "m9"
    for r in REGIONS:  # clavicles overlap the lungs: the exact masks, not the painted labels
        np.testing.assert_array_equal(back.masks[r], ph.masks[r])


def test_writer_refuses_labels_of_a_non_dicom_image(tmp_path):
    from napari_cxrseg._writer import write_dicom_seg_labels

    labels = np.zeros((8, 8), np.uint8)
    labels[2:4, 2:4] = 1
    png = tmp_path / "chest.png"
    png.write_bytes(b"not really")
    meta = {"name": "chest prediction", "metadata": {"cxrseg": {"image_path": str(png)}}}
    with pytest.raises(CXRSegIOError, match="chest prediction: its image is not a DICOM file"):
        write_dicom_seg_labels(str(tmp_path / "x.dcm"), labels, meta)
    assert not (tmp_path / "x.dcm").exists()


def test_manifest_declares_the_dicom_seg_writer():
    from pathlib import Path

    import yaml

    manifest = yaml.safe_load((Path(__file__).parent.parent / "napari_cxrseg" / "napari.yaml").read_text())
    cmds = {c["id"]: c["python_name"] for c in manifest["contributions"]["commands"]}
    writer = [w for w in manifest["contributions"]["writers"] if w["command"] == "napari-cxrseg.write_dicom_seg"]
    assert writer and writer[0]["filename_extensions"] == [".dcm"]
    assert cmds["napari-cxrseg.write_dicom_seg"] == "napari_cxrseg._writer:write_dicom_seg_labels"


def test_a_segmentation_is_not_read_as_a_radiograph(phantom_dicom):
    from cxrseg.io import read_image

    path, ph = phantom_dicom
    seg = write_dicom_seg(path, ph.masks, dicom_seg_path(path), model_id="x")
    with pytest.raises(CXRSegIOError, match="is a DICOM Segmentation, not an image"):
        read_image(seg)


def test_save_a_prediction_layer_as_dicom_seg_from_napari(make_napari_viewer, phantom_dicom, tmp_path):
    """The prediction layer names no file: the writer finds the case's DICOM image layer."""
    from napari_cxrseg._layers import labels_from_masks
    from napari_cxrseg._reader import read_cxr

    path, ph = phantom_dicom
    viewer = make_napari_viewer()
    (img, kw, _), = read_cxr(str(path))
    viewer.add_image(img, **kw)
    case = kw["metadata"]["cxrseg"]["case_id"]
    masks = {r: ph.masks[r] for r in ("heart", "left_lung", "right_lung")}
    layer = viewer.add_labels(labels_from_masks(masks, img.shape), name=f"{case} prediction",
                              metadata={"cxrseg": {"case_id": case, "model_id": "m5", "kind": "prediction"}})
    viewer.layers.selection.active = layer
    written = viewer.layers.save(str(tmp_path / "pred.dcm"), selected=True, plugin="napari-cxrseg")
    assert written == [str(tmp_path / "pred.dcm")]
    back = read_dicom_seg(tmp_path / "pred.dcm")
    assert list(back.masks) == ["heart", "left_lung", "right_lung"] and back.model_id == "m5"
    for r, m in masks.items():
        np.testing.assert_array_equal(back.masks[r], m)
