"""``cxrseg bench``: how fast the prediction engine is, measured side by side in one run.

Sections (all measured in the same process, on the same device, one after the other):

1. ``models`` - all five regions of one case: the study's per-region baseline (five per-region
   U-Nets with one output each, fp32, eager, batch 1, contiguous memory) against this
   engine (one multi-label pass; batch norm folded; channels_last; fp32 and bf16), in
   ms per case, with the speed-ups.
2. ``flops`` - achieved GFLOP/s of one forward pass (FLOPs counted with
   ``torch.utils.flop_counter.FlopCounterMode``) against a square matmul of the same
   precision sized to do as many FLOPs, timed right after it.
3. ``decode`` - reading a JSRT ``.IMG`` (``read_jsrt_img``) and resizing it to the model
   input (``image_to_input``) against a bare ``numpy.fromfile`` of the same file.
4. ``folder`` - images per second of ``cxrseg predict``'s pipeline on a folder of phantom
   PNG and ``.IMG`` files, with and without DataLoader workers.
5. ``coldstart`` - a fresh ``cxrseg predict`` process on one 1024 x 1024 PNG (the first
   image of ``--folder-data ROOT`` when given): time from process start to the first mask
   written, against a fresh process that only imports torch and runs one forward pass of
   the same model (precision and layout as ``auto`` chose; with its refinement network's
   pass on two clavicle crops when the model has one); with an empty cache (first use:
   fold, check and autotune) and a warm one.
5b. ``gui`` - the napari workspace's cold start: a fresh ``cxrseg-gui --timings`` on the same
   image, from the window's first event-loop turn to the first prediction shown, against the
   same reference, interleaved; also with the model loaded in the background
   (``CXRSEG_WARM_MODEL=1``). Needs the plugin installed and a display (``xvfb-run``);
   otherwise it says why it was not measured.
6. ``throughput`` - whole processes on a folder of real-size images (synthetic 1024 x
   1024 and 2048 x 2048 PNGs, or ``--folder-data ROOT``'s images): the plain per-region
   baseline script (:mod:`cxrseg.bench_baseline`: five fp32 256 px models, batch 1, masks
   written at native size) against ``cxrseg predict`` with the default model (with and
   without its clavicle refinement) and with ``--model fast``, and each against its
   models' own forward-pass time (the refinement network's passes included).
7. ``accuracy`` (``--accuracy-data ROOT``) - whether bf16 changes the Jaccard index on
   real cases compared with fp32.
8. ``quality`` - the no-ground-truth quality estimate (``cxrseg.quality``), quick and
   full, as a ratio to a plain prediction.

The header says what ``--precision auto`` chose (:mod:`cxrseg.autotune`) and the times it
measured for the alternatives.

Timings are medians of ``--repeats`` runs after ``--warmup`` runs, with torch's thread
count as it is (``--threads`` changes it). Without ``--model`` the shipped model is used,
or a randomly initialised ResNet34 U-Net when none is installed: the timings do not
depend on the weights (the accuracy section does, and needs a trained model).
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SECTIONS = (
    "models", "flops", "decode", "folder", "coldstart", "gui", "throughput", "allocator", "accuracy",
    "quality", "refine",
)


# --------------------------------------------------------------------------- helpers


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def time_fn(fn, device, *, warmup: int, repeats: int) -> dict:
    """Run ``fn`` ``warmup`` times, then time it ``repeats`` times; seconds."""
    for _ in range(max(0, warmup)):
        fn()
    _sync(device)
    ts = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        ts.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts), "n": len(ts)}


def time_interleaved(fns: dict, device, *, warmup: int, repeats: int) -> dict:
    """Time several functions round-robin (one run of each per round), so that a change
    of machine load affects all of them alike; seconds per function."""
    for _ in range(max(0, warmup)):
        for fn in fns.values():
            fn()
    _sync(device)
    ts: dict = {k: [] for k in fns}
    for _ in range(max(1, repeats)):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            _sync(device)
            ts[k].append(time.perf_counter() - t0)
    return {
        k: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v), "n": len(v)}
        for k, v in ts.items()
    }


def count_flops(fn) -> int:
    """FLOPs of ``fn()`` as counted by ``torch.utils.flop_counter.FlopCounterMode``."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


def flop_convention() -> str:
    """``"FLOPs"`` if the counter reports 2 x multiply-accumulates (checked on a 1x1
    convolution), ``"MACs"`` if it reports one per multiply-accumulate."""
    import torch

    conv = torch.nn.Conv2d(8, 4, 1, bias=False)
    x = torch.zeros(1, 8, 5, 5)
    macs = 8 * 4 * 5 * 5
    with torch.inference_mode():
        n = count_flops(lambda: conv(x))
    if n == 2 * macs:
        return "FLOPs"
    if n == macs:
        return "MACs"
    return f"unknown ({n} for {macs} MACs)"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


class _Out:
    def __init__(self, stream=None):
        self.stream = stream or sys.stdout

    def __call__(self, msg: str = "") -> None:
        print(msg, file=self.stream, flush=True)


# --------------------------------------------------------------------------- model setup


def _prepare_model(args, tmp: Path):
    """The checkpoint to time, and a note on where it came from."""
    from .config import ModelConfig
    from .model import build_model, default_checkpoint_path, save_checkpoint

    if args.model is not None or (not args.smoke and default_checkpoint_path().is_file()):
        import shutil

        from .predict import resolve_checkpoint_path

        src = resolve_checkpoint_path(args.model)
        # a snapshot, so that a checkpoint rewritten meanwhile (a training run saving its
        # best epoch) cannot give the fp32 and bf16 runs different weights
        snap = tmp / "snapshot.safetensors"
        shutil.copyfile(src, snap)
        from .quantize import int8_path
        from .refine import find_refiner, refiner_path

        ref = find_refiner(src)
        if ref is not None:  # its clavicle refinement comes along
            shutil.copyfile(ref, refiner_path(snap))
        for a, b in ((src, snap), (ref, refiner_path(snap))):  # and their int8 calibration
            if a is not None and int8_path(a).is_file():
                shutil.copyfile(int8_path(a), int8_path(b))
        return snap, f"{'given checkpoint' if args.model is not None else 'shipped model'} {src}"
    import torch

    torch.manual_seed(0)
    if args.smoke:
        cfg = ModelConfig(
            encoder_name="resnet18", decoder_channels=(16, 16, 16, 16, 16), input_size=64
        )
        note = "tiny random resnet18 U-Net (smoke)"
    else:
        cfg = ModelConfig()
        note = (
            "random-initialised ResNet34 U-Net (no shipped model installed; "
            "timings do not depend on weights)"
        )
    path = save_checkpoint(build_model(cfg).eval(), cfg, tmp / "random.safetensors")
    return path, note


# --------------------------------------------------------------------------- sections


