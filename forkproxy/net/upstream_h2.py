"""HTTP/2 to the servers (pool ``protocol = "h2c"`` or ``"h2"``): shared connections, one
stream per request.

A pool whose servers speak HTTP/2 keeps, per server and per worker, a few
``H2Upstream`` connections; each carries up to the server's
SETTINGS_MAX_CONCURRENT_STREAMS streams of different client requests at once.
A connection owns its socket: one reader greenlet takes the server's frames
(``h2``, sans-IO: framing, HPACK, flow control) and hands each stream its
events; any greenlet writes, one at a time (a lock around the socket).

The seam with the rest of the request path is the socket: ``H2Pool.checkout``
gives an ``UpstreamConn`` (net.upstream) whose ``sock`` is a ``StreamSock``,
one stream that reads and writes HTTP/1.1 bytes as the request path produces
and parses them (as ``net.h2_stream`` does for clients).  The request head
``forward.attempt`` sends becomes HEADERS (pseudo-fields from its request line
and Host, ``te: trailers``), its body (length or chunked) DATA within the
send windows; the server's HEADERS become an HTTP/1.1 response head, chunked
when it gave no Content-Length, its DATA the chunks (acknowledged as they are
read: the windows bound what a slow client leaves buffered), its trailers
(gRPC's ``grpc-status``) the chunked body's trailer section.  So the head,
the body pump, the filters, the cache and the log see what they see for
HTTP/1.1.  A stream reset, a GOAWAY that did not take the stream, or a dead
connection make its reads fail as an upstream connection's would (``reset``
before the head, ``Abort`` in a body): the retry rules of net.forward apply.
"""

from __future__ import annotations

import collections
import errno
import socket
import time

import gevent
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from gevent.event import Event
from gevent.lock import Semaphore
from h2.settings import SettingCodes

from forkproxy.core import http1
from forkproxy.core.http2 import upstream_request, upstream_response_head
from forkproxy.net.upstream import RECV_SIZE, ConnPool, UpstreamConn, UpstreamError, _override

_WINDOW = 8 << 20  # the connection's receive window, shared by its streams
_STREAM_WINDOW = 256 * 1024  # a stream's receive window: the most one stream buffers
_DEFAULT_STREAMS = 100  # assumed until the server's SETTINGS say


def _reset_error(detail: str) -> OSError:
    return OSError(errno.ECONNRESET, detail)


