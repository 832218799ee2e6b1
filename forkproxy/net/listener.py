"""Accepting connections: a worker's runtime, listener lookup, PROXY header, TLS.

``Runtime`` is a worker's view of one configuration generation: the router,
the pools with their balancers and upstream connection pools, the access log.
``Runtime.handle(listener, client, addr)`` is what the gunicorn worker's
``handle`` calls for every accepted connection: it finds the listener the
connection came in on, admits it (max_conns_per_ip), reads a PROXY header
and completes a TLS handshake when the listener asks for them, then runs
the connection loop (``net.http_session.Session``) or the L4 proxy
(``net.tcp_proxy``).  ``maintain`` is the worker's housekeeping greenlet.

``read_proxy_header`` reads exactly one PROXY header (never a byte more:
what follows belongs to the stream, a TLS ClientHello or an HTTP request).
"""

from __future__ import annotations

import ipaddress
import math
import socket
import time

import gevent

from forkproxy.config import Config, ListenerConfig
from forkproxy.config.listener import serves_http2
from forkproxy.config.route import route_pools
from forkproxy.core import headers as hdr
from forkproxy.core import http1, proxy_protocol
from forkproxy.core.routing import Router, RouteSpec
from forkproxy.net import stages, tcp_proxy
from forkproxy.net.edge import Edge
from forkproxy.net.handoff import Handoff
from forkproxy.net.http_session import Session
from forkproxy.net.mirror import Mirrors
from forkproxy.net.pools import REFRESH, PoolRuntime
from forkproxy.net.spool import body_dir
from forkproxy.net.tls import HandshakeFailed, ListenerTLS, tls_server_name

# On drain, how long (at most; never beyond keepalive_timeout) an idle
# keep-alive connection may still bring one last request (forkproxy(8)).
DRAIN_WINDOW = 1.0
_UNKNOWN = object()


def _stick_table(cfg, p, log):
    """Pool ``p``'s sticky table (``sticky = { key = ... }``), else None."""
    if p.sticky is None or p.sticky.key is None:
        return None
    # Here, in the worker: pylibmc is never loaded in the master.
    from forkproxy.net.sticktable import StickTable

    return StickTable(p.name, p.sticky, cfg.cache.servers, cfg.cache.timeout, log)


