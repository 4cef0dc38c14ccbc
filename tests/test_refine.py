"""The clavicles' native-resolution refinement: windows, mirroring, training, and its use by
predict(), the batch engine and the CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from _tiny_model import make_tiny_checkpoint  # noqa: E402

from cxrseg.model import CheckpointError, read_metadata  # noqa: E402
from cxrseg.refine import (  # noqa: E402
    Refiner,
    RefineSpec,
    RefineTrainConfig,
    Window,
    cut,
    find_refiner,
    locate,
    paste,
    refiner_path,
    train_refiner_iter,
)

CLAV = ("left_clavicle", "right_clavicle")


def _blob(shape, top, left, h, w):
    p = np.zeros(shape, np.float32)
    p[top : top + h, left : left + w] = 0.9
    return p


# ----------------------------------------------------------------------------- windows


def test_locate_fits_the_crop_at_the_grids_scale():
    spec = RefineSpec()
    win = locate(_blob((1024, 1024), 200, 600, 100, 220), spec)
    assert win.shape == spec.crop  # fits with the margin: native scale, no resize
    assert win.top <= 200 - spec.margin and win.bottom >= 300 + spec.margin
    assert win.left <= 600 - spec.margin and win.right >= 820 + spec.margin
    # a clavicle too big for the crop gets a larger window of the crop's aspect
    big = locate(_blob((1024, 1024), 100, 300, 200, 330), spec)
    assert big.shape[0] > spec.crop[0] and big.shape[1] > spec.crop[1]
    assert big.top <= 100 - spec.margin and big.right >= 630 + spec.margin
    assert abs(big.shape[1] / big.shape[0] - spec.crop[1] / spec.crop[0]) < 0.02
    # a 2048 film: the same anatomy covers twice the pixels, so does the window
    w2 = locate(_blob((2048, 2048), 400, 1200, 200, 440), spec)
    assert w2.shape == (2 * spec.crop[0], 2 * spec.crop[1])


def test_locate_uses_the_largest_component_and_nothing_gives_none():
    spec = RefineSpec()
    p = _blob((1024, 1024), 200, 600, 100, 220)
    p[900:905, 10:15] = 0.8  # a stray speck must not stretch the window
    assert locate(p, spec).shape == spec.crop
    assert locate(np.full((1024, 1024), 0.3, np.float32), spec) is None


def test_locate_labels_inside_the_box_of_all_components():
    """The components are labelled inside the bounding box of all pixels above the level:
    the same window as labelling the whole map."""
    from scipy import ndimage

    from cxrseg.refine import _largest_component, grid_scale

    def whole_map(prob, spec):
        mask = _largest_component(prob >= spec.level)
        ys, xs = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        y0, y1, x0, x1 = ys[0], ys[-1] + 1, xs[0], xs[-1] + 1
        s = grid_scale(prob.shape, spec.grid)
        z = max(1.0, ((y1 - y0) * s + 2 * spec.margin) / spec.crop[0], ((x1 - x0) * s + 2 * spec.margin) / spec.crop[1])
        h, w = max(1, int(round(spec.crop[0] * z / s))), max(1, int(round(spec.crop[1] * z / s)))
        top, left = int(round((y0 + y1) / 2.0 - h / 2.0)), int(round((x0 + x1) / 2.0 - w / 2.0))
        return (top, left, top + h, left + w)

    spec = RefineSpec()
    rng = np.random.default_rng(0)
    for _ in range(60):
        p = ndimage.gaussian_filter(rng.random((int(rng.integers(40, 300)), int(rng.integers(40, 300)))),
                                    rng.uniform(1, 6))
        p = (p - p.min()) / (np.ptp(p) + 1e-9) * rng.uniform(0.6, 1.3)
        if not (p >= spec.level).any():
            continue
        win = locate(p, spec)
        assert (win.top, win.left, win.bottom, win.right) == whole_map(p, spec)


def test_worker_batches_travel_as_tensors_and_come_back_as_the_same_arrays():
    """What a DataLoader worker sends: arrays as tensors (shared memory), flipped or
    read-only views copied first; the main process gets equal numpy arrays back."""
    import torch

    from cxrseg.batch import _as_arrays, _collate

    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    ro = base.copy()
    ro.flags.writeable = False
    items = [{"i": 0, "input": base[:, ::-1], "image": ro, "error": None},
             {"i": 1, "error": "bad file"}]
    sent = _collate([dict(x) for x in items])
    assert isinstance(sent[0]["input"], torch.Tensor) and isinstance(sent[0]["image"], torch.Tensor)
    back = _as_arrays(sent)
    assert np.array_equal(back[0]["input"], base[:, ::-1]) and np.array_equal(back[0]["image"], ro)
    assert back[1] == {"i": 1, "error": "bad file"}


def test_cut_and_paste_reach_outside_the_film():
    a = torch.arange(100, dtype=torch.float32).view(10, 10)
    win = Window(-2, 7, 3, 12)
    c = cut(a, win)
    assert c.shape == (5, 5)
    assert torch.equal(c[2:, :3], a[0:3, 7:10]) and c[:2].abs().sum() == 0 and c[:, 3:].abs().sum() == 0
    b = torch.zeros(10, 10)
    paste(b, torch.ones(5, 5), win)
    assert b.sum() == 9 and b[0:3, 7:10].sum() == 9


# ----------------------------------------------------------------------------- a tiny trained refiner


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A phantom dataset, a tiny whole-film model and a refiner trained for one epoch."""
    from cxrseg.phantom import phantom_case_id, write_phantom_dataset

    root = tmp_path_factory.mktemp("refine")
    ds = root / "ds"
    write_phantom_dataset(ds, 6, size=256)
    cases = [phantom_case_id(i + 1) for i in range(6)]
    ck = make_tiny_checkpoint(root / "model" / "tiny.safetensors", metadata={"train_cases": cases[:5],
                                                                             "val_cases": cases[5:]})
    cfg = RefineTrainConfig(epochs=1, batch_size=4, precision="fp32")
    events = list(train_refiner_iter(ds, root / "run", first_stage=ck, config=cfg,
                                     selection_cases=cases[:1], device="cpu"))
    return {"root": root, "ds": ds, "ck": ck, "cases": cases, "events": events, "run": root / "run"}


