"""Connections spread over the workers (core.accept_share, net.accepting).

Real forkproxy masters (2 workers), a real backend, raw client sockets.
Which worker holds a connection is read in /proc: the established
sockets of the listener's port in /proc/net/tcp, found among each
worker's open descriptors.  No timing is asserted.
"""

from __future__ import annotations

from support.configs import one_pool
from support.procs import free_port, open_files, wait_until
from support.rawhttp import Conn


def held(pids: list[int], port: int) -> list[int]:
    """How many accepted connections of 127.0.0.1:``port`` each of ``pids`` holds."""
    local = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as f:
        inodes = {f"socket:[{fields[9]}]" for fields in (line.split() for line in f.readlines()[1:])
                  if fields[1] == local and fields[3] == "01"}
    return [len(open_files(pid) & inodes) for pid in pids]


def serving(fp) -> list[int]:
    """The worker pids, once both accept (the first to serve would take everything)."""
    fp.wait_error_log("generation 1 serves")
    return fp.wait_workers()


def test_connections_made_one_after_the_other_alternate_between_the_workers(
        forkproxy_factory, backend_factory):
    # Each connection is served before the next one is made: the worker that
    # took it has said so, and the next one goes to the other.  Without the
    # shared counts, whichever worker the scheduler woke first took them
    # (one run: 19 of 20 in one worker).
    b = backend_factory()
    port = free_port()
    fp = forkproxy_factory(one_pool(port, [b.addr]))
    pids = serving(fp)
    conns = []
    try:
        for _ in range(20):
            c = Conn(port)
            conns.append(c)
            c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            assert c.reply().status == 200
        wait_until(lambda: sum(held(pids, port)) == 20, what="20 connections held")
        counts = held(pids, port)
        assert max(counts) <= 13, counts
    finally:
        for c in conns:
            c.close()


def test_a_burst_of_connections_is_shared(forkproxy_factory, backend_factory):
    # wrk's way: every connection made at once, then requests on each.
    b = backend_factory()
    port = free_port()
    fp = forkproxy_factory(one_pool(port, [b.addr]))
    pids = serving(fp)
    conns = [Conn(port) for _ in range(32)]
    try:
        for c in conns:
            c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert [c.reply().status for c in conns] == [200] * 32
        counts = held(pids, port)
        assert sum(counts) == 32 and max(counts) <= 22, counts
    finally:
        for c in conns:
            c.close()
