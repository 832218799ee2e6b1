"""HTTP/2 to the servers (pool ``protocol``): HTTP/1.1 and HTTP/2 clients through an
h2c pool (GET, POST bodies, large bodies, trailers), an h2 (TLS, ALPN) pool whose
active checks speak HTTP/2, on real processes (tests/support/h2backend.py)."""

from __future__ import annotations

import hashlib
import http.client
import json
import shutil
import subprocess

import pytest

from support.configs import one_pool
from support.h2servers import H2Backend
from support.procs import free_port, wait_until


@pytest.fixture
def h2_backend(tmp_path):
    made = []

    def make(name="h1", tls=None, max_streams=None, hang=False):
        b = H2Backend(name, tmp_path / "h2backends", tls=tls, max_streams=max_streams,
                      hang=hang)
        made.append(b)
        return b

    yield make
    for b in made:
        b.stop()


def _start(forkproxy_factory, backend, pool_extra='protocol = "h2c"'):
    port = free_port()
    fp = forkproxy_factory(one_pool(port, [backend.addr], pool_extra=pool_extra,
                                    listener_extra="http2 = true"))
    return fp, port


def _h1(port, method, path, body=None, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        c.close()


def test_http1_client_through_an_h2c_pool(h2_backend, forkproxy_factory):
    b = h2_backend()
    fp, port = _start(forkproxy_factory, b)
    status, hdrs, body = _h1(port, "GET", "/echo?x=1", headers={"X-A": "1"})
    assert status == 200 and hdrs["x-backend"] == "h1"
    doc = json.loads(body)
    assert doc["method"] == "GET" and doc["path"] == "/echo?x=1" and doc["scheme"] == "http"
    assert doc["authority"] == f"127.0.0.1:{port}"
    names = [n for n, _ in doc["headers"]]
    assert "x-a" in names and "te" in names and "connection" not in names
    payload = bytes(range(256)) * 4000  # 1 MB: beyond every window
    status, _, body = _h1(port, "POST", "/echo", body=payload)
    doc = json.loads(body)
    assert (doc["body_len"], doc["body_sha256"]) == (len(payload),
                                                     hashlib.sha256(payload).hexdigest())
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)  # a chunked upload
    c.request("POST", "/echo", body=iter([b"a" * 1000, b"b" * 70000]), encode_chunked=True)
    assert json.loads(c.getresponse().read())["body_len"] == 71000
    c.close()
    status, hdrs, body = _h1(port, "GET", "/bytes?n=3000000")
    assert status == 200 and len(body) == 3000000 and body[:12] == b"012345678901"
    for code, body in ((204, b""), (304, b""), (404, b""), (503, b"")):
        status, hdrs, got = _h1(port, "GET", f"/status/{code}")
        assert (status, got) == (code, body)
    assert _h1(port, "HEAD", "/bytes?n=10")[0] == 200
    # many requests share the pool's connections
    for _ in range(20):
        assert _h1(port, "GET", "/")[2] == b"h1"


