"""Responses served from the cache go out like relayed ones (issues 6, 8, 9).

Real memcached or the embedded store (``store``), real forkproxy (2 workers), real
origin (tests/support/backend.py).
A hit goes through the route's response step: hide_headers, response_headers,
rewrite_location, then compress; the store keeps the origin's representation.
The breaker's transitions are in the error log.  No timing is asserted.
"""

from __future__ import annotations

import gzip
import subprocess
import zlib
from urllib.parse import quote

import pytest
import requests

from support.backend import pattern
from support.procs import free_port, wait_until
from support.configs import cache_site, memcached
from support.rawhttp import Conn

MAXAGE = "hdr=Cache-Control:max-age%3D60"


@pytest.fixture(params=["memcached", "shared"])
def store(request, memcached_factory):
    """A memcached, or None: the embedded store (servers = [])."""
    return memcached_factory() if request.param == "memcached" else None


def config(port, origin, mc, route_extra="", cache_extra="", timeout="1s") -> str:
    """``mc``: a memcached, or None for the embedded store."""
    servers = memcached(mc.addr, timeout) if mc is not None else "servers = []"
    return cache_site(port, origin.addr, f"{servers}\n{cache_extra}",
                      route_extra)


def start(forkproxy_factory, origin, mc, **kw):
    port = free_port()
    return forkproxy_factory(config(port, origin, mc, **kw)), port


def get(port, path, headers=None, method="GET"):
    return requests.request(method, f"http://127.0.0.1:{port}{path}",
                            headers={"Connection": "close", **(headers or {})}, timeout=30)


def hits(port, path, headers=None, n=6, method="GET"):
    """``n`` responses that must all be hits (Connection: close: both workers serve some)."""
    out = [get(port, path, headers, method) for _ in range(n)]
    assert [r.headers.get("X-Cache") for r in out] == ["HIT"] * n
    return out


def count(origin, path) -> int:
    return origin.stats()["by_path"].get(path, 0)


def test_hits_get_the_routes_response_rules(forkproxy_factory, origin, store):
    fp, port = start(forkproxy_factory, origin, store, route_extra="""
response_headers = { set = { X-Served-By = "edge" }, add = { X-Id = "$request_id" }, remove = ["X-Drop"] }
""")
    loc = quote(f"Location:http://{origin.addr}/there?a=1", safe="")
    path = f"/r?{MAXAGE}&hdr={loc}&hdr=X-Powered-By:php&hdr=X-Drop:1&hdr=X-Keep:1"
    miss = get(port, path)
    assert miss.headers["X-Cache"] == "MISS"
    seen_ids = {miss.headers["X-Id"]}
    for r in [miss] + hits(port, path):
        # hide_headers (the default: Server, X-Powered-By) on misses and hits alike
        assert "Server" not in r.headers and "X-Powered-By" not in r.headers
        assert "X-Drop" not in r.headers and r.headers["X-Keep"] == "1"
        assert r.headers["X-Served-By"] == "edge"
        # rewrite_location: the origin's own address becomes the one the client asked for
        assert r.headers["Location"] == f"http://127.0.0.1:{port}/there?a=1"
        seen_ids.add(r.headers["X-Id"])
    assert len(seen_ids) == 7  # variables are per request, not stored
    assert count(origin, "/r") == 1
    # the store kept the origin's head: a route without the rules would show it (checked
    # here through HEAD, which is served from the same stored GET)
    h = get(port, path, method="HEAD")
    assert h.headers["X-Cache"] == "HIT" and "Server" not in h.headers
    assert h.headers["X-Served-By"] == "edge"


COMPRESS = 'compress = { types = ["application/octet-stream", "text/*"], min_size = "1k" }'


@pytest.mark.parametrize("chunked", ["", "&chunked=1"])
def test_hits_are_compressed_for_clients_that_accept_it(forkproxy_factory, origin, store, chunked):
    fp, port = start(forkproxy_factory, origin, store, route_extra=COMPRESS)
    n = 50000
    want = b"".join(pattern(n))
    path = f"/bytes?n={n}{chunked}&{MAXAGE}"
    first = get(port, path, {"Accept-Encoding": "gzip"})
    assert first.headers["X-Cache"] == "MISS" and first.headers["Content-Encoding"] == "gzip"
    for r in hits(port, path, {"Accept-Encoding": "gzip"}):
        assert r.headers["Content-Encoding"] == "gzip" and r.content == want
        assert "Accept-Encoding" in r.headers["Vary"]
        assert "Content-Length" not in r.headers  # framed chunked
    # a client that accepts nothing gets the stored bytes as they are, with a length
    for r in hits(port, path, {"Accept-Encoding": "identity"}, n=2):
        assert "Content-Encoding" not in r.headers and r.content == want
        assert r.headers["Content-Length"] == str(n) and "Accept-Encoding" in r.headers["Vary"]
    # HEAD is never compressed
    h = get(port, path, {"Accept-Encoding": "gzip"}, method="HEAD")
    assert h.headers["X-Cache"] == "HIT" and "Content-Encoding" not in h.headers
    assert count(origin, "/bytes") == 1  # one stored representation serves every client


