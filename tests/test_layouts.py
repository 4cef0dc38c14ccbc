"""Ground truth only from documented layouts; cxrseg's own outputs never read as ground truth."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from _tiny_model import make_tiny_checkpoint

from cxrseg.dataset import DatasetIndex, find_case_files
from cxrseg.io import CXRSegIOError, write_mask
from cxrseg.regions import REGIONS

SIZE = 64


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.safetensors")


def _images_only(root, ids=("PHANTOM001", "PHANTOM002")):
    """``root/images/<id>.png`` phantom images and no ground truth at all."""
    from cxrseg.phantom import write_phantom_case

    for i, cid in enumerate(ids):
        write_phantom_case(root, cid, i, image_format="png", size=SIZE)
    shutil.rmtree(root / "masks")
    return root


def _predict(ckpt, inputs, out, *extra):
    from cxrseg.cli import main

    return main(["predict", str(inputs), "--out", str(out), "--workers", "0", "--quiet", "--model",
                 str(ckpt), *map(str, extra)])


def test_predictions_inside_the_dataset_are_not_ground_truth(ckpt, tmp_path, capsys):
    gtx = _images_only(tmp_path / "gtx")
    assert _predict(ckpt, gtx / "images", gtx / "preds") == 0
    assert (gtx / "preds" / ".cxrseg-output").is_file()
    assert (gtx / "preds" / "masks" / "heart" / "PHANTOM001.png").is_file()
    index = DatasetIndex(gtx)
    assert [c.case_id for c in index] == ["PHANTOM001", "PHANTOM002"]  # heatmap-free output
    assert all(not c.mask_paths for c in index)
    with pytest.raises(CXRSegIOError, match="no case with masks"):
        DatasetIndex(gtx, require_masks=True)
    assert find_case_files(gtx / "images" / "PHANTOM001.png").mask_paths == {}
    # evaluate finds no ground truth instead of scoring the model's own output (1.000)
    from cxrseg.cli import main

    capsys.readouterr()
    rc = main(["evaluate", "--model", str(ckpt), "--data", str(gtx), "--cases", "all", "--quiet"])
    out = capsys.readouterr()
    assert rc != 0
    assert "1.000" not in out.out


def test_the_marker_alone_keeps_output_out_of_ground_truth(ckpt, tmp_path):
    """Output written where ground truth could be (``fold1/``, the root itself)."""
    gtx = _images_only(tmp_path / "gtx")
    assert _predict(ckpt, gtx / "images", gtx / "fold1") == 0  # fold<N>/masks is a GT place
    assert all(not c.mask_paths for c in DatasetIndex(gtx))
    assert find_case_files(gtx / "images" / "PHANTOM001.png").mask_paths == {}
    # the output folder opened as a dataset: its masks are not ground truth either
    shutil.copy(gtx / "images" / "PHANTOM001.png", gtx / "fold1" / "PHANTOM001.png")
    assert all(not c.mask_paths for c in DatasetIndex(gtx / "fold1"))


def test_partial_ground_truth_is_never_mixed_with_predictions(ckpt, tmp_path):
    gtx = _images_only(tmp_path / "gtx")
    heart = np.zeros((SIZE, SIZE), bool)
    heart[20:40, 20:40] = True
    write_mask(heart, gtx / "masks" / "heart" / "PHANTOM001.gif")
    assert _predict(ckpt, gtx / "images", gtx / "preds") == 0
    case = DatasetIndex(gtx)["PHANTOM001"]
    assert case.regions == ("heart",)
    assert case.mask_paths["heart"] == gtx / "masks" / "heart" / "PHANTOM001.gif"
    found = find_case_files(gtx / "images" / "PHANTOM001.png")
    assert found.regions == ("heart",)
    np.testing.assert_array_equal(found.load_masks()["heart"], heart)


def test_one_case_never_takes_regions_from_two_roots(tmp_path):
    from PIL import Image

    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)).save(root / "images" / "CASE1.png")
    m = np.ones((SIZE, SIZE), bool)
    write_mask(m, root / "masks" / "heart" / "CASE1.gif")
    write_mask(m, root / "scratch" / "fold1" / "masks" / "left lung" / "CASE1.gif")
    case = DatasetIndex(root)["CASE1"]
    assert case.regions == ("heart",)  # the root's masks/ wins, nothing added from fold1
    # a case folder with region files: used only when no masks/ folder has the case
    cf = root / "cases" / "P7"
    cf.mkdir(parents=True)
    Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)).save(cf / "P7.png")
    write_mask(m, cf / "right_lung.png")
    write_mask(m, root / "masks" / "heart" / "P7.gif")
    assert DatasetIndex(root)["P7"].regions == ("heart",)
    assert find_case_files(cf / "P7.png").regions == ("right_lung",)


def test_unrelated_neighbouring_masks_are_not_picked_up(tmp_path):
    from PIL import Image

    root = tmp_path / "work"
    (root / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)).save(root / "a" / "X1.png")
    (root / "a" / "X2.png").write_bytes((root / "a" / "X1.png").read_bytes())
    for r in REGIONS:
        write_mask(np.ones((SIZE, SIZE), bool), root / "b" / "masks" / r / "X1.png")
    assert find_case_files(root / "a" / "X1.png").mask_paths == {}
    index = DatasetIndex(root)
    assert not index["X1"].mask_paths
    assert root / "b" / "masks" in index.ignored_masks


def test_corrections_store_is_marked_and_never_ground_truth(tmp_path):
    from PIL import Image

    from cxrseg.corrections import CorrectionStore

    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)).save(root / "images" / "CASE1.png")
    # a store whose name and place look like SCR ground truth
    store = CorrectionStore(root / "fold3", dataset_root=root)
    store.save("CASE1", "heart", np.ones((SIZE, SIZE), bool))
    assert (root / "fold3" / ".cxrseg-output").is_file()
    assert not DatasetIndex(root)["CASE1"].mask_paths


def test_napari_reader_honours_the_marker(ckpt, tmp_path):
    pytest.importorskip("napari")
    from napari_cxrseg._reader import napari_get_reader, read_cxr

    gtx = _images_only(tmp_path / "gtx")
    assert _predict(ckpt, gtx / "images", gtx / "preds") == 0
    layers = read_cxr(str(gtx / "images" / "PHANTOM001.png"))
    assert [t for _d, _k, t in layers] == ["image"]  # no "ground truth" layer
    assert napari_get_reader(str(gtx / "preds")) is None
    (data, kwargs, kind) = read_cxr(str(gtx / "preds" / "masks" / "heart" / "PHANTOM001.png"))[0]
    assert kind == "labels"
    assert kwargs["name"].endswith("(cxrseg output)")
    assert kwargs["metadata"]["cxrseg"]["ground_truth"] is False
