"""``cxrseg-gui``: napari with the cxrseg docks, a case loaded and predicted.

    cxrseg-gui                          # the bundled sample_data/ (or fresh phantoms)
    cxrseg-gui --data /path/to/jsrt-scr --case JPCLN001
    cxrseg-gui --data RG1_UNCR.dcm      # a single image (no ground truth)
    cxrseg-gui --screenshot shot.png    # wait for the layers and the prediction, save, quit
    cxrseg-gui --focus left_clavicle --preset bone --dock "Review queue"   # a review set-up
    cxrseg-gui --data RG1_UNCR.dcm --quality   # review without ground truth

The docks are tabified on the right in two groups (Cases | Review queue | Training
progression above, Predict | Compare | Correct | Fine-tune | Display below). In a
window 950 px tall or more, Compare gets a group of its own and the Display dock
(window/level, colour legend, R/L markers, keys) sits on the left under the layer list.
The colour legend and the R/L markers are drawn on the canvas either way. Every dock scrolls
instead of forcing its full height on the window, so the window fits ``--size`` (default:
the screen's available area, at most 1680 x 1020) on a 1366 x 768 screen too. The first
case (or ``--case``) is loaded and, unless ``--no-predict`` or the model is missing,
predicted. The predictions run in a prediction process (:mod:`cxrseg.serve`) started before
napari is imported, so that torch's import and the model's load happen beside napari's start
rather than after it; ``--in-process`` runs them in a worker of napari's process instead.

The same workspace is the plugin's first widget, "Review workspace"
(:class:`napari_cxrseg._widgets._workspace.ReviewWorkspace`):
``napari -w napari-cxrseg`` opens every dock this way and, in a viewer without layers, the
bundled sample's first case.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

__all__ = [
    "main",
    "default_data_root",
    "build_parser",
    "parse_size",
    "focus_region",
    "build_workspace",
    "open_data",
    "start_predictor_process",
    "DOCKS",
]


def default_data_root() -> Path:
    """The bundled ``sample_data/`` folder next to the package, if it holds images;
    otherwise three phantom cases written to a temporary folder."""
    here = Path(__file__).resolve().parent
    for cand in (here.parent / "sample_data", here / "sample_data"):
        if (cand / "images").is_dir() and any((cand / "images").iterdir()):
            return cand
    from cxrseg.phantom import write_phantom_dataset

    root = Path(tempfile.mkdtemp(prefix="cxrseg-phantoms-"))
    write_phantom_dataset(root, 3, seed=0, image_format="png", size=1024)
    return root


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cxrseg-gui",
        description="Open napari with the cxrseg review workspace (cases, predict, compare, review, correct).",
    )
    p.add_argument("--data", help="dataset folder (SCR layout) or an image file; default: the bundled sample")
    p.add_argument("--case", help="case to open first (default: the first)")
    p.add_argument("--model", help="model checkpoint (.safetensors or a training run folder); default: shipped")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument("--no-predict", action="store_true", help="do not predict the case on opening")
    p.add_argument("--in-process", action="store_true",
                   help="run the model in napari's process (default: in a prediction process started "
                        "with the window, which loads the model while napari starts)")
    p.add_argument("--postprocess", action="store_true",
                   help="clean the predicted masks (largest component, holes filled)")
    p.add_argument("--screenshot", metavar="PATH",
                   help="wait for the case (and its prediction), save a screenshot of the window, quit")
    p.add_argument("--size", default=None,
                   help="window size WxH (default: the screen's available area, at most 1680x1020)")
    p.add_argument("--focus", metavar="REGION",
                   help="zoom onto this region (its ground truth, else its prediction) and show its errors")
    p.add_argument("--preset", help="window/level preset of the image: auto, lung, soft tissue, bone, full")
    p.add_argument("--dock", action="append", default=[], metavar="NAME",
                   help="bring this dock's tab to the front (repeatable), e.g. 'Review queue'")
    p.add_argument("--quality", action="store_true",
                   help="review without ground truth: quality check and uncertainty maps in the Predict "
                        "dock (the worst region's map shown), the Review queue ranked by estimated quality")
    p.add_argument("--timings", action="store_true",
                   help="print when the window first ran its event loop and when the first prediction was shown "
                        "(wall-clock seconds since the epoch; benchmarks/bench_gui.py reads them)")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="with --screenshot: give up after this many seconds (default 600)")
    return p


#: (dock name, module, class, group): docks of one group are tabified; the first of each
#: group is raised. "compare" and "left" join "edit" on short screens (see _add_docks).
DOCKS = (
    ("Cases", "_cases", "CasesWidget", "browse"),
    ("Review queue", "_review", "ReviewWidget", "browse"),
    ("Training progression", "_progression", "ProgressionWidget", "browse"),
    ("Predict", "_predict", "PredictWidget", "edit"),
    ("Compare", "_compare", "CompareWidget", "compare"),
    ("Correct", "_correct", "CorrectWidget", "edit"),
    ("Fine-tune", "_finetune", "FinetuneWidget", "edit"),
    ("Display", "_display", "DisplayWidget", "left"),
)

#: Below this window height Compare is tabified with Predict instead of stacked below it.
TALL = 950


def parse_size(text: str | None, available: tuple[int, int] | None = None) -> tuple[int, int]:
    """``"WxH"`` -> ``(W, H)``; ``None``: the available screen area, at most 1680 x 1020.

    Raises
    ------
    ValueError
        Not of the form ``WxH`` with positive integers.
    """
    if text is None:
        aw, ah = available or (1680, 1020)
        return min(aw, 1680), min(ah, 1020)
    try:
        w, h = (int(x) for x in str(text).lower().split("x"))
    except ValueError:
        raise ValueError(f"--size {text!r}: expected WIDTHxHEIGHT in pixels, e.g. 1366x768") from None
    if w <= 0 or h <= 0:
        raise ValueError(f"--size {text!r}: width and height must be positive")
    return w, h


def _make_widget(viewer, module: str, cls_name: str):
    import importlib

    return getattr(importlib.import_module(f"napari_cxrseg._widgets.{module}"), cls_name)(viewer)


def _add_docks(viewer, *, height: int | None = None, docked: dict | None = None) -> dict:
    """Create the docks, wrapped in scroll areas, and lay them out; returns name -> widget.

    ``docked`` maps a dock name to ``(widget, QDockWidget)`` for a dock already in the
    window (the one napari made for the workspace contribution); it is laid out with the rest.
    """
    from qtpy.QtCore import Qt, QTimer

    from . import _shortcuts
    from ._widgets._scroll import scrollable

    qwin = viewer.window._qt_window
    height = int(height or qwin.height())
    docked = dict(docked or {})
    widgets, docks, first_of = {}, {}, {}
    for name, module, cls_name, group in DOCKS:
        if group in ("compare", "left") and height < TALL:
            group = "edit"  # a short screen: one more tab rather than a squeezed dock
        area = "left" if group == "left" else "right"
        tabify = group in first_of
        if name in docked:
            w, docks[name] = docked[name]
        else:
            try:
                w = _make_widget(viewer, module, cls_name)
            except Exception as exc:  # noqa: BLE001 - a broken optional dock must not stop the GUI
                print(f"cxrseg-gui: the {name} dock failed to start ({exc})", file=sys.stderr)
                continue
            holder = w if group == "left" else scrollable(w)  # the small left dock keeps its height
            docks[name] = viewer.window.add_dock_widget(holder, name=name, area=area, tabify=False)
        widgets[name] = w
        if tabify:
            qwin.tabifyDockWidget(docks[first_of[group]], docks[name])
        else:
            first_of[group] = name
        _shortcuts.bind_dock(viewer, w)
    if height < TALL and "Display" in widgets:
        from ._widgets._display import install_legend

        install_legend(viewer, font_size=7)  # a smaller legend on a small canvas

    def arrange() -> None:
        for name in first_of.values():
            docks[name].raise_()
        right = [docks[n] for g, n in first_of.items() if g != "left"]
        total_w, total_h = qwin.width(), qwin.height()
        if right:
            # the right column: a good third of the window (every IoU column of the Cases table)
            qwin.resizeDocks(right[:1], [max(420, int(total_w * 0.36))], Qt.Orientation.Horizontal)
            # on a short screen the review queue (8 rows and its buttons) gets the larger part
            shares = {"browse": 0.58, "edit": 0.42} if len(right) == 2 else {"browse": 0.36, "edit": 0.38,
                                                                               "compare": 0.26}
            sizes = [int(total_h * shares.get(g, 0.3)) for g, n in first_of.items() if g != "left"]
            qwin.resizeDocks(right, sizes, Qt.Orientation.Vertical)

    arrange()
    QTimer.singleShot(0, arrange)  # again once the window is shown (tabs and sizes exist then)
    return widgets


def focus_region(viewer, session, region: str, *, margin: float = 0.8) -> bool:
    """Zoom the canvas onto a region of the current case: its ground truth's bounding box,
    else its predicted mask's, with ``margin`` (a fraction of the box) around it. Returns
    whether the region was found."""
    import numpy as np

    from cxrseg.regions import canonical_region

    region = canonical_region(region)
    mask = (session.truth or {}).get(region)
    if mask is None or not np.any(mask):
        mask = (session.masks or {}).get(region)
    layer = session.get_layer("image")
    if mask is None or layer is None or not np.any(mask):
        return False
    rows, cols = np.nonzero(mask)
    lo = np.array([rows.min(), cols.min()], float)
    hi = np.array([rows.max(), cols.max()], float)
    box = (hi - lo + 1) * (1 + margin)
    viewer.reset_view()
    full = np.asarray(layer.data.shape[-2:], float)
    viewer.camera.zoom = viewer.camera.zoom * float(min(full / box))
    centre = layer.data_to_world((lo + hi) / 2)
    viewer.camera.center = tuple(float(c) for c in centre)
    return True


def build_workspace(viewer, *, model: str | None = None, device: str = "auto", predict: bool = True,
                    postprocess: bool = False, height: int | None = None, docked: dict | None = None,
                    warm: bool = True, predictor_process=None) -> dict:
    """Set up the session of ``viewer`` and add every dock, laid out; returns name -> widget.

    Parameters
    ----------
    viewer : napari.Viewer
    model : str, optional
        Checkpoint (``None``: the shipped model).
    device : str
    predict : bool
        Predict each case when it is loaded (if there is a model).
    postprocess : bool
        Clean the predicted masks.
    height : int, optional
        Window height the layout is made for (default: the window's).
    docked : dict, optional
        Docks already in the window (see :func:`_add_docks`).
    warm : bool
        Load the model in the background when predicting (:func:`_warm_model`); ``False``
        when the caller does that itself.
    predictor_process : cxrseg.serve.PredictorProcess, optional
        Runs the session's predictions (see :func:`start_predictor_process`).
    """
    from cxrseg.model import default_checkpoint_path

    from ._widgets._state import get_session

    session = get_session(viewer)
    session.set_model(model, device)
    if predictor_process is not None:
        session.use_predictor_process(predictor_process)
    session.postprocess = bool(postprocess)
    have_model = model is not None or default_checkpoint_path().is_file()
    session.auto_predict = have_model and bool(predict)
    if warm and session.auto_predict:
        _warm_model(model, device)
    return _add_docks(viewer, height=height, docked=docked)


def start_predictor_process(model: str | None, device: str):
    """Start a :class:`cxrseg.serve.PredictorProcess` for ``model`` on ``device``, or return
    ``None`` where it cannot run (not POSIX, no model file, the process would not start).

    Call it before ``import napari``: the child imports torch and loads the model on another
    core while napari starts and builds the window, and later runs every prediction of the
    workspace outside the GUI's process (benchmarks/README.md, "GUI cold start: a prediction
    process").
    """
    from cxrseg.model import default_checkpoint_path
    from cxrseg.serve import PredictorProcess, PredictorProcessError, supported

    if not supported() or (model is None and not default_checkpoint_path().is_file()):
        return None
    try:
        return PredictorProcess(model, device=device)
    except PredictorProcessError as exc:
        print(f"cxrseg-gui: {exc}; predicting in napari's process", file=sys.stderr)
        return None


def _warm_model(model: str | None, device: str) -> None:
    """With ``CXRSEG_WARM_MODEL=1``: import torch and load the model in a background
    thread from the next event-loop turn, while the first case is read and shown (the
    loaded predictor is cached; a failure here is reported by the prediction itself).

    Off by default: the import and the GUI thread's work take turns on the interpreter lock,
    so the first prediction came no sooner (benchmarks/README.md, "GUI cold start"). Call it
    when the event loop is about to run (``cxrseg-gui`` does, just before ``napari.run``): a
    timer due while napari still builds the window starts the import beside that work and
    shows the window later."""
    if os.environ.get("CXRSEG_WARM_MODEL", "0") != "1":
        return
    import threading

    def warm() -> None:
        try:
            from ._widgets._torch_env import guard_triton_import

            guard_triton_import()  # the viewer's GL context exists: keep triton out
            from cxrseg.predict import get_predictor

            get_predictor(model, device=device)
        except Exception:  # noqa: BLE001 - the prediction job reports the same error
            pass

    from qtpy.QtCore import QTimer

    QTimer.singleShot(0, lambda: threading.Thread(target=warm, name="cxrseg-warm-model", daemon=True).start())


def open_data(viewer, widgets: dict, root: str | Path, case: str | None = None) -> None:
    """Open a dataset folder or image file in the workspace and show ``case`` (default: the first)."""
    from ._widgets._samples import show_first_case
    from ._widgets._state import get_session

    session = get_session(viewer)

    def empty() -> None:
        print(f"cxrseg-gui: {root}: no case found", file=sys.stderr)

    show_first_case(session, case, on_empty=empty)
    if "Cases" in widgets:
        widgets["Cases"].open_root(str(root))
    else:
        session.open_dataset(root)


def _new_viewer(args):
    """The napari viewer sized by ``--size``; ``(viewer, (w, h))``, or ``(None, None)`` after
    reporting a bad ``--size`` (the viewer then closed)."""
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(title="napari-cxrseg")
    screen = QApplication.primaryScreen()
    avail = screen.availableGeometry() if screen is not None else None
    try:
        w, h = parse_size(args.size, (avail.width(), avail.height()) if avail is not None else None)
    except ValueError as exc:
        print(f"cxrseg-gui: {exc}", file=sys.stderr)
        viewer.close()
        return None, None
    viewer.window.resize(w, h)
    return viewer, (w, h)


def _apply_view_options(viewer, widgets: dict, args) -> bool:
    """``--preset`` and ``--focus``'s region in the Compare dock; False after reporting a bad
    value (the viewer then closed)."""
    if args.preset and "Display" in widgets:
        try:
            widgets["Display"].apply_preset(args.preset)  # later cases follow it
        except ValueError as exc:
            print(f"cxrseg-gui: --preset: {exc}", file=sys.stderr)
            viewer.close()
            return False
    if args.focus and "Compare" in widgets:
        from cxrseg.regions import REGIONS, canonical_region

        try:
            widgets["Compare"].err_region.setCurrentIndex(REGIONS.index(canonical_region(args.focus)))
        except (KeyError, ValueError) as exc:
            print(f"cxrseg-gui: --focus {args.focus!r}: {exc}", file=sys.stderr)
            viewer.close()
            return False
    return True


def _raise_docks_later(viewer, docks: list[str]) -> None:
    """Bring the ``--dock`` docks to the front once the window is shown."""
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QDockWidget

    def raise_docks() -> None:
        for d in viewer.window._qt_window.findChildren(QDockWidget):
            if d.windowTitle() in docks or d.objectName() in docks:
                d.raise_()

    QTimer.singleShot(50, raise_docks)


def _focus_once(viewer, session, region: str) -> None:
    """Zoom to ``region`` when the first case is predicted (or shown, without prediction)."""

    def focus_once(*_a) -> None:
        for sig in (session.prediction_changed, session.case_changed):
            try:
                sig.disconnect(focus_once)
            except (TypeError, ValueError, RuntimeError):
                pass
        focus_region(viewer, session, region)

    (session.prediction_changed if session.auto_predict else session.case_changed).connect(focus_once)


def _report_predictions(session) -> None:
    """Print a line for every prediction: the case, the model, the forward-pass time and
    the process it ran in."""

    def report(model_id) -> None:
        if model_id is not None:
            t = session.last_timing
            print(f"cxrseg-gui: {session.case_id} predicted by model {model_id} (model load "
                  f"{t.get('load_s', float('nan')):.2f} s, forward pass {t.get('predict_s', float('nan')):.2f} s, "
                  f"in {session.predicted_in})",
                  flush=True)

    session.prediction_changed.connect(report)


def _report_timings(session) -> None:
    """``--timings``: print the wall-clock time of the window's first event-loop turn (the
    window is on screen) and of the first prediction shown."""
    import time

    from qtpy.QtCore import QTimer

    def shown(model_id) -> None:
        if model_id is None:
            return
        session.prediction_changed.disconnect(shown)
        print(f"cxrseg-gui: timings: first prediction shown at {time.time():.3f}", flush=True)

    session.prediction_changed.connect(shown)
    QTimer.singleShot(0, lambda: print(f"cxrseg-gui: timings: window shown at {time.time():.3f}", flush=True))


def _schedule_screenshot(viewer, session, quality, args, state: dict) -> None:
    """``--screenshot``: save the window once the first case is ready (or after ``--timeout``,
    then with exit status 1) and close the viewer."""
    from qtpy.QtCore import QTimer

    out = Path(args.screenshot).expanduser()

    def shoot() -> None:
        if state["shot"]:
            return
        state["shot"] = True
        out.parent.mkdir(parents=True, exist_ok=True)
        viewer.screenshot(str(out), canvas_only=False, flash=False)
        print(f"cxrseg-gui: screenshot saved to {out}")
        viewer.close()

    def ready(*_a) -> None:
        # let the Compare dock's debounced metrics and the canvas settle, then shoot
        QTimer.singleShot(2500, shoot)

    if quality is not None:
        quality.emitted.connect(ready)
    elif session.auto_predict:
        session.prediction_changed.connect(ready)
        session.prediction_failed.connect(ready)
    else:
        session.case_changed.connect(ready)

    def give_up() -> None:
        if not state["shot"]:
            print(f"cxrseg-gui: nothing to screenshot after {args.timeout:.0f} s; saving what is shown",
                  file=sys.stderr)
            state["status"] = 1
            shoot()

    QTimer.singleShot(int(args.timeout * 1000), give_up)


def _wind_down(session) -> None:
    """After the event loop: let running workers end, then close the session."""
    # let running workers (a prediction, a review run) end before the interpreter does
    from napari.qt.threading import WorkerBase

    try:  # asks every worker to quit, waits up to 10 s
        WorkerBase.await_workers(10_000)
    except RuntimeError:
        pass
    session.close()


def main(argv: list[str] | None = None) -> int:
    """Run the GUI; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.screenshot:
        # no warning toasts (e.g. napari's PyQt5 deprecation notice) over the screenshot
        os.environ.setdefault("NAPARI_APPLICATION_GUI_NOTIFICATION_LEVEL", "error")
    root = Path(args.data).expanduser() if args.data else default_data_root()
    if not root.exists():
        print(f"cxrseg-gui: {root}: no such dataset folder or image file", file=sys.stderr)
        return 2
    proc = None if args.no_predict or args.in_process else start_predictor_process(args.model, args.device)
    try:
        return _main(args, root, proc)
    finally:
        if proc is not None:
            proc.close()  # (the session closed it already when the window closed)


