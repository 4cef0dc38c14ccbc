"""Training loop, resume, progression tracking, the ``cxrseg train`` CLI and augmentation.

Everything runs on tiny phantoms (64 px inputs) with a tiny ResNet18 U-Net on the CPU.
"""

from __future__ import annotations

import json
import socket
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cxrseg.config import MULTILABEL_DEFAULTS, ModelConfig, TrainConfig  # noqa: E402
from cxrseg.phantom import make_phantom, write_phantom_dataset  # noqa: E402
from cxrseg.regions import REGIONS  # noqa: E402
from cxrseg.training_arrays import ArrayData, sample_to_arrays  # noqa: E402

TINY = dict(encoder_name="resnet18", decoder_channels=(16, 16, 16, 16, 16), input_size=64)


@pytest.fixture(scope="module")
def arrays() -> ArrayData:
    imgs, msks = [], []
    for s in range(6):
        ph = make_phantom(s, size=128)
        i, m = sample_to_arrays(ph.image, ph.masks, REGIONS, 64)
        imgs.append(i)
        msks.append(m)
    return ArrayData(np.stack(imgs), np.stack(msks), [f"P{s:03d}" for s in range(6)], REGIONS)


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantoms")
    write_phantom_dataset(root, 6, seed=0, size=128)
    return root


def _run(events):
    evs = list(events)
    assert evs[-1]["kind"] == "done"
    return evs


def _cli(monkeypatch, argv):
    from cxrseg import cli

    monkeypatch.setattr(sys, "argv", ["cxrseg"] + argv)
    return cli.main(argv)


# ------------------------------------------------- the study's per-region table


def test_study_per_region_defaults():
    """The JSRT/SCR U-Net study's per-region table: region | optimiser | batch | learning rate (BCE + Jaccard loss,
    constant learning rate)."""
    study = {
        "heart": ("sgd", 1, 0.07879),
        "left_clavicle": ("sgd", 1, 0.10000),
        "left_lung": ("sgd", 1, 0.00358),
        "right_clavicle": ("rmsprop", 1, 0.00035),
        "right_lung": ("sgd", 1, 0.00139),
    }
    for region, (opt, bs, lr) in study.items():
        tc = TrainConfig.for_regions(region)
        assert (tc.optimizer, tc.batch_size) == (opt, bs), region
        assert tc.lr == pytest.approx(lr), region
        assert tc.scheduler == "none"
        assert tc.bce_weight == 1.0 and tc.jaccard_weight == 1.0
    heart = TrainConfig.for_regions("heart")
    assert (heart.optimizer, heart.batch_size, heart.lr) == ("sgd", 1, pytest.approx(0.07879))
    # other spellings; overrides win, None overrides do not
    assert TrainConfig.for_regions("Heart", lr=None).lr == pytest.approx(0.07879)
    assert TrainConfig.for_regions(["heart"], lr=0.01).lr == 0.01
    multi = TrainConfig.for_regions("all")
    assert (multi.optimizer, multi.batch_size, multi.lr) == (
        MULTILABEL_DEFAULTS["optimizer"],
        MULTILABEL_DEFAULTS["batch_size"],
        MULTILABEL_DEFAULTS["lr"],
    )


# ----------------------------------------------------------------------------- batching


def test_batching_merges_a_last_single_sample_and_shards_evenly():
    from cxrseg.train import _Batching

    for n, bs in ((3, 2), (5, 2), (4, 2), (1, 4), (7, 3)):
        batches = _Batching(n, bs, 1, 1, 0).epoch(1, 0)
        assert sorted(i for b in batches for i in b) == list(range(n))
        assert all(len(b) > 1 for b in batches) or n == 1
    # two ranks: equal numbers of steps, disjoint samples
    r0 = _Batching(7, 2, 1, 2, 0).epoch(3, 0)
    r1 = _Batching(7, 2, 1, 2, 1).epoch(3, 0)
    assert len(r0) == len(r1)
    assert not set(i for b in r0 for i in b) & set(i for b in r1 for i in b)


