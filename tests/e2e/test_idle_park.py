"""Parked idle connections (forkproxy(8), Idle connections): a plain keep-alive
connection idle over PARK_AFTER gives up its greenlet and is held by a read
watcher and a timer; its next request, keepalive_timeout and the drain take it
up again, as if nothing had happened.

Real masters and backends on 127.0.0.1.  ``connections_parked`` (the metric)
says when the connections under test are parked: each test waits for it
before it acts, so a loaded machine cannot make it test an unparked one.
"""

from __future__ import annotations

import re
import socket

import requests

from support.configs import one_pool
from support.procs import free_port, wait_until
from support.rawhttp import Conn

GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def _metric(admin: int, name: str) -> float:
    text = requests.get(f"http://127.0.0.1:{admin}/metrics", timeout=10).text
    return float(re.search(rf"^forkproxy_{name} (\S+)$", text, re.M).group(1))


def _start(forkproxy_factory, backends, pool_extra: str = "", listener_extra: str = "",
           **server):
    port, admin = free_port(), free_port()
    fp = forkproxy_factory(one_pool(port, [b.addr for b in backends], pool_extra,
                                    listener_extra=listener_extra),
                           server={"workers": 1, "admin": f"127.0.0.1:{admin}", **server})
    return fp, port, admin


def _parked(admin: int, n: int) -> None:
    wait_until(lambda: _metric(admin, "connections_parked") == n, timeout=30,
               what=f"{n} connections parked")


def _served(c: Conn) -> str:
    c.send(GET)
    reply = c.reply()
    assert reply.status == 200
    return reply.body.decode()


def test_a_parked_connection_serves_its_next_requests_pipelined_too(forkproxy_factory,
                                                                    backend_factory):
    fp, port, admin = _start(forkproxy_factory, [backend_factory("b")])
    c = Conn(port)
    assert _served(c) == "b"
    _parked(admin, 1)
    assert _served(c) == "b"           # resumed by its bytes
    _parked(admin, 1)                  # and parked again once idle
    c.send(GET + GET + GET)            # three at once: all answered, in order
    assert [c.reply().status for _ in range(3)] == [200, 200, 200]
    _parked(admin, 1)
    c.sock.shutdown(socket.SHUT_WR)    # the client's FIN wakes it too: it ends
    wait_until(lambda: _metric(admin, "connections_active") == 0, timeout=30,
               what="the closed connection to end")
    assert _metric(admin, "connections_parked") == 0


def test_keepalive_timeout_still_closes_a_parked_connection(forkproxy_factory,
                                                            backend_factory):
    # 8 s: the wait for the gauge has 7 s to see it parked, however loaded the machine.
    fp, port, admin = _start(forkproxy_factory, [backend_factory("b")],
                             keepalive_timeout="8s")
    c = Conn(port, timeout=30)
    _served(c)
    _parked(admin, 1)
    assert c.read_until_close() == b""  # forkproxy's FIN once keepalive_timeout ran out
    wait_until(lambda: _metric(admin, "connections_active") == 0, timeout=30,
               what="the connection to end")


def test_parked_connections_count_toward_worker_connections(forkproxy_factory, backend_factory):
    fp, port, admin = _start(forkproxy_factory, [backend_factory("b")], worker_connections=2)
    held = [Conn(port), Conn(port)]
    for c in held:
        _served(c)
    _parked(admin, 2)
    third = Conn(port, timeout=1.5)    # the kernel accepts it; the worker, full, does not
    third.send(GET)
    try:
        third.sock.recv(1)
        raise AssertionError("a third connection was served past worker_connections = 2")
    except socket.timeout:
        pass
    held[0].sock.shutdown(socket.SHUT_WR)  # a slot frees: the third is taken and answered
    third.sock.settimeout(30)
    assert third.reply().status == 200
    assert _served(held[1]) == "b"


def test_parked_connections_count_toward_max_conns_per_ip(forkproxy_factory, backend_factory):
    fp, port, admin = _start(forkproxy_factory, [backend_factory("b")],
                             listener_extra="max_conns_per_ip = 1")
    first = Conn(port)
    _served(first)
    _parked(admin, 1)
    second = Conn(port)                # over the limit while the first is parked: closed
    assert second.read_until_close() == b""
    first.sock.shutdown(socket.SHUT_WR)  # its ticket is released when it really ends
    wait_until(lambda: _metric(admin, "connections_active") == 0, timeout=30,
               what="the first connection to end")
    assert _served(Conn(port)) == "b"


def test_a_reload_hands_parked_connections_to_the_new_generation(forkproxy_factory,
                                                                 backend_factory):
    alpha, beta = backend_factory("alpha"), backend_factory("beta")
    fp, port, admin = _start(forkproxy_factory, [alpha])
    conns = [Conn(port) for _ in range(3)]
    for c in conns:
        assert _served(c) == "alpha"
    _parked(admin, 3)
    fp.body = one_pool(port, [beta.addr])
    fp.write_config(server={"workers": 1, "admin": f"127.0.0.1:{admin}"})
    fp.reload_and_wait()
    for c in conns:                    # the same connections, the new configuration
        assert _served(c) == "beta"
    assert "graceful timeout" not in fp.error_log()


def test_a_stop_with_parked_connections_closes_them_at_once(forkproxy_factory, backend_factory):
    fp, port, admin = _start(forkproxy_factory, [backend_factory("b")],
                             graceful_timeout="60s")
    conns = [Conn(port, timeout=30) for _ in range(3)]
    for c in conns:
        _served(c)
    _parked(admin, 3)
    assert fp.stop(timeout=30) == 0    # within the drain window, not graceful_timeout
    for c in conns:
        assert c.read_until_close() == b""
    assert "graceful timeout" not in fp.error_log()
