"""The napari writer: Labels layer -> SCR masks, exact overlaps, all or nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cxrseg.dataset import DatasetIndex
from cxrseg.io import CXRSegIOError, read_mask
from cxrseg.phantom import make_phantom, write_phantom_case
from cxrseg.regions import LABEL_VALUES, REGIONS
from napari_cxrseg import _writer
from napari_cxrseg._layers import (
    ground_truth_layer_tuple,
    labels_from_masks,
    masks_from_labels,
)
from napari_cxrseg._writer import write_labels

SIZE = 128


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under root (hidden ones included) -> its bytes (None for folders)."""
    return {
        str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes()) for p in root.rglob("*")
    }


@pytest.fixture
def phantom():
    return make_phantom(4, size=SIZE)


def test_round_trip_through_dataset_index(tmp_path, phantom):
    root = tmp_path / "ds"
    write_phantom_case(root, "PHANTOM005", 4, image_format="png", size=SIZE)
    for r in REGIONS:  # the writer must recreate these
        (root / "masks" / r / "PHANTOM005.gif").unlink()
    labels = labels_from_masks(phantom.masks)
    written = write_labels(str(root), labels, {"name": "PHANTOM005 ground truth"})
    assert written == [str(root / "masks" / r / "PHANTOM005.gif") for r in REGIONS]
    case = DatasetIndex(root)["PHANTOM005"]
    assert case.regions == REGIONS
    back = case.load_masks()
    expected = masks_from_labels(labels)
    for r in REGIONS:
        assert np.array_equal(back[r], expected[r]), r
    # the label image hides the lungs under the clavicles ...
    assert not np.array_equal(back["left_lung"], phantom.masks["left_lung"])
    assert _files(root / "masks" / "heart") == ["PHANTOM005.gif"]  # no temporaries


def test_exact_masks_from_metadata_keep_overlaps(tmp_path, phantom):
    data, kwargs, kind = ground_truth_layer_tuple(
        phantom.masks, "PHANTOM005 ground truth", scale=(1, 1)
    )
    assert kind == "labels"
    written = write_labels(str(tmp_path / "out"), data, kwargs)
    assert len(written) == 5
    for r in REGIONS:
        m = read_mask(tmp_path / "out" / "masks" / r / "PHANTOM005.gif")
        assert np.array_equal(m, phantom.masks[r]), r  # ... the metadata keeps them
    assert (phantom.masks["left_lung"] & phantom.masks["left_clavicle"]).any()


def test_edited_labels_are_written_as_painted(tmp_path, phantom):
    data, kwargs, _ = ground_truth_layer_tuple(phantom.masks, "PHANTOM005 ground truth")
    edited = data.copy()
    edited[:10, :10] = LABEL_VALUES["heart"]
    write_labels(str(tmp_path), edited, kwargs)
    heart = read_mask(tmp_path / "masks" / "heart" / "PHANTOM005.gif")
    assert heart[:10, :10].all()
    assert np.array_equal(heart, edited == LABEL_VALUES["heart"])
    lung = read_mask(tmp_path / "masks" / "left_lung" / "PHANTOM005.gif")
    assert np.array_equal(lung, edited == LABEL_VALUES["left_lung"])


def test_case_id_from_metadata_then_name(tmp_path, phantom):
    labels = labels_from_masks({"heart": phantom.masks["heart"]})
    meta = {"name": "whatever", "metadata": {"cxrseg": {"case_id": "PHANTOM042"}}}
    assert write_labels(str(tmp_path / "a"), labels, meta) == [
        str(tmp_path / "a" / "masks" / "heart" / "PHANTOM042.gif")
    ]
    assert write_labels(str(tmp_path / "b"), labels, {"name": "my/case"}) == [
        str(tmp_path / "b" / "masks" / "heart" / "my_case.gif")
    ]


def test_single_region_file(tmp_path, phantom):
    labels = labels_from_masks({"right_clavicle": phantom.masks["right_clavicle"]})
    for name in ("clav.png", "clav.gif"):
        written = write_labels(str(tmp_path / name), labels, {"name": "PHANTOM005 ground truth"})
        assert written == [str(tmp_path / name)]
        assert np.array_equal(read_mask(tmp_path / name), phantom.masks["right_clavicle"])


