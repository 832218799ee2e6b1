"""Route compression end to end: real forkproxy, real clients (curl, requests, raw sockets).

The origin is a small threaded HTTP server run by the test, on its own
port, whose answers are shaped per path (see ``Origin``).
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import socket
import subprocess
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from support.rawhttp import Conn

brotli = pytest.importorskip("brotli")

TEXT = b"".join(b"<p>line %d of a page that compresses well</p>\n" % i for i in range(40000))


def text(n: int) -> bytes:
    return (TEXT * (n // len(TEXT) + 1))[:n]


class Origin:
    """Paths: /text?n=N[&chunked=1|&close=1] (text/html, ETag, Accept-Ranges),
    /gz (already gzip-encoded), /png (image/png), /range (a 206),
    /notransform (Cache-Control: no-transform), /vary (Vary: Cookie),
    /stream (a first chunk, then waits on ``release`` before the last),
    /negotiated (gzip from the origin itself when accepted, Vary, cacheable)."""

    def __init__(self):
        self.release = threading.Event()
        self.negotiated = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.addr = f"127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        origin = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                url = urlsplit(self.path)
                q = parse_qs(url.query)
                path = url.path
                extra = []
                ctype = "text/html; charset=utf-8"
                status = 200
                if path == "/text":
                    body = text(int(q.get("n", ["100000"])[0]))
                    extra = [("ETag", '"v1"'), ("Accept-Ranges", "bytes")]
                    if "cc" in q:
                        extra.append(("Cache-Control", "max-age=60"))
                    if "chunked" in q:
                        return self._chunked(body, ctype)
                    if "close" in q:
                        self.send_response(200)
                        self.send_header("Content-Type", ctype)
                        self.send_header("Connection", "close")
                        self.end_headers()
                        if self.command != "HEAD":
                            self.wfile.write(body)
                        self.close_connection = True
                        return
                elif path == "/gz":
                    body = gzip.compress(text(50000))
                    extra = [("Content-Encoding", "gzip")]
                elif path == "/negotiated":  # the origin compresses itself
                    origin.negotiated += 1
                    body = text(50000)
                    extra = [("Vary", "Accept-Encoding"), ("Cache-Control", "max-age=60")]
                    if "gzip" in (self.headers.get("Accept-Encoding") or ""):
                        body = gzip.compress(body)
                        extra.append(("Content-Encoding", "gzip"))
                elif path == "/png":
                    body = text(50000)
                    ctype = "image/png"
                elif path == "/range":
                    body = text(50000)[:20000]
                    status = 206
                    extra = [("Content-Range", "bytes 0-19999/50000")]
                elif path == "/notransform":
                    body = text(50000)
                    extra = [("Cache-Control", "no-transform")]
                elif path == "/vary":
                    body = text(50000)
                    extra = [("Vary", "Cookie")]
                elif path == "/stream":
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    first = b"first part\n"
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(first), first))
                    self.wfile.flush()
                    origin.release.wait(30)
                    last = b"last part\n"
                    self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(last), last))
                    return
                else:
                    body = b"not found\n"
                    status = 404
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in extra:
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_HEAD = do_GET

            def _chunked(self, body, ctype):
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("ETag", '"v1"')
                self.end_headers()
                if self.command == "HEAD":
                    return
                for i in range(0, len(body), 7000):
                    piece = body[i:i + 7000]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.write(b"0\r\n\r\n")

        return H


@pytest.fixture(scope="module")
def origin():
    o = Origin()
    yield o
    o.stop()


@pytest.fixture(scope="module")
def proxy(origin, tmp_path_factory):
    from support.runner import ForkProxy
    from support.procs import free_port
    port = free_port()
    body = f"""
[[listener]]
name = "web"
bind = "127.0.0.1:{port}"

[[route]]
path = "/plain/"
pool = "app"

[[route]]
pool = "app"
compress = {{ types = ["text/*", "application/json"], min_size = "1k" }}

