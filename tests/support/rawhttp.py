"""Raw HTTP/1.1 over a socket, for tests that need exact bytes: pipelining,
malformed requests, interim responses, reads until the server closes.

Responses are parsed by the standard library's ``http.client.HTTPResponse``
from one shared buffered reader, so several pipelined responses can be read
in order from one connection.
"""

from __future__ import annotations

import http.client
import socket


class Reply:
    """A parsed response: ``status``, ``reason``, ``headers`` (an ``http.client.HTTPMessage``), ``body``."""

    def __init__(self, status: int, reason: str, headers, body: bytes, version: int):
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
        self.version = version

    def __repr__(self):
        return f"<Reply {self.status} {len(self.body)} bytes>"


class _KeepOpen:
    """The shared reader, which HTTPResponse must not close after one response."""

    def __init__(self, f):
        self._f = f

    def __getattr__(self, name):
        return getattr(self._f, name)

    def close(self):
        pass


class _SockLike:
    def __init__(self, f):
        self._f = f

    def makefile(self, *args, **kwargs):
        return self._f


class Conn:
    """One client connection to 127.0.0.1:port."""

    def __init__(self, port: int, timeout: float = 10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self._reader = _KeepOpen(self.sock.makefile("rb"))

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self, method: str = "GET") -> Reply:
        """Read the next final response (interim 1xx ones are skipped by http.client)."""
        resp = http.client.HTTPResponse(_SockLike(self._reader), method=method)
        resp.begin()
        body = resp.read()
        return Reply(resp.status, resp.reason, resp.headers, body, resp.version)

    def read_until_close(self, limit: int = 1 << 20) -> bytes:
        """Every byte the server sends until it closes (or the timeout hits)."""
        out = b""
        try:
            while len(out) < limit:
                data = self._reader.read1(65536)
                if not data:
                    break
                out += data
        except (socket.timeout, ConnectionResetError):
            pass
        return out

    def closed_by_peer(self) -> bool:
        """True when the server has closed its side (EOF or reset on the next read)."""
        try:
            return self._reader.read1(1) == b""
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def exchange(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send ``data`` on a fresh connection and return everything until the server closes."""
    with Conn(port, timeout) as c:
        c.send(data)
        return c.read_until_close()
