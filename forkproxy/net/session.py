"""One client connection: read a request, route it, relay it, respond; repeat.

``Runtime`` is a worker's view of one configuration generation: the router,
the pools with their balancers and upstream connection pools, the access log.
``Runtime.handle(listener, client, addr)`` is what the gunicorn worker's
``handle`` calls for every accepted connection; it runs a ``Session``, which
serves requests on that connection until either side closes it, a timeout
expires, or the worker drains.

Rules kept here (DESIGN section 4):
- a request is read and validated completely (head) before anything is sent
  upstream; a bad one gets a 4xx with ``Connection: close`` and no byte of it
  reaches a backend; the head sent upstream is rebuilt, never relayed;
- bodies stream in both directions through fixed-size buffers;
- an upstream connection is reused only after a complete, cleanly framed
  exchange; a truncated response body ends the client connection without a
  clean terminator;
- a request goes to another server only when nothing of it was sent
  (connect failed) or it has no body and an idempotent method.
"""

from __future__ import annotations

import email.utils
import errno
import ipaddress
import math
import socket
import time

import gevent
from gevent import get_hub, getcurrent
from gevent.monkey import get_original

from forkproxy.config import Config, ListenerConfig
from forkproxy.core import encoding, failover
from forkproxy.core import headers as hdr
from forkproxy.core import http1
from forkproxy.core.canon import PathRefused, canonical_path
from forkproxy.core.routing import Router, RouteSpec
from forkproxy.core.table import Table
from forkproxy.logs import AccessLog, AccessRecord, error_line
from forkproxy.net import compress, tunnel
from forkproxy.net.edge import Edge
from forkproxy.net.pools import REFRESH, PoolRuntime
from forkproxy.net.spool import Spool, body_dir
from forkproxy.net.sockio import Timers, is_plain, recv_ready, send_now, wait_readable
from forkproxy.net.tls import HandshakeFailed, ListenerTLS, tls_server_name
from forkproxy.net.upstream import RECV_SIZE, UpstreamConn, UpstreamError

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# On drain, how long (at most; never beyond keepalive_timeout) an idle
# keep-alive connection may still bring one last request (forkproxy(8)).
DRAIN_WINDOW = 1.0
# How long (at most) a connection forkproxy closes is read and discarded
# after its FIN, until the client's own: a request the client sent as the
# connection was being closed then meets a FIN, not a reset (lingering close).
LINGER = 2.0
_select = get_original("select", "select")  # a poll of 0 s, without gevent's hub
# Fields the proxy writes itself (or consumes), dropped with the hop-by-hop ones.
REWRITTEN_REQUEST_FIELDS = frozenset({"host", "content-length", "expect", "x-request-id"})
REWRITTEN_RESPONSE_FIELDS = frozenset({"content-length"})
# How many client response heads (Session.relay) and upstream request fields
# (Session.upstream_fields) a worker remembers.
CLIENT_HEADS = 512
_UNKNOWN = object()


class ClientGone(Exception):
    """The client closed, reset or stalled: stop serving this connection."""


class Abort(Exception):
    """The response cannot be completed (upstream died mid-body): drop the client."""


class _Clock:
    """Date header text, formatted once per second."""

    second = -1
    text = ""

    def date(self) -> str:
        now = int(time.time())
        if now != self.second:
            self.second = now
            self.text = email.utils.formatdate(now, usegmt=True)
        return self.text


CLOCK = _Clock()


