"""GUI overhead and responsiveness of the napari-cxrseg docks (run under a display).

    xvfb-run -a .venv/bin/python benchmarks/bench_gui.py                      # phantoms
    xvfb-run -a .venv/bin/python benchmarks/bench_gui.py --data $CXRSEG_DATA --n 200

Measurements, printed as ratios:

1. **Click-to-layers vs. bare prediction.** As in a review: the next case is loaded, then
   the Predict dock's *Run* button is clicked (``QPushButton.click``) and the clock stops
   when the heatmap and prediction layers are in the viewer, filled and visible
   (``Session.prediction_changed``). The canvas draws them on the next event-loop turn,
   after the clock stops (as it does after a bare prediction shown by any other means);
   so do the layer-list thumbnails of the heatmaps written in place. This is compared with
   a bare ``Predictor.predict`` call on the same image with the same, warmed-up predictor,
   on the same thread (the
   docks run every forward pass on one dedicated thread, ``_torch_env.torch_call``).
   Medians over ``--repeats`` cases. Between loading the case and
   clicking, the event loop runs idle for 0.3 s (the case is drawn first, as when a person
   looks at it before pressing Run). The first Run (model load,
   layer creation) is reported separately. With ``--process`` the docks' predictions run in
   a prediction process (:mod:`cxrseg.serve`), as in ``cxrseg-gui``; the bare call stays in
   this process.
2. **Longest event-loop stall during a review run.** A 10 ms ``QTimer`` records the gaps
   between its ticks while the Review queue dock scores ``--n`` cases in its worker (the
   table growing row by row). A gap over 100 ms is felt as a stutter.
3. **Cold start** (``--cold N`` pairs, default 2): a fresh ``cxrseg-gui --timings`` on the
   case, from the window's first event-loop turn to the first prediction shown, against a
   fresh process that imports torch and runs one forward pass, and the same GUI with the
   model loaded in a background thread from the first event-loop turn
   (``CXRSEG_WARM_MODEL=1``). The figure is reported as a ratio, with the process start ->
   window and process start -> first prediction times beside it.

Without ``--data``, ``--n`` phantom cases (1024 px PNG) are written to a temporary folder.
The model is ``--model``, else the shipped one, else a randomly initialised full-size
U-Net (ResNet34, 256 px: the same compute as the real model). The review ledger is
written to a temporary folder, never into the dataset.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _model(path_arg: str | None, tmp: Path) -> str:
    if path_arg:
        return path_arg
    from cxrseg.model import default_checkpoint_path

    if default_checkpoint_path().is_file():
        return str(default_checkpoint_path())
    import torch

    from cxrseg.config import ModelConfig
    from cxrseg.model import build_model, save_checkpoint

    torch.manual_seed(0)
    cfg = ModelConfig()
    out = save_checkpoint(build_model(cfg).eval(), cfg, tmp / "random-r34.safetensors")
    print(f"(no shipped model: using a random ResNet34 U-Net at {cfg.input_size} px, {out})")
    return str(out)


def _wait(app, cond, timeout=600.0, signal=None):
    """Run the Qt event loop (idle in C, as in the real application) until ``cond()``.

    With ``signal`` (a psygnal signal), the condition is checked when it fires and a slow
    250 ms poll is only a safety net: a fast poll timer would wake the GUI thread every few
    ms and slow down the model running beside it (the real application has no such timer).
    """
    from qtpy.QtCore import QEventLoop, QTimer

    if cond():
        return
    loop = QEventLoop()
    t0 = time.perf_counter()

    def check(*_args):
        if cond() or time.perf_counter() - t0 > timeout:
            loop.quit()

    timer = QTimer()
    timer.timeout.connect(check)
    timer.start(250 if signal is not None else 2)
    if signal is not None:
        signal.connect(check)
    loop.exec_()
    timer.stop()
    if signal is not None:
        signal.disconnect(check)
    if not cond():
        raise TimeoutError("benchmark step timed out")


def _settle(app, seconds: float = 0.3) -> None:
    """Let the event loop run idle for a while: the new case is drawn before Run is clicked,
    as when a person looks at it first."""
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(int(seconds * 1000), loop.quit)
    loop.exec_()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="dataset root (default: phantoms in a temporary folder)")
    p.add_argument("--n", type=int, default=20, help="cases in the review run (default 20)")
    p.add_argument("--case", help="case for the click-to-layers measurement (default: the first)")
    p.add_argument("--model", help="checkpoint (default: shipped, else a random full-size model)")
    p.add_argument("--device", default="auto")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--cold", metavar="N", type=int, default=2,
                   help="cold-start pairs (a fresh cxrseg-gui vs. a fresh torch import + forward pass); 0 skips")
    p.add_argument("--process", action="store_true",
                   help="run the docks' predictions in a prediction process, as cxrseg-gui does "
                        "(default: in this process, as napari -w napari-cxrseg does)")
    p.add_argument("--profile", metavar="N", type=int, default=0,
                   help="also profile the GUI thread during the timed clicks; print the top N functions")
    args = p.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="cxrseg-bench-gui-"))
    import os

    os.environ.setdefault("CXRSEG_HOME", str(tmp / "home"))
    os.environ.setdefault("NAPARI_APPLICATION_GUI_NOTIFICATION_LEVEL", "error")
    if args.data:
        root = Path(args.data)
    else:
        from cxrseg.phantom import write_phantom_dataset

        root = tmp / "phantoms"
        t0 = time.perf_counter()
        write_phantom_dataset(root, args.n, image_format="png", size=1024)
        print(f"wrote {args.n} phantom cases (1024 px) in {time.perf_counter() - t0:.1f} s")

    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_cxrseg._widgets._predict import PredictWidget
    from napari_cxrseg._widgets._review import ReviewWidget
    from napari_cxrseg._widgets._state import get_session
    from napari_cxrseg._widgets._torch_env import guard_triton_import

    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    guard_triton_import()
    s = get_session(viewer)
    s.set_model(_model(args.model, tmp), args.device)
    if args.process:
        from cxrseg.serve import PredictorProcess

        s.use_predictor_process(PredictorProcess(s.checkpoint, device=s.device))
    predict = PredictWidget(viewer)
    review = ReviewWidget(viewer)
    viewer.window.add_dock_widget(predict, name="Predict", area="right")
    viewer.window.add_dock_widget(review, name="Review queue", area="right", tabify=True)

    s.open_dataset(root)
    _wait(app, lambda: s.index is not None)
    s._ledger_path = tmp / "review.sqlite"  # never write into the (maybe read-only) dataset
    cases = s.index.cases[: args.n]
    s.index.cases = cases
    cid = args.case or cases[0].case_id
    s.load_case(cid)
    _wait(app, lambda: s.case_id == cid)
    print(f"data: {root} ({len(cases)} cases for the review run); case {cid}, image {s.image.shape}")

    # ---------------------------------------------------------------- 1. click-to-layers
    from cxrseg.predict import get_predictor
    from napari_cxrseg._widgets._torch_env import torch_call

    def _timed(fn, *a):
        t = time.perf_counter()
        fn(*a)
        return time.perf_counter() - t

    done: list[float] = []
    s.prediction_changed.connect(lambda mid: done.append(time.perf_counter()) if mid else None)
    _wait(app, lambda: predict.model_info.get("ok") is not None)
    t0 = time.perf_counter()
    predict.run_btn.click()  # warm-up: loads the model, first run, creates the layers
    _wait(app, lambda: len(done) == 1)
    first = done[0] - t0
    pred = get_predictor(s.checkpoint, device=s.device)
    print(f"model {pred.model_id} on {pred.device} ({pred.precision}), input {pred.input_size} px")
    print(f"first Run (model load + layer creation): {first * 1000:.0f} ms")
    bare, click, parts = [], [], []
    prof = None
    if args.profile:
        import cProfile

        prof = cProfile.Profile()
    order = [c.case_id for c in cases]
    for k in range(args.repeats):
        # the review flow: next case, then Run (its overlays reuse the parked layers)
        nxt = order[(order.index(s.case_id) + 1) % len(order)]
        s.load_case(nxt, predict=False)
        _wait(app, lambda nxt=nxt: s.case_id == nxt)
        _settle(app)
        image = s.image.data
        if k == 0:
            torch_call(pred.predict, image)  # warm the bare path on this image size
        # bare: the same predictor on the same (warm) thread the GUI uses for torch,
        # timed inside that thread
        bare.append(torch_call(_timed, pred.predict, image))
        n0 = len(done)
        _wait(app, predict.run_btn.isEnabled)
        if prof is not None:
            prof.enable()
        t0 = time.perf_counter()
        predict.run_btn.click()
        _wait(app, lambda n0=n0: len(done) > n0, signal=s.prediction_changed)
        click.append(done[-1] - t0)
        if prof is not None:
            prof.disable()
        parts.append(dict(s.last_timing))
        names = [f"{nxt} heatmap {r}" for r in pred.regions] + [f"{nxt} prediction"]
        assert all(n in viewer.layers and viewer.layers[n].visible for n in names)
    mb, mc = statistics.median(bare), statistics.median(click)
    over = (mc - mb) / mb * 100
    print(f"bare Predictor.predict: median {mb * 1000:.0f} ms  ({', '.join(f'{x * 1000:.0f}' for x in bare)})")
    print(f"click Run -> layers:    median {mc * 1000:.0f} ms  ({', '.join(f'{x * 1000:.0f}' for x in click)})")
    keys = ("load_s", "predict_s", "masks_s", "worker_s", "gui_s")
    med = {k: statistics.median(p[k] for p in parts) * 1000 for k in keys}
    hops = med["worker_s"] - med["load_s"] - med["predict_s"] - med["masks_s"]
    print(f"  of which (medians): model in worker {med['predict_s']:.0f} ms, masks + label image in worker "
          f"{med['masks_s']:.0f} ms, layer updates on the GUI thread {med['gui_s']:.0f} ms, "
          f"worker start + thread hand-offs {hops:.0f} ms")
    if prof is not None:
        import pstats

        print(f"GUI thread during the {args.repeats} clicks (profiled: times are inflated):")
        pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(args.profile)
        pstats.Stats(prof, stream=sys.stdout).sort_stats("cumulative").print_stats(args.profile)
    paired = [c / b for c, b in zip(click, bare, strict=True)]
    extra = statistics.median(c - b for c, b in zip(click, bare, strict=True)) * 1000
    print(f"  paired by case (same image, bare timed just before the click): median click/bare "
          f"{statistics.median(paired):.2f}, median click - bare {extra:.0f} ms")
    print(f"GUI overhead: {over:+.1f} %  (ratio {mc / mb:.2f})")

    # ---------------------------------------------------------------- 2. review-run stall
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    review.skip_box.setChecked(False)
    timer.start()
    _wait(app, lambda: len(ticks) > 20)
    t0 = time.perf_counter()
    w = review.run()
    finished = []
    w.finished.connect(lambda: finished.append(time.perf_counter()))
    _wait(app, lambda: bool(finished), timeout=3600)
    timer.stop()
    run_s = finished[0] - t0
    during = np.array([t for t in ticks if t >= t0])
    gaps = np.diff(during) * 1000
    n_scored = max(len(review.scores), 1)
    print(f"review run: {len(review.scores)} cases in {run_s:.1f} s ({run_s / n_scored * 1000:.0f} ms/case), "
          f"table rows {review.table.rowCount()}")
    print(f"event-loop gaps (10 ms timer): median {np.median(gaps):.1f} ms, p99 {np.percentile(gaps, 99):.1f} ms, "
          f"max {gaps.max():.1f} ms")
    print(f"ratios: click/bare {mc / mb:.3f}; max stall / 100 ms {gaps.max() / 100:.2f}")
    viewer.close()
    if args.cold > 0:
        _cold_start(args, root, cid, pred, tmp)
    return 0


def _cold_start(args, root: Path, cid: str, pred, tmp: Path) -> None:
    """3. A fresh ``cxrseg-gui`` on the case: seconds from the window's first event-loop
    turn to the first prediction shown, against a fresh process that imports torch and runs
    one forward pass, interleaved: ``cxrseg bench``'s ``gui`` section on this case."""
    from types import SimpleNamespace

    from cxrseg.bench import bench_gui

    ns = SimpleNamespace(smoke=False, gui_rounds=args.cold, threads=None, folder_data=root, gui_case=cid)
    res: dict = {}
    bench_gui(pred, ns, print, res, tmp)
    if "ratio" in res["gui"]:
        print(f"GUI first prediction: x{res['gui']['ratio']:.2f} the reference")


if __name__ == "__main__":
    sys.exit(main())
