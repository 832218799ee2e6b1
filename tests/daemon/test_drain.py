"""A worker's drain, seen by its clients: what it has accepted, it answers.

Real ``python -m forkproxy`` masters and backends on 127.0.0.1; real
signals; raw client sockets, so the test sees a reset as a reset.
"""

from __future__ import annotations

import os
import signal
import time

from support import procs
from support.configs import one_pool
from support.procs import free_port, wait_until
from support.rawhttp import Conn


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
    fp = forkproxy_factory(one_pool(port, [b.addr]), server={"workers": 1})
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
    # Every one answered.  Not every answer says Connection: close: on a
    # loaded machine the worker may serve a connection before it handles
    # TERM (a clean-clone run saw it); the drain then closes it idle.
    assert [r.status for r in replies] == [200] * len(conns)
    wait_until(lambda: not procs.pid_alive(worker), what="the drained worker to exit")
    assert "Traceback" not in fp.output()


def _listener_inode(port: int) -> str:
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == f"0100007F:{port:04X}" and fields[3] == "0A":
                return fields[9]
    raise AssertionError(f"no listening socket on 127.0.0.1:{port}")


def _holds(pid: int, inode: str) -> bool:
    """True while process ``pid`` has the socket ``inode`` open."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                return True
        except OSError:
            pass
    return False


def test_a_request_that_comes_as_the_drain_window_ends_is_answered(forkproxy_factory,
                                                                   backend_factory):
    # An idle keep-alive connection of a draining worker: its next request
    # comes just as the drain window (1 s) ends.  Both the window's end and
    # the request are there when the worker runs again (it was stopped);
    # the request is answered with Connection: close, then the connection
    # ends with a FIN.  The window's end shut the socket, and the request
    # went unanswered.
    b = backend_factory("b")
    port = free_port()
    fp = forkproxy_factory(one_pool(port, [b.addr]), server={"workers": 1})
    worker, = fp.wait_workers(1)
    c = Conn(port)
    c.send(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
    assert c.reply().status == 200
    inode = _listener_inode(port)
    os.kill(worker, signal.SIGTERM)
    # the drain has begun once the worker closed its listening socket
    wait_until(lambda: not _holds(worker, inode), what="the worker to close its listener")
    os.kill(worker, signal.SIGSTOP)
    try:
        wait_until(lambda: _stopped(worker), what="the worker to stop")
        time.sleep(1.5)  # the time under test: past the drain window
        c.send(b"GET /second HTTP/1.1\r\nHost: x\r\n\r\n")
    finally:
        os.kill(worker, signal.SIGCONT)
    reply = c.reply()
    assert reply.status == 200 and reply.headers["Connection"] == "close"
    assert c.read_until_close() == b""
