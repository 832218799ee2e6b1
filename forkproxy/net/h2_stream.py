"""One HTTP/2 stream: one request through the same request path as HTTP/1.1.

``net.h2_conn`` makes a ``Stream`` for every request a client opens and runs
it in its own greenlet.  A ``Stream`` is a ``net.http_session.Session`` for
one request: ``serve_one`` reads its head, runs ``net.stages.run`` (routing,
edge rules, rate limits, rewrites, cache, compression, balancing, retries,
forwarding) and writes the access-log line with protocol ``HTTP/2.0``.
Only the two ends that touch the client differ, and they are the session's
own seams:

- the request: ``read_head`` gives the HTTP/1.1 head ``core.http2`` made of
  the stream's fields, and ``_recv`` (the body reader of
  ``net.request_body``) gives the DATA frames, framed as that head says
  (chunked when the client sent no Content-Length), from a buffer the
  client's flow-control window bounds: a piece read is a piece
  acknowledged (WINDOW_UPDATE);
- the response writer: ``_send`` takes the HTTP/1.1 message every response
  path produces (relayed, cached, compressed, forkproxy's own), a head then
  its framed body, and writes it as HEADERS and DATA frames: the head
  through ``core.http2.response_fields``, the body unframed by
  ``core.http1``'s decoder, within the stream's and the connection's send
  windows (a stream whose window stays shut waits send_timeout, then is
  reset: it never holds the connection nor the worker).

A WebSocket asked by extended CONNECT (RFC 8441) is an HTTP/1.1 Upgrade
upstream; the server's 101 becomes a 200 and ``StreamPipe`` is the client
side of ``net.websocket``'s relay: DATA both ways, unframed.
"""

from __future__ import annotations

import collections
import socket

from gevent.event import Event

from forkproxy.core import headers as hdr
from forkproxy.core import http1
from forkproxy.core.http2 import response_fields
from forkproxy.net.http_session import Session
from forkproxy.net.relay import Abort, ClientGone

_END = object()  # the client ended the stream (END_STREAM)
# Trailer fields never sent in HTTP/2 (connection-specific or framing).


