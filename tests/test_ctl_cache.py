"""``forkproxyctl purge`` through the admin endpoint, and the cache in ``status``.

A real master (2 workers) with the admin endpoint and a token, a real
memcached (skipped when not installed), a real origin; ``X-Cache`` says
what the cache did, the error log what the endpoint was asked.
"""

from __future__ import annotations

import json

import pytest
import requests

from support.configs import cache_site, memcached, one_pool
from support.procs import free_port, wait_until

pytestmark = pytest.mark.timeout(180)

TOKEN = "cache-token"
MAXAGE = "hdr=Cache-Control:max-age%3D60"


@pytest.fixture
def site(forkproxy_factory, backend_factory, memcached_factory):
    """(fp, port, memcached): one cached route, the rewritten /old/ route first."""
    mc = memcached_factory()
    origin = backend_factory("origin")
    port = free_port()
    body = cache_site(port, origin.addr, memcached(mc.addr))
    # A route that strips /old: its responses are stored under the rewritten target.
    body = body.replace("[[route]]", '[[route]]\npath = "/old/"\nstrip_prefix = "/old"\n'
                                     'pool = "web"\ncache = true\n\n[[route]]', 1)
    fp = forkproxy_factory(body, server={"admin": f"127.0.0.1:{free_port()}",
                                         "admin_token": TOKEN})
    fp.wait_workers()
    return fp, port, mc


def x_cache(port: int, path: str) -> str:
    r = requests.get(f"http://127.0.0.1:{port}{path}", headers={"Connection": "close"},
                     timeout=30)
    assert r.status_code == 200, r.text
    return r.headers["X-Cache"]


def test_purge_through_the_endpoint(site):
    fp, port, _ = site
    path = f"/p?{MAXAGE}"
    url = f"http://127.0.0.1:{port}{path}"
    assert x_cache(port, path) == "MISS"
    assert x_cache(port, path) == "HIT"
    out = fp.ctl("purge", url)
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"{url}: purged\n"
    assert x_cache(port, path) == "MISS"
    fp.wait_error_log(f"admin: purge of {url}: deleted (asked by 127.0.0.1)")
    out = fp.ctl("--json", "purge", f"http://127.0.0.1:{port}/never")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"url": f"http://127.0.0.1:{port}/never", "purged": False,
                                      "shared": True, "via": "admin"}
    # as clients ask for it: the route's rewrite finds the stored target
    old = f"/old/q?{MAXAGE}"
    assert x_cache(port, old) == "MISS"
    assert x_cache(port, old) == "HIT"
    assert fp.ctl("purge", f"http://127.0.0.1:{port}{old}").stdout.endswith(": purged\n")
    assert x_cache(port, old) == "MISS"
    # a whole host: the worker that took it at once, the other within a second
    assert x_cache(port, path) == "HIT"
    out = fp.ctl("purge", "--host", f"127.0.0.1:{port}")
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"every URL of 127.0.0.1:{port}: purged\n"
    wait_until(lambda: x_cache(port, path) == "MISS", timeout=10, what="a miss after the purge")
    fp.wait_error_log(f"admin: purge of every URL of 127.0.0.1:{port} (asked by 127.0.0.1)")


def test_purge_needs_the_token(site):
    fp, port, _ = site
    r = requests.post(f"http://{fp.server['admin']}/purge?host=x", timeout=30)
    assert r.status_code == 401
    r = requests.post(f"http://{fp.server['admin']}/purge", timeout=30,
                      headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 400


def cache_doc(fp) -> dict:
    out = fp.ctl("--json", "status")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["cache"]


def test_status_shows_the_cache(site):
    fp, port, mc = site
    path = f"/s?{MAXAGE}"

    def results() -> dict:
        return {"HIT": 0, "MISS": 0, **cache_doc(fp)["routes"][1]["results"]}

    before = results()  # the harness's readiness probe was a miss already
    for _ in range(4):
        x_cache(port, path)  # 1 MISS, 3 HIT, counted by whichever worker answered
    # A worker counts a request just after its last byte went out: wait for it.
    wait_until(lambda: results() == {**before, "HIT": before["HIT"] + 3,
                                     "MISS": before["MISS"] + 1},
               timeout=10, what="1 miss and 3 hits counted")
    doc = cache_doc(fp)
    assert doc["backend"] == "memcached"
    assert doc["servers"] == [{"addr": mc.addr, "reachable": True}]
    assert doc["breaker"] == "closed"
    ratio = (before["HIT"] + 3) / (before["HIT"] + before["MISS"] + 4)
    assert [(r["route"], r["hit_ratio"]) for r in doc["routes"]] == [(0, None), (1, ratio)]
    assert doc["hit_ratio"] == ratio
    out = fp.ctl("status")
    assert out.returncode == 0, out.stderr
    line = out.stdout.splitlines()[1]
    assert line.startswith(f"cache memcached {mc.addr} up; breaker closed (worker ")
    assert line.endswith(f"hit ratio {ratio:.1%} (route 0 -, route 1 {ratio:.1%})")
    mc.stop()
    assert cache_doc(fp)["servers"] == [{"addr": mc.addr, "reachable": False}]
    assert f"{mc.addr} NOT ANSWERING" in fp.ctl("status").stdout


def test_no_cache_no_cache_state(forkproxy_factory, backend_factory):
    b = backend_factory("b")
    port = free_port()
    fp = forkproxy_factory(one_pool(port, [b.addr]), server={"admin": f"127.0.0.1:{free_port()}", "admin_token": TOKEN})
    assert fp.ctl_status()["cache"] is None
    out = fp.ctl("purge", f"http://127.0.0.1:{port}/")
    assert out.returncode == 1
    assert "the cache is off" in out.stderr
