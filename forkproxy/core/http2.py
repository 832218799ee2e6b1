"""HTTP/2 to clients, the pure part: a stream's request fields to the HTTP/1.1
head the request path reads, a response head's fields to HTTP/2 fields, and
the counters that tell a flood from a client (RFC 9113; CVE-2023-44487).

The framing, flow control and HPACK are the ``h2`` library's (``net.h2_conn``);
what forkproxy decides about a stream is here, without I/O:

``request_head(fields, end_stream) -> bytes``
    The pseudo-header fields checked (RFC 9113 8.3.1: ``:method``,
    ``:scheme``, ``:path`` once each and first, ``:authority`` or Host,
    nothing connection-specific, ``te`` only "trailers"), then the request
    as an HTTP/1.1 head: ``:authority`` becomes Host, cookie crumbs are
    joined (8.2.3), and a body without Content-Length is framed chunked
    (the stream's body reader frames its DATA so).  The result goes through
    the same strict parser (``core.http1``) and limits as any HTTP/1.1 head.
    Raises ``StreamError`` (the stream is reset, or answered 400).

``response_fields(status, headers) -> list``
    The fields of an HTTP/2 response head: ``:status`` first, names in
    lower case, the connection-specific ones (Connection, Keep-Alive,
    Transfer-Encoding, Upgrade, Proxy-Connection) left out; a 101 (the
    server took a WebSocket asked by extended CONNECT) is a 200 without
    Sec-WebSocket-Accept.

``upstream_request(head, scheme) -> (fields, length, chunked)``
    HTTP/2 to a server (``net.upstream_h2``): the HTTP/1.1 request head the
    request path made (well formed: forkproxy's own) as HTTP/2 fields:
    ``:method``, ``:scheme``, ``:authority`` (from Host), ``:path``, the
    other fields in lower case without the connection-specific ones and
    Host, and ``te: trailers`` (gRPC's servers want it); with its body's
    Content-Length (None: none) and whether it is chunked.

``upstream_response_head(fields, end_stream, head_request) -> (head, chunked)``
    A server's HTTP/2 response fields as the HTTP/1.1 head the request path
    parses: its Content-Length kept; else a body to come is framed chunked
    (``chunked``: the DATA becomes chunks, the trailers the trailer
    section), and a response that ended with its HEADERS gets
    ``content-length: 0`` (not a 204, 304 or the answer to a HEAD).  None
    for an interim (1xx) response.

``Flood(limit, period)``
    A token bucket of ``limit`` events refilled over ``period`` seconds:
    ``hit(now)`` is True once a connection spends more than that (resets
    of streams, PINGs, SETTINGS): its answer is GOAWAY ENHANCE_YOUR_CALM.
"""

from __future__ import annotations

from http import HTTPStatus

#: The fields HTTP/2 forbids (RFC 9113 8.2.2): a message with one is malformed.
CONNECTION_SPECIFIC = frozenset({"connection", "keep-alive", "proxy-connection",
                                 "transfer-encoding", "upgrade"})
PSEUDO_REQUEST = frozenset({":method", ":scheme", ":authority", ":path", ":protocol"})
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Per connection, each a budget of (events, seconds); past it, GOAWAY.
RESETS = (200, 10.0)    # RST_STREAM from the client (rapid reset, CVE-2023-44487)
PINGS = (50, 10.0)      # PING frames
SETTINGS = (50, 10.0)   # SETTINGS frames


class StreamError(Exception):
    """A stream's request is malformed (RFC 9113 8.1.1): reset it."""


def _text(v) -> str:
    return v.decode("latin-1") if isinstance(v, (bytes, bytearray)) else v


def _pseudo(fields) -> tuple[dict, list]:
    """(pseudo-header fields, the other fields as (name, value) text pairs)."""
    pseudo: dict[str, str] = {}
    regular: list[tuple[str, str]] = []
    for name, value in fields:
        name, value = _text(name), _text(value)
        if name.startswith(":"):
            if regular:
                raise StreamError(f"pseudo-header {name} after a regular field")
            if name not in PSEUDO_REQUEST:
                raise StreamError(f"unknown pseudo-header {name}")
            if name in pseudo:
                raise StreamError(f"pseudo-header {name} repeated")
            pseudo[name] = value
            continue
        if name != name.lower():
            raise StreamError(f"field name {name!r} not in lower case")
        if name in CONNECTION_SPECIFIC:
            raise StreamError(f"connection-specific field {name}")
        if name == "te" and value.strip().lower() != "trailers":
            raise StreamError("te other than trailers")
        regular.append((name, value))
    return pseudo, regular