def _main(args, root: Path, proc) -> int:
    import napari

    from ._widgets._state import get_session

    viewer, size = _new_viewer(args)
    if viewer is None:
        return 2
    w, h = size
    widgets = build_workspace(viewer, model=args.model, device=args.device, predict=not args.no_predict,
                              postprocess=args.postprocess, height=h, warm=False, predictor_process=proc)
    session = get_session(viewer)
    viewer.window.resize(w, h)  # the docks' sizes must not override --size
    if not _apply_view_options(viewer, widgets, args):
        return 2
    if args.quality and "Review queue" not in args.dock:
        args.dock.append("Review queue")
    if args.dock:
        _raise_docks_later(viewer, args.dock)

    state = {"status": 0, "shot": False}
    quality = _setup_quality(viewer, session, widgets) if args.quality else None
    if args.focus:
        _focus_once(viewer, session, args.focus)
    _report_predictions(session)
    if args.timings:
        _report_timings(session)
    open_data(viewer, widgets, root, args.case)
    if args.screenshot:
        _schedule_screenshot(viewer, session, quality, args, state)
    if session.auto_predict and session.predictor_process is None:
        _warm_model(args.model, args.device)  # from the event loop's first turn: the window first
    napari.run()
    _wind_down(session)
    return state["status"]


