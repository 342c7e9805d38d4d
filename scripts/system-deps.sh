#!/bin/sh
# System packages napari-vptv needs on Linux, checked and (as root or with sudo)
# installed: Python's venv module, and Xvfb plus the libraries Qt needs to draw
# napari's canvas without a screen (the test suite starts Xvfb itself through
# pytest-xvfb; Qt's "offscreen" platform does not work because vispy needs GL).
#
#   sh scripts/system-deps.sh          # check; install what is missing (apt-get)
#   VPTV_NO_APT=1 sh scripts/system-deps.sh   # check only, print the command
#   VPTV_DOCS=1 sh scripts/system-deps.sh     # also Chromium, for the docs site's browser test
#
# macOS and Windows need nothing here (the script says so and exits 0).
# Other Linux distributions: the script prints the Debian package names to look for.
set -eu

case "$(uname -s 2>/dev/null || echo unknown)" in
    Linux) ;;
    *) echo "system-deps: nothing to install on $(uname -s 2>/dev/null || echo this system)"; exit 0 ;;
esac

# Debian / Ubuntu package names. libglib2.0-0 is needed by libQt6Core, libgl1 /
# libegl1 by vispy's OpenGL, the xcb libraries by Qt's xcb platform plugin.
PKGS="python3-venv xvfb xauth libglib2.0-0 libgl1 libegl1 libdbus-1-3 libfontconfig1 libxkbcommon-x11-0 \
libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 \
libxcb-xfixes0 libxcb-shape0 libxcb-cursor0"
# Headless Chromium opens the built documentation site in tests/test_docs_site.py (CI sets VPTV_DOCS=1).
if [ "${VPTV_DOCS:-}" = 1 ]; then
    PKGS="$PKGS chromium"
fi

if ! command -v dpkg-query >/dev/null 2>&1; then
    echo "system-deps: not a Debian-like system; install the equivalents of: $PKGS"
    if command -v Xvfb >/dev/null 2>&1 && python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
        exit 0
    fi
    echo "system-deps: Xvfb or python3's venv module is missing" >&2
    exit 1
fi

missing=""
for p in $PKGS; do
    # python3-venv is versioned on some releases (python3.11-venv): check the module itself
    if [ "$p" = python3-venv ]; then
        python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing="$missing $p"
        continue
    fi
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -z "$missing" ]; then
    echo "system-deps: all present"
    exit 0
fi

cmd="apt-get install -y --no-install-recommends$missing"
if [ "${VPTV_NO_APT:-}" = 1 ]; then
    echo "system-deps: missing:$missing; install with: sudo apt-get update && sudo $cmd" >&2
    exit 1
fi
if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
else
    echo "system-deps: missing:$missing; as root run: apt-get update && $cmd" >&2
    exit 1
fi
echo "system-deps: installing$missing"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO $cmd