def _models_fns(pred32, pred_low, batch_size: int) -> dict:
    """The timed callables of section 1, by key, in their display order."""
    import dataclasses

    import torch

    from .model import build_model

    dev = pred32.device
    cfg = pred32.config
    s = cfg.input_size
    gen = torch.Generator().manual_seed(0)
    img = torch.rand(1, s, s, generator=gen)
    x = ((img.expand(3, -1, -1) - 0.45) / 0.226).unsqueeze(0).to(dev)  # (1, 3, S, S), contiguous
    torch.manual_seed(1)
    per_region = [
        build_model(dataclasses.replace(cfg, regions=(reg,))).eval().to(dev) for reg in cfg.regions
    ]

    def run_per_region():
        with torch.inference_mode():
            return [torch.sigmoid(m(x)) for m in per_region]

    from .model import load_checkpoint

    pred32_raw = load_checkpoint(pred32.path, device=dev).model.eval()

    def run_onepass_raw():
        with torch.inference_mode():
            return torch.sigmoid(pred32_raw(x))

    inp1 = img.numpy()
    inpb = np.repeat(inp1, batch_size, axis=0)
    fns = {
        "per_region": run_per_region,
        "onepass_fp32_contig": run_onepass_raw,
        "engine_fp32_cl": lambda: pred32.forward(inp1),
    }
    if pred_low is not None:
        fns["engine_low_cl"] = lambda: pred_low.forward(inp1)
    fns["engine_fp32_cl_batch"] = lambda: pred32.forward(inpb)
    if pred_low is not None:
        fns["engine_low_cl_batch"] = lambda: pred_low.forward(inpb)
    return fns


def _models_rows(n_reg: int, low: str | None, batch_size: int) -> list:
    """``(key, label, cases per call)`` of each line of section 1."""
    rows = [
        ("per_region", f"{n_reg} per-region U-Nets, fp32, eager, batch 1, contiguous", 1),
        (
            "onepass_fp32_contig",
            "one multi-label pass, fp32, batch 1, contiguous (no other change)",
            1,
        ),
        ("engine_fp32_cl", "engine: one pass, fp32, BN folded, channels_last, batch 1", 1),
    ]
    if low:
        rows.append(
            ("engine_low_cl", f"engine: one pass, {low}, BN folded, channels_last, batch 1", 1)
        )
    rows.append(
        (
            "engine_fp32_cl_batch",
            f"engine: fp32 channels_last, batch {batch_size}",
            batch_size,
        )
    )
    if low:
        rows.append(
            (
                "engine_low_cl_batch",
                f"engine: {low} channels_last, batch {batch_size}",
                batch_size,
            )
        )
    return rows


def bench_models(pred32, pred_low, args, out, res) -> None:
    """Section 1: the study's five per-region models against one multi-label pass."""
    dev = pred32.device
    cfg = pred32.config
    s = cfg.input_size
    fns = _models_fns(pred32, pred_low, args.batch_size)
    t = time_interleaved(fns, dev, warmup=args.warmup, repeats=args.repeats)
    base = t["per_region"]["median_s"]
    n_reg = len(cfg.regions)
    low = pred_low.precision if pred_low is not None else None
    rows = _models_rows(n_reg, low, args.batch_size)
    out(
        f"[1] all {n_reg} regions of one {s}x{s} case "
        f"(model only: normalised input -> sigmoid maps)"
    )
    section = {}
    for key, label, per in rows:
        ms = t[key]["median_s"] * 1000 / per
        speed = base / (t[key]["median_s"] / per)
        section[key] = {"label": label, "ms_per_case": ms, "speedup_vs_baseline": speed, **t[key]}
        out(f"    {label:<72s} {ms:9.1f} ms/case   x{speed:5.2f}")
    best = min((k for k in section if k != "per_region"), key=lambda k: section[k]["ms_per_case"])
    b1 = "engine_low_cl" if low else "engine_fp32_cl"
    out(
        f"    speed-up of the engine at batch 1 ({section[b1]['label'].split(': ', 1)[1]}): "
        f"x{section[b1]['speedup_vs_baseline']:.2f}"
    )
    out(f"    best: x{section[best]['speedup_vs_baseline']:.2f} ({section[best]['label']})")
    res["models"] = section


