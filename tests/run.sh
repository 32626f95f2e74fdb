#!/usr/bin/env bash
# The README's test command: installs what the tests need, then runs the suite.
#
#     bash tests/run.sh            # the default (fast) suite
#     bash tests/run.sh -m slow    # the real-size checks; any pytest arguments pass through
#
# It installs the runtime and test packages (requirements.txt, requirements-dev.txt) and, where
# the platform's package manager allows it, Debian's Chromium for the browser tests of the Gradio
# demos. Elsewhere those tests fail with a line saying how to get the browser.
set -euo pipefail
cd "$(dirname "$0")/.."

export PIP_DISABLE_PIP_VERSION_CHECK=1
python -m pip install -q -r requirements.txt -r requirements-dev.txt
python -m pip install -q --no-deps -e .

CHROMIUM="${WAN_CHROMIUM:-/usr/bin/chromium}"
if [ ! -x "$CHROMIUM" ]; then
    SUDO=""
    if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    fi
    if command -v apt-get >/dev/null && { [ "$(id -u)" = 0 ] || [ -n "$SUDO" ]; }; then
        echo "Installing Chromium for the browser tests (apt-get install chromium) ..."
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
    else
        echo "note: the browser tests need Chromium at $CHROMIUM and cannot install it here" \
             "(no apt-get or no root): install it (Debian/Ubuntu: apt-get install chromium) or" \
             "point WAN_CHROMIUM at a Chromium binary; those tests fail until then." >&2
    fi
fi

exec python -m pytest "$@"