def test_compressed_hit_on_the_wire_with_curl_and_http10(forkproxy_factory, origin, store, tmp_path):
    fp, port = start(forkproxy_factory, origin, store, route_extra=COMPRESS)
    n = 200000
    want = b"".join(pattern(n))
    path = f"/bytes?n={n}&{MAXAGE}"
    get(port, path)
    body = tmp_path / "body"
    for _ in range(3):
        out = subprocess.run(["curl", "-sS", "--compressed", "-D", "-", "-o", str(body),
                              f"http://127.0.0.1:{port}{path}"],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        head = out.stdout.lower()
        assert "x-cache: hit" in head and "content-encoding:" in head
        assert body.read_bytes() == want
    # raw: the compressed hit is much smaller on the wire, chunked for 1.1
    with Conn(port) as c:
        c.send(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept-Encoding: gzip\r\n\r\n".encode())
        r = c.reply()
        assert r.headers["X-Cache"] == "HIT" and r.headers["Transfer-Encoding"] == "chunked"
        assert gzip.decompress(r.body) == want
        # and the connection is still usable after the compressed hit
        c.send(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        r2 = c.reply()
        assert r2.body == want and r2.headers["Content-Length"] == str(n)
    # HTTP/1.0: close-delimited
    with Conn(port) as c:
        c.send(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nAccept-Encoding: gzip\r\n\r\n".encode())
        raw = c.read_until_close(limit=1 << 22)
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert b"X-Cache: HIT" in head and b"Connection: close" in head
    assert zlib.decompress(rest, 31) == want


def test_origin_encoded_hits_are_not_compressed_twice(forkproxy_factory, origin, store):
    fp, port = start(forkproxy_factory, origin, store, route_extra=COMPRESS)
    path = f"/bytes?n=5000&hdr=Content-Encoding:gzip&hdr=Vary:Accept-Encoding&{MAXAGE}"
    with Conn(port) as c:  # raw: the body is not really gzip, no client may decode it
        for _ in range(2):
            c.send(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept-Encoding: gzip\r\n\r\n".encode())
            r = c.reply()
    assert r.headers["X-Cache"] == "HIT" and r.headers["Content-Encoding"] == "gzip"
    assert r.body == b"".join(pattern(5000)) and r.headers["Content-Length"] == "5000"


def test_breaker_transitions_are_in_the_error_log(forkproxy_factory, origin, mc):
    fp, port = start(forkproxy_factory, origin, mc,
                     cache_extra='breaker_cooldown = "300ms"', timeout="20ms")
    path = f"/b?{MAXAGE}"
    get(port, path)
    wait_until(lambda: get(port, path).headers["X-Cache"] == "HIT", what="a hit")
    mc.freeze()
    try:
        # every request is still served (fail open) while the breaker opens
        wait_until(lambda: get(port, path).status_code == 200
                   and "breaker open" in fp.error_log(), timeout=20, what="the breaker opening")
    finally:
        mc.thaw()
    wait_until(lambda: get(port, path).status_code == 200
               and "breaker closed" in fp.error_log(), timeout=20, what="the breaker closing")
    fp.wait_error_log("memcached")


def test_a_remembered_hit_head_still_fits_each_request(forkproxy_factory, origin, store):
    """Hits on one entry within a second share their head (net.http_cache remembers the
    last one made); every request still gets the head its own version, keep-alive,
    Host and cache status call for, interleaved, and Age moves on."""
    fp, port = start(forkproxy_factory, origin, store)
    path = f"/bytes?n=100&{MAXAGE}"
    body = b"".join(pattern(100))
    assert get(port, path, {"Host": "a.example"}).headers["X-Cache"] == "MISS"
    cases = [  # (request, Connection field expected, kept open)
        (b"GET %s HTTP/1.1\r\nHost: a.example\r\n\r\n", None, True),
        (b"GET %s HTTP/1.0\r\nHost: a.example\r\n\r\n", "close", False),
        (b"GET %s HTTP/1.0\r\nHost: a.example\r\nConnection: keep-alive\r\n\r\n", "keep-alive", True),
        (b"GET %s HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n", "close", False),
    ]
    for _ in range(3):
        for raw, connection, kept in cases:
            with Conn(port) as c:
                for _ in range(2 if kept else 1):  # an open connection takes another request
                    c.send(raw % path.encode())
                    r = c.reply()
                    assert (r.status, r.headers["X-Cache"], r.body) == (200, "HIT", body), raw
                    assert r.headers.get("Connection") == connection, raw
                    assert r.headers["Content-Length"] == "100"
                if not kept:
                    assert c.closed_by_peer()
    # the same hit for another Host: the same entry is not shared across hosts
    r = get(port, path, {"Host": "b.example"})
    assert r.headers["X-Cache"] == "MISS"

    def age() -> int:
        return int(get(port, path, {"Host": "a.example"}).headers["Age"])

    first = age()
    wait_until(lambda: age() > first, timeout=10, what="Age to move on")
