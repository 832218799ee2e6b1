"""A real HTTP/1.1 origin server for tests: ``python backend.py --port P --name NAME``.

Stdlib only (``ThreadingHTTPServer``, one thread per connection, keep-alive
on). Every response carries ``X-Backend: NAME``. Request bodies are always
consumed (Content-Length or chunked) before answering, so keep-alive
connections stay in sync whatever the endpoint.

Endpoints (any method unless said otherwise):

- ``/`` and any unknown path: 200, body ``NAME``.
- ``/echo``: 200 JSON ``{method, path, headers, body_len, body_sha256, backend}``;
  ``path`` is the raw request target, ``headers`` the list of ``[name, value]``
  pairs in the order received; ``peer`` the ``address:port`` the request came from.
- ``/slow?ms=N``: sleeps N ms, then answers like ``/``.
- ``/bytes?n=N[&chunked=1]``: streams N bytes of ``pattern`` (Content-Length,
  or chunked) without holding them in memory.
- ``/upload``: streams the body through sha256; 200 JSON ``{len, sha256}``.
- ``/status/NNN``: answers status NNN (200..599) with a short body; 204 and
  304 (and any answer to HEAD) carry none.
- ``/die``: head with ``Content-Length: 1000``, 10 bytes, then closes
  (``?rst=1``: with a TCP RST instead of a FIN).
- ``/dieheader``: closes the connection before sending anything.
- ``/early``: a ``103 Early Hints`` interim response, then 200 like ``/``.
- ``/etag/...?v=TAG``: 200 with ``ETag: "TAG"`` and body ``version TAG``, or
  304 (no body) when the request's ``If-None-Match`` names ``"TAG"``.
- ``/healthz``: answers the status set by ``/_sethealth?status=N`` (default 200).
- ``/_stats``: JSON ``{requests, by_path, posts, heads}``: request count, counts per
  path (query string removed), sha256 of every POST body in arrival order;
  ``heads``: counts per path of request heads received, counted before the
  body is read (a request whose body never ends is in ``heads`` only).
  ``/_stats``, ``/_reset`` and ``/_sethealth`` are not counted.
- ``/_reset``: clears the stats.
- ``/_setfault?ms=N&reset=1``: from now on every request but these ``/_``
  ones waits N ms before it is answered (``/healthz`` too: a slow server),
  or, with ``reset=1``, is dropped with a TCP RST instead of an answer.
  ``/_setfault`` alone clears both; ``/_reset`` does too.
- ``/_setstatus?code=N&every=K``: from now on every K-th request (K = 1, the
  default: every one) to a path but these ``/_`` ones and ``/healthz`` is
  answered status N (a failing server, or one failing 1 in K).
  ``/_setstatus`` alone clears it; ``/_reset`` does too.

Any request may add response headers with ``hdr=Name:Value`` query
parameters (repeatable), e.g. ``/?hdr=Cache-Control:max-age%3D60``.

SIGTERM exits cleanly with status 0.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import signal
import socket
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

_BLOCK = bytes(range(256)) * 256  # 64 KiB; period 256, so any offset is easy


def pattern(n: int, block: int = 65536):
    """Yield the first n bytes of the endless 0,1,...,255,0,1,... sequence, in pieces."""
    while n > 0:
        k = min(n, block)
        yield _BLOCK[:k]
        n -= k


def pattern_sha256(n: int) -> str:
    """sha256 hex digest of ``pattern(n)``: what a client of ``/bytes?n=N`` should see."""
    h = hashlib.sha256()
    for piece in pattern(n):
        h.update(piece)
    return h.hexdigest()


class _Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        self.requests = 0
        self.by_path: dict[str, int] = {}
        self.posts: list[str] = []
        self.heads: dict[str, int] = {}
        self.health = 200
        self.delay = 0.0  # /_setfault
        self.rst = False
        self.status = 0  # /_setstatus
        self.every = 1
        self.seen = 0

    def snapshot(self):
        with self.lock:
            return {"requests": self.requests, "by_path": dict(self.by_path), "posts": list(self.posts),
                    "heads": dict(self.heads)}


class BadBody(Exception):
    pass


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "forkproxy-test-backend"

    # Every method goes through the same dispatcher.
    def do_GET(self):
        self._dispatch()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = do_GET

    def log_message(self, fmt, *args):
        sys.stderr.write(f"[{self.server.name}] {self.address_string()} {fmt % args}\n")

    # -- body -------------------------------------------------------------

    def _body_pieces(self):
        """Yield the request body in pieces, per its framing."""
        te = self.headers.get("Transfer-Encoding")
        if te is not None:
            if te.strip().lower() != "chunked":
                raise BadBody(f"unsupported transfer-encoding {te!r}")
            while True:
                line = self.rfile.readline(1024)
                if not line.endswith(b"\r\n"):
                    raise BadBody("bad chunk size line")
                size = int(line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline(8192) not in (b"\r\n", b""):
                        pass  # trailers: read and drop
                    return
                while size:
                    piece = self.rfile.read(min(size, 65536))
                    if not piece:
                        raise BadBody("eof in chunk")
                    size -= len(piece)
                    yield piece
                if self.rfile.read(2) != b"\r\n":
                    raise BadBody("missing CRLF after chunk")
        cl = self.headers.get("Content-Length")
        if cl is not None:
            left = int(cl)
            while left:
                piece = self.rfile.read(min(left, 65536))
                if not piece:
                    raise BadBody("eof in body")
                left -= len(piece)
                yield piece

    def _consume_body(self):
        h = hashlib.sha256()
        n = 0
        for piece in self._body_pieces():
            h.update(piece)
            n += len(piece)
        return n, h.hexdigest()

    # -- responses --------------------------------------------------------

    def _extra_headers(self):
        for item in self.query.get("hdr", []):
            name, _, value = item.partition(":")
            if name:
                self.send_header(name.strip(), value.strip())

    def _send(self, status, body=b"", ctype="text/plain; charset=utf-8", headers=()):
        if isinstance(body, str):
            body = body.encode()
        no_body = status in (204, 304) or 100 <= status < 200
        self.send_response(status)
        self.send_header("X-Backend", self.server.name)
        if not no_body:
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self._extra_headers()
        if no_body or self.command == "HEAD":
            self.end_headers()
            return
        # Head and body in one write, as a server sends a small answer: a
        # backend killed mid-load then dies before its answer or after it,
        # never between its head and its body (which no proxy could retry).
        self._headers_buffer.append(b"\r\n")
        self._headers_buffer.append(body)
        self.flush_headers()

    def _json(self, status, obj):
        self._send(status, json.dumps(obj), "application/json")

    def _abort(self, rst=False):
        """Drop the connection now: nothing more is written or read on it."""
        self.close_connection = True
        sock = self.connection
        try:
            if rst:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()

    # -- dispatch ---------------------------------------------------------

    def _dispatch(self):
        st = self.server.stats
        url = urlsplit(self.path)
        path = url.path
        self.query = parse_qs(url.query)
        if path not in ("/_stats", "/_reset", "/_sethealth", "/_setstatus"):
            with st.lock:
                st.heads[path] = st.heads.get(path, 0) + 1
        if path == "/dieheader":
            self._count(path)
            return self._abort(rst="1" in self.query.get("rst", []))
        try:
            body_len, body_sha = self._consume_body()
        except (BadBody, ValueError) as exc:
            self.close_connection = True
            return self._send(400, f"bad request body: {exc}\n", headers=[("Connection", "close")])

        if path == "/_stats":
            return self._json(200, st.snapshot())
        if path == "/_reset":
            with st.lock:
                st.reset()
            return self._json(200, {"ok": True})
        if path == "/_sethealth":
            with st.lock:
                st.health = int(self.query.get("status", ["200"])[0])
            return self._json(200, {"health": st.health})

        if path == "/_setfault":
            with st.lock:
                st.delay = int(self.query.get("ms", ["0"])[0]) / 1000
                st.rst = "1" in self.query.get("reset", [])
            return self._json(200, {"delay": st.delay, "reset": st.rst})
        if path == "/_setstatus":
            with st.lock:
                st.status = int(self.query.get("code", ["0"])[0])
                st.every, st.seen = max(1, int(self.query.get("every", ["1"])[0])), 0
            return self._json(200, {"status": st.status, "every": st.every})
        if st.rst:
            self._count(path)
            return self._abort(rst=True)
        if st.status and path != "/healthz":
            with st.lock:
                st.seen += 1
                fail = st.seen % st.every == 0
            if fail:
                self._count(path)
                return self._send(st.status, f"status {st.status} from {self.server.name}\n")
        if st.delay:
            time.sleep(st.delay)

        self._count(path, body_sha if self.command == "POST" else None)
        name = self.server.name
        if path == "/echo":
            return self._json(
                200,
                {
                    "method": self.command,
                    "path": self.path,
                    "headers": [[k, v] for k, v in self.headers.items()],
                    "body_len": body_len,
                    "body_sha256": body_sha,
                    "backend": name,
                    "peer": "%s:%s" % self.client_address[:2],
                },
            )
        if path == "/upload":
            return self._json(200, {"len": body_len, "sha256": body_sha})
        if path == "/slow":
            time.sleep(int(self.query.get("ms", ["1000"])[0]) / 1000)
            return self._send(200, name)
        if path == "/bytes":
            return self._bytes(int(self.query.get("n", ["0"])[0]), "1" in self.query.get("chunked", []))
        if path.startswith("/status/"):
            try:
                code = int(path[len("/status/") :])
            except ValueError:
                code = 0
            if not 200 <= code <= 599:
                return self._send(400, "status must be 200..599\n")
            return self._send(code, f"status {code} from {name}\n")
        if path == "/die":
            self.send_response(200)
            self.send_header("X-Backend", name)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"x" * 10)
            return self._abort(rst="1" in self.query.get("rst", []))
        if path == "/early":
            # A 103 Early Hints interim response, then the real one.
            self.wfile.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
            return self._send(200, name)
        if path.startswith("/etag/"):
            tag = '"%s"' % self.query.get("v", ["1"])[0]
            if tag in (self.headers.get("If-None-Match") or ""):
                return self._send(304, headers=[("ETag", tag)])
            return self._send(200, f"version {tag}", headers=[("ETag", tag)])
        if path == "/healthz":
            code = st.health
            return self._send(code, f"health {code} from {name}\n")
        return self._send(200, name)

    def _count(self, path, post_sha=None):
        st = self.server.stats
        with st.lock:
            st.requests += 1
            st.by_path[path] = st.by_path.get(path, 0) + 1
            if post_sha is not None:
                st.posts.append(post_sha)

    def _bytes(self, n, chunked):
        self.send_response(200)
        self.send_header("X-Backend", self.server.name)
        self.send_header("Content-Type", "application/octet-stream")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(n))
        self._extra_headers()
        self.end_headers()
        if self.command == "HEAD":
            return
        for piece in pattern(n):
            if chunked:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            else:
                self.wfile.write(piece)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, addr, name):
        self.name = name
        self.stats = _Stats()
        super().__init__(addr, Handler)


class _Stop(BaseException):
    """Raised by the TERM handler. Not an Exception: socketserver's accept path
    catches Exception, and a TERM landing there used to be swallowed (the
    backend kept running until the harness killed it)."""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--name", default="backend")
    args = ap.parse_args(argv)
    server = Server((args.host, args.port), args.name)

    def on_term(signum, frame):
        raise _Stop()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    sys.stderr.write(f"[{args.name}] listening on {args.host}:{args.port}\n")
    sys.stderr.flush()
    try:
        server.serve_forever(poll_interval=0.2)
    except _Stop:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
