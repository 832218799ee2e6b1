"""HTTP/2 to the servers (pool ``protocol = "h2c"``): HTTP/1.1 and HTTP/2 clients
through an h2c pool (GET, POST bodies, a large body, trailers), on real processes."""

from __future__ import annotations

import hashlib
import http.client
import json
import shutil
import subprocess

import pytest

from support.configs import one_pool
from support.h2servers import H2Backend
from support.procs import free_port


@pytest.fixture
def h2_backend(tmp_path):
    made = []

    def make(name="h1", tls=None):
        b = H2Backend(name, tmp_path / "h2backends", tls=tls)
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
    status, hdrs, body = _h1(port, "GET", "/bytes?n=3000000")
    assert status == 200 and len(body) == 3000000 and body[:12] == b"012345678901"
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
