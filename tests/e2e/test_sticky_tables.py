"""Stickiness shared by a fleet: two forkproxy daemons honour each other's sticky
cookies (same sticky.secret), and hold one sticky table in memcached
(sticky = { key = ..., scope = "fleet" }); without memcached each worker keeps
its own table and the status says so; a pinned server that goes into maint
gets its clients re-pinned, in the table every node reads.
"""

from __future__ import annotations

import json

from support.configs import memcached, one_pool
from support.procs import free_port, wait_until
from support.runner import http_get

TOKEN = "s3cret-token"
CLIENTS = [f"client-{n}" for n in range(6)]


def node(forkproxy_factory, backends, sticky: str, cache: str = "", workers: int = 2):
    port, aport = free_port(), free_port()
    body = (f"[cache]\n{cache}\n" if cache else "") + one_pool(
        port, [b.addr for b in backends], f"sticky = {{ {sticky} }}", pool="app")
    fp = forkproxy_factory(body, server={"admin": f"127.0.0.1:{aport}", "admin_token": TOKEN,
                                         "workers": workers})
    return fp, port


def backend_for(port, client: str | None = None, cookie: str | None = None):
    """(the backend that answered, the Set-Cookie sent back or None)."""
    headers = {}
    if client is not None:
        headers["X-Client"] = client
    if cookie is not None:
        headers["Cookie"] = cookie
    status, hdrs, _ = http_get("127.0.0.1", port, "/", headers=headers)
    assert status == 200
    hdrs = {k.lower(): v for k, v in hdrs.items()}
    return hdrs["x-backend"], hdrs.get("set-cookie")


def sticky_tables(fp) -> list[dict]:
    return json.loads(fp.ctl("--json", "status").stdout)["sticky_tables"]


def test_two_nodes_with_one_secret_honour_each_others_cookies(forkproxy_factory,
                                                                backend_factory):
    bs = [backend_factory(f"b{i}") for i in range(3)]
    sticky = 'cookie = "srv", secret = "one secret for the fleet"'
    (_, p1), (_, p2) = (node(forkproxy_factory, bs, sticky) for _ in range(2))
    for _ in range(3):
        first, set_cookie = backend_for(p1)
        cookie = set_cookie.split(";", 1)[0]
        # The other node knows the token: no new cookie, the same server, every time.
        assert [backend_for(p2, cookie=cookie) for _ in range(4)] == [(first, None)] * 4


def test_two_nodes_on_one_memcached_pin_a_client_to_one_server(forkproxy_factory,
                                                               backend_factory, memcached_factory):
    mc = memcached_factory()
    bs = [backend_factory(f"b{i}") for i in range(3)]
    sticky = 'key = "header:X-Client", ttl = "30m", scope = "fleet"'
    (fp1, p1), (fp2, p2) = (node(forkproxy_factory, bs, sticky, memcached(mc.addr))
                            for _ in range(2))
    first = {c: backend_for(p1, c)[0] for c in CLIENTS}
    assert len(set(first.values())) > 1  # balanced round robin, then pinned
    for c in CLIENTS:
        assert [backend_for(p, c) for p in (p2, p1, p2)] == [(first[c], None)] * 3
    assert sticky_tables(fp1) == [{"pool": "app", "scope": "fleet", "shared": True, "why": None}]
    assert "sticky table of pool app: shared by the fleet" in fp2.ctl("status").stdout


def test_without_memcached_each_worker_keeps_its_own_table_and_says_so(
        forkproxy_factory, backend_factory, memcached_factory):
    mc = memcached_factory()
    bs = [backend_factory(f"b{i}") for i in range(3)]
    sticky = 'key = "header:X-Client", ttl = "30m", scope = "fleet"'
    fp, port = node(forkproxy_factory, bs, sticky, memcached(mc.addr, timeout="50ms"), workers=1)
    mc.stop()
    first = {c: backend_for(port, c)[0] for c in CLIENTS}
    assert len(set(first.values())) > 1
    for c in CLIENTS:  # the worker's own table still pins them
        assert [backend_for(port, c)[0] for _ in range(2)] == [first[c]] * 2
    (st,) = sticky_tables(fp)
    assert st["shared"] is False and "memcached unreachable" in st["why"]
    assert "sticky table of pool app: WORKER TABLES (memcached unreachable" in fp.ctl("status").stdout


def test_a_client_pinned_to_a_server_in_maint_is_pinned_again(forkproxy_factory, backend_factory,
                                                              memcached_factory):
    mc = memcached_factory()
    bs = [backend_factory(f"b{i}") for i in range(3)]
    sticky = 'key = "header:X-Client", ttl = "30m", scope = "fleet"'
    (fp1, p1), (fp2, p2) = (node(forkproxy_factory, bs, sticky, memcached(mc.addr))
                            for _ in range(2))
    old = backend_for(p1, "alice")[0]
    addr = next(b.addr for b in bs if b.name == old)
    assert fp1.ctl("maint", "app", addr).returncode == 0
    wait_until(lambda: backend_for(p1, "alice")[0] != old, what="a fresh choice for alice")
    new = backend_for(p1, "alice")[0]
    # The entry was rewritten: the other node follows it, and it holds after maint ends.
    assert fp1.ctl("ready", "app", addr).returncode == 0
    wait_until(lambda: json.loads(fp1.ctl("--json", "status").stdout)["pools"][0]["servers"]
               [[b.addr for b in bs].index(addr)]["admin"] == "ready", what="ready again")
    assert [backend_for(p, "alice")[0] for p in (p2, p1, p2, p1)] == [new] * 4


def test_explain_shows_the_key_and_its_entry(forkproxy_factory, backend_factory):
    bs = [backend_factory(f"b{i}") for i in range(2)]
    fp, port = node(forkproxy_factory, bs, 'key = "header:X-Client", ttl = "30m"', workers=1)
    first = backend_for(port, "alice")[0]
    addr = next(b.addr for b in bs if b.name == first)
    url = f"http://127.0.0.1:{port}/"
    doc = json.loads(fp.ctl("--json", "explain", "GET", url, "-H", "X-Client: alice").stdout)
    assert doc["sticky"] == {"table": "node", "key": "header:x-client", "value": "h alice",
                             "server": addr}
    assert doc["server"] == {"addr": addr, "by": "sticky"}
    text = fp.ctl("explain", "GET", url).stdout
    assert "node table by header:x-client: the request has no key" in text
