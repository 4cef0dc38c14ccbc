"""Display dock: window/level of the radiograph, the colour legend, the patient's side.

* Every case opens with a window/level computed from its own histogram
  (:func:`cxrseg.display.auto_window`: percentiles of the pixels inside the body), with
  the preset last chosen (auto, lung, soft tissue, bone, full), so "bone" shows the
  clavicles on every image.
* The **window** and **level** sliders change the contrast of the case's image layer
  whatever layer is selected (no need to select the image in the layer list first).
* The legend names the colours of the regions, of the false positives/negatives and of
  the ground-truth outline (:mod:`napari_cxrseg._colors`); a help line lists the keys
  (:mod:`napari_cxrseg._shortcuts`).
* "R" and "L" markers on the canvas corners name the patient's side: the image's left is
  the patient's right.
"""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QGridLayout,
    QLabel,
    QPushButton,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from cxrseg.display import PRESET_HELP, PRESETS, auto_window, limits_to_window, window_to_limits

from .._shortcuts import help_text
from ._state import get_session

__all__ = ["DisplayWidget", "install_side_markers", "install_legend", "SIDE_MARKERS", "legend_entries"]

#: Canvas overlay name -> (text, canvas corner): the image's left is the patient's right.
SIDE_MARKERS = {"cxrseg_side_right": ("R", "top_left"), "cxrseg_side_left": ("L", "top_right")}

#: Slider steps over the image's grey-value range.
_STEPS = 1000


def install_side_markers(viewer, *, visible: bool = True) -> list:
    """Put "R" (canvas top left) and "L" (top right) markers on the canvas; returns them.

    Canvas overlays, not layers: they stay in the corners whatever the zoom, and the
    layer list does not show them. Installing twice keeps one pair.
    """
    from napari.components.overlays import TextOverlay

    overlays = viewer.canvas.overlays
    out = []
    for key, (text, corner) in SIDE_MARKERS.items():
        ov = overlays.get(key) if hasattr(overlays, "get") else None
        if ov is None:
            ov = TextOverlay(text=text, position=corner, font_size=18, color=(1.0, 1.0, 0.4, 1.0),
                             box=True, visible=visible)
            overlays[key] = ov
        ov.visible = visible
        out.append(ov)
    return out


def legend_entries() -> list[tuple[str, tuple]]:
    """``(text, rgba)`` of the canvas legend, top to bottom."""
    from cxrseg.regions import REGIONS

    from .._colors import ERROR_COLORS, GT_COLOR, REGION_COLORS

    short = {"heart": "heart", "left_clavicle": "L clavicle", "right_clavicle": "R clavicle",
             "left_lung": "L lung", "right_lung": "R lung"}
    out = [(f"\u25a0 {short[r]}", REGION_COLORS[r]) for r in REGIONS]
    out += [("\u25a0 false positive", ERROR_COLORS["fp"]), ("\u25a0 false negative", ERROR_COLORS["fn"]),
            ("\u25a1 ground truth", GT_COLOR)]
    return out


def install_legend(viewer, *, visible: bool = True, font_size: float | None = None) -> list:
    """A colour legend in the canvas's bottom-right corner (one text overlay per entry,
    napari stacks them); returns the overlays. Installing twice keeps one legend."""
    from napari.components.overlays import TextOverlay

    overlays = viewer.canvas.overlays
    out = []
    # napari stacks overlays of one corner from the corner outwards: add bottom first
    for i, (text, color) in reversed(list(enumerate(legend_entries()))):
        key = f"cxrseg_legend_{i}"
        ov = overlays.get(key) if hasattr(overlays, "get") else None
        if ov is None:
            ov = TextOverlay(text=text, position="bottom_right", font_size=font_size or 9, color=color,
                             box=True, visible=visible)
            overlays[key] = ov
        ov.visible = visible
        if font_size is not None:
            ov.font_size = font_size
        out.append(ov)
    return out[::-1]


