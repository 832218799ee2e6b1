"""Ranges from the cache, stale on origin failure, Accept-Encoding variants (issue 23).

Real memcached, real forkproxy masters with 2 workers, a real origin
(tests/support/backend.py) that counts requests per path.  No timing is
asserted: a stale answer is waited for with ``wait_until``.
"""

from __future__ import annotations

import json

import pytest
import requests

from support.backend import pattern
from support.configs import cache_site, memcached
from support.procs import free_port, wait_until
from support.rawhttp import Conn

MAXAGE = "hdr=Cache-Control:max-age%3D60"
COMPRESS = 'compress = { types = ["application/octet-stream", "text/*"], min_size = "1k" }'
BODY = b"".join(pattern(1000))


def start(forkproxy_factory, origin, mc, pool_extra="", route_extra="", cache_extra=""):
    port = free_port()
    body = cache_site(port, origin.addr, memcached(mc.addr) + "\n" + cache_extra,
                      route_extra) + pool_extra
    return forkproxy_factory(body), port


def get(port, path, headers=None, method="GET"):
    return requests.request(method, f"http://127.0.0.1:{port}{path}",
                            headers={"Connection": "close", **(headers or {})}, timeout=30)


def count(origin, path) -> int:
    return origin.stats()["by_path"].get(path, 0)


def upstream_headers(r) -> dict:
    """The request head /echo saw, lower-case names."""
    return {k.lower(): v for k, v in json.loads(r.content)["headers"]}


# -- ranges -------------------------------------------------------------------

def test_range_miss_stores_the_whole_then_hits_answer_parts(forkproxy_factory, origin, mc):
    fp, port = start(forkproxy_factory, origin, mc)
    path = f"/bytes?n=1000&{MAXAGE}"
    # the miss: the whole is asked for and stored, the client gets its part
    r = get(port, path, {"Range": "bytes=10-19"})
    assert r.status_code == 206 and r.headers["X-Cache"] == "MISS"
    assert r.headers["Content-Range"] == "bytes 10-19/1000" and r.content == BODY[10:20]
    cases = [("bytes=0-9", 206, "bytes 0-9/1000", BODY[:10]),
             ("bytes=990-", 206, "bytes 990-999/1000", BODY[990:]),
             ("bytes=-5", 206, "bytes 995-999/1000", BODY[995:]),
             ("bytes=500-5000", 206, "bytes 500-999/1000", BODY[500:]),
             ("bytes=1000-", 416, "bytes */1000", b""),
             ("bytes=0-1,5-6", 200, None, BODY),    # several ranges: the whole
             ("bytes=5-1", 200, None, BODY),        # invalid: ignored
             ("items=0-1", 200, None, BODY)]
    for _ in range(2):  # both workers
        for value, status, crange, body in cases:
            r = get(port, path, {"Range": value})
            assert (r.status_code, r.headers.get("Content-Range"), r.content) == \
                (status, crange, body), value
            assert r.headers["X-Cache"] == "HIT"
    assert count(origin, "/bytes") == 1
    # HEAD ignores Range
    h = get(port, path, {"Range": "bytes=0-9"}, method="HEAD")
    assert h.status_code == 200 and h.headers["Content-Length"] == "1000"
    log = fp.access_log()
    assert " 206 " in log and " 416 " in log and "cache=HIT" in log


