#!/bin/sh
# Install what the tests need (Debian packages, a virtualenv with forkproxy and
# its test extras) and run the whole suite.  Services the tests use (memcached,
# backends, forkproxy itself) are started and stopped by the tests.
set -eu
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
need=""
for tool in memcached curl mandoc groff; do
    command -v "$tool" >/dev/null 2>&1 || need="$need $tool"
done
python3 -c 'import ensurepip, venv' 2>/dev/null || need="$need python3-venv"
if [ -n "$need" ]; then
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
exec .venv/bin/python -m pytest -n 2 "$@"
