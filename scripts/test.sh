#!/usr/bin/env bash
# Run the test suite: sets up the environment (scripts/setup.sh), then pytest under a
# virtual X server (xvfb-run) so the napari/Qt tests need no display. Arguments go to
# pytest, e.g.  bash scripts/test.sh tests/test_reader.py -x -q
# Uses a working $DISPLAY directly when there is one.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# PyQt6 unless the caller picks another binding (QT_API=pyqt5 runs on PyQt5).
export QT_API="${QT_API:-pyqt6}"
# pytest-qt picks its own binding (PyQt6 before PyQt5) unless told; qtpy then follows the one
# already imported and rewrites QT_API, so the request is kept for tests/test_qt_binding.py.
export PYTEST_QT_API="$QT_API" CXRSEG_QT_API_REQUESTED="$QT_API"

bash scripts/setup.sh

PY=.venv/bin/python
export MPLBACKEND="${MPLBACKEND:-Agg}"

display_works() {
  [[ -n "${DISPLAY:-}" ]] || return 1
  local d="${DISPLAY#*:}"
  d="${d%%.*}"
  # local display ":N": its socket must exist; remote displays are trusted as given
  if [[ "${DISPLAY}" == :* ]]; then
    [[ -S "/tmp/.X11-unix/X${d}" ]] || return 1
  fi
  return 0
}

if display_works; then
  exec "$PY" -m pytest "$@"
elif command -v xvfb-run >/dev/null 2>&1; then
  exec xvfb-run -a -s "-screen 0 1280x1024x24" "$PY" -m pytest "$@"
else
  echo "[test] no display and no xvfb-run (apt-get install xvfb): Qt runs offscreen" >&2
  export QT_QPA_PLATFORM=offscreen
  exec "$PY" -m pytest "$@"
fi