class Runtime:
    """A worker's state for one configuration: what every session shares."""

    groups: tuple = ()  # the gevent groups connections are served in (daemon.worker; Session.park)

    def __init__(self, ctx, log, *, cache=None, metrics=None, admin=None):
        """``ctx``: what the worker was forked with (``daemon.state.WorkerContext``):
        its ``config``, ``access_log``, the shared ``table`` and its ``slot`` there
        (None: no slot), ``edge`` (the master's buffers of edge state, or None)
        and ``sticky_key`` (the daemon's key of sticky tokens, ``net.pools.sticky_secret``).

        ``cache``: the ``net.http_cache.Cache`` (None: no route caches);
        ``metrics``: the ``core.metrics.SlotCounter`` requests are counted in
        (None: nothing counted); ``admin``: called with this runtime, last,
        returns the ``net.admin.Admin`` endpoint (None: no server.admin).
        """
        cfg, access_log, table, slot = ctx.config, ctx.access_log, ctx.table, ctx.slot
        self.cfg = cfg
        self.cache = cache
        self.metrics = metrics
        # Client heads made by Session.relay, by what they were made from, the same for
        # Session.upstream_fields, and stages.admission's by request object (at most
        # CLIENT_HEADS each, then forgotten at once).
        self.client_heads, self.upstream_heads, self.admitted = {}, {}, {}
        self.log = log
        self.access_log = access_log
        s = cfg.server
        self.limits = http1.Limits(max_uri_length=s.max_uri_length, max_headers=s.max_headers,
                                   max_head_size=s.max_head_size)
        self.canon = (s.merge_slashes, s.encoded_slashes)  # canonical_request's policy
        self.routes = cfg.routes
        self.router = Router([RouteSpec(index=r.index, pool=r.pool, listeners=frozenset(r.listener),
                                        host=r.host, path=r.path, path_regex=r.path_regex)
                              for r in cfg.routes])
        self.pools: dict[str, PoolRuntime] = {}
        row = 0
        for p in cfg.pools:  # table rows: pools in file order, servers in list order
            rows = list(range(row, row + len(p.servers)))
            row += len(p.servers)
            self.pools[p.name] = PoolRuntime(p, table, rows, slot, ctx.sticky_key)
            self.pools[p.name].stick = _stick_table(cfg, p, log)
        self.refresh(time.time())
        self.mirrors = Mirrors(cfg.routes, self.pools, metrics, log, self.limits)  # routes' shadow traffic
        if metrics is not None:  # servers that came at run time are counted by their row
            metrics.metrics.locate = self._row_of
        self.plans = self._plans(cache is not None)
        self.trusted = s.trusted_proxies
        self._listeners: dict = {}  # listening socket -> ListenerConfig, None: admin
        # TLS listeners (contexts built by the master when it loaded the file)
        self.tls = {lc.name: ListenerTLS(lc) for lc in cfg.listeners if lc.contexts}
        self.https_port = {r.index: _https_port(cfg, r) for r in cfg.routes if r.redirect_https}
        self.edge = Edge(cfg, ctx.edge, slot, log)
        self.sessions: set[Session] = set()  # live client connections (drain wakes idle ones)
        self.body_dir = body_dir(s.runtime_dir)  # spooled request bodies (net.spool)
        # Told to clients on every kept connection, a second short of the
        # truth, so that they stop reusing it before forkproxy closes it.
        kt = s.keepalive_timeout
        self.keep_alive = ("Keep-Alive", f"timeout={max(1, math.ceil(kt) - 1)}") if kt > 0 else None
        self.keep_alive_line = f"{self.keep_alive[0]}: {self.keep_alive[1]}\r\n" \
            if self.keep_alive else ""
        self.draining = False
        self.drain_until = 0.0
        self.handoff = None  # net.handoff.Handoff once open_handoff ran
        self.handing_off = False  # draining, and a newer generation takes connections
        self.admin = admin(self) if admin is not None else None  # last: it reads this runtime

    def listener_for(self, sock, client) -> ListenerConfig | None:
        """What the listening socket ``sock`` serves: its configured listener,
        or None for the admin endpoint (by bound address).

        Remembered by the socket object, not its descriptor: the drain closes
        the listening sockets while connections they accepted just before may
        not have been handled yet, and a closed socket has neither descriptor
        nor address.  Then ``client``'s local address tells, being the bound
        one (an address of it, for a wildcard bind).  Raises ``OSError`` when
        that is needed and the client is gone.
        """
        found = self._listeners.get(sock, _UNKNOWN)
        if found is not _UNKNOWN:
            return found
        try:
            host, port = sock.getsockname()[:2]
        except OSError:  # closed by the drain
            host, port = client.getsockname()[:2]
        if self.admin is not None and self.admin.listens_on(host, port):
            found = None
        else:
            for lc in self.cfg.listeners:
                if lc.port == port and (lc.host in ("", "0.0.0.0", "::") or lc.host == host
                                        or _same_host(lc.host, host)):
                    found = lc
                    break
            else:  # a socket we do not know: serve it with the first listener's rules
                found = self.cfg.listeners[0]
        self._listeners[sock] = found
        return found

    def _plans(self, cache: bool) -> list[tuple]:
        """Each route's request stages after routing (``net.stages.plan``), made once."""
        return [stages.plan(r, any(self.pools[p].cfg.sticky is not None for p in route_pools(r)),
                            cache) for r in self.cfg.routes]

    def handle(self, listener_sock, client, addr) -> None:
        try:
            listener = self.listener_for(listener_sock, client)
        except OSError:  # the client left before it was looked at
            _close_quietly(client)
            return
        if listener is None:
            self.admin.handle(client, addr)  # its own socket: never a listener's rules
            return
        self._admitted(listener, client, addr)

    def _admitted(self, listener: ListenerConfig, client, addr, served: int | None = None):
        """Serve a connection within the listener's max_conns_per_ip, counted.
        ``served``: requests it carried in a worker that handed it over."""
        ticket = self.edge.admit(listener, addr)  # max_conns_per_ip
        if ticket is None:
            self.log.warning("connection from %s to listener %s refused: max_conns_per_ip (%d) "
                             "reached", addr[0], listener.name, listener.max_conns_per_ip)
            _close_quietly(client)
            return
        metrics = self.metrics
        if metrics is not None:
            metrics.connection(1)
        ended = []

        def end() -> None:  # once, when the connection ends (a parked session's: later)
            if not ended:
                ended.append(True)
                self.edge.release(ticket)
                if metrics is not None:
                    metrics.connection(-1)

        parked = False
        try:
            if served is not None:
                session = Session(self, listener, client, addr, served=served)
                session.on_end = end
                parked = session.run()
            elif listener.mode == "http" and not listener.contexts and not listener.accept_proxy:
                parked = self.serve_http(listener, client, addr, on_end=end)
            else:
                parked = self.handle_edge(listener, client, addr, on_end=end)
        finally:
            if not parked:
                end()

    def handle_handed(self, name: str, client, peer, served: int) -> None:
        """A keep-alive connection a draining worker of an older generation
        handed over (``net.handoff``): served on, by this configuration's
        plain HTTP listener of the same name (the handoff refuses it when
        there is none), counted and admitted like an accepted one."""
        listener = self._plain_listener(name)
        if listener is None:  # asked first (Handoff.takes): only after a race with a reload
            _close_quietly(client)
            return
        self._admitted(listener, client, peer, served)

    def _plain_listener(self, name: str) -> ListenerConfig | None:
        return next((lc for lc in self.cfg.listeners
                     if lc.name == name and lc.mode == "http" and not lc.contexts), None)

    def open_handoff(self, generation: int) -> None:
        """Take connections that draining workers of older generations hand over."""
        self.handoff = Handoff(self.cfg.server.runtime_dir, generation, self.handle_handed,
                               self.log, takes=lambda name: self._plain_listener(name) is not None)
        if not self.handoff.open():
            self.handoff = None

    def handle_edge(self, listener: ListenerConfig, client, addr, on_end=None) -> bool:
        """A connection that needs more than plain HTTP: a PROXY header to read,
        a TLS handshake (in this greenlet, never the accept loop), a tunnel.

        A bad header or a failed handshake costs one log line and the
        connection, never the worker.  True when its session parked
        (``serve_http``).
        """
        peer = addr if isinstance(addr, tuple) else None
        try:
            local = client.getsockname()[:2]
            if listener.accept_proxy:
                if peer is None or not hdr.in_networks(peer[0], listener.proxy_protocol_from):
                    # Its header would choose the client address forkproxy believes.
                    self.log.warning("listener %s: connection from %s closed: PROXY headers "
                                     "are not accepted from it (listener.proxy_protocol_from)",
                                     listener.name, peer[0] if peer else "-")
                    _close_quietly(client)
                    return False
                header = read_proxy_header(client, self.cfg.server.header_timeout)
                if header.src is not None:  # LOCAL: the balancer's own check
                    peer, local = header.src, header.dst
            tls = self.tls.get(listener.name)
            if tls is not None:
                client = tls.accept(client, self.cfg.server.header_timeout)
        except (ProxyHeaderError, HandshakeFailed) as exc:
            self.log.info("listener %s: connection from %s closed: %s", listener.name,
                          peer[0] if peer else "-", exc)
            _close_quietly(client)
            return False
        except OSError as exc:  # the client went away before anything happened
            self.log.debug("listener %s: %s", listener.name, exc)
            _close_quietly(client)
            return False
        if listener.mode == "tcp":
            try:
                tcp_proxy.serve(self, listener, client, peer, local)
            except Exception:  # a bug must cost one connection, never the worker
                self.log.exception("internal error on a tcp connection from %s",
                                   peer[0] if peer else "-")
                _close_quietly(client)
            return False
        return self.serve_http(listener, client, peer or addr, tls is not None, on_end)

    def serve_http(self, listener: ListenerConfig, client, addr, tls: bool = False,
                   on_end=None) -> bool:
        """An HTTP connection (past its PROXY header and TLS handshake):
        HTTP/2 (``net.h2_conn``) when ALPN chose h2, or when a plain one
        opens with the connection preface on a listener with http2; else
        HTTP/1.1 (``Session``).  True when the session parked
        (``Session.park``): it calls ``on_end`` when it ends."""
        # net.h2_conn is imported where HTTP/2 is served only: a worker whose
        # listeners speak no HTTP/2 never loads h2 (some 2 MiB of RSS per worker).
        if tls:
            tls_info = ("https", client.version(), tls_server_name(client))
            if client.selected_alpn_protocol() == "h2":  # offered only with http2
                from forkproxy.net.h2_conn import H2Conn

                H2Conn(self, listener, client, addr, *tls_info).run()
                return False
        elif serves_http2(listener):
            from forkproxy.net.h2_conn import H2Conn, is_preface

            h2c = is_preface(client, self.cfg.server.header_timeout)
            if h2c is None:  # nothing came in time, or the client left: as Session would
                _close_quietly(client)
                return False
            if h2c:
                H2Conn(self, listener, client, addr).run()
                return False
        session = Session(self, listener, client, addr)
        session.on_end = on_end
        if tls:
            session.proto, session.tls_version, session.sni = tls_info
        return session.run()

    def _row_of(self, pool: str, addr: str) -> int | None:
        got = self.pools.get(pool)
        return got.row_of(addr) if got is not None else None

    def refresh(self, now: float) -> None:
        """Take a new snapshot of the shared table for every pool."""
        for pool in self.pools.values():
            pool.refresh(now)

    def drain(self) -> None:
        """Stop keeping connections alive (idempotent).

        With a newer generation taking them (``net.handoff``), plain-HTTP
        connections go to it as soon as they wait for a next request.
        Otherwise in-flight requests finish; their connections close after
        the response (they answer with ``Connection: close``).  A keep-alive connection's
        next request is still answered (with ``Connection: close``) during
        the drain window, because its client may have sent it already: closing
        at once would lose it.  Connections idle through the whole window are
        closed at its end.
        """
        if self.draining:
            return
        if self.handoff is not None:
            self.handoff.close()  # no more connections come here
            self.handing_off = bool(self.handoff.targets())
        self.draining = True
        window = min(DRAIN_WINDOW, self.cfg.server.keepalive_timeout)
        self.drain_until = time.monotonic() + window
        gevent.spawn_later(window, self._close_idle)
        for session in list(self.sessions):
            # HTTP/1.1 ones waiting for a next request go now when handing
            # off; HTTP/2 ones send GOAWAY and finish their streams.
            session.hand_off_soon()

    def _close_idle(self) -> None:
        for session in list(self.sessions):
            session.shut_idle()  # only those waiting for a next request

    def tunnels_timeout(self) -> float:
        """The longest a tunnel may stay idle here: server.tunnel_timeout, a
        route's own, a TCP listener's idle_timeout.  A worker draining for a
        reload keeps its tunnels that long at most (daemon.worker)."""
        return max([self.cfg.server.tunnel_timeout]
                   + [r.tunnel_timeout for r in self.cfg.routes if r.tunnel_timeout is not None]
                   + [lc.idle_timeout for lc in self.cfg.listeners if lc.mode == "tcp"])

    def trusted_peer(self, ip: str) -> bool:
        if not self.trusted:
            return False
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self.trusted)