class Runtime:
    """A worker's state for one configuration: what every session shares."""

    def __init__(self, cfg: Config, log, access_log: AccessLog, table: Table,
                 slot: int | None, shared: dict | None = None, sticky_key: bytes | None = None,
                 *, cache=None, metrics=None, admin=None):
        """``sticky_key``: the daemon's key of sticky tokens (``net.pools.sticky_secret``).

        ``cache``: the ``net.caching.Cache`` (None: no route caches);
        ``metrics``: the ``core.metrics.SlotCounter`` requests are counted in
        (None: nothing counted); ``admin``: called with this runtime, last,
        returns the ``net.admin.Admin`` endpoint (None: no server.admin).
        """
        self.cfg = cfg
        self.cache = cache
        self.metrics = metrics
        # Client heads made by Session.relay, by what they were made from
        # (at most CLIENT_HEADS, then forgotten at once).
        self.client_heads: dict[tuple, tuple] = {}
        self.upstream_heads: dict[tuple, tuple] = {}  # the same for Session.upstream_fields
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
            self.pools[p.name] = PoolRuntime(p, table, rows, slot, sticky_key)
        self.refresh(time.time())
        self.trusted = s.trusted_proxies
        self._listeners: dict = {}  # listening socket -> ListenerConfig, None: admin
        # TLS listeners (contexts built by the master when it loaded the file)
        self.tls = {lc.name: ListenerTLS(lc) for lc in cfg.listeners if lc.contexts}
        self.https_port = {r.index: _https_port(cfg, r) for r in cfg.routes if r.redirect_https}
        self.edge = Edge(cfg, shared, slot, log)  # shared: the master's buffers (daemon.hooks)
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

    def handle(self, listener_sock, client, addr) -> None:
        try:
            listener = self.listener_for(listener_sock, client)
        except OSError:  # the client left before it was looked at
            _close_quietly(client)
            return
        if listener is None:
            self.admin.handle(client, addr)  # its own socket: never a listener's rules
            return
        ticket = self.edge.admit(listener, addr)  # max_conns_per_ip
        if ticket is None:
            self.log.warning("connection from %s to listener %s refused: max_conns_per_ip (%d) "
                             "reached", addr[0], listener.name, listener.max_conns_per_ip)
            _close_quietly(client)
            return
        metrics = self.metrics
        if metrics is not None:
            metrics.connection(1)
        try:
            if listener.mode == "http" and not listener.contexts and not listener.accept_proxy:
                Session(self, listener, client, addr).run()
            else:
                self.handle_edge(listener, client, addr)
        finally:
            self.edge.release(ticket)
            if metrics is not None:
                metrics.connection(-1)

    def handle_edge(self, listener: ListenerConfig, client, addr) -> None:
        """A connection that needs more than plain HTTP: a PROXY header to read,
        a TLS handshake (in this greenlet, never the accept loop), a tunnel.

        A bad header or a failed handshake costs one log line and the
        connection, never the worker.
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
                    return
                header = tunnel.read_proxy_header(client, self.cfg.server.header_timeout)
                if header.src is not None:  # LOCAL: the balancer's own check
                    peer, local = header.src, header.dst
            tls = self.tls.get(listener.name)
            if tls is not None:
                client = tls.accept(client, self.cfg.server.header_timeout)
        except (tunnel.ProxyHeaderError, HandshakeFailed) as exc:
            self.log.info("listener %s: connection from %s closed: %s", listener.name,
                          peer[0] if peer else "-", exc)
            _close_quietly(client)
            return
        except OSError as exc:  # the client went away before anything happened
            self.log.debug("listener %s: %s", listener.name, exc)
            _close_quietly(client)
            return
        if listener.mode == "tcp":
            try:
                tunnel.serve(self, listener, client, peer, local)
            except Exception:  # a bug must cost one connection, never the worker
                self.log.exception("internal error on a tcp connection from %s",
                                   peer[0] if peer else "-")
                _close_quietly(client)
            return
        session = Session(self, listener, client, peer or addr)
        if tls is not None:
            session.proto = "https"
            session.tls_version, session.sni = client.version(), tls_server_name(client)
        session.run()

    def refresh(self, now: float) -> None:
        """Take a new snapshot of the shared table for every pool."""
        for pool in self.pools.values():
            pool.refresh(now)

    def drain(self) -> None:
        """Stop keeping connections alive (idempotent).

        In-flight requests finish; their connections close after the response
        (they answer with ``Connection: close``).  A keep-alive connection's
        next request is still answered (with ``Connection: close``) during
        the drain window, because its client may have sent it already: closing
        at once would lose it.  Connections idle through the whole window are
        closed at its end.
        """
        if self.draining:
            return
        self.draining = True
        window = min(DRAIN_WINDOW, self.cfg.server.keepalive_timeout)
        self.drain_until = time.monotonic() + window
        gevent.spawn_later(window, self._close_idle)

    def _close_idle(self) -> None:
        for session in list(self.sessions):
            session.shut_idle()  # only those waiting for a next request

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


class Session:
    """Serve requests on one client connection until it ends."""

    proto = "http"  # "https" when the connection came over TLS (set by Runtime)
    tls_version = sni = None  # a TLS connection's protocol and SNI name (set by Runtime)
    hsts = None  # the matched route's Strict-Transport-Security value, over TLS only
    edge_req = None  # the current request's net.edge.EdgeRequest (after routing)
    spool = None  # the current request's body, read whole (route request_buffering)
    cache_hook = None  # net.caching's hook for the exchange in progress (see its contract)
    cache_tee = None  # the current response's net.caching.Tee: the origin's body goes in
    # Sizes of the current request's head and of its response's: only small
    # heads' results are remembered (upstream_fields, relay), so a client
    # cannot make a worker keep more than CLIENT_HEADS small ones.
    head_size = resp_head_size = 0

    def __init__(self, rt: Runtime, listener: ListenerConfig, client: socket.socket, addr):
        self.rt = rt
        self.listener = listener
        self.client = client
        self.peer = addr[0] if isinstance(addr, tuple) else "unix"
        self.buf = b""
        self.served = 0
        self.idle_waiting = False
        self.client_done = False  # the client closed its side (EOF between requests)
        self.glet = None  # the greenlet serving this connection (Runtime._close_idle wakes it)
        self.received = self.sent = 0  # bytes read from / written to the client, in all
        # Each blocking call is bounded by one of these (net.sockio); the
        # sockets themselves have no timeout.
        self.timers = Timers()
        self.send_timeout = rt.cfg.server.send_timeout
        self.plain = is_plain(client)  # not TLS: waits and sends take the short cuts

    # -- connection loop -------------------------------------------------

    def run(self) -> None:
        """Serve requests until the connection ends.

        When forkproxy ends it (keepalive_timeout, the drain, a response
        with ``Connection: close``), the close lingers (``linger``); when the
        client closed, reset or stalled, or a response was cut, it is closed
        at once.
        """
        client = self.client
        self.glet = getcurrent()
        self.rt.sessions.add(self)
        try:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client.settimeout(None)
        except OSError:
            pass
        try:
            while self.serve_one():
                self.served += 1
            if not self.client_done:
                self.linger()
        except (ClientGone, Abort):
            pass
        except Exception:  # a bug must cost one connection, never the worker
            self.rt.log.exception("internal error on a connection from %s", self.peer)
        finally:
            self.rt.sessions.discard(self)
            self.timers.close()
            try:
                client.close()
            except OSError:
                pass

    def linger(self) -> None:
        """The close of a connection the client may still be writing to (nginx's
        lingering close): FIN first, then read and discard until the client's
        FIN, for at most LINGER seconds.

        Closing a socket with unread bytes, or receiving bytes after the close,
        makes the kernel answer with a reset, which can destroy the last
        response before the client read it and turns a request that crossed
        the close into "connection reset" instead of a clean end the client
        can retry on.
        """
        client = self.client
        try:
            client.shutdown(socket.SHUT_WR)
        except OSError:
            return
        t = self.timers.start(LINGER)  # bounds the whole wait
        try:
            while client.recv(RECV_SIZE):
                pass
        except OSError:  # socket.timeout included
            pass
        finally:
            t.stop()

    def shut_idle(self) -> None:
        """Called at the end of the drain window: a session waiting for a next
        request stops waiting, as if keepalive_timeout had run out (a request
        already there is still answered; see ``read_head``)."""
        if self.idle_waiting:
            get_hub().loop.run_callback(self._wake)

    def _wake(self) -> None:
        # In the hub, as a timer's expiry: the session may have got its
        # request since shut_idle, and then it is left alone.
        if self.idle_waiting and self.glet is not None:
            self.glet.throw(socket.timeout("drained"))

    def arrived(self) -> bool:
        """True when the client sent something (bytes or its FIN) not read yet."""
        client = self.client
        if not self.plain and client.pending():
            return True
        try:
            return bool(_select([client.fileno()], (), (), 0)[0])
        except (OSError, ValueError):
            return True  # let the read say what happened

    def _recv(self, seconds: float, idle: bool = False) -> bytes:
        """One read from the client, of up to RECV_SIZE bytes, within ``seconds``.

        ``idle``: nothing is expected to be there yet (the next request of a
        keep-alive connection), so wait before reading (net.sockio).
        Raises ``socket.timeout`` when nothing came in time, ``ClientGone``
        when the connection failed.
        """
        t = self.timers.start(seconds)
        try:
            if idle and self.plain:
                wait_readable(self.client)
                data = recv_ready(self.client, RECV_SIZE)
            else:
                data = self.client.recv(RECV_SIZE)
        except socket.timeout:
            raise
        except OSError:
            raise ClientGone() from None
        finally:
            t.stop()
        self.received += len(data)
        return data

    def _send(self, data) -> None:
        """All of ``data`` to the client within send_timeout, else ``ClientGone``."""
        try:
            _send_within(self.client, data, self.plain, self.timers, self.send_timeout)
        except OSError:  # socket.timeout included
            raise ClientGone() from None
        self.sent += len(data)

    def read_head(self):
        """The next request head as bytes, or None when the client is done.

        Waits up to keepalive_timeout for the first byte of a follow-up request
        (header_timeout for the first request), then header_timeout in total for
        the rest of the head.
        """
        rt = self.rt
        srv = rt.cfg.server
        buf = self.buf
        if not buf:
            wait = srv.keepalive_timeout if self.served else srv.header_timeout
            if rt.draining and self.served:
                # The last response still said keep-alive: take a request
                # already on its way, but only until the drain window ends.
                wait = min(wait, rt.drain_until - time.monotonic())
            self.idle_waiting = True  # Runtime._close_idle may wake it
            try:
                if wait <= 0:
                    raise socket.timeout()
                buf = self._recv(wait, idle=bool(self.served))
            except socket.timeout:
                # A request that came as the wait ran out is answered
                # (Connection: close when draining): dropping it would lose it.
                if not self.arrived():
                    return None
                buf = None
            finally:
                self.idle_waiting = False
            if buf is None:
                try:
                    buf = self._recv(srv.header_timeout)
                except socket.timeout:
                    return None
            if not buf:
                self.client_done = True
                return None
        deadline = None
        while True:
            if buf[:2] == b"\r\n":  # RFC 9112 2.2: ignore empty lines before a request line
                buf = buf.lstrip(b"\r\n")
                if not buf:
                    self.buf = b""
                    return self.read_head()
            end = buf.find(b"\r\n\r\n")  # find_head_end's answer when there is an end
            if end >= 0:
                end += 4
                break
            http1.find_head_end(buf)  # no end yet: raises on a bare CR or LF
            if len(buf) > srv.max_head_size:
                raise http1.ProtocolError(431, "request head too large")
            if deadline is None:  # header_timeout for the rest of the head, from its first bytes
                deadline = time.monotonic() + srv.header_timeout
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise http1.ProtocolError(408, "request head not received in time")
            try:
                data = self._recv(remaining)
            except socket.timeout:
                raise http1.ProtocolError(408, "request head not received in time") from None
            if not data:
                self.client_done = True
                return None
            buf += data
        if end > srv.max_head_size:
            raise http1.ProtocolError(431, "request head too large")
        self.buf = buf[end:]
        return buf[:end]

    # -- one request -----------------------------------------------------

    def serve_one(self) -> bool:
        """Serve one request; True when the connection may carry another.

        A request that was answered leaves its access-log line and, when it
        was refused or ended in a 5xx, one error-log line saying why
        (``logs.error_line``).  A bug answers 500 when nothing went out yet.
        """
        rt = self.rt
        start = time.time()
        rec = AccessRecord(self.peer, start)
        if self.tls_version is not None:
            rec.tls_version, rec.sni = self.tls_version, self.sni
        received, sent = self.received - len(self.buf), self.sent
        keep = False
        try:
            head = self.read_head()
            if head is None:
                return False
            self.head_size = len(head)
            start = rec.start = time.time()
            req = http1.parse_request_head(head, rt.limits)
            rec.method, rec.target, rec.version = req.method, req.target, req.version
            if rt.access_log.enabled:  # only the access log shows them
                rec.referer, rec.user_agent = req.get("referer"), req.get("user-agent")
            rec.request_id = rt.edge.request_id(req, self.peer)
            if rt.edge.trusted:  # the log's client is the real one, the proxy its peer
                rec.client = rt.edge.client(req, self.peer)
            # From here on every decision, the cache and the upstream head see
            # the canonical target; the logs keep the one received.
            req = canonical_request(req, *rt.canon)
            keep = self.proxy(req, rec)
            return keep
        except http1.ProtocolError as exc:
            self.refuse(rec, exc.status,
                        f"malformed request: {exc.reason}" if exc.status == 400 else exc.reason)
            return False
        except (ClientGone, Abort):
            raise
        except Exception as exc:  # a bug must cost one request, never the worker
            rt.log.exception("internal error on a request from %s", self.peer)
            if not rec.status:
                self.refuse(rec, 500, f"internal error: {exc!r}")
            return False
        finally:
            if self.spool is not None:
                self.spool.close()
                self.spool = None
            if rec.status:
                rec.request_time = time.time() - start
                # Bytes read past this request wait in self.buf for the next
                # one; once the connection closes, every byte read was this one's.
                rec.bytes_received = self.received - (len(self.buf) if keep else 0) - received
                rec.bytes_sent = self.sent - sent
                if rt.access_log.enabled:
                    rt.access_log.write(rec)
                if rec.status >= 400:  # error_line's first test, without the call
                    line = error_line(rec)
                    if line is not None:
                        rt.log.log(line[0], "%s", line[1])
                if rt.metrics is not None:
                    rt.metrics.request(rec)

    def refuse(self, rec: AccessRecord, status: int, why: str, *, fields=()) -> None:
        """Answer with forkproxy's own short error response and close.

        ``why`` says in words what made forkproxy answer so: the error log's
        reason (``logs.error_line``, written when the request ends).
        The body is the route's (else the server's) error page for the status,
        or the status line's text: never ``why`` (servers stay unnamed).
        ``fields``: extra header fields (Allow, Retry-After, Location).
        """
        rec.why = why
        if status >= 500 and self.cache_hook is not None and self.cache_hook.on_refuse(rec, status):
            return  # stale-if-error: a stored response went out instead
        rec.status = status
        reason = http1.reason_phrase(status)
        body, ctype = self.rt.edge.page(rec.route, status) or (
            f"{status} {reason}\n".encode(), "text/plain; charset=utf-8")
        extra = "".join(f"{n}: {v}\r\n" for n, v in fields)
        head = (f"HTTP/1.1 {status} {reason}\r\nDate: {CLOCK.date()}\r\n{extra}"
                f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                f"Connection: close\r\n\r\n").encode()
        try:
            self._send(head + (b"" if rec.method == "HEAD" else body))
        except ClientGone:
            pass

    def redirect_https(self, req: http1.Request, rec: AccessRecord, host: str, target: str) -> bool:
        """308 to the same URL over https (route redirect_https); True to keep the connection.

        The connection stays open only when the request had no body to skip.
        """
        location = https_location(self.rt, rec.route, host, target)
        framing = req.framing
        keep = (framing.kind == "none" or (framing.kind == "length" and not framing.length)) \
            and http1.wants_keep_alive(req.version, req.headers) and not self.rt.draining
        rec.status = 308
        head = (f"HTTP/1.1 308 Permanent Redirect\r\nDate: {CLOCK.date()}\r\n"
                f"Location: {location}\r\nContent-Length: 0\r\n"
                f"{self.rt.keep_alive_line if keep else 'Connection: close' + chr(13) + chr(10)}"
                "\r\n").encode()
        self._send(head)
        return keep

    def proxy(self, req: http1.Request, rec: AccessRecord) -> bool:
        rt = self.rt
        method = req.method
        host_value, host, path, upstream_target = request_target(req)
        rec.host = host
        route = rt.router.match(self.listener.name, host, path)
        if route is None:
            self.refuse(rec, 404, no_route_why(self.listener.name, host, path))
            return False
        rc = rt.routes[route.index]
        rec.route = route.index
        rec.pool = route.pool
        pool = rt.pools[route.pool]
        er = self.edge_req = rt.edge.request(rc.index, req, rec, self.peer, self.proto, host,
                                             upstream_target)
        if er.answer is not None:  # ACL, methods, deny, rate limit, redirect (net.edge)
            self.refuse(rec, er.answer.status, er.answer.why, fields=er.answer.fields)
            return False
        asked_target, upstream_target = upstream_target, er.target  # the cache keys the first
        if rc.redirect_https and self.proto == "http":
            return self.redirect_https(req, rec, host, upstream_target)
        self.hsts = rc.hsts if self.proto == "https" else None

        framing = req.framing
        max_body = body_limit(rt, rc, framing)
        has_body = framing.carries_body

        expect = req.expect
        if expect is not None:
            if expect.lower() != "100-continue":
                raise http1.ProtocolError(417, "unsupported expectation")
            if has_body and req.version == "1.1" and not self.buf:
                # nginx's way: the proxy asks for the body itself and strips
                # the expectation, so the upstream never waits on a 100.
                self._send(CONTINUE)
        if has_body and rc.request_buffering and _upgrade_asked(req) is None:
            self.spool = self.buffer_body(rc, framing, max_body)

        tokens = req.connection
        client_keepalive = http1.keep_alive(req.version, tokens)
        if rt.cache is not None and (rc.cache or method == "PURGE"):
            # A hit never goes upstream: the upstream head is built only when asked.
            return rt.cache.handle(self, req, rec, rc.cache, pool, host_value, upstream_target,
                                   framing, has_body, max_body, client_keepalive, asked_target)
        headers, out_host = self.upstream_fields(req, rc, er, host_value, tokens)
        return self.exchange(req, rec, pool, upstream_target, out_host, headers, framing,
                             has_body, max_body, client_keepalive)

    def upstream_head(self, req, rec, host_value) -> tuple[list, str | None]:
        """``upstream_fields`` of the request being served (route ``rec.route``)."""
        return self.upstream_fields(req, self.rt.routes[rec.route], self.edge_req, host_value,
                                    req.connection)

    def upstream_fields(self, req, rc, er, host_value, tokens) -> tuple[list, str | None]:
        """(fields, Host) of the head sent upstream for ``req``: hop-by-hop and
        rewritten fields out, forwarding fields, X-Request-Id and the route's
        request_headers in, the framing fields rebuilt (DESIGN section 4).

        Without request_headers (which may use per-request variables), the
        fields are a function of the request's fields and version, the peer,
        the scheme, the Host and the route, but for X-Request-Id: for a head
        of at most http1.REMEMBERED_HEAD_SIZE bytes, what is around it is
        remembered in the runtime's upstream_heads (at most CLIENT_HEADS,
        then forgotten at once).
        """
        if er.rules.req_rules is None and self.head_size <= http1.REMEMBERED_HEAD_SIZE:
            key = (tuple(req.headers), req.version, self.peer, self.proto, host_value, rc.index)
            memo = self.rt.upstream_heads
            got = memo.get(key)
            if got is None:
                got = _remember(memo, key, (tuple(self._forwarded(req, host_value, tokens)),
                                            tuple(self._framing_fields(req, rc)),
                                            rc.host_header or host_value))
            before, after, out_host = got
            headers = [*before, ("x-request-id", er.request_id), *after]
        else:
            # X-Request-Id, then request_headers
            headers, out_host = er.upstream(self._forwarded(req, host_value, tokens),
                                            rc.host_header or host_value)
            headers += self._framing_fields(req, rc)
        if self.spool is not None and req.framing.kind == "chunked":
            # The body was read whole: it goes with its length (as nginx does).
            headers = [f for f in headers if f[0] != "Transfer-Encoding"]
            headers.append(("Content-Length", str(self.spool.size)))
        return headers, out_host

    def _forwarded(self, req, host_value, tokens) -> list:
        # The client's X-Request-Id goes with the hop-by-hop fields
        # (REWRITTEN_REQUEST_FIELDS): upstream_fields adds forkproxy's.
        return hdr.forwarded_for_request(
            req.headers, client_addr=self.peer, proto=self.proto, host=host_value,
            trusted=self.rt.trusted_peer(self.peer),
            drop=hdr.hop_by_hop(req.headers, REWRITTEN_REQUEST_FIELDS, tokens),
            underscores=self.rt.cfg.server.underscores_in_headers)

    @staticmethod
    def _framing_fields(req, rc) -> list:
        framing = req.framing
        out = []
        if framing.kind == "length":
            out.append(("Content-Length", str(framing.length)))
        elif framing.kind == "chunked":
            out.append(("Transfer-Encoding", ", ".join(framing.codings + ("chunked",))))
        upgrade = _upgrade_asked(req, rc)
        if upgrade is not None:  # the one hop-by-hop pair that must cross (WebSocket)
            out += [("Connection", "upgrade"), ("Upgrade", upgrade)]
        return out

    def exchange(self, req, rec, pool: PoolRuntime, target, out_host, headers, framing,
                 has_body, max_body, client_keepalive) -> bool:
        """Pick a server, send the request, relay the response; fail over when allowed.

        The server a valid sticky cookie names comes first.  After a failed
        attempt (forkproxy.toml(5), retry):
        - a pooled connection found closed is retried once on a new
          connection to the same server (not counted as a try);
        - an attempt none of whose bytes were sent moves to another server;
        - a sent one moves only when the request is replayable (idempotent,
          no body: a POST is never sent twice), the failure is listed in
          ``retry.on``, and no byte of the response reached the client;
        - each server is tried at most once, at most ``retry.tries``
          attempts, none started after ``retry.timeout``; each attempt has
          its own connect, send and read time limits;
        - a failure counts as a passive failure of the server it happened
          on only (core.failover has the rules).
        When every server that could take the request is at max_conns, it
        waits in the pool's queue (503 when there is none, it is full, or
        the wait runs out).
        """
        rt = self.rt
        retry = pool.retry
        tried: set[int] = set()
        # A buffered body can be sent again (route request_buffering).
        replayable = (not has_body or self.spool is not None) and req.method in IDEMPOTENT
        last_error: UpstreamError | None = None
        fresh: int | None = None  # a server whose pooled connection turned out stale
        attempts = 0
        first_at = 0.0
        queue_deadline: float | None = None
        pinned, token = sticky_choice(pool, req) if pool.sticky is not None else (None, None)

        def may_try_again() -> bool:
            if retry.tries and attempts >= retry.tries:
                return False
            return not retry.timeout or time.monotonic() - first_at < retry.timeout

        while True:
            if fresh is not None:
                i, fresh = fresh, None
            else:
                if attempts and not may_try_again():
                    i = None
                elif pinned is not None:
                    i, pinned = pinned, None
                else:
                    i = pool.pick(req, self.peer, tried)
                    if i is None and pool.full(tried):
                        if queue_deadline is None:
                            wait = pool.cfg.queue.timeout if pool.cfg.queue is not None else 0.0
                            queue_deadline = time.monotonic() + wait
                        remaining = queue_deadline - time.monotonic()
                        if remaining > 0 and pool.wait_turn(remaining):
                            continue
                        self.refuse(rec, 503, f'every server of pool "{pool.name}" is at '
                                    "max_conns" + (" and the queue is full or the wait ran out"
                                                   if pool.cfg.queue is not None else ""))
                        return False
                if i is not None:
                    attempts += 1
                    if attempts == 1:
                        first_at = time.monotonic()
                    elif rt.metrics is not None:
                        rt.metrics.retry(pool.name)
            if i is None:
                if last_error is None:
                    self.refuse(rec, 503, no_server_why(pool.name))
                else:
                    self.refuse(rec, last_error.status, last_error.detail)
                return False
            server = pool.servers[i]
            rec.upstream = server.addr
            # Counted from the pick on: max_conns and least_conn must see a
            # request that is still connecting.
            pool.begin(i)
            try:
                try:
                    conn = (pool.conns[i].checkout(replayable) if i not in tried
                            else pool.conns[i].connect())
                except UpstreamError as exc:
                    rt.log.warning("request %s: route=%s pool=%s server=%s: %s", rec.request_id,
                                   rec.route, pool.name, server.addr, exc.detail)
                    pool.failed(i, time.time())
                    last_error = exc
                    tried.add(i)
                    continue
                host = out_host or server.addr
                head = http1.serialize_request_head(req.method, target, [("Host", host)] + headers)
                cookie = (("Set-Cookie", pool.set_cookie(i, self.tls_version is not None)),) if (
                    pool.sticky is not None and token != pool.sticky.token(i)) else ()

                if retry.on and replayable:
                    def retry_status(status: int, i=i) -> bool:
                        return (status in retry.on and may_try_again()
                                and pool.any_usable(tried | {i}))
                else:
                    retry_status = None

                try:
                    return self.relay(req, rec, pool, i, conn, head, framing, max_body,
                                      client_keepalive, time.time(), cookie, retry_status)
                except UpstreamError as exc:
                    conn.close()
                    last_error = exc
                    code = exc.code if exc.kind == "status" else None
                    if failover.charged(exc.kind, conn.reused, code in pool.cfg.fail_status):
                        pool.failed(i, time.time())  # this server's, never another's
                    step = failover.after_failure(
                        exc.kind, sent=exc.sent, reused=conn.reused, replayable=replayable,
                        listed=failover.condition(exc.kind, code) in retry.on)
                    if step == failover.STOP:
                        self.refuse(rec, exc.status, exc.detail)
                        return False
                    tried.add(i)
                    if step == failover.SAME:
                        fresh = i  # the server had closed the pooled connection
                    # Said only when another attempt follows: else the
                    # answer's own error line (serve_one) reports it.
                    if fresh is not None or (may_try_again() and (
                            pool.any_usable(tried) or pool.full(tried))):
                        rt.log.warning("request %s: route=%s pool=%s server=%s: %s (retrying)",
                                       rec.request_id, rec.route, pool.name, server.addr,
                                       exc.detail)
                except BaseException:
                    conn.close()
                    raise
            finally:
                pool.end(i)

    def relay(self, req, rec, pool, i, conn: UpstreamConn, head: bytes, framing, max_body,
              client_keepalive, t0, extra=(), retry_status=None) -> bool:
        """Send one request on ``conn`` and relay its response to the client.

        ``extra``: response fields to add (the sticky Set-Cookie).
        ``retry_status(status)``: True when a response with that status should
        be dropped for another attempt; it is asked only while nothing of the
        response went to the client, and then ``_StatusRetry`` is raised.
        """
        cfgp = pool.cfg
        # 1. the request
        try:
            if self.spool is not None:
                self.send_spooled(conn, head)
            elif framing.kind == "length" and framing.length:
                self.send_length_body(conn, head, framing.length)
            elif framing.kind == "chunked":
                self.send_chunked_body(conn, head, max_body)
            else:
                self._up_send(conn, head, sent=False)
        except _UpstreamSendError as exc:
            raise UpstreamError("reset", f"sending to {conn.server.addr}: {exc}",
                                sent=exc.sent) from None
        except socket.timeout:
            raise UpstreamError("timeout", f"sending to {conn.server.addr} timed out",
                                sent=True) from None
        # 2. the response head (1xx interim responses forwarded to 1.1 clients)
        interim = False
        while True:
            resp, body_start = self.read_response_head(conn)
            if 100 <= resp.status < 200:
                if resp.status == 101:
                    if _upgrade_asked(req, self.rt.routes[rec.route]) is not None:
                        return self.tunnel(rec, conn, resp, body_start, t0, extra)
                    raise UpstreamError("invalid", f"{conn.server.addr} switched protocols "
                                        "without being asked", sent=True)
                interim = interim or req.version == "1.1"
                if req.version == "1.1":
                    self._send(http1.serialize_response_head(
                        resp.status, resp.reason, hdr.response_headers_for_client(resp.headers)))
                conn.buf = body_start
                continue
            break
        rec.upstream_status = resp.status
        if resp.status in cfgp.fail_status:
            pool.failed(i, time.time())
        if retry_status is not None and not interim and retry_status(resp.status):
            raise _StatusRetry(resp.status, f"upstream {conn.server.addr} answered {resp.status}")
        # 3. the response to the client
        keep = client_keepalive and not self.rt.draining
        er = self.edge_req
        self.cache_tee = tee = None
        if self.cache_hook is None and not extra and (er is None or er.rules.resp_rules is None) \
                and (rec.route is None or self.rt.routes[rec.route].compress is None) \
                and self.resp_head_size <= http1.REMEMBERED_HEAD_SIZE:
            # No cache hook, sticky cookie, per-request variables or
            # Accept-Encoding: the body's framing and the client's head are a
            # function of these (Date: the clock's, for an origin without).
            key = (resp.status, resp.reason, resp.version, tuple(resp.headers), req.method,
                   req.version, keep, er.rules if er is not None else None,
                   er.host_value if er is not None else None, self.proto, conn.server.addr,
                   self.hsts, CLOCK.date())
            got = self.rt.client_heads.get(key)
        else:
            key = got = None
        if got is None:
            try:
                rframing = http1.response_body_framing(req.method, resp)
            except http1.ProtocolError as exc:
                raise UpstreamError("invalid", f"{conn.server.addr}: invalid response: "
                                    f"{exc.reason}", sent=True) from None
            if self.cache_hook is not None:
                tee = self.cache_hook.on_response(resp, rframing)
                if tee.served:  # a 304 merged, or stale-if-error: the cache answered
                    conn.close()
                    return tee.keep
                self.cache_tee = tee
            got = self._client_head(req, rec, resp, rframing, conn, extra, tee, keep) + (rframing,)
            if key is not None:
                _remember(self.rt.client_heads, key, got)
        client_head, keep, chunk_out, encoder, up_keepalive, rframing = got
        rec.status = resp.status
        if resp.status >= 500:  # relayed as it came: the error log names who answered it
            rec.why = f"upstream {conn.server.addr} answered {resp.status}"

        if rframing.kind == "none":
            self._send(client_head)
            conn.buf = body_start
        elif rframing.kind == "length" and encoder is None:
            self.relay_length(conn, client_head, body_start, rframing.length)
        else:
            up_keepalive = self.relay_decoded(conn, client_head, body_start, rframing,
                                              chunk_out, encoder) and up_keepalive
        rec.upstream_time = time.time() - t0
        if tee is not None:
            tee.commit()  # bodiless responses (HEAD, 304): committed here; no-op otherwise
        if up_keepalive and rframing.kind != "close":
            pool.conns[i].checkin(conn)
        else:
            conn.close()
        return keep

    def _client_head(self, req, rec, resp, rframing, conn, extra, tee, keep) -> tuple:
        """(head bytes, keep, chunked, encoder or None, upstream keep-alive) of the
        response ``relay`` sends the client for ``resp``."""
        tokens = http1.connection_tokens(resp.headers)
        out = hdr.response_headers_for_client(
            resp.headers, also=REWRITTEN_RESPONSE_FIELDS if rframing.kind != "none" else frozenset(),
            tokens=tokens)
        if self.edge_req is not None:  # hide_headers, rewrite_location, response_headers
            out = self.edge_req.downstream(out, conn.server.addr)
        if resp.get("date") is None:  # RFC 9110 6.6.1: an origin without a clock
            out.append(("Date", CLOCK.date()))
        if self.hsts is not None:
            out.append(("Strict-Transport-Security", self.hsts))
        out.extend(extra)
        if tee is not None:
            out.extend(tee.headers)
        out, encoder = self.encoder_for(req, rec, resp.status, resp.headers, out,
                                        rframing.length if rframing.kind == "length" else None,
                                        rframing.codings)
        keep, chunk_out = framing_fields_out(out, req.version, keep, encoder, rframing.kind,
                                             rframing.length, rframing.codings,
                                             self.rt.keep_alive)
        return (http1.serialize_response_head(resp.status, resp.reason, out), keep, chunk_out,
                encoder, http1.keep_alive(resp.version, tokens))

    # -- request bodies ----------------------------------------------------

    def _client_body_read(self) -> bytes:
        try:
            data = self._recv(self.edge_req.body_timeout if self.edge_req is not None
                              else self.rt.cfg.server.body_timeout)
        except socket.timeout:
            raise ClientGone() from None
        if not data:
            raise ClientGone()
        return data

    def buffer_body(self, rc, framing, max_body: int) -> Spool:
        """The request's whole body, read before a server is chosen (route
        request_buffering): in memory up to request_buffer_memory, then in a
        file (net.spool).

        Raises ``ProtocolError``: 408 when it has not all come within the
        route's request_buffer_timeout, or nothing came for body_timeout;
        413 for a chunked body over ``max_body``; 400 for bad chunks; 500
        when it cannot be stored.  Bytes past the body stay in ``self.buf``.
        """
        spool = Spool(rc.request_buffer_memory, self.rt.body_dir)
        deadline = time.monotonic() + rc.request_buffer_timeout
        data, self.buf = self.buf, b""
        try:
            if framing.kind == "length":
                remaining = framing.length
                while len(data) < remaining:
                    spool.write(data)
                    remaining -= len(data)
                    data = self._buffered_read(rc, deadline)
                spool.write(data[:remaining])
                self.buf = data[remaining:]
                return spool
            decoder = http1.make_decoder(http1.CHUNKED, status=400, limits=self.rt.limits)
            while True:
                if data:
                    pieces, leftover = decoder.feed(data)
                    for piece in pieces:
                        if piece:
                            spool.write(piece)
                    if max_body and spool.size > max_body:
                        raise http1.ProtocolError(413, f"chunked body over the limit {max_body}")
                    if decoder.done:
                        self.buf = leftover
                        return spool
                data = self._buffered_read(rc, deadline)
        except OSError as exc:  # the file of a large body (not socket errors: ClientGone)
            spool.close()
            raise http1.ProtocolError(500, f"cannot store the request body in "
                                      f"{self.rt.body_dir}: {exc}") from None
        except BaseException:
            spool.close()
            raise

    def _buffered_read(self, rc, deadline: float) -> bytes:
        idle = self.edge_req.body_timeout if self.edge_req is not None \
            else self.rt.cfg.server.body_timeout
        left = deadline - time.monotonic()
        try:
            if left <= 0:
                raise socket.timeout()
            data = self._recv(idle if idle < left else left)
        except socket.timeout:
            if time.monotonic() < deadline:
                why = f"nothing of the request body for body_timeout ({idle:g}s)"
            else:
                why = f"request body not received within request_buffer_timeout " \
                      f"({rc.request_buffer_timeout:g}s)"
            raise http1.ProtocolError(408, why) from None
        if not data:
            raise ClientGone()
        return data

    def send_spooled(self, conn: UpstreamConn, head: bytes) -> None:
        """The head and the buffered body (``buffer_body``) to the server."""
        sent = False
        for piece in self.spool.pieces(head):
            self._up_send(conn, piece, sent=sent)
            sent = True

    def send_length_body(self, conn: UpstreamConn, head: bytes, length: int) -> None:
        buf = self.buf
        first = buf[:length]
        remaining = length - len(first)
        self._up_send(conn, head + first, sent=False)
        self.buf = buf[length:]  # only now: a failed first send is retried with them
        while remaining:
            data = self._client_body_read()
            if len(data) > remaining:
                self.buf = data[remaining:]
                data = data[:remaining]
            remaining -= len(data)
            self._up_send(conn, data, sent=True)

    def send_chunked_body(self, conn: UpstreamConn, head: bytes, max_body: int) -> None:
        decoder = http1.make_decoder(http1.CHUNKED, status=400,
                                     limits=self.rt.limits)
        self._up_send(conn, head, sent=False)  # first: a failed one is retried with self.buf intact
        data, self.buf = self.buf, b""
        total = 0
        while True:
            if data:
                pieces, leftover = decoder.feed(data)
                out = []
                for piece in pieces:
                    if piece:
                        total += len(piece)
                        out.append(http1.encode_chunk(piece))
                if max_body and total > max_body:
                    raise http1.ProtocolError(413, f"chunked body over the limit {max_body}")
                if decoder.done:
                    self.buf = leftover
                    out.append(http1.encode_last_chunk())
                if out:
                    self._up_send(conn, b"".join(out), sent=True)
                if decoder.done:
                    return
            data = self._client_body_read()

    # -- responses ---------------------------------------------------------

    def read_response_head(self, conn: UpstreamConn):
        """(response, bytes past its head) of the request just sent on ``conn``.

        The whole head must come within the pool's read_timeout of this call
        (this attempt's own deadline: a server dripping bytes cannot hold a
        request longer).  Raises ``UpstreamError``.
        """
        buf = conn.buf
        conn.buf = b""
        # The request has just gone out: the answer cannot be there yet.
        wait = not buf and conn.plain
        limit = self.rt.cfg.server.max_head_size
        got_any = bool(buf)
        seconds = conn.read_timeout
        deadline = None
        while True:
            try:
                end = http1.find_head_end(buf) if buf else -1
            except http1.ProtocolError as exc:  # a bare CR or LF: the server's fault, not the client's
                raise UpstreamError("invalid", f"{conn.server.addr}: invalid response: {exc.reason}",
                                    sent=True) from None
            if end >= 0:
                break
            if len(buf) > limit:
                raise UpstreamError("invalid", f"{conn.server.addr}: response head too large",
                                    sent=True)
            if deadline is None:  # the first read: the configured duration, a reused timer
                deadline = time.monotonic() + seconds
            else:
                seconds = max(deadline - time.monotonic(), 0.0)  # 0: expires at once
            t = self.timers.start(seconds)
            try:
                if wait:
                    wait = False
                    wait_readable(conn.sock)
                    data = recv_ready(conn.sock, RECV_SIZE)
                else:
                    data = conn.sock.recv(RECV_SIZE)
            except socket.timeout:
                raise UpstreamError("timeout", f"upstream {conn.server.addr} did not answer in "
                                    f"time ({conn.read_timeout:g}s reading the response head)",
                                    sent=True) from None
            except OSError as exc:
                raise UpstreamError("reset" if not got_any else "invalid",
                                    f"{conn.server.addr}: {exc.strerror or exc} before a response",
                                    sent=True) from None
            finally:
                t.stop()
            if not data:
                raise UpstreamError("closed", f"{conn.server.addr} closed the connection "
                                    "without a response", sent=True)
            got_any = True
            buf += data
        self.resp_head_size = end
        try:
            resp = http1.parse_response_head(buf[:end], self.rt.limits)
        except http1.ProtocolError as exc:
            raise UpstreamError("invalid", f"{conn.server.addr}: invalid response: {exc.reason}",
                                sent=True) from None
        return resp, buf[end:]

    def _up_send(self, conn: UpstreamConn, data, *, sent: bool) -> None:
        """All of ``data`` to the server within its send_timeout.

        Raises ``socket.timeout``, or ``_UpstreamSendError`` saying whether
        earlier bytes of the request had been sent.
        """
        try:
            _send_within(conn.sock, data, conn.plain, self.timers, conn.send_timeout)
        except socket.timeout:
            raise
        except OSError as exc:
            raise _UpstreamSendError(exc.strerror or str(exc), sent) from None

    def _up_recv(self, conn: UpstreamConn) -> bytes:
        t = self.timers.start(conn.read_timeout)
        try:
            return conn.sock.recv(RECV_SIZE)
        except socket.timeout:
            self.rt.log.error("%s timed out in the middle of a response body; dropping the "
                              "client", conn.server.addr)
            raise Abort() from None
        except OSError as exc:
            if exc.errno not in (errno.ECONNRESET, errno.EPIPE):
                self.rt.log.error("%s: %s in the middle of a response body", conn.server.addr,
                                  exc)
            raise Abort() from None
        finally:
            t.stop()

    def relay_length(self, conn: UpstreamConn, head: bytes, data: bytes, length: int) -> None:
        if len(data) > length:
            conn.buf = data[length:]  # garbage past the body: never reuse this connection
            data = data[:length]
        remaining = length - len(data)
        tee = self.cache_tee
        if tee is not None and data:
            tee.write(data)
            if not remaining:
                tee.commit()  # before the last byte goes out: the client's next request hits
        self._send(head + data)
        while remaining:
            data = self._up_recv(conn)
            if not data:
                self.rt.log.error("%s closed the connection %d bytes short of the response "
                                  "body; dropping the client", conn.server.addr, remaining)
                raise Abort()
            if len(data) > remaining:
                conn.buf = data[remaining:]
                data = data[:remaining]
            remaining -= len(data)
            if tee is not None:
                tee.write(data)
                if not remaining:
                    tee.commit()  # before the last byte goes out: the client's next request hits
            self._send(data)

    def relay_decoded(self, conn: UpstreamConn, head: bytes, data: bytes, framing,
                      chunk_out: bool, encoder=None) -> bool:
        """Relay a chunked or close-delimited body; True when it ended cleanly framed.

        With an ``encoder`` (net.compress) any body, length-framed too, goes
        through it: it is the last step before the client, so what comes
        before it (``piece``) is the origin's representation.  Each read from
        the upstream is flushed on to the client as it came.
        """
        decoder = http1.make_decoder(framing, status=502, limits=self.rt.limits)
        pending = [head]
        tee = self.cache_tee
        while True:
            if data:
                try:
                    pieces, leftover = decoder.feed(data)
                except http1.ProtocolError as exc:
                    self.rt.log.error("%s sent a badly framed body (%s); dropping the client",
                                      conn.server.addr, exc.reason)
                    raise Abort() from None
                for piece in pieces:
                    if piece:
                        if tee is not None:
                            tee.write(piece)  # the origin's bytes, before any encoding
                        if encoder is not None:
                            piece = encoder.feed(piece)
                        pending.append(http1.encode_chunk(piece) if chunk_out else piece)
                if decoder.done:
                    conn.buf = leftover
                    if tee is not None:
                        tee.commit()  # before the end goes out: the client's next request hits
                    if encoder is not None:
                        self._encoder_end(encoder.finish(), pending, chunk_out)
                    if chunk_out:
                        pending.append(http1.encode_last_chunk())
                    self._send(b"".join(pending))
                    return True
                if encoder is not None:
                    self._encoder_end(encoder.flush(), pending, chunk_out)
                if pending:
                    self._send(b"".join(pending))
                    pending = []
            data = self._up_recv(conn)
            if not data:
                try:
                    decoder.eof()
                except http1.IncompleteBody:
                    self.rt.log.error("%s closed the connection in the middle of a chunked "
                                      "body; dropping the client", conn.server.addr)
                    raise Abort() from None
                if tee is not None:
                    tee.commit()
                if encoder is not None:
                    self._encoder_end(encoder.finish(), pending, chunk_out)
                if chunk_out:
                    pending.append(http1.encode_last_chunk())
                self._send(b"".join(pending))
                return False

    def encoder_for(self, req, rec: AccessRecord, status: int, origin_headers, out: list,
                    length: int | None, codings=()):
        """(client headers, encoder or None): the route's ``compress`` applied to one response.

        The hook for every path that sends a response body (relay, cache
        hits): call it last, on the headers about to go out (``out``); the
        decision reads ``origin_headers`` (the stored or upstream ones).
        With an encoder, the headers lost their Content-Length: frame the
        body chunked (or until close), pass every piece through
        ``encoder.feed`` and end with ``encoder.finish()``.
        """
        cz = self.rt.routes[rec.route].compress if rec.route is not None else None
        if cz is None or not encoding.eligible(req.method, status, origin_headers,
                                               types=cz.types, min_size=cz.min_size,
                                               length=length, transfer_codings=codings):
            return out, None
        return _compressed(out, req, cz)

    @staticmethod
    def _encoder_end(data: bytes, pending: list, chunk_out: bool) -> None:
        if data:
            pending.append(http1.encode_chunk(data) if chunk_out else data)

    def tunnel(self, rec: AccessRecord, conn: UpstreamConn, resp, early: bytes, t0,
               extra=()) -> bool:
        """A 101 to a request that asked for it: relay bytes both ways until both end.

        The tunnel counts as a request in flight to its server (least_conn,
        max_conns) for its whole life; it ends when either side closes or
        resets, or after the route's tunnel_timeout without a byte either way.
        A draining worker lets it run (up to graceful_timeout).  Bytes that
        already came past the heads on either side (``early`` from the server,
        ``self.buf`` from the client) go first.  Returns False: the client
        connection is done.
        """
        rt = self.rt
        rc = rt.routes[rec.route]
        out = hdr.response_headers_for_client(resp.headers)
        upgrade = resp.get("upgrade")
        out.append(("Connection", "upgrade"))
        if upgrade is not None:
            out.append(("Upgrade", upgrade))
        out.extend(extra)
        rec.status = rec.upstream_status = 101
        self._send(http1.serialize_response_head(101, resp.reason, out) + early)
        rec.upstream_time = time.time() - t0
        up = conn.sock
        try:
            if self.buf:
                up.settimeout(rt.pools[rec.pool].cfg.send_timeout)
                _sendall(up, self.buf)
                self.buf = b""
            timeout = rc.tunnel_timeout if rc.tunnel_timeout is not None \
                else rt.cfg.server.tunnel_timeout
            tunnel.Relay(self.client, up, timeout,
                         tls_client=hasattr(self.client, "unwrap")).run()
        except OSError:  # the server went away before the early bytes reached it
            pass
        finally:
            conn.close()
        return False


def no_route_why(listener: str, host: str | None, path: str) -> str:
    """The 404's reason when no route matches (the error log, ``explain``)."""
    return f'no route for host "{host or ""}" path "{path}" on listener "{listener}"'