def test_range_answers_keep_the_connection_in_step(forkproxy_factory, origin, mc):
    _, port = start(forkproxy_factory, origin, mc)
    path = f"/bytes?n=1000&{MAXAGE}".encode()
    with Conn(port) as c:
        for value in (b"bytes=0-3", b"bytes=0-3", b"bytes=2000-", b"bytes=-2"):
            c.send(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nRange: " + value + b"\r\n\r\n")
            r = c.reply()
            assert r.status in (206, 416)
            if r.status == 206:
                assert int(r.headers["Content-Length"]) == len(r.body) in (4, 2)
            else:
                assert r.headers["Content-Length"] == "0" and r.body == b""
        c.send(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert c.reply().body == BODY


def test_if_range(forkproxy_factory, origin, mc):
    _, port = start(forkproxy_factory, origin, mc)
    path = f"/etag/r?v=7&{MAXAGE}"
    full = get(port, path).content
    assert full == b'version "7"'
    r = get(port, path, {"Range": "bytes=0-6", "If-Range": '"7"'})
    assert r.status_code == 206 and r.content == b"version" and r.headers["X-Cache"] == "HIT"
    for other in ('"8"', 'W/"7"', "Tue, 01 Dec 2026 10:00:00 GMT"):  # does not hold: the whole
        r = get(port, path, {"Range": "bytes=0-6", "If-Range": other})
        assert r.status_code == 200 and r.content == full, other
    # a miss with an If-Range that does not hold for what the origin sends: the whole
    r = get(port, f"/etag/s?v=1&{MAXAGE}", {"Range": "bytes=0-6", "If-Range": '"0"'})
    assert r.status_code == 200 and r.headers["X-Cache"] == "MISS"
    assert count(origin, "/etag/r") == 1


def test_revalidated_and_compressed_routes_serve_parts(forkproxy_factory, origin, mc):
    _, port = start(forkproxy_factory, origin, mc, route_extra=COMPRESS)
    # always stale: each request revalidates (a 304), the part comes from the merged entry
    path = "/etag/x?v=7&hdr=Cache-Control:max-age%3D0"
    get(port, path)
    r = get(port, path, {"Range": "bytes=-3"})
    assert r.status_code == 206 and r.headers["X-Cache"] == "REVALIDATED" and r.content == b'"7"'
    # compress on the route: a part is never compressed, the whole is
    path = f"/bytes?n=4000&{MAXAGE}&hdr=Content-Type:text/plain"
    for cache in ("MISS", "HIT"):
        r = get(port, path, {"Range": "bytes=100-199", "Accept-Encoding": "gzip"})
        assert r.status_code == 206 and r.headers["X-Cache"] == cache
        assert "Content-Encoding" not in r.headers and r.content == b"".join(pattern(4000))[100:200]
    r = get(port, path, {"Accept-Encoding": "gzip"})
    assert r.status_code == 200 and r.headers["Content-Encoding"] == "gzip"


def test_a_miss_asks_for_the_whole_and_206_from_the_origin_is_not_stored(
        forkproxy_factory, origin, mc):
    _, port = start(forkproxy_factory, origin, mc)
    r = get(port, f"/echo?{MAXAGE}", {"Range": "bytes=0-0"})
    assert r.status_code == 206 and r.content == b"{"
    whole = get(port, f"/echo?{MAXAGE}")
    assert whole.headers["X-Cache"] == "HIT"
    seen = upstream_headers(whole)
    assert "range" not in seen and "if-range" not in seen
    # a 206 the origin sends unasked: relayed, not stored
    q = "hdr=Cache-Control:max-age%3D60&hdr=Content-Range:bytes%200-5/100"
    for _ in range(2):
        r = get(port, f"/status/206?{q}")
        assert r.status_code == 206 and r.headers["X-Cache"] == "MISS"
        assert r.headers["Content-Range"] == "bytes 0-5/100"
    assert count(origin, "/status/206") == 2
    # a URL whose responses cannot be stored (hit-for-pass) keeps its Range upstream
    get(port, "/echo?pass=1")
    r = get(port, "/echo?pass=1", {"Range": "bytes=0-0", "Accept-Encoding": "deflate, gzip"})
    seen = upstream_headers(r)
    assert r.headers["X-Cache"] == "MISS" and seen["range"] == "bytes=0-0"
    assert seen["accept-encoding"] == "gzip"  # it may be stored: the normalised one


# -- stale on origin failure -------------------------------------------------

STALE_NO_VALIDATOR = "hdr=Cache-Control:max-age%3D1,stale-if-error%3D600"
STALE_ETAG = STALE_NO_VALIDATOR + "&hdr=ETag:%22e%22"


def wait_stale(port, path):
    wait_until(lambda: get(port, path).headers.get("X-Cache") == "STALE", timeout=20,
               what="the stale entry served with the origin failing")
    r = get(port, path)
    assert r.status_code == 200 and r.headers["X-Cache"] == "STALE" and "Age" in r.headers
    assert "Warning" not in r.headers
    return r


@pytest.mark.parametrize("q", [STALE_NO_VALIDATOR, STALE_ETAG], ids=["no-validator", "etag"])
def test_stale_if_error_when_the_origin_is_gone(forkproxy_factory, origin, mc, q):
    _, port = start(forkproxy_factory, origin, mc)
    first = get(port, f"/gone?{q}")
    assert first.headers["X-Cache"] == "MISS"
    origin.stop()  # connections refused from now on
    assert wait_stale(port, f"/gone?{q}").content == first.content


@pytest.mark.parametrize("fault", ["reset=1", "ms=5000"], ids=["reset", "timeout"])
def test_stale_if_error_when_the_origin_resets_or_hangs(forkproxy_factory, origin, mc, fault):
    _, port = start(forkproxy_factory, origin, mc,
                    pool_extra='read_timeout = "1s"\n')
    path = f"/f?{STALE_NO_VALIDATOR}"
    first = get(port, path)
    assert first.status_code == 200 and first.headers["X-Cache"] == "MISS"
    requests.get(f"http://{origin.addr}/_setfault?{fault}", timeout=10)
    r = wait_stale(port, path)
    assert r.content == first.content
    # the range of a stale entry too
    r = get(port, path, {"Range": "bytes=0-1"})
    assert r.status_code == 206 and r.content == first.content[:2]


def test_stale_if_error_default_of_the_cache(forkproxy_factory, origin, mc):
    _, port = start(forkproxy_factory, origin, mc, cache_extra='stale_if_error = "10m"')
    plain = "/d?hdr=Cache-Control:max-age%3D1"  # says nothing of stale-if-error
    strict = "/d?hdr=Cache-Control:max-age%3D1,must-revalidate"
    # strict first: its Date (whole seconds, what its age counts from) is then
    # never later than plain's, so it is stale once plain is.  The other way
    # round, two requests either side of a second's turn left strict fresh
    # one second longer, and answered 200 (a clean-clone CI run saw it).
    get(port, strict)
    first = get(port, plain)
    origin.stop()
    assert wait_stale(port, plain).content == first.content
    assert get(port, strict).status_code in (502, 503, 504)


# -- Accept-Encoding variants ------------------------------------------------

def test_accept_encoding_orders_share_one_variant(forkproxy_factory, origin, mc):
    _, port = start(forkproxy_factory, origin, mc)
    path = f"/echo?{MAXAGE}&hdr=Vary:Accept-Encoding"
    first = get(port, path, {"Accept-Encoding": "gzip, deflate"})
    assert first.headers["X-Cache"] == "MISS"
    assert upstream_headers(first)["accept-encoding"] == "gzip"  # the variant's, upstream
    for ae in ("deflate, gzip", "gzip;q=1.0, deflate", "GZIP", "gzip, deflate"):
        r = get(port, path, {"Accept-Encoding": ae})
        assert r.headers["X-Cache"] == "HIT" and r.content == first.content, ae
    assert count(origin, "/echo") == 1
    # br and "no coding" are variants of their own
    br = get(port, path, {"Accept-Encoding": "gzip, br"})
    assert br.headers["X-Cache"] == "MISS" and upstream_headers(br)["accept-encoding"] == "br"
    plain = get(port, path, {"Accept-Encoding": "deflate"})
    assert plain.headers["X-Cache"] == "MISS" and "accept-encoding" not in upstream_headers(plain)
    assert get(port, path, {"Accept-Encoding": "identity"}).headers["X-Cache"] == "HIT"
    assert count(origin, "/echo") == 3
