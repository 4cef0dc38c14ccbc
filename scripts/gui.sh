#!/usr/bin/env bash
# Open the napari-cxrseg review workspace on the bundled sample (or --data ROOT).
#
#   scripts/gui.sh                                   # set up if needed, then launch cxrseg-gui
#   scripts/gui.sh --data /path/to/jsrt-scr --case JPCLN001
#   scripts/gui.sh --screenshot docs/screenshots/phantom.png   # save a screenshot and quit
#
# Runs scripts/setup.sh first (fast when everything is installed). Without a display
# (no $DISPLAY / $WAYLAND_DISPLAY) it runs under xvfb-run, which is only useful with
# --screenshot. Every other option is passed to cxrseg-gui (see `cxrseg-gui --help`).
set -euo pipefail

CALLER="$PWD"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# PyQt6 unless the caller picks another binding (QT_API=pyqt5 runs on PyQt5).
export QT_API="${QT_API:-pyqt6}"

"$ROOT/scripts/setup.sh"

# A relative --screenshot path is relative to where the script was called from.
args=()
prev=""
for a in "$@"; do
  if [[ "$prev" == "--screenshot" || "$prev" == "--data" || "$prev" == "--model" ]] && [[ "$a" != /* ]]; then
    a="$CALLER/$a"
  fi
  args+=("$a")
  prev="$a"
done

GUI=("$ROOT/.venv/bin/cxrseg-gui")
[[ -x "${GUI[0]}" ]] || GUI=("$ROOT/.venv/bin/python" -m napari_cxrseg._launch)

if [[ -z "${DISPLAY:-}" && -z "${WAYLAND_DISPLAY:-}" ]]; then
  if ! command -v xvfb-run >/dev/null 2>&1; then
    echo "gui.sh: no display and no xvfb-run; install xvfb (scripts/setup.sh does, as root)" >&2
    exit 1
  fi
  if [[ " ${args[*]-} " != *" --screenshot "* ]]; then
    echo "gui.sh: no display: running under a virtual X server (add --screenshot PATH to see a result)" >&2
  fi
  exec xvfb-run -a -s "-screen 0 1920x1200x24" "${GUI[@]}" "${args[@]+"${args[@]}"}"
fi
exec "${GUI[@]}" "${args[@]+"${args[@]}"}"
