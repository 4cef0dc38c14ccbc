"""cxrseg-gui: docks, first case, prediction and --screenshot, in a subprocess under X."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from _gui_fixtures import _isolated_home, phantom_root, tiny_ckpt  # noqa: F401


def test_parser_and_missing_data(tmp_path, capsys):
    from napari_cxrseg._launch import build_parser, main

    a = build_parser().parse_args(["--data", "x", "--case", "C1", "--no-predict", "--screenshot", "s.png"])
    assert (a.data, a.case, a.no_predict, a.screenshot, a.model) == ("x", "C1", True, "s.png", None)
    assert main(["--data", str(tmp_path / "nowhere")]) == 2
    assert "no such dataset" in capsys.readouterr().err


def test_default_data_is_the_bundled_sample():
    from napari_cxrseg._launch import default_data_root

    root = default_data_root()
    assert (root / "images").is_dir() and any((root / "images").iterdir())


@pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs an X display (run under xvfb-run)")
def test_screenshot_of_a_predicted_case(tmp_path, phantom_root, tiny_ckpt):
    from PIL import Image

    out = tmp_path / "shot.png"
    env = dict(os.environ, CXRSEG_HOME=str(tmp_path / "home"))
    r = subprocess.run(
        [sys.executable, "-m", "napari_cxrseg._launch", "--data", str(phantom_root), "--case", "PHANTOM002",
         "--model", str(tiny_ckpt), "--screenshot", str(out), "--timeout", "240", "--size", "1400x900"],
        capture_output=True, text=True, timeout=400, env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "PHANTOM002 predicted by model" in r.stdout and "screenshot saved" in r.stdout
    img = np.asarray(Image.open(out).convert("RGB")).astype(int)
    h, w, _ = img.shape
    assert h >= 600 and w >= 1000
    # the canvas (middle of the window) shows coloured overlays on the grey radiograph
    mid = img[int(h * 0.25): int(h * 0.75), int(w * 0.3): int(w * 0.6)]
    sat = mid.max(axis=2) - mid.min(axis=2)
    assert (sat > 100).mean() > 0.05
    assert not (phantom_root / ".cxrseg").exists(), "opening a dataset must not write into it"


@pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs an X display (run under xvfb-run)")
def test_quality_screenshot_without_ground_truth(tmp_path, phantom_root, tiny_ckpt):
    """--quality on a film without masks: the quality check and the estimate-ranked queue
    both finish before the screenshot (no timeout)."""
    import shutil

    film = tmp_path / "films" / "PHANTOM001.png"
    film.parent.mkdir()
    shutil.copy(phantom_root / "images" / "PHANTOM001.png", film)
    out = tmp_path / "shot.png"
    env = dict(os.environ, CXRSEG_HOME=str(tmp_path / "home"))
    r = subprocess.run(
        [sys.executable, "-m", "napari_cxrseg._launch", "--data", str(film), "--model", str(tiny_ckpt),
         "--quality", "--screenshot", str(out), "--timeout", "240", "--size", "1400x900"],
        capture_output=True, text=True, timeout=400, env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "PHANTOM001 quality checked" in r.stdout and "screenshot saved" in r.stdout
    assert out.is_file()