def _flops_run(pred, b: int, img1: np.ndarray, flops1: int, dev, args, out) -> dict:
    """One line of section 2: ``pred`` at batch ``b`` against a matmul timed beside it."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[pred.precision]
    inp = np.repeat(img1, b, axis=0)

    def fwd(pred=pred, inp=inp):
        return pred.forward(inp)

    tm = time_fn(fwd, dev, warmup=args.warmup, repeats=args.repeats)
    f = flops1 * b

    def mm_for(n, dtype=dtype):
        a = torch.randn(n, n, device=dev).to(dtype)
        bm = torch.randn(n, n, device=dev).to(dtype)

        def mm():
            with torch.inference_mode():
                return a @ bm

        return mm

    # a square matmul that takes about as long as the forward pass: start from the
    # same FLOP count, then rescale n by the cube root of the time ratio
    n = max(64, int(round((f / 2) ** (1 / 3) / 64)) * 64)
    t0 = time_fn(mm_for(n), dev, warmup=1, repeats=max(1, args.repeats // 2))["median_s"]
    n = max(64, int(round(n * (tm["median_s"] / t0) ** (1 / 3) / 64)) * 64)
    pair = time_interleaved(
        {"model": fwd, "mm": mm_for(n)},
        dev,
        warmup=args.warmup,
        repeats=args.repeats,
    )
    tm, tmm = pair["model"], pair["mm"]
    achieved = f / tm["median_s"] / 1e9
    mm_gf = 2 * n**3 / tmm["median_s"] / 1e9
    ratio = mm_gf / achieved
    out(
        f"    {pred.precision} batch {b:<2d}: model {achieved:8.1f} GFLOP/s "
        f"({tm['median_s'] * 1e3:8.1f} ms)  "
        f"matmul {n}x{n} {mm_gf:8.1f} GFLOP/s ({tmm['median_s'] * 1e3:7.1f} ms)  "
        f"matmul/model x{ratio:.2f}"
    )
    return {
        "precision": pred.precision,
        "batch": b,
        "model_gflops": achieved,
        "model_s": tm["median_s"],
        "matmul_n": n,
        "matmul_gflops": mm_gf,
        "matmul_s": tmm["median_s"],
        "ratio": ratio,
    }


def bench_flops(pred32, pred_low, args, out, res) -> None:
    """Section 2: achieved GFLOP/s of the model against a matmul of the same precision."""
    import torch

    dev = pred32.device
    s = pred32.config.input_size
    conv = flop_convention()
    img1 = np.random.default_rng(0).random((1, s, s), dtype=np.float32)
    with torch.inference_mode():
        flops1 = count_flops(
            lambda: pred32.model(torch.zeros(1, pred32.config.in_channels, s, s, device=dev))
        )
    out("[2] achieved throughput of one forward pass vs a matmul of the same precision")
    out(
        f"    FlopCounterMode counts {flops1 / 1e9:.2f} G{conv} per {s}x{s} image "
        f"(it reports {conv}: 2 x multiply-accumulates; convolutions/matmuls only, "
        f"i.e. {flops1 / 2e9:.2f} GMACs)"
    )
    section = {"flops_per_image": flops1, "counter_unit": conv, "runs": []}
    preds = [pred32] + ([pred_low] if pred_low is not None else [])
    for pred in preds:
        for b in (1, args.batch_size):
            section["runs"].append(_flops_run(pred, b, img1, flops1, dev, args, out))
    low = [x for x in section["runs"] if x["precision"] != "fp32"]
    if low:
        best = min(low, key=lambda x: x["ratio"])
        out(
            f"    {best['precision']}: the model reaches 1/{best['ratio']:.2f} of "
            f"matmul throughput at batch "
            f"{best['batch']}"
        )
    res["flops"] = section


def bench_decode(args, out, res, tmp: Path, size: int) -> None:
    """Section 3: JSRT decode + resize against numpy.fromfile."""
    from .io import read_jsrt_img, write_jsrt_img
    from .phantom import make_phantom
    from .transforms import image_to_input

    ph = make_phantom(0, size=256 if args.smoke else 1024)
    k = 2048 // ph.image.shape[0]
    path = write_jsrt_img(np.repeat(np.repeat(ph.image, k, 0), k, 1), tmp / "PHANTOM.IMG")
    w, r = args.warmup, args.repeats
    t_raw = time_fn(lambda: np.fromfile(path, dtype=">u2"), _cpu(), warmup=w, repeats=r)
    t_read = time_fn(lambda: read_jsrt_img(path), _cpu(), warmup=w, repeats=r)
    img = read_jsrt_img(path).data
    t_resize = time_fn(lambda: image_to_input(img, size), _cpu(), warmup=w, repeats=r)
    t_both = time_fn(
        lambda: image_to_input(read_jsrt_img(path).data, size), _cpu(), warmup=w, repeats=r
    )
    out(f"[3] JSRT .IMG (2048x2048, 8 MiB, in the page cache) to a {size}x{size} model input")
    out(f"    numpy.fromfile                          {t_raw['median_s'] * 1e3:8.1f} ms")
    out(f"    read_jsrt_img                           {t_read['median_s'] * 1e3:8.1f} ms")
    out(f"    image_to_input (pad + area resize)      {t_resize['median_s'] * 1e3:8.1f} ms")
    ratio = t_both["median_s"] / t_raw["median_s"]
    out(
        f"    read_jsrt_img + image_to_input          {t_both['median_s'] * 1e3:8.1f} ms   "
        f"x{ratio:.1f} the bare fromfile"
    )
    res["decode"] = {
        "fromfile_s": t_raw["median_s"],
        "read_jsrt_img_s": t_read["median_s"],
        "image_to_input_s": t_resize["median_s"],
        "read_and_resize_s": t_both["median_s"],
        "ratio_vs_fromfile": ratio,
    }


def _cpu():
    import torch

    return torch.device("cpu")


def bench_folder(pred, args, out, res, tmp: Path) -> None:
    """Section 4: throughput of the ``cxrseg predict`` pipeline with and without workers."""
    from .batch import default_streams, default_workers, run_predict
    from .io import write_jsrt_img
    from .phantom import _write_png8, make_phantom

    n = args.images
    folder = tmp / "folder"
    folder.mkdir()
    n_img = 0 if args.smoke else n // 2
    for i in range(n):
        if i < n_img:
            ph = make_phantom(i, size=512)
            write_jsrt_img(np.repeat(np.repeat(ph.image, 4, 0), 4, 1), folder / f"PH{i:03d}.IMG")
        else:
            ph = make_phantom(i, size=128 if args.smoke else 1024)
            _write_png8(ph.image, folder / f"PH{i:03d}.png")
    workers = default_workers() if args.workers is None else args.workers
    what = f"{n - n_img} PNG ({128 if args.smoke else 1024}^2)" + (
        f" + {n_img} JSRT .IMG (2048^2)" if n_img else ""
    )
    out(
        f"[4] cxrseg predict pipeline on {what}, all regions, masks at native size + CSV, "
        f"{pred.precision}, batch {args.batch_size}"
    )
    # warm-up: one small run
    run_predict(
        [folder / sorted(os.listdir(folder))[-1]],
        tmp / "warm",
        predictor=pred,
        progress=False,
        workers=0,
        batch_size=args.batch_size,
    )
    section = {}
    streams = default_streams(pred) if n > args.batch_size else 1
    variants = [
        ("serial", "no workers, files written after each batch (fully serial)", 0, False, 1),
        ("workers0", "no workers, writer thread overlaps the next batch", 0, True, 1),
        ("workers", f"{workers} DataLoader worker(s) + writer thread, {streams} stream(s)", workers, True, streams),
    ]
    for key, label, nw, overlap, k in variants:
        s = run_predict(
            [folder],
            tmp / f"out-{key}",
            predictor=pred,
            progress=False,
            workers=nw,
            streams=k,
            batch_size=args.batch_size,
            overwrite=True,
            overlap=overlap,
        )
        if s.failed:
            raise RuntimeError(f"benchmark folder run failed: {s.errors[:2]}")
        section[key] = {
            "label": label,
            "workers": nw,
            "streams": k,
            "images_per_s": s.images_per_second,
            "seconds": s.seconds,
        }
        out(f"    {label:<58s} {s.images_per_second:7.2f} images/s ({s.seconds:6.2f} s)")
    ratio = section["workers"]["images_per_s"] / section["serial"]["images_per_s"]
    out(f"    with workers vs fully serial: x{ratio:.2f}")
    section["ratio_workers_vs_serial"] = ratio
    res["folder"] = section


# --------------------------------------------------------------------------- whole processes


def _child_env(args) -> dict:
    """Environment of a child process: this copy of cxrseg first on the path, the thread
    count of ``--threads``."""
    import cxrseg

    env = dict(os.environ)
    src = str(Path(cxrseg.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([src] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    if args.threads is not None:
        env["OMP_NUM_THREADS"] = str(args.threads)
    return env


def _spawn(cmd, env) -> tuple[float, float, str]:
    """Run ``cmd``; (wall-clock start, seconds until it exited, stdout). Raises on failure."""
    import subprocess

    t0 = time.time()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    dt = time.time() - t0
    if r.returncode != 0:
        raise RuntimeError(f"benchmark child {' '.join(map(str, cmd[:4]))} ... failed: {r.stderr.strip()[-800:]}")
    return t0, dt, r.stdout


_REFERENCE_CHILD = """
import json, sys, time
import torch
t_import = time.time()
from cxrseg.predict import Predictor
import numpy as np
path, device, prec, cl = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
p = Predictor(path, device=device, precision=prec, channels_last=cl)
x = np.random.default_rng(0).random((1, p.input_size, p.input_size), dtype=np.float32)
t1 = time.perf_counter()
p.forward(x).cpu()
r = p.refiner  # the clavicle refinement, when the model has one: its pass on both crops
if r is not None:
    r.logits(torch.zeros((len(r.spec.regions), len(r.config.mean) + 1, *r.spec.crop), device=p.device)).cpu()