def request_head(fields, end_stream: bool, ws_key: str | None = None) -> bytes:
    """The HTTP/1.1 head of a stream's request (see the module docstring).

    ``ws_key``: the Sec-WebSocket-Key for an extended CONNECT (RFC 8441:
    ``:protocol`` websocket), which becomes an HTTP/1.1 Upgrade request
    (RFC 6455) with it; without one, such a request is malformed."""
    pseudo, regular = _pseudo(fields)
    method = pseudo.get(":method")
    if not method:
        raise StreamError("no :method")
    upgrade = ""
    if ":protocol" in pseudo:
        if method != "CONNECT" or pseudo[":protocol"].lower() != "websocket" or not ws_key:
            raise StreamError("extended CONNECT (:protocol) other than websocket")
        method, end_stream = "GET", True  # the stream's DATA is the tunnel's, not a body
        upgrade = (f"connection: upgrade\r\nupgrade: websocket\r\n"
                   f"sec-websocket-key: {ws_key}\r\n")
    path = pseudo.get(":path")
    if method == "CONNECT":
        path = pseudo.get(":authority")  # 8.5: the authority form (answered 501 downstream)
        if not path or ":scheme" in pseudo or ":path" in pseudo:
            raise StreamError("CONNECT needs :authority and neither :scheme nor :path")
    else:
        if not pseudo.get(":scheme"):
            raise StreamError("no :scheme")
        if not path:
            raise StreamError("no :path")
    host = pseudo.get(":authority")
    out = []
    cookies = []
    length = False
    for name, value in regular:
        if name == "host":
            if host is None:
                host = value  # 8.3.1: Host stands in for a missing :authority
            continue  # when both are there, :authority wins
        if name == "cookie":
            cookies.append(value)
            continue
        if name == "content-length":
            length = True
        if name == "sec-websocket-key":
            continue  # RFC 8441 has none: the one made for the server is ws_key
        out.append(f"{name}: {value}\r\n")
    if host is None:
        raise StreamError("neither :authority nor host")
    if cookies:
        out.append(f"cookie: {'; '.join(cookies)}\r\n")
    if not end_stream and not length:
        out.append("transfer-encoding: chunked\r\n")  # the DATA frames, framed chunked
    out.append(upgrade)
    for text in (method, path, host):
        if any(c in text for c in " \r\n\0"):
            raise StreamError("a pseudo-header holds a space or a control character")
    return f"{method} {path} HTTP/1.1\r\nhost: {host}\r\n{''.join(out)}\r\n".encode("latin-1")


def response_fields(status: int, headers) -> list[tuple[str, str]]:
    """The HTTP/2 fields of a response head (see the module docstring)."""
    out = [(":status", "200" if status == 101 else str(status))]
    for name, value in headers:
        name = name.lower()
        if name not in CONNECTION_SPECIFIC and name != "sec-websocket-accept":
            out.append((name, value))
    return out


_UPSTREAM_DROPPED = frozenset({b"connection", b"keep-alive", b"proxy-connection",
                               b"transfer-encoding", b"upgrade", b"host", b"te"})


def upstream_request(head: bytes, scheme: bytes) -> tuple[list, int | None, bool]:
    """HTTP/2 fields of an HTTP/1.1 request head (see the module docstring)."""
    lines = head.rstrip(b"\r\n").split(b"\r\n")
    method, target, _ = lines[0].split(b" ", 2)
    fields, authority, length, chunked = [], b"", None, False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip()
        if name == b"host":
            authority = value
        elif name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = True
        if name not in _UPSTREAM_DROPPED:
            fields.append((name, value))
    return ([(b":method", method), (b":scheme", scheme), (b":authority", authority),
             (b":path", target)] + fields + [(b"te", b"trailers")], length, chunked)


def upstream_response_head(fields, end_stream: bool,
                           head_request: bool) -> tuple[bytes, bool] | None:
    """The HTTP/1.1 head of a server's HTTP/2 response (see the module docstring)."""
    status, out, length = 502, [], False
    for name, value in fields:
        if name == b":status":
            status = int(value)
        elif not name.startswith(b":"):
            out.append(b"%s: %s\r\n" % (name, value))
            length = length or name == b"content-length"
    if 100 <= status < 200:
        return None
    chunked = False
    if not length and status not in (204, 304) and not head_request:
        if end_stream:
            out.append(b"content-length: 0\r\n")
        else:
            chunked = True
            out.append(b"transfer-encoding: chunked\r\n")
    reason = _REASONS.get(status, "Unknown").encode()
    return b"HTTP/1.1 %d %s\r\n%s\r\n" % (status, reason, b"".join(out)), chunked


_REASONS = {s.value: s.phrase for s in HTTPStatus}


class Flood:
    """A budget of ``limit`` events per ``period`` seconds (a token bucket)."""

    __slots__ = ("limit", "rate", "tokens", "last")

    def __init__(self, limit: int, period: float, now: float = 0.0):
        self.limit = limit
        self.rate = limit / period
        self.tokens = float(limit)
        self.last = now

    def hit(self, now: float) -> bool:
        """Count one event at ``now``; True when the budget is spent."""
        elapsed = now - self.last
        if elapsed > 0:
            self.tokens = min(self.limit, self.tokens + elapsed * self.rate)
            self.last = now
        self.tokens -= 1
        return self.tokens < 0
