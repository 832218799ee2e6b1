"""Strict parsing and limits end to end: what forkproxy refuses never reaches a backend.

Each malformed request is sent on a raw socket to a real forkproxy; the
answer must be the expected 4xx with ``Connection: close``, the connection
must be closed, and the backend must have seen no request at all.
"""

from __future__ import annotations

import socket

import pytest
import requests

from support.procs import free_port
from support.rawhttp import Conn, exchange
from support.runner import Backend, ForkProxy

H = b"Host: a.example\r\n"


@pytest.fixture(scope="module")
def strict(tmp_path_factory):
    d = tmp_path_factory.mktemp("strict")
    b = Backend("b", d / "backends")
    port = free_port()
    fp = ForkProxy(d / "fp", f"""
[[listener]]
name = "web"
bind = "127.0.0.1:{port}"

[[route]]
path = "/small/"
max_body_size = "10"
pool = "p"

[[route]]
pool = "p"

[pool.p]
servers = [{{ addr = "{b.addr}" }}]
""", {"max_uri_length": 200, "max_headers": 20, "max_head_size": "4k", "header_timeout": "2s",
      "max_body_size": "1k"})
    fp.start()
    fp.wait_ready(port)
    yield type("Strict", (), {"fp": fp, "port": port, "b": b})
    fp.stop()
    b.stop()


MALFORMED = [
    # (id, raw request, expected status)
    ("cl-and-te", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("two-content-lengths", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 4\r\nContent-Length: 5\r\n\r\nabcde", 400),
    ("te-not-final-chunked", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, identity\r\n\r\n", 400),
    ("te-xchunked", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: xchunked\r\n\r\n", 501),
    ("space-before-colon", b"GET / HTTP/1.1\r\n" + H + b"Transfer-Encoding : chunked\r\n\r\n", 400),
    ("obs-fold", b"GET / HTTP/1.1\r\n" + H + b"X-A: 1\r\n  folded\r\n\r\n", 400),
    ("bare-lf", b"GET / HTTP/1.1\n" + b"Host: a\n\n", 400),
    ("bare-cr", b"GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n", 400),
    ("nul-in-value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x00b\r\n\r\n", 400),
    ("space-in-target", b"GET /a b HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("http09", b"GET /\r\n\r\n", 400),
    ("http2-version", b"GET / HTTP/2.0\r\n" + H + b"\r\n", 505),
    ("no-host-11", b"GET / HTTP/1.1\r\n\r\n", 400),
    ("two-hosts", b"GET / HTTP/1.1\r\n" + H + H + b"\r\n", 400),
    ("bad-chunk-size", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-without-crlf", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n", 400),
    ("bad-header-name", b"GET / HTTP/1.1\r\n" + H + b"X(A): 1\r\n\r\n", 400),
    ("connect", b"CONNECT a.example:443 HTTP/1.1\r\n" + H + b"\r\n", 501),
    ("uri-too-long", b"GET /" + b"a" * 300 + b" HTTP/1.1\r\n" + H + b"\r\n", 414),
    ("too-many-headers", b"GET / HTTP/1.1\r\n" + H + b"".join(b"X-%d: v\r\n" % i for i in range(30)) + b"\r\n", 431),
    ("head-too-large", b"GET / HTTP/1.1\r\n" + H + b"X-Big: " + b"v" * 5000 + b"\r\n\r\n", 431),
    ("body-over-limit", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 2000\r\n\r\n", 413),
    ("route-body-limit", b"POST /small/x HTTP/1.1\r\n" + H + b"Content-Length: 11\r\n\r\nhello world", 413),
]


@pytest.mark.parametrize("raw,status", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_request_is_refused_and_never_forwarded(strict, raw, status):
    strict.b.reset()
    out = exchange(strict.port, raw)
    head = out.partition(b"\r\n\r\n")[0].decode("latin-1")
    assert head.startswith(f"HTTP/1.1 {status} "), head
    assert "Connection: close" in head
    assert strict.b.stats()["requests"] == 0


def test_chunked_body_over_the_route_limit_is_413(strict):
    strict.b.reset()
    raw = (b"POST /small/x HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
           b"8\r\n12345678\r\n8\r\n12345678\r\n0\r\n\r\n")
    out = exchange(strict.port, raw)
    assert out.startswith(b"HTTP/1.1 413 ")


def test_a_refused_request_closes_the_connection_so_nothing_after_it_is_read(strict):
    strict.b.reset()
    smuggled = (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"0\r\n\r\nGET /smuggled HTTP/1.1\r\n" + H + b"\r\n")
    out = exchange(strict.port, smuggled)
    assert out.count(b"HTTP/1.1 ") == 1
    assert strict.b.stats()["requests"] == 0


def test_header_deadline_answers_408_to_a_trickling_client(strict):
    strict.b.reset()
    with Conn(strict.port, timeout=20) as c:
        c.send(b"GET / HTTP/1.1\r\n")
        c.send(b"X-Slow: 1\r\n")
        out = c.read_until_close()   # nothing more is sent: the 2 s deadline passes
    assert out.startswith(b"HTTP/1.1 408 ")
    assert strict.b.stats()["requests"] == 0


def test_a_silent_connection_is_closed_after_the_header_deadline(strict):
    with Conn(strict.port, timeout=20) as c:
        assert c.read_until_close() == b""  # closed without a response: nothing was asked


def test_two_hundred_trickling_clients_do_not_block_a_normal_request(strict):
    slow = []
    try:
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", strict.port), timeout=10)
            s.sendall(b"GET / HTTP/1.1\r\nHost: a")  # and then nothing
            slow.append(s)
        r = requests.get(f"http://127.0.0.1:{strict.port}/", timeout=5)
        assert r.status_code == 200
    finally:
        for s in slow:
            s.close()
