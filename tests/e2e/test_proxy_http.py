"""HTTP/1.1 reverse proxying end to end: a real forkproxy master with 2 workers
in front of real backend processes, driven by raw sockets, requests and curl.

One proxy serves the whole module (starting one costs a second); tests that
need their own configuration use the function-scoped factories.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import socket
import subprocess
import threading

import pytest
import requests

from support.backend import pattern_sha256
from support.configs import one_pool
from support.procs import free_port, wait_until
from support.rawhttp import Conn, exchange
from support.runner import Backend, ForkProxy


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """forkproxy on two listeners with host, path and listener routes over four backends."""
    d = tmp_path_factory.mktemp("site")
    b1, b2, b3, api = (Backend(n, d / "backends") for n in ("b1", "b2", "b3", "api"))
    web, admin = free_port(), free_port()
    body = f"""
[[listener]]
name = "web"
bind = "127.0.0.1:{web}"

[[listener]]
name = "internal"
bind = "127.0.0.1:{admin}"

[[route]]
listener = "internal"
pool = "api"

[[route]]
host = "*.api.example"
pool = "api"

[[route]]
host = "shop.example"
path = "/api/"
pool = "api"

[[route]]
path_regex = "^/v[0-9]+/"
pool = "api"

[[route]]
host = "shop.example"
pool = "web"

[[route]]
host = "other.example"
pool = "web"

[pool.web]
servers = [{{ addr = "{b1.addr}" }}, {{ addr = "{b2.addr}", weight = 3 }},
           {{ addr = "{b3.addr}", backup = true }}]

[pool.api]
servers = [{{ addr = "{api.addr}" }}]
"""
    fp = ForkProxy(d / "fp", body, {"max_body_size": "2g"})
    fp.start()
    fp.wait_ready(web)
    s = requests.Session()
    s.trust_env = False
    yield type("Site", (), {"fp": fp, "web": web, "internal": admin, "b1": b1, "b2": b2,
                            "b3": b3, "api": api, "http": s,
                            "url": f"http://127.0.0.1:{web}"})
    s.close()
    fp.stop()
    for b in (b1, b2, b3, api):
        b.stop()


def get(site, path="/", host="shop.example", **kw):
    headers = {"Host": host, **kw.pop("headers", {})}
    return site.http.get(site.url + path, headers=headers, timeout=10, **kw)


# -- routing -------------------------------------------------------------------

@pytest.mark.parametrize("host,path,port_attr,backend", [
    ("shop.example", "/api/x", "web", "api"),        # host + path prefix
    ("SHOP.Example:8080", "/api/x", "web", "api"),   # case-insensitive, port ignored
    ("shop.example", "/apix", "web", "web"),          # prefix is a string prefix: /api/ != /apix
    ("x.api.example", "/", "web", "api"),             # wildcard host
    ("api.example", "/", "web", None),               # the wildcard does not match the bare domain
    ("shop.example", "/v2/items", "web", "api"),      # path regex
    ("other.example", "/", "web", "web"),
    ("nothing.example", "/", "web", None),            # no route: forkproxy's own 404
    ("nothing.example", "/", "internal", "api"),      # listener route
])
def test_routes_first_match_in_file_order(site, host, path, port_attr, backend):
    port = getattr(site, port_attr)
    r = site.http.get(f"http://127.0.0.1:{port}{path}", headers={"Host": host}, timeout=10)
    if backend is None:
        assert r.status_code == 404
        assert "x-backend" not in r.headers
        assert r.headers["Connection"] == "close"
    else:
        assert r.status_code == 200
        got = r.headers["x-backend"]
        assert (got == "api") if backend == "api" else got in ("b1", "b2")


def test_absolute_form_target_routes_by_its_authority(site):
    raw = (b"GET http://x.api.example/echo?q=1 HTTP/1.1\r\nHost: shop.example\r\n"
           b"Connection: close\r\n\r\n")
    with Conn(site.web) as c:
        c.send(raw)
        reply = c.reply()
    assert reply.status == 200
    echoed = json.loads(reply.body)
    assert echoed["backend"] == "api"
    assert echoed["path"] == "/echo?q=1"  # origin-form upstream


def test_absolute_form_target_without_a_path_keeps_its_query(site):
    """The authority ends at "?" too: the slash in the query is no path (RFC 3986 3.2)."""
    raw = (b"GET http://x.api.example?q=/b HTTP/1.1\r\nHost: shop.example\r\n"
           b"Connection: close\r\n\r\n")
    with Conn(site.web) as c:
        c.send(raw)
        reply = c.reply()
    assert reply.status == 200 and reply.body == b"api"  # was 400: "x.api.example?q=" as Host


# -- balancing -------------------------------------------------------------------

def test_smooth_weighted_round_robin_over_fresh_connections(site):
    """Weights 1:3 across 2 workers: each worker's SWRR is exact, so the total is within 2."""
    for b in (site.b1, site.b2, site.b3):
        b.reset()
    n = 200
    for _ in range(n):
        r = requests.get(site.url + "/", headers={"Host": "shop.example", "Connection": "close"},
                         timeout=10)
        assert r.status_code == 200
    c1, c2, c3 = (b.stats()["requests"] for b in (site.b1, site.b2, site.b3))
    assert c1 + c2 == n
    assert abs(c1 - n / 4) <= 2, (c1, c2)
    assert c3 == 0  # the backup is idle while the primaries answer


