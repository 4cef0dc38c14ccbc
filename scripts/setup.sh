#!/usr/bin/env bash
# Set up everything the tests need on a fresh Debian machine (idempotent, fast when done).
#
#   1. Debian packages for napari/Qt under a virtual X server (xvfb + GL/xcb libraries),
#      installed with apt-get when running as root; otherwise the missing ones are listed.
#   2. A virtual environment in .venv with torch/torchvision and the project installed
#      editable with its "testing" extra. Skipped when .venv/.cxrseg-setup-stamp matches
#      the hash of setup.cfg, pyproject.toml and this script.
#
# Environment: CXRSEG_SKIP_APT=1 skips step 1; CXRSEG_FORCE_PIP=1 redoes step 2;
# PYTHON=/path/to/python3.11 picks the interpreter that creates the venv.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

TORCH_SPEC=("torch==2.14.1" "torchvision==0.29.1")

APT_PACKAGES=(
  xvfb xauth libgl1 libegl1 libgl1-mesa-dri libglx-mesa0 libxkbcommon-x11-0
  libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0
  libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 libdbus-1-3
  libfontconfig1 libxi6 libxrender1 libxkbcommon0 libglib2.0-0
)

log() { printf '[setup] %s\n' "$*" >&2; }

pkg_installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

# ---------------------------------------------------------------- 1. Debian packages
setup_apt() {
  if [[ "${CXRSEG_SKIP_APT:-0}" == "1" ]]; then
    log "CXRSEG_SKIP_APT=1: not checking Debian packages"
    return 0
  fi
  if ! command -v dpkg-query >/dev/null 2>&1; then
    log "no dpkg: not a Debian system; make sure xvfb-run and the OpenGL/xcb libraries Qt needs are installed"
    return 0
  fi
  local missing=() p
  for p in "${APT_PACKAGES[@]}"; do
    # Debian 13 renamed some libraries with a t64 suffix.
    if ! pkg_installed "$p" && ! pkg_installed "${p}t64"; then
      missing+=("$p")
    fi
  done
  if [[ ${#missing[@]} -eq 0 ]]; then
    log "Debian packages present"
    return 0
  fi
  if [[ "$(id -u)" != "0" ]] || ! command -v apt-get >/dev/null 2>&1; then
    log "missing Debian packages (install as root): apt-get install -y ${missing[*]}"
    return 0
  fi
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  local install=()
  for p in "${missing[@]}"; do
    if apt-cache show "$p" >/dev/null 2>&1 && [[ -n "$(apt-cache policy "$p" | awk '/Candidate:/ {print $2}' | grep -v '(none)')" ]]; then
      install+=("$p")
    elif apt-cache show "${p}t64" >/dev/null 2>&1; then
      install+=("${p}t64")
    else
      log "warning: no Debian package $p (nor ${p}t64); skipping it"
    fi
  done
  if [[ ${#install[@]} -gt 0 ]]; then
    apt-get install -y -qq --no-install-recommends "${install[@]}" >/dev/null
  fi
}

# ---------------------------------------------------------------- 2. Python venv
pick_python() {
  # The wheel store holds torch for CPython 3.11: prefer it; any 3.10+ with venv works.
  local c
  for c in ${PYTHON:-} python3.11 /usr/bin/python3.11 python3 /usr/bin/python3; do
    if command -v "$c" >/dev/null 2>&1 \
        && "$c" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 10))' >/dev/null 2>&1; then
      echo "$c"
      return 0
    fi
  done
  return 1
}

pip_install() {
  # One line per package pip collects or installs (a fresh install takes minutes); on
  # failure the end of pip's log (without the index-probe noise).
  local out rc
  out="$(mktemp)"
  set +e
  .venv/bin/python -m pip --disable-pip-version-check install --progress-bar off "$@" 2>&1 \
    | tee "$out" \
    | { grep --line-buffered -E '^(Collecting|Installing collected|Successfully installed)' | sed -u 's/^/[setup]   /' >&2; true; }
  rc=${PIPESTATUS[0]}
  set -e
  if [[ "$rc" != 0 ]]; then
    grep -v "is ignored: it is neither a file nor a directory" "$out" | tail -n 60 >&2
    rm -f "$out"
    log "error: pip install $* failed"
    exit 1
  fi
  rm -f "$out"
}

setup_python() {
  if [[ ! -x .venv/bin/python ]] || ! .venv/bin/python -c 'import sys' >/dev/null 2>&1; then
    local py
    if ! py="$(pick_python)"; then
      log "error: no Python >= 3.10 with the venv module found (Debian: apt-get install python3-venv)"
      exit 1
    fi
    log "creating .venv with $py ($("$py" --version 2>&1))"
    rm -rf .venv
    "$py" -m venv .venv
  fi
  local stamp=".venv/.cxrseg-setup-stamp" want have=""
  want="$(cat setup.cfg pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"
  [[ -f "$stamp" ]] && have="$(cat "$stamp")"
  if [[ "$want" == "$have" && "${CXRSEG_FORCE_PIP:-0}" != "1" ]] \
      && .venv/bin/python -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in ('cxrseg', 'napari_cxrseg', 'torch', 'napari', 'pytest', 'pytestqt')))" >/dev/null 2>&1; then
    log "Python environment up to date (.venv)"
    return 0
  fi
  log "installing ${TORCH_SPEC[*]}"
  pip_install "${TORCH_SPEC[@]}"
  log "installing the project (editable) with the testing extra (PyQt6) and PyQt5 for the second GUI pass"
  pip_install -e ".[testing,pyqt5]"
  echo "$want" > "$stamp"
  log "Python environment ready (.venv)"
}

setup_apt
setup_python
