#!/usr/bin/env bash
# Install Debian's chromium for the headless web GUI test (tests/test_webgui.py).
# Idempotent: does nothing when /usr/bin/chromium already exists.
# Runs apt-get update only when the package index does not know "chromium" yet.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    echo "chromium already installed: $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium)"
    exit 0
fi

source "$(dirname "$0")/apt_install.sh"
apt_install chromium

/usr/bin/chromium --version || true
