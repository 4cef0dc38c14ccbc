"""Training progression dock: a fake --track-case run folder opens as an epoch stack."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _gui_fixtures import _isolated_home, open_case, phantom_root, wait_worker  # noqa: F401

from cxrseg.regions import REGIONS

S, E = 64, 4


def _fake_run(run, case_id="PHANTOM002", regions=REGIONS):
    run.mkdir(parents=True)
    rng = np.random.default_rng(0)
    probs = np.stack([np.full((len(regions), S, S), (k + 1) / (E + 1)) for k in range(E)]).astype(np.float16)
    probs += rng.uniform(0, 0.01, probs.shape).astype(np.float16)
    np.savez_compressed(run / "progression.npz", probs=probs, image=rng.uniform(0, 1, (S, S)).astype(np.float16),
                        epochs=np.arange(1, E + 1), regions=np.array(regions), case_id=np.array(case_id))
    hist = [{"epoch": k, "loss": 1.0 / k, "lr": 1e-3, "val_iou": {"heart": 0.5 + k / 10, "mean": 0.4 + k / 10},
             "seconds": 1.0} for k in range(1, E + 1)]
    (run / "history.json").write_text(json.dumps(hist))
    (run / "split.json").write_text(json.dumps({"train": [], "val": [case_id]}))
    return run


def test_open_run_with_ground_truth_from_open_dataset(make_napari_viewer, qtbot, phantom_root, tmp_path):
    from napari_cxrseg._widgets._progression import ProgressionWidget
    from napari_cxrseg._widgets._state import get_session

    viewer = make_napari_viewer()
    s = get_session(viewer)
    wait_worker(qtbot, s.open_dataset(phantom_root))
    w = ProgressionWidget(viewer)
    run = _fake_run(tmp_path / "run")
    wait_worker(qtbot, w.open_run(run))
    for r in REGIONS:
        ly = viewer.layers[f"PHANTOM002 progression {r}"]
        assert ly.data.shape == (E, S, S) and ly.data.dtype == np.float32
        assert tuple(ly.contrast_limits) == (0.0, 1.0) and ly.blending == "additive"
    gt = viewer.layers["PHANTOM002 progression ground truth"]
    assert gt.data.shape == (S, S) and set(np.unique(gt.data)) >= {0, 1, 4, 5}
    # the patient's left lung lies on the image's right
    cols = np.nonzero(gt.data == 4)[1]
    assert cols.mean() > S / 2
    assert viewer.dims.ndim == 3 and viewer.dims.current_step[0] == E - 1
    assert w.current_epoch() == E and f"epoch {E} / {E}" in w.epoch_label.text()
    viewer.dims.set_current_step(0, 1)
    assert w.current_epoch() == 2
    assert "epoch 2" in w.epoch_label.text() and "heart 0.700" in w.epoch_label.text()


def test_open_run_without_dataset_and_bad_folder(make_napari_viewer, qtbot, tmp_path):
    from napari_cxrseg._widgets._progression import ProgressionWidget, read_progression

    viewer = make_napari_viewer()
    w = ProgressionWidget(viewer)
    run = _fake_run(tmp_path / "run", regions=("left_clavicle",))
    wait_worker(qtbot, w.open_run(run))
    assert "PHANTOM002 progression left_clavicle" in viewer.layers
    assert "no ground truth" in w.info.text()
    with pytest.raises(FileNotFoundError, match="track-case"):
        read_progression(tmp_path)
    wait_worker(qtbot, w.open_run(tmp_path / "nothing"))
    assert "Cannot open" in w.info.text()


def test_open_a_real_cxrseg_train_run(make_napari_viewer, qtbot, phantom_root, tmp_path):
    """The folder ``cxrseg train --track-case`` writes (not a hand-made one) opens in the dock,
    its maps match the run's own progression.npz, and the epoch slider reads history.json."""
    from cxrseg.cli import main as cli_main
    from napari_cxrseg._widgets._progression import ProgressionWidget
    from napari_cxrseg._widgets._state import get_session

    run = tmp_path / "run"
    rc = cli_main(["train", "--data", str(phantom_root), "--out", str(run), "--encoder", "resnet18",
                   "--encoder-weights", "none", "--input-size", "64", "--epochs", "3", "--batch-size", "2",
                   "--precision", "fp32", "--device", "cpu", "--val-fraction", "0.34",
                   "--track-case", "PHANTOM002", "--quiet"])
    assert rc == 0
    hist = json.loads((run / "history.json").read_text())
    viewer = make_napari_viewer()
    wait_worker(qtbot, get_session(viewer).open_dataset(phantom_root))
    w = ProgressionWidget(viewer)
    wait_worker(qtbot, w.open_run(run))
    with np.load(run / "progression.npz") as z:
        probs = z["probs"].astype(np.float32)
    assert probs.shape == (3, len(REGIONS), 64, 64)
    for j, r in enumerate(REGIONS):
        ly = viewer.layers[f"PHANTOM002 progression {r}"]
        assert np.array_equal(ly.data, probs[:, j])
    gt = viewer.layers["PHANTOM002 progression ground truth"]
    assert gt.data.shape == (64, 64) and (gt.data > 0).any()
    viewer.dims.set_current_step(0, 1)
    assert w.current_epoch() == 2
    assert f"{hist[1]['val_iou']['mean']:.3f}" in w.epoch_label.text()