def test_training_writes_a_refiner_with_its_settings(trained):
    ev = trained["events"]
    assert [e.kind for e in ev if e.kind != "step"][-2:] == ["epoch", "done"]
    done = ev[-1]
    assert done.best_epoch == 1 and done.path.is_file()
    meta = read_metadata(done.path)
    assert meta["refine"]["regions"] == list(CLAV)
    assert meta["refine"]["first_stage"] == read_metadata(trained["ck"])["model_id"]
    assert meta["config"]["in_channels"] == 4 and meta["config"]["extra_channels"] == 1
    assert meta["selection_cases"] == trained["cases"][:1]
    assert set(meta["train_cases"]) == set(trained["cases"][1:5])  # never the validation case
    hist = json.loads((trained["run"] / "history.json").read_text())
    assert len(hist["history"]) == 1 and set(hist["baseline"]) == set(CLAV)


def test_training_refuses_the_first_stages_validation_cases(trained):
    with pytest.raises(ValueError, match="validation cases"):
        next(iter(train_refiner_iter(trained["ds"], trained["root"] / "bad", first_stage=trained["ck"],
                                     cases=trained["cases"], device="cpu")))


def test_resume_continues_the_history(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    cfg = RefineTrainConfig(epochs=2, batch_size=4, precision="fp32")
    ev = list(train_refiner_iter(trained["ds"], run, first_stage=trained["ck"], config=cfg,
                                 selection_cases=trained["cases"][:1], resume=True, device="cpu"))
    epochs = [e.epoch for e in ev if e.kind == "epoch"]
    assert epochs == [2]  # epoch 1 was not trained again
    assert len(json.loads((run / "history.json").read_text())["history"]) == 2


def test_out_of_fold_maps_train_and_choose_the_epoch(trained, tmp_path):
    """With k-fold models, crops also get a map from a model that did not train on them, and
    the selection cases are scored with such maps."""
    import shutil as sh

    from cxrseg.refine import read_prior_folds

    cases = trained["cases"][:5]
    folds = tmp_path / "folds"
    groups = [cases[:3], cases[3:]]
    for k in range(len(groups)):
        # an untrained fold model of the same architecture stands in for a real one
        make_tiny_checkpoint(folds / f"fold{k}" / "best.safetensors", seed=10 + k)
    (folds / "folds.json").write_text(json.dumps({"folds": groups}))
    assert read_prior_folds(folds)[cases[4]] == folds / "fold1" / "best.safetensors"
    cfg = RefineTrainConfig(epochs=1, batch_size=4, precision="fp32", oof_prior_p=1.0)
    ev = list(train_refiner_iter(trained["ds"], tmp_path / "run", first_stage=trained["ck"], config=cfg,
                                 selection_cases=cases[:1], device="cpu", prior_folds=folds))
    meta = read_metadata(ev[-1].path)
    assert meta["metrics"]["selection_maps"] == "out-of-fold"
    # the baseline is the out-of-fold model's own score, not the first stage's
    assert ev[-1].baseline != trained["events"][-1].baseline
    # a case no fold holds, a missing fold model, a broken folds.json: clear errors
    with pytest.raises(ValueError, match="no fold holds"):
        next(iter(train_refiner_iter(trained["ds"], tmp_path / "r2", first_stage=trained["ck"], config=cfg,
                                     cases=cases, selection_cases=cases[:1], device="cpu",
                                     prior_folds=_folds_without(folds, cases[4], tmp_path))))
    sh.rmtree(folds / "fold1")
    with pytest.raises(FileNotFoundError, match=r"fold1.best\.safetensors: not found"):
        read_prior_folds(folds)
    (folds / "folds.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="folds.json: expected"):
        read_prior_folds(folds)


def _folds_without(folds, case, tmp_path):
    """A copy of ``folds`` whose folds.json leaves ``case`` out."""
    import shutil as sh

    dst = tmp_path / "folds-less"
    sh.copytree(folds, dst)
    groups = json.loads((dst / "folds.json").read_text())["folds"]
    (dst / "folds.json").write_text(json.dumps({"folds": [[c for c in g if c != case] for g in groups]}))
    return dst


@pytest.fixture()
def installed(trained, tmp_path):
    """The tiny model with its refiner beside it, in a fresh folder."""
    ck = tmp_path / "m" / "tiny.safetensors"
    ck.parent.mkdir()
    shutil.copyfile(trained["ck"], ck)
    shutil.copyfile(trained["events"][-1].path, refiner_path(ck))
    return ck


def _film(seed=3, size=256):
    from cxrseg.phantom import make_phantom

    return make_phantom(seed, size=size)


def test_predictor_uses_the_refiner_beside_the_checkpoint(installed, trained):
    from cxrseg.predict import Predictor

    assert find_refiner(installed) == refiner_path(installed)
    assert find_refiner(trained["ck"]) is None
    on = Predictor(installed, device="cpu", precision="fp32")
    off = Predictor(installed, device="cpu", precision="fp32", refine=False)
    assert on.refiner is not None and on.refine_id == read_metadata(refiner_path(installed))["model_id"]
    assert off.refiner is None and off.refine_id is None
    case = _film()
    # a first stage that finds each clavicle: its map is the phantom's mask
    native = torch.from_numpy(np.stack([case.masks[r].astype(np.float32) for r in on.regions]))
    base = native.clone()
    on.refine_native(case.image, native, on.regions)
    for j, r in enumerate(on.regions):
        if r in CLAV:
            win = locate(base[j].numpy(), on.refiner.spec)
            changed = (native[j] != base[j]).numpy()
            assert changed.any(), r
            inside = np.zeros_like(changed)
            inside[max(win.top, 0) : win.bottom, max(win.left, 0) : win.right] = True
            assert not (changed & ~inside).any(), f"{r}: changed outside its window"
        else:
            assert torch.equal(native[j], base[j]), r
    # the public API runs it too (the tiny first stage may find no clavicle: then nothing changes)
    a, b = on.predict(case.image), off.predict(case.image)
    for r in on.regions:
        if r not in CLAV:
            assert np.array_equal(a[r], b[r]), r


def test_a_film_twice_the_grid_is_refined_in_the_same_place(installed):
    """A 2048-px film (a raw JSRT .IMG) is refined in windows twice as large in its pixels,
    resized to the crop: the result is the 1024-px film's, upsampled, up to resampling."""
    import torch.nn.functional as F

    ref = Refiner(refiner_path(installed), device="cpu", precision="fp32")
    case = _film(seed=4, size=512)
    img = case.image.astype(np.float32)
    prior = torch.from_numpy(case.masks["left_clavicle"].astype(np.float32) * 0.9)
    small = ref.refine(img, {"left_clavicle": prior})["left_clavicle"]
    big_img = np.repeat(np.repeat(img, 2, 0), 2, 1)
    big = ref.refine(big_img, {"left_clavicle": prior.repeat_interleave(2, 0).repeat_interleave(2, 1)})
    big = big["left_clavicle"]
    assert big.shape == (1024, 1024)
    down = F.avg_pool2d(big[None, None], 2)[0, 0]
    win = locate(prior.numpy(), ref.spec)
    inside = small[win.top : win.bottom, win.left : win.right] >= 0.5
    assert 0.02 < inside.float().mean() < 0.98  # the window holds both classes: the check can fail
    assert ((down >= 0.5) != (small >= 0.5)).float().mean() < 0.01


def test_evaluate_says_whether_the_clavicles_were_refined(installed, trained):
    from cxrseg.evaluate import evaluate_model

    on = evaluate_model(installed, trained["ds"], device="cpu", precision="fp32", regions="clavicles")
    off = evaluate_model(installed, trained["ds"], device="cpu", precision="fp32", regions="clavicles", refine=False)
    rid = read_metadata(refiner_path(installed))["model_id"]
    assert on.refine_ids == [rid] and off.refine_ids == [None]
    assert f"refinement network {rid}" in on.format_table()
    assert "no clavicle refinement" in off.format_table()


def test_mirroring_keeps_the_side(installed):
    """A right clavicle is refined as the mirror image of a left one: mirrored film and map in,
    the same result mirrored out."""
    ref = Refiner(refiner_path(installed), device="cpu", precision="fp32")
    case = _film(seed=4)
    img = case.image.astype(np.float32)
    prior = torch.from_numpy(case.masks["left_clavicle"].astype(np.float32) * 0.9)
    left = ref.refine(img, {"left_clavicle": prior})["left_clavicle"]
    right = ref.refine(img[:, ::-1].copy(), {"right_clavicle": prior.flip(-1)})["right_clavicle"]
    assert torch.allclose(left, right.flip(-1), atol=1e-5)
    # and the network is not symmetric itself: refining the left map as if it were a right
    # clavicle (no mirroring on the way) gives another answer
    wrong = ref.refine(img, {"right_clavicle": prior})["right_clavicle"]
    assert not torch.allclose(left, wrong, atol=1e-3)


def test_batch_engine_equals_predict_with_refinement(installed, tmp_path, monkeypatch):
    """cxrseg predict refines a batch's films together; its masks are those of
    predict_batch() with the same batches, with or without heatmaps, and when refining the
    batch at once fails it refines one case at a time."""
    from PIL import Image

    from cxrseg.batch import run_predict
    from cxrseg.io import read_image
    from cxrseg.predict import Predictor, threshold

    pred = Predictor(installed, device="cpu", precision="fp32")
    (tmp_path / "in").mkdir()
    names = ["p5", "p6", "p7"]
    for k, n in enumerate(names):
        Image.fromarray((_film(seed=5 + k).image * 255).astype(np.uint8)).save(tmp_path / "in" / f"{n}.png")
    imgs = [read_image(tmp_path / "in" / f"{n}.png").data for n in names]
    want = [threshold(p, pred.thresholds) for p in pred.predict_batch(imgs, batch_size=2)]
    calls = []
    real = pred.refine_natives
    def counted(films, *a, **kw):
        calls.append(len(films))
        return real(films, *a, **kw)

    monkeypatch.setattr(pred, "refine_natives", counted)

    def check(out, exact=True):
        for n, w in zip(names, want, strict=True):
            for r in pred.regions:
                got = np.asarray(Image.open(out / "masks" / r / f"{n}.png")) > 0
                if exact:
                    assert np.array_equal(got, w[r]), (out.name, n, r)
                else:  # refined one film at a time: the same up to float rounding at the threshold
                    assert (got != w[r]).mean() < 1e-3, (out.name, n, r)
            marker = json.loads((out / ".done" / f"{n}.json").read_text())
            assert marker["options"]["refine"] == pred.refine_id

    # the films decoded in this process, and in a worker process (sent through shared memory)
    for heat, workers in ((False, 0), (True, 0), (False, 1)):
        calls.clear()
        out = tmp_path / f"out{heat}{workers}"
        run_predict([tmp_path / "in"], out, predictor=pred, postprocess=False, progress=False, heatmaps=heat,
                    workers=workers, batch_size=2)
        assert sorted(calls) == [1, 2]  # one call per batch: the films of a batch together
        check(out)

    def fail_batches(films, *a, **kw):
        if len(films) > 1:
            raise RuntimeError("simulated out of memory")
        return real(films, *a, **kw)

    monkeypatch.setattr(pred, "refine_natives", fail_batches)
    logged = []
    s = run_predict([tmp_path / "in"], tmp_path / "outFallback", predictor=pred, postprocess=False, progress=False,
                    workers=0, batch_size=2, log=logged.append)
    assert s.predicted == 3 and s.failed == 0
    assert any("one case at a time" in m for m in logged)
    check(tmp_path / "outFallback", exact=False)
    # a run without the refiner does not count the refined outputs as done
    off = Predictor(installed, device="cpu", precision="fp32", refine=False)
    s = run_predict([tmp_path / "in"], tmp_path / "outFalse", predictor=off, postprocess=False, progress=False,
                    workers=0)
    assert s.predicted == 3 and s.skipped == 0


def test_refine_switches_and_bad_refiners(installed, trained, tmp_path, monkeypatch):
    from cxrseg.predict import Predictor, get_predictor

    with pytest.raises(CheckpointError, match="no refinement network"):
        Predictor(trained["ck"], device="cpu", precision="fp32", refine=True)
    monkeypatch.setenv("CXRSEG_REFINE", "0")
    assert Predictor(installed, device="cpu", precision="fp32").refiner is None
    assert get_predictor(installed, device="cpu", precision="fp32").refiner is None
    monkeypatch.delenv("CXRSEG_REFINE")
    assert get_predictor(installed, device="cpu", precision="fp32").refiner is not None
    # a whole-film checkpoint put where the refiner belongs: refused, naming the file
    shutil.copyfile(installed, refiner_path(installed))
    with pytest.raises(CheckpointError, match=r"tiny\.refine\.safetensors.*not a refinement network"):
        Predictor(installed, device="cpu", precision="fp32")
    # a truncated refiner: refused, naming the file
    refiner_path(installed).write_bytes(b"\x00" * 12)
    with pytest.raises(CheckpointError, match=r"tiny\.refine\.safetensors"):
        Predictor(installed, device="cpu", precision="fp32")


def test_model_config_extra_channels():
    from cxrseg.config import ModelConfig

    cfg = ModelConfig(in_channels=4, extra_channels=1, regions=("left_clavicle",))
    assert ModelConfig.from_dict({**cfg.__dict__}).extra_channels == 1
    with pytest.raises(ValueError, match="in_channels"):
        ModelConfig(in_channels=4)
    with pytest.raises(ValueError, match="extra_channels"):
        ModelConfig(extra_channels=-1)


def test_cli_refine_train_install_and_switch(trained, tmp_path, capsys):
    from PIL import Image

    from cxrseg.cli import main

    ck = tmp_path / "m" / "tiny.safetensors"
    ck.parent.mkdir()
    shutil.copyfile(trained["ck"], ck)
    rc = main(["refine-train", "--data", str(trained["ds"]), "--model", str(ck), "--out", str(tmp_path / "run"),
               "--epochs", "1", "--batch-size", "4", "--selection-cases", trained["cases"][0],
               "--device", "cpu", "--install"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "epoch 1/1" in out and "installed ->" in out
    assert find_refiner(ck) is not None
    case = _film(seed=6)
    (tmp_path / "in").mkdir()
    Image.fromarray((case.image * 255).astype(np.uint8)).save(tmp_path / "in" / "a.png")
    for flag in ("--refine", "--no-refine"):
        assert main(["predict", str(tmp_path / "in"), "--out", str(tmp_path / flag), "--model", str(ck),
                     "--device", "cpu", "--precision", "fp32", "--workers", "0", "--quiet", flag]) == 0
    on = json.loads((tmp_path / "--refine" / ".done" / "a.json").read_text())
    off = json.loads((tmp_path / "--no-refine" / ".done" / "a.json").read_text())
    assert on["options"]["refine"] == read_metadata(refiner_path(ck))["model_id"]
    assert "refine" not in off["options"]
    # the wrong data folder: a clear error
    capsys.readouterr()
    rc = main(["refine-train", "--data", str(tmp_path / "nowhere"), "--model", str(ck), "--out", str(tmp_path / "r2"),
               "--epochs", "1", "--device", "cpu"])
    assert rc != 0 and "nowhere: dataset folder not found" in capsys.readouterr().err


def test_cli_help_lists_refine_train():
    from cxrseg.cli import build_parser

    assert "refine-train" in build_parser().format_help()
