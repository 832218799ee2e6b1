"""Per-server keep-alive connection pools of one worker, and upstream timeouts.

An ``UpstreamConn`` is one TCP connection to one backend server.  The session
checks one out of its server's ``ConnPool`` for a request and gives it back
only after a complete, cleanly framed response (and a completely sent
request); anything else closes it.  Idle connections are kept LIFO (the
warmest first), at most ``keepalive`` per server, and dropped after
``keepalive_timeout`` idle seconds or as soon as the server closed them.
"""

from __future__ import annotations

import errno
import socket
import time

from gevent import select as gselect

from forkproxy.config import PoolConfig, ServerEntry
from forkproxy.net.sockio import is_plain
from forkproxy.net.tls import wrap_upstream

RECV_SIZE = 65536
# An idle connection reused within this many seconds is not probed first
# when the request can be replayed (servers time idle connections out after
# seconds, not milliseconds).
WARM = 1.0


class UpstreamError(Exception):
    """An attempt at a server failed.

    ``kind`` is what the retry and status logic need: "refused", "reset",
    "timeout", "closed" (no byte of a response came back), "invalid" (the
    server sent something that is not HTTP).  ``sent`` tells whether any byte
    of the request may have reached the server.
    """

    def __init__(self, kind: str, detail: str, *, sent: bool):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.sent = sent

    @property
    def status(self) -> int:
        return 504 if self.kind == "timeout" else 502


class UpstreamConn:
    """A connection to one server, with what the pool needs to know of it.

    ``sock`` has no timeout of its own: the session bounds each call with
    ``send_timeout`` or ``read_timeout``, its pool's (net.sockio).
    """

    __slots__ = ("sock", "server", "reused", "idle_since", "buf", "send_timeout",
                 "read_timeout", "plain")

    def __init__(self, sock: socket.socket, server: ServerEntry, send_timeout: float,
                 read_timeout: float):
        self.sock = sock
        self.server = server
        self.send_timeout = send_timeout
        self.read_timeout = read_timeout
        self.plain = is_plain(sock)  # not TLS (net.sockio)
        self.reused = False
        self.idle_since = 0.0
        self.buf = b""  # bytes read past the end of the last response (must stay empty to reuse)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def _still_open(sock: socket.socket) -> bool:
    """True when an idle connection has neither data nor EOF pending.

    An idle keep-alive connection must be silent: anything readable is either
    the server closing it or garbage, and both mean it must not be reused.
    """
    try:
        readable, _, _ = gselect.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable


def _override(conn: UpstreamConn, limits) -> None:
    """A route's send and read time limits (``limits[1:]``, None: the pool's) on ``conn``."""
    _, send, read = limits
    if send is not None:
        conn.send_timeout = send
    if read is not None:
        conn.read_timeout = read


class ConnPool:
    """Idle connections to one server, for one worker."""

    alpn: tuple = ()  # offered over TLS (net.upstream_h2: ("h2",))

    def __init__(self, server: ServerEntry, pool: PoolConfig):
        self.server = server
        self.max_idle = pool.keepalive
        self.idle_timeout = pool.keepalive_timeout
        self.connect_timeout = pool.connect_timeout
        self.send_timeout = pool.send_timeout
        self.read_timeout = pool.read_timeout
        self.idle: list[UpstreamConn] = []
        self.tls = pool.tls  # PoolTlsConfig or None
        self.tls_session = None  # the last TLS session with this server, to resume

    def checkout(self, replayable: bool = True, limits=None) -> UpstreamConn:
        """A live connection: an idle one when there is a good one, else a new one.

        An idle connection is probed (a zero-timeout poll) before reuse when
        the request could not be replayed on a fresh connection, or when it
        sat idle long enough for the server to have timed it out.  A request
        that can be replayed skips the probe on warm connections: the session
        retries it on a new connection if the server had closed this one.
        Raises ``UpstreamError`` ("refused", "timeout", "reset") when a new
        connection cannot be made; nothing of the request was sent then.
        ``limits``: a route's (connect, send, read) time limits, each None
        for the pool's (route connect_timeout, send_timeout, read_timeout).
        """
        now = time.monotonic()
        while self.idle:
            conn = self.idle.pop()
            idle_for = now - conn.idle_since
            if idle_for < self.idle_timeout and (
                    (replayable and idle_for < WARM) or _still_open(conn.sock)):
                conn.reused = True
                if limits is not None:
                    _override(conn, limits)
                return conn
            conn.close()
        return self.connect(limits)

    def connect(self, limits=None) -> UpstreamConn:
        server = self.server
        connect_timeout = self.connect_timeout if limits is None or limits[0] is None \
            else limits[0]
        try:
            sock = socket.create_connection((server.host, server.port), timeout=connect_timeout)
        except socket.timeout:
            raise UpstreamError("timeout", f"connect to {server.addr} timed out", sent=False) from None
        except ConnectionRefusedError:
            raise UpstreamError("refused", f"connect to {server.addr} refused", sent=False) from None
        except OSError as exc:
            kind = "refused" if exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH,
                                              errno.ENETUNREACH) else "reset"
            raise UpstreamError(kind, f"connect to {server.addr}: {exc.strerror or exc}",
                                sent=False) from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls is not None:
            sock = self._tls(sock, connect_timeout)
        sock.settimeout(None)
        conn = UpstreamConn(sock, server, self.send_timeout, self.read_timeout)
        if limits is not None:
            _override(conn, limits)
        return conn

    def _tls(self, sock, connect_timeout: float):
        """The TLS handshake of a new connection; UpstreamError (nothing sent) on failure."""
        server = self.server
        try:
            tls = wrap_upstream(sock, self.tls, server.host, connect_timeout,
                                session=self.tls_session, alpn=self.alpn)
        except socket.timeout:
            raise UpstreamError("timeout", f"TLS handshake with {server.addr} timed out",
                                sent=False) from None
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
            raise UpstreamError("refused", f"TLS handshake with {server.addr} failed: {reason}",
                                sent=False) from None
        self.tls_session = tls.session
        return tls

    def checkin(self, conn: UpstreamConn) -> None:
        """Keep a connection whose last exchange ended cleanly; close it when full."""
        if conn.buf or len(self.idle) >= self.max_idle:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        conn.send_timeout, conn.read_timeout = self.send_timeout, self.read_timeout  # the pool's again
        self.idle.append(conn)

    def close(self) -> None:
        while self.idle:
            self.idle.pop().close()
