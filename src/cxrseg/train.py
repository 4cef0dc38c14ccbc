"""Training: one loop for per-region and multi-label U-Nets, fine-tuning included.

:func:`train_iter` is a generator of progress events (dicts), so a napari worker can
drive it, show progress and stop it between steps; :func:`train` runs it to the end
with a tqdm bar. Under ``torchrun --nproc_per_node=N`` the loop runs distributed (DDP:
nccl on GPUs, gloo on CPUs); only rank 0 writes files.

Files written to ``out_dir``:

* ``last.safetensors`` every epoch and ``last_state.pt`` (optimiser etc., for ``--resume``)
* ``best.safetensors`` whenever the validation mean IoU improves
* ``history.json`` (per-epoch loss, learning rate, validation IoU per region, time)
* ``split.json`` (training and validation case ids)
* ``progression.npz`` + ``progression.png`` with ``track_case``: the case's sigmoid maps
  after every epoch.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import ModelConfig, TrainConfig, to_dict
from .training_arrays import ArrayData

Event = dict[str, Any]


@dataclass
class TrainResult:
    out_dir: Path
    best_path: Path | None
    last_path: Path | None
    history: list[dict] = field(default_factory=list)
    best_val_iou: float = float("nan")
    best_epoch: int = 0
    stopped_early: bool = False
    cancelled: bool = False


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _dist_info():
    ws = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return ws, rank, local


def make_optimizer(params, cfg: TrainConfig):
    import torch

    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, momentum=0.0, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(opt, cfg: TrainConfig, total_steps: int):
    import torch

    if cfg.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=cfg.lr, total_steps=max(total_steps, 1), pct_start=0.15, div_factor=20, final_div_factor=200
        )
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total_steps, 1), eta_min=cfg.lr * 0.01)
    return None


def _broadcast_buffers(model) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank."""
    import torch.distributed as dist

    for b in model.buffers():
        dist.broadcast(b.data, src=0)


def _rank0_flag(flag: bool, device) -> bool:
    """Rank 0's value of ``flag`` on every rank."""
    import torch
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def _restore_scheduler(sched, saved: dict) -> None:
    """Load a saved LR-scheduler state; when the schedule's length changed (resuming
    with more or fewer epochs), rebuild it at the new length and fast-forward it by the
    steps already taken instead (loading would make OneCycleLR overrun its total)."""
    import warnings

    current = sched.state_dict()
    keys = [k for k in ("total_steps", "T_max") if k in current]
    if all(saved.get(k) == current[k] for k in keys):
        sched.load_state_dict(saved)
        return
    done = int(saved.get("last_epoch", 0))
    limit = int(current.get("total_steps", done))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(min(done, limit)):
            sched.step()


@dataclass
class _Batching:
    n: int
    batch_size: int
    multiplier: int
    world: int
    rank: int
    sampler: Callable[[int, np.random.Generator], list[int]] | None = None

    def epoch(self, epoch: int, seed: int) -> list[list[int]]:
        rng = np.random.default_rng(seed * 1000 + epoch)
        if self.sampler is not None:
            order = list(self.sampler(epoch, rng))
        else:
            order = [int(i) for _ in range(self.multiplier) for i in rng.permutation(self.n)]
        # equal share per rank, in lockstep
        per_rank = len(order) // self.world if self.world > 1 else len(order)
        mine = order[self.rank :: self.world][:per_rank] if self.world > 1 else order
        bs = self.batch_size
        batches = [mine[i : i + bs] for i in range(0, len(mine), bs)]
        # a final batch of 1 breaks BatchNorm in train mode: merge it into the previous one
        if len(batches) > 1 and len(batches[-1]) == 1 and bs > 1:
            last = batches.pop()
            batches[-1] = batches[-1] + last
        return batches

    def steps_per_epoch(self) -> int:
        return len(self.epoch(0, 0))


def _to_batch(data: ArrayData, idx, device, channels_last: bool):
    import torch

    img = torch.from_numpy(data.images[idx].astype(np.float32)).unsqueeze(1).to(device)
    msk = torch.from_numpy(data.masks[idx].astype(np.float32)).to(device)
    return img, msk