def test_trailers_only_to_clients_that_take_them(h2_backend, forkproxy_factory):
    b = h2_backend()
    fp, port = _start(forkproxy_factory, b)
    raw = _raw(port, b"GET /trailers HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n"
               b"Connection: close\r\n\r\n")
    assert b"\r\n0\r\ngrpc-status: 0\r\nx-sum: 5\r\n\r\n" in raw
    raw = _raw(port, b"GET /trailers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert raw.endswith(b"\r\n0\r\n\r\n") and b"grpc-status" not in raw


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl missing")
def test_http2_client_through_an_h2c_pool(h2_backend, forkproxy_factory):
    b = h2_backend()
    fp, port = _start(forkproxy_factory, b)
    payload = b"y" * 300000
    r = subprocess.run(["curl", "-sS", "--max-time", "10", "--http2-prior-knowledge",
                        "--data-binary", "@-", f"http://127.0.0.1:{port}/echo"],
                       input=payload, capture_output=True, timeout=20, check=True)
    doc = json.loads(r.stdout)
    assert doc["body_len"] == len(payload) and doc["method"] == "POST"
    r = subprocess.run(["curl", "-sS", "--max-time", "10", "--http2-prior-knowledge", "-v",
                        f"http://127.0.0.1:{port}/trailers"],
                       capture_output=True, timeout=20, check=True)
    assert r.stdout == b"hello"
    if shutil.which("h2load") is not None:
        r = subprocess.run(["h2load", "-n", "600", "-c", "3", "-m", "20",
                            f"http://127.0.0.1:{port}/bytes?n=2000"],
                           capture_output=True, text=True, timeout=60)
        assert "600 succeeded" in r.stdout, r.stdout


def _raw(port, request: bytes) -> bytes:
    import socket
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        out = b""
        while True:
            data = s.recv(65536)
            if not data:
                return out
            out += data


def _health(fp, addr):
    for p in fp.ctl_status()["pools"]:
        for s in p["servers"]:
            if s["addr"] == addr:
                return s
    raise KeyError(addr)


def test_h2_over_tls_pool_with_http2_health_checks(tmp_path, h2_backend, backend_factory,
                                                    forkproxy_factory):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("a.example")
    d = tmp_path / "pki"
    d.mkdir()
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    (d / "a.pem").write_bytes(b"".join(p.bytes() for p in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(d / "a.key"))
    good = h2_backend("tls1", tls=(d / "a.pem", d / "a.key"))
    plain = backend_factory()  # HTTP/1.1 over plain TCP: fails HTTP/2-over-TLS checks
    port = free_port()
    fp = forkproxy_factory(one_pool(port, [good.addr, plain.addr], pool_extra=(
        f'protocol = "h2"\ntls = {{ ca = "{d / "ca.pem"}", sni = "a.example" }}\n'
        # One slow check on a loaded machine must not take the good server
        # down while the requests below are made: a long timeout, two falls.
        'health = { path = "/healthz", interval = "300ms", timeout = "3s", rise = 1, '
        'fall = 2 }'), listener_extra="http2 = true"))
    wait_until(lambda: _health(fp, good.addr)["health"] == "up"
               and _health(fp, plain.addr)["health"] == "down", timeout=30,
               what="the HTTP/2 checks' verdicts")
    for _ in range(10):
        status, hdrs, body = _h1(port, "GET", "/echo")
        assert status == 200 and json.loads(body)["scheme"] == "https"
    payload = b"q" * 500000
    status, _, body = _h1(port, "PUT", "/echo", body=payload)
    assert json.loads(body)["body_len"] == len(payload)


@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load missing")
def test_streams_beyond_the_servers_limit_take_more_connections(h2_backend,
                                                                forkproxy_factory):
    b = h2_backend(max_streams=2)
    fp, port = _start(forkproxy_factory, b)
    r = subprocess.run(["h2load", "-n", "800", "-c", "4", "-m", "25",
                        f"http://127.0.0.1:{port}/bytes?n=20000"],
                       capture_output=True, text=True, timeout=60)
    assert "800 succeeded" in r.stdout, r.stdout
    r = subprocess.run(["h2load", "-n", "400", "-c", "4", "-m", "25", "--h1",
                        f"http://127.0.0.1:{port}/"], capture_output=True, text=True, timeout=60)
    assert "400 succeeded" in r.stdout, r.stdout


def test_streamed_uploads_through_an_h2c_pool(h2_backend, forkproxy_factory):
    b = h2_backend()
    port = free_port()
    forkproxy_factory(one_pool(port, [b.addr], pool_extra='protocol = "h2c"',
                               route_extra="request_buffering = false"))
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for body, chunked in ((iter([b"a" * 1000, b"b" * 300000]), True), (b"c" * 400000, False)):
        c.request("POST", "/echo", body=body, encode_chunked=chunked)
        doc = json.loads(c.getresponse().read())
        assert doc["body_len"] == (301000 if chunked else 400000)
    c.close()


def test_a_dead_connection_fails_its_streams_under_the_retry_rules(h2_backend,
                                                                   forkproxy_factory):
    """Requests in flight on a server's connection when it dies: the GETs are
    tried again on the other server, the POST (not replayable) gets 502."""
    import concurrent.futures
    stuck, good = h2_backend("stuck", hang=True), h2_backend("good")
    port = free_port()
    forkproxy_factory(one_pool(port, [stuck.addr, good.addr], pool_extra=(
        'protocol = "h2c"\nbalance = "round_robin"'), listener_extra="http2 = true"),
        server={"workers": 1})
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        gets = [ex.submit(_h1, port, "GET", f"/echo?i={i}") for i in range(2)]
        posts = [ex.submit(_h1, port, "POST", f"/echo?p={i}", b"x" * 100) for i in range(2)]
        wait_until(lambda: stuck.proc.log_text().count("request /echo") == 2, timeout=20,
                   what="two requests held by the stuck server")
        held = [ln.split()[1] for ln in stuck.proc.log_text().splitlines()
                if ln.startswith("request /echo")]
        stuck.stop()  # its connection dies with the requests in flight
        for f, path in zip(gets + posts, [f"/echo?i={i}" for i in range(2)]
                           + [f"/echo?p={i}" for i in range(2)]):
            status, hdrs, _ = f.result(timeout=30)
            if path in held and path.startswith("/echo?p"):
                assert status == 502  # a POST is never sent twice
            else:
                assert status == 200 and hdrs["x-backend"] == "good"