def test_file_path_with_several_regions_becomes_a_folder(tmp_path, phantom):
    labels = labels_from_masks(phantom.masks)
    written = write_labels(str(tmp_path / "case7.png"), labels, {"name": "PHANTOM007"})
    assert written == [str(tmp_path / "case7" / "masks" / r / "PHANTOM007.png") for r in REGIONS]
    assert not (tmp_path / "case7.png").exists()


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (np.full((8, 8), 9, np.uint8), "not regions"),
        (np.zeros((8, 8), np.uint8), "no region"),
        (np.ones((2, 8, 8), np.uint8), "2-D"),
        (np.ones((8, 8), np.float32), "integer"),
        ([np.ones((8, 8), np.uint8), np.ones((4, 4), np.uint8)], "multiscale"),
    ],
)
def test_bad_layer_data_writes_nothing(tmp_path, data, match):
    with pytest.raises(CXRSegIOError, match=match):
        write_labels(str(tmp_path / "out"), data, {"name": "bad"})
    assert _files(tmp_path) == []


def test_bad_targets_write_nothing(tmp_path, phantom):
    labels = labels_from_masks(phantom.masks)
    with pytest.raises(CXRSegIOError, match="expected a .gif or .png"):
        write_labels(str(tmp_path / "x.jpg"), labels, {"name": "c"})
    # parent is a file
    (tmp_path / "file").write_text("x")
    with pytest.raises(CXRSegIOError, match="is a file"):
        write_labels(str(tmp_path / "file" / "sub"), labels, {"name": "c"})
    # one target is a folder: refused before anything is written
    (tmp_path / "ds" / "masks" / "right_lung" / "c.gif").mkdir(parents=True)
    with pytest.raises(CXRSegIOError, match="is a folder"):
        write_labels(str(tmp_path / "ds"), labels, {"name": "c"})
    assert _files(tmp_path) == [
        "ds",
        "ds/masks",
        "ds/masks/right_lung",
        "ds/masks/right_lung/c.gif",
        "file",
    ]


def test_failure_midway_leaves_nothing_and_keeps_old_files(tmp_path, phantom, monkeypatch):
    labels = labels_from_masks(phantom.masks)
    # 1. nothing existed: nothing (not even folders) is left behind
    calls = {"n": 0}
    real = _writer.write_mask

    def flaky(mask, path):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return real(mask, path)

    monkeypatch.setattr(_writer, "write_mask", flaky)
    with pytest.raises(CXRSegIOError, match="disk full"):
        write_labels(str(tmp_path / "out"), labels, {"name": "PHANTOM005"})
    assert _files(tmp_path) == []
    # 2. previous masks are left as they were
    monkeypatch.setattr(_writer, "write_mask", real)
    write_labels(str(tmp_path / "out"), labels, {"name": "PHANTOM005"})
    before = _snapshot(tmp_path / "out")
    calls["n"] = 0
    monkeypatch.setattr(_writer, "write_mask", flaky)
    with pytest.raises(CXRSegIOError):
        write_labels(str(tmp_path / "out"), labels[::-1].copy(), {"name": "PHANTOM005"})
    assert _snapshot(tmp_path / "out") == before  # same files, same bytes, no temporaries


def test_failure_while_moving_into_place_rolls_back(tmp_path, phantom, monkeypatch):
    import os

    labels = labels_from_masks(phantom.masks)
    write_labels(str(tmp_path), labels, {"name": "PHANTOM005"})
    before = _snapshot(tmp_path)
    real_replace = os.replace
    n = {"moves": 0}

    def flaky_replace(src, dst):
        if not str(src).endswith(".bak") and str(src).endswith(".gif") and ".cxrseg-" in str(src):
            n["moves"] += 1
            if n["moves"] == 4:
                raise OSError("device went away")
        return real_replace(src, dst)

    monkeypatch.setattr(_writer.os, "replace", flaky_replace)
    with pytest.raises(CXRSegIOError, match="device went away"):
        write_labels(str(tmp_path), labels[::-1].copy(), {"name": "PHANTOM005"})
    assert _snapshot(tmp_path) == before


def test_save_from_napari(make_napari_viewer, tmp_path, phantom):
    viewer = make_napari_viewer()
    data, kwargs, _ = ground_truth_layer_tuple(phantom.masks, "PHANTOM005 ground truth")
    layer = viewer.add_labels(data, **kwargs)
    # a folder path without suffix: napari appends ".gif", the writer makes a folder of it
    written = viewer.layers.save(str(tmp_path / "saved"), selected=False, plugin="napari-cxrseg")
    assert sorted(written) == sorted(
        str(tmp_path / "saved" / "masks" / r / "PHANTOM005.gif") for r in REGIONS
    )
    for r in REGIONS:
        assert np.array_equal(
            read_mask(tmp_path / "saved" / "masks" / r / "PHANTOM005.gif"), phantom.masks[r]
        )
    # one region to one file
    layer.data = np.where(data == LABEL_VALUES["heart"], data, 0).astype(np.uint8)
    written = viewer.layers.save(str(tmp_path / "heart.png"), plugin="napari-cxrseg")
    assert written == [str(tmp_path / "heart.png")]
    assert np.array_equal(read_mask(tmp_path / "heart.png"), phantom.masks["heart"])
