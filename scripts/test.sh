#!/bin/sh
# Install what the tests need (Debian packages, a virtualenv with forkproxy and
# its test extras) and run the whole suite.  Services the tests use (memcached,
# backends, forkproxy itself) are started and stopped by the tests.
set -eu
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
need=""
# chromium: tests/e2e/test_status_page.py drives it headless
for tool in memcached curl mandoc groff chromium; do
    command -v "$tool" >/dev/null 2>&1 || need="$need $tool"
done
python3 -c 'import ensurepip, venv' 2>/dev/null || need="$need python3-venv"
[ -x /usr/bin/python3 ] && ! /usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null \
    && need="$need python3-venv"
if [ -n "$need" ]; then
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need
fi
# Debian's own interpreter when there is one (the README's fresh machine):
# its files are readable by the unprivileged user the workers drop to.
PY=python3
[ -x /usr/bin/python3 ] && PY=/usr/bin/python3
python_ok() { "$1" -c 'import sys, ensurepip, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }
python_ok "$PY" || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
exec .venv/bin/python -m pytest -n 2 "$@"