def test_maps_lie_over_the_case_at_its_scale_and_clear_on_case_change(
        make_napari_viewer, qtbot, phantom_root, tmp_path):
    """A 64 px run covers its case (same world extent as the case image), not a corner of it."""
    from napari_cxrseg._widgets._progression import ProgressionWidget
    from napari_cxrseg._widgets._state import get_session

    viewer = make_napari_viewer()
    s = get_session(viewer)
    open_case(qtbot, s, phantom_root, "PHANTOM002")
    image = s.get_layer("image")
    w = ProgressionWidget(viewer)
    wait_worker(qtbot, w.open_run(_fake_run(tmp_path / "run")))
    heart = viewer.layers["PHANTOM002 progression heart"]
    gt = viewer.layers["PHANTOM002 progression ground truth"]
    h, wd = image.data.shape
    lo_img = np.asarray(image.data_to_world((0, 0)))
    hi_img = np.asarray(image.data_to_world((h - 1, wd - 1)))
    lo = np.asarray(gt.data_to_world((0, 0)))
    hi = np.asarray(gt.data_to_world((S - 1, S - 1)))
    step = np.asarray(gt.scale)
    # the map's first and last pixel centres sit within one map pixel of the case's corners
    assert np.all(np.abs(lo - lo_img) <= step) and np.all(np.abs(hi - hi_img) <= step), (lo, hi, lo_img, hi_img)
    assert tuple(heart.scale[1:]) == tuple(gt.scale) and tuple(heart.translate[1:]) == tuple(gt.translate)
    # the ground truth at training resolution overlaps the case's ground truth where it should
    case_gt = s.get_layer("ground_truth")
    rows, cols = np.nonzero(gt.data == 4)  # left lung (patient)
    centre = gt.data_to_world((rows.mean(), cols.mean()))
    r, c = (int(round(x)) for x in case_gt.world_to_data(centre))
    assert case_gt.data[r, c] == 4
    # another case: the progression layers go
    wait_worker(qtbot, s.load_case("PHANTOM001"))
    assert not any("progression" in ly.name for ly in viewer.layers)
    assert "Cleared" in w.info.text() and w.progression is None


def test_wrong_folder_is_an_inline_message_not_a_popup(make_napari_viewer, qtbot, tmp_path):
    from _gui_fixtures import notifications

    from napari_cxrseg._widgets._progression import ProgressionWidget

    viewer = make_napari_viewer()
    w = ProgressionWidget(viewer)
    got = notifications()
    assert w.open_run(tmp_path) is None  # a folder without progression.npz
    assert "no progression.npz" in w.info.text()
    assert w.open_run(tmp_path / "nowhere") is None and "no such folder" in w.info.text()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "progression.npz").write_bytes(b"not an npz")
    wait_worker(qtbot, w.open_run(bad))
    assert "Cannot open" in w.info.text() and "not a cxrseg progression file" in w.info.text()
    assert not got, [str(n.message) for n in got]


def _region_run(run, region, n_epochs, case_id="PHANTOM002", size=S, level=0.0):
    run.mkdir(parents=True)
    probs = np.stack([np.full((1, size, size), level + k / 10) for k in range(1, n_epochs + 1)]).astype(np.float16)
    np.savez_compressed(run / "progression.npz", probs=probs, image=np.zeros((size, size), np.float16),
                        epochs=np.arange(1, n_epochs + 1), regions=np.array([region]), case_id=np.array(case_id))
    hist = [{"epoch": k, "loss": 1.0, "lr": 0.1, "val_iou": {region: k / 10, "mean": k / 10}, "seconds": 1.0}
            for k in range(1, n_epochs + 1)]
    (run / "history.json").write_text(json.dumps(hist))


def test_a_per_region_output_opens_as_one_progression(make_napari_viewer, qtbot, tmp_path):
    """``cxrseg train --per-region`` writes one run per region, of different lengths."""
    from napari_cxrseg._widgets._progression import ProgressionWidget, read_progression

    out = tmp_path / "per_region"
    _region_run(out / "left_clavicle", "left_clavicle", 4, level=0.0)
    _region_run(out / "heart", "heart", 2, level=0.5)
    prog = read_progression(out)
    assert prog["regions"] == ["heart", "left_clavicle"] and prog["epochs"] == [1, 2, 3, 4]
    assert prog["probs"].shape == (4, 2, S, S)
    # the heart ended at epoch 2: its last map is held, the clavicle's keeps changing
    np.testing.assert_allclose(prog["probs"][:, 0, 0, 0].astype(float), [0.6, 0.7, 0.7, 0.7], atol=1e-3)
    np.testing.assert_allclose(prog["probs"][:, 1, 0, 0].astype(float), [0.1, 0.2, 0.3, 0.4], atol=1e-3)
    assert prog["history"][3]["val_iou"] == {"heart": 0.2, "left_clavicle": 0.3}
    assert prog["history"][3]["notes"] == ["heart: last epoch 2"]

    viewer = make_napari_viewer()
    w = ProgressionWidget(viewer)
    wait_worker(qtbot, w.open_run(out))
    assert {"PHANTOM002 progression heart", "PHANTOM002 progression left_clavicle"} <= {ly.name for ly in viewer.layers}
    viewer.dims.set_current_step(0, 3)
    text = w.epoch_label.text()
    assert "epoch 4 / 4" in text and "left_clavicle 0.400" in text and "heart: last epoch 2" in text

    # runs of different cases do not merge
    other = tmp_path / "mixed"
    _region_run(other / "heart", "heart", 2)
    _region_run(other / "left_lung", "left_lung", 2, case_id="PHANTOM001")
    with pytest.raises(ValueError, match="different cases"):
        read_progression(other)
    wait_worker(qtbot, w.open_run(other))
    assert "Cannot open" in w.info.text() and "different cases" in w.info.text()