def no_server_why(pool: str) -> str:
    """The 503's reason when no server of ``pool`` is a candidate (the error log, ``explain``)."""
    return f'no server up in pool "{pool}"'


def canonical_request(req, merge_slashes: bool = True, encoded_slashes: str = "reject"):
    """``req`` with the path of its target canonical (``core.canon``), query as received.

    ``req`` itself when its path already is (the common case: no copy).
    Absolute-form targets keep their scheme and authority.  A path no rule
    can judge raises ``ProtocolError(400)`` with canon's reason.  The
    request path and ``forkproxyctl explain`` both call it, first thing.
    """
    target = req.target
    if "%" not in target and "/." not in target and "//" not in target and "\\" not in target:
        return req  # the hot path: nothing canon could change, in the path or the query
    if target[0] == "/":
        start = 0
    elif target[:7].lower() == "http://" or target[:8].lower() == "https://":
        i = target.index("://") + 3
        start, q = target.find("/", i), target.find("?", i)
        if start < 0 or 0 <= q < start:  # no path: request_target sends "/"
            return req
    else:  # asterisk-form, authority-form
        return req
    q = target.find("?", start)
    path = target[start:] if q < 0 else target[start:q]
    try:
        canon = canonical_path(path, merge_slashes, encoded_slashes)
    except PathRefused as exc:
        raise http1.ProtocolError(exc.status, exc.reason) from None
    if canon is path:
        return req
    return req._replace(target=target[:start] + canon + ("" if q < 0 else target[q:]))


