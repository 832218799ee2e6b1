#!/bin/sh
# Install forkproxy into its own virtualenv (.venv-demo: what a plain
# `pip install .` gives, no test extras) and run the demo: forkproxy on
# 127.0.0.1:8080 in front of three small backends it starts itself, showing
# balancing, failover, caching and the status page (127.0.0.1:9901).
# Ctrl-C stops everything; with --once it shows everything once and exits
# (0, or 1 when any step failed).
set -eu
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
PY=python3
[ -x /usr/bin/python3 ] && PY=/usr/bin/python3
if ! "$PY" -c 'import ensurepip, venv' 2>/dev/null; then
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
fi
[ -x .venv-demo/bin/python ] || "$PY" -m venv .venv-demo
.venv-demo/bin/pip install -q --disable-pip-version-check .
exec .venv-demo/bin/python demo/run.py "$@"