# ----------------------------------------------------------------------------- training


def test_training_lowers_the_loss(arrays, tmp_path):
    from cxrseg.train import train_iter

    mc = ModelConfig(**TINY)
    tc = TrainConfig(
        epochs=4,
        batch_size=2,
        optimizer="adamw",
        lr=1e-2,
        scheduler="none",
        aug_strength=0,
        precision="fp32",
        channels_last=False,
        seed=0,
    )
    evs = _run(
        train_iter(
            mc, tc, arrays.subset(range(4)), arrays.subset([4, 5]), tmp_path / "run", device="cpu"
        )
    )
    losses = [e["loss"] for e in evs if e["kind"] == "epoch"]
    assert len(losses) == 4
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.85 * losses[0], losses
    res = evs[-1]["result"]
    assert res.best_path is not None and res.best_path.is_file()
    assert len(res.history) == 4 and set(res.history[0]["val_iou"]) == set(REGIONS) | {"mean"}
    steps = [e for e in evs if e["kind"] == "step"]
    assert len(steps) == 4 * 2


def test_resume_continues_at_the_next_epoch(arrays, tmp_path):
    """Interrupt a run after epoch 2 of 3, resume it: the history is continued and the
    third epoch matches an uninterrupted run (same one-cycle schedule and augmentation)."""
    from cxrseg.train import train_iter

    mc = ModelConfig(**TINY)
    tc = TrainConfig(
        epochs=3,
        batch_size=2,
        optimizer="adamw",
        lr=3e-3,
        scheduler="onecycle",
        aug_strength=1.0,
        precision="fp32",
        channels_last=False,
        seed=1,
    )
    train, val = arrays.subset(range(4)), arrays.subset([4, 5])

    full = _run(train_iter(mc, tc, train, val, tmp_path / "full", device="cpu"))[-1]["result"]

    gen = train_iter(mc, tc, train, val, tmp_path / "cut", device="cpu")
    for ev in gen:
        if ev["kind"] == "epoch" and ev["epoch"] == 2:
            break
    gen.close()  # "crash" after epoch 2 was saved
    before = json.loads((tmp_path / "cut" / "history.json").read_text())
    assert [h["epoch"] for h in before] == [1, 2]

    evs = _run(train_iter(mc, tc, train, val, tmp_path / "cut", device="cpu", resume=True))
    assert evs[0]["kind"] == "start" and evs[0]["start_epoch"] == 3
    assert {e["epoch"] for e in evs if e["kind"] in ("step", "epoch")} == {3}
    hist = evs[-1]["result"].history
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    assert hist[:2] == before
    for a, b in zip(hist, full.history, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6)
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-6)
    from safetensors.torch import load_file

    wa = load_file(str(tmp_path / "cut" / "last.safetensors"))
    wb = load_file(str(tmp_path / "full" / "last.safetensors"))
    assert max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa) < 1e-4

    # resuming with more epochs than planned: the one-cycle schedule is re-laid, not overrun
    tc4 = TrainConfig(**{**tc.__dict__, "epochs": 4})
    evs = _run(train_iter(mc, tc4, train, val, tmp_path / "cut", device="cpu", resume=True))
    assert [h["epoch"] for h in evs[-1]["result"].history] == [1, 2, 3, 4]
    assert all(np.isfinite(e["lr"]) and e["lr"] > 0 for e in evs if e["kind"] == "step")


def test_track_case_unknown_raises(arrays, tmp_path):
    from cxrseg.train import train_iter

    tc = TrainConfig(epochs=1, batch_size=2, precision="fp32", aug_strength=0)
    with pytest.raises(KeyError, match="NOPE"):
        list(
            train_iter(
                ModelConfig(**TINY),
                tc,
                arrays.subset(range(4)),
                None,
                tmp_path / "r",
                device="cpu",
                track_case="NOPE",
            )
        )