def request_target(req) -> tuple[str | None, str | None, str, str]:
    """(Host value, host, path, target to send upstream) of a request, by its target's form.

    origin-form as it is; absolute-form gives its authority as the host
    (RFC 9112 3.2.2) and its path; ``OPTIONS *`` passes.  Raises
    ``ProtocolError``: 501 for CONNECT, 400 for any other target.  The
    request path and ``forkproxyctl explain`` both call it.
    """
    target = req.target
    if target.startswith("/"):
        return req.host_value, req.host, target.partition("?")[0], target
    if target[:7].lower() == "http://" or target[:8].lower() == "https://":
        authority, slash, rest = target.split("://", 1)[1].partition("/")
        upstream_target = slash + rest if slash else "/"
        return (authority, hdr.split_host(authority)[0], upstream_target.partition("?")[0],
                upstream_target)
    if target == "*" and req.method == "OPTIONS":
        return req.host_value, req.host, "*", "*"
    if req.method == "CONNECT":
        raise http1.ProtocolError(501, "CONNECT is not supported by a reverse proxy")
    raise http1.ProtocolError(400, "invalid request target")


def framing_fields_out(out: list, version: str, keep: bool, encoder, kind: str,
                       length: int | None = None, codings: tuple = (),
                       keep_alive=None) -> tuple[bool, bool]:
    """Append to ``out`` the fields that frame a response body for a client
    (``kind``: the body's framing as it comes, "none", "length", "chunked" or
    "close") and its Connection field; (keep-alive, chunked) come back.
    ``keep_alive``: the Keep-Alive field a kept connection gets
    (``Runtime.keep_alive``).

    Relayed responses and cache hits both go out through here.
    """
    chunk_out = False
    if encoder is not None:
        # Length unknown until the end: chunked (1.1) or until close (1.0).
        if version == "1.1":
            out.append(("Transfer-Encoding", "chunked"))
            chunk_out = True
        else:
            keep = False
    elif kind == "length":
        out.append(("Content-Length", str(length)))
    elif kind in ("chunked", "close"):
        if version == "1.1":
            out.append(("Transfer-Encoding", ", ".join(codings + ("chunked",))))
            chunk_out = True
        else:
            keep = False
    if not keep:
        out.append(("Connection", "close"))
    else:
        if version == "1.0":
            out.append(("Connection", "keep-alive"))
        if keep_alive is not None:
            out.append(keep_alive)
    return keep, chunk_out