class Stream(Session):
    """A request on an HTTP/2 connection (``conn``: its ``net.h2_conn.H2Conn``)."""

    http_version = "2.0"  # the access log's protocol
    protocol_index = 1  # requests_total's protocol label: core.metrics.PROTOCOLS index (h2)

    def __init__(self, conn, sid: int, head: bytes, end_stream: bool):
        super().__init__(conn.rt, conn.listener, conn.sock, (conn.peer, 0))
        self.proto, self.tls_version, self.sni = conn.proto, conn.tls_version, conn.sni
        self.plain = False
        self.conn, self.sid = conn, sid
        self.head = head
        self.received = len(head)
        self.chunked = b"transfer-encoding: chunked\r\n" in head  # core.http2.request_head's
        self.piped = False  # a WebSocket tunnel (RFC 8441): DATA both ways, unframed
        self.inbox: collections.deque = collections.deque()
        if end_stream:
            self.inbox.append(_END)
        self.arrival = Event()  # DATA or END_STREAM came
        self.window = Event()  # a send window opened, or the writer caught up
        self.resp_buf = b""  # the response head, until whole
        self.decoder = None  # the response body's decoder once its head went out
        self.ended = False  # END_STREAM sent
        self.method = "GET"
        self.glet = None

    # -- what the session's loop does, for one request -----------------

    @property
    def hands_off(self) -> bool:
        return False  # a stream is never handed to another worker (net.handoff)

    def run(self) -> None:
        """Serve the request, then end the stream (or reset it when cut)."""
        conn = self.conn
        try:
            try:
                self.serve_one()
            except (ClientGone, Abort):
                pass
            except Exception:  # a bug must cost one stream, never the connection
                self.rt.log.exception("internal error on an HTTP/2 stream from %s", self.peer)
            self._finish()
        except ClientGone:
            pass
        finally:
            self.timers.close()
            conn.stream_done(self)

    def read_head(self):
        head, self.head = self.head, None
        if head is not None:
            self.method = head[:head.index(b" ")].decode("latin-1")
        return head

    def _finish(self) -> None:
        """End the stream: END_STREAM after a whole response (a body until
        close ends here), else RST_STREAM; the client's unread body is
        refused with NO_ERROR (RFC 9113 8.1)."""
        if self.ended:
            if _END not in self.inbox:
                self.conn.reset(self.sid, 0)
            return
        decoder = self.decoder
        if decoder is not None and (decoder.done or isinstance(decoder, http1.CloseDecoder)):
            self._data(b"", True)
        else:
            self.conn.reset(self.sid, 2)  # INTERNAL_ERROR: the response was cut

    # -- the request body: DATA frames, read by net.request_body -------

    def feed(self, data: bytes, flow: int) -> None:
        """DATA for this stream (``flow``: what it counted against the window)."""
        self.inbox.append((data, flow))
        self.arrival.set()

    def end(self) -> None:
        self.inbox.append(_END)
        self.arrival.set()

    def _recv(self, seconds: float, idle: bool = False) -> bytes:
        """The next piece of the request body, framed as the head said; b""
        once it ended.  ``socket.timeout`` when none came within ``seconds``."""
        inbox = self.inbox
        if not inbox:
            t = self.timers.start(seconds)
            try:
                while not inbox:
                    self.arrival.clear()
                    self.arrival.wait()
            finally:
                t.stop()
        item = inbox.popleft()
        if item is _END:
            inbox.append(_END)  # said again to every later read
            if self.chunked:
                self.chunked = False
                return http1.encode_last_chunk()
            return b""
        data, flow = item
        self.conn.consumed(self.sid, flow)
        self.received += len(data)
        if not data:  # an empty DATA frame: the next piece
            return self._recv(seconds)
        return http1.encode_chunk(data) if self.chunked else data

    # -- the response writer: an HTTP/1.1 message in, frames out -------

    def _send(self, data) -> None:
        self.sent += len(data)
        if self.piped:
            if data:
                self._data(bytes(data), False)
            return
        if self.decoder is None:
            self.resp_buf += bytes(data)
            end = self.resp_buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head, rest = self.resp_buf[:end + 4], self.resp_buf[end + 4:]
            self.resp_buf = b""
            if not self._head(head):  # an interim (1xx) head: the final one follows
                if rest:
                    self._send(rest)
                return
            if self.piped:  # a tunnel's first bytes, from the server
                if rest:
                    self._data(rest, False)
                return
            data = rest
        if data and not self.decoder.done:
            try:
                pieces, _ = self.decoder.feed(data)
            except http1.ProtocolError:
                raise Abort() from None
            done = self.decoder.done
            trailers = self.decoder.trailers if done else None
            pieces = [p for p in pieces if p]
            for i, piece in enumerate(pieces):
                self._data(piece, done and not trailers and i == len(pieces) - 1)
            if trailers:  # a trailing HEADERS frame ends the stream (gRPC's status)
                self.conn.send_headers(self.sid, hdr.passed_trailers(trailers), True)
                self.ended = True
            elif done and not pieces:
                self._data(b"", True)

    def _head(self, head: bytes) -> bool:
        """Send a response head as HEADERS; False for an interim one."""
        try:
            resp = http1.parse_response_head(head, self.conn.own_limits)
        except http1.ProtocolError as exc:  # forkproxy's own head: a bug, or a huge one
            self.rt.log.error("HTTP/2 stream %d from %s: response head not sent: %s",
                              self.sid, self.peer, exc.reason)
            raise Abort() from None
        status = resp.status
        if status == 101:  # the WebSocket asked by extended CONNECT: 200, then the tunnel
            self.conn.send_headers(self.sid, response_fields(status, resp.headers), False)
            self.piped = True
            self.client = StreamPipe(self)  # what net.websocket relays to
            self.conn.tunnel(self.sid, True)
            return True
        if 100 <= status < 200:
            if status != 101:
                self.conn.send_headers(self.sid, response_fields(status, resp.headers), False)
            return False
        framing = http1.response_body_framing(self.method, resp)
        self.decoder = http1.make_decoder(framing, status=502, limits=self.rt.limits)
        fields = response_fields(status, resp.headers)
        # No body (or an empty one): END_STREAM with the HEADERS, as gRPC's
        # trailers-only responses must come.
        empty = framing.kind == "none" or (framing.kind == "length" and not framing.length)
        if empty:
            self.ended = True
        self.conn.send_headers(self.sid, fields, empty)
        return True

    def _data(self, data: bytes, end: bool) -> None:
        """``data`` as DATA frames within the send windows; END_STREAM with ``end``.
        Waits for a window at most send_timeout, else ``ClientGone``."""
        conn, view = self.conn, memoryview(data)
        while True:
            room = conn.room(self.sid) if view else 1
            if room <= 0:
                self._wait_window()
                continue
            piece, view = view[:room], view[room:]
            last = end and not view
            conn.send_data(self.sid, bytes(piece), last)
            if last:
                self.ended = True
            if not view:
                return

    def _wait_window(self) -> None:
        t = self.timers.start(self.send_timeout)
        self.conn.waiting.add(self)
        try:
            self.window.clear()
            self.window.wait()
        except socket.timeout:
            self.rt.log.info("HTTP/2 stream %d from %s: no send window for send_timeout "
                             "(%gs); reset", self.sid, self.peer, self.send_timeout)
            raise ClientGone() from None
        finally:
            t.stop()
            self.conn.waiting.discard(self)


class StreamPipe:
    """A WebSocket's stream as the socket ``net.tunnel.Relay`` relays to (after
    an extended CONNECT, RFC 8441): ``recv`` reads DATA, ``sendall`` sends it
    within the windows, ``shutdown`` ends the stream, ``close`` resets it."""

    def __init__(self, st: Stream):
        self.st = st
        self.closed = False

    def settimeout(self, seconds) -> None:
        pass  # the relay's watchdog bounds the waits

    def recv(self, n: int) -> bytes:
        st = self.st
        while True:
            if self.closed:
                raise OSError("stream closed")
            if st.inbox:
                item = st.inbox.popleft()
                if item is _END:
                    st.inbox.append(_END)
                    return b""
                data, flow = item
                st.conn.consumed(st.sid, flow)
                st.received += len(data)
                if data:
                    return data
                continue
            st.arrival.clear()
            st.arrival.wait()

    def sendall(self, data) -> None:
        if self.closed:
            raise OSError("stream closed")
        self.st.sent += len(data)
        try:
            self.st._data(bytes(data), False)
        except ClientGone:
            raise OSError("stream reset") from None

    def shutdown(self, how) -> None:
        try:
            self.st._data(b"", True)
        except ClientGone:
            raise OSError("stream reset") from None

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        st = self.st
        if not st.ended:
            st.ended = True
            st.conn.reset(st.sid, 8)  # CANCEL
        st.arrival.set()  # a recv waiting ends
        st.window.set()
