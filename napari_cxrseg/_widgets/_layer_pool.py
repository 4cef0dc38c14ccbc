"""Layer recycling, in-place display updates, and every use of napari's private internals.

Creating a napari layer costs far more GUI time than swapping its data (figures:
benchmarks/README.md, "GUI notes"), so a case's layers are reused for the next case: image
and ground truth at once, prediction overlays *parked* (emptied, renamed ``"(idle) cxrseg ..."``, hidden from
the layer list and never selected) until the next prediction claims them.

napari has no public API for the few things this needs, so this module is the only place
in the plugin that touches napari internals (a napari upgrade breaks this file and its
test, ``tests/test_widgets_layer_pool.py``, nothing else):

* ``LayerList._activate_on_insert``: add an overlay without selecting it;
* ``ViewerModel._on_layers_change``: one dims update for several layer swaps;
* ``Labels._reset_history``: forget undo history of another case's labels;
* ``Layer._histogram``, ``Layer._slice``, ``Layer._update_thumbnail``: in-place writes;
* ``Window._qt_viewer.canvas.layer_to_visual``: re-upload a texture written in place;
* ``Window._qt_viewer.layers`` (the layer-list view): hide parked layers;
* ``Window._qt_window``: know when the viewer's window closes.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable

import numpy as np
from qtpy.QtCore import QEvent, QObject, QTimer

__all__ = ["LayerPool", "PARKED_PREFIX", "viewer_closed", "watch_close"]

#: Name prefix of a parked layer (hidden from the layer list by :meth:`LayerPool.hide_parked`).
PARKED_PREFIX = "(idle) cxrseg"


def _md(layer) -> dict:
    return dict(layer.metadata.get("cxrseg") or {})


def _same_view(a, b) -> bool:
    """``a`` and ``b`` are the same numpy view of the same memory (O(1), unlike
    ``np.shares_memory``)."""
    if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
        return False
    return (a.shape == b.shape and a.dtype == b.dtype and a.strides == b.strides
            and a.__array_interface__["data"][0] == b.__array_interface__["data"][0])


def viewer_closed(viewer) -> bool:
    """Whether ``viewer`` is gone or its window was closed (``Window.close`` drops ``_qt_window``)."""
    if viewer is None:
        return True
    window = getattr(viewer, "_window", None)
    if window is None:  # a viewer model without a window (headless use)
        return False
    return not hasattr(window, "_qt_window")


class _CloseWatcher(QObject):
    """Calls back once the viewer's main window has accepted a close event."""

    def __init__(self, viewer, window, callback: Callable[[], None]):
        super().__init__(window)
        self._callback = callback
        self._viewer = weakref.ref(viewer)
        self._window = weakref.ref(window)

    def eventFilter(self, obj, event):  # noqa: N802 - Qt API
        if event.type() == QEvent.Type.Close:
            # The close may still be refused (a confirmation dialog): check once it was handled,
            # from a plain function (this watcher dies with the window).
            viewer, window, callback = self._viewer, self._window, self._callback
            QTimer.singleShot(0, lambda: _closed_check(viewer, window, callback))
        return False


def _closed_check(viewer_ref, window_ref, callback: Callable[[], None]) -> None:
    w = window_ref()
    try:
        closing = w is None or not w.isVisible() or viewer_closed(viewer_ref())
    except RuntimeError:  # the C++ window is gone
        closing = True
    if closing:
        callback()


def watch_close(viewer, callback: Callable[[], None]) -> None:
    """Call ``callback()`` once the viewer's window is closed (by the user or by code)."""
    window = getattr(getattr(viewer, "_window", None), "_qt_window", None)
    if window is None:
        return
    watcher = _CloseWatcher(viewer, window, callback)
    window.installEventFilter(watcher)


