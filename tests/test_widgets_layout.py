"""The launcher's window fits common screens: no dock forces it taller or wider, nothing clipped.

Run under a virtual X server as large as the screen tested, e.g.
``xvfb-run -a -s "-screen 0 1920x1080x24" pytest tests/test_widgets_layout.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
from _gui_fixtures import _isolated_home, open_case, phantom_root, tiny_ckpt, wait_worker  # noqa: F401

pytest.importorskip("napari")

SCREENS = [(1366, 768), (1920, 1080)]


def _launch_layout(make_napari_viewer, qtbot, size):
    from napari_cxrseg._launch import _add_docks

    w, h = size
    viewer = make_napari_viewer(show=True)
    qwin = viewer.window._qt_window
    qwin.resize(w, h)
    widgets = _add_docks(viewer, height=h)
    qwin.resize(w, h)
    qtbot.wait(50)
    return viewer, qwin, widgets


@pytest.mark.parametrize("size", SCREENS, ids=lambda s: f"{s[0]}x{s[1]}")
def test_window_fits_the_screen(make_napari_viewer, qtbot, size, phantom_root):
    from qtpy.QtWidgets import QDockWidget, QTabBar

    viewer, qwin, widgets = _launch_layout(make_napari_viewer, qtbot, size)
    s = widgets["Cases"].session
    open_case(qtbot, s, phantom_root, "PHANTOM001")
    s.set_case_scores("PHANTOM001", {"heart": 0.9, "left_clavicle": 0.8, "right_clavicle": 0.7,
                                     "left_lung": 0.95, "right_lung": 0.96})
    qtbot.wait(50)
    w, h = size
    hint = qwin.minimumSizeHint()
    assert hint.height() <= h and hint.width() <= w, (hint, size)
    assert qwin.minimumSize().height() <= h
    assert (qwin.width(), qwin.height()) == (w, h)
    assert set(widgets) >= {"Cases", "Review queue", "Predict", "Compare", "Correct", "Fine-tune", "Display"}
    # no "&" (Qt's mnemonic marker) in a dock or tab title: it would be shown as "_x"
    titles = [d.windowTitle() for d in qwin.findChildren(QDockWidget)]
    titles += [bar.tabText(i) for bar in qwin.findChildren(QTabBar) for i in range(bar.count())]
    assert titles and not [t for t in titles if "&" in t], titles
    # every widget of a dock gets at least its minimum size (nothing cut off): the docks scroll
    for name, wid in widgets.items():
        if wid.isVisible():
            assert wid.height() >= wid.minimumSizeHint().height() - 1, name
            assert wid.width() >= wid.minimumSizeHint().width() - 1, name
    # the Review queue shows at least 8 rows
    review = widgets["Review queue"]
    rows_fit = (review.table.height() - review.table.horizontalHeader().height()) // \
        review.table.verticalHeader().defaultSectionSize()
    assert rows_fit >= 8, rows_fit


def test_cases_table_shows_every_iou_without_scrolling_at_1920(make_napari_viewer, qtbot, phantom_root):
    viewer, qwin, widgets = _launch_layout(make_napari_viewer, qtbot, (1920, 1080))
    cases = widgets["Cases"]
    s = cases.session
    open_case(qtbot, s, phantom_root, "PHANTOM001")
    for cid in s.case_ids:
        s.set_case_scores(cid, {"heart": 0.912, "left_clavicle": 0.801, "right_clavicle": 0.733,
                                "left_lung": 0.954, "right_lung": 0.961})
    s.set_review("PHANTOM002", "approved")  # the widest status text
    qtbot.wait(50)
    t = cases.table
    total = sum(t.columnWidth(j) for j in range(t.columnCount()))
    assert total <= t.viewport().width(), (total, t.viewport().width())
    assert not t.horizontalScrollBar().isVisible()
    assert cases.cell_text("PHANTOM001", "right_lung") == "0.961"


def test_size_option(tmp_path):
    from napari_cxrseg._launch import build_parser, parse_size

    assert parse_size("1366x768") == (1366, 768)
    assert parse_size(None, (1366, 740)) == (1366, 740)
    assert parse_size(None, (2560, 1440)) == (1680, 1020)
    for bad in ("big", "0x10", "10x"):
        with pytest.raises(ValueError, match="--size"):
            parse_size(bad)
    assert build_parser().parse_args([]).size is None


def test_window_level_presets_follow_each_image(make_napari_viewer, qtbot, phantom_root):
    from cxrseg.display import auto_window
    from napari_cxrseg._widgets._display import DisplayWidget
    from napari_cxrseg._widgets._state import get_session

    viewer = make_napari_viewer()
    s = get_session(viewer)
    d = DisplayWidget(viewer)
    open_case(qtbot, s, phantom_root, "PHANTOM001")
    img = s.get_layer("image")
    assert tuple(img.contrast_limits) == pytest.approx(auto_window(s.image.data))
    # a preset from the image's own histogram, without selecting the image layer
    viewer.layers.selection.active = s.get_layer("ground_truth")
    d.preset_buttons["bone"].click()
    bone = tuple(img.contrast_limits)
    assert bone == pytest.approx(auto_window(s.image.data, preset="bone"))
    auto = auto_window(s.image.data)
    assert auto[0] < bone[0] < bone[1] < auto[1]  # a narrower window inside the body's range
    # the window slider narrows the window around the same level
    w0 = bone[1] - bone[0]
    d.width_slider.setValue(d.width_slider.value() // 2)
    lo, hi = img.contrast_limits
    assert hi - lo < 0.75 * w0 and (lo + hi) / 2 == pytest.approx(sum(bone) / 2, abs=0.01)
    assert not any(b.isChecked() for b in d.preset_buttons.values())
    # the next case gets the chosen preset from its own histogram
    d.apply_preset("lung")
    wait_worker(qtbot, s.load_case("PHANTOM002"))
    img = s.get_layer("image")
    assert tuple(img.contrast_limits) == pytest.approx(auto_window(s.image.data, preset="lung"))


def test_side_markers_legend_and_colours(make_napari_viewer):
    from napari_cxrseg._colors import ERROR_COLORS, GT_COLOR, REGION_COLORS, hue_distance
    from napari_cxrseg._widgets._display import SIDE_MARKERS, DisplayWidget, legend_entries

    viewer = make_napari_viewer()
    d = DisplayWidget(viewer)
    ov = viewer.canvas.overlays
    assert ov["cxrseg_side_right"].text == "R" and str(ov["cxrseg_side_right"].position) == "top_left"
    assert ov["cxrseg_side_left"].text == "L" and str(ov["cxrseg_side_left"].position) == "top_right"
    assert set(SIDE_MARKERS) <= set(ov.keys())
    d.side_box.setChecked(False)
    assert not ov["cxrseg_side_right"].visible
    texts = [ov[f"cxrseg_legend_{i}"].text for i in range(len(legend_entries()))]
    assert any("false positive" in t for t in texts) and any("ground truth" in t for t in texts)
    assert not [ly for ly in viewer.layers]  # overlays, not layers
    # error hues differ from every region's hue; ground truth is achromatic
    for e in ERROR_COLORS.values():
        assert min(hue_distance(e, c) for c in REGION_COLORS.values()) >= 30
    assert hue_distance(ERROR_COLORS["fp"], ERROR_COLORS["fn"]) >= 90
    assert max(GT_COLOR[:3]) - min(GT_COLOR[:3]) == 0


def test_errors_and_ground_truth_use_the_palette(make_napari_viewer, qtbot, phantom_root):
    from napari_cxrseg._colors import ERROR_COLORS, GT_COLOR
    from napari_cxrseg._widgets._state import get_session

    viewer = make_napari_viewer()
    s = get_session(viewer)
    open_case(qtbot, s, phantom_root, "PHANTOM001")
    gt = s.get_layer("ground_truth")
    assert np.allclose(gt.get_color(4), GT_COLOR) and gt.contour > 0  # an outline
    truth = s.truth["heart"]
    pred = np.roll(truth, 10, axis=1)
    s.show_errors(pred, truth, "heart")
    err = s.get_layer("errors")
    assert np.allclose(err.get_color(1), ERROR_COLORS["fp"]) and np.allclose(err.get_color(2), ERROR_COLORS["fn"])


def test_shortcuts_are_free_in_napari_and_work(make_napari_viewer, qtbot, phantom_root, tiny_ckpt):
    from napari.utils.key_bindings import KeyBinding
    from napari.utils.shortcuts import default_shortcuts

    from napari_cxrseg import _shortcuts
    from napari_cxrseg._widgets._review import ReviewWidget
    from napari_cxrseg._widgets._state import get_session

    taken = {str(KeyBinding.from_str(str(k))) for keys in default_shortcuts.values() for k in keys}
    for layer_type in ("labels", "image"):
        from napari.layers import Image, Labels

        cls = Labels if layer_type == "labels" else Image
        taken |= {str(KeyBinding.from_str(str(k))) for k in getattr(cls, "class_keymap", {})}
    ours = {str(KeyBinding.from_str(k)) for k, _d in _shortcuts.SHORTCUTS.values()}
    assert len(ours) == len(_shortcuts.SHORTCUTS) and not ours & taken, ours & taken
    help_line = _shortcuts.help_text()
    for key, desc in _shortcuts.SHORTCUTS.values():
        assert f"{key.replace('-', '+')} {desc}" in help_line

    viewer = make_napari_viewer()
    s = get_session(viewer)
    s.synchronous = True
    s.set_model(str(tiny_ckpt), "cpu")
    s.open_dataset_sync(phantom_root)
    review = ReviewWidget(viewer)
    bound = _shortcuts.bind_dock(viewer, review)
    assert set(bound) == {"approve", "flag", "next_worst", "previous"}
    assert "(K)" in review.approve_btn.toolTip() and "(Shift+N)" in review.prev_btn.toolTip()
    review.run()
    first = review.queue()[0]
    s.load_case_sync(first)
    review.advance_box.setChecked(False)
    viewer.keymap[KeyBinding.from_str("K")](viewer)
    assert s.review_status(first).status == "approved"
    viewer.keymap[KeyBinding.from_str("J")](viewer)
    assert s.review_status(first).status == "flagged"


def test_reviewer_name_is_asked_once_and_recorded(make_napari_viewer, qtbot, phantom_root, monkeypatch):
    from cxrseg.review import remembered_reviewer
    from napari_cxrseg._widgets._review import ReviewWidget
    from napari_cxrseg._widgets._state import get_session

    monkeypatch.setenv("USER", "login")
    viewer = make_napari_viewer()
    s = get_session(viewer)
    s.synchronous = True
    s.open_dataset_sync(phantom_root)
    review = ReviewWidget(viewer)
    assert not review.reviewer_hint.isHidden() and "login" in review.reviewer_edit.placeholderText()
    review.reviewer_edit.setText("Dr. Reader")
    review.advance_box.setChecked(False)
    review.mark("flagged", case_id="PHANTOM001", comment="tip")
    e = s.review_status("PHANTOM001")
    assert (e.status, e.reviewer) == ("flagged", "Dr. Reader")
    assert remembered_reviewer() == "Dr. Reader" and review.reviewer_hint.isHidden()
    # a new session (another viewer) knows the name: not asked again
    review2 = ReviewWidget(make_napari_viewer())
    assert review2.reviewer_edit.text() == "Dr. Reader" and review2.reviewer_hint.isHidden()


def test_a_real_key_press_on_the_canvas_toggles_the_heatmaps(make_napari_viewer, qtbot):
    """The keys reach the action through the canvas, as a user's key press does."""
    from qtpy.QtCore import Qt

    from napari_cxrseg import _shortcuts
    from napari_cxrseg._widgets._predict import PredictWidget

    viewer = make_napari_viewer(show=True)
    predict = PredictWidget(viewer)
    assert _shortcuts.bind_dock(viewer, predict) == ["heatmaps"]
    assert "(H)" in predict.heat_box.toolTip()
    before = predict.heat_box.isChecked()
    canvas = viewer.window._qt_viewer.canvas.native
    canvas.setFocus()
    qtbot.keyClick(canvas, Qt.Key.Key_H)
    qtbot.waitUntil(lambda: predict.heat_box.isChecked() != before, timeout=2000)
    assert predict.session.display["show_heatmaps"] == predict.heat_box.isChecked()
