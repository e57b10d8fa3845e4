#!/usr/bin/env bash
# Install the Prometheus server (Debian package `prometheus`) when it is missing.
#
# The Prometheus scrape test (tests/runtime/test_prometheus_scrape.py) starts a real server;
# `make test` runs this first so a fresh machine has one. Only the binary is needed: the
# package's own service is never started by the tests.
set -euo pipefail

if command -v prometheus >/dev/null 2>&1; then
    echo "prometheus already installed: $(command -v prometheus)"
    exit 0
fi

as_root=()
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "error: prometheus is missing and installing it needs root (no sudo here);" \
             "run: apt-get install -y prometheus" >&2
        exit 1
    fi
    as_root=(sudo)
fi

export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
# --no-install-recommends keeps out the node exporter and alertmanager, which the tests never use.
"${as_root[@]}" apt-get install -y -qq --no-install-recommends prometheus >/dev/null
# The package starts its own service where systemd runs; the tests start their own server.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
    "${as_root[@]}" systemctl stop prometheus || true
fi
echo "prometheus installed: $(command -v prometheus)"
