#!/usr/bin/env bash
# Install the Prometheus server (Debian package `prometheus`) when it is missing.
#
# The Prometheus scrape test (tests/runtime/test_prometheus_scrape.py) starts a real server;
# `make test` runs this first so a fresh machine has one. Only the binary is needed: the
# package's own service is never started by the tests.
set -euo pipefail
source "$(dirname "$0")/debian_package.sh"

if already_installed prometheus; then
    exit 0
fi
install_package prometheus
# The package starts its own service where systemd runs; the tests start their own server.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
    "${AS_ROOT[@]}" systemctl stop prometheus || true
fi
