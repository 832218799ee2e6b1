"""Request buffering (route request_buffering, on by default), end to end.

A real master (one worker) and a real backend whose ``/_stats`` counts the
request heads it received (``heads``), before any body: the test sees
whether a request reached a server while its body was still coming.
The client is a raw socket sending a body in pieces; ``Expect:
100-continue`` tells it when forkproxy has read the head.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import socket
import stat
import threading
import time

from support.configs import one_pool
from support.procs import free_port, wait_until
from support.rawhttp import Conn


def _site(forkproxy_factory, backend_factory, route_extra=""):
    b = backend_factory("b")
    port = free_port()
    fp = forkproxy_factory(one_pool(port, [b.addr], route_extra=route_extra, pool="p"),
                           server={"workers": 1})
    return fp, port, b


def _start_upload(port: int, length: int) -> Conn:
    """A POST /upload of ``length`` bytes whose head forkproxy has read (its 100 came)."""
    c = Conn(port)
    c.send(f"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n"
           "Expect: 100-continue\r\n\r\n".encode())
    assert c.sock.recv(25) == b"HTTP/1.1 100 Continue\r\n\r\n"
    return c


def _marker(port: int) -> None:
    """A whole request through the same worker, answered: the readiness point
    after which a request streamed upstream would have reached the server."""
    with Conn(port) as m:
        m.send(b"GET /marker HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert m.reply().status == 200


def test_a_body_still_coming_reaches_no_server_until_it_is_whole(forkproxy_factory,
                                                                  backend_factory):
    # Issue 16: a POST trickling its body held a backend worker as long as
    # it liked.  Buffered, it reaches the server once whole, with its bytes.
    _, port, b = _site(forkproxy_factory, backend_factory)
    body = bytes(range(200))
    c = _start_upload(port, len(body))
    c.send(body[:100])
    _marker(port)
    assert "/upload" not in b.stats()["heads"]
    c.send(body[100:])
    reply = c.reply("POST")
    assert reply.status == 200
    assert json.loads(reply.body) == {"len": 200, "sha256": hashlib.sha256(body).hexdigest()}
    assert b.stats()["heads"]["/upload"] == 1


def test_a_grpc_content_type_buys_no_exemption_on_an_http1_pool(forkproxy_factory,
                                                                  backend_factory):
    # gRPC calls stream unbuffered only to h2c/h2 pools (tests/e2e/test_grpc.py);
    # elsewhere the header would let any client trickle a body into a server.
    _, port, b = _site(forkproxy_factory, backend_factory)
    c = Conn(port)
    c.send(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 200\r\n"
           b"Content-Type: application/grpc\r\nExpect: 100-continue\r\n\r\n")
    assert c.sock.recv(25) == b"HTTP/1.1 100 Continue\r\n\r\n"
    c.send(bytes(100))
    _marker(port)
    assert "/upload" not in b.stats()["heads"]
    c.send(bytes(100))
    assert c.reply("POST").status == 200
    assert b.stats()["heads"]["/upload"] == 1


def test_request_buffering_false_still_streams(forkproxy_factory, backend_factory):
    _, port, b = _site(forkproxy_factory, backend_factory, "request_buffering = false")
    body = bytes(range(200))
    c = _start_upload(port, len(body))
    c.send(body[:100])
    wait_until(lambda: b.stats()["heads"].get("/upload") == 1,
               what="the streamed request's head at the server before its body's end")
    c.send(body[100:])
    assert json.loads(c.reply("POST").body)["len"] == 200


def test_a_body_not_whole_within_request_buffer_timeout_is_answered_408(forkproxy_factory,
                                                                        backend_factory):
    fp, port, b = _site(forkproxy_factory, backend_factory, 'request_buffer_timeout = "1s"')
    c = _start_upload(port, 100)
    for _ in range(40):  # a byte every 0.1 s, each well within body_timeout (60s)
        try:
            c.send(b"x")
        except OSError:
            break
        if _readable(c):  # the answer came: stop sending
            break
        time.sleep(0.1)  # the trickle under test
    reply = c.reply("POST")
    assert reply.status == 408 and reply.headers["Connection"] == "close"
    _marker(port)
    assert "/upload" not in b.stats()["heads"]
    wait_until(lambda: "request_buffer_timeout (1s)" in fp.error_log(),
               what="the 408's reason in the error log")


def _readable(c: Conn) -> bool:
    return bool(select.select([c.sock], [], [], 0)[0])


def test_a_chunked_body_goes_upstream_with_its_length(forkproxy_factory, backend_factory):
    _, port, b = _site(forkproxy_factory, backend_factory)
    with Conn(port) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        echo = json.loads(c.reply("POST").body)
    names = {n.lower(): v for n, v in echo["headers"]}
    assert names["content-length"] == "11" and "transfer-encoding" not in names
    assert echo["body_sha256"] == hashlib.sha256(b"hello world").hexdigest()


def test_a_body_larger_than_request_buffer_memory_goes_through_a_file_left_nowhere(
        forkproxy_factory, backend_factory):
    fp, port, b = _site(forkproxy_factory, backend_factory, 'request_buffer_memory = "1k"')
    body = os.urandom(300_000)
    c = _start_upload(port, len(body))
    c.send(body[:150_000])
    _marker(port)
    spool_dir = os.path.join(fp.server["runtime_dir"], "body")
    # the file holding the first half has no name (O_TMPFILE, or unlinked at once)
    assert os.listdir(spool_dir) == []
    assert stat.S_IMODE(os.stat(spool_dir).st_mode) == 0o700
    assert "/upload" not in b.stats()["heads"]
    c.send(body[150_000:])
    assert json.loads(c.reply("POST").body) == {"len": len(body),
                                                "sha256": hashlib.sha256(body).hexdigest()}


def test_an_idempotent_request_with_a_buffered_body_is_retried_on_another_server(
        forkproxy_factory, backend_factory):
    # A PUT whose server took it and closed without an answer: its body was
    # buffered, so it can be sent again, to the next server (retry.on
    # "error").  A streamed body cannot: that answered 502.
    b = backend_factory("b")
    dropper = socket.create_server(("127.0.0.1", 0))
    dropped = []

    def drop():
        while True:
            try:
                conn, _ = dropper.accept()
            except OSError:
                return
            if conn.recv(65536).startswith(b"PUT "):
                dropped.append(1)
            conn.close()

    threading.Thread(target=drop, daemon=True).start()
    port = free_port()
    try:
        dropped = f"127.0.0.1:{dropper.getsockname()[1]}"
        forkproxy_factory(one_pool(port, [dropped, b.addr], "max_fails = 0", pool="p"),
                          server={"workers": 1})
        statuses = []
        for _ in range(4):
            with Conn(port) as c:
                c.send(b"PUT /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
                statuses.append(c.reply("PUT").status)
            if dropped:
                break
        assert dropped and statuses == [200] * len(statuses)
    finally:
        dropper.close()
