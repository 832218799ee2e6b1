"""The shared HTTP cache end to end (issue 6).

Real memcached (started by the fixture), real forkproxy masters with 2
workers, a real origin that counts requests per path (``/_stats``).  With
2 workers and memcached (or the embedded store: ``proxy`` runs over both), a
hit is a hit whichever worker serves it.  No
timing is asserted; figures live in bench/cache.py.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading

import pytest
import requests

from support.procs import free_port, wait_until
from support.configs import cache_site, memcached
from support.rawhttp import Conn

MAXAGE = "hdr=Cache-Control:max-age%3D60"


def config(port, backend, cache="", route_extra="") -> str:
    return cache_site(port, backend.addr, cache, route_extra)


@pytest.fixture(params=["memcached", "shared"])
def proxy(request, forkproxy_factory, origin, memcached_factory):
    """2 workers over memcached, or over the embedded store (servers = [])."""
    port = free_port()
    store = memcached(memcached_factory().addr) if request.param == "memcached" else "servers = []"
    # PURGE is refused by default (purge_allowed = []): these tests send it from loopback.
    return forkproxy_factory(config(port, origin, store + '\npurge_allowed = ["127.0.0.1"]'))


def port_of(fp) -> int:
    return int(fp.listeners()[0]["bind"].rsplit(":", 1)[1])


def get(fp, path, headers=None, method="GET"):
    return requests.request(method, f"http://127.0.0.1:{port_of(fp)}{path}",
                            headers={"Connection": "close", **(headers or {})}, timeout=30)


def count(origin, path) -> int:
    return origin.stats()["by_path"].get(path, 0)


def test_hit_after_miss_with_age_and_same_date(proxy, origin):
    r1 = get(proxy, f"/a?{MAXAGE}")
    assert r1.status_code == 200 and r1.headers["X-Cache"] == "MISS"
    for _ in range(6):  # both workers
        r = get(proxy, f"/a?{MAXAGE}")
        assert r.status_code == 200 and r.headers["X-Cache"] == "HIT"
        assert r.text == r1.text and "Age" in r.headers
        assert r.headers["Date"] == r1.headers["Date"]  # never rewritten
    assert count(origin, "/a") == 1
    # the query string is part of the key
    assert get(proxy, f"/a?x=1&{MAXAGE}").headers["X-Cache"] == "MISS"
    # HEAD from the stored GET, with the GET's length
    h = get(proxy, f"/a?{MAXAGE}", method="HEAD")
    assert h.headers["X-Cache"] == "HIT" and h.headers["Content-Length"] == str(len(r1.content))
    assert count(origin, "/a") == 2
    # Lines are written as requests end, after their answers.
    wait_until(lambda: "cache=HIT" in proxy.access_log() and "cache=MISS" in proxy.access_log(),
               what="the hits and misses logged")


def test_not_stored_private_no_store_and_unvalidated(proxy, origin):
    for q in ("hdr=Cache-Control:private,max-age%3D60", "hdr=Cache-Control:no-store", ""):
        for _ in range(2):
            assert get(proxy, f"/n?{q}").headers["X-Cache"] == "MISS"
    assert count(origin, "/n") == 6


def test_cdn_cache_control_overrides(proxy, origin):
    q = "hdr=Cache-Control:no-store&hdr=CDN-Cache-Control:max-age%3D60"
    get(proxy, f"/cdn?{q}")
    assert get(proxy, f"/cdn?{q}").headers["X-Cache"] == "HIT"
    assert count(origin, "/cdn") == 1


def test_vary_keeps_variants(proxy, origin):
    q = f"{MAXAGE}&hdr=Vary:X-Lang"
    assert get(proxy, f"/v?{q}", {"X-Lang": "en"}).headers["X-Cache"] == "MISS"
    assert get(proxy, f"/v?{q}", {"X-Lang": "fr"}).headers["X-Cache"] == "MISS"
    assert get(proxy, f"/v?{q}", {"X-Lang": "en"}).headers["X-Cache"] == "HIT"
    assert get(proxy, f"/v?{q}", {"X-Lang": "fr"}).headers["X-Cache"] == "HIT"
    assert count(origin, "/v") == 2
    # an unsafe method invalidates every variant
    assert requests.post(f"http://127.0.0.1:{port_of(proxy)}/v?{q}", data=b"x",
                         timeout=30).status_code == 200
    assert get(proxy, f"/v?{q}", {"X-Lang": "en"}).headers["X-Cache"] == "MISS"
    assert get(proxy, f"/v?{q}", {"X-Lang": "fr"}).headers["X-Cache"] == "MISS"


def test_revalidation_with_etag_and_client_304(proxy, origin):
    q = "v=7&hdr=Cache-Control:max-age%3D0"
    r = get(proxy, f"/etag/x?{q}")
    assert r.status_code == 200 and r.headers["X-Cache"] == "MISS" and r.headers["ETag"] == '"7"'
    r = get(proxy, f"/etag/x?{q}")
    assert r.status_code == 200 and r.headers["X-Cache"] == "REVALIDATED"
    assert r.text == 'version "7"'
    assert count(origin, "/etag/x") == 2  # the second one was a conditional GET answered 304
    # a fresh entry answers the client's own conditional request
    q2 = "v=8&" + MAXAGE
    get(proxy, f"/etag/y?{q2}")
    r = get(proxy, f"/etag/y?{q2}", {"If-None-Match": '"8"'})
    assert r.status_code == 304 and r.headers["X-Cache"] == "HIT"
    assert count(origin, "/etag/y") == 1


def test_stale_while_revalidate_refreshes_in_background(proxy, origin):
    q = "hdr=Cache-Control:max-age%3D1,stale-while-revalidate%3D60&hdr=ETag:%22s%22"
    get(proxy, f"/swr?{q}")
    wait_until(lambda: get(proxy, f"/swr?{q}").headers["X-Cache"] == "STALE", timeout=10,
               what="the entry to go stale")
    wait_until(lambda: count(origin, "/swr") >= 2, what="the background refresh")


def test_stale_if_error_when_the_pool_is_down(proxy, origin):
    q = "hdr=Cache-Control:max-age%3D1,stale-if-error%3D600&hdr=ETag:%22e%22"
    get(proxy, f"/sie?{q}")
    origin.stop()
    wait_until(lambda: get(proxy, f"/sie?{q}").headers.get("X-Cache") == "STALE", timeout=10,
               what="the stale entry served with the origin down")
    r = get(proxy, f"/sie?{q}")
    assert r.status_code == 200 and r.headers["X-Cache"] == "STALE"


def test_invalidation_by_location_and_purge(proxy, origin):
    get(proxy, f"/p?{MAXAGE}")
    get(proxy, f"/q?{MAXAGE}")
    assert get(proxy, f"/p?{MAXAGE}").headers["X-Cache"] == "HIT"
    # a PUT whose Location names /q?... invalidates it too
    loc = f"/q?{MAXAGE}".replace("%", "%25")
    r = requests.put(f"http://127.0.0.1:{port_of(proxy)}/other?hdr=Location:{loc}", data=b"x",
                     timeout=30)
    assert r.status_code == 200
    assert get(proxy, f"/q?{MAXAGE}").headers["X-Cache"] == "MISS"
    # PURGE from loopback
    r = requests.request("PURGE", f"http://127.0.0.1:{port_of(proxy)}/p?{MAXAGE}", timeout=30)
    assert r.status_code == 200
    assert get(proxy, f"/p?{MAXAGE}").headers["X-Cache"] == "MISS"
    # forkproxyctl purge URL and purge --host
    url = f"http://127.0.0.1:{port_of(proxy)}/p?{MAXAGE}"
    out = subprocess.run([sys.executable, "-m", "forkproxy.ctl", "-c", str(proxy.config_path),
                          "purge", url], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert get(proxy, f"/p?{MAXAGE}").headers["X-Cache"] == "MISS"
    assert get(proxy, f"/q?{MAXAGE}").headers["X-Cache"] == "HIT"
    out = subprocess.run([sys.executable, "-m", "forkproxy.ctl", "-c", str(proxy.config_path),
                          "purge", "--host", f"127.0.0.1:{port_of(proxy)}"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    # the worker that took the PURGE at once, the other one within NAMESPACE_TTL (1 s)
    wait_until(lambda: get(proxy, f"/q?{MAXAGE}").headers["X-Cache"] == "MISS", timeout=10,
               what="a miss after purge --host")


def test_coalescing_100_concurrent_misses_one_origin_request(proxy, origin):
    path = f"/slow?ms=300&{MAXAGE}"
    results = []

    def one():
        try:
            results.append(get(proxy, path).status_code)
        except Exception as exc:  # noqa: BLE001 - reported by the assert below
            results.append(repr(exc))

    threads = [threading.Thread(target=one) for _ in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results.count(200) == 100, results
    assert count(origin, "/slow") == 1


def test_large_object_in_chunks_and_too_large_passes(forkproxy_factory, origin, mc):
    port = free_port()
    fp = forkproxy_factory(config(port, origin, memcached(mc.addr) + '\nmax_object_size = "4m"'))
    n = 3_500_000
    want = hashlib.sha256(b"".join(_pattern(n))).hexdigest()
    for chunked in ("", "&chunked=1"):
        path = f"/bytes?n={n}{chunked}&{MAXAGE}"
        r1 = get(fp, path)
        r2 = get(fp, path)
        assert r1.headers["X-Cache"] == "MISS" and r2.headers["X-Cache"] == "HIT"
        assert hashlib.sha256(r2.content).hexdigest() == want
        origin.reset()
    big = f"/bytes?n={5_000_000}&{MAXAGE}"
    for _ in range(2):
        r = get(fp, big)
        assert r.headers["X-Cache"] == "MISS" and len(r.content) == 5_000_000


def _pattern(n):
    block = bytes(range(256)) * 256
    while n > 0:
        k = min(n, len(block))
        yield block[:k]
        n -= k


def test_two_proxies_two_memcached_share_entries(forkproxy_factory, origin, memcached_factory):
    m1, m2 = memcached_factory(), memcached_factory()
    servers = memcached([m1.addr, m2.addr])
    a = forkproxy_factory(config(free_port(), origin, servers))
    b = forkproxy_factory(config(free_port(), origin, servers))
    host = {"Host": "shop.example"}  # the key holds the Host: the same site behind both
    for i in range(20):
        assert get(a, f"/s{i}?{MAXAGE}", host).headers["X-Cache"] == "MISS"
    for i in range(20):
        assert get(b, f"/s{i}?{MAXAGE}", host).headers["X-Cache"] == "HIT"
    assert count(origin, "/s0") == 1
    assert int(m1.stats()["curr_items"]) > 0 and int(m2.stats()["curr_items"]) > 0


@pytest.mark.parametrize("how", ["kill", "freeze"])
def test_memcached_killed_or_frozen_every_request_served(forkproxy_factory, origin, mc, how):
    # The production timeout: what fails open here is what would in production.
    fp = forkproxy_factory(config(free_port(), origin, memcached(mc.addr, "30ms")))
    get(fp, f"/k?{MAXAGE}")
    errors, served, stop = [], [0], threading.Event()

    def load():
        while not stop.is_set():
            try:
                r = get(fp, f"/k?{MAXAGE}")
                if r.status_code != 200:
                    errors.append(r.status_code)
                served[0] += 1
            except Exception as exc:  # noqa: BLE001
                errors.append(repr(exc))

    threads = [threading.Thread(target=load) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: served[0] > 50, what="load before the fault")
        if how == "kill":
            mc.stop()
        else:
            mc.freeze()
        mark = served[0]
        wait_until(lambda: served[0] > mark + 200, timeout=30, what="load through the fault")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        if how == "freeze":
            mc.thaw()
    assert errors == []
    assert get(fp, f"/k?{MAXAGE}").status_code == 200


def test_in_process_cache_and_purge_forbidden(forkproxy_factory, origin):
    fp = forkproxy_factory(config(free_port(), origin, "servers = []\npurge_allowed = [\"10.0.0.0/8\"]"),
                           server={"workers": 1})
    get(fp, f"/m?{MAXAGE}")
    assert get(fp, f"/m?{MAXAGE}").headers["X-Cache"] == "HIT"
    r = requests.request("PURGE", f"http://127.0.0.1:{port_of(fp)}/m?{MAXAGE}", timeout=30)
    assert r.status_code == 403
    with Conn(port_of(fp)) as c:
        c.send(b"GET /m?" + MAXAGE.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert c.reply().status == 200


def test_no_worker_serves_a_copy_older_than_a_purge(proxy, origin):
    """Each worker keeps near copies of hot entries (net.cache_store); a PURGE taken
    by either worker must void them in both at once: the next GET, whichever
    worker takes it, is a miss.  Over 8 rounds, the GET goes to the worker that
    did not take the PURGE in about half of them."""
    path = f"/near?{MAXAGE}"
    for round_ in range(8):
        for _ in range(12):  # new connections: both workers read the entry (and keep it)
            assert get(proxy, path).status_code == 200
        before = count(origin, "/near")
        r = requests.request("PURGE", f"http://127.0.0.1:{port_of(proxy)}{path}", timeout=30)
        assert r.status_code == 200
        r = get(proxy, path)
        assert r.headers["X-Cache"] == "MISS", f"round {round_}: a copy outlived the purge"
        assert count(origin, "/near") == before + 1
