"""Layer 4: relay a client connection byte for byte to a server of a pool.

``serve(rt, listener, client, peer, local)`` is what ``Runtime.handle`` runs
for a ``mode = "tcp"`` listener (after the TLS handshake, when the listener
terminates TLS, and after reading the client's PROXY header, when it
accepts one):

- the server is chosen by the pool's balancer (the client's address is the
  key of ip_hash and hash); a connect error or timeout counts as a passive
  failure and the next server is tried, each at most once; when none can
  be reached the client connection is closed (there is nothing else to say
  at Layer 4);
- the pool's ``proxy_protocol`` header goes first to the server, carrying
  the client's address and the address it connected to;
- bytes flow both ways, at most ``BUF_SIZE`` in flight per direction (memory
  per connection is bounded whatever the volume, and an idle tunnel holds
  no buffer); an EOF from one side is
  passed on as a half-close (``shutdown(SHUT_WR)``) and the other direction
  goes on until it ends too.  A TLS client connection cannot be half-closed:
  the server's EOF ends it (with a close_notify);
- ``idle_timeout`` without a byte either way closes both sides.

``read_proxy_header`` reads exactly one PROXY header (never a byte more:
what follows belongs to the stream, a TLS ClientHello or an HTTP request).
"""

from __future__ import annotations

import random
import socket
import time

import gevent

from forkproxy.config import ListenerConfig
from forkproxy.core import proxy_protocol
from forkproxy.net.tls import wrap_upstream

BUF_SIZE = 262144  # per read; 64 KiB relays at a third of the speed
_RNG = random.Random()


class ProxyHeaderError(Exception):
    """The connection did not start with a valid PROXY header in time."""


def read_proxy_header(sock: socket.socket, timeout: float) -> proxy_protocol.ProxyHeader:
    """Consume one PROXY header (v1 or v2) from ``sock`` and return it.

    Peeks before reading so that no byte past the header is taken: while
    the header is incomplete every byte seen belongs to it and can be
    consumed; once complete, exactly its remaining bytes are read.
    """
    deadline = time.monotonic() + timeout
    got = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ProxyHeaderError("no PROXY header in time")
        sock.settimeout(remaining)
        try:
            peeked = sock.recv(proxy_protocol.V1_MAX + 232, socket.MSG_PEEK)
        except socket.timeout:
            raise ProxyHeaderError("no PROXY header in time") from None
        except OSError as exc:
            raise ProxyHeaderError(f"reading the PROXY header: {exc.strerror or exc}") from None
        if not peeked:
            raise ProxyHeaderError("connection closed before a PROXY header")
        try:
            header = proxy_protocol.parse(got + peeked)
        except proxy_protocol.ProxyProtocolError as exc:
            raise ProxyHeaderError(str(exc)) from None
        take = len(peeked) if header is proxy_protocol.NEED_MORE else header.length - len(got)
        while take:  # the bytes are there (peeked): these reads do not wait
            data = sock.recv(take)
            if not data:
                raise ProxyHeaderError("connection closed in a PROXY header")
            got += data
            take -= len(data)
        if header is not proxy_protocol.NEED_MORE:
            return header


def serve(rt, listener: ListenerConfig, client, peer: tuple, local: tuple) -> None:
    """Relay ``client`` to a server of the listener's pool until both sides are done.

    ``peer`` is the client's (ip, port) (from the PROXY header when the
    listener accepts one), ``local`` the address it connected to.  Never
    raises for a network reason; closes ``client``.
    """
    pool = rt.pools[listener.pool]
    up = None
    i = None
    try:
        up, i = _connect(rt, pool, peer, local)
        if up is None:
            return
        pool.begin(i)
        try:
            Relay(client, up, listener.idle_timeout, tls_client=hasattr(client, "unwrap")).run()
        finally:
            pool.end(i)
    finally:
        for s in (client, up):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass


def _connect(rt, pool, peer, local):
    """(socket, index) of the first server that accepts; (None, None) when none does."""
    cfg = pool.cfg
    tried: set[int] = set()
    key = peer[0].encode() if peer else None
    while True:
        i = pool.pick_key(key, _RNG, tried)
        if i is None:
            rt.log.error("tcp pool=%s: no server available for %s%s", pool.name,
                         peer[0] if peer else "-", " (all tried)" if tried else "")
            return None, None
        server = pool.servers[i]
        tried.add(i)
        try:
            up = socket.create_connection((server.host, server.port), timeout=cfg.connect_timeout)
            up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if cfg.tls is not None:
                up = wrap_upstream(up, cfg.tls, server.host, cfg.connect_timeout)
            if cfg.proxy_protocol:
                up.settimeout(cfg.send_timeout)
                up.sendall(proxy_protocol.encode(cfg.proxy_protocol, peer, local))
        except (OSError, ValueError) as exc:  # socket.timeout and ssl.SSLError are OSErrors
            reason = "timed out" if isinstance(exc, socket.timeout) else (
                getattr(exc, "reason", None) or exc.strerror or exc)
            rt.log.warning("tcp pool=%s server=%s: connect: %s", pool.name, server.addr, reason)
            pool.failed(i, time.time())
            continue
        return up, i


class Relay:
    """Both directions of one tunnel, a watchdog for the idle timeout."""

    def __init__(self, client, up, idle_timeout: float, tls_client: bool = False):
        self.client = client
        self.up = up
        self.idle = idle_timeout
        self.tls_client = tls_client
        self.last = time.monotonic()
        self.closed = False

    def run(self) -> None:
        for s in (self.client, self.up):
            s.settimeout(None)  # the watchdog bounds the waits
        back = gevent.spawn(self._pump, self.up, self.client, True)
        dog = gevent.spawn(self._watch)
        try:
            self._pump(self.client, self.up, False)
            back.join()
        finally:
            dog.kill(block=False)
            back.kill(block=False)

    def _pump(self, src, dst, to_client: bool) -> None:
        # recv, not recv_into a buffer of our own: gevent's recv allocates only
        # once data is there, so an idle tunnel holds no buffer at all.
        try:
            while True:
                data = src.recv(BUF_SIZE)
                if not data:
                    break
                self.last = time.monotonic()
                dst.sendall(data)
                self.last = time.monotonic()
        except (OSError, ValueError):  # reset, or closed by the other side / the watchdog
            self._close_all()
            return
        # A clean EOF: pass the half-close on.
        try:
            if to_client and self.tls_client:
                dst.settimeout(1.0)  # close_notify, without waiting on the client's
                dst.unwrap()
            else:
                dst.shutdown(socket.SHUT_WR)
        except (OSError, ValueError):
            self._close_all()
        if to_client and self.tls_client:
            self._close_all()  # a TLS client connection ends with its close_notify

    def _watch(self) -> None:
        while not self.closed:
            left = self.last + self.idle - time.monotonic()
            if left <= 0:
                self._close_all()
                return
            gevent.sleep(left)

    def _close_all(self) -> None:
        # Closing wakes the greenlet blocked on the other socket with an error.
        if self.closed:
            return
        self.closed = True
        for s in (self.client, self.up):
            try:
                s.close()
            except OSError:
                pass
