"""Background results that arrive late: fast navigation, closing the viewer, removing a dock."""

from __future__ import annotations

import numpy as np
import pytest
from _gui_fixtures import _isolated_home, open_case, phantom_root, tiny_ckpt, wait_worker  # noqa: F401


@pytest.fixture
def slow_model(monkeypatch):
    """Make every forward pass take ``delay[0]`` seconds longer (a model slower than the user)."""
    import time

    from cxrseg.predict import Predictor

    orig = Predictor.predict
    delay = [0.4]
    calls: list = []

    def slow(self, image, *a, **k):
        time.sleep(delay[0])
        out = orig(self, image, *a, **k)
        calls.append(float(np.asarray(image).mean()))
        return out

    monkeypatch.setattr(Predictor, "predict", slow)
    return delay, calls, orig


def _idle(s) -> bool:
    jobs = getattr(s, "jobs", None)
    if jobs is not None:
        return not jobs.pending()
    from napari_cxrseg._widgets._workers import _LIVE_WORKERS

    return _LIVE_WORKERS[0] == 0


def _settle(qtbot, s, ms: int = 30_000) -> None:
    """Run the event loop until no worker of the session is pending."""
    qtbot.waitUntil(lambda: _idle(s), timeout=ms)
    qtbot.wait(50)


def _check_shown_prediction(s, orig_predict) -> None:
    """The prediction on screen belongs to the case on screen, and nobody painted it."""
    from cxrseg.predict import get_predictor
    from napari_cxrseg._layers import labels_from_masks

    layer = s.get_layer("prediction")
    assert layer is not None, f"{s.case_id}: no prediction layer"
    md = layer.metadata["cxrseg"]
    assert md["case_id"] == s.case_id and not md.get("parked")
    assert s.prediction_edits() is None, "phantom hand edits"
    assert np.array_equal(np.asarray(layer.data), labels_from_masks(s.masks, s.image.shape))
    pred = get_predictor(s.checkpoint, device="cpu")
    want = orig_predict(pred, s.image.data, regions=tuple(s.probs))
    for r, p in s.probs.items():
        np.testing.assert_allclose(p, want[r], atol=1e-4, err_msg=f"{s.case_id} {r}: another case's map")


def test_fast_stepping_never_shows_another_cases_prediction(make_napari_viewer, qtbot, phantom_root, tiny_ckpt,
                                                            slow_model):
    from _gui_fixtures import notifications

    from napari_cxrseg._widgets._state import get_session

    delay, calls, orig = slow_model
    viewer = make_napari_viewer()
    s = get_session(viewer)
    s.set_model(str(tiny_ckpt), "cpu")
    s.auto_predict = True
    got = notifications()
    applied: list = []
    s.prediction_changed.connect(
        lambda mid: applied.append((s.case_id, s.get_layer("prediction").metadata["cxrseg"]["case_id"],
                                    s.prediction_edits())) if mid else None)
    wait_worker(qtbot, s.open_dataset(phantom_root))
    s.load_case("PHANTOM001")
    _settle(qtbot, s)
    _check_shown_prediction(s, orig)
    # forward and back, faster than the model answers (key presses as PageDown / PageUp do)
    from napari_cxrseg._widgets._state import _next_case, _previous_case

    for steps in ([+1, -1], [+1, +1, -1], [-1, -1, +1], [+1, -1, +1, -1]):
        for st in steps:
            (_next_case if st > 0 else _previous_case)(viewer)
            qtbot.wait(60)
        _settle(qtbot, s)
        _check_shown_prediction(s, orig)
    assert len(applied) >= 5
    for cid, layer_cid, edits in applied:  # at every moment a prediction was shown
        assert layer_cid == cid and edits is None
    assert not [n for n in got if "hand-edited" in str(n.message)]


def test_next_then_previous_goes_back_without_reloading(make_napari_viewer, qtbot, phantom_root, tiny_ckpt,
                                                        slow_model):
    from napari_cxrseg._widgets._state import get_session

    delay, calls, orig = slow_model
    viewer = make_napari_viewer()
    s = get_session(viewer)
    s.set_model(str(tiny_ckpt), "cpu")
    s.auto_predict = True
    wait_worker(qtbot, s.open_dataset(phantom_root))
    s.load_case("PHANTOM002")
    _settle(qtbot, s)
    s.step_case(+1)
    s.step_case(-1)  # back to the shown case before the next one arrived
    _settle(qtbot, s)
    assert s.case_id == "PHANTOM002"
    _check_shown_prediction(s, orig)
    # two quick steps move two cases on (from the case asked for, not the one still shown)
    s.step_case(-1)
    s.step_case(+1)
    s.step_case(+1)
    _settle(qtbot, s)
    assert s.case_id == "PHANTOM003"
    _check_shown_prediction(s, orig)


def test_result_arriving_after_the_viewer_closed_is_dropped(make_napari_viewer, qtbot, phantom_root, tiny_ckpt,
                                                            slow_model):
    from napari_cxrseg._widgets._state import get_session

    viewer = make_napari_viewer()
    s = get_session(viewer)
    s.set_model(str(tiny_ckpt), "cpu")
    open_case(qtbot, s, phantom_root)
    w = s.predict()
    r = s.rethreshold()  # nothing to threshold yet
    assert r is None
    viewer.close()
    wait_worker(qtbot, w)
    qtbot.wait(100)
    assert s.closed and s.probs is None
