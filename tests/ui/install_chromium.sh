#!/usr/bin/env bash
# Chromium for the browser test (tests/ui/test_ui_browser.py): Debian's own package, no browser download.
# Installs only when /usr/bin/chromium is missing; needs root (CI) or sudo. fonts-noto-color-emoji lets
# the page's emoji render in screenshots; the test passes without it.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_chromium.sh: no apt-get here; install Chromium yourself (the test wants /usr/bin/chromium," >&2
    echo "or set CHROMIUM=/path/to/chromium)" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q chromium fonts-noto-color-emoji
