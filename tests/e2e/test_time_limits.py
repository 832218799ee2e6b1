"""Every time limit of a session, end to end: the idle keep-alive wait, the
client's body, a client that stops reading, a server that stops reading.

These are the waits net.sockio bounds with its timers (the sockets have no
timeout of their own), so each test fails if a timer never fires: the
client's own 10 s timeout, or wait_until's, runs out first.  Limits are
short (0.5 s); no test measures how long anything took.
"""

from __future__ import annotations

import socket
import threading

import pytest

from support.configs import one_pool
from support.procs import free_port, wait_until
from support.rawhttp import Conn

LIMITS = {"keepalive_timeout": "0.5s", "body_timeout": "0.5s", "send_timeout": "0.5s"}


@pytest.fixture
def site(forkproxy_factory, backend_factory):
    b = backend_factory("b")
    port = free_port()
    fp = forkproxy_factory(one_pool(port, [b.addr]), server=LIMITS)
    return fp, port, b


def test_an_idle_keep_alive_connection_is_closed_after_keepalive_timeout(site):
    fp, port, _ = site
    with Conn(port) as c:
        c.send(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")
        assert c.reply().status == 200
        # Nothing more is sent: the server must close within keepalive_timeout.
        assert c.closed_by_peer()


def test_a_stalled_request_body_is_answered_408_after_body_timeout(site):
    fp, port, b = site
    with Conn(port) as c:
        c.send(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
        # 90 bytes never come: the body is being buffered (request_buffering),
        # so no server holds the request and the client hears why.
        assert c.reply("POST").status == 408
        assert c.closed_by_peer()
    assert "/upload" not in b.stats()["by_path"]


def test_a_stalled_streamed_request_body_ends_the_connection_after_body_timeout(
        forkproxy_factory, backend_factory):
    b = backend_factory("b")
    port = free_port()
    forkproxy_factory(one_pool(port, [b.addr], route_extra="request_buffering = false"),
                      server=LIMITS)
    with Conn(port) as c:
        c.send(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
        # 90 bytes never come: the server must end the connection within body_timeout.
        assert c.closed_by_peer()


def test_a_client_that_stops_reading_is_dropped_after_send_timeout(site):
    fp, port, _ = site
    s = socket.create_connection(("127.0.0.1", port))
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        # 64 MiB the client never reads: forkproxy's send blocks, then gives up.
        s.sendall(b"GET /bytes?n=67108864 HTTP/1.1\r\nHost: a\r\n\r\n")
        # The access line is written when the session ends: after send_timeout.
        wait_until(lambda: "/bytes?n=67108864" in fp.access_log(), timeout=20,
                   what="the access line of the abandoned download")
    finally:
        s.close()
    line = next(ln for ln in fp.access_log().splitlines() if "/bytes?n=67108864" in ln)
    assert " 200 " in line  # the response had started: it was cut, not refused


def test_a_server_that_stops_reading_gets_a_504_after_its_send_timeout(forkproxy_factory):
    """The pool's send_timeout: a server that accepts but never reads a large body."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept_and_ignore():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                c, _ = srv.accept()
            except socket.timeout:
                continue
            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            held.append(c)  # never read: the proxy's send fills the buffers and blocks

    t = threading.Thread(target=accept_and_ignore, daemon=True)
    t.start()
    client = None
    sender = None
    try:
        port = free_port()
        addr = "127.0.0.1:%d" % srv.getsockname()[1]
        # Ready once it accepts: a request through it would never be answered.
        fp = forkproxy_factory(one_pool(port, [addr], pool_extra='send_timeout = "0.5s"'),
                               ready=False)
        fp.wait_ready(mode="tcp")
        client = socket.create_connection(("127.0.0.1", port), timeout=20)
        size = 64 << 20

        def upload():
            try:
                client.sendall(f"POST /upload HTTP/1.1\r\nHost: a\r\n"
                               f"Content-Length: {size}\r\n\r\n".encode())
                chunk = b"x" * 65536
                for _ in range(size // len(chunk)):
                    client.sendall(chunk)
            except OSError:
                pass  # the proxy gave up on the request and closed while the body was coming

        sender = threading.Thread(target=upload, daemon=True)
        sender.start()
        wait_until(lambda: "-> 504: sending to" in fp.error_log(), timeout=20,
                   what="the 504 of the upstream send timeout in the error log")
    finally:
        if client is not None:
            client.close()
        if sender is not None:
            sender.join(25)
        stop.set()
        t.join(5)
        for c in held:
            c.close()
        srv.close()
