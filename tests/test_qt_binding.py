"""The Qt binding the GUI tests run on is the one asked for (scripts/test.sh: PyQt6 unless QT_API says).

qtpy rewrites ``QT_API`` to the binding it ends up with, so the request is read from
``CXRSEG_QT_API_REQUESTED``, which scripts/test.sh sets beside it."""

import os

import pytest


def test_widget_tests_run_on_the_requested_binding():
    want = os.environ.get("CXRSEG_QT_API_REQUESTED")
    if not want:
        pytest.skip("no binding requested (scripts/test.sh sets CXRSEG_QT_API_REQUESTED)")
    import qtpy

    assert qtpy.API_NAME.lower() == want.lower(), f"{want} was asked for but qtpy loaded {qtpy.API_NAME}"
    from pytestqt.qt_compat import qt_api

    assert qt_api.pytest_qt_api == want.lower(), f"{want} was asked for but pytest-qt runs {qt_api.pytest_qt_api}"