def test_per_region_model_has_one_channel(arrays, tmp_path):
    from cxrseg.model import load_checkpoint
    from cxrseg.train import train_iter

    j = REGIONS.index("heart")
    heart = ArrayData(arrays.images, arrays.masks[:, [j]], arrays.case_ids, ("heart",))
    mc = ModelConfig(regions="heart", **TINY)
    assert mc.mode == "per-region"
    tc = TrainConfig.for_regions("heart", epochs=1, lr=1e-3, precision="fp32", aug_strength=0)
    res = _run(
        train_iter(
            mc, tc, heart.subset(range(4)), heart.subset([4, 5]), tmp_path / "h", device="cpu"
        )
    )[-1]
    ck = load_checkpoint(res["result"].best_path)
    assert ck.config.regions == ("heart",)
    with torch.inference_mode():
        assert ck.model(torch.zeros(1, 3, 64, 64)).shape == (1, 1, 64, 64)
    assert set(res["result"].history[0]["val_iou"]) == {"heart", "mean"}
    # a 5-channel data set cannot train a one-channel model
    with pytest.raises(ValueError, match="regions"):
        list(train_iter(mc, tc, arrays, None, tmp_path / "x", device="cpu"))


# ----------------------------------------------------------------------------- CLI


def test_cli_train_end_to_end_with_track_case(phantom_root, tmp_path, monkeypatch, capsys):
    from PIL import Image

    from cxrseg.model import read_metadata

    out = tmp_path / "run"
    rc = _cli(
        monkeypatch,
        [
            "train",
            "--data",
            str(phantom_root),
            "--out",
            str(out),
            "--encoder",
            "resnet18",
            "--encoder-weights",
            "none",
            "--input-size",
            "64",
            "--epochs",
            "2",
            "--batch-size",
            "2",
            "--precision",
            "fp32",
            "--device",
            "cpu",
            "--val-fraction",
            "0.34",
            "--track-case",
            "PHANTOM002",
            "--quiet",
        ],
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "best validation mean IoU" in printed
    for name in (
        "best.safetensors",
        "last.safetensors",
        "last_state.pt",
        "history.json",
        "split.json",
        "progression.npz",
        "progression.png",
    ):
        assert (out / name).is_file(), name
    split = json.loads((out / "split.json").read_text())
    assert len(split["val"]) == 2 and not set(split["val"]) & set(split["train"])
    meta = read_metadata(out / "best.safetensors")
    assert meta["val_cases"] == split["val"]
    assert meta["config"]["regions"] == list(REGIONS)
    assert meta["data_fingerprint"]
    with np.load(out / "progression.npz") as z:
        assert z["probs"].shape == (2, 5, 64, 64)  # one map stack per epoch
        assert list(z["epochs"]) == [1, 2]
        assert str(z["case_id"]) == "PHANTOM002"
        assert 0 <= z["probs"].min() and z["probs"].max() <= 1
    with Image.open(out / "progression.png") as im:
        assert im.size[0] >= 2 * 64
    assert len(json.loads((out / "history.json").read_text())) == 2

    # --resume with more epochs appends one map to the progression
    rc = _cli(
        monkeypatch,
        [
            "train",
            "--data",
            str(phantom_root),
            "--out",
            str(out),
            "--encoder",
            "resnet18",
            "--encoder-weights",
            "none",
            "--input-size",
            "64",
            "--epochs",
            "3",
            "--batch-size",
            "2",
            "--precision",
            "fp32",
            "--device",
            "cpu",
            "--val-fraction",
            "0.34",
            "--track-case",
            "PHANTOM002",
            "--quiet",
            "--resume",
        ],
    )
    assert rc == 0
    with np.load(out / "progression.npz") as z:
        assert z["probs"].shape[0] == 3
    assert [h["epoch"] for h in json.loads((out / "history.json").read_text())] == [1, 2, 3]


def test_cli_per_region_trains_one_channel_models(phantom_root, tmp_path, monkeypatch):
    from cxrseg.model import load_checkpoint

    out = tmp_path / "per"
    rc = _cli(
        monkeypatch,
        [
            "train",
            "--data",
            str(phantom_root),
            "--out",
            str(out),
            "--encoder",
            "resnet18",
            "--encoder-weights",
            "none",
            "--input-size",
            "64",
            "--epochs",
            "1",
            "--lr",
            "1e-3",
            "--precision",
            "fp32",
            "--device",
            "cpu",
            "--per-region",
            "--regions",
            "heart,left_lung",
            "--quiet",
        ],
    )
    assert rc == 0
    for region in ("heart", "left_lung"):
        ck = load_checkpoint(out / region)
        assert ck.config.regions == (region,)
        # the study's optimiser and batch size for the region, with the given learning rate
        tc = ck.metadata["train_config"]
        assert (tc["optimizer"], tc["batch_size"], tc["lr"]) == ("sgd", 1, 1e-3)
    assert not (out / "right_lung").exists()


def test_cli_imagenet_offline_fails_fast_with_help(phantom_root, tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants as hfc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"), raising=False)

    def no_network(*a, **k):
        raise AssertionError("the network was touched")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    out = tmp_path / "run"
    rc = _cli(
        monkeypatch,
        [
            "train",
            "--data",
            str(phantom_root),
            "--out",
            str(out),
            "--encoder",
            "resnet18",
            "--encoder-weights",
            "imagenet",
            "--input-size",
            "64",
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--quiet",
        ],
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "not available offline" in err
    assert "--encoder-weights none" in err and "--encoder-weights PATH" in err
    # it failed before reading the data or creating the output
    assert not (tmp_path / "cache").exists()
    assert not out.exists()


# ----------------------------------------------------------------------- augmentation


def test_augmentation_never_flips_left_and_right():
    from cxrseg.transforms import augment_batch

    regions = ("left_lung", "right_lung", "left_clavicle", "right_clavicle")
    imgs, msks = [], []
    for s in range(4):
        ph = make_phantom(s, size=128)
        i, m = sample_to_arrays(ph.image, ph.masks, regions, 64)
        imgs.append(i)
        msks.append(m)
    images = torch.from_numpy(np.stack(imgs).astype(np.float32)).unsqueeze(1)
    masks = torch.from_numpy(np.stack(msks).astype(np.float32))
    cols = torch.arange(64, dtype=torch.float32)

    def centroid_col(m):  # (B, S, S) -> (B,)
        return (m.sum(1) * cols).sum(-1) / m.sum((1, 2)).clamp_min(1e-6)

    # patient's left = image's right, before augmentation
    assert (centroid_col(masks[:, 0]) > 32).all() and (centroid_col(masks[:, 1]) < 32).all()
    changed = 0
    for seed in range(60):
        g = torch.Generator().manual_seed(seed)
        img, msk = augment_batch(images, masks, strength=1.0, generator=g)
        assert img.shape == images.shape and msk.shape == masks.shape
        assert 0 <= float(img.min()) and float(img.max()) <= 1
        left, right = centroid_col(msk[:, 0]), centroid_col(msk[:, 1])
        assert (left > 32).all(), (seed, left)
        assert (right < 32).all(), (seed, right)
        assert (
            centroid_col(msk[:, 2]) > centroid_col(msk[:, 3])
        ).all()  # clavicles keep their sides
        # the masks moved with the image but kept (roughly) their area: no mirroring, no loss
        ratio = msk[:, :2].sum((2, 3)) / masks[:, :2].sum((2, 3))
        assert ((ratio > 0.6) & (ratio < 1.6)).all()
        changed += int(not torch.allclose(msk, masks))
    assert changed == 60
    # strength 0 is the identity
    img0, msk0 = augment_batch(images, masks, strength=0.0)
    assert torch.equal(img0, images) and torch.equal(msk0, masks)