class DisplayWidget(QWidget):
    """Dock widget of the radiograph's window/level, the legend and the side markers."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = s = get_session(napari_viewer)
        self.preset = "auto"
        self._range = (0.0, 1.0)
        self._updating = False

        self.preset_group = QButtonGroup(self)
        self.preset_group.setExclusive(True)
        self.preset_buttons: dict[str, QPushButton] = {}
        presets = QGridLayout()
        presets.setSpacing(2)
        for i, name in enumerate(PRESETS):
            b = QPushButton(name)
            b.setCheckable(True)
            b.setToolTip(f"window/level preset: {PRESET_HELP[name]}")
            b.clicked.connect(lambda _c=False, n=name: self.apply_preset(n))
            self.preset_group.addButton(b)
            self.preset_buttons[name] = b
            presets.addWidget(b, i // 3, i % 3)
        self.preset_buttons["auto"].setChecked(True)

        self.width_slider = QSlider(Qt.Orientation.Horizontal)
        self.level_slider = QSlider(Qt.Orientation.Horizontal)
        for sl in (self.width_slider, self.level_slider):
            sl.setRange(1 if sl is self.width_slider else 0, _STEPS)
            sl.valueChanged.connect(self._on_slider)
        self.width_slider.setToolTip("window width: narrower = more contrast")
        self.level_slider.setToolTip("window level: the grey value shown mid-grey")
        self.values = QLabel("")
        grid = QGridLayout()
        grid.addWidget(QLabel("window"), 0, 0)
        grid.addWidget(self.width_slider, 0, 1)
        grid.addWidget(QLabel("level"), 1, 0)
        grid.addWidget(self.level_slider, 1, 1)
        grid.addWidget(self.values, 2, 0, 1, 2)

        self.side_box = QCheckBox("R/L markers on the canvas")
        self.side_box.setToolTip("the patient's right (R) is on the image's left")
        self.side_box.setChecked(True)
        self.side_box.toggled.connect(lambda on: install_side_markers(self.viewer, visible=bool(on)))
        self.legend_box = QCheckBox("colour legend on the canvas")
        self.legend_box.setChecked(True)
        self.legend_box.toggled.connect(lambda on: install_legend(self.viewer, visible=bool(on)))
        self.legend_box.setToolTip(legend_text())
        # explicit lines, no word wrap: a wrapped label under-reports its height in a dock
        self.help = QLabel(_help_lines())
        self.help.setToolTip(help_text())

        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addLayout(presets)
        lay.addLayout(grid)
        lay.addWidget(self.side_box)
        lay.addWidget(self.legend_box)
        lay.addWidget(self.help)

        install_side_markers(napari_viewer)
        install_legend(napari_viewer)
        s.case_changed.connect(self._on_case)
        self.destroyed.connect(lambda *_a, s=s, cb=self._on_case: _disconnect(s, cb))
        if s.case_id is not None:
            self._on_case(s.case_id)

    # ------------------------------------------------------------------ layer
    def image_layer(self):
        """The current case's image layer (``None`` without a case)."""
        return self.session.get_layer("image")

    def limits(self) -> tuple[float, float] | None:
        """The image layer's contrast limits."""
        ly = self.image_layer()
        return tuple(float(x) for x in ly.contrast_limits) if ly is not None else None

    def set_limits(self, low: float, high: float) -> None:
        """Set the image layer's contrast limits (widening its range if needed)."""
        ly = self.image_layer()
        if ly is None:
            return
        lo_r, hi_r = (float(x) for x in ly.contrast_limits_range)
        if low < lo_r or high > hi_r:
            ly.contrast_limits_range = (min(lo_r, low), max(hi_r, high))
        ly.contrast_limits = (float(low), float(high))
        self._show_values(low, high)
        self._sync_sliders(low, high)

    def apply_preset(self, name: str) -> tuple[float, float] | None:
        """Window the current image with a preset from its own histogram; returns the limits."""
        if name not in PRESETS:
            raise ValueError(f"unknown window preset {name!r}; expected one of {', '.join(PRESETS)}")
        self.preset = name
        b = self.preset_buttons[name]
        if not b.isChecked():
            b.setChecked(True)
        img = self.session.image
        if img is None or self.image_layer() is None:
            return None
        lo, hi = auto_window(img.data, preset=name)
        self.set_limits(lo, hi)
        return lo, hi

    def set_window(self, width: float, level: float) -> None:
        """Set window width and level (in the image's grey values)."""
        self.set_limits(*window_to_limits(width, level))

    # ------------------------------------------------------------------ sliders
    def _on_case(self, case_id) -> None:
        img = self.session.image
        if case_id is None or img is None:
            return
        import numpy as np

        a = np.asarray(img.data)
        lo, hi = float(np.nanmin(a[::8, ::8])), float(np.nanmax(a[::8, ::8]))
        self._range = (min(lo, 0.0), max(hi, lo + 1e-6, 1.0 if hi <= 1.0 else hi))
        self.apply_preset(self.preset)

    def _sync_sliders(self, low: float, high: float) -> None:
        r0, r1 = self._range
        span = max(r1 - r0, 1e-12)
        w, lv = limits_to_window(low, high)
        self._updating = True
        self.width_slider.setValue(int(round(min(max(w / span, 0.0), 1.0) * _STEPS)))
        self.level_slider.setValue(int(round(min(max((lv - r0) / span, 0.0), 1.0) * _STEPS)))
        self._updating = False

    def _on_slider(self, _v: int) -> None:
        if self._updating:
            return
        r0, r1 = self._range
        span = r1 - r0
        w = max(self.width_slider.value(), 1) / _STEPS * span
        lv = r0 + self.level_slider.value() / _STEPS * span
        self.preset_group.setExclusive(False)  # a hand-set window is no preset
        for b in self.preset_buttons.values():
            b.setChecked(False)
        self.preset_group.setExclusive(True)
        lo, hi = window_to_limits(w, lv)
        ly = self.image_layer()
        if ly is not None:
            lo_r, hi_r = (float(x) for x in ly.contrast_limits_range)
            if lo < lo_r or hi > hi_r:
                ly.contrast_limits_range = (min(lo_r, lo), max(hi_r, hi))
            ly.contrast_limits = (lo, hi)
        self._show_values(lo, hi)

    def _show_values(self, low: float, high: float) -> None:
        w, lv = limits_to_window(low, high)
        self.values.setText(f"window {w:.3g} · level {lv:.3g}")
        self.values.setToolTip(f"grey values shown: {low:.4g} (black) to {high:.4g} (white)")


def legend_text() -> str:
    """The legend as plain lines (for a tooltip)."""
    return "\n".join(text for text, _c in legend_entries())


def _help_lines(per_line: int = 3) -> str:
    """The key help as a few short lines."""
    from .._shortcuts import SHORTCUTS, key_label

    items = [f"{key_label(a)} {desc}" for a, (_k, desc) in SHORTCUTS.items()] + ["PgDn/PgUp case"]
    return "\n".join(" · ".join(items[i : i + per_line]) for i in range(0, len(items), per_line))


def _disconnect(session, cb) -> None:
    try:
        session.case_changed.disconnect(cb)
    except Exception:  # noqa: BLE001 - the session may be gone already
        pass
