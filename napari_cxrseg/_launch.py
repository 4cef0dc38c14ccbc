"""``cxrseg-gui``: napari with the cxrseg docks, a case loaded and the model warmed up.

    cxrseg-gui                          # the bundled sample_data/ (or fresh phantoms)
    cxrseg-gui --data /path/to/jsrt-scr --case JPCLN001
    cxrseg-gui --data RG1_UNCR.dcm      # a single image (no ground truth)
    cxrseg-gui --screenshot shot.png    # wait for the layers and the prediction, save, quit

The docks (Cases | Review queue | Training progression, Predict | Correct & fine-tune,
Compare) are tabified on the right. The first case (or ``--case``) is loaded and,
unless ``--no-predict`` or the model is missing, predicted in a worker -- which also loads
and warms up the model for the next Run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

__all__ = ["main", "default_data_root", "build_parser"]


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
    p.add_argument("--postprocess", action="store_true",
                   help="clean the predicted masks (largest component, holes filled)")
    p.add_argument("--screenshot", metavar="PATH",
                   help="wait for the case (and its prediction), save a screenshot of the window, quit")
    p.add_argument("--size", default="1680x1020", help="window size WxH (default 1680x1020)")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="with --screenshot: give up after this many seconds (default 600)")
    return p


def _add_docks(viewer) -> dict:
    from ._widgets._cases import CasesWidget
    from ._widgets._compare import CompareWidget
    from ._widgets._predict import PredictWidget
    from ._widgets._progression import ProgressionWidget
    from ._widgets._review import ReviewWidget

    try:
        from ._widgets._correct import CorrectWidget
    except Exception as exc:  # noqa: BLE001 - a broken optional dock must not stop the GUI
        print(f"cxrseg-gui: the Correct & fine-tune dock is unavailable ({exc})", file=sys.stderr)
        CorrectWidget = None  # noqa: N806

    plan = [
        ("Cases", CasesWidget, False),
        ("Review queue", ReviewWidget, True),
        ("Training progression", ProgressionWidget, True),
        ("Predict", PredictWidget, False),
        ("Correct & fine-tune", CorrectWidget, True),
        ("Compare", CompareWidget, False),
    ]
    widgets, docks = {}, {}
    for name, cls, tabify in plan:
        if cls is None:
            continue
        try:
            w = cls(viewer)
        except Exception as exc:  # noqa: BLE001
            print(f"cxrseg-gui: the {name} dock failed to start ({exc})", file=sys.stderr)
            continue
        widgets[name] = w
        docks[name] = viewer.window.add_dock_widget(w, name=name, area="right", tabify=tabify)
    from qtpy.QtCore import QTimer

    def show_first_tabs() -> None:
        for name in ("Cases", "Predict", "Compare"):
            if name in docks:
                docks[name].raise_()

    show_first_tabs()
    QTimer.singleShot(0, show_first_tabs)  # again once the window is shown (tabs exist then)
    return widgets


def main(argv: list[str] | None = None) -> int:
    """Run the GUI; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.screenshot:
        # no warning toasts (e.g. napari's PyQt5 deprecation notice) over the screenshot
        import os

        os.environ.setdefault("NAPARI_APPLICATION_GUI_NOTIFICATION_LEVEL", "error")
    import napari
    from qtpy.QtCore import QTimer

    from cxrseg.model import default_checkpoint_path

    from ._widgets._state import get_session

    root = Path(args.data).expanduser() if args.data else default_data_root()
    if not root.exists():
        print(f"cxrseg-gui: {root}: no such dataset folder or image file", file=sys.stderr)
        return 2
    viewer = napari.Viewer(title="napari-cxrseg")
    try:
        w, h = (int(x) for x in args.size.lower().split("x"))
        viewer.window.resize(w, h)
    except (ValueError, AttributeError):
        pass
    session = get_session(viewer)
    session.set_model(args.model, args.device)
    session.postprocess = bool(args.postprocess)
    have_model = args.model is not None or default_checkpoint_path().is_file()
    session.auto_predict = have_model and not args.no_predict
    widgets = _add_docks(viewer)

    state = {"status": 0, "shot": False}

    def first_case(_root) -> None:
        session.dataset_changed.disconnect(first_case)
        ids = session.case_ids
        target = args.case or (ids[0] if ids else None)
        if target is None:
            print(f"cxrseg-gui: {root}: no case found", file=sys.stderr)
            return
        session.load_case(target)

    session.dataset_changed.connect(first_case)

    def report(model_id) -> None:
        if model_id is not None:
            t = session.last_timing.get("predict_s", float("nan"))
            print(f"cxrseg-gui: {session.case_id} predicted by model {model_id} (forward pass {t:.2f} s)",
                  flush=True)

    session.prediction_changed.connect(report)
    if "Cases" in widgets:
        widgets["Cases"].open_root(str(root))
    else:
        session.open_dataset(root)

    if args.screenshot:
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

        if session.auto_predict:
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

    napari.run()
    # let running workers (a prediction, a review run) end before the interpreter does
    from napari.qt.threading import WorkerBase

    try:  # asks every worker to quit, waits up to 10 s
        WorkerBase.await_workers(10_000)
    except RuntimeError:
        pass
    session.close()
    return state["status"]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