def _setup_quality(viewer, session, widgets: dict):
    """``--quality``: tick the quality check and maps, rank the review queue by estimate and
    run it once the cases are open; show the worst region's uncertainty map. Returns a
    object whose ``emitted`` signal fires when both the case's assessment and the queue are done."""
    from psygnal import Signal

    class _Ready:
        emitted = Signal()

    done = _Ready()
    panel = getattr(widgets.get("Predict"), "quality", None)
    review = widgets.get("Review queue")
    state = {"assessed": panel is None, "ranked": review is None}

    def check() -> None:
        if state["assessed"] and state["ranked"]:
            done.emitted.emit()

    if panel is not None:
        predict = widgets["Predict"]
        # contours over the film and no heatmaps: the uncertainty map stays readable
        predict.heat_box.setChecked(False)
        predict.contour_box.setChecked(True)
        panel.set_enabled(True, maps=True)

        def assessed(case_id: str) -> None:
            worst = panel.worst_region()
            from ._widgets._quality import layer_name

            if worst is not None and layer_name(case_id, worst) in viewer.layers:
                layer = viewer.layers[layer_name(case_id, worst)]
                layer.visible = True
                viewer.layers.selection.active = layer  # its controls in the layer panel
            from qtpy.QtWidgets import QScrollArea

            area = panel.parentWidget()
            while area is not None and not isinstance(area, QScrollArea):
                area = area.parentWidget()
            if area is not None:  # the dock scrolls: bring the estimates into view
                area.ensureWidgetVisible(panel.table)
            n = len({c.message for c in panel.report.failing}) if panel.report is not None else 0
            print(f"cxrseg-gui: {case_id} quality checked: {n} failing check(s)"
                  + (f", uncertainty of the {worst} shown" if worst else ""), flush=True)
            state["assessed"] = True
            check()

        panel.assessed.connect(assessed)
    if review is not None:
        review.set_score_mode("estimate")

        def run_queue(_root) -> None:
            session.dataset_changed.disconnect(run_queue)
            w = review.run()
            if w is None:
                state["ranked"] = True
                return

            def ranked() -> None:
                state["ranked"] = True
                check()

            w.finished.connect(ranked)

        session.dataset_changed.connect(run_queue)
    return done


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