def _remember(memo: dict, key, value):
    """``memo[key] = value``, forgetting everything first once CLIENT_HEADS are kept."""
    if len(memo) >= CLIENT_HEADS:
        memo.clear()
    memo[key] = value
    return value


def body_limit(rt: Runtime, rc, framing) -> int:
    """The route's max_body_size (else the server's; 0: none); raises a 413
    ``ProtocolError`` when a declared Content-Length is over it."""
    max_body = rc.max_body_size if rc.max_body_size is not None else rt.cfg.server.max_body_size
    if framing.kind == "length" and max_body and framing.length > max_body:
        raise http1.ProtocolError(413, f"body of {framing.length} bytes over the limit {max_body}")
    return max_body


def https_location(rt: Runtime, route: int, host: str, target: str) -> str:
    """Where a ``redirect_https`` route sends a request for ``host`` + ``target``."""
    port = rt.https_port.get(route, 443)
    if ":" in host:  # an IPv6 literal
        host = f"[{host.strip('[]')}]"
    return f"https://{host}{'' if port == 443 else f':{port}'}{target if target != '*' else '/'}"


def sticky_choice(pool: PoolRuntime, req) -> tuple[int | None, str | None]:
    """(server the request's sticky cookie pins it to, or None; the cookie's token).

    A server in drain keeps its sticky requests but takes no new tunnel
    (WebSocket).  Read-only: ``forkproxyctl explain`` asks it too.
    """
    pinned, token = pool.sticky_server(req)
    if pinned is not None and not pool.usable(pinned) and _upgrade_asked(req) is not None:
        pinned = None
    return pinned, token