print(json.dumps({"import_done": t_import, "forward_s": time.perf_counter() - t1, "refine": r is not None}))
"""


def _write_pngs(folder: Path, n: int, *, smoke: bool, data_root: Path | None) -> str:
    """``n`` images in ``folder``: links to ``data_root``'s images, or synthetic PNGs
    (phantoms, 1024 x 1024 and every other one 2048 x 2048). Returns a description."""
    from .phantom import _write_png8, make_phantom

    folder.mkdir(parents=True, exist_ok=True)
    if data_root is not None:
        imgs = sorted(p for p in (Path(data_root) / "images").iterdir() if p.suffix.lower() == ".png")[:n]
        for p in imgs:
            (folder / p.name).symlink_to(p.resolve())
        return f"{len(imgs)} image{'' if len(imgs) == 1 else 's'} of {data_root} (linked)"
    base = 128 if smoke else 1024
    for i in range(n):
        im = make_phantom(i, size=base).image
        if i % 2:
            im = np.repeat(np.repeat(im, 2, 0), 2, 1)
        _write_png8(im, folder / f"PH{i:03d}.png")
    return f"{n} synthetic PNGs ({(n + 1) // 2} of {base}^2, {n // 2} of {2 * base}^2)"


def bench_coldstart(pred, args, out, res, tmp: Path) -> None:
    """Section 5: process start to first mask vs torch import + one forward pass."""
    import sys as _sys

    env = _child_env(args)
    env["CXRSEG_CACHE"] = str(tmp / "cold-cache")  # starts empty: the first run is a first use
    one = tmp / "cold" / "in"
    what = _write_pngs(one, 1, smoke=args.smoke, data_root=getattr(args, "folder_data", None))
    cl = "1" if pred.channels_last else "0"
    ref_cmd = [_sys.executable, "-c", _REFERENCE_CHILD, str(pred.path), str(pred.device), pred.precision, cl]
    section: dict = {"precision": pred.precision, "channels_last": pred.channels_last, "runs": []}

    def predict_once(tag, *extra):
        dst = tmp / "cold" / f"out-{tag}"
        t0, dt, _ = _spawn(
            [_sys.executable, "-m", "cxrseg.cli", "predict", str(one), "--out", str(dst), "--quiet",
             "--model", str(pred.path), "--device", str(pred.device), "--overwrite", *extra],
            env,
        )
        first = min(p.stat().st_mtime for p in (dst / "masks").rglob("*.png"))
        return first - t0, dt

    out(
        f"[5] cold start: a fresh process on one image ({what}; "
        f"{pred.precision}, {'channels_last' if pred.channels_last else 'contiguous'})"
    )
    first_use, _ = predict_once("first")
    reps = 1 if args.smoke else 2
    refs, warm = [], []
    for i in range(reps):  # interleaved, so that load changes hit both alike
        t0, _, txt = _spawn(ref_cmd, env)
        j = json.loads(txt.strip().splitlines()[-1])
        refs.append(j["import_done"] - t0 + j["forward_s"])
        section["reference_refines"] = bool(j.get("refine"))
        # the precision auto chose in this process: a busy machine's incomplete measurement
        # would otherwise be repeated inside the timed run
        warm.append(predict_once(f"warm{i}", "--precision", pred.precision)[0])
    ref, w = statistics.median(refs), statistics.median(warm)
    section.update(
        {"reference_s": ref, "first_mask_s": w, "first_mask_first_use_s": first_use,
         "ratio": w / ref, "ratio_first_use": first_use / ref}
    )
    if section.get("reference_refines"):
        out("    (the reference includes the refinement network's pass on the two clavicle crops)")
    out(f"    python -c 'import torch' + one forward pass (reference)       {ref:7.2f} s")
    out(f"    cxrseg predict: process start -> first mask written           {w:7.2f} s   x{w / ref:.2f} the reference")
    out(
        f"    the same on first use of the model (empty cache: fold+autotune) {first_use:5.2f} s   "
        f"x{first_use / ref:.2f}"
    )
    res["coldstart"] = section


def _gui_unavailable() -> str | None:
    """Why the GUI cold start cannot be measured here, or None."""
    import importlib.util

    if importlib.util.find_spec("napari_cxrseg") is None or importlib.util.find_spec("napari") is None:
        return "the napari plugin is not installed (pip install napari-cxrseg with napari)"
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "no display (run the bench under xvfb-run)"
    if os.environ.get("QT_QPA_PLATFORM", "") in ("offscreen", "minimal"):
        return f"QT_QPA_PLATFORM={os.environ['QT_QPA_PLATFORM']} has no OpenGL for napari's canvas"
    return None


def _gui_timings(stdout: str) -> dict[str, float]:
    """The ``cxrseg-gui: timings: <what> at <epoch seconds>`` lines of ``--timings``."""
    stamps = {}
    for line in stdout.splitlines():
        if "timings: " in line:
            what, _, at = line.split("timings: ", 1)[1].rpartition(" at ")
            try:
                stamps[what] = float(at)
            except ValueError:
                continue
    return stamps


def bench_gui(pred, args, out, res, tmp: Path) -> None:
    """Section 5b: the napari workspace from the window's first event-loop turn to the first
    prediction shown, against a fresh process that imports torch and runs one forward pass;
    fresh processes, interleaved: as launched (the model in a prediction process), with the
    model in napari's process, and that with the background model load."""
    import sys as _sys

    why = _gui_unavailable()
    if why is not None:
        out(f"[5b] GUI cold start: not measured: {why}")
        res["gui"] = {"skipped": why}
        return
    env = _child_env(args)
    env["CXRSEG_PRECISION"] = pred.precision  # as the reference, whatever a busy machine's autotune says
    data_root = getattr(args, "folder_data", None)
    case = getattr(args, "gui_case", None)
    if data_root is not None and case is not None:
        what = f"case {case} of {data_root}"
    else:
        one = tmp / "gui" / "in"
        what = _write_pngs(one, 1, smoke=args.smoke, data_root=data_root)
        case = next(iter(sorted(one.iterdir())))
        case = case.stem if data_root is not None else str(case)
    # a dataset case opens with its ground truth, as a reviewer sees it
    where = ["--data", str(data_root), "--case", case] if data_root is not None else ["--data", case]
    cl = "1" if pred.channels_last else "0"
    ref_cmd = [_sys.executable, "-c", _REFERENCE_CHILD, str(pred.path), str(pred.device), pred.precision, cl]
    gui_cmd = [_sys.executable, "-m", "napari_cxrseg._launch", *where, "--model", str(pred.path),
               "--device", str(pred.device), "--timings", "--timeout", "300",
               "--screenshot", str(tmp / "gui" / "shown.png")]
    rounds = 1 if args.smoke else max(1, int(getattr(args, "gui_rounds", 3)))
    out(f"[5b] GUI cold start: a fresh cxrseg-gui on one image ({what}; {pred.precision}); "
        f"median of {rounds} interleaved round(s)")
    refs: list[float] = []
    variants = (  # tag, extra arguments, CXRSEG_WARM_MODEL, label
        ("process", [], "0", "cxrseg-gui (the model in its prediction process)"),
        ("cold", ["--in-process"], "0", "cxrseg-gui --in-process (the first prediction loads it)"),
        ("warm", ["--in-process"], "1", "cxrseg-gui --in-process, CXRSEG_WARM_MODEL=1"),
    )
    runs: dict[str, list[dict]] = {tag: [] for tag, *_ in variants}
    for _ in range(rounds):
        t0, _, txt = _spawn(ref_cmd, env)
        j = json.loads(txt.strip().splitlines()[-1])
        refs.append(j["import_done"] - t0 + j["forward_s"])
        for tag, extra, warm, _label in variants:
            t0, _, txt = _spawn(gui_cmd + extra, dict(env, CXRSEG_WARM_MODEL=warm))
            stamps = _gui_timings(txt)
            if not {"window shown", "first prediction shown"} <= set(stamps):
                raise RuntimeError(f"cxrseg-gui did not report its timings; it printed: {txt.strip()[-400:]}")
            runs[tag].append({"window_s": stamps["window shown"] - t0,
                              "first_prediction_s": stamps["first prediction shown"] - stamps["window shown"]})
    ref = statistics.median(refs)
    section: dict = {"precision": pred.precision, "image": what, "rounds": rounds, "reference_s": ref,
                     "references": refs, "runs": runs}
    out(f"    python -c 'import torch' + one forward pass (reference)         {ref:7.2f} s")
    for tag, _extra, _warm, label in variants:
        first = statistics.median(r["first_prediction_s"] for r in runs[tag])
        window = statistics.median(r["window_s"] for r in runs[tag])
        total = statistics.median(r["window_s"] + r["first_prediction_s"] for r in runs[tag])
        section[tag] = {"first_prediction_s": first, "window_s": window, "start_to_prediction_s": total,
                        "ratio": first / ref}
        # all three: work moved from after the window's appearance to before it shortens the
        # first figure, not the last
        out(f"    {label:<56} window -> first prediction {first:6.2f} s   x{first / ref:.2f} the reference; "
            f"start -> window {window:.2f} s, start -> first prediction {total:.2f} s")
    section["ratio"] = section["process"]["ratio"]
    res["gui"] = section


