"""HTTP/2 from clients: one connection, its streams served side by side.

``net.listener.Runtime`` runs an ``H2Conn`` for a TLS connection whose ALPN
chose ``h2``, and for a plain one (listener ``http2 = true``) that opens
with the connection preface (``is_preface``: peeked, nothing consumed; an
HTTP/1.1 client on the same port gets a ``Session``).

The framing, HPACK and flow control are the ``h2`` library's (sans-IO);
the proxying is forkproxy's: each request is a ``net.h2_stream.Stream`` in
its own greenlet, through the same stages as HTTP/1.1.  Three kinds of
greenlets touch a connection: this one reads the socket and feeds ``h2``,
the writer (``_writer``) is the only one that writes it, and the streams
make frames.  The ``h2`` state is never touched across a switch: every
call on it runs to its end without yielding (gevent is cooperative), so
they are serialized; the frames it makes go out through the writer, and a
stream waits (``room``) while more than BACKLOG bytes are queued for a
slow client, or while its send window is shut.

Limits (``[server]`` http2_* keys): concurrent streams (more are refused
with REFUSED_STREAM), the header list (HPACK decoded; a CONTINUATION
sequence longer than it ends the connection), the HPACK table, the SETTINGS
acknowledgement time; keepalive_timeout is the idle timeout.  Floods end
the connection with GOAWAY ENHANCE_YOUR_CALM: resets (rapid reset,
CVE-2023-44487), PINGs, SETTINGS (``core.http2.Flood``).

A draining worker sends GOAWAY (the last stream it took), finishes those
streams and closes; HTTP/2 connections are never handed to another worker.
SETTINGS_ENABLE_CONNECT_PROTOCOL is on: a WebSocket over a stream (RFC
8441) is an HTTP/1.1 Upgrade upstream (``core.http2``, ``Stream``).
"""

from __future__ import annotations

import base64
import os
import socket
import time

import gevent
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from gevent import get_hub, getcurrent
from gevent.event import Event
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from hyperframe.frame import GoAwayFrame

from forkproxy.core import http1, http2
from forkproxy.net.h2_stream import Stream
from forkproxy.net.http_session import LINGER
from forkproxy.net.relay import ClientGone
from forkproxy.net.sockio import Timers, is_plain, send_within
from forkproxy.net.tunnel import LIVE
from forkproxy.net.upstream import RECV_SIZE

#: Bytes queued for the client past which streams wait for the writer.
BACKLOG = 256 * 1024
#: How long the frames left (a GOAWAY) may take to go out when a connection ends.
CLOSE_WAIT = 2.0


class Calm(Exception):
    """A flood: the connection ends with GOAWAY ENHANCE_YOUR_CALM."""


def is_preface(sock, timeout: float):
    """True when a plain connection opens with the HTTP/2 preface, False
    when with something else, None when nothing came within ``timeout``
    (or the client left).  Peeks: nothing is consumed."""
    deadline = time.monotonic() + timeout
    preface = http2.PREFACE
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            sock.settimeout(remaining)
            got = sock.recv(len(preface), socket.MSG_PEEK)
            if not got:
                return None
            if not preface.startswith(got):
                return False
            if len(got) == len(preface):
                return True
            gevent.sleep(0.005)  # a preface in pieces: peek again once more came
    except OSError:  # socket.timeout included
        return None
    finally:
        try:
            sock.settimeout(None)
        except OSError:
            pass


