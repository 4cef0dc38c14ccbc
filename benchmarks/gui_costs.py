"""What single napari operations cost on the GUI thread (run under a display).

    xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python benchmarks/gui_costs.py

Figures behind the design choices of the docks (benchmarks/README.md, "GUI notes"):
creating an Image layer against replacing its data (napari's ``data`` setter), refreshing
it after an in-place write, and the texture re-upload alone (``LayerPool.write_in_place``);
changing the selected layer; showing a hidden layer again; a Labels layer's data setter
with contours on and off. Each is timed for the call, then with one event-loop turn after
it (the redraw). Medians of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np


def _median_ms(fn, repeats: int, app=None) -> tuple[float, float]:
    """(call, call + one event-loop turn) in ms, medians of ``repeats``."""
    call, turn = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        t1 = time.perf_counter()
        if app is not None:
            app.processEvents()
        t2 = time.perf_counter()
        call.append(t1 - t0)
        turn.append(t2 - t0)
    return statistics.median(call) * 1000, statistics.median(turn) * 1000


def layers(repeats: int, side: int, labels_side: int) -> None:
    import weakref

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_cxrseg._widgets._layer_pool import LayerPool

    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    rng = np.random.default_rng(0)
    maps = [rng.random((side, side), dtype=np.float32) for _ in range(2)]
    base = viewer.add_image(maps[0].copy(), name="base")
    app.processEvents()
    rows = []
    k = [0]

    def set_data() -> None:
        k[0] += 1
        base.data = maps[k[0] % 2].copy()

    rows.append(("Image data setter (new array)", *_median_ms(set_data, repeats, app)))

    def refresh() -> None:
        k[0] += 1
        np.copyto(base.data, maps[k[0] % 2])
        base.refresh()

    rows.append(("in-place write + layer.refresh()", *_median_ms(refresh, repeats, app)))

    pool = LayerPool(weakref.ref(viewer))
    buf = maps[0].copy()
    pool.own(base, buf)
    app.processEvents()

    def in_place() -> None:
        k[0] += 1
        assert pool.write_in_place(base, maps[k[0] % 2])

    rows.append(("in-place write + texture re-upload", *_median_ms(in_place, repeats, app)))

    other = viewer.add_image(maps[1].copy(), name="other", blending="additive")
    app.processEvents()

    def select() -> None:
        k[0] += 1
        viewer.layers.selection.active = base if k[0] % 2 else other

    rows.append(("change the selected layer", *_median_ms(select, repeats, app)))

    def hide_show() -> None:
        other.visible = False
        app.processEvents()
        other.visible = True

    rows.append(("show a hidden layer again", *_median_ms(hide_show, repeats, app)))

    labels = np.zeros((labels_side, labels_side), np.uint8)
    q = labels_side // 4
    labels[q: 3 * q, q: 2 * q] = 1
    labels[q: 3 * q, 2 * q + 8: 3 * q] = 2
    lab = viewer.add_labels(labels.copy(), name="labels")
    app.processEvents()
    for contour in (0, 2):
        lab.contour = contour
        app.processEvents()

        def set_labels() -> None:
            lab.data = labels.copy()

        name = f"Labels {labels_side}^2 data setter, contour={contour}"
        rows.append((name, *_median_ms(set_labels, repeats, app)))

    # last, and the new layers stay: removing several, then redrawing, crashed Mesa's llvmpipe here
    def create() -> None:
        viewer.add_image(maps[1].copy(), name="new", blending="additive")

    rows.append(("create an Image layer", *_median_ms(create, repeats, app)))

    print(f"{side}x{side} float32 Image layers, median of {repeats} (ms)")
    print(f"    {'operation':<44} {'call':>8} {'+ redraw':>9}")
    for name, c, t in rows:
        print(f"    {name:<44} {c:8.1f} {t:9.1f}")
    viewer.close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--side", type=int, default=1024, help="image side (default 1024)")
    p.add_argument("--labels-side", type=int, default=2048, help="Labels layer side (default 2048)")
    args = p.parse_args(argv)
    import os

    print(f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    layers(args.repeats, args.side, args.labels_side)
    return 0


if __name__ == "__main__":
    sys.exit(main())
