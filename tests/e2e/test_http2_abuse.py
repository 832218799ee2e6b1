"""HTTP/2 abuse, end to end, with the ``h2`` library as a raw client over a
socket: rapid reset (CVE-2023-44487), CONTINUATION flood, PING and SETTINGS
floods, an HPACK bomb, a stream whose window stays shut; after each the same
worker (one) serves other connections.  Also: the advertised limits, a body
without a length, and GOAWAY on drain with the stream taken finished.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time

import h2.config
import h2.connection
import hpack
import pytest
from h2.settings import SettingCodes
from hyperframe.frame import (ContinuationFrame, DataFrame, Frame, GoAwayFrame, HeadersFrame,
                              PingFrame, RstStreamFrame, SettingsFrame, WindowUpdateFrame)

from support.configs import one_pool
from support.procs import free_port, wait_until

ENHANCE_YOUR_CALM = 11


class Client:
    """An HTTP/2 client connection whose frames in are read raw (hyperframe),
    so that a GOAWAY does not stop it from reading what follows."""

    def __init__(self, port, settings=None, ack=True):
        self.ack = ack  # acknowledge the server's SETTINGS
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        if settings:
            self.h2.local_settings = h2.settings.Settings(client=True, initial_values=settings)
        self.h2.initiate_connection()
        self.flush()
        self.buf = b""
        self.decoder = hpack.Decoder()
        self.decoder.max_header_list_size = 1 << 30

    def flush(self):
        self.send_raw(self.h2.data_to_send())

    def send_raw(self, data: bytes):
        try:
            self.sock.sendall(data)
        except OSError:
            pass  # the server may have closed already

    def request(self, path, method="GET", end=True, extra=()):
        sid = self.h2.get_next_available_stream_id()
        self.h2.send_headers(sid, [(":method", method), (":scheme", "http"), (":path", path),
                                   (":authority", "localhost")] + list(extra), end_stream=end)
        self.flush()
        return sid

    def frames(self, until=None, timeout=10.0):
        """Frames in, until ``until(frame)`` is true (then returned) or the close."""
        deadline = time.monotonic() + timeout
        while True:
            while len(self.buf) >= 9:
                f, length = Frame.parse_frame_header(memoryview(self.buf[:9]))
                if len(self.buf) < 9 + length:
                    break
                f.parse_body(memoryview(self.buf[9:9 + length]))
                self.buf = self.buf[9 + length:]
                if isinstance(f, HeadersFrame):
                    f.fields = self.decoder.decode(f.data)
                if isinstance(f, SettingsFrame) and "ACK" not in f.flags and self.ack:
                    self.send_raw(SettingsFrame(0, flags=["ACK"]).serialize())
                if until is not None and until(f):
                    return f
            left = deadline - time.monotonic()
            assert left > 0, "timed out waiting for a frame"
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                return None
            self.buf += data

    def goaway(self):
        return self.frames(lambda f: isinstance(f, GoAwayFrame))

    def close(self):
        self.sock.close()


def start(forkproxy_factory, backend, server=None, route_extra=""):
    port = free_port()
    fp = forkproxy_factory(one_pool(port, [backend.addr], listener_extra="http2 = true",
                                    route_extra=route_extra),
                           server={"workers": 1, **(server or {})})
    return fp, port


def still_serving(fp, port, pid):
    out = subprocess.run(["curl", "-sS", "--max-time", "10", "--http2-prior-knowledge",
                          "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
                          f"http://127.0.0.1:{port}/"], capture_output=True, text=True, timeout=20)
    assert out.stdout == "2 200", out.stderr
    assert fp.worker_pids() == [pid]


@pytest.fixture
def site(backend_factory, forkproxy_factory):
    b = backend_factory()
    fp, port = start(forkproxy_factory, b)
    return fp, port, fp.worker_pids()[0], b


@pytest.mark.parametrize("buffering", [True, False])
def test_limits_are_advertised_and_a_body_without_length_goes_chunked(backend_factory,
                                                                      forkproxy_factory,
                                                                      buffering):
    b = backend_factory()
    fp, port = start(forkproxy_factory, b, server={"http2_max_concurrent_streams": 7,
                                                  "http2_header_table_size": "1k"},
                     route_extra=f"request_buffering = {str(buffering).lower()}")
    c = Client(port)
    s = c.frames(lambda f: isinstance(f, SettingsFrame) and "ACK" not in f.flags)
    assert s.settings[SettingCodes.MAX_CONCURRENT_STREAMS] == 7
    assert s.settings[SettingCodes.HEADER_TABLE_SIZE] == 1024
    assert s.settings[SettingCodes.MAX_HEADER_LIST_SIZE] == 32768
    sid = c.request("/echo", "POST", end=False)
    c.h2.send_data(sid, b"a" * 1000)
    c.h2.send_data(sid, b"b" * 2000, end_stream=True)
    c.flush()
    head = c.frames(lambda f: isinstance(f, HeadersFrame) and f.stream_id == sid)
    assert (":status", "200") in head.fields
    body = b""
    while True:
        f = c.frames(lambda f: isinstance(f, DataFrame) and f.stream_id == sid)
        body += f.data
        if "END_STREAM" in f.flags:
            break
    seen = json.loads(body)
    assert seen["body_len"] == 3000, seen
    fields = {k.lower(): v for k, v in seen["headers"]}
    if buffering:  # read whole first, then sent with its length
        assert fields["content-length"] == "3000"
    else:  # streamed as it comes: chunked
        assert fields["transfer-encoding"] == "chunked"
    c.close()


def test_settings_not_acknowledged_and_idle_connections_end_with_goaway(backend_factory,
                                                                        forkproxy_factory):
    b = backend_factory()
    fp, port = start(forkproxy_factory, b, server={"http2_settings_timeout": "1s",
                                                  "keepalive_timeout": "2s"})
    pid = fp.worker_pids()[0]
    c = Client(port, ack=False)
    g = c.goaway()
    assert g is not None and g.error_code == 4  # SETTINGS_TIMEOUT
    assert c.frames() is None
    c.close()
    c = Client(port)  # acknowledges, then stays idle past keepalive_timeout
    g = c.goaway()
    assert g is not None and g.error_code == 0
    assert c.frames() is None
    c.close()
    still_serving(fp, port, pid)


def test_rapid_reset_ends_the_connection(site):
    fp, port, pid, b = site
    c = Client(port)
    for _ in range(600):
        sid = c.request("/slow?ms=2000")
        c.h2.reset_stream(sid)
        c.send_raw(c.h2.data_to_send())
    g = c.goaway()
    assert g is not None and g.error_code == ENHANCE_YOUR_CALM
    c.close()
    assert b.stats()["requests"] < 400  # the streams reset were not all forwarded
    still_serving(fp, port, pid)
    assert "rapid reset" in fp.error_log()


def test_continuation_flood_ends_the_connection(site):
    fp, port, pid, _ = site
    c = Client(port)
    block = hpack.Encoder().encode([(":method", "GET"), (":scheme", "http"), (":path", "/"),
                                    (":authority", "x")])
    c.send_raw(HeadersFrame(1, data=block).serialize())  # no END_HEADERS
    for _ in range(40):
        c.send_raw(ContinuationFrame(1, data=b"\x40\x01a\x01b" * 3000).serialize())
    g = c.goaway()
    assert g is not None and g.error_code != 0
    c.close()
    still_serving(fp, port, pid)


@pytest.mark.parametrize("frame", [PingFrame(0, opaque_data=b"12345678"), SettingsFrame(0)],
                         ids=["ping", "settings"])
def test_ping_and_settings_floods_end_the_connection(site, frame):
    fp, port, pid, _ = site
    c = Client(port)
    c.send_raw(frame.serialize() * 500)
    g = c.goaway()
    assert g is not None and g.error_code == ENHANCE_YOUR_CALM
    c.close()
    still_serving(fp, port, pid)


def test_hpack_bomb_is_bounded_by_the_header_list_size(site):
    fp, port, pid, _ = site
    c = Client(port)
    # One 4 KB field, indexed once, referenced 64 times: a small block, 256 KB decoded.
    c.request("/", extra=[("x-bomb", "a" * 4000)] * 64)
    g = c.goaway()
    assert g is not None and g.error_code != 0
    c.close()
    still_serving(fp, port, pid)


def test_a_stream_whose_window_stays_shut_is_reset_without_holding_the_worker(
        backend_factory, forkproxy_factory):
    b = backend_factory()
    # send_timeout must outlast, by far, what the test does before it wants
    # the reset (a curl run, a 100 KB stream): a loaded machine is slow.
    fp, port = start(forkproxy_factory, b, server={"send_timeout": "6s"})
    pid = fp.worker_pids()[0]
    c = Client(port, settings={SettingCodes.INITIAL_WINDOW_SIZE: 0})
    sid = c.request("/bytes?n=200000")
    head = c.frames(lambda f: isinstance(f, HeadersFrame) and f.stream_id == sid)
    assert (":status", "200") in head.fields
    still_serving(fp, port, pid)  # meanwhile, others are served
    # ... and on the same connection, a stream whose window opens goes through.
    other = c.request("/bytes?n=100000")
    c.send_raw(WindowUpdateFrame(other, window_increment=200000).serialize()
               + WindowUpdateFrame(0, window_increment=200000).serialize())
    got = 0
    while True:
        f = c.frames(lambda f: isinstance(f, (DataFrame, RstStreamFrame))
                     and f.stream_id in (other, sid))
        assert f.stream_id == other, f  # the shut stream is not reset before send_timeout
        got += len(f.data)
        if "END_STREAM" in f.flags:
            break
    assert got == 100000
    rst = c.frames(lambda f: isinstance(f, RstStreamFrame) and f.stream_id == sid)
    assert rst is not None
    # The connection itself goes on.
    c.send_raw(PingFrame(0, opaque_data=b"abcdefgh").serialize())
    assert c.frames(lambda f: isinstance(f, PingFrame) and "ACK" in f.flags) is not None
    c.close()
    still_serving(fp, port, pid)


def test_a_draining_worker_sends_goaway_and_finishes_its_streams(site):
    fp, port, pid, b = site
    idle = Client(port)  # never handed to the new generation (net.handoff): GOAWAY, close
    idle.frames(lambda f: isinstance(f, SettingsFrame) and "ACK" in f.flags)
    c = Client(port)
    # The answer must still be on its way when the worker drains: the old
    # worker is retired only once the new generation has booted, which a
    # loaded machine may take seconds to do.
    sid = c.request("/slow?ms=5000")
    c.frames(lambda f: isinstance(f, SettingsFrame) and "ACK" in f.flags)
    wait_until(lambda: b.stats()["by_path"].get("/slow") == 1,
               what="the stream taken (at the server) before the reload")
    fp.reload()
    g = idle.goaway()
    assert g is not None and g.error_code == 0 and g.last_stream_id == 0
    assert idle.frames() is None
    idle.close()
    g = c.goaway()
    assert g is not None and g.error_code == 0 and g.last_stream_id == sid
    head = c.frames(lambda f: isinstance(f, HeadersFrame) and f.stream_id == sid)
    assert (":status", "200") in head.fields
    assert c.frames(lambda f: isinstance(f, DataFrame) and "END_STREAM" in f.flags) is not None
    assert c.frames() is None  # then the old worker closes the connection
    c.close()


WS_SERVER = r"""
import sys
from websockets.sync.server import serve

