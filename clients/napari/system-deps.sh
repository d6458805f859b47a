#!/bin/sh
# Debian packages the napari tests need for a real GL context under Xvfb: the X server,
# Mesa's GL/EGL, the libraries of Qt 6's xcb platform plugin, fonts. Installs only what is
# missing (checked with dpkg -s), so a second run does nothing. `make test-napari` calls it;
# CI runs as root on a fresh Debian machine. "a|b" means either package will do (Debian 13
# renamed some libraries with a t64 suffix).
set -eu
PACKAGES="xvfb xauth libgl1 libegl1 libgl1-mesa-dri libglx-mesa0 libegl-mesa0
 libx11-xcb1 libxcb-cursor0 libxcb-glx0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0
 libxcb-render-util0 libxcb-render0 libxcb-shape0 libxcb-shm0 libxcb-sync1 libxcb-util1 libxcb-xfixes0
 libxcb-xkb1 libxkbcommon-x11-0 libxkbcommon0 libfontconfig1 libfreetype6 libdbus-1-3
 libglib2.0-0t64|libglib2.0-0 fonts-dejavu-core"

if ! command -v dpkg >/dev/null 2>&1; then
    echo "system-deps: no dpkg (not Debian): install Xvfb, Mesa GL and Qt's xcb libraries yourself" >&2
    exit 0
fi
have() { dpkg -s "$1" 2>/dev/null | grep -q '^Status: install ok installed'; }
missing=""
for item in $PACKAGES; do
    found=""
    for p in $(echo "$item" | tr '|' ' '); do
        if have "$p"; then found=1; break; fi
    done
    [ -n "$found" ] || missing="$missing $item"
done
[ -n "$missing" ] || exit 0

if [ "$(id -u)" -eq 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
    echo "system-deps: missing$missing; run as root (or with sudo) to install them" >&2; exit 1
fi
echo "system-deps: installing$missing"
$SUDO apt-get update -qq
pick=""
for item in $missing; do  # the first alternative this Debian knows
    for p in $(echo "$item" | tr '|' ' '); do
        if apt-cache show "$p" >/dev/null 2>&1; then pick="$pick $p"; break; fi
    done
done
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $pick