class StreamSock:
    """One stream of an ``H2Upstream``, as the socket of an ``UpstreamConn``."""

    def __init__(self, conn: "H2Upstream"):
        self.conn = conn
        self.sid: int | None = None
        self.head = b""  # the request head until whole
        self.decoder = None  # the request body's (chunked), or None
        self.remaining = 0  # the request body's bytes still to come (Content-Length)
        self.sent_end = False  # END_STREAM sent
        self.inbox: collections.deque = collections.deque()  # HTTP/1.1 bytes for recv
        self.arrival = Event()
        self.chunked = False  # the response body goes out chunked
        self.bodiless = False  # a HEAD: the response's length fields are the GET's
        self.got_end = False  # the server ended the stream
        self.error: str | None = None  # why the stream failed
        self.refused = False  # the server never processed it (GOAWAY, REFUSED_STREAM)
        self.closed = False
        self.sender = None  # the greenlet sending the request body (net.duplex)

    # -- the request: HTTP/1.1 bytes in, HEADERS and DATA out --------------

    def sendall(self, data) -> None:
        self._check()
        data = bytes(data)
        if self.sid is None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self.head[:end + 4], self.head[end + 4:]
            self.head = b""
            self._start(head)
        if self.decoder is not None:
            try:
                pieces, _ = self.decoder.feed(data)
            except http1.ProtocolError as exc:
                raise _reset_error(f"bad chunked request body: {exc.reason}") from None
            done = self.decoder.done
            for piece in pieces:
                if piece:
                    self.conn.send_data(self, piece, False)
            if done and not self.sent_end:
                self.conn.send_data(self, b"", True)
        elif data and not self.sent_end:
            data = data[:self.remaining]
            self.remaining -= len(data)
            self.conn.send_data(self, data, not self.remaining)

    def send(self, data) -> int:
        self.sendall(data)
        return len(data)

    def _start(self, head: bytes) -> None:
        """HEADERS for an HTTP/1.1 request head (the proxy's own, well formed)."""
        fields, length, chunked = upstream_request(head, self.conn.scheme)
        self.bodiless = head.startswith(b"HEAD ")
        if chunked:
            self.decoder = http1.ChunkedDecoder(502)
        elif length:
            self.remaining = length
        self.conn.open(self, fields, not chunked and not length)

    # -- the response: HEADERS, DATA, trailers in; HTTP/1.1 bytes out ------

    def on_headers(self, fields, end: bool) -> None:
        got = upstream_response_head(fields, end, self.bodiless)
        if got is None:
            return  # interim responses are not relayed from HTTP/2 servers
        head, self.chunked = got
        self._put(head)
        if end:
            self.on_end()

    def on_data(self, data: bytes, flow: int) -> None:
        if flow:
            self.inbox.append(flow)  # acknowledged when read
        if data:
            self._put(http1.encode_chunk(data) if self.chunked else data)

    def on_trailers(self, fields) -> None:
        if self.chunked:
            self.chunked = False
            trailers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in fields
                        if not n.startswith(b":")]
            self._put(http1.encode_last_chunk(trailers))
        self.on_end()

    def on_end(self) -> None:
        if self.chunked:
            self.chunked = False
            self._put(http1.encode_last_chunk())
        self.got_end = True
        self.arrival.set()

    def fail(self, detail: str, refused: bool = False) -> None:
        if self.error is None and not self.got_end:
            self.error, self.refused = detail, refused
            self.arrival.set()

    def _put(self, data: bytes) -> None:
        self.inbox.append(data)
        self.arrival.set()

    def recv(self, n: int) -> bytes:
        """The next bytes of the response; b"" after its end; ``OSError``
        (ECONNRESET) when the stream failed.  The caller's timer bounds it."""
        inbox = self.inbox
        while True:
            while inbox:
                item = inbox.popleft()
                if isinstance(item, int):
                    self.conn.consumed(self, item)
                    continue
                if len(item) > n:
                    inbox.appendleft(item[n:])
                    item = item[:n]
                return item
            if self.got_end:
                return b""
            self._check()
            self.arrival.clear()
            self.arrival.wait()

    def _check(self) -> None:
        if self.error is not None:
            if self.refused:  # never processed by the server: safe to try elsewhere
                raise UpstreamError("refused", f"{self.conn.server.addr}: {self.error}",
                                    sent=False)
            raise _reset_error(self.error)
        if self.closed:
            raise OSError(errno.EBADF, "stream closed")

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.conn.release(self, not (self.got_end and self.sent_end))
            if self.sender is not None and self.sender is not gevent.getcurrent():
                self.sender.kill(block=False)