[pool.app]
servers = [{{ addr = "{origin.addr}" }}]
"""
    fp = ForkProxy(tmp_path_factory.mktemp("fp"), body)
    fp.start()
    try:
        fp.wait_ready()
        yield port
    finally:
        fp.stop()


def url(port, path):
    return f"http://127.0.0.1:{port}{path}"


def test_requests_decodes_gzip_and_brotli(proxy):
    for accept, coding in (("gzip", "gzip"), ("br", "br"), ("gzip, br", "br"),
                           ("br;q=0.5, gzip", "gzip")):
        r = requests.get(url(proxy, "/text?n=200000"), headers={"Accept-Encoding": accept},
                         timeout=10)
        assert r.status_code == 200
        assert r.headers["Content-Encoding"] == coding, accept
        assert r.content == text(200000)
        assert "Accept-Encoding" in r.headers["Vary"]
        assert r.headers["ETag"] == 'W/"v1"'
        assert "Content-Length" not in r.headers and "Accept-Ranges" not in r.headers
        assert r.headers["Transfer-Encoding"] == "chunked"
        raw = requests.get(url(proxy, "/text?n=200000"), headers={"Accept-Encoding": accept},
                           timeout=10, stream=True).raw.read(decode_content=False)
        assert len(raw) < 200000 / 10  # it is compressed on the wire


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
@pytest.mark.parametrize("accept, coding", [(None, "br"), ("gzip", "gzip")])
def test_curl_compressed(proxy, tmp_path, accept, coding):
    if coding == "br" and "brotli" not in subprocess.run(["curl", "--version"], capture_output=True,
                                                         text=True).stdout:
        pytest.skip("this curl has no brotli")
    out = tmp_path / "body"
    argv = ["curl", "-sS", "--compressed", "-D", "-", "-o", str(out), url(proxy, "/text?n=300000&chunked=1")]
    if accept:
        argv[1:1] = ["-H", f"Accept-Encoding: {accept}"]
    head = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout.lower()
    assert f"content-encoding: {coding}" in head
    assert out.read_bytes() == text(300000)


def test_identity_when_not_accepted_but_vary_still_added(proxy):
    for accept in ("identity", "gzip;q=0", "deflate"):
        r = requests.get(url(proxy, "/text?n=50000"), headers={"Accept-Encoding": accept}, timeout=10)
        assert "Content-Encoding" not in r.headers
        assert r.headers["Content-Length"] == "50000"
        assert r.headers["ETag"] == '"v1"'
        assert r.headers["Vary"] == "Accept-Encoding"
        assert r.content == text(50000)


@pytest.mark.parametrize("path", ["/gz", "/png", "/range", "/notransform", "/text?n=500",
                                  "/plain/x"])
def test_left_as_it_is(proxy, path):
    with Conn(proxy) as c:
        c.send(f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip, br\r\n\r\n".encode())
        r = c.reply()
    if path == "/gz":
        assert r.headers["Content-Encoding"] == "gzip"
        assert gzip.decompress(r.body) == text(50000)  # not compressed twice
    else:
        assert r.headers["Content-Encoding"] is None, path
        assert r.headers["Content-Length"] == str(len(r.body))
    if path in ("/png", "/plain/x", "/gz"):
        assert r.headers["Vary"] is None


def test_head_is_not_compressed(proxy):
    r = requests.head(url(proxy, "/text?n=50000"), headers={"Accept-Encoding": "gzip"}, timeout=10)
    assert r.headers.get("Content-Encoding") is None
    assert r.headers["Content-Length"] == "50000"


def test_existing_vary_is_extended(proxy):
    r = requests.get(url(proxy, "/vary"), headers={"Accept-Encoding": "gzip"}, timeout=10)
    assert r.headers["Vary"] == "Cookie, Accept-Encoding"
    assert r.content == text(50000)


@pytest.mark.parametrize("path", ["/text?n=300000&chunked=1", "/text?n=300000&close=1"])
def test_chunked_and_close_delimited_origins(proxy, path):
    r = requests.get(url(proxy, path), headers={"Accept-Encoding": "gzip"}, timeout=10)
    assert r.headers["Content-Encoding"] == "gzip"
    assert r.content == text(300000)


def test_http10_client_gets_a_close_delimited_compressed_body(proxy):
    with Conn(proxy) as c:
        c.send(b"GET /text?n=100000 HTTP/1.0\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n")
        raw = c.read_until_close(limit=1 << 22)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"content-encoding: gzip" in head.lower()
    assert b"transfer-encoding" not in head.lower() and b"content-length" not in head.lower()
    assert gzip.decompress(body) == text(100000)


def test_keep_alive_across_compressed_responses(proxy):
    """Several compressed responses, big and streamed, on one client connection."""
    with requests.Session() as s:
        for n in (5000, 2_000_000, 7000):
            r = s.get(url(proxy, f"/text?n={n}"), headers={"Accept-Encoding": "gzip, br"},
                      timeout=20)
            assert hashlib.sha256(r.content).digest() == hashlib.sha256(text(n)).digest()


def test_streams_without_waiting_for_the_end(proxy, origin):
    """The first part reaches the client, decoded, while the origin still holds the last."""
    origin.release.clear()
    sock = socket.create_connection(("127.0.0.1", proxy), timeout=10)
    try:
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n")
        d = zlib.decompressobj(31)
        got, raw = b"", b""
        while b"first part\n" not in got:
            data = sock.recv(65536)
            assert data, "closed before the first part"
            raw += data
            if b"\r\n\r\n" in raw:
                head, _, rest = raw.partition(b"\r\n\r\n")
                got = d.decompress(_dechunk_partial(rest))
                d = zlib.decompressobj(31)
        assert b"content-encoding: gzip" in head.lower()
        assert b"last part" not in got
        origin.release.set()
        raw += _read_to_last_chunk(sock)
        body = _dechunk_partial(raw.partition(b"\r\n\r\n")[2])
        assert gzip.decompress(body) == b"first part\nlast part\n"
    finally:
        sock.close()


def _dechunk_partial(data: bytes) -> bytes:
    """The chunk payloads of a (possibly incomplete) chunked body."""
    out = []
    while True:
        line, sep, rest = data.partition(b"\r\n")
        if not sep:
            break
        size = int(line.split(b";")[0], 16)
        if size == 0 or len(rest) < size:
            out.append(rest[:size])
            break
        out.append(rest[:size])
        data = rest[size + 2:]
    return b"".join(out)


def _read_to_last_chunk(sock) -> bytes:
    raw = b""
    while not raw.endswith(b"0\r\n\r\n"):
        data = sock.recv(65536)
        if not data:
            break
        raw += data
    return raw


@pytest.fixture(scope="module")
def cached_proxy(origin, tmp_path_factory):
    """compress on a route with cache = true (the in-process store)."""
    from support.configs import one_pool
    from support.procs import free_port
    from support.runner import ForkProxy
    port = free_port()
    body = "[cache]\nservers = []\n" + one_pool(
        port, [origin.addr], route_extra='cache = true\ncompress = { types = ["text/*"] }',
        pool="app")
    fp = ForkProxy(tmp_path_factory.mktemp("fpc"), body, server={"workers": 1})
    fp.start()
    try:
        fp.wait_ready()
        yield port
    finally:
        fp.stop()


def test_cache_stores_the_origin_representation(cached_proxy):
    """A compressed miss leaves the uncompressed body in the cache: every later
    client gets a body it can decode, whatever it accepts."""
    path = "/text?n=60000&cc=1"
    for accept in ("gzip", "identity", "br", "gzip", "identity"):
        r = requests.get(url(cached_proxy, path), headers={"Accept-Encoding": accept}, timeout=10)
        assert r.status_code == 200
        assert r.content == text(60000), accept
        if accept == "identity":
            assert "Content-Encoding" not in r.headers


def test_cache_keys_the_origins_own_encodings_apart(cached_proxy, origin):
    """An origin that varies by Accept-Encoding: each variant stored and served to its own."""
    before = origin.negotiated
    for _ in range(2):
        for accept in ("gzip", "identity"):
            raw = requests.get(url(cached_proxy, "/negotiated"), headers={"Accept-Encoding": accept},
                               timeout=10, stream=True)
            data = raw.raw.read(decode_content=False)
            if accept == "gzip":
                assert raw.headers["Content-Encoding"] == "gzip"
                assert gzip.decompress(data) == text(50000)  # compressed once, by the origin
            else:
                assert raw.headers.get("Content-Encoding") is None
                assert data == text(50000)
    assert origin.negotiated - before == 2  # one miss per variant, then hits
