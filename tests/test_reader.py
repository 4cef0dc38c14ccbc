"""The napari reader: what it accepts, the layers it builds, and its errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from cxrseg.io import CXRSegIOError, write_mask
from cxrseg.phantom import make_phantom, write_phantom_case
from cxrseg.regions import COLORS, DISPLAY_NAMES, LABEL_VALUES, REGIONS
from napari_cxrseg import _reader
from napari_cxrseg._layers import labels_from_masks
from napari_cxrseg._reader import napari_get_reader, read_cxr

SIZE = 256
SEEDS = {"PHANTOM001": 0, "PHANTOM002": 1, "PHANTOM003": 2}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """SCR layout: PHANTOM001 as JSRT .IMG, 002 as PNG, 003 as DICOM MONOCHROME1."""
    root = tmp_path_factory.mktemp("ds")
    write_phantom_case(root, "PHANTOM001", 0, image_format="img", size=SIZE)
    write_phantom_case(root, "PHANTOM002", 1, image_format="png", size=SIZE)
    write_phantom_case(root, "PHANTOM003", 2, image_format="dcm", size=SIZE, monochrome1=True)
    return root


def _by_type(layers):
    out = {}
    for data, kwargs, kind in layers:
        out.setdefault(kind, []).append((data, kwargs))
    return out


def _check_ground_truth(data, kwargs, case_id, shape, scale):
    assert kwargs["name"] == f"{case_id} ground truth"
    assert data.shape == shape and data.dtype == np.uint8
    assert set(np.unique(data)) == {0, 1, 2, 3, 4, 5}
    assert tuple(kwargs["scale"]) == pytest.approx(scale)
    feats = kwargs["features"]
    names = dict(zip(feats["index"], feats["name"], strict=True))
    assert names[0] == "background"
    for r in REGIONS:
        assert names[LABEL_VALUES[r]] == DISPLAY_NAMES[r]
        assert kwargs["colormap"][LABEL_VALUES[r]] == pytest.approx(COLORS[r])
    assert kwargs["colormap"][0][3] == 0  # transparent background
    md = kwargs["metadata"]["cxrseg"]
    assert md["case_id"] == case_id
    assert set(md["masks"]) == set(REGIONS)
    # exact masks survive where the single label image loses overlaps
    m = md["masks"]
    assert (m["left_lung"] & m["left_clavicle"]).any()
    assert np.array_equal(labels_from_masks(m, shape), data)


# ------------------------------------------------------------------ napari_get_reader
def test_get_reader_rejects_what_it_cannot_read(tmp_path, dataset):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty").mkdir()
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("a")
    good = str(dataset / "images" / "PHANTOM002.png")
    for hidden in (".cache", "__pycache__"):  # images only in hidden folders: not a dataset
        (tmp_path / "hid" / hidden).mkdir(parents=True)
        shutil.copy(good, tmp_path / "hid" / hidden / "PHANTOM002.png")
    for p in [
        str(tmp_path / "hid"),
        str(tmp_path / "missing.IMG"),
        str(tmp_path / "notes.txt"),
        str(tmp_path / "empty"),
        str(tmp_path / "texts"),
        str(dataset / "masks"),
        str(dataset / "masks" / "heart"),
        [],
        [good, str(tmp_path / "notes.txt")],
        None,
        42,
    ]:
        assert napari_get_reader(p) is None, p


def test_get_reader_never_raises(monkeypatch, dataset):
    def boom(path):
        raise RuntimeError("unexpected")

    monkeypatch.setattr(_reader, "_classify", boom)
    assert napari_get_reader(str(dataset)) is None
    assert napari_get_reader([str(dataset)]) is None


def test_get_reader_accepts(dataset):
    for p in [
        dataset,
        str(dataset),
        str(dataset / "images" / "PHANTOM001.IMG"),
        str(dataset / "images" / "PHANTOM002.png"),
        str(dataset / "images" / "PHANTOM003.dcm"),
        str(dataset / "masks" / "left_lung" / "PHANTOM001.gif"),
        str(dataset / "images"),
        [
            str(dataset / "images" / "PHANTOM002.png"),
            str(dataset / "masks" / "heart" / "PHANTOM002.gif"),
        ],
    ]:
        assert napari_get_reader(p) is read_cxr, p


# ------------------------------------------------------------------------ reading
def test_read_jsrt_img_with_ground_truth(dataset):
    p = str(dataset / "images" / "PHANTOM001.IMG")
    layers = napari_get_reader(p)(p)
    kinds = _by_type(layers)
    assert [len(kinds["image"]), len(kinds["labels"])] == [1, 1]
    img, ikw = kinds["image"][0]
    assert ikw["name"] == "PHANTOM001"
    assert img.shape == (2048, 2048) and img.dtype == np.float32
    assert tuple(ikw["scale"]) == (0.175, 0.175)
    md = ikw["metadata"]["cxrseg"]
    assert md["case_id"] == "PHANTOM001" and md["format"] == "jsrt-img"
    assert md["path"] == p and md["spacing"] == (0.175, 0.175)
    lab, lkw = kinds["labels"][0]
    _check_ground_truth(lab, lkw, "PHANTOM001", (2048, 2048), (0.175, 0.175))
    # the 256 masks were replicated onto the 2048 grid exactly
    ph = make_phantom(0, size=SIZE)
    assert np.array_equal(lab[::8, ::8], labels_from_masks(ph.masks))
    assert np.array_equal(lkw["metadata"]["cxrseg"]["masks"]["heart"][::8, ::8], ph.masks["heart"])


def test_read_dicom_monochrome1(dataset):
    p = str(dataset / "images" / "PHANTOM003.dcm")
    kinds = _by_type(read_cxr(p))
    img, ikw = kinds["image"][0]
    ph = make_phantom(2, size=SIZE)
    assert img.shape == (SIZE, SIZE)
    assert tuple(ikw["scale"]) == pytest.approx(ph.spacing)
    assert ikw["metadata"]["cxrseg"]["meta"]["photometric"] == "MONOCHROME1"
    # display polarity restored: heart bright, lungs dark
    assert img[ph.masks["heart"]].mean() > img[ph.masks["right_lung"]].mean() + 0.1
    _check_ground_truth(*kinds["labels"][0], "PHANTOM003", (SIZE, SIZE), ph.spacing)


def test_read_png_without_spacing(dataset):
    kinds = _by_type(read_cxr(str(dataset / "images" / "PHANTOM002.png")))
    img, ikw = kinds["image"][0]
    assert ikw["name"] == "PHANTOM002" and tuple(ikw["scale"]) == (1.0, 1.0)
    assert ikw["metadata"]["cxrseg"]["spacing"] is None
    _check_ground_truth(*kinds["labels"][0], "PHANTOM002", (SIZE, SIZE), (1.0, 1.0))


@pytest.mark.parametrize(
    ("case", "region", "scale"),
    [
        ("PHANTOM001", "left_lung", 0.175 * 2048 / SIZE),
        ("PHANTOM003", "heart", 1.4),
        ("PHANTOM002", "right_clavicle", 1.0),
    ],
)
def test_read_mask_file(dataset, case, region, scale):
    p = str(dataset / "masks" / region / f"{case}.gif")
    layers = read_cxr(p)
    assert len(layers) == 1
    data, kwargs, kind = layers[0]
    assert kind == "labels"
    assert kwargs["name"] == f"{case} {region}"
    assert set(np.unique(data)) == {0, LABEL_VALUES[region]}
    assert tuple(kwargs["scale"]) == pytest.approx((scale, scale))  # lies over its image
    md = kwargs["metadata"]["cxrseg"]
    assert md["region"] == region and md["case_id"] == case
    assert np.array_equal(md["masks"][region], make_phantom(SEEDS[case], size=SIZE).masks[region])


def test_mask_file_of_a_lower_case_jsrt_stem_names_the_case_as_the_index(tmp_path):
    write_mask(np.ones((8, 8), bool), tmp_path / "masks" / "heart" / "jpcln001.gif")
    (_, kwargs, _), = read_cxr(str(tmp_path / "masks" / "heart" / "jpcln001.gif"))
    assert kwargs["metadata"]["cxrseg"]["case_id"] == "JPCLN001"


def test_read_dataset_root_opens_first_case(dataset):
    layers = napari_get_reader(str(dataset))(str(dataset))
    kinds = _by_type(layers)
    img, ikw = kinds["image"][0]
    assert ikw["name"] == "PHANTOM001"
    md = ikw["metadata"]["cxrseg"]
    assert md["n_cases"] == 3 and "3 cases" in md["note"]
    assert kinds["labels"][0][1]["metadata"]["cxrseg"]["n_cases"] == 3
    _check_ground_truth(*kinds["labels"][0], "PHANTOM001", (2048, 2048), (0.175, 0.175))


def test_read_images_folder_finds_masks_beside(dataset):
    kinds = _by_type(read_cxr(str(dataset / "images")))
    assert kinds["image"][0][1]["name"] == "PHANTOM001"
    assert len(kinds["labels"]) == 1


def test_read_case_folders(tmp_path, dataset):
    # one image + masks/<region>/ in a folder
    case = tmp_path / "case"
    case.mkdir()
    shutil.copy(dataset / "images" / "PHANTOM002.png", case / "PHANTOM002.png")
    for r in REGIONS:
        (case / "masks" / r).mkdir(parents=True)
        shutil.copy(dataset / "masks" / r / "PHANTOM002.gif", case / "masks" / r / "PHANTOM002.gif")
    kinds = _by_type(read_cxr(str(case)))
    assert kinds["image"][0][1]["name"] == "PHANTOM002"
    assert "note" not in kinds["image"][0][1]["metadata"]["cxrseg"]
    _check_ground_truth(*kinds["labels"][0], "PHANTOM002", (SIZE, SIZE), (1.0, 1.0))
    # one image + <region>.gif beside it
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(dataset / "images" / "PHANTOM003.dcm", flat / "chest.dcm")
    for r in REGIONS:
        shutil.copy(dataset / "masks" / r / "PHANTOM003.gif", flat / f"{r}.gif")
    kinds = _by_type(read_cxr(str(flat)))
    assert kinds["image"][0][1]["name"] == "chest"
    _check_ground_truth(*kinds["labels"][0], "chest", (SIZE, SIZE), (1.4, 1.4))
    # a region file of that folder opens as a mask laid over the image
    data, kwargs, kind = read_cxr(str(flat / "heart.gif"))[0]
    assert kind == "labels" and kwargs["name"] == "chest heart"
    assert tuple(kwargs["scale"]) == pytest.approx((1.4, 1.4))


def test_read_official_scr_layout(tmp_path, dataset):
    """JSRT images in All247images/, masks in fold1/masks/<region with spaces>/."""
    root = tmp_path / "scr"
    (root / "All247images").mkdir(parents=True)
    shutil.copy(dataset / "images" / "PHANTOM001.IMG", root / "All247images" / "PHANTOM001.IMG")
    for r in REGIONS:
        d = root / "fold1" / "masks" / r.replace("_", " ")
        d.mkdir(parents=True)
        shutil.copy(dataset / "masks" / r / "PHANTOM001.gif", d / "PHANTOM001.gif")
    for p in (root, root / "All247images" / "PHANTOM001.IMG"):
        kinds = _by_type(read_cxr(str(p)))
        _check_ground_truth(*kinds["labels"][0], "PHANTOM001", (2048, 2048), (0.175, 0.175))
    _, kwargs, _ = read_cxr(str(root / "fold1" / "masks" / "left lung" / "PHANTOM001.gif"))[0]
    assert kwargs["name"] == "PHANTOM001 left_lung"
    assert tuple(kwargs["scale"]) == pytest.approx((1.4, 1.4))


def test_read_image_without_masks(tmp_path, dataset):
    shutil.copy(dataset / "images" / "PHANTOM002.png", tmp_path / "lonely.png")
    layers = read_cxr(str(tmp_path / "lonely.png"))
    assert [k for _, _, k in layers] == ["image"]
    assert layers[0][1]["name"] == "lonely"


def test_read_list_of_paths(dataset):
    paths = [
        str(dataset / "images" / "PHANTOM002.png"),
        str(dataset / "masks" / "heart" / "PHANTOM003.gif"),
    ]
    layers = napari_get_reader(paths)(paths)
    assert [k["name"] for _, k, _ in layers] == [
        "PHANTOM002",
        "PHANTOM002 ground truth",
        "PHANTOM003 heart",
    ]


# ------------------------------------------------------------------------ bad files
def test_bad_files_raise_naming_the_file(tmp_path, dataset):
    bad_img = tmp_path / "short.IMG"
    bad_img.write_bytes(b"\0" * 1000)
    bad_png = tmp_path / "broken.png"
    bad_png.write_text("not a png")
    for p in (bad_img, bad_png):
        reader = napari_get_reader(str(p))
        assert reader is not None
        with pytest.raises(CXRSegIOError, match=p.name):
            reader(str(p))
    # a case whose mask is not binary: the mask file is named
    root = tmp_path / "ds"
    write_phantom_case(root, "PHANTOM009", 4, image_format="png", size=64)
    grey = np.arange(64 * 64, dtype=np.uint8).reshape(64, 64)
    from PIL import Image

    Image.fromarray(grey).save(root / "masks" / "heart" / "PHANTOM009.gif")
    with pytest.raises(CXRSegIOError, match="PHANTOM009.gif"):
        read_cxr(str(root / "images" / "PHANTOM009.png"))
    # a mask whose aspect ratio does not match its image
    write_mask(np.ones((64, 32), bool), root / "masks" / "heart" / "PHANTOM009.gif")
    with pytest.raises(CXRSegIOError, match="aspect"):
        read_cxr(str(root / "images" / "PHANTOM009.png"))
    with pytest.raises(CXRSegIOError, match="missing"):
        read_cxr(str(tmp_path / "missing.png"))


# ------------------------------------------------------------------------ label painting
def test_labels_from_masks_values_paint_order_and_grids():
    from cxrseg.regions import PAINT_ORDER

    shape = (6, 8)
    full = {r: np.ones(shape, bool) for r in REGIONS}
    # everywhere overlapping: the last region of PAINT_ORDER wins
    lab = labels_from_masks(full)
    assert lab.dtype == np.uint8 and lab.shape == shape
    assert (lab == LABEL_VALUES[PAINT_ORDER[-1]]).all()
    lung = np.zeros(shape, bool)
    lung[:, :4] = True
    clav = np.zeros(shape, np.uint8)
    clav[:2] = 255  # non-bool masks are binarised
    lab = labels_from_masks({"Left Lung": lung, "left-clavicle": clav}, shape)  # any spelling
    assert (lab[:2] == LABEL_VALUES["left_clavicle"]).all()  # clavicle painted over the lung
    assert (lab[2:, :4] == LABEL_VALUES["left_lung"]).all() and (lab[2:, 4:] == 0).all()
    assert not labels_from_masks({}, shape).any()
    # masks on a coarser grid of the same aspect ratio are replicated onto ``shape``
    big = labels_from_masks({"heart": lung}, (12, 16))
    assert np.array_equal(big, np.kron(labels_from_masks({"heart": lung}), np.ones((2, 2), np.uint8)))
    with pytest.raises(ValueError, match="aspect"):
        labels_from_masks({"heart": lung}, (6, 6))
    with pytest.raises(ValueError, match="shape="):
        labels_from_masks({"heart": lung, "left_lung": np.zeros((3, 4), bool)})
    with pytest.raises(ValueError, match="2-D"):
        labels_from_masks({"heart": np.zeros((2, 6, 8), bool)}, shape)


# ------------------------------------------------------------------------ in napari
def test_open_case_folder_in_viewer(make_napari_viewer, dataset, tmp_path):
    case = tmp_path / "case"
    (case / "images").mkdir(parents=True)
    shutil.copy(dataset / "images" / "PHANTOM003.dcm", case / "images")
    for r in REGIONS:
        (case / "masks" / r).mkdir(parents=True)
        shutil.copy(dataset / "masks" / r / "PHANTOM003.gif", case / "masks" / r)
    viewer = make_napari_viewer()
    layers = viewer.open(str(case), plugin="napari-cxrseg")
    assert [type(layer).__name__ for layer in layers] == ["Image", "Labels"]
    image, labels = layers
    assert image.name == "PHANTOM003" and labels.name == "PHANTOM003 ground truth"
    assert set(np.unique(labels.data)) <= {0, 1, 2, 3, 4, 5}
    assert tuple(labels.scale) == pytest.approx(tuple(image.scale))
    names = dict(zip(labels.features["index"], labels.features["name"], strict=True))
    assert {names[LABEL_VALUES[r]] for r in REGIONS} == {DISPLAY_NAMES[r] for r in REGIONS}
    assert np.allclose(labels.get_color(LABEL_VALUES["heart"]), COLORS["heart"])
    # the status bar names the region under the cursor
    ph = make_phantom(2, size=SIZE)
    r, c = np.argwhere(ph.masks["heart"] & ~ph.masks["left_lung"])[0]
    status = labels.get_status(np.array([r, c]) * np.asarray(labels.scale), world=True)
    assert DISPLAY_NAMES["heart"] in str(status)


@pytest.mark.realdata
def test_read_real_jsrt_case(real_data_root):
    """A real SCR case opens with five regions, the patient's left lung on the image's right."""
    from scipy import ndimage

    from cxrseg.dataset import DatasetIndex

    case = DatasetIndex(real_data_root, require_masks=True).with_regions("all")[0]
    kinds = _by_type(read_cxr(str(case.image_path)))
    img, ikw = kinds["image"][0]
    lab, lkw = kinds["labels"][0]
    assert ikw["name"] == case.case_id and lkw["name"] == f"{case.case_id} ground truth"
    assert lab.shape == img.shape
    assert set(np.unique(lab)) == {0, 1, 2, 3, 4, 5}
    cols = img.shape[1] / 2
    assert ndimage.center_of_mass(lab == LABEL_VALUES["left_lung"])[1] > cols
    assert ndimage.center_of_mass(lab == LABEL_VALUES["right_lung"])[1] < cols
