"""Client keep-alive under a soak-like load: no connection closed while in use.

A real master (two workers, the in-process cache) in front of a real
backend; 32 client threads, each with one keep-alive connection
(``requests``), send a bounded mix of GETs, 64 KiB POSTs, cached GETs and
slow requests with idle gaps shorter than keepalive_timeout.  The idle gaps
of one connection add up to many times keepalive_timeout: a connection is
closed only after keepalive_timeout of idleness in one piece, never by the
sum of them (issue 17: the soak saw 221 connections closed early and 3
requests reset).  The longer version is bench/soak.py.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import socket
import threading
import time

import requests

from support import procs
from support.configs import mixed_site, one_pool
from support.procs import free_port, wait_until
from support.rawhttp import Conn

CLIENTS = 32
REQUESTS = 40  # per client
GAP = 0.25  # longest idle gap, seconds (keepalive_timeout is 1s)
BODY = bytes(range(256)) * 256  # 64 KiB


def test_keep_alive_connections_stay_open_through_many_short_idle_gaps(
        forkproxy_factory, backend_factory):
    b = backend_factory("b")
    port = free_port()
    forkproxy_factory(mixed_site(port, b.addr), server={"keepalive_timeout": "1s"})
    base = f"http://127.0.0.1:{port}"
    upload_sha = hashlib.sha256(BODY).hexdigest()
    failures: list[str] = []
    connections: list[int] = []

    def client(n: int) -> None:
        rnd = random.Random(n)
        s = requests.Session()
        try:
            for i in range(REQUESTS):
                kind = (n + i) % 4
                try:
                    if kind == 0:
                        r = s.get(f"{base}/plain", timeout=10)
                        ok = r.status_code == 200
                    elif kind == 1:
                        r = s.post(f"{base}/upload", data=BODY, timeout=10)
                        ok = r.status_code == 200 and r.json()["sha256"] == upload_sha
                    elif kind == 2:
                        r = s.get(f"{base}/c/{i % 5}?hdr=Cache-Control:max-age%3D60", timeout=10)
                        ok = r.status_code == 200
                    else:
                        r = s.get(f"{base}/slow?ms=20", timeout=10)
                        ok = r.status_code == 200
                    if not ok:
                        failures.append(f"client {n} request {i}: {r.status_code}")
                except requests.RequestException as exc:
                    failures.append(f"client {n} request {i}: {exc!r}")
                threading.Event().wait(rnd.uniform(0, GAP))  # the idle gap under test
            pools = s.get_adapter(base).poolmanager.pools
            connections.append(sum(pools[k].num_connections for k in pools.keys()))
        finally:
            s.close()

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    assert failures == [], failures[:5]
    # one connection per client for its whole life: none was closed under it
    assert connections == [1] * CLIENTS, sum(connections) - CLIENTS


def _site(forkproxy_factory, backend_factory, **server):
    b = backend_factory("b")
    port = free_port()
    fp = forkproxy_factory(one_pool(port, [b.addr], pool="p"), server={"workers": 1, **server})
    return fp, port


def test_a_refusal_reaches_a_client_still_sending_its_body(forkproxy_factory, backend_factory):
    # 413 for a declared length over max_body_size, while the client has
    # sent part of that body: closing with unread bytes resets the
    # connection, and the reset can destroy the 413 before the client reads
    # it.  The close lingers: the client reads the whole answer, then EOF.
    fp, port = _site(forkproxy_factory, backend_factory, max_body_size="1k")
    c = Conn(port)
    c.send(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n" + b"x" * 500_000)
    reply = c.reply("POST")
    assert reply.status == 413 and reply.headers["Connection"] == "close"
    c.send(b"x" * 500_000)  # the client goes on sending, as uploads do
    c.sock.shutdown(socket.SHUT_WR)
    assert c.sock.recv(100) == b""  # forkproxy's FIN, not a reset


def test_a_request_that_comes_as_keepalive_timeout_runs_out_is_answered(
        forkproxy_factory, backend_factory):
    # The worker is stopped while the connection is idle, past
    # keepalive_timeout, and the client's next request comes meanwhile: when
    # the worker runs again, the timer's expiry and the request are both
    # there.  The request is answered; it was dropped with a reset.
    fp, port = _site(forkproxy_factory, backend_factory, keepalive_timeout="1s")
    worker, = fp.wait_workers(1)
    c = Conn(port)
    c.send(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
    first = c.reply()
    assert first.status == 200 and first.headers["Keep-Alive"] == "timeout=1"
    os.kill(worker, signal.SIGSTOP)
    try:
        wait_until(lambda: procs._stat(worker)[0] == "T", what="the worker to stop")
        time.sleep(1.5)  # the idle time under test: past keepalive_timeout
        c.send(b"GET /second HTTP/1.1\r\nHost: x\r\n\r\n")
    finally:
        os.kill(worker, signal.SIGCONT)
    assert c.reply().status == 200