def test_backup_serves_only_when_no_primary_can_be_reached(forkproxy_factory, backend_factory):
    p1, p2, backup = backend_factory("p1"), backend_factory("p2"), backend_factory("bk")
    port = free_port()
    fp = forkproxy_factory(one_pool(port, [p1.addr, p2.addr,
                                           f'{{ addr = "{backup.addr}", backup = true }}']))
    url = f"http://127.0.0.1:{port}/"
    assert {requests.get(url, timeout=10).headers["x-backend"] for _ in range(10)} == {"p1", "p2"}
    p1.stop()
    assert {requests.get(url, timeout=10).headers["x-backend"] for _ in range(10)} == {"p2"}
    p2.stop()
    answers = [requests.get(url, timeout=10) for _ in range(6)]
    assert [r.status_code for r in answers] == [200] * 6
    assert {r.headers["x-backend"] for r in answers} == {"bk"}
    backup.stop()
    r = requests.get(url, timeout=10)
    assert r.status_code == 502
    assert "127.0.0.1" not in r.text
    log = fp.wait_error_log("refused")
    assert "pool=web" in log


# -- keep-alive and pipelining -------------------------------------------------------

def test_client_keepalive_and_upstream_connection_reuse(site):
    with Conn(site.web) as c:
        peers = set()
        for _ in range(20):
            c.send(b"GET /echo HTTP/1.1\r\nHost: x.api.example\r\n\r\n")
            reply = c.reply()
            assert reply.status == 200
            peers.add(json.loads(reply.body)["peer"])
    # One client connection is served by one worker, which reuses its
    # upstream connection instead of opening twenty.
    assert len(peers) == 1


def test_pipelined_requests_are_answered_in_order(site):
    paths = [f"/echo?n={i}" for i in range(5)]
    raw = b"".join(f"GET {p} HTTP/1.1\r\nHost: x.api.example\r\n\r\n".encode() for p in paths)
    with Conn(site.web) as c:
        c.send(raw)
        got = [json.loads(c.reply().body)["path"] for _ in paths]
    assert got == paths


def test_http10_client_gets_close_delimited_body_and_the_connection_closed(site):
    out = exchange(site.web, b"GET /bytes?n=5000&chunked=1 HTTP/1.0\r\nHost: x.api.example\r\n\r\n")
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding" not in head.lower()
    assert b"connection: close" in head.lower()
    assert len(body) == 5000


def test_http10_keepalive_when_asked(site):
    with Conn(site.web) as c:
        for _ in range(3):
            c.send(b"GET / HTTP/1.0\r\nHost: x.api.example\r\nConnection: keep-alive\r\n\r\n")
            reply = c.reply()
            assert reply.status == 200
            assert reply.headers["Connection"].lower() == "keep-alive"


