"""Distributed training: two CPU processes (gloo) end with identical weights.

Runs ``python -m torch.distributed.run --nproc_per_node=2`` on a small script that calls
:func:`cxrseg.train.train_iter` on phantoms and saves each rank's final state dict.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    import torch
    torch.set_num_threads(1)
    from safetensors.torch import save_file
    from cxrseg.config import ModelConfig, TrainConfig
    from cxrseg.training_arrays import ArrayData, sample_to_arrays
    from cxrseg.phantom import make_phantom
    from cxrseg.train import train_iter

    out = sys.argv[1]
    regions = ("heart", "left_lung", "right_lung")
    imgs, msks = [], []
    for s in range(6):
        ph = make_phantom(s, size=128)
        i, m = sample_to_arrays(ph.image, ph.masks, regions, 64)
        imgs.append(i)
        msks.append(m)
    data = ArrayData(np.stack(imgs), np.stack(msks), [f"P{s}" for s in range(6)], regions)
    mc = ModelConfig(encoder_name="resnet18", decoder_channels=(16, 16, 16, 16, 16), input_size=64,
                     regions=regions)
    tc = TrainConfig(epochs=2, batch_size=2, optimizer="adam", lr=1e-3, precision="fp32",
                     aug_strength=1.0, channels_last=False, early_stopping_patience=1)
    rank = int(os.environ["RANK"])
    model, steps, start = None, [], None
    train, val = data.subset(range(4)), data.subset([4, 5])
    for ev in train_iter(mc, tc, train, val, os.path.join(out, "run"), device="cpu"):
        if ev["kind"] == "start":
            start = {k: ev[k] for k in ("world_size", "steps_per_epoch", "device")}
        elif ev["kind"] == "step":
            steps.append(ev["loss"])
        elif ev["kind"] == "done":
            model = ev["model"]
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(out, f"rank{rank}.safetensors"))
    with open(os.path.join(out, f"rank{rank}.json"), "w") as fh:
        json.dump({"start": start, "losses": steps}, fh)
    import torch.distributed as dist
    if dist.is_initialized():
        dist.destroy_process_group()
    """
)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_cpu_ranks_end_with_identical_weights(tmp_path):
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    from safetensors.torch import load_file

    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        CXRSEG_CACHE=str(tmp_path / "cache"),
        CUDA_VISIBLE_DEVICES="",
        CXRSEG_PRECISION="fp32",
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        str(script),
        str(out),
    ]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    r0 = load_file(str(out / "rank0.safetensors"))
    r1 = load_file(str(out / "rank1.safetensors"))
    assert r0.keys() == r1.keys()
    differ = [k for k in r0 if not torch.equal(r0[k], r1[k])]
    assert not differ, f"ranks disagree on {differ[:5]}"  # parameters and BatchNorm buffers

    info = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(i["start"]["world_size"] == 2 and i["start"]["device"] == "cpu" for i in info)
    # each rank trained on its own half of the 4 training images: one step per epoch
    assert info[0]["start"]["steps_per_epoch"] == 1
    assert len(info[0]["losses"]) == len(info[1]["losses"]) == 2
    assert info[0]["losses"] != info[1]["losses"]

    # only rank 0 wrote the run folder, and its last checkpoint holds the final weights
    run = out / "run"
    assert (run / "last.safetensors").is_file() and (run / "history.json").is_file()
    last = load_file(str(run / "last.safetensors"))
    assert all(torch.equal(last[k], r0[k]) for k in r0)