class LayerPool:
    """The session's layers: creation, recycling (park / claim), in-place data updates.

    Parameters
    ----------
    viewer_ref : callable
        Returns the viewer (``None`` once it is gone).
    """

    def __init__(self, viewer_ref: Callable[[], object]):
        self._viewer_ref = viewer_ref
        #: heatmap / prediction layer -> the array the session gave it (written in place; see own)
        self._buffers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._stale_thumbnails: weakref.WeakSet = weakref.WeakSet()
        self._list_filtered = False

    @property
    def viewer(self):
        return self._viewer_ref()

    # ------------------------------------------------------------------ creation
    def add(self, data, kwargs: dict, layer_type: str, *, kind: str, case_id: str | None,
            region: str | None = None):
        """Create a layer tagged ``metadata["cxrseg"] = {kind, case_id, region}`` and add it.

        Overlays (heatmaps, errors) do not take the selection: each selection change
        rebuilds napari's layer controls."""
        from napari.layers import Layer

        v = self.viewer
        kwargs = dict(kwargs)
        md = dict(kwargs.get("metadata") or {})
        ours = dict(md.get("cxrseg") or {})
        ours.update({"kind": kind, "case_id": case_id})
        if region is not None:
            ours["region"] = region
        md["cxrseg"] = ours
        kwargs["metadata"] = md
        layer = Layer.create(data, kwargs, layer_type)
        overlay = kind in ("heatmap", "errors")
        activate = getattr(v.layers, "_activate_on_insert", None)
        if overlay and activate is not None:
            v.layers._activate_on_insert = False
        try:
            v.add_layer(layer)
        finally:
            if overlay and activate is not None:
                v.layers._activate_on_insert = activate
        self.hide_parked()
        return layer

    @contextlib.contextmanager
    def one_extent_update(self):
        """Swap the data of several layers with one update of the viewer's dims.

        napari recomputes the extent of every layer and revalidates its dims after each
        layer's ``data`` or ``scale`` change (``ViewerModel._on_layers_change``). Inside this
        block that callback is held back for the existing layers and run once at the end -- if
        any of them changed its data or scale (in-place writes change neither) or layers were
        added or removed."""
        v = self.viewer
        cb = getattr(v, "_on_layers_change", None)
        if cb is None:
            yield
            return

        def state():
            return [(ly, id(ly.data), tuple(ly.scale)) for ly in v.layers]

        before = state()
        emitters = [getattr(ly.events, e) for ly, _, _ in before for e in ("data", "scale") if hasattr(ly.events, e)]
        for em in emitters:
            em.block(cb)
        try:
            yield
        finally:
            for em in emitters:
                em.unblock(cb)
            if state() != before:
                cb()

    # ------------------------------------------------------------------ park / claim
    @staticmethod
    def is_parked(layer) -> bool:
        return bool(_md(layer).get("parked"))

    def park(self, layer) -> None:
        """Empty a layer, take it out of the selection and hide it until :meth:`claim`."""
        md = _md(layer)
        md.update(parked=True, case_id=None)
        md.pop("masks", None)
        # emptied, not hidden (zeros add nothing / are transparent): showing it again costs a redraw
        layer.metadata = {**layer.metadata, "cxrseg": md}
        self.forget_history(layer)
        if not self.zero_in_place(layer):
            layer.data = np.zeros((1, 1), dtype=layer.data.dtype)
        v = self.viewer
        if v is not None and layer in v.layers.selection:
            v.layers.selection.discard(layer)
        layer.name = f"{PARKED_PREFIX} {md.get('kind')}" + (f" {md['region']}" if md.get("region") else "")
        self.hide_parked()

    def claim(self, name: str, kind: str, region: str | None, case_id: str):
        """The layer called ``name``, else a parked one of that kind renamed for it, else ``None``."""
        v = self.viewer
        if name in v.layers:
            return v.layers[name]
        for ly in v.layers:
            md = _md(ly)
            if md.get("parked") and md.get("kind") == kind and (
                    kind not in ("heatmap", "edit") or md.get("region") == region):
                md.update(parked=False, case_id=case_id)
                ly.metadata = {**ly.metadata, "cxrseg": md}
                ly.name = name
                return ly
        return None

    def reuse(self, layer, data, kwargs: dict, *, kind: str, case_id: str) -> None:
        """Give an existing layer a new case's data, name, scale and metadata."""
        md = dict(kwargs.get("metadata") or {})
        ours = dict(md.get("cxrseg") or {})
        ours.update({"kind": kind, "case_id": case_id, "parked": False})
        md["cxrseg"] = ours
        layer.metadata = md
        scale = tuple(float(x) for x in kwargs.get("scale", (1.0, 1.0)))
        if tuple(layer.scale) != scale:
            layer.scale = scale
        layer.data = data
        layer.name = kwargs["name"]

    def hide_parked(self) -> None:
        """Keep parked layers out of the layer-list view (once per viewer: a filter on the
        view's proxy model, so renaming a layer hides or shows its row)."""
        if self._list_filtered:
            return
        v = self.viewer
        try:
            view = v.window._qt_viewer.layers
            proxy = view.model()
        except (AttributeError, RuntimeError):
            return
        if not hasattr(proxy, "setFilterRegularExpression"):
            return
        from qtpy.QtCore import QRegularExpression, Qt

        proxy.setFilterRole(Qt.ItemDataRole.DisplayRole)
        proxy.setFilterRegularExpression(QRegularExpression("^(?!" + QRegularExpression.escape(PARKED_PREFIX) + ")"))
        self._list_filtered = True

    def listed_names(self) -> list[str]:
        """Names shown in the layer-list view, top first (``[]`` without a window)."""
        v = self.viewer
        try:
            model = v.window._qt_viewer.layers.model()
        except (AttributeError, RuntimeError):
            return []
        return [str(model.data(model.index(i, 0))) for i in range(model.rowCount())]

    # ------------------------------------------------------------------ own buffers
    # A heatmap or prediction layer owns one array and later data is copied into it: then only
    # a texture upload is needed, not napari's costly ``data`` setter (benchmarks/README.md).
    def own_buffer(self, layer) -> np.ndarray | None:
        buf = self._buffers.get(layer)
        return buf if buf is not None and layer.data is buf else None

    def own(self, layer, data) -> None:
        """Give ``layer`` the array ``data`` (which nobody else holds) as its own buffer."""
        layer.data = data
        self.adopt(layer, data)

    def adopt(self, layer, data) -> None:
        """Record ``data`` (given to ``layer``) as the layer's own buffer, if napari kept that very array."""
        if layer.data is data:
            self._buffers[layer] = data

    def write_in_place(self, layer, new: np.ndarray) -> bool:
        """Copy ``new`` into the layer's own buffer and show it; ``False`` (nothing done)
        if the layer has no own buffer of that shape and dtype."""
        buf = self.own_buffer(layer)
        if buf is None or buf.shape != new.shape or buf.dtype != new.dtype:
            return False
        np.copyto(buf, new)
        self.redisplay(layer)
        return True

    @staticmethod
    def forget_history(layer) -> None:
        """Drop a Labels layer's undo history: it now holds another case's labels, and undoing
        an old stroke would write it into them (napari's ``data`` setter keeps the history)."""
        reset = getattr(layer, "_reset_history", None)
        if reset is not None:
            reset()

    def set_heat_data(self, layer, p: np.ndarray) -> None:
        if not self.write_in_place(layer, p):
            self.own(layer, np.array(p, dtype=np.float32, copy=True))

    def zero_in_place(self, layer) -> bool:
        buf = self.own_buffer(layer)
        if buf is None:
            return False
        buf.fill(0)
        self.redisplay(layer)
        return True

    def redisplay(self, layer) -> None:
        """Show a layer whose array was written in place."""
        hist = vars(layer).get("_histogram")  # napari's contrast histogram, once someone opened it
        invalidate = getattr(hist, "_invalidate", None)
        if invalidate is not None:  # its cache of the whole array is stale (napari's refresh keeps it too)
            invalidate()
        if not self.reupload(layer):
            try:
                layer.refresh(thumbnail=False, highlight=False, extent=False)
            except TypeError:  # pragma: no cover - a napari without these keywords
                layer.refresh()
                return
        self._stale_thumbnails.add(layer)

    def reupload(self, layer) -> bool:
        """If the canvas visual of ``layer`` holds the layer's array itself (same memory,
        shape and strides), tell vispy to upload it again; ``False`` if it does not (a
        contour view, a converted dtype, no canvas, another napari) -- then the caller
        refreshes the layer through napari."""
        v = self.viewer
        try:
            node = v.window._qt_viewer.canvas.layer_to_visual[layer].node
            shown = node._data
        except (AttributeError, KeyError, TypeError, RuntimeError):
            return False
        data = layer.data
        if not (isinstance(shown, np.ndarray) and isinstance(data, np.ndarray) and _same_view(shown, data)):
            return False
        if getattr(layer, "_slice", None) is not None and not _same_view(getattr(layer._slice.image, "raw", None),
                                                                          data):
            return False
        node.set_data(shown)
        return True

    def schedule_thumbnails(self) -> None:
        """Update the thumbnails left stale by in-place writes on a later event-loop turn,
        once the layers a user waits for are shown."""
        if self._stale_thumbnails:
            QTimer.singleShot(0, self._update_thumbnails)

    def _update_thumbnails(self) -> None:
        layers, self._stale_thumbnails = list(self._stale_thumbnails), weakref.WeakSet()
        for ly in layers:
            update = getattr(ly, "_update_thumbnail", None)
            if update is not None:
                update()