# -- HEAD, 1xx, 204, 304, 100-continue ---------------------------------------------------

@pytest.mark.parametrize("method,path,status", [
    ("HEAD", "/bytes?n=1000", 200),
    ("GET", "/status/204", 204),
    ("GET", "/status/304", 304),
])
def test_bodiless_responses_keep_the_connection_in_sync(site, method, path, status):
    with Conn(site.web) as c:
        c.send(f"{method} {path} HTTP/1.1\r\nHost: x.api.example\r\n\r\n".encode())
        reply = c.reply(method)
        assert reply.status == status and reply.body == b""
        if method == "HEAD":
            assert reply.headers["Content-Length"] == "1000"
        c.send(b"GET /echo HTTP/1.1\r\nHost: x.api.example\r\n\r\n")
        assert json.loads(c.reply().body)["method"] == "GET"


def test_interim_1xx_is_forwarded_before_the_final_response(site):
    out = exchange(site.web, b"GET /early HTTP/1.1\r\nHost: x.api.example\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 103 Early Hints\r\n")
    assert b"\r\n\r\nHTTP/1.1 200 OK\r\n" in out


def test_expect_100_continue(site):
    body = b"z" * 5000
    with Conn(site.web) as c:
        c.send(b"POST /upload HTTP/1.1\r\nHost: x.api.example\r\nContent-Length: 5000\r\n"
               b"Expect: 100-continue\r\n\r\n")
        first = c.sock.recv(100)
        assert first == b"HTTP/1.1 100 Continue\r\n\r\n"
        c.send(body)
        reply = c.reply()
    assert json.loads(reply.body) == {"len": 5000, "sha256": hashlib.sha256(body).hexdigest()}


def test_unknown_expectation_is_417(site):
    out = exchange(site.web, b"GET / HTTP/1.1\r\nHost: x.api.example\r\nExpect: teapot\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 417 ")


# -- bodies ------------------------------------------------------------------------------

def test_chunked_request_body_is_delivered_intact(site):
    chunks = [b"a" * 10, b"b" * 70000, b"c"]
    raw = (b"POST /upload HTTP/1.1\r\nHost: x.api.example\r\nTransfer-Encoding: chunked\r\n\r\n"
           + b"".join(b"%x;ext=1\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n")
    with Conn(site.web) as c:
        c.send(raw)
        got = json.loads(c.reply().body)
    whole = b"".join(chunks)
    assert got == {"len": len(whole), "sha256": hashlib.sha256(whole).hexdigest()}


def test_chunked_response_is_rechunked_for_http11(site):
    r = get(site, "/bytes?n=300000&chunked=1", host="x.api.example", stream=True)
    assert r.headers["Transfer-Encoding"] == "chunked"
    assert hashlib.sha256(r.raw.read()).hexdigest() == pattern_sha256(300000)


def _vm(pid: int, key: str) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])  # kB
    raise KeyError(key)


GIB = 1 << 30


def test_one_gib_download_and_upload_stream_with_bounded_memory(forkproxy_factory, backend_factory):
    """RSS growth of the serving worker (peak, VmHWM) stays under 20 MiB."""
    big = backend_factory("big")
    port = free_port()
    fp = forkproxy_factory(one_pool(port, [big.addr], pool="big"),
                           server={"workers": 1, "max_body_size": "0"})
    (worker,) = fp.wait_workers(1)
    requests.get(f"http://127.0.0.1:{port}/", timeout=10)  # warm the worker up
    before = _vm(worker, "VmRSS")
    # download
    h = hashlib.sha256()
    n = 0
    with requests.get(f"http://127.0.0.1:{port}/bytes?n={GIB}", stream=True, timeout=60) as r:
        assert r.status_code == 200
        for block in r.iter_content(1 << 20):
            h.update(block)
            n += len(block)
    assert n == GIB and h.hexdigest() == pattern_sha256(GIB)

    # upload (generated, never in memory on the client side either)
    def gen():
        block = b"u" * (1 << 20)
        for _ in range(1024):
            yield block
    r = requests.post(f"http://127.0.0.1:{port}/upload", data=gen(), timeout=120)
    assert r.status_code == 200
    assert r.json()["len"] == GIB
    peak = _vm(worker, "VmHWM")
    assert (peak - before) < 20 * 1024, f"worker peak RSS grew by {(peak - before) // 1024} MiB"


