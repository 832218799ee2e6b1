"""Hot hits: the same head bytes again and again (issue 20).

A worker answers a request whose head bytes it answered from the cache
before without building its key or deciding again (``net.http_cache``, "hot
hits"): it only asks the store whether the same bytes are still there and the
clock whether they are still fresh.  These tests send the very same bytes on
one keep-alive connection (so one worker, and the same request object each
time) and change, between two of them, each thing that must end the hit:
a purge of the URL, of its host, an unsafe request to it, its expiry, and
another route answering the same bytes on another listener.

Real memcached or the embedded store, real forkproxy, real origins.  The
origin's request count says what reached it; no timing is asserted (the
expiry is waited for, bounded).
"""

from __future__ import annotations

import pytest

from support.procs import free_port, wait_until
from support.configs import cache_site, memcached
from support.rawhttp import Conn

PATH = b"/hot?hdr=Cache-Control:max-age%3D60"
HEAD = b"GET " + PATH + b" HTTP/1.1\r\nHost: hot.example\r\nAccept: */*\r\n\r\n"


@pytest.fixture(params=["memcached", "shared"])
def store(request, memcached_factory):
    """A memcached, or None: the embedded store (servers = [])."""
    return memcached_factory() if request.param == "memcached" else None


def start(forkproxy_factory, origin, mc):
    port = free_port()
    servers = memcached(mc.addr) if mc is not None else "servers = []"
    body = cache_site(port, origin.addr, f'{servers}\npurge_allowed = ["127.0.0.1/32"]')
    return forkproxy_factory(body), port


def reached(origin) -> int:
    return origin.stats()["by_path"].get("/hot", 0)


def ask(c: Conn, head: bytes = HEAD):
    c.send(head)
    r = c.reply()
    assert r.status == 200, (head, r.status)
    return r.headers.get("X-Cache")


def test_the_same_bytes_stop_hitting_when_the_url_or_its_host_is_purged(
        forkproxy_factory, origin, store):
    fp, port = start(forkproxy_factory, origin, store)
    with Conn(port) as c:
        assert ask(c) == "MISS"
        assert [ask(c) for _ in range(4)] == ["HIT"] * 4
        assert reached(origin) == 1
        # PURGE of the URL, on the same connection (the same worker)
        ask(c, b"PURGE " + PATH + b" HTTP/1.1\r\nHost: hot.example\r\n\r\n")  # 200: it was there
        assert ask(c) == "MISS"
        assert reached(origin) == 2
        assert [ask(c) for _ in range(3)] == ["HIT"] * 3
        # PURGE /*: the host's namespace changes, so does every key of it
        ask(c, b"PURGE /* HTTP/1.1\r\nHost: hot.example\r\n\r\n")
        assert ask(c) == "MISS"
        assert reached(origin) == 3
        assert ask(c) == "HIT"
        # An unsafe request to the URL invalidates it (RFC 9111 4.4)
        c.send(b"POST " + PATH + b" HTTP/1.1\r\nHost: hot.example\r\nContent-Length: 2\r\n\r\nhi")
        assert c.reply().status == 200
        assert ask(c) == "MISS"
        assert reached(origin) == 5  # the POST, then the GET
        assert ask(c) == "HIT"
        assert reached(origin) == 5


def test_the_same_bytes_stop_hitting_when_the_entry_expires(forkproxy_factory, origin, store):
    fp, port = start(forkproxy_factory, origin, store)
    head = HEAD.replace(b"max-age%3D60", b"max-age%3D1")
    with Conn(port) as c:
        assert ask(c, head) == "MISS"
        assert ask(c, head) == "HIT"
        # Within a few seconds the stored answer is stale: the origin is asked again.
        wait_until(lambda: ask(c, head) != "HIT", timeout=10, what="the entry to expire")
        assert reached(origin) == 2


def test_the_same_bytes_on_another_listener_get_that_routes_answer(
        forkproxy_factory, backend_factory):
    """One worker, two listeners, each with its cached route to its own
    origin: the same head bytes (the same request object) on each get each
    route's stored answer, never the other's."""
    one, two = backend_factory("one"), backend_factory("two")
    pa, pb = free_port(), free_port()
    fp = forkproxy_factory(f"""
[cache]
servers = []

[[listener]]
name = "a"
bind = "127.0.0.1:{pa}"

[[listener]]
name = "b"
bind = "127.0.0.1:{pb}"

[[route]]
listener = ["a"]
pool = "pa"
cache = true

[[route]]
listener = ["b"]
pool = "pb"
cache = true

[pool.pa]
servers = [{{ addr = "{one.addr}" }}]

[pool.pb]
servers = [{{ addr = "{two.addr}" }}]
""", server={"workers": 1})
    with Conn(pa) as a, Conn(pb) as b:
        for conn, name in [(a, b"one"), (a, b"one"), (b, b"two"), (b, b"two"), (a, b"one")]:
            conn.send(HEAD)
            r = conn.reply()
            assert (r.status, r.body) == (200, name)
    assert one.stats()["by_path"]["/hot"] == 1
    assert two.stats()["by_path"]["/hot"] == 1