class H2Upstream:
    """One HTTP/2 connection to a server, shared by the streams of many requests."""

    def __init__(self, sock, server, scheme: bytes, send_timeout: float, log=None):
        self.sock, self.server, self.scheme = sock, server, scheme
        self.send_timeout = send_timeout
        self.log = log
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None))
        self.h2.local_settings = h2.settings.Settings(client=True, initial_values={
            SettingCodes.ENABLE_PUSH: 0, SettingCodes.INITIAL_WINDOW_SIZE: _STREAM_WINDOW})
        self.streams: dict[int, StreamSock] = {}
        self.taken = 0  # streams checked out (opened or about to be)
        self.idle_at = time.monotonic()  # since when no stream is taken
        self.dead = False
        self.goaway = False
        self.lock = Semaphore()
        self.window = Event()  # a send window opened
        self.settled = Event()  # the server's first SETTINGS came (or the connection died)
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(_WINDOW)
        self.flush()
        self.reader = gevent.spawn(self._read)

    @property
    def max_streams(self) -> int:
        got = self.h2.remote_settings.max_concurrent_streams
        return _DEFAULT_STREAMS if got is None or got > 2 ** 30 else got

    def has_room(self) -> bool:
        return not self.dead and not self.goaway and self.taken < self.max_streams

    def take(self) -> StreamSock:
        self.taken += 1
        st = StreamSock(self)
        return st

    # -- writing ------------------------------------------------------------

    def flush(self) -> None:
        """What h2 has to send, to the socket, one writer at a time.

        A greenlet that finds another writing leaves its frames to it (the
        writer sends until nothing is left): the reader never blocks behind a
        writer, which may be waiting for the server to read."""
        if self.lock.locked():
            return
        with self.lock:
            while True:
                data = self.h2.data_to_send()
                if not data or self.dead:
                    return
                try:
                    with gevent.Timeout(self.send_timeout, socket.timeout("send timed out")):
                        self.sock.sendall(data)
                except BaseException as exc:  # a frame cut in half: the connection is lost
                    self.kill(f"sending: {exc}")
                    if isinstance(exc, (OSError, gevent.Timeout)):
                        raise _reset_error(f"{exc}") from None
                    raise

    def open(self, st: StreamSock, fields, end: bool) -> None:
        if self.dead or self.goaway:
            st.fail("connection going away", refused=True)
            st._check()
        sid = self.h2.get_next_available_stream_id()
        try:
            self.h2.send_headers(sid, fields, end_stream=end)
        except h2.exceptions.ProtocolError as exc:
            st.fail(f"{exc}", refused=True)
            st._check()
        st.sid, st.sent_end = sid, end
        self.streams[sid] = st
        self.flush()

    def send_data(self, st: StreamSock, data: bytes, end: bool) -> None:
        view = memoryview(data)
        while True:
            st._check()
            if st.got_end:  # the server answered early: the rest is not wanted
                return
            room = min(self.h2.local_flow_control_window(st.sid),
                       self.h2.max_outbound_frame_size) if view else 0
            if view and room <= 0:
                self.window.clear()
                self.window.wait()  # the caller's timer (send_timeout) bounds it
                continue
            piece, view = view[:room], view[room:]
            last = end and not view
            self.h2.send_data(st.sid, bytes(piece), end_stream=last)
            if last:
                st.sent_end = True
            self.flush()
            if not view:
                return

    def consumed(self, st: StreamSock, flow: int) -> None:
        if self.dead:
            return
        try:
            self.h2.acknowledge_received_data(flow, st.sid)
        except (h2.exceptions.StreamClosedError, KeyError):
            pass
        self.flush()

    def release(self, st: StreamSock, cancel: bool) -> None:
        """A stream is over: its request ended (``cancel``: before it was whole)."""
        self.taken -= 1
        if not self.taken:
            self.idle_at = time.monotonic()
        if st.sid is None:
            return
        self.streams.pop(st.sid, None)
        if cancel and not self.dead:
            try:
                self.h2.reset_stream(st.sid, h2.errors.ErrorCodes.CANCEL)
                self.flush()
            except (h2.exceptions.ProtocolError, OSError):
                pass

    # -- reading ------------------------------------------------------------

    def _read(self) -> None:
        detail = "the server closed the connection"
        try:
            while not self.dead:
                data = self.sock.recv(RECV_SIZE)
                if not data:
                    break
                events = self.h2.receive_data(data)
                for ev in events:
                    self._event(ev)
                self.flush()
        except (OSError, h2.exceptions.ProtocolError) as exc:
            detail = f"{type(exc).__name__}: {exc}"
        finally:
            self.kill(detail)

    def _event(self, ev) -> None:
        st = self.streams.get(getattr(ev, "stream_id", 0) or 0)
        if isinstance(ev, h2.events.ResponseReceived):
            if st is not None:
                st.on_headers(ev.headers, ev.stream_ended is not None)
        elif isinstance(ev, h2.events.DataReceived):
            if st is not None:
                st.on_data(ev.data, ev.flow_controlled_length)
            else:
                self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.TrailersReceived):
            if st is not None:
                st.on_trailers(ev.headers)
        elif isinstance(ev, h2.events.StreamEnded):
            if st is not None and not st.got_end:
                st.on_end()
        elif isinstance(ev, h2.events.StreamReset):
            if st is not None:
                refused = ev.error_code == h2.errors.ErrorCodes.REFUSED_STREAM
                st.fail(f"the server reset the stream ({ev.error_code!r})", refused)
        elif isinstance(ev, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            self.window.set()
            self.settled.set()
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.goaway = True
            last = ev.last_stream_id or 0
            for sid, other in list(self.streams.items()):
                if sid > last:
                    other.fail("the server sent GOAWAY", refused=True)

    def kill(self, detail: str) -> None:
        """The connection is lost: its streams fail, the socket closes."""
        if self.dead:
            return
        self.dead = True
        self.settled.set()
        for st in list(self.streams.values()):
            st.fail(detail)
        self.window.set()
        try:
            self.sock.close()
        except OSError:
            pass
        if self.reader is not None and self.reader is not gevent.getcurrent():
            self.reader.kill(block=False)


class H2Pool(ConnPool):
    """The HTTP/2 connections of one worker to one server, as ``ConnPool``'s contract:
    ``checkout`` gives a stream on a connection with room (a new connection when
    none has), ``checkin`` ends it; idle connections close after keepalive_timeout."""

    alpn = ("h2",)

    def __init__(self, server, pool):
        super().__init__(server, pool)
        self.scheme = b"https" if pool.tls is not None else b"http"
        self.live: list[H2Upstream] = []

    def checkout(self, replayable: bool = True, limits=None) -> UpstreamConn:
        self._sweep()
        for c in self.live:
            if c.has_room():
                return self._stream(c, limits, True)
        return self.connect(limits)

    def connect(self, limits=None) -> UpstreamConn:
        plain = super().connect(limits)  # TCP (and TLS, ALPN h2) with the pool's limits
        if self.tls is not None and getattr(plain.sock, "selected_alpn_protocol",
                                            lambda: None)() != "h2":
            plain.close()
            raise UpstreamError("refused", f"{self.server.addr} did not choose h2 by ALPN",
                                sent=False)
        try:
            c = H2Upstream(plain.sock, self.server, self.scheme, plain.send_timeout)
        except OSError as exc:
            plain.close()
            raise UpstreamError("reset", f"{self.server.addr}: {exc}", sent=False) from None
        # Its SETTINGS first (max_concurrent_streams, windows): nothing is sent before.
        if not c.settled.wait(self.connect_timeout) or c.dead:
            kind = "refused" if c.dead else "timeout"
            c.kill("no SETTINGS")
            raise UpstreamError(kind,
                                f"{self.server.addr} did not start HTTP/2 (no SETTINGS)",
                                sent=False)
        self.live.append(c)
        return self._stream(c, limits, False)

    def _stream(self, c: H2Upstream, limits, reused: bool) -> UpstreamConn:
        conn = UpstreamConn(c.take(), self.server, self.send_timeout, self.read_timeout)
        conn.plain = False
        conn.reused = reused
        if limits is not None:
            _override(conn, limits)
        return conn

    def checkin(self, conn: UpstreamConn) -> None:
        conn.close()

    def _sweep(self) -> None:
        """Drop dead connections, and idle ones past keepalive_timeout (or over keepalive)."""
        now = time.monotonic()
        keep = []
        for c in self.live:
            if c.dead or (c.goaway and not c.taken):
                c.kill("gone away")
                continue
            if not c.taken and (now - c.idle_at >= self.idle_timeout
                                or len(keep) >= max(self.max_idle, 1)):
                c.kill("idle")
                continue
            keep.append(c)
        self.live = keep

    def close(self) -> None:
        for c in self.live:
            c.kill("pool closed")
        self.live = []
