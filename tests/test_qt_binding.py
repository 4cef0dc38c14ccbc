"""The Qt binding the GUI tests run on is the one asked for (scripts/test.sh: PyQt6 unless QT_API says)."""

import os

import pytest


def test_widget_tests_run_on_the_requested_binding():
    want = os.environ.get("QT_API")
    if not want:
        pytest.skip("QT_API not set: qtpy picks the first binding it finds")
    import qtpy

    assert qtpy.API_NAME.lower() == want.lower(), f"QT_API={want} but qtpy loaded {qtpy.API_NAME}"