_ALLOCATOR_CHILD = """
import json, os, sys, time
import numpy as np
from cxrseg.device import allocator_tuned
from cxrseg.predict import Predictor
path, device, prec, cl = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
batch, reps, warmup = int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
p = Predictor(path, device=device, precision=prec, channels_last=cl)
x = np.random.default_rng(0).random((batch, p.input_size, p.input_size), dtype=np.float32)
for _ in range(warmup):
    p.forward(x).cpu()
t0, c0 = time.perf_counter(), os.times()
for _ in range(reps):
    p.forward(x).cpu()
dt, c1 = time.perf_counter() - t0, os.times()
print(json.dumps({"tuned": allocator_tuned(), "ms": dt / (reps * batch) * 1000,
                  "sys_s": c1.system - c0.system, "user_s": c1.user - c0.user}))
"""


def bench_allocator(pred, args, out, res) -> None:
    """Section 6b: the engine with glibc's default heap against the tuned one
    (:func:`cxrseg.device.tune_allocator`), in fresh processes, interleaved."""
    import sys as _sys

    env_on, env_off = _child_env(args), _child_env(args)
    env_on["CXRSEG_TUNE_ALLOCATOR"], env_off["CXRSEG_TUNE_ALLOCATOR"] = "1", "0"
    cl = "1" if pred.channels_last else "0"
    reps = 1 if args.smoke else max(1, getattr(args, "throughput_rounds", 2))
    out(
        f"[6b] heap: glibc defaults vs tuned (mallopt), model only, fresh processes, "
        f"{pred.precision}{'/cl' if pred.channels_last else ''}; median of {reps} interleaved round(s)"
    )
    section: dict = {"rounds": reps, "batches": {}}
    for batch in (1, args.batch_size):
        runs: dict = {"off": [], "on": []}
        for _ in range(reps):
            for tag, env in (("off", env_off), ("on", env_on)):
                cmd = [_sys.executable, "-c", _ALLOCATOR_CHILD, str(pred.path), str(pred.device),
                       pred.precision, cl, str(batch), str(args.repeats), str(args.warmup)]
                runs[tag].append(json.loads(_spawn(cmd, env)[2].strip().splitlines()[-1]))
        med = {t: statistics.median(r["ms"] for r in runs[t]) for t in runs}
        kern = {t: statistics.median(r["sys_s"] for r in runs[t]) for t in runs}
        section["batches"][batch] = {"runs": runs, "ms_off": med["off"], "ms_on": med["on"],
                                     "speedup": med["off"] / med["on"], "tuned": runs["on"][0]["tuned"]}
        out(f"    batch {batch}: defaults {med['off']:8.1f} ms/image (kernel {kern['off']:5.2f} s)   "
            f"tuned {med['on']:8.1f} ms/image (kernel {kern['on']:5.2f} s)   x{med['off'] / med['on']:.2f}"
            + ("" if runs["on"][0]["tuned"] else "   (not tuned: not glibc, or turned off)"))
    res["allocator"] = section


