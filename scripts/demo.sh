#!/bin/sh
# Install forkproxy into a virtualenv and start the demo: forkproxy on
# 127.0.0.1:8080 in front of three small backends it starts itself.
# Ctrl-C stops everything.
set -eu
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check .
exec .venv/bin/python demo/run.py "$@"