def predict_arrays(model, images: np.ndarray, config: ModelConfig, device, precision: str, *, batch_size=8,
                   channels_last=True) -> np.ndarray:
    """Sigmoid maps ``(N, R, S, S)`` float32 for pre-processed ``(N, S, S)`` images."""
    import torch

    from .device import autocast
    from .transforms import normalize

    out = []
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(np.asarray(images[i : i + batch_size], dtype=np.float32)).unsqueeze(1).to(device)
            x = normalize(x, config.mean, config.std)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, precision):
                y = model(x)
            out.append(torch.sigmoid(y.float()).cpu().numpy())
    if was_training:
        model.train()
    return np.concatenate(out) if out else np.zeros((0, len(config.regions)) + images.shape[1:], np.float32)


def validate(model, val: ArrayData, config: ModelConfig, device, precision: str, *, channels_last=True) -> dict:
    """Per-region mean IoU on ``val`` at the training resolution (thresholds from config)."""
    from .metrics import batch_jaccard

    if len(val) == 0:
        return {}
    prob = predict_arrays(model, val.images, config, device, precision, channels_last=channels_last)
    th = np.array([config.thresholds[r] for r in config.regions]).reshape(1, -1, 1, 1)
    iou = batch_jaccard(prob >= th, val.masks >= 0.5)  # (N, R)
    res = {r: float(iou[:, j].mean()) for j, r in enumerate(config.regions)}
    res["mean"] = float(np.mean([res[r] for r in config.regions]))
    res["per_case"] = {cid: [float(v) for v in iou[i]] for i, cid in enumerate(val.case_ids)}
    return res