def _upgrade_asked(req, rc=None) -> str | None:
    """The Upgrade value of a request that asks to switch protocols, else None.

    Only HTTP/1.1 requests can (RFC 9110 7.8), and only with ``upgrade`` in
    their Connection field. With the route ``rc``, only the protocols its
    ``upgrade`` list allows (``core.headers.allowed_upgrade``): None when
    there is none, and the request goes upstream as a plain one.
    """
    if req.version != "1.1":
        return None
    value = req.upgrade
    if value is None or "upgrade" not in req.connection:
        return None
    return value if rc is None else hdr.allowed_upgrade(value, rc.upgrade)


def _compressed(out: list, req, cz):
    """(client headers, encoder or None) for an eligible response (core.encoding).

    Vary is added whatever the client accepts; when it accepts a coding we
    have, the headers describe the compressed representation: its coding, a
    weak ETag, no Content-Length (the caller frames it), no Accept-Ranges
    (ranges of the original bytes would not fit it).
    """
    out = encoding.add_vary(out)
    coding = encoding.choose(req.get_all("accept-encoding"), compress.AVAILABLE)
    if coding is None:
        return out, None
    out = [(n, encoding.weaken_etag(v) if n == "etag" else v) for n, v in out
           if n not in ("content-length", "accept-ranges")]
    out.append(("Content-Encoding", coding))
    return out, compress.new(coding, cz.level)


class _StatusRetry(UpstreamError):
    """A response whose status ``retry.on`` lists, dropped for another attempt."""

    def __init__(self, code: int, detail: str):
        super().__init__("status", detail, sent=True)
        self.code = code

    @property
    def status(self) -> int:
        return self.code


class _UpstreamSendError(Exception):
    def __init__(self, detail: str, sent: bool):
        super().__init__(detail)
        self.sent = sent


def _sendall(sock, data) -> None:
    """sendall, with the common case (everything fits the socket buffer) in one call.

    gevent's sendall costs three Python frames and timeout bookkeeping per
    call; a single send() nearly always takes a whole small response.
    """
    sent = sock.send(data)
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])


def _send_within(sock, data, plain: bool, timers: Timers, seconds: float) -> None:
    """All of ``data`` to ``sock``; ``socket.timeout`` if it takes over ``seconds``.

    A plain socket takes what fits at once without a timer (net.sockio); a
    timer bounds only the wait for the rest.
    """
    if plain:
        sent = send_now(sock, data)
        if sent == len(data):
            return
        data = memoryview(data)[sent:]
    t = timers.start(seconds)
    try:
        _sendall(sock, data)
    finally:
        t.stop()


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