# -- headers -------------------------------------------------------------------------

def test_hop_by_hop_headers_never_cross_and_forwarding_headers_are_set(site):
    raw = (b"GET /echo HTTP/1.1\r\nHost: x.api.example\r\nConnection: keep-alive, X-Secret\r\n"
           b"X-Secret: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nUpgrade: foo\r\n"
           b"Proxy-Connection: keep-alive\r\nX-Forwarded-For: 6.6.6.6\r\n"
           b"Forwarded: for=6.6.6.6\r\nX-Forwarded-Host: evil\r\nVia: 1.0 earlier\r\n\r\n")
    with Conn(site.web) as c:
        c.send(raw)
        reply = c.reply()
    names = {n.lower(): v for n, v in json.loads(reply.body)["headers"]}
    for hop in ("connection", "x-secret", "keep-alive", "te", "upgrade", "proxy-connection"):
        assert hop not in names, hop
    assert names["x-forwarded-for"] == "127.0.0.1"   # the client's own value is not trusted
    assert names["x-forwarded-proto"] == "http"
    assert names["x-forwarded-host"] == "x.api.example"
    assert "6.6.6.6" not in names["forwarded"] and "for=127.0.0.1" in names["forwarded"]
    assert names["via"] == "1.0 earlier, 1.1 forkproxy"
    assert names["host"] == "x.api.example"


def test_response_hop_by_hop_headers_are_removed(site):
    r = get(site, "/?hdr=Connection:X-Internal&hdr=X-Internal:1&hdr=Keep-Alive:timeout%3D9"
            "&hdr=X-Kept:yes", host="x.api.example")
    assert r.status_code == 200
    assert "X-Internal" not in r.headers
    # forkproxy's own Keep-Alive (keepalive_timeout 75s, less a second), not the server's
    assert r.headers["Keep-Alive"] == "timeout=74"
    assert r.headers["X-Kept"] == "yes"
    assert r.headers["Via"] == "1.1 forkproxy"