def _montage(stack: np.ndarray, image: np.ndarray, regions, path: Path, epochs: list[int]) -> None:
    """PNG grid: one tile per epoch, the case's image with each region's sigmoid map
    blended in its colour."""
    from PIL import Image, ImageDraw

    from .regions import COLORS

    e, r, s, _ = stack.shape
    cols = min(e, 8)
    rows = math.ceil(e / cols)
    canvas = np.zeros((rows * s, cols * s, 3), np.float32)
    base = np.asarray(image, np.float32)
    for k in range(e):
        tile = np.repeat(base[..., None], 3, axis=2) * 0.6
        for j, reg in enumerate(regions):
            c = np.array(COLORS[reg][:3], np.float32)
            a = stack[k, j].astype(np.float32)[..., None] * 0.7
            tile = tile * (1 - a) + c * a
        rr, cc = divmod(k, cols)
        canvas[rr * s : (rr + 1) * s, cc * s : (cc + 1) * s] = tile
    im = Image.fromarray((np.clip(canvas, 0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for k in range(e):
        rr, cc = divmod(k, cols)
        draw.text((cc * s + 4, rr * s + 2), f"epoch {epochs[k]}", fill=(255, 255, 255))
    tmp = path.with_name(path.name + ".tmp.png")
    im.save(tmp)
    os.replace(tmp, path)


def train_iter(
    model_config: ModelConfig,
    train_config: TrainConfig,
    train_data: ArrayData,
    val_data: ArrayData | None,
    out_dir: str | os.PathLike,
    *,
    device: str = "auto",
    encoder_weights=None,
    init_checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    track_case: str | None = None,
    metadata: dict | None = None,
    sampler: Callable[[int, np.random.Generator], list[int]] | None = None,
    max_steps: int | None = None,
) -> Iterator[Event]:
    """Train and yield progress events; the last event has ``kind == "done"`` and a
    ``result`` (:class:`TrainResult`).

    Events: ``{"kind": "start", "epochs", "steps_per_epoch"}``, ``{"kind": "step", "epoch",
    "step", "steps", "loss", "lr"}``, ``{"kind": "epoch", "epoch", "loss", "val", "best",
    "seconds"}``, ``{"kind": "done", "result"}``.
    """
    run = _TrainRun(model_config, train_config, train_data, val_data, out_dir, device=device, sampler=sampler)
    run.build_model(encoder_weights, init_checkpoint)
    run.build_optimisation()
    run.restore(resume)
    run.wrap_distributed()
    run.find_track_case(track_case)
    yield run.start(metadata)
    for epoch in range(run.start_epoch, train_config.epochs + 1):
        t0 = time.perf_counter()
        losses = yield from run.train_epoch(epoch, max_steps)
        rec, val, improved = run.validate_epoch(epoch, losses, t0)
        if run.is_main:
            run.save_epoch(epoch, rec, val, improved)
        yield {"kind": "epoch", "epoch": epoch, "epochs": train_config.epochs, "loss": rec["loss"],
               "val": rec["val_iou"], "best": run.best, "best_epoch": run.best_epoch, "improved": improved,
               "seconds": rec["seconds"]}
        if max_steps is not None and run.total_steps_done >= max_steps:
            break
        if run.should_stop(epoch):
            run.stopped_early = True
            break
    yield run.finish()


class _TrainRun:
    """The state of one :func:`train_iter` run: device, model, optimiser, history and the
    best epoch so far, with one method per stage of the loop."""

    def __init__(self, model_config: ModelConfig, train_config: TrainConfig, train_data: ArrayData,
                 val_data: ArrayData | None, out_dir, *, device: str, sampler) -> None:
        import torch

        from .device import resolve_precision, select_device, tune_allocator

        tune_allocator()
        self.model_config, self.train_config = model_config, train_config
        self.train_data, self.val_data, self.sampler = train_data, val_data, sampler
        self.out_dir = Path(out_dir)
        world, rank, local_rank = _dist_info()
        self.world, self.rank = world, rank
        self.distributed = distributed = world > 1
        if distributed:
            import torch.distributed as dist

            if not dist.is_initialized():
                backend = "nccl" if torch.cuda.is_available() and device != "cpu" else "gloo"
                dist.init_process_group(backend=backend)
            use_cuda = torch.cuda.is_available() and device != "cpu"
            dev = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")
        else:
            dev = select_device(device)
        self.dev = dev
        self.is_main = rank == 0
        precision = resolve_precision(train_config.precision, dev)
        if precision == "fp16" and dev.type != "cuda":
            precision = "fp32"
        self.precision = precision
        seed_everything(train_config.seed + rank)
        if tuple(train_data.regions) != tuple(model_config.regions):
            raise ValueError(f"training data regions {train_data.regions} != model regions {model_config.regions}")

    def build_model(self, encoder_weights, init_checkpoint) -> None:
        """The model: the initial checkpoint's, or a new one."""
        import torch

        from .model import build_model, load_checkpoint

        model_config = self.model_config
        self.parent_id = None
        if init_checkpoint is not None:
            ck = load_checkpoint(init_checkpoint, device="cpu")
            if tuple(ck.config.regions) != tuple(model_config.regions):
                raise ValueError(
                    f"checkpoint {init_checkpoint} predicts {ck.config.regions}, not {model_config.regions}"
                )
            model = ck.model.train()
            self.parent_id = ck.model_id
        else:
            model = build_model(model_config, encoder_weights=encoder_weights)
        model.to(self.dev)
        if self.train_config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = self.ddp_model = model

    def build_optimisation(self) -> None:
        """Optimiser, batches, schedule, loss and gradient scaler."""
        import torch

        from .losses import BCEJaccardLoss

        train_config = self.train_config
        self.opt = make_optimizer(self.model.parameters(), train_config)
        self.batching = _Batching(len(self.train_data), train_config.batch_size, train_config.aug_multiplier,
                                  self.world, self.rank, self.sampler)
        self.steps = self.batching.steps_per_epoch()
        self.sched = make_scheduler(self.opt, train_config, self.steps * train_config.epochs)
        self.loss_fn = BCEJaccardLoss(train_config.bce_weight, train_config.jaccard_weight)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None

    def restore(self, resume: bool) -> None:
        """A fresh history, or with ``resume`` the state of the last finished epoch in ``out_dir``."""
        out_dir = self.out_dir
        self.history: list[dict] = []
        self.best = -1.0
        self.best_epoch = 0
        self.start_epoch = 1
        self.track_stack: list[np.ndarray] = []
        self.stopped_early = False
        self.total_steps_done = 0
        if self.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
        if resume and (out_dir / "last_state.pt").is_file() and (out_dir / "last.safetensors").is_file():
            from safetensors.torch import load_file

            from .model import load_training_state

            st = load_training_state(out_dir / "last_state.pt")
            w = load_file(str(out_dir / "last.safetensors"))
            self.model.load_state_dict({k: v.to(self.dev) for k, v in w.items()})
            self.opt.load_state_dict(st["optimizer"])
            if self.sched is not None and st.get("scheduler"):
                _restore_scheduler(self.sched, st["scheduler"])
            start_epoch = self.start_epoch = int(st["epoch"]) + 1
            self.best = float(st.get("best", -1.0))
            self.best_epoch = int(st.get("best_epoch", 0))
            history = json.loads((out_dir / "history.json").read_text()) if (out_dir / "history.json").is_file() else []
            # a run interrupted between writing the state and the history must not repeat epochs
            self.history = [h for h in history if int(h.get("epoch", 0)) < start_epoch]
            if (out_dir / "progression.npz").is_file():
                with np.load(out_dir / "progression.npz") as z:
                    self.track_stack = list(z["probs"])[: start_epoch - 1]
            self.parent_id = st.get("parent_id", self.parent_id)

    def wrap_distributed(self) -> None:
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            dev = self.dev
            self.ddp_model = DDP(self.model, device_ids=[dev.index] if dev.type == "cuda" else None)

    def find_track_case(self, track_case: str | None) -> None:
        """The pre-processed image of the case whose maps are kept after every epoch."""
        self.track_case = track_case
        self.track_img = None
        if track_case:
            for src in (self.val_data, self.train_data):
                if src is not None and track_case in src.case_ids:
                    self.track_img = src.images[src.index_of(track_case)]
                    break
            if self.track_img is None:
                raise KeyError(f"--track-case {track_case!r}: not among the training or validation cases")

    def start(self, metadata: dict | None) -> Event:
        """Write the split; return the ``start`` event."""
        import torch

        train_config, train_data, val_data = self.train_config, self.train_data, self.val_data
        base_meta = self.base_meta = dict(metadata or {})
        base_meta.update(
            {
                "train_config": to_dict(train_config),
                "train_cases": list(train_data.case_ids) if self.sampler is None else sorted(set(train_data.case_ids)),
                "val_cases": list(val_data.case_ids) if val_data is not None else [],
                "parent_id": self.parent_id,
                "precision": self.precision,
            }
        )
        if self.is_main:
            (self.out_dir / "split.json").write_text(
                json.dumps({"train": base_meta["train_cases"], "val": base_meta["val_cases"]}, indent=1)
            )
        self.gen = torch.Generator().manual_seed(train_config.seed * 7919 + self.rank)
        return {"kind": "start", "epochs": train_config.epochs, "start_epoch": self.start_epoch,
                "steps_per_epoch": self.steps, "device": str(self.dev), "precision": self.precision,
                "world_size": self.world}

    def train_epoch(self, epoch: int, max_steps: int | None) -> Iterator[Event]:
        """One epoch of optimiser steps; yield a ``step`` event after each; return the losses."""
        import torch

        from .device import autocast
        from .transforms import augment_batch, normalize

        train_config, model_config, dev, opt = self.train_config, self.model_config, self.dev, self.opt
        self.gen.manual_seed(train_config.seed * 7919 + self.rank + epoch * 104729)
        self.ddp_model.train()
        losses = []
        batches = self.batching.epoch(epoch, train_config.seed)
        for step, idx in enumerate(batches, 1):
            img, msk = _to_batch(self.train_data, idx, dev, train_config.channels_last)
            img, msk = augment_batch(img, msk, strength=train_config.aug_strength, generator=self.gen)
            x = normalize(img, model_config.mean, model_config.std)
            if train_config.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(dev, self.precision):
                logits = self.ddp_model(x)
            loss = self.loss_fn(logits, msk)
            opt.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.step(opt)
                self.scaler.update()
            else:
                loss.backward()
                opt.step()
            if self.sched is not None:
                self.sched.step()
            lv = float(loss.detach())
            if not math.isfinite(lv):
                raise FloatingPointError(
                    f"training diverged at epoch {epoch} step {step} (loss {lv}); lower the learning rate"
                )
            losses.append(lv)
            self.total_steps_done += 1
            yield {"kind": "step", "epoch": epoch, "step": step, "steps": len(batches), "loss": lv,
                   "lr": opt.param_groups[0]["lr"]}
            if max_steps is not None and self.total_steps_done >= max_steps:
                break
        return losses

    def validate_epoch(self, epoch: int, losses: list[float], t0: float) -> tuple[dict, dict, bool]:
        """Validate, update the best epoch and the history (and the tracked case's maps);
        return the epoch's record, its validation and whether it improved."""
        model, model_config, dev, precision = self.model, self.model_config, self.dev, self.precision
        if self.distributed:
            # DDP syncs buffers only at the start of a forward pass, so after the last step
            # every rank has its own BatchNorm running statistics: use rank 0's everywhere,
            # or the ranks would validate (and decide early stopping) differently.
            _broadcast_buffers(model)
        val_data = self.val_data
        val = validate(model, val_data, model_config, dev, precision, channels_last=self.train_config.channels_last) \
            if val_data is not None and len(val_data) else {}
        score = val.get("mean", -float(np.mean(losses)))
        improved = score > self.best
        if improved:
            self.best, self.best_epoch = score, epoch
        rec = {
            "epoch": epoch,
            "loss": float(np.mean(losses)),
            "lr": self.opt.param_groups[0]["lr"],
            "val_iou": {k: v for k, v in val.items() if k != "per_case"},
            "seconds": time.perf_counter() - t0,
        }
        self.history.append(rec)
        if self.track_img is not None:
            track_prob = predict_arrays(model, self.track_img[None], model_config, dev, precision)[0]
            self.track_stack.append(track_prob.astype(np.float16))
        return rec, val, improved

    def save_epoch(self, epoch: int, rec: dict, val: dict, improved: bool) -> None:
        """Checkpoints, training state, history and progression of an epoch (rank 0)."""
        from .model import save_checkpoint, save_training_state

        model, model_config, out_dir = self.model, self.model_config, self.out_dir
        best, best_epoch = self.best, self.best_epoch
        meta = dict(self.base_meta)
        meta["metrics"] = {"epoch": epoch, "val_iou": rec["val_iou"], "best_epoch": best_epoch,
                           "best_val_mean_iou": best if val else None}
        save_checkpoint(model, model_config, out_dir / "last.safetensors", metadata=meta)
        if improved:
            meta_best = dict(meta)
            meta_best["metrics"] = dict(meta["metrics"], best_epoch=epoch)
            if val:
                meta_best["metrics"]["val_per_case"] = val["per_case"]
            save_checkpoint(model, model_config, out_dir / "best.safetensors", metadata=meta_best)
        save_training_state(
            {"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict() if self.sched else None,
             "epoch": epoch, "best": best, "best_epoch": best_epoch, "parent_id": self.parent_id},
            out_dir / "last_state.pt",
        )
        tmp = out_dir / "history.json.tmp"
        tmp.write_text(json.dumps(self.history, indent=1))
        os.replace(tmp, out_dir / "history.json")
        track_img, track_stack = self.track_img, self.track_stack
        if track_img is not None:
            np.savez_compressed(out_dir / "progression.tmp.npz", probs=np.stack(track_stack),
                                image=track_img.astype(np.float16), epochs=np.arange(1, len(track_stack) + 1),
                                regions=np.array(model_config.regions), case_id=np.array(self.track_case))
            os.replace(out_dir / "progression.tmp.npz", out_dir / "progression.npz")
            _montage(np.stack(track_stack), track_img, model_config.regions, out_dir / "progression.png",
                     list(range(1, len(track_stack) + 1)))

    def should_stop(self, epoch: int) -> bool:
        """Early stopping, decided by rank 0 for every rank."""
        pat = self.train_config.early_stopping_patience
        stop = bool(pat and epoch - self.best_epoch >= pat)
        if self.distributed:
            stop = _rank0_flag(stop, self.dev)  # all ranks leave the loop together
        return stop

    def finish(self) -> Event:
        """Wait for every rank; return the ``done`` event."""
        out_dir = self.out_dir
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()
        result = TrainResult(
            out_dir=out_dir,
            best_path=(out_dir / "best.safetensors") if (out_dir / "best.safetensors").exists() else None,
            last_path=(out_dir / "last.safetensors") if (out_dir / "last.safetensors").exists() else None,
            history=self.history,
            best_val_iou=self.best,
            best_epoch=self.best_epoch,
            stopped_early=self.stopped_early,
        )
        return {"kind": "done", "result": result, "model": self.model}


def run_events(events: Iterator[Event], *, desc: str = "train", quiet: bool = False) -> TrainResult:
    """Consume :func:`train_iter` events with a tqdm progress bar; return the result."""
    from tqdm.auto import tqdm

    bar = None
    result = None
    for ev in events:
        kind = ev["kind"]
        if kind == "start":
            total = (ev["epochs"] - ev["start_epoch"] + 1) * ev["steps_per_epoch"]
            bar = tqdm(total=total, desc=desc, disable=quiet, dynamic_ncols=True)
            if not quiet:
                tqdm.write(f"{desc}: device {ev['device']}, precision {ev['precision']}, world size {ev['world_size']}")
        elif kind == "step" and bar is not None:
            bar.update(1)
            bar.set_postfix(epoch=ev["epoch"], loss=f"{ev['loss']:.4f}")
        elif kind == "epoch" and not quiet:
            v = ev["val"]
            vs = " ".join(f"{k}={x:.4f}" for k, x in v.items()) if v else "-"
            tqdm.write(f"epoch {ev['epoch']}/{ev['epochs']} loss {ev['loss']:.4f} val IoU {vs} "
                       f"({ev['seconds']:.0f}s){' *' if ev['improved'] else ''}")
        elif kind == "done":
            result = ev["result"]
    if bar is not None:
        bar.close()
    return result


def train_on_dataset(
    data_root,
    out_dir,
    *,
    regions=None,
    model_config: ModelConfig | None = None,
    train_config: TrainConfig | None = None,
    val_cases: list[str] | None = None,
    case_filter: Callable[[str], bool] | None = None,
    quiet: bool = False,
    progress: bool = True,
    **kwargs,
) -> TrainResult:
    """Index ``data_root``, split (or use ``val_cases``), cache and train; see :func:`train_iter`."""
    from .dataset import DatasetIndex
    from .training_arrays import build_arrays, data_fingerprint, split_cases

    model_config = model_config or ModelConfig(regions=regions or ModelConfig().regions)
    train_config = train_config or TrainConfig.for_regions(model_config.regions)
    index = DatasetIndex(data_root)
    cases = index.with_regions(model_config.regions)
    if case_filter is not None:
        cases = [c for c in cases if case_filter(c.case_id)]
    if not cases:
        raise ValueError(f"{data_root}: no case has masks for {', '.join(model_config.regions)}")
    ids = [c.case_id for c in cases]
    if val_cases is None:
        tr_ids, va_ids = split_cases(ids, train_config.val_fraction, train_config.seed)
    else:
        unknown = sorted(set(val_cases) - set(ids))
        if unknown:
            raise KeyError(f"validation cases not found in {data_root}: {unknown[:5]}")
        va_ids = sorted(val_cases)
        tr_ids = [i for i in ids if i not in set(va_ids)]
    by_id = {c.case_id: c for c in cases}
    arrays = build_arrays([by_id[i] for i in tr_ids + va_ids], model_config.regions, model_config.input_size)
    train_data = arrays.subset(range(len(tr_ids)))
    val_data = arrays.subset(range(len(tr_ids), len(tr_ids) + len(va_ids)))
    meta = dict(kwargs.pop("metadata", None) or {})
    meta.setdefault("data_fingerprint", data_fingerprint(cases, model_config.regions))
    meta.setdefault("data_root", str(Path(data_root).resolve()))
    events = train_iter(model_config, train_config, train_data, val_data, out_dir, metadata=meta, **kwargs)
    return run_events(events, quiet=quiet or not progress)