def bench_throughput(pred, args, out, res, tmp: Path) -> None:
    """Section 6: whole processes on a folder: per-region baseline vs cxrseg predict."""
    import sys as _sys

    from .predict import Predictor, resolve_checkpoint_path
    from .quantize import int8_path

    env = _child_env(args)
    folder = tmp / "tp" / "in"
    what = _write_pngs(folder, args.images, smoke=args.smoke, data_root=getattr(args, "folder_data", None))
    n = len(list(folder.iterdir()))
    main = "given" if args.model is not None else "default"
    # (tag, predictor, refinement on): the model as the CLI runs it by default, with
    # --precision int8 when it is calibrated, without its clavicle refinement when it has
    # one, and the fast tier (also in int8)
    models = [(main, pred, getattr(pred, "refiner", None) is not None)]
    # the default run once more with one stream (all the torch threads on one pass at a
    # time): what the streams gain; its model time is the default run's
    extra_args: dict = {}
    from .batch import default_streams

    if default_streams(pred) > 1 and n > args.batch_size:
        extra_args[f"{main}-one-stream"] = ["--streams", "1"]
        models.append((f"{main}-one-stream", pred, models[0][2]))
    if models[0][2]:
        models.append((f"{main}-no-refine", pred, False))
    if pred.device.type == "cpu" and int8_path(pred.path).is_file():
        # the same networks quantised to int8 (cxrseg quantize's calibration beside the model)
        try:
            q = Predictor(pred.path, device="cpu", precision="int8", refine=models[0][2])
            models.insert(1, (f"{main}-int8", q, models[0][2]))
        except Exception as exc:  # noqa: BLE001 - a broken calibration file: say so, bench the rest
            out(f"[6] int8: skipped ({exc})")
    if args.model is None and not args.smoke:
        try:
            fast = Predictor(resolve_checkpoint_path("fast"), device=str(pred.device), precision="auto")
            models.append(("fast", fast, fast.refiner is not None))
            if pred.device.type == "cpu" and int8_path(fast.path).is_file():
                fast8 = Predictor(fast.path, device="cpu", precision="int8")
                models.append(("fast-int8", fast8, fast8.refiner is not None))
        except Exception:
            pass
    reps = 1 if args.smoke else max(1, getattr(args, "throughput_rounds", 2))
    out(
        f"[6] whole processes on a folder: {what}; all regions, masks at native size; "
        f"median of {reps} round(s), each round runs every process once (interleaved)"
    )
    section: dict = {"images": n, "what": what, "rounds": reps, "runs": {}}
    base_cmd = [_sys.executable, "-m", "cxrseg.bench_baseline", str(folder), str(tmp / "tp" / "base"), str(pred.device)]
    if args.smoke:
        base_cmd += ["64", "resnet18"]
    bs = args.batch_size

    def engine_cmd(tag, p, refine):
        return [_sys.executable, "-m", "cxrseg.cli", "predict", str(folder), "--out", str(tmp / "tp" / f"out-{tag}"),
                "--quiet", "--model", str(p.path), "--device", str(p.device), "--batch-size", str(bs),
                "--precision", p.precision, "--overwrite", "--refine" if refine else "--no-refine",
                *extra_args.get(tag, ())]

    def model_time(p, refine, streams=1):
        """Model-only time of the same number of batch passes, in this process: the
        whole-film model's, and the refinement network's on the clavicle crops of each
        batch (one per clavicle, as the engine batches them) when the model has one.
        ``streams`` > 1: the batches split between that many threads, each with its share
        of the torch threads, as ``cxrseg predict`` runs them on a CPU."""
        import threading

        import torch

        sizes = [bs] * (n // bs) + ([n % bs] if n % bs else [])
        zeros = {b: np.zeros((b, p.input_size, p.input_size), np.float32) for b in set(sizes)}
        ref = getattr(p, "refiner", None)
        crops = {}
        if refine:
            for b in set(sizes):
                k = b * len(ref.spec.regions)
                crops[b] = [torch.zeros((min(ref.BATCH, k - i), len(ref.config.mean) + 1, *ref.spec.crop),
                                        device=p.device) for i in range(0, k, ref.BATCH)]

        def run(part):
            for b in part:
                p.forward(zeros[b], exclusive=streams == 1)
                for x in crops.get(b, ()):
                    ref.logits(x)

        threads = torch.get_num_threads()
        if streams > 1:
            torch.set_num_threads(max(1, threads // streams))
        try:
            _sync(p.device)
            t0 = time.perf_counter()
            if streams == 1:
                run(sizes)
            else:
                ts = [threading.Thread(target=run, args=(sizes[i::streams],)) for i in range(streams)]
                for t in ts:
                    t.start()
                for t in ts:
                    t.join()
            _sync(p.device)
            return time.perf_counter() - t0
        finally:
            torch.set_num_threads(threads)

    def model_times(p, refine):
        """``{streams: seconds}`` for one stream and for the engine's default streams."""
        from .batch import default_streams

        got = {1: model_time(p, refine)}
        k = default_streams(p) if n > bs else 1
        if k > 1:
            got[k] = model_time(p, refine, k)
        return got

    for tag, p, refine in models:  # warm-up: oneDNN kernels of this process
        if tag not in extra_args:
            model_times(p, refine)
    t_base_all: list[float] = []
    t_whole_all: dict = {tag: [] for tag, _, _ in models}
    t_model_all: dict = {tag: [] for tag, _, _ in models}
    for _ in range(reps):
        t_base_all.append(_spawn(base_cmd, env)[1])
        for tag, p, refine in models:
            t_whole_all[tag].append(_spawn(engine_cmd(tag, p, refine), env)[1])
            if tag not in extra_args:
                t_model_all[tag].append(model_times(p, refine))
            else:  # the same networks as the default run
                t_model_all[tag] = t_model_all[main]
    t_base = statistics.median(t_base_all)
    section["baseline_s"] = t_base
    section["baseline_all_s"] = t_base_all
    out(f"    {'baseline script: 5 per-region fp32 256 px U-Nets, batch 1':<80s} {t_base:7.2f} s  "
        f"({n / t_base:5.2f} img/s)")
    for tag, p, refine in models:
        t_whole = statistics.median(t_whole_all[tag])
        # the model's own time: the faster of one stream and the engine's streams
        by_streams = {k: statistics.median(r[k] for r in t_model_all[tag]) for k in t_model_all[tag][0]}
        t_model = min(by_streams.values())
        section["runs"][tag] = {
            "model": p.path.name, "input_size": p.input_size, "precision": p.precision,
            "channels_last": p.channels_last, "refine": refine, "whole_s": t_whole, "model_s": t_model,
            "model_s_by_streams": by_streams,
            "whole_all_s": t_whole_all[tag], "model_all_s": [min(r.values()) for r in t_model_all[tag]],
            "speedup_vs_baseline": t_base / t_whole, "whole_over_model": t_whole / t_model,
        }
        ref = " + refinement" if refine else ""
        cl = "/cl" if p.channels_last else ""
        k = 1 if tag in extra_args or n <= bs else default_streams(p)
        section["runs"][tag]["streams"] = k
        streams = f"{k} stream{'s' * (k > 1)}"
        label = f"cxrseg predict {tag} ({p.input_size} px{ref}, {p.precision}{cl}, batch {bs}, {streams})"
        out(
            f"    {label:<80s} {t_whole:7.2f} s  ({n / t_whole:5.2f} img/s)"
            f"  x{t_base / t_whole:.2f} the baseline; whole process x{t_whole / t_model:.2f} its model time "
            f"({t_model:.2f} s" + "".join(
                f"; {k} stream{'s' if k > 1 else ''} {v:.2f} s" for k, v in by_streams.items() if len(by_streams) > 1
            ) + ")"
        )
    res["throughput"] = section


def bench_refine(pred, args, out, res, tmp: Path) -> None:
    """Section 9: the cost of the clavicles' native-resolution refinement, as ratios to the
    whole-film model alone: in this process (films -> native maps) and as whole
    ``cxrseg predict`` processes on a folder, interleaved."""
    import sys as _sys

    from .io import read_image
    from .predict import Predictor
    from .refine import find_refiner

    if find_refiner(pred.path) is None:
        out(f"[9] refinement: skipped, {pred.path.name} has no refinement network beside it")
        return
    kw = {"device": str(pred.device), "precision": pred.precision, "channels_last": pred.channels_last}
    off = Predictor(pred.path, refine=False, **kw)
    on = Predictor(pred.path, refine=True, **kw)
    folder = tmp / "refine" / "in"
    what = _write_pngs(folder, args.images, smoke=args.smoke, data_root=getattr(args, "folder_data", None))
    files = sorted(folder.iterdir())
    films = [read_image(f).data for f in files]
    reps = 1 if args.smoke else max(1, getattr(args, "throughput_rounds", 2))
    out(f"[9] clavicle refinement ({on.refine_id}) vs the whole-film model alone: {what}; "
        f"{pred.precision}{'/cl' if pred.channels_last else ''}, batch {args.batch_size}")
    t = time_interleaved(
        {
            "off": lambda: off.predict_batch(films, batch_size=args.batch_size),
            "on": lambda: on.predict_batch(films, batch_size=args.batch_size),
        },
        pred.device, warmup=1, repeats=max(1, args.repeats),
    )
    n = len(films)
    section: dict = {"images": n, "what": what, "refine_id": on.refine_id}
    r_api = t["on"]["median_s"] / t["off"]["median_s"]
    t_off, t_on = t["off"]["median_s"], t["on"]["median_s"]
    out(f"    predict_batch, whole-film model alone   {t_off:7.2f} s  ({n / t_off:5.2f} img/s)")
    out(f"    predict_batch, with the refinement      {t_on:7.2f} s  ({n / t_on:5.2f} img/s)  x{r_api:.2f} the cost")
    env = _child_env(args)

    def cmd(flag):
        return [_sys.executable, "-m", "cxrseg.cli", "predict", str(folder), "--out", str(tmp / "refine" / flag),
                "--quiet", "--model", str(pred.path), "--device", str(pred.device), "--batch-size",
                str(args.batch_size), "--precision", pred.precision, "--overwrite", flag]

    whole: dict = {"--no-refine": [], "--refine": []}
    for _ in range(reps):
        for flag in whole:
            whole[flag].append(_spawn(cmd(flag), env)[1])
    w_off, w_on = statistics.median(whole["--no-refine"]), statistics.median(whole["--refine"])
    out(f"    cxrseg predict --no-refine              {w_off:7.2f} s  ({n / w_off:5.2f} img/s)")
    out(f"    cxrseg predict (refinement on)          {w_on:7.2f} s  ({n / w_on:5.2f} img/s)  "
        f"x{w_on / w_off:.2f} the cost  (median of {reps} round(s))")
    section.update({"api": t, "api_ratio": r_api, "whole_off_s": whole["--no-refine"], "whole_on_s": whole["--refine"],
                    "whole_ratio": w_on / w_off})
    res["refine"] = section


def bench_accuracy(path, device, args, out, res) -> None:
    """Section 7: bf16 (fp16 on GPUs without bf16) and, where calibrated, int8 against
    fp32: Jaccard on real cases."""
    from .dataset import DatasetIndex
    from .evaluate import compare_predictors
    from .predict import Predictor
    from .quantize import int8_path

    p32 = Predictor(path, device=str(device), precision="fp32")
    low_prec = "fp16" if device.type in ("cuda", "mps") and not _cuda_bf16(device) else "bf16"
    lows = [low_prec] + (["int8"] if device.type == "cpu" and int8_path(p32.path).is_file() else [])
    index = DatasetIndex(args.accuracy_data)
    cases = index.with_regions(p32.regions)
    if not cases:
        out(
            f"[7] accuracy: no case under {args.accuracy_data} "
            f"has masks of {', '.join(p32.regions)}; skipped"
        )
        return
    val = set(p32.metadata.get("val_cases") or [])
    ordered = [c for c in cases if c.case_id in val] + [c for c in cases if c.case_id not in val]
    chosen = ordered[: max(1, args.accuracy_cases)]
    n_val = sum(1 for c in chosen if c.case_id in val)
    sections = {}
    for prec in lows:
        cmp = compare_predictors(p32, Predictor(path, device=str(device), precision=prec), chosen)
        out(
            f"[7] {prec} vs fp32 on {len(chosen)} real cases of {args.accuracy_data} "
            f"({n_val} of them validation cases of this checkpoint), "
            f"thresholded masks, no post-processing"
        )
        out(
            f"    model {p32.model_id} (epoch {(p32.metadata.get('metrics') or {}).get('epoch', '?')} "
            f"of its training run)"
        )
        out(
            f"    {'region':<16s} {'J fp32':>8s} {'J ' + prec + ' - J fp32':>16s} "
            f"{'max |diff|':>11s} "
            f"{'J(' + prec + ', fp32)':>16s} {'min':>7s}"
        )
        section = {"precision": prec, "cases": cmp["cases"], "regions": {}}
        for r, e in cmp["regions"].items():
            section["regions"][r] = {
                "jaccard_fp32": e["jaccard_reference"],
                "delta_mean": e["delta_mean"],
                "delta_max_abs": e["delta_max_abs"],
                "agreement_mean": e["agreement_mean"],
                "agreement_min": e["agreement_min"],
            }
            out(
                f"    {r:<16s} {e['jaccard_reference']:8.4f} {e['delta_mean']:+16.5f} {e['delta_max_abs']:11.5f} "
                f"{e['agreement_mean']:16.5f} {e['agreement_min']:7.4f}"
            )
        worst = cmp["max_abs_mean_delta"]
        out(f"    largest |mean Jaccard change| {worst:.5f} < 0.002: {'yes' if worst < 0.002 else 'NO'}")
        section["max_abs_mean_delta"] = worst
        section["below_0_002"] = worst < 0.002
        sections[prec] = section
    res["accuracy"] = sections[low_prec]
    if "int8" in sections:
        res["accuracy_int8"] = sections["int8"]


def _cuda_bf16(device) -> bool:
    import torch

    return device.type == "cuda" and torch.cuda.is_bf16_supported()


# --------------------------------------------------------------------------- main


def _bench_sections(args) -> set:
    """Fill the unset counts of ``args`` for the mode; check them; the sections to run."""
    if getattr(args, "folder_data", None) is not None and not Path(args.folder_data, "images").is_dir():
        raise FileNotFoundError(f"--folder-data {args.folder_data}: no images/ folder")
    if args.repeats is None:
        args.repeats = 2 if args.smoke else 7
    if args.warmup is None:
        args.warmup = 1 if args.smoke else 2
    if args.images is None:
        args.images = 4 if args.smoke else 16
    if args.repeats < 1 or args.warmup < 0 or args.images < 1 or args.batch_size < 1:
        raise ValueError("--repeats, --images and --batch-size must be >= 1, --warmup >= 0")
    only = set(SECTIONS)
    if args.only:
        only = {s.strip() for s in args.only.split(",") if s.strip()}
        unknown = sorted(only - set(SECTIONS))
        if unknown:
            raise ValueError(
                f"--only: unknown sections {unknown}; expected some of {', '.join(SECTIONS)}"
            )
    if args.smoke and not args.only:
        only -= {"coldstart", "gui", "throughput", "allocator", "refine"}  # child processes: ask for them by name
    if args.accuracy_data is None:
        only.discard("accuracy")
    elif not Path(args.accuracy_data).is_dir():
        raise FileNotFoundError(f"--accuracy-data {args.accuracy_data}: no such folder")
    return only


def _low_precision(dev) -> tuple[str, str]:
    """The reduced precision to time on ``dev``, and a note on whether it is native."""
    import torch

    from .device import cpu_supports_bf16

    if dev.type == "cpu":
        low = "bf16"
        low_note = (
            "native (AVX512-BF16/AMX)"
            if cpu_supports_bf16()
            else "EMULATED: this CPU has no native bf16"
        )
    elif dev.type == "cuda":
        low = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        low_note = "CUDA"
    else:
        low, low_note = "fp16", dev.type
    return low, low_note


def _bench_env(args, dev, pred32, pred_auto, low: str, low_note: str, note: str) -> dict:
    """The ``env`` entry of the results: versions, machine, model and what auto chose."""
    import torch

    return {
        "torch": torch.__version__,
        "device": str(dev),
        "cpu": _cpu_name(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_before": _load(),
        "low_precision": low,
        "low_precision_note": low_note,
        "model_id": pred32.model_id,
        "model_note": note,
        "input_size": pred32.config.input_size,
        "encoder": pred32.config.encoder_name,
        "folded_batchnorm": pred32.folded_batchnorm,
        "auto_precision": pred_auto.precision,
        "auto_channels_last": pred_auto.channels_last,
        "auto_source": pred_auto.autotune.source if pred_auto.autotune else None,
        "auto_measured_ms": pred_auto.autotune.measured_ms if pred_auto.autotune else None,
        "smoke": bool(args.smoke),
    }


def _print_header(args, dev, env: dict, pred32, pred_auto, out) -> None:
    """The lines above the sections: machine, model, precisions and timing scheme."""
    out(f"cxrseg bench{' --smoke (tiny sizes: numbers are meaningless)' if args.smoke else ''}")
    out(
        f"    torch {env['torch']}, device {dev} ({env['cpu'] if dev.type == 'cpu' else dev}), "
        f"{env['threads']} torch threads, {env['cpu_count']} CPUs, "
        f"load average {env['load_before']}"
    )
    out(
        f"    model: {env['model_note']} ({pred32.model_id}): {pred32.config.encoder_name} U-Net, "
        f"{len(pred32.regions)} regions, "
        f"input {pred32.config.input_size}, {pred32.folded_batchnorm} batch norms folded"
    )
    out(
        f"    low precision: {env['low_precision']} ({env['low_precision_note']}); "
        f"median of {args.repeats} runs after {args.warmup} warm-up"
    )
    if pred_auto.autotune is not None:
        out(f"    --precision auto chose {pred_auto.autotune.describe()}")
    out()


def _run_sections(only, path, dev, note, preds, args, out, res, tmp: Path) -> None:
    """Run the sections of ``only`` in their fixed order, a blank line after each."""
    from .device import cpu_supports_bf16

    pred32, pred_low, pred_auto = preds
    if "models" in only:
        bench_models(pred32, pred_low, args, out, res)
        out()
    if "flops" in only:
        bench_flops(pred32, pred_low, args, out, res)
        out()
    if "decode" in only:
        bench_decode(args, out, res, tmp, pred32.config.input_size)
        out()
    if "folder" in only:
        bench_folder(pred_auto, args, out, res, tmp)
        out()
    if "coldstart" in only:
        bench_coldstart(pred_auto, args, out, res, tmp)
        out()
    if "gui" in only:
        bench_gui(pred_auto, args, out, res, tmp)
        out()
    if "throughput" in only:
        bench_throughput(pred_auto, args, out, res, tmp)
        out()
    if "allocator" in only:
        bench_allocator(pred_auto, args, out, res)
        out()
    if "accuracy" in only:
        if note.startswith(("random", "tiny")):
            out(
                "[7] accuracy: skipped, the model is random "
                "(pass --model with a trained checkpoint)"
            )
        else:
            bench_accuracy(path, dev, args, out, res)
        out()
    if "refine" in only:
        bench_refine(pred_auto, args, out, res, tmp)
        out()
    if "quality" in only:
        from .quality import bench_section

        bench_section(pred_low if dev.type != "cpu" or cpu_supports_bf16() else pred32, args, out, res)
        out()


def run_bench(args, out=None) -> dict:
    """Run the selected sections; print as they finish; return the results dict."""
    import torch

    from .device import select_device
    from .predict import Predictor

    out = out or _Out()
    only = _bench_sections(args)
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    dev = select_device(args.device)
    res: dict = {
        "args": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if not k.startswith("_")
        }
    }
    with tempfile.TemporaryDirectory(prefix="cxrseg-bench-") as td:
        tmp = Path(td)
        path, note = _prepare_model(args, tmp)
        pred32 = Predictor(path, device=str(dev), precision="fp32")
        low, low_note = _low_precision(dev)
        pred_low = Predictor(path, device=str(dev), precision=low)
        pred_auto = Predictor(
            path, device=str(dev), precision="auto", autotune_budget=getattr(args, "autotune_budget", None)
        )
        env = _bench_env(args, dev, pred32, pred_auto, low, low_note, note)
        res["env"] = env
        _print_header(args, dev, env, pred32, pred_auto, out)
        _run_sections(only, path, dev, note, (pred32, pred_low, pred_auto), args, out, res, tmp)
    res["env"]["load_after"] = _load()
    out(f"load average after: {res['env']['load_after']}")
    if args.json is not None:
        from .io import atomic_write

        text = json.dumps(res, indent=1, default=_json_default)
        atomic_write(args.json, lambda fh: fh.write(text.encode("utf-8")))
        out(f"results written to {args.json}")
    return res


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return str(o)