def test_trusted_proxy_chains_are_kept(forkproxy_factory, backend_factory):
    b = backend_factory("b")
    port = free_port()
    forkproxy_factory(one_pool(port, [b.addr], pool="p"),
                      server={"trusted_proxies": ["127.0.0.0/8"]})
    r = requests.get(f"http://127.0.0.1:{port}/echo", timeout=10,
                     headers={"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"})
    names = {n.lower(): v for n, v in r.json()["headers"]}
    assert names["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"
    assert names["x-forwarded-proto"] == "https"


def test_host_header_passes_unchanged_and_curl_sees_the_proxy(site):
    if not shutil.which("curl"):
        pytest.skip("curl not installed")
    out = subprocess.run(["curl", "-s", "-H", "Host: x.api.example", f"{site.url}/echo"],
                         capture_output=True, text=True, timeout=30)
    names = {n.lower(): v for n, v in json.loads(out.stdout)["headers"]}
    assert names["host"] == "x.api.example"


# -- upstream failures ----------------------------------------------------------------

def _single_pool(forkproxy_factory, addr, **server):
    port = free_port()
    fp = forkproxy_factory(one_pool(port, [addr], 'read_timeout = "1s"', pool="only"),
                           server=server or None)
    return fp, port


def test_upstream_refused_is_502_with_a_logged_reason(forkproxy_factory):
    dead = f"127.0.0.1:{free_port()}"
    fp, port = _single_pool(forkproxy_factory, dead)
    r = requests.get(f"http://127.0.0.1:{port}/x", timeout=10)
    assert r.status_code == 502
    assert r.text == "502 Bad Gateway\n"
    log = fp.wait_error_log(dead)
    assert "route=0 pool=only" in log and "refused" in log


def test_upstream_timeout_is_504(forkproxy_factory, backend_factory):
    slow = backend_factory("slow")
    fp, port = _single_pool(forkproxy_factory, slow.addr)
    r = requests.get(f"http://127.0.0.1:{port}/slow?ms=3000", timeout=10)
    assert r.status_code == 504
    fp.wait_error_log("did not answer in time")


def test_upstream_closing_before_a_response_is_502(forkproxy_factory, backend_factory):
    b = backend_factory("b")
    fp, port = _single_pool(forkproxy_factory, b.addr)
    r = requests.post(f"http://127.0.0.1:{port}/dieheader", data=b"x", timeout=10)
    assert r.status_code == 502
    assert b.stats()["by_path"].get("/dieheader") == 1  # a POST is never sent twice


@pytest.mark.parametrize("rst", ["0", "1"])
def test_upstream_dying_mid_body_aborts_the_client(forkproxy_factory, backend_factory, rst):
    b = backend_factory("b")
    fp, port = _single_pool(forkproxy_factory, b.addr)
    with Conn(port) as c:
        c.send(f"GET /die?rst={rst} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        out = c.read_until_close()
    head, _, body = out.partition(b"\r\n\r\n")
    assert b"content-length: 1000" in head.lower()
    assert len(body) < 1000  # short, and the connection was closed: never passed off as complete
    if shutil.which("curl"):
        rc = subprocess.run(["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{port}/die"],
                            timeout=30).returncode
        assert rc == 18  # CURLE_PARTIAL_FILE


@contextlib.contextmanager
def _scripted_server(answer, close_after: bool = False):
    """A server on 127.0.0.1 answering every request head it reads with
    ``answer(head)`` (bytes), a thread per connection; ``close_after``: end
    each connection after its first answer.  Yields its address; stopped on exit."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.settimeout(0.2)  # so the loop sees the stop flag (close() does not wake accept())
    stop = threading.Event()

    def one(c):
        with c:
            c.settimeout(10)
            buf = b""
            try:
                while not stop.is_set():
                    while b"\r\n\r\n" not in buf:
                        data = c.recv(65536)
                        if not data:
                            return
                        buf += data
                    head, _, buf = buf.partition(b"\r\n\r\n")
                    c.sendall(answer(head))
                    if close_after:
                        return
            except OSError:
                return

    def accept():
        while not stop.is_set():
            try:
                c, _ = srv.accept()
            except socket.timeout:
                continue
            threading.Thread(target=one, args=(c,), daemon=True).start()

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield "127.0.0.1:%d" % srv.getsockname()[1]
    finally:
        stop.set()
        t.join(5)
        srv.close()


@pytest.mark.parametrize("lie", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n"
    b"Content-Length: 6\r\n\r\nhello",
    # Bare LFs: a head that never ends with CRLFCRLF, and one that does.
    b"HTTP/1.1 200 OK\nContent-Length: 5\n\nhello",
    b"HTTP/1.1 200 OK\r\nX-A: a\nX-B: b\r\nContent-Length: 5\r\n\r\nhello",
], ids=["cl-and-te", "lf-only", "bare-lf-in-field"])
def test_bad_upstream_response_is_502(forkproxy_factory, lie):
    """A backend that answers garbage: 502 (its fault, never the client's 400),
    and the worker keeps serving."""
    # Every connection (readiness probes included) gets the same lie, then its end.
    with _scripted_server(lambda head: lie, close_after=True) as addr:
        fp, port = _single_pool(forkproxy_factory, addr)
        assert requests.get(f"http://127.0.0.1:{port}/", timeout=10).status_code == 502
        assert requests.get(f"http://127.0.0.1:{port}/", timeout=10).status_code == 502
    fp.wait_error_log("invalid response")


# -- access log ---------------------------------------------------------------------------

def test_access_log_has_upstream_fields(site):
    get(site, "/echo?log=1", host="x.api.example")
    # The line is written once the response is sent: wait for it.
    wait_until(lambda: "/echo?log=1" in site.fp.access_log(), what="the access log line")
    line = [l for l in site.fp.access_log().splitlines() if "/echo?log=1" in l][-1]
    assert '"GET /echo?log=1 HTTP/1.1" 200 ' in line
    assert f"upstream={site.api.addr} upstream_status=200" in line
    assert "request_time=" in line and "upstream_time=" in line and "pool=api" in line


def test_a_remembered_client_head_fits_each_request(forkproxy_factory):
    """forward.attempt remembers the client heads it made, by what they were made
    from.  One server's byte-identical answer, asked for in every shape, gets
    each request its own head: another route's rules, HTTP/1.0 or 1.1,
    keep-alive or close, HEAD; and, as the server sends no Date, the proxy's
    Date, which moves on."""
    answer = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Backend: fixed\r\n"
              b"Content-Length: 2\r\n\r\n")
    with _scripted_server(lambda head: answer if head.startswith(b"HEAD ") else answer + b"ok") \
            as addr:
        port = free_port()
        forkproxy_factory(f"""
[[listener]]
name = "web"
bind = "127.0.0.1:{port}"
[[route]]
path = "/hidden"
pool = "fixed"
hide_headers = ["X-Backend"]
[[route]]
pool = "fixed"
[pool.fixed]
servers = [{{ addr = "{addr}" }}]
""")
        cases = [  # (request, Connection expected, X-Backend expected, body, kept open)
            (b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n", None, "fixed", b"ok", True),
            (b"GET /hidden HTTP/1.1\r\nHost: h\r\n\r\n", None, None, b"ok", True),
            (b"GET /a HTTP/1.0\r\n\r\n", "close", "fixed", b"ok", False),
            (b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", "keep-alive", "fixed", b"ok", True),
            (b"GET /hidden HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", "close", None, b"ok", False),
            (b"HEAD /a HTTP/1.1\r\nHost: h\r\n\r\n", None, "fixed", b"", True),
        ]
        for _ in range(3):
            for raw, connection, backend, body, kept in cases:
                with Conn(port) as c:
                    for _ in range(2 if kept else 1):
                        c.send(raw)
                        r = c.reply("HEAD" if raw.startswith(b"HEAD") else "GET")
                        assert (r.status, r.body, r.headers.get("X-Backend")) == \
                            (200, body, backend), raw
                        assert r.headers.get("Connection") == connection, raw
                        assert r.headers["Content-Length"] == "2" and r.headers["Date"], raw
                    if not kept:
                        assert c.closed_by_peer(), raw

        def date() -> str:
            return requests.get(f"http://127.0.0.1:{port}/a", timeout=10).headers["Date"]

        first = date()
        wait_until(lambda: date() != first, timeout=10, what="the proxy's Date to move on")


def test_the_same_request_again_gets_the_same_fields_and_its_own_id(forkproxy_factory,
                                                                     backend_factory):
    """forward.upstream_fields remembers the fields around X-Request-Id: a request
    sent again byte for byte reaches the server with the same forwarding fields
    and a new id each time."""
    b = backend_factory("b")
    fp, port = _single_pool(forkproxy_factory, b.addr)
    seen = []
    with requests.Session() as s:  # one keep-alive connection, the same head every time
        for _ in range(4):
            r = s.get(f"http://127.0.0.1:{port}/echo", headers={"X-Forwarded-For": "203.0.113.9"})
            assert r.status_code == 200
            seen.append([(n.lower(), v) for n, v in r.json()["headers"]])
    ids = [[v for n, v in h if n == "x-request-id"] for h in seen]
    assert all(len(i) == 1 for i in ids) and len({i[0] for i in ids}) == 4, ids
    rest = [[(n, v) for n, v in h if n != "x-request-id"] for h in seen]
    assert rest[0] == rest[1] == rest[2] == rest[3]
    assert ("x-forwarded-for", "127.0.0.1") in rest[0]  # the client's own claim replaced
