"""The layer pool: the one module that uses napari internals. A napari upgrade that changes
them fails here first (each internal it relies on is exercised below)."""

from __future__ import annotations

import numpy as np
from _gui_fixtures import _isolated_home, open_case, phantom_root, tiny_ckpt, wait_worker  # noqa: F401


def test_internals_the_pool_relies_on_exist(make_napari_viewer):
    viewer = make_napari_viewer()
    assert hasattr(viewer.layers, "_activate_on_insert")
    assert callable(getattr(viewer, "_on_layers_change", None))
    labels = viewer.add_labels(np.zeros((8, 8), np.uint8))
    assert callable(getattr(labels, "_reset_history", None))
    assert callable(getattr(labels, "_update_thumbnail", None))
    qt = viewer.window._qt_viewer
    assert labels in qt.canvas.layer_to_visual
    assert hasattr(qt.layers.model(), "setFilterRegularExpression")
    assert hasattr(viewer.window, "_qt_window")


def test_parked_layers_are_hidden_and_never_selected(make_napari_viewer, qtbot, phantom_root, tiny_ckpt):
    from napari_cxrseg._widgets._layer_pool import PARKED_PREFIX
    from napari_cxrseg._widgets._state import get_session

    viewer = make_napari_viewer()
    s = get_session(viewer)
    s.set_model(str(tiny_ckpt), "cpu")
    open_case(qtbot, s, phantom_root, "PHANTOM001")
    wait_worker(qtbot, s.predict())
    pred = s.get_layer("prediction")
    viewer.layers.selection.active = pred
    wait_worker(qtbot, s.load_case("PHANTOM002"))
    parked = [ly for ly in viewer.layers if ly.name.startswith(PARKED_PREFIX)]
    assert pred in parked and len(parked) == 6  # 5 heatmaps and the prediction
    assert not set(parked) & set(viewer.layers.selection)
    listed = s.pool.listed_names()
    assert listed == ["PHANTOM002 ground truth", "PHANTOM002"]
    # claimed again by the next prediction: listed again, under the case's name
    wait_worker(qtbot, s.predict())
    listed = s.pool.listed_names()
    assert "PHANTOM002 prediction" in listed and not [n for n in listed if n.startswith(PARKED_PREFIX)]
    assert len(listed) == len(viewer.layers)


def test_one_extent_update_runs_the_dims_update_once(make_napari_viewer, monkeypatch):
    from napari_cxrseg._widgets._layer_pool import LayerPool

    viewer = make_napari_viewer()
    a = viewer.add_image(np.zeros((8, 8), np.float32))
    b = viewer.add_image(np.zeros((8, 8), np.float32))
    pool = LayerPool(lambda: viewer)
    calls = []
    orig = viewer._on_layers_change
    monkeypatch.setattr(viewer, "_on_layers_change", lambda *a: calls.append(1) or orig(*a))
    with pool.one_extent_update():
        a.data = np.zeros((16, 16), np.float32)
        b.data = np.zeros((16, 16), np.float32)
    assert calls == [1]
    assert viewer.layers.extent.world[1][0] >= 15


def test_in_place_write_reaches_the_canvas(make_napari_viewer):
    from napari_cxrseg._widgets._layer_pool import LayerPool

    viewer = make_napari_viewer()
    pool = LayerPool(lambda: viewer)
    buf = np.zeros((8, 8), np.float32)
    layer = viewer.add_image(buf, contrast_limits=(0, 1))
    pool.adopt(layer, buf)
    assert pool.own_buffer(layer) is buf
    assert pool.write_in_place(layer, np.ones((8, 8), np.float32))
    node = viewer.window._qt_viewer.canvas.layer_to_visual[layer].node
    assert np.asarray(node._data).min() == 1.0
    assert not pool.write_in_place(layer, np.ones((4, 4), np.float32))  # other shape: not in place


def test_closed_viewer_is_noticed(make_napari_viewer, qtbot):
    from napari_cxrseg._widgets._layer_pool import viewer_closed
    from napari_cxrseg._widgets._state import get_session

    viewer = make_napari_viewer()
    s = get_session(viewer)
    assert not viewer_closed(viewer) and s.alive()
    viewer.close()
    assert viewer_closed(viewer) and not s.alive()
    qtbot.waitUntil(lambda: s.closed, timeout=5000)
