"""The connection loop: one client connection, its requests one after the other.

``net.listener.Runtime.handle`` runs a ``Session`` for every accepted HTTP
connection; it serves requests on that connection until either side closes
it, a timeout expires, or the worker drains.  For each request it reads and
parses the head, makes the request's ``Transaction`` (``net.transaction``),
runs the request stages on it (``net.stages``: admission, routing, edge
rules, redirects, body, cache lookup, balancing, forwarding) and writes its
log lines (``log``).

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

import select
import socket
import time

from gevent import Greenlet, get_hub, getcurrent
from gevent.monkey import get_original

from forkproxy.config import ListenerConfig
from forkproxy.core import http1
from forkproxy.core import headers as hdr
from forkproxy.logs import AccessRecord, error_line
from forkproxy.net import request_body, response, stages
from forkproxy.net.upstream_http import upgrade_asked
from forkproxy.net.relay import Abort, ClientGone
from forkproxy.net.request_path import https_location
from forkproxy.net.transaction import Transaction
from forkproxy.net.sockio import Timers, is_plain, recv_ready, send_within, wait_readable
from forkproxy.net.upstream import RECV_SIZE

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# How long (at most) a connection forkproxy closes is read and discarded
# after its FIN, until the client's own: a request the client sent as the
# connection was being closed then meets a FIN, not a reset (lingering close).
LINGER = 2.0
# A poll of 0 s, without gevent's hub; poll, not select: select refuses a
# descriptor past 1023, and a worker holds thousands.
_poll = get_original("select", "poll")
# A keep-alive connection idle this long between requests gives up its
# greenlet (``Session.park``): a greenlet that waits holds some 7 KiB (the C
# stack it saved when it switched out, its first page of Python frames); a
# parked connection holds a read watcher and a timer.  Short enough that
# idle connections cost little, long enough that a busy one never parks.
PARK_AFTER = 1.0


class HandedOff(Exception):
    """The connection went to a worker of the newest generation (net.handoff)."""


def _readable(fd: int) -> bool:
    """Bytes, EOF or an error to read on ``fd`` now (a poll of 0 s)."""
    try:
        p = _poll()
        p.register(fd, select.POLLIN)
        return bool(p.poll(0))
    except (OSError, ValueError):
        return True  # let the read say what happened


class Parked(Exception):
    """The session parked (``Session.park``): its greenlet ends, its connection stays."""


class HandOffNow(socket.timeout):
    """Thrown into an idle session when its worker starts to drain
    (``Runtime.drain``): stop waiting here and hand the connection off."""


class Session:
    """Serve requests on one client connection until it ends."""

    proto = "http"  # "https" when the connection came over TLS (set by Runtime)
    live = True  # the request stages act (net.explain's DryRun only reports)
    mirrored = True  # a route's mirror may copy its requests (net.mirror)
    tls_version = sni = None  # a TLS connection's protocol and SNI name (set by Runtime)
    kept = False  # the newest generation refused it (net.handoff): it drains here
    http_version = None  # the access log's protocol when not the request line's (HTTP/2)
    protocol_index = 0  # requests_total's protocol label: core.metrics.PROTOCOLS index (http1)
    on_end = None  # called once when the connection ends (Runtime: its ticket and count)
    parked = None  # (descriptor, family, watcher, timer, greenlet) while parked
    woke = None  # why a parked session was resumed: "data", "expired" or "drain"
    idle_until = 0.0  # while parked: when keepalive_timeout runs out (monotonic)
    # Nothing of one request lives here: see net.transaction.

    def __init__(self, rt, listener: ListenerConfig, client: socket.socket, addr, served=0):
        """``served``: requests this connection carried before (a connection
        handed over by a draining worker, net.handoff)."""
        self.rt = rt
        self.listener = listener
        self.client = client
        self.peer = addr[0] if isinstance(addr, tuple) else "unix"
        self.buf = b""
        self.served = served
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

        True when the session parked (``park``): the connection lives on
        without this greenlet and the caller leaves it open; ``on_end`` is
        called when it really ends.
        """
        self.glet = getcurrent()
        if self.woke is None:  # a new connection, not a parked one resumed
            self.rt.sessions.add(self)
            try:
                self.client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.client.settimeout(None)
            except OSError:
                pass
        parked = False
        try:
            while self.serve_one():
                self.served += 1
            if not self.client_done:
                self.linger()
        except Parked:
            parked = True
        except (ClientGone, Abort, HandedOff):
            pass  # handed off: another process holds it now, so no shutdown here
        except Exception:  # a bug must cost one connection, never the worker
            self.rt.log.exception("internal error on a connection from %s", self.peer)
        finally:
            if not parked:
                self._end()
        return parked

    def _end(self) -> None:
        self.rt.sessions.discard(self)
        self.timers.close()
        try:
            self.client.close()
        except OSError:
            pass
        end, self.on_end = self.on_end, None
        if end is not None:
            end()

    def park(self, seconds: float) -> None:
        """Let this greenlet end and hold the idle connection with a read
        watcher and a timer of ``seconds`` (what is left of keepalive_timeout)
        until ``resume``.

        The greenlet that will resume it is made now, unstarted, and takes
        this one's place in the group it runs in (the listener's
        ``worker_connections`` pool, the handoff's group): a parked
        connection counts as an open one, and a drain waits for it.  The
        socket object is detached: whoever started this greenlet closes it
        when the greenlet ends, and that must not close the connection."""
        me, glet = getcurrent(), Greenlet(self.run)
        loop = get_hub().loop
        family = self.client.family
        self.timers.close()  # made again when it resumes
        fd = self.client.detach()
        # The socket object goes too (resume makes another), and so does this
        # greenlet, which holds it (gevent's server closes it when we return).
        self.client = self.glet = None
        watcher, timer = loop.io(fd, 1), loop.timer(seconds)
        self.parked = (fd, family, watcher, timer, glet)
        self.idle_until = time.monotonic() + seconds
        watcher.start(self.resume, "data")
        timer.start(self.resume, "expired")
        if self.rt.metrics is not None:
            self.rt.metrics.parked(1)
        group = next((g for g in self.rt.groups if me in g), None)
        if group is not None:
            group.discard(me)  # frees this greenlet's slot of a Pool ...
            group.add(glet)    # ... which the new one takes: nothing ran between, no wait

    def resume(self, why: str) -> None:
        """Start a parked session's greenlet again (``why``: "data", bytes
        came; "expired", keepalive_timeout ran out; "drain", the worker
        drains).  Called from the hub (the watcher's or the timer's
        callback) or by the drain; nothing when it is not parked."""
        if self.parked is None:
            return
        fd, family, watcher, timer, glet = self.parked
        if why == "data" and not _readable(fd):
            return  # libev may wake a new watcher of a descriptor for nothing: stay parked
        self.parked = None
        watcher.close()
        timer.close()
        self.client = socket.socket(family, socket.SOCK_STREAM, 0, fd)
        self.woke = why
        if self.rt.metrics is not None:
            self.rt.metrics.parked(-1)
        glet.start()

    def linger(self) -> None:
        """The close of a connection the client may still be writing to (nginx's
        lingering close): close_notify (TLS) and FIN first, then read and
        discard until the client's FIN, for at most LINGER seconds.

        Closing a socket with unread bytes, or receiving bytes after the close,
        makes the kernel answer with a reset, which can destroy the last
        response before the client read it and turns a request that crossed
        the close into "connection reset" instead of a clean end the client
        can retry on.
        """
        client = self.client
        t = self.timers.start(LINGER)  # bounds the whole wait
        try:
            if not self.plain:
                # TLS: close_notify first (RFC 8446 6.1), so that a client
                # reading to the end can tell our close from a cut.  unwrap
                # also waits for the client's own close_notify (or its FIN).
                try:
                    client.unwrap()
                except socket.timeout:
                    raise
                except (OSError, ValueError):
                    pass  # the client's FIN, or bytes after our close_notify: drain them raw
            client.shutdown(socket.SHUT_WR)
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
        if self.parked is not None:
            self.resume("expired")
        elif self.idle_waiting:
            get_hub().loop.run_callback(self._wake)

    def _wake(self, exc=socket.timeout("drained")) -> None:
        # In the hub, as a timer's expiry: the session may have got its
        # request since shut_idle, and then it is left alone.
        if self.idle_waiting and self.glet is not None:
            self.glet.throw(exc)

    def hand_off_soon(self) -> None:
        """Called when the worker starts to drain: a session waiting for a next
        request hands its connection off now (the others do once their
        response went out, ``_first_bytes``); a parked one resumes, and then
        waits (no longer parked) as the drain says."""
        if self.parked is not None:
            self.resume("drain")
        elif self.idle_waiting and self.hands_off:
            get_hub().loop.run_callback(self._wake, HandOffNow("handoff"))

    @property
    def hands_off(self) -> bool:
        """Whether this connection goes to the newest generation when its
        worker drains: plain HTTP, a newer generation listening, and no
        handoff of it refused yet."""
        return self.plain and self.rt.handing_off and not self.kept

    @property
    def draining(self) -> bool:
        """Whether responses close the connection: the worker drains and the
        connection cannot be handed off (``Connection: close``)."""
        return self.rt.draining and not self.hands_off

    def _hand_off(self) -> bool:
        """Give the connection to the newest generation (nothing of a next
        request read yet); True when it took it."""
        rt = self.rt
        if not self.hands_off:
            return False
        if rt.handoff.give(self.client, self.listener.name, (self.peer, 0), self.served):
            return True
        self.kept = True  # drained here as before: its next response says Connection: close
        return False

    def arrived(self) -> bool:
        """True when the client sent something (bytes or its FIN) not read yet."""
        client = self.client
        if not self.plain and client.pending():
            return True
        try:
            return _readable(client.fileno())
        except OSError:
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
        """All of ``data`` to the client within send_timeout, else ``ClientGone``.

        The response writer: every response path (relayed, cached, forkproxy's
        own, the body pump) writes an HTTP/1.1 message through here, head
        then framed body.  This is the HTTP/1.1 writer (the bytes as they
        are); ``net.h2_stream.Stream._send`` is the HTTP/2 one (HEADERS and
        DATA frames within the send windows).  ``_recv`` is the body reader's
        seam the same way."""
        try:
            send_within(self.client, data, self.plain, self.timers, self.send_timeout)
        except OSError:  # socket.timeout included
            raise ClientGone() from None
        self.sent += len(data)

    def read_head(self):
        """The next request head as bytes, or None when the client is done.

        Waits up to keepalive_timeout for the first byte of a follow-up request
        (header_timeout for the first request), then header_timeout in total for
        the rest of the head.
        """
        srv = self.rt.cfg.server
        buf = self.buf or self._first_bytes()
        if not buf:
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

    def _first_bytes(self) -> bytes | None:
        """The first bytes of the next request (the buffer is empty), or None
        (b"" when the client closed) when none came in time."""
        rt = self.rt
        srv = rt.cfg.server
        wait = srv.keepalive_timeout if self.served else srv.header_timeout
        woke, self.woke = self.woke, None
        if woke is not None:  # a parked session resumed: what is left of its wait
            wait = 0.0 if woke == "expired" else self.idle_until - time.monotonic()
        buf = None
        while woke != "data":  # bytes came to a parked session: read them
            if rt.draining:
                if self._hand_off():
                    raise HandedOff()
                if self.served:
                    # The last response still said keep-alive: take a request
                    # already on its way, but only until the drain window ends.
                    wait = min(wait, rt.drain_until - time.monotonic())
            self.idle_waiting = True  # Runtime._close_idle may wake it
            try:
                if wait <= 0:
                    raise socket.timeout()
                buf = self._idle_recv(wait) if self.served else self._recv(wait)
            except HandOffNow:
                continue  # the drain began: hand off (a request on its way goes along)
            except socket.timeout:
                # A request that came as the wait ran out is answered
                # (Connection: close when draining): dropping it would lose it.
                if not self.arrived():
                    return None
                buf = None
            finally:
                self.idle_waiting = False
            break
        if buf is None:
            try:
                buf = self._recv(srv.header_timeout)
            except socket.timeout:
                return None
        if not buf:
            self.client_done = True
        return buf

    def _idle_recv(self, wait: float) -> bytes | None:
        """The wait for a next request: ``_recv(wait, idle=True)``, but with
        nothing there after PARK_AFTER the session parks (raises
        ``Parked``).  None: bytes came just as the first part of the wait ran out."""
        if wait <= PARK_AFTER or not self.plain or self.rt.draining:
            return self._recv(wait, idle=True)
        try:
            return self._recv(PARK_AFTER, idle=True)
        except HandOffNow:
            raise
        except socket.timeout:
            if self.arrived():
                return None
            if self.rt.draining:  # it began meanwhile: no parking, the caller's loop decides
                raise HandOffNow("drain") from None
        self.park(wait - PARK_AFTER)
        raise Parked()

    # -- one request -----------------------------------------------------

    def serve_one(self) -> bool:
        """Serve one request; True when the connection may carry another.

        A request that was answered leaves its access-log line and, when it
        was refused or ended in a 5xx, one error-log line saying why
        (``logs.error_line``).  A bug answers 500 when nothing went out yet.
        """
        rt = self.rt
        start = time.time()
        # The Transaction (and AccessRecord) is made once the head is there: an
        # idle keep-alive connection holds neither (bench/idle.py's KiB/conn).
        tx = None
        received, sent = self.received - len(self.buf), self.sent
        keep = False
        try:
            head = self.read_head()
            if head is None:
                return False
            tx = self._transaction(start := time.time())
            rec = tx.rec
            tx.head_size = len(head)
            req = http1.parse_request_head(head, rt.limits)
            rec.method, rec.target = req.method, req.target
            rec.version = self.http_version or req.version
            if rt.access_log.enabled:  # only the access log shows them
                rec.referer, rec.user_agent = req.get("referer"), req.get("user-agent")
            rec.request_id = rt.edge.request_id(req, self.peer)
            if rt.edge.trusted:  # the log's client is the real one, the proxy its peer
                rec.client = rt.edge.client(req, self.peer)
            # The stages make the target canonical (admission): from there on
            # every decision, the cache and the upstream head see it; the
            # logs keep the one received.
            tx.req = req
            keep = stages.run(self, tx)
            return keep
        except http1.ProtocolError as exc:
            tx = tx or self._transaction(start)  # the head itself refused (408, 431, bare CR)
            self.refuse(tx, exc.status,
                        f"malformed request: {exc.reason}" if exc.status == 400 else exc.reason)
            return False
        except (ClientGone, Abort, HandedOff, Parked):
            raise
        except Exception as exc:  # a bug must cost one request, never the worker
            rt.log.exception("internal error on a request from %s", self.peer)
            tx = tx or self._transaction(start)
            if not tx.rec.status:
                self.refuse(tx, 500, f"internal error: {exc!r}")
            return False
        finally:
            rec = tx.rec if tx is not None else None
            if tx is not None and (tx.spool is not None or tx.cleanup is not None):
                tx.close()
            if rec is not None and rec.status:
                rec.request_time = time.time() - start
                # Bytes read past this request wait in self.buf for the next
                # one; once the connection closes, every byte read was this one's.
                rec.bytes_received = self.received - (len(self.buf) if keep else 0) - received
                rec.bytes_sent = self.sent - sent
                if rt.access_log.enabled or rec.status >= 400 or rt.metrics is not None:
                    self.log(rec)

    def _transaction(self, start: float) -> Transaction:
        """A new request's Transaction, with its AccessRecord, from ``start``."""
        rec = AccessRecord(self.peer, start)
        if self.tls_version is not None:
            rec.tls_version, rec.sni = self.tls_version, self.sni
        return Transaction(rec, start)

    def log(self, rec: AccessRecord) -> None:
        """The access-log line, error-log line and counters of a request that ended."""
        rt = self.rt
        if rt.access_log.enabled:
            rt.access_log.write(rec)
        if rec.status >= 400:  # error_line's first test, without the call
            line = error_line(rec)
            if line is not None:
                rt.log.log(line[0], "%s", line[1])
        if rt.metrics is not None:
            rt.metrics.request(rec, self.protocol_index)

    def refuse(self, tx: Transaction, status: int, why: str, *, fields=()) -> None:
        """Answer with forkproxy's own short error response and close.

        ``why`` says in words what made forkproxy answer so: the error log's
        reason (``logs.error_line``, written when the request ends).
        The body is the route's (else the server's) error page for the status,
        or the status line's text: never ``why`` (servers stay unnamed).
        ``fields``: extra header fields (Allow, Retry-After, Location).
        """
        rec = tx.rec
        rec.why = why
        if status >= 500 and tx.hook is not None and tx.hook.on_refuse(tx, status):
            return  # stale-if-error: a stored response went out instead
        rec.status = status
        page = self.rt.edge.page(tx.rc.index if tx.rc is not None else None, status)
        try:
            self._send(response.error_response(status, fields, page, rec.method == "HEAD"))
        except ClientGone:
            pass

    def redirect_https(self, tx: Transaction) -> bool:
        """308 to the same URL over https (route redirect_https); True to keep the connection.

        The connection stays open only when the request had no body to skip.
        """
        req = tx.req
        location = https_location(self.rt, tx.rc.index, tx.host, tx.target)
        framing = req.framing
        keep = (framing.kind == "none" or (framing.kind == "length" and not framing.length)) \
            and http1.wants_keep_alive(req.version, req.headers) and not self.draining
        tx.rec.status = 308
        self._send(response.redirect(location, self.rt.keep_alive_line if keep else None))
        return keep

    # -- what the request stages (net.stages) do through the connection --

    def take_body(self, tx: Transaction) -> None:
        """The body stage's part with the client: answer ``Expect``, read a
        body whole before a server is chosen (route request_buffering)."""
        req = tx.req
        has_body = tx.has_body
        expect = req.expect
        if expect is not None:
            if expect.lower() != "100-continue":
                raise http1.ProtocolError(417, "unsupported expectation")
            if has_body and req.version == "1.1" and not self.buf:
                # nginx's way: the proxy asks for the body itself and strips
                # the expectation, so the upstream never waits on a 100.
                self._send(CONTINUE)
        if has_body and tx.rc.request_buffering and upgrade_asked(req) is None \
                and not self._grpc(tx):
            tx.spool = request_body.buffer_body(self, tx)

    @staticmethod
    def _grpc(tx: Transaction) -> bool:
        """A gRPC call to an HTTP/2 pool: its messages stream both ways, never
        buffered.  Only there: anywhere else the Content-Type would let any
        client opt out of request_buffering's protection of the servers."""
        return tx.pool.cfg.protocol != "http1" and hdr.is_grpc(tx.req)

    def cached(self, tx: Transaction):
        """The cache lookup stage: the cache answers, or sets up the miss."""
        return self.rt.cache.lookup(self, tx)
