"""cxrseg.dataset: discovery of flat / official SCR / case-folder layouts, folds, clinical files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cxrseg.dataset import (
    Case,
    DatasetIndex,
    case_fold,
    find_case_files,
    is_nodule_case,
    normalise_case_id,
    parse_clinical_file,
    read_clinical,
)
from cxrseg.io import CXRSegIOError, write_jsrt_img, write_mask
from cxrseg.regions import REGIONS

SHAPE = (16, 16)


def _png(path, value=128, shape=SHAPE):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(shape, value, np.uint8)).save(path)
    return path


def _mask_for(case_id: str, region: str, shape=SHAPE) -> np.ndarray:
    # a mask that encodes case and region, so mix-ups are caught
    m = np.zeros(shape, bool)
    m[: 1 + REGIONS.index(region), : 1 + int(case_id[-1])] = True
    return m


def _flat(root, cases, regions=REGIONS, ext=".gif", folder=lambda r: r):
    for cid in cases:
        _png(root / "images" / f"{cid}.png")
        for r in regions:
            write_mask(_mask_for(cid, r), root / "masks" / folder(r) / f"{cid}{ext}")
    return root


# ------------------------------------------------------------------------------ ids


@pytest.mark.parametrize(
    "cid,fold,nodule",
    [
        ("JPCLN001", 1, True),
        ("JPCLN002", 2, True),
        ("JPCLN154", 2, True),
        ("JPCNN001", 1, False),
        ("JPCNN093", 1, False),
        ("jpcnn010", 2, False),
        ("patient_7", None, None),
        ("JPCLX001", None, None),
        ("", None, None),
    ],
)
def test_case_fold_and_nodule(cid, fold, nodule):
    assert case_fold(cid) == fold
    assert is_nodule_case(cid) is nodule


@pytest.mark.parametrize(
    "stem, cid",
    [("jpcln001", "JPCLN001"), ("JpCnN093", "JPCNN093"), ("JPCLN154", "JPCLN154"),
     ("patient_7", "patient_7"), ("jpclx001", "jpclx001"), ("jpcln001_b", "jpcln001_b"), ("", "")],
)
def test_normalise_case_id(stem, cid):
    assert normalise_case_id(stem) == cid


# ------------------------------------------------------------------------------ layouts


def test_flat_layout(tmp_path):
    root = _flat(tmp_path / "ds", ["JPCLN001", "JPCLN002", "JPCNN001"])
    _png(root / "images" / "JPCNN002.png")  # no masks at all
    write_mask(_mask_for("JPCNN002", "heart"), root / "masks" / "heart" / "JPCNN003.gif")  # orphan
    (root / "masks" / "not_a_region").mkdir()
    write_mask(_mask_for("JPCLN001", "heart"), root / "masks" / "not_a_region" / "JPCLN001.gif")

    ix = DatasetIndex(root)
    assert ix.root == root
    assert len(ix) == 4
    assert ix.case_ids == ["JPCLN001", "JPCLN002", "JPCNN001", "JPCNN002"]
    assert [c.case_id for c in ix] == ix.case_ids
    c = ix["JPCLN002"]
    assert isinstance(c, Case)
    assert c.nodule is True and c.fold == 2
    assert c.regions == REGIONS
    assert c.image_path == root / "images" / "JPCLN002.png"
    assert c.mask_paths["left_lung"] == root / "masks" / "left_lung" / "JPCLN002.gif"
    assert ix[2].case_id == "JPCNN001" and ix[2].nodule is False and ix[2].fold == 1
    assert ix["JPCNN002"].regions == ()
    assert [x.case_id for x in ix.fold(1)] == ["JPCLN001", "JPCNN001"]
    assert [x.case_id for x in ix.fold(2)] == ["JPCLN002", "JPCNN002"]
    assert [x.case_id for x in ix.with_regions("lungs")] == ["JPCLN001", "JPCLN002", "JPCNN001"]
    assert "JPCNN003" in ix.orphan_masks
    with pytest.raises(ValueError, match="fold"):
        ix.fold(3)

    img = c.load_image()
    assert img.data.shape == SHAPE and img.data.dtype == np.float32
    masks = c.load_masks()
    assert list(masks) == list(REGIONS)
    for r, m in masks.items():
        assert m.dtype == bool
        np.testing.assert_array_equal(m, _mask_for("JPCLN002", r))
    assert list(c.load_masks("lungs", shape=SHAPE)) == ["left_lung", "right_lung"]
    with pytest.raises(CXRSegIOError, match="expected 32x32"):
        c.load_masks("heart", shape=(32, 32))

    # require_masks drops the case without masks
    assert DatasetIndex(root, require_masks=True).case_ids == ["JPCLN001", "JPCLN002", "JPCNN001"]


def test_missing_region_keyerror(tmp_path):
    root = _flat(tmp_path, ["JPCLN003"], regions=("heart", "left_lung"))
    c = DatasetIndex(root)["JPCLN003"]
    assert c.regions == ("heart", "left_lung")
    assert set(c.load_masks()) == {"heart", "left_lung"}  # default: the regions it has
    with pytest.raises(KeyError) as e:
        c.load_masks(["heart", "right clavicle"])
    assert "JPCLN003" in str(e.value) and "right_clavicle" in str(e.value)
    with pytest.raises(ValueError, match="unknown region"):
        c.load_masks("spleen")


def test_official_layout_folds_spaced_names_and_preference(tmp_path):
    root = tmp_path / "scr"
    rng = np.random.default_rng(0)
    write_jsrt_img(rng.random((2048, 2048)), root / "All247images" / "JPCLN001.IMG")
    _png(root / "All247images" / "JPCLN002.png")
    _png(root / "png_copies" / "JPCLN001.png")  # duplicate: .IMG preferred
    (root / "All247images" / "JPCNN002.IMG").write_bytes(b"not read during discovery")
    for cid, fold in (("JPCLN001", "fold1"), ("JPCLN002", "fold2"), ("JPCNN002", "fold2")):
        for r in REGIONS:
            name = r.replace("_", " ")  # official spelling: "left clavicle"
            write_mask(_mask_for(cid, r), root / "scratch" / fold / "masks" / name / f"{cid}.gif")
    ix = DatasetIndex(root)
    assert ix.case_ids == ["JPCLN001", "JPCLN002", "JPCNN002"]
    c1 = ix["JPCLN001"]
    assert c1.image_path.suffix == ".IMG"
    assert c1.regions == REGIONS and c1.fold == 1
    assert c1.mask_paths["left_clavicle"].parent.name == "left clavicle"
    im = c1.load_image()
    assert im.spacing == (0.175, 0.175) and im.data.shape == (2048, 2048)
    assert [c.case_id for c in ix.fold(2)] == ["JPCLN002", "JPCNN002"]
    with pytest.raises(CXRSegIOError, match="JPCNN002.IMG"):
        ix["JPCNN002"].load_image()


def test_hyphen_and_underscore_spellings_and_png_masks(tmp_path):
    root = _flat(tmp_path, ["JPCNN004"], ext=".png", folder=lambda r: r.replace("_", "-").title())
    c = DatasetIndex(root)["JPCNN004"]
    assert c.regions == REGIONS
    assert c.mask_paths["right_lung"].parent.name == "Right-Lung"


def test_dicom_at_root_and_lowercase_ids(tmp_path):
    pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.arange(16, dtype=np.uint16).tobytes()
    ds.save_as(tmp_path / "patient_7.dcm", enforce_file_format=True)
    _png(tmp_path / "jpcln005.png")
    write_mask(np.ones(SHAPE, bool), tmp_path / "masks" / "heart" / "JPCLN005.gif")
    write_mask(np.ones((4, 4), bool), tmp_path / "masks" / "heart" / "Patient_7.png")
    ix = DatasetIndex(tmp_path)
    assert ix.case_ids == ["JPCLN005", "patient_7"]
    assert ix["JPCLN005"].regions == ("heart",)
    assert ix["patient_7"].regions == ("heart",)
    assert ix["patient_7"].fold is None and ix["patient_7"].nodule is None
    assert ix["patient_7"].load_image().meta["format"] == "dicom"
    # lookups: case-insensitive, with a suffix
    assert ix["jpcln005"].case_id == "JPCLN005"
    assert ix["JPCLN005.png"].case_id == "JPCLN005"
    assert "PATIENT_7" in ix


def test_case_folder_with_masks_subfolder(tmp_path):
    _png(tmp_path / "JPCLN009.png")
    write_mask(np.ones(SHAPE, bool), tmp_path / "masks" / "left lung" / "JPCLN009.gif")
    ix = DatasetIndex(tmp_path)
    assert ix.case_ids == ["JPCLN009"]
    assert ix[0].regions == ("left_lung",)


def test_case_folder_with_region_files_beside_image(tmp_path):
    case = tmp_path / "mycase"
    _png(case / "scan.png")
    write_mask(np.ones(SHAPE, bool), case / "heart.gif")
    write_mask(np.ones(SHAPE, bool), case / "left lung.png")
    write_mask(np.ones(SHAPE, bool), case / "Right_Clavicle.png")
    ix = DatasetIndex(case)
    assert ix.case_ids == ["scan"]
    assert ix["scan"].regions == ("heart", "right_clavicle", "left_lung")
    # the same from the parent folder
    assert DatasetIndex(tmp_path)["scan"].regions == ("heart", "right_clavicle", "left_lung")
    # and from the image file itself
    assert find_case_files(case / "scan.png").regions == ("heart", "right_clavicle", "left_lung")
    one = DatasetIndex(case / "scan.png")
    assert one.case_ids == ["scan"] and one[0].regions == ("heart", "right_clavicle", "left_lung")


def test_region_files_ignored_when_folder_has_several_images(tmp_path):
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png")
    write_mask(np.ones(SHAPE, bool), tmp_path / "heart.gif")
    ix = DatasetIndex(tmp_path)
    assert ix.case_ids == ["a", "b"]
    assert all(c.regions == () for c in ix)


def test_find_case_files_flat(tmp_path):
    root = _flat(tmp_path, ["JPCLN011"], regions=("heart", "right_lung"))
    c = find_case_files(root / "images" / "JPCLN011.png")
    assert c.case_id == "JPCLN011" and c.fold == 1 and c.nodule is True
    assert c.regions == ("heart", "right_lung")
    with pytest.raises(CXRSegIOError, match="missing.png"):
        find_case_files(root / "images" / "missing.png")


def test_hidden_files_and_non_images_ignored(tmp_path):
    _flat(tmp_path, ["JPCLN001"])
    (tmp_path / "images" / "notes.txt").write_text("x")
    (tmp_path / "images" / ".JPCLN001.png.1234.tmp").write_bytes(b"")
    _png(tmp_path / ".cache" / "JPCLN777.png")
    _png(tmp_path / "__pycache__" / "JPCLN778.png")
    assert DatasetIndex(tmp_path).case_ids == ["JPCLN001"]


# ------------------------------------------------------------------------------- errors


def test_missing_root(tmp_path):
    with pytest.raises(CXRSegIOError) as e:
        DatasetIndex(tmp_path / "nowhere")
    assert "nowhere" in str(e.value)
    assert isinstance(e.value, FileNotFoundError)


def test_root_without_cases(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CXRSegIOError, match="empty.*no case"):
        DatasetIndex(tmp_path / "empty")
    # only masks: still no case
    write_mask(np.ones(SHAPE, bool), tmp_path / "m" / "masks" / "heart" / "JPCLN001.gif")
    with pytest.raises(CXRSegIOError, match="no case"):
        DatasetIndex(tmp_path / "m")
    # images but no masks with require_masks
    _png(tmp_path / "i" / "JPCLN001.png")
    with pytest.raises(CXRSegIOError, match="no case with masks"):
        DatasetIndex(tmp_path / "i", require_masks=True)


def test_unknown_case_keyerror_with_near_names(tmp_path):
    ix = DatasetIndex(_flat(tmp_path, ["JPCLN001", "JPCLN002", "JPCNN001"], regions=("heart",)))
    with pytest.raises(KeyError) as e:
        ix["JPCLN003"]
    msg = str(e.value)
    assert "JPCLN003" in msg and "JPCLN001" in msg
    with pytest.raises(IndexError):
        ix[10]
    assert ix.get("nope") is None


# ------------------------------------------------------------------------------ clinical

CLNDAT = (
    "JPCLN001.IMG\t3\t15\t53\tmale\t1634\t692\tmalignant\tl.upper lobe\tlung cancer\n"
    "JPCLN002.IMG\t\t4\t\t30\t72\tfemale\t\t1007\t1076\tbenign\tr.upper lobe\t\tgranuloma\n"
    "JPCLN003.IMG\t2\t20\t?\t?\t500\t600\tmalignant\tl.lower lobe\tadenocarcinoma\n"
    "\n"
    "this line is garbage\n"
    "JPCLN004.IMG  5  10  61  female  100  200  benign  r.middle lobe  hamartoma\n"
)
CNNDAT = (
    "\ufeffFile name  Age  Sex  Diagnosis\n"
    "JPCNN001.IMG  46  male  non-nodule\n"
    "JPCNN002.IMG     ?      female     non-nodule\n"
    "JPCNN003.IMG\t70\tfemale\tnon-nodule\n"
    "JPCNN004.IMG\n"
)


def test_parse_clinical_quirks(tmp_path):
    (tmp_path / "CLNDAT_EN.txt").write_text(CLNDAT)
    rows = parse_clinical_file(tmp_path / "CLNDAT_EN.txt")
    assert set(rows) == {"JPCLN001", "JPCLN002", "JPCLN003", "JPCLN004"}
    r1 = rows["JPCLN001"]
    assert r1["case_id"] == "JPCLN001" and r1["age"] == 53 and r1["sex"] == "male"
    assert r1["subtlety"] == 3 and r1["size_mm"] == 15.0
    assert r1["x"] == 1634 and r1["y"] == 692
    assert r1["malignancy"] == "malignant"
    assert r1["location"] == "l.upper lobe" and r1["diagnosis"] == "lung cancer"
    r2 = rows["JPCLN002"]  # extra tabs
    assert (r2["subtlety"], r2["size_mm"], r2["age"], r2["sex"]) == (4, 30.0, 72, "female")
    assert r2["diagnosis"] == "granuloma" and r2["malignancy"] == "benign"
    r3 = rows["JPCLN003"]
    assert r3["age"] is None and r3["sex"] is None and r3["diagnosis"] == "adenocarcinoma"
    r4 = rows["JPCLN004"]  # runs of spaces
    assert (r4["age"], r4["sex"], r4["location"], r4["diagnosis"]) == (
        61,
        "female",
        "r.middle lobe",
        "hamartoma",
    )

    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "cnndat_en.TXT").write_text(CNNDAT, encoding="utf-8")
    rows = parse_clinical_file(tmp_path / "sub" / "cnndat_en.TXT")
    assert set(rows) == {"JPCNN001", "JPCNN002", "JPCNN003"}
    assert rows["JPCNN001"] == {
        "case_id": "JPCNN001",
        "nodule": False,
        "age": 46,
        "sex": "male",
        "diagnosis": "non-nodule",
    }
    assert rows["JPCNN002"]["age"] is None and rows["JPCNN002"]["sex"] == "female"
    assert rows["JPCNN003"]["age"] == 70

    both = read_clinical(tmp_path)
    assert len(both) == 7


def test_clinical_attached_to_cases(tmp_path):
    root = _flat(tmp_path / "ds", ["JPCLN001", "JPCNN001", "JPCNN005"], regions=("heart",))
    (root / "Clinical").mkdir()
    (root / "Clinical" / "CLNDAT_EN.TXT").write_text(CLNDAT)
    (root / "CNNDAT_EN.txt").write_text(CNNDAT)
    ix = DatasetIndex(root)
    assert ix["JPCLN001"].clinical["diagnosis"] == "lung cancer"
    assert ix["JPCNN001"].clinical["age"] == 46
    assert ix["JPCNN005"].clinical is None
    assert "JPCLN002" in ix.clinical  # rows of cases without images are kept in the index
    assert len(ix) == 3  # clinical files are not images


def test_discovery_does_not_read_images(tmp_path):
    for i in range(1, 51):
        (tmp_path / "images").mkdir(exist_ok=True)
        (tmp_path / "images" / f"JPCLN{i:03d}.png").write_bytes(b"garbage")
    ix = DatasetIndex(tmp_path)
    assert len(ix) == 50
    with pytest.raises(CXRSegIOError, match="JPCLN001.png"):
        ix[0].load_image()
