"""A worker's drain, seen by its clients: what it has accepted, it answers.

Real ``python -m forkproxy`` masters and backends on 127.0.0.1; real
signals; raw client sockets, so the test sees a reset as a reset.
"""

from __future__ import annotations

import os
import signal

from support import procs
from support.procs import free_port, wait_until
from support.rawhttp import Conn


def body_for(port, addr):
    return f"""
[[listener]]
name = "web"
bind = "127.0.0.1:{port}"

[[route]]
pool = "p"

[pool.p]
servers = [{{ addr = "{addr}" }}]
"""


def _stopped(pid: int) -> bool:
    st = procs._stat(pid)
    return st is not None and st[0] == "T"


def test_connections_accepted_as_the_drain_closes_the_listener_are_answered(
        forkproxy_factory, backend_factory):
    # A worker accepts what waits in the queue and, in the same turn of its
    # loop, handles TERM: the drain closes the listening socket before the
    # new connections' greenlets first run.  They must still be served (a
    # closed listener has no address to look the listener up by); they
    # were reset (issue 17: the USR2 + WINCH upgrade lost a request so).
    b = backend_factory("b")
    port = free_port()
    fp = forkproxy_factory(body_for(port, b.addr), server={"workers": 1})
    worker, = fp.wait_workers(1)
    os.kill(worker, signal.SIGSTOP)
    try:
        wait_until(lambda: _stopped(worker), what="the worker to stop")
        conns = [Conn(port) for _ in range(8)]  # in the accept queue, requests sent
        for c in conns:
            c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        os.kill(worker, signal.SIGTERM)  # pending until it runs again
    finally:
        os.kill(worker, signal.SIGCONT)
    replies = [c.reply() for c in conns]
    assert [r.status for r in replies] == [200] * len(conns)
    assert all(r.headers["Connection"] == "close" for r in replies)
    wait_until(lambda: not procs.pid_alive(worker), what="the drained worker to exit")
    assert "Traceback" not in fp.output()
