"""What a worker loads before it serves (``daemon.worker.preload``): everything its
configuration may need, and nothing of HTTP/2 (h2), memcached (pylibmc) or the
health probes (requests) that its configuration does not need: each is 1 to 3 MiB
of RSS in every worker.

The table runs ``preload`` in a fresh interpreter, as a worker does (gevent
patched first); the daemon test reads a real worker's memory maps.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from support.configs import one_pool
from support.procs import free_port

HEAVY = ("h2", "pylibmc", "urllib3", "charset_normalizer")

SCRIPT = textwrap.dedent("""
    import json, sys
    from gevent import monkey
    monkey.patch_all()
    from forkproxy.config import loads
    from forkproxy.daemon.worker import preload
    cfg = loads(sys.stdin.read()) if sys.argv[1] == "cfg" else None
    preload(False, cfg)
    print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))
""").replace("{HEAVY!r}", repr(HEAVY))

TLS_CERT = "/nonexistent"  # never read: loads() only parses


def _loaded(body: str | None) -> list[str]:
    out = subprocess.run([sys.executable, "-c", SCRIPT, "cfg" if body is not None else "none"],
                         input=body or "", capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.parametrize("pool_extra, route_extra, listener_extra, expect", [
    ("", "", "", []),
    ("", "", "http2 = true", ["h2"]),                             # h2c clients
    ('protocol = "h2c"', "", "", ["h2"]),                          # an HTTP/2 pool
    ("", "cache = true", "", ["pylibmc"]),                         # a cache (either store)
    ('sticky = { key = "header:X-User" }', "", "", ["pylibmc"]),  # a sticky table
    ("", 'rate_limit = { rate = "5r/s", scope = "fleet" }', "", ["pylibmc"]),
    ('health = { path = "/h" }', "", "", ["charset_normalizer", "urllib3"]),  # probes
])
def test_a_worker_preloads_only_what_its_configuration_needs(pool_extra, route_extra,
                                                             listener_extra, expect):
    body = one_pool(8080, ["127.0.0.1:8081"], pool_extra, route_extra,
                    listener_extra=listener_extra)
    assert _loaded(body) == expect


def test_without_a_configuration_everything_is_preloaded():
    assert _loaded(None) == sorted(HEAVY)


def _maps(pid: int) -> str:
    with open(f"/proc/{pid}/maps") as f:
        return f.read()


def test_a_real_worker_maps_libmemcached_only_when_its_configuration_caches(
        forkproxy_factory, backend_factory):
    # One worker each: the factory's readiness check (the listener answers)
    # then says that this worker booted, its preload done.
    b = backend_factory()
    plain = forkproxy_factory(one_pool(free_port(), [b.addr]), server={"workers": 1})
    cached = forkproxy_factory(one_pool(free_port(), [b.addr], route_extra="cache = true"),
                               server={"workers": 1})
    for fp, expect in ((plain, False), (cached, True)):
        pid, = fp.wait_workers(1)
        assert ("memcached" in _maps(pid)) is expect, (fp.config_path, pid)
