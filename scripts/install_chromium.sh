#!/usr/bin/env bash
# Install headless Chromium (Debian package `chromium`) when it is missing.
#
# The report test (tests/runtime/test_report.py) opens a generated HTML report in headless
# Chromium to check that its plots render; `make test` runs this first so a fresh machine has
# one. Only the binary is used, with --headless: no display is needed.
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
    echo "chromium already installed: $(command -v chromium)"
    exit 0
fi

as_root=()
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "error: chromium is missing and installing it needs root (no sudo here);" \
             "run: apt-get install -y chromium" >&2
        exit 1
    fi
    as_root=(sudo)
fi

export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" apt-get install -y -qq --no-install-recommends chromium >/dev/null
echo "chromium installed: $(command -v chromium)"