def echo(ws):
    for msg in ws:
        ws.send(msg)

with serve(echo, "127.0.0.1", int(sys.argv[1])) as server:
    server.serve_forever()
"""


def ws_frame(text: str) -> bytes:
    """A masked client text frame (RFC 6455 5.2), payload under 126 bytes."""
    data, mask = text.encode(), b"\x01\x02\x03\x04"
    return bytes([0x81, 0x80 | len(data)]) + mask + bytes(
        b ^ mask[i % 4] for i, b in enumerate(data))


@pytest.fixture
def ws_site(tmp_path, forkproxy_factory):
    """forkproxy (one worker, graceful_timeout 1s) before a websockets echo server."""
    pytest.importorskip("websockets")
    import sys

    from support.procs import Proc, wait_for_port
    from support.runner import _child_env

    ws_port = free_port()
    proc = Proc([sys.executable, "-c", WS_SERVER, str(ws_port)], tmp_path / "ws", name="ws",
                env=_child_env())
    try:
        wait_for_port(ws_port, proc=proc)
        port = free_port()
        fp = forkproxy_factory(one_pool(port, [f"127.0.0.1:{ws_port}"],
                                        listener_extra="http2 = true"),
                               server={"workers": 1, "graceful_timeout": "1s"})
        yield fp, port
    finally:
        proc.stop()


def ws_open(c) -> int:
    """An extended CONNECT for a WebSocket on client ``c``; its stream id."""
    s = c.frames(lambda f: isinstance(f, SettingsFrame) and "ACK" not in f.flags)
    assert s.settings[SettingCodes.ENABLE_CONNECT_PROTOCOL] == 1
    c.frames(lambda f: isinstance(f, SettingsFrame) and "ACK" in f.flags)
    # h2's client sends :protocol only once the server allowed it: it did.
    sid = c.h2.get_next_available_stream_id()
    c.h2.send_headers(sid, [(":method", "CONNECT"), (":protocol", "websocket"),
                            (":scheme", "http"), (":path", "/chat"),
                            (":authority", "localhost"), ("sec-websocket-version", "13")])
    c.flush()
    head = c.frames(lambda f: isinstance(f, HeadersFrame) and f.stream_id == sid)
    assert (":status", "200") in head.fields, head.fields
    return sid


def ws_echo(c, sid, text):
    c.h2.send_data(sid, ws_frame(text))
    c.flush()
    got = c.frames(lambda f: isinstance(f, DataFrame) and f.stream_id == sid and f.data)
    assert got.data == bytes([0x81, len(text)]) + text.encode()


def test_websocket_over_an_h2_stream_extended_connect(ws_site):
    fp, port = ws_site
    c = Client(port)
    sid = ws_open(c)
    for text in ("hello", "again"):
        ws_echo(c, sid, text)
    c.h2.end_stream(sid)  # the client's half-close goes to the server as a FIN
    c.flush()
    assert c.frames(lambda f: (isinstance(f, DataFrame) and "END_STREAM" in f.flags
                               and f.stream_id == sid)
                    or (isinstance(f, RstStreamFrame) and f.stream_id == sid)) is not None
    c.close()
    wait_until(lambda: re.search(r'"GET /chat HTTP/2\.0" 101', fp.access_log()),
               what="the tunnel's access-log line, written as it ends")


def test_a_websocket_stream_outlives_graceful_timeout_after_a_reload(ws_site):
    """As an HTTP/1.1 tunnel (test_websocket.py): the old worker keeps the
    connection that carries it past graceful_timeout (1s)."""
    fp, port = ws_site
    c = Client(port)
    sid = ws_open(c)
    ws_echo(c, sid, "before")
    fp.reload_and_wait()
    fp.wait_error_log("keeping 1 tunnels until they end")
    for i in range(3):
        ws_echo(c, sid, f"after {i}")
    c.close()


def test_a_stream_reset_mid_response_leaves_the_connection_serving(site):
    fp, port, pid, b = site
    c = Client(port)
    sid = c.request("/bytes?n=20000000")
    c.frames(lambda f: isinstance(f, DataFrame) and f.stream_id == sid)
    c.h2.reset_stream(sid)
    c.flush()
    other = c.request("/echo")
    head = c.frames(lambda f: isinstance(f, HeadersFrame) and f.stream_id == other)
    assert (":status", "200") in head.fields
    c.close()
    still_serving(fp, port, pid)