def _close_quietly(sock) -> None:
    try:
        sock.close()
    except OSError:
        pass


def _https_port(cfg: Config, route) -> int:
    """Port of the https URL a redirect_https route sends clients to: the first
    TLS http listener the route accepts (any, when it names none); 443 if none."""
    for lc in cfg.listeners:
        if lc.contexts and lc.mode == "http" and (not route.listener or lc.name in route.listener):
            return lc.port
    return 443


def _same_host(a: str, b: str) -> bool:
    return a.strip("[]") == b or (a == "localhost" and b == "127.0.0.1")


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


def maintain(worker, rt_getter, on_stop=(), interval: float = 0.1) -> None:
    """Greenlet body: refresh the table snapshot; drain when the worker stops.

    ``on_stop`` callables run when the worker stops being alive (the health
    checker gives up its lock there, so a draining worker of an old
    generation does not keep probing for the old table).

    The worker's ``run`` drains as soon as SIGTERM arrives; this is the
    fallback for any other way ``alive`` turns False (``Runtime.drain`` is
    idempotent).
    """
    last = 0.0
    while worker.alive:
        gevent.sleep(interval)
        now = time.time()
        if now - last >= REFRESH:
            last = now
            try:
                rt_getter().refresh(now)
            except Exception:  # a bad read must not stop the worker's housekeeping
                worker.log.exception("refreshing the health snapshot failed")
    for fn in on_stop:
        fn()
    rt_getter().drain()
