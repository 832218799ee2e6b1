"""``net.http_session._readable``, the zero-timeout check behind ``Session.arrived``
(is a request already on its way when a keep-alive wait runs out?) and a
parked connection's wake-up, on a descriptor past 1023: a worker holding
thousands of connections has them.  select() refuses such a descriptor; the
old check took the refusal for bytes, and held every such idle connection
header_timeout longer."""

from __future__ import annotations

import os
import resource
import socket

import pytest

from forkproxy.net.http_session import _readable

HIGH = 1500


@pytest.fixture
def high_pair():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= HIGH:
        pytest.skip(f"RLIMIT_NOFILE's hard limit {hard} holds no descriptor {HIGH}")
    if soft != resource.RLIM_INFINITY and soft <= HIGH:
        resource.setrlimit(resource.RLIMIT_NOFILE, (HIGH + 1, hard))
    a, b = socket.socketpair()
    os.dup2(a.fileno(), HIGH)
    try:
        yield HIGH, b
    finally:
        os.close(HIGH)
        a.close()
        b.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_quiet_descriptor_past_1023_is_not_readable(high_pair):
    fd, _ = high_pair
    assert not _readable(fd)


@pytest.mark.parametrize("then", ["bytes", "fin"])
def test_bytes_or_a_fin_on_a_descriptor_past_1023_are_seen(high_pair, then):
    fd, peer = high_pair
    if then == "bytes":
        peer.sendall(b"GET / HTTP/1.1\r\n")
    else:
        peer.shutdown(socket.SHUT_WR)
    assert _readable(fd)
