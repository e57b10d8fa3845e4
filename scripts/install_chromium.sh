#!/usr/bin/env bash
# Install headless Chromium (Debian package `chromium`) when it is missing.
#
# The report test (tests/runtime/test_report.py) opens a generated HTML report in headless
# Chromium to check that its plots render; `make test` runs this first so a fresh machine has
# one. Only the binary is used, with --headless: no display is needed.
set -euo pipefail
source "$(dirname "$0")/debian_package.sh"

if already_installed chromium; then
    exit 0
fi
install_package chromium