class H2Conn:
    """Serve one HTTP/2 client connection until it ends."""

    hands_off = False  # never handed to another worker (net.handoff)

    def __init__(self, rt, listener, sock, addr, proto="http", tls_version=None, sni=None):
        self.rt, self.listener, self.sock = rt, listener, sock
        self.peer = addr[0] if isinstance(addr, tuple) else "unix"
        self.proto, self.tls_version, self.sni = proto, tls_version, sni
        self.plain = is_plain(sock)
        srv = rt.cfg.server
        self.max_streams = srv.http2_max_concurrent_streams
        # Outbound fields are not checked again by h2: response_fields made
        # them lower case without connection-specific ones, from a head the
        # strict HTTP/1.1 parser read (a third of h2's cost per response).
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding=None, validate_outbound_headers=False,
            normalize_outbound_headers=False))
        self.h2.local_settings = h2.settings.Settings(client=False, initial_values={
            SettingCodes.MAX_CONCURRENT_STREAMS: self.max_streams,
            SettingCodes.MAX_HEADER_LIST_SIZE: srv.http2_max_header_list_size,
            SettingCodes.HEADER_TABLE_SIZE: srv.http2_header_table_size,
            SettingCodes.ENABLE_CONNECT_PROTOCOL: 1,  # WebSocket over a stream (RFC 8441)
        })
        # Bound from the first HEADERS, not only once the client acknowledged.
        self.h2.decoder.max_header_list_size = srv.http2_max_header_list_size
        limits = rt.limits  # forkproxy's own response heads, read back by Stream._send
        self.own_limits = http1.Limits(limits.max_uri_length, limits.max_headers + 100,
                                       limits.max_head_size + 65536)
        self.streams: dict[int, Stream] = {}
        self.tunnels: set[int] = set()  # streams that are WebSocket tunnels (RFC 8441)
        self.waiting: set[Stream] = set()  # streams waiting for a window or the writer
        now = time.monotonic()
        self.resets = http2.Flood(*http2.RESETS, now)
        self.pings = http2.Flood(*http2.PINGS, now)
        self.settings = http2.Flood(*http2.SETTINGS, now)
        self.timers = Timers()
        self.wake = Event()  # the writer has frames to send
        self.raw: list[bytes] = []  # frames made outside h2's state (a graceful GOAWAY)
        self.queued = self.inflight = 0
        self.goaway_sent = self.closing = self.reading = self.reading_woken = False
        self.acked = self.client_done = False
        self.glet = self.writer = None

    # -- the connection's life ----------------------------------------

    def run(self) -> None:
        rt = self.rt
        self.glet = getcurrent()
        rt.sessions.add(self)
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        self.writer = gevent.spawn(self._writer)
        try:
            self.h2.initiate_connection()
            # The connection's receive window: a stream's window (64 KiB) for each
            # stream, so that a stream whose body is read slowly (a slow server)
            # never stalls the others' uploads; each stream's stays its own bound.
            self.h2.increment_flow_control_window(min(self.max_streams, 256) * 65535)
            self.flush()
            self._loop()
        except ClientGone:
            pass
        except Exception:  # a bug must cost one connection, never the worker
            rt.log.exception("internal error on an HTTP/2 connection from %s", self.peer)
        finally:
            rt.sessions.discard(self)
            LIVE.discard(self.glet)
            self._close()

    def _close(self) -> None:
        for st in list(self.streams.values()):
            if st.glet is not None:
                st.glet.kill(ClientGone, block=False)
        self.closing = True
        self.flush()
        if self.writer is not None and getcurrent() is not self.writer:
            self.writer.join(timeout=CLOSE_WAIT)
            self.writer.kill(block=False)
        if not self.client_done:
            self._linger()
        self.timers.close()
        try:
            self.sock.close()
        except OSError:
            pass

    def _linger(self) -> None:
        """Our close (after GOAWAY): FIN (close_notify first over TLS), then
        read and discard until the client's, for at most LINGER seconds, so
        that bytes the client still sends do not reset the connection and
        destroy the GOAWAY before it is read (as ``Session.linger``)."""
        t = self.timers.start(LINGER)
        try:
            if not self.plain:
                try:
                    self.sock = self.sock.unwrap()
                except socket.timeout:
                    raise
                except (OSError, ValueError):
                    pass
            self.sock.shutdown(socket.SHUT_WR)
            while self.sock.recv(RECV_SIZE):
                pass
        except OSError:  # socket.timeout included
            pass
        finally:
            t.stop()

    def _loop(self) -> None:
        srv = self.rt.cfg.server
        settings_until = time.monotonic() + srv.http2_settings_timeout
        while True:
            if self.rt.draining and not self.goaway_sent:
                self.goaway(ErrorCodes.NO_ERROR, graceful=True)
            if self.goaway_sent and not self.streams:
                return
            wait = srv.keepalive_timeout
            settings_due = not self.acked and settings_until - time.monotonic() <= wait
            if settings_due:
                wait = settings_until - time.monotonic()
            try:
                data = self._recv(max(wait, 0.001))
            except socket.timeout:
                if settings_due and not self.acked and not self.reading_woken:
                    self.rt.log.info("HTTP/2 connection from %s: SETTINGS not acknowledged "
                                     "within %gs", self.peer, srv.http2_settings_timeout)
                    self.goaway(ErrorCodes.SETTINGS_TIMEOUT)
                    return
                if self.streams or self.goaway_sent or self.rt.draining or self.reading_woken:
                    continue
                self.goaway(ErrorCodes.NO_ERROR)  # idle for keepalive_timeout
                return
            if not data:
                self.client_done = True
                return
            try:
                events = self.h2.receive_data(data)
                self._header_block_bound()
                for ev in events:
                    self._event(ev)
            except h2.exceptions.ProtocolError as exc:  # h2 queued its GOAWAY
                self.rt.log.info("HTTP/2 connection from %s: %s", self.peer, exc)
                self.flush()
                return
            except Calm as exc:
                self.rt.log.warning("HTTP/2 connection from %s closed: %s (GOAWAY "
                                    "ENHANCE_YOUR_CALM)", self.peer, exc)
                self.goaway(ErrorCodes.ENHANCE_YOUR_CALM)
                return
            self.flush()

    def _recv(self, seconds: float) -> bytes:
        t = self.timers.start(seconds)
        self.reading, self.reading_woken = True, False
        try:
            return self.sock.recv(RECV_SIZE)
        except socket.timeout:
            raise
        except OSError:
            return b""
        finally:
            self.reading = False
            t.stop()

    def _wake_reader(self) -> None:
        """Make the reader look again (a drain began, the last stream ended)."""
        get_hub().loop.run_callback(self._wake_cb)

    def _wake_cb(self) -> None:
        if self.reading and self.glet is not None:
            self.reading_woken = True
            self.glet.throw(socket.timeout("wake"))

    # Runtime.drain's calls on every live connection.
    def hand_off_soon(self) -> None:
        self._wake_reader()  # it sends GOAWAY, finishes its streams, closes

    shut_idle = hand_off_soon

    def goaway(self, code, graceful: bool = False) -> None:
        """GOAWAY naming the last stream taken.  ``graceful``: the streams
        taken go on (the frame is made here, outside h2's state, which
        would close at once); else the connection ends."""
        if graceful:
            f = GoAwayFrame(0)
            f.last_stream_id = self.h2.highest_inbound_stream_id
            f.error_code = code
            # After every frame h2 made before it, before any it makes after
            # (a refused stream's RST_STREAM): the client learns that streams
            # above last_stream_id were not taken before it sees them refused.
            self.raw.append(self.h2.data_to_send() + f.serialize())
        else:
            try:
                self.h2.close_connection(error_code=code)
            except h2.exceptions.ProtocolError:
                pass
        self.goaway_sent = True
        self.flush()

    # -- frames in --------------------------------------------------------

    def _header_block_bound(self) -> None:
        """A header block (HEADERS then CONTINUATIONs without END_HEADERS)
        longer than the header list limit: a CONTINUATION flood.  The block
        waits in h2's frame buffer, whose list is read here."""
        pending = getattr(self.h2.incoming_buffer, "_headers_buffer", None)
        if pending and sum(len(f.data) for f in pending) > \
                self.rt.cfg.server.http2_max_header_list_size:
            raise Calm("header block over http2_max_header_list_size (CONTINUATION flood)")

    def _event(self, ev) -> None:
        now = time.monotonic()
        if isinstance(ev, h2.events.RequestReceived):
            self._request(ev)
        elif isinstance(ev, h2.events.DataReceived):
            st = self.streams.get(ev.stream_id)
            if st is not None:
                st.feed(ev.data, ev.flow_controlled_length)
            else:  # a stream already answered: its window goes back at once
                self.consumed(ev.stream_id, ev.flow_controlled_length)
        elif isinstance(ev, h2.events.StreamEnded):
            st = self.streams.get(ev.stream_id)
            if st is not None:
                st.end()
        elif isinstance(ev, h2.events.StreamReset):
            st = self.streams.pop(ev.stream_id, None)
            if st is not None:
                if st.glet is not None:
                    st.glet.kill(ClientGone, block=False)
                self.stream_done(st)  # its window back now: it may never run again
            if ev.remote_reset and self.resets.hit(now):
                raise Calm("too many streams reset (rapid reset)")
        elif isinstance(ev, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            if isinstance(ev, h2.events.RemoteSettingsChanged) and self.settings.hit(now):
                raise Calm("SETTINGS flood")
            self._notify()
        elif isinstance(ev, h2.events.PingReceived):
            if self.pings.hit(now):
                raise Calm("PING flood")
        elif isinstance(ev, h2.events.SettingsAcknowledged):
            self.acked = True
        elif isinstance(ev, h2.events.ConnectionTerminated):
            raise ClientGone()

    def _request(self, ev) -> None:
        sid = ev.stream_id
        end = ev.stream_ended is not None
        if self.goaway_sent or len(self.streams) >= self.max_streams:
            # Streams reset by the client may still be finishing here.
            self.reset(sid, ErrorCodes.REFUSED_STREAM)
            if self.resets.hit(time.monotonic()):
                raise Calm("too many streams refused (rapid reset)")
            return
        try:
            ws_key = None
            if any(name == b":protocol" for name, _ in ev.headers):  # RFC 8441
                ws_key = base64.b64encode(os.urandom(16)).decode()
            head = http2.request_head(ev.headers, end, ws_key)
        except http2.StreamError as exc:
            self.rt.log.info("HTTP/2 stream %d from %s: malformed request: %s", sid,
                             self.peer, exc)
            self.reset(sid, ErrorCodes.PROTOCOL_ERROR)
            return
        st = self.streams[sid] = Stream(self, sid, head, end)
        st.glet = gevent.spawn(st.run)

    def tunnel(self, sid: int, live: bool) -> None:
        """Stream ``sid`` became a tunnel (``live``) or ended: while the
        connection carries one, a worker draining for a reload keeps it as
        a tunnel (``net.tunnel.LIVE``, daemon.worker), past graceful_timeout."""
        (self.tunnels.add if live else self.tunnels.discard)(sid)
        if self.glet is not None:
            (LIVE.add if self.tunnels else LIVE.discard)(self.glet)

    def stream_done(self, st: Stream) -> None:
        """A stream's greenlet ended: its unread body's window goes back."""
        if st.sid in self.tunnels:
            self.tunnel(st.sid, False)
        if self.streams.get(st.sid) is st:
            del self.streams[st.sid]
        self.waiting.discard(st)
        for item in st.inbox:
            if isinstance(item, tuple):
                self.consumed(st.sid, item[1])
        st.inbox.clear()
        self.flush()
        if not self.streams and (self.goaway_sent or self.rt.draining):
            self._wake_reader()

    def consumed(self, sid: int, n: int) -> None:
        """``n`` bytes of DATA were read: the windows open again (WINDOW_UPDATE)."""
        if n:
            try:
                self.h2.acknowledge_received_data(n, sid)
            except h2.exceptions.ProtocolError:
                pass
            self.flush()

    # -- frames out (from the streams' greenlets) --------------------------

    def room(self, sid: int) -> int:
        """How many bytes of DATA stream ``sid`` may send now (0: wait)."""
        if self.queued + self.inflight >= BACKLOG:
            return 0
        try:
            window = self.h2.local_flow_control_window(sid)
        except h2.exceptions.ProtocolError:  # StreamClosedError: the client reset it
            raise ClientGone() from None
        return min(window, self.h2.max_outbound_frame_size)

    def send_headers(self, sid: int, fields, end: bool) -> None:
        try:
            self.h2.send_headers(sid, fields, end_stream=end)
        except h2.exceptions.ProtocolError:
            raise ClientGone() from None
        self.flush()

    def send_data(self, sid: int, data: bytes, end: bool) -> None:
        try:
            self.h2.send_data(sid, data, end_stream=end)
        except h2.exceptions.ProtocolError:
            raise ClientGone() from None
        self.queued += len(data)
        self.flush()

    def reset(self, sid: int, code) -> None:
        try:
            self.h2.reset_stream(sid, error_code=code)
        except h2.exceptions.ProtocolError:
            pass
        self.flush()

    def flush(self) -> None:
        """Tell the writer there are frames to send."""
        self.wake.set()

    def _notify(self) -> None:
        for st in list(self.waiting):
            st.window.set()

    def _writer(self) -> None:
        """The only greenlet that writes the socket: what h2 made, in order."""
        timers = Timers()
        send_timeout = self.rt.cfg.server.send_timeout
        try:
            while True:
                self.wake.wait()
                self.wake.clear()
                data = self.h2.data_to_send()
                if self.raw:  # made before what h2 holds now: first
                    data = b"".join(self.raw) + data
                    self.raw.clear()
                if data:
                    self.inflight, self.queued = len(data), 0
                    try:
                        send_within(self.sock, data, self.plain, timers, send_timeout)
                    except OSError:  # socket.timeout included: the client stalled
                        self._writer_failed()
                        return
                    self.inflight = 0
                    self._notify()
                elif self.closing:
                    return
                if self.closing:
                    self.wake.set()  # one more turn: nothing left, then out
        finally:
            timers.close()

    def _writer_failed(self) -> None:
        self.closing = True
        if self.glet is not None and not self.glet.dead:
            self.glet.kill(ClientGone, block=False)
