"""HTTP/1.1 framing, sans-IO: bytes in, parsed heads and body pieces out.

CONTRACT (consumed by ``forkproxy.net.forward`` and ``net.upstream``; keep it):

Heads
    ``find_head_end(buf, start=0) -> int``
        Index just past the ``\\r\\n\\r\\n`` that ends a head in ``buf`` (a
        bytes/bytearray), or -1 when more bytes are needed.  While the head
        is incomplete it raises ``ProtocolError(400)`` as soon as ``buf``
        shows a bare LF (an LF not preceded by CR) or a bare CR, so a client
        that sends ``\\n\\n`` is refused at once instead of waiting for the
        size limit; a complete head is left to the parser, which checks
        every byte of it (400 for a request, 502 for a response).  Leading
        empty lines before a request line (RFC 9112 2.2) are skipped by the
        parser, not here.  ``start`` lets the caller resume scanning.

    ``parse_request_head(head: bytes, limits: Limits) -> Request``
        ``head`` is exactly the bytes up to and including the final CRLFCRLF.
        Validates per RFC 9112 strictly (see "Reject, never guess" below) and
        raises ``ProtocolError`` with the right status: 400 bad syntax,
        414 target longer than ``limits.max_uri_length``, 431 too many headers
        (``limits.max_headers``), 501 unknown transfer coding, 505 version
        other than HTTP/1.0 or HTTP/1.1 (HTTP/0.9 requests, with no version,
        are 400).  Head size (431) is enforced by the caller, which knows how
        many bytes it buffered.

    ``parse_response_head(head: bytes, limits: Limits) -> Response``
        Same for a status line + headers from an upstream; errors raise
        ``ProtocolError(502)`` (a lying backend is a bad gateway).

Framing
    ``request_body_framing(req) -> Framing``
    ``response_body_framing(request_method, resp) -> Framing``
        Decide how the body is delimited (RFC 9112 6.3).  A request with both
        Content-Length and Transfer-Encoding, several differing
        Content-Lengths, an invalid Content-Length, or a Transfer-Encoding
        whose final coding is not ``chunked`` is a ``ProtocolError`` (400;
        501 for a transfer coding we do not know).  A request's
        Transfer-Encoding must be exactly one ``chunked`` (any case): a
        coding before it (``gzip, chunked``, ``identity, chunked``) is 501,
        so a request's ``Framing.codings`` is always empty.  Responses to HEAD, 1xx,
        204 and 304 have no body; a response with neither header reads until
        close; a response with both uses chunked.

    ``make_decoder(framing) -> BodyDecoder``
        ``decoder.feed(data) -> (pieces, leftover)``: consumes ``data``,
        returns the body bytes found (a list; chunk framing removed) and the
        bytes that follow the end of the body (non-empty only once
        ``decoder.done``; they belong to the next message).  Raises
        ``ProtocolError`` on bad chunk sizes, extensions or terminators
        (400 for requests, 502 for responses: the caller passes ``status``
        to ``make_decoder``).  ``decoder.eof()`` is called when the peer
        closed: for a close-delimited body it marks ``done``; otherwise it
        raises ``IncompleteBody``.  ``decoder.trailers`` holds the trailer
        fields of a chunked body once done (a list of (name, value)).
        Memory is bounded: a decoder never holds more than one chunk-size
        line (and one trailer section, bounded by ``limits``) of state.

Serialising
    ``serialize_request_head(method, target, headers) -> bytes`` (always
    ``HTTP/1.1``), ``serialize_response_head(status, reason, headers) ->
    bytes``, ``encode_chunk(data) -> bytes``, ``encode_last_chunk(trailers=())
    -> bytes``.  Headers are a list of ``(name, value)`` str pairs, written
    in order as ``Name: value``; names and values must already be valid.

Keep-alive
    ``wants_keep_alive(version, headers) -> bool``: HTTP/1.1 unless
    ``Connection: close``; HTTP/1.0 only with ``Connection: keep-alive``.
    ``keep_alive(version, tokens)`` is the same from ``connection_tokens``.

Data types
    Header names in ``Request.headers`` / ``Response.headers`` are lower-case
    ``str``; values are ``str`` decoded as latin-1 with surrounding OWS
    removed; order and repeats are kept (a tuple in the immutable
    ``Request``, a list in ``Response``).  ``Request.target`` is the raw
    request target (``str``, ASCII).  ``Request.version`` and
    ``Response.version`` are ``"1.0"`` or ``"1.1"``.

Reject, never guess (DESIGN section 4): obs-fold, whitespace between a field
name and its colon, invalid bytes in names (must be tchar), in values (no
CTLs other than HTAB, no NUL, CR or LF), in methods (tchar) or in the target
(visible ASCII only; origin-form, absolute-form, authority-form for CONNECT,
asterisk-form for OPTIONS), more than one Host header, a missing Host on
HTTP/1.1, bare CR or LF.
"""

from __future__ import annotations

import http
import re
from functools import lru_cache
from dataclasses import dataclass
from urllib.parse import urlsplit
from typing import NamedTuple

__all__ = [
    "ProtocolError", "IncompleteBody", "Limits", "Request", "Response", "Framing",
    "NO_BODY", "CHUNKED", "UNTIL_CLOSE", "KNOWN_CODINGS",
    "find_head_end", "parse_request_head", "parse_response_head",
    "request_body_framing", "response_body_framing", "make_decoder",
    "BodyDecoder", "NoBodyDecoder", "LengthDecoder", "CloseDecoder", "ChunkedDecoder",
    "serialize_request_head", "serialize_response_head", "encode_chunk", "keep_alive",
    "encode_last_chunk", "wants_keep_alive", "connection_tokens", "split_host",
    "reason_phrase", "split_url",
]


# --------------------------------------------------------------------------
# Errors and data types
# --------------------------------------------------------------------------

class ProtocolError(Exception):
    """The peer broke HTTP/1.1 framing rules.

    ``status`` is the response the proxy should send (400/413/414/431/501/505
    to a client, 502 when the peer was an upstream); ``reason`` is a short
    human text for the error log (never sent verbatim as a status reason).
    """

    def __init__(self, status: int, reason: str = "") -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.status} {self.reason}"


class IncompleteBody(Exception):
    """The peer closed before the body's declared end (length or last chunk)."""


class Limits(NamedTuple):
    # A tuple: every remembered head is looked up by (bytes, limits), and a
    # tuple hashes in C where a frozen dataclass runs a Python __hash__.
    max_uri_length: int = 8192
    max_headers: int = 100
    max_head_size: int = 32768


DEFAULT_LIMITS = Limits()


class Request(NamedTuple):
    """A parsed request head, immutable (``headers`` is a tuple): one parse of
    a remembered head is handed to every request that sends those bytes.

    ``host`` is the Host header's host, lower-cased, without its port (None
    when absent); ``framing`` is ``request_body_framing(self)``; ``host_value``,
    ``expect`` and ``upgrade`` are the Host, Expect and Upgrade fields' first
    values (None when absent), ``connection`` the Connection fields' tokens
    (``connection_tokens``): all are found by ``parse_request_head`` in its
    one pass over the fields, so the proxy does not search for them again.
    """

    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]
    host: str | None = None
    framing: "Framing | None" = None
    host_value: str | None = None
    expect: str | None = None
    upgrade: str | None = None
    connection: frozenset[str] = frozenset()

    def get(self, name: str, default: str | None = None) -> str | None:
        """First value of the lower-case header ``name``, or ``default``."""
        for n, v in self.headers:
            if n == name:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        """Every value of the lower-case header ``name``, in order."""
        return [v for n, v in self.headers if n == name]


@dataclass(slots=True)
class Response:
    status: int
    reason: str
    version: str
    headers: list[tuple[str, str]]

    get = Request.get
    get_all = Request.get_all


@dataclass(frozen=True, slots=True)
class Framing:
    """How a body is delimited.

    ``kind`` is one of ``"none"`` (no body), ``"length"`` (exactly ``length``
    bytes; may be 0), ``"chunked"`` or ``"close"`` (until the peer closes;
    responses only).  ``codings`` lists the transfer codings applied *before*
    chunked (e.g. ``("gzip",)`` for ``Transfer-Encoding: gzip, chunked``), or
    for a close-delimited response every coding named; a proxy that strips
    Transfer-Encoding must re-send these or refuse the message.
    """

    kind: str
    length: int = 0
    codings: tuple[str, ...] = ()

    @property
    def carries_body(self) -> bool:
        """True when at least one body byte may follow the head."""
        return self.kind in ("chunked", "close") or (self.kind == "length" and self.length > 0)


NO_BODY = Framing("none")
CHUNKED = Framing("chunked")
UNTIL_CLOSE = Framing("close")

# Codings registered with IANA that we can name; we never decode them, but
# knowing them separates "final coding is not chunked" (400) from "we have no
# idea what this is" (501).
KNOWN_CODINGS = frozenset(
    {"chunked", "gzip", "x-gzip", "deflate", "compress", "x-compress", "identity", "trailers"}
)


# --------------------------------------------------------------------------
# Grammar (RFC 9110 5.6, RFC 9112).  Heads are decoded as latin-1 once and
# matched as str: every byte maps to one code point, so the classes below
# are byte classes.
# --------------------------------------------------------------------------

# Heads up to this size are remembered (parse_request_head): 256 of them at most.
REMEMBERED_HEAD_SIZE = 2048
_TCHAR = r"[-!#$%&'*+.^_`|~0-9A-Za-z]"
_TOKEN = _TCHAR + "+"
_VCHAR_OBS = r"[\x21-\x7e\x80-\xff]"
# A field value: no leading/trailing OWS inside the group, SP/HTAB allowed
# between visible characters; every other CTL (NUL, CR, LF, DEL...) is out.
_FIELD_VALUE = rf"(?:{_VCHAR_OBS}(?:[\t\x20-\x7e\x80-\xff]*{_VCHAR_OBS})?)?"
_FIELD_LINE = rf"({_TOKEN}):[ \t]*({_FIELD_VALUE})[ \t]*\r\n"

_FIELD_RE = re.compile(_FIELD_LINE)
# Anchored at a line start: with bare CR/LF excluded beforehand, a match
# covers exactly one whole line, so "matches == lines" proves every line valid
# in a single findall pass.
_FIELD_AT_LINE_START_RE = re.compile(r"(?<=\n)" + _FIELD_LINE)
_REQUEST_LINE_RE = re.compile(rf"({_TOKEN}) ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])\r\n")
_STATUS_LINE_RE = re.compile(
    r"HTTP/([0-9])\.([0-9]) ([0-9]{3})(?: ([\t\x20-\x7e\x80-\xff]*))?\r\n"
)
_TOKEN_RE = re.compile(_TOKEN)
_DIGITS_RE = re.compile(r"[0-9]+")
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")

# Host = uri-host [ ":" port ]  (RFC 9110 7.2, RFC 3986 3.2.2)
_REG_NAME = r"(?:[-A-Za-z0-9._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*"
_IP_LITERAL = r"\[[0-9A-Fa-f:.]+\]|\[[vV][0-9A-Fa-f]+\.[-A-Za-z0-9._~!$&'()*+,;=:]+\]"
_HOST_RE = re.compile(rf"({_IP_LITERAL}|{_REG_NAME})(?::([0-9]*))?")

# chunk = chunk-size [ chunk-ext ] CRLF;  chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS value ] )
_QUOTED_STRING = r'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_CHUNK_EXT = rf"(?:[ \t]*;[ \t]*{_TOKEN}(?:[ \t]*=[ \t]*(?:{_TOKEN}|{_QUOTED_STRING}))?)*"
_CHUNK_LINE_RE = re.compile(rf"([0-9A-Fa-f]{{1,16}}){_CHUNK_EXT}\r\n")

# A chunk-size line with a long extension is legal but has to end somewhere.
MAX_CHUNK_LINE = 4096
# Content-Length values beyond this are not a body, they are an attack.
MAX_CONTENT_LENGTH = (1 << 63) - 1


# --------------------------------------------------------------------------
# Heads
# --------------------------------------------------------------------------

def _skip_empty_lines(buf) -> int:
    p = 0
    crlf = "\r\n" if isinstance(buf, str) else b"\r\n"
    while buf.startswith(crlf, p):
        p += 2
    return p


def find_head_end(buf, start: int = 0) -> int:
    """Index just past the CRLFCRLF ending the head in ``buf``, or -1.

    Leading empty lines (RFC 9112 2.2) are not mistaken for the end of a
    head: the search starts after them, and the returned index covers them
    (``parse_request_head`` skips them).  Resume with
    ``start=max(0, len(old_buf) - 3)``.  While no end is found, raises
    ``ProtocolError(400)`` on a bare CR or bare LF anywhere in the scanned
    part; a complete head is the parser's to check.
    """
    if buf[:2] == b"\r\n":
        lead = _skip_empty_lines(buf)
        if start < lead:
            start = lead
    idx = buf.find(b"\r\n\r\n", start)
    if idx >= 0:
        return idx + 4
    end = len(buf)
    n_crlf = buf.count(b"\r\n", start, end)
    n_lf = buf.count(b"\n", start, end)
    n_cr = buf.count(b"\r", start, end)
    # An LF at the resume point pairs with the CR just before it.
    if n_lf and start > 0 and buf[start] == 10 and buf[start - 1] == 13:
        n_lf -= 1
    # A CR at the very end may still be followed by its LF.
    if buf[end - 1:end] == b"\r":
        n_cr -= 1
    if n_lf != n_crlf:
        raise ProtocolError(400, "bare LF in head")
    if n_cr != n_crlf:
        raise ProtocolError(400, "bare CR in head")
    return -1


def _diagnose_fields(block: str, status: int) -> ProtocolError:
    """Slow path: say which field line is wrong (error path only)."""
    end = block.find("\r\n\r\n")
    if block != "\r\n" and (end < 0 or end + 4 != len(block)):
        if block.startswith("\r\n") or end < 0:
            return ProtocolError(status, "head does not end with exactly one empty line")
    for line in block.split("\r\n"):
        if "\r" in line or "\n" in line:
            return ProtocolError(status, "bare CR or LF in head")
        if not line:
            continue
        if line[0] in " \t":
            return ProtocolError(status, "obs-fold in header field")
        name, sep, _ = line.partition(":")
        if not sep:
            return ProtocolError(status, "header line without colon")
        if not name:
            return ProtocolError(status, "empty header name")
        if name[-1] in " \t":
            return ProtocolError(status, "whitespace before colon")
        if not _TOKEN_RE.fullmatch(name):
            return ProtocolError(status, "invalid header name")
        if not _FIELD_RE.fullmatch(line + "\r\n"):
            return ProtocolError(status, "invalid character in header value")
    return ProtocolError(status, "malformed header section")


def _parse_fields(text: str, pos: int, limits: Limits, status: int) -> list[tuple[str, str]]:
    # pos follows the start line's CRLF; the head must end at its first CRLFCRLF.
    crlf = text.count("\r\n", pos)
    if (
        text.count("\n", pos) != crlf
        or text.count("\r", pos) != crlf
        or text.find("\r\n\r\n", pos - 2) != len(text) - 4
    ):
        raise _diagnose_fields(text[pos:], status)
    fields = _FIELD_AT_LINE_START_RE.findall(text, pos)
    if len(fields) != crlf - 1:
        raise _diagnose_fields(text[pos:], status)
    if len(fields) > limits.max_headers:
        raise ProtocolError(431 if status == 400 else status, "too many header fields")
    return [(n.lower(), v) for n, v in fields]


def parse_request_head(head: bytes, limits: Limits = DEFAULT_LIMITS) -> Request:
    """Parse and validate a request head (see the module contract)."""
    if len(head) > REMEMBERED_HEAD_SIZE or isinstance(head, str):
        return _parse_request_head(head, limits)
    # Immutable, so the one remembered is handed out: nothing a caller does
    # with its request can reach the next one.
    return _remembered_request_head(bytes(head), limits)


# The same head bytes come again and again: a keep-alive client that polls,
# a health checker, a load generator; a server's answer for one resource
# within one second of its Date.  Parsing is a pure function of the bytes
# (and the limits), so the last heads parsed are remembered by their bytes;
# a head seen once costs one hash and one lookup more.  Refused heads are
# not remembered (lru_cache keeps no exceptions): they are checked each time.
@lru_cache(maxsize=256)
def _remembered_request_head(head: bytes, limits: Limits) -> Request:
    return _parse_request_head(head, limits)


def _parse_request_head(head: bytes, limits: Limits) -> Request:
    text = head.decode("latin-1") if not isinstance(head, str) else head
    pos = _skip_empty_lines(text) if text[:2] == "\r\n" else 0
    m = _REQUEST_LINE_RE.match(text, pos)
    if m is None:
        raise _diagnose_request_line(text, pos, limits)
    method, target, major, minor = m.groups()
    if len(target) > limits.max_uri_length:
        raise ProtocolError(414, "request target too long")
    if major != "1" or minor not in "01":
        raise ProtocolError(505, f"HTTP/{major}.{minor} not supported")
    version = "1.1" if minor == "1" else "1.0"
    headers = _parse_fields(text, m.end(), limits, 400)
    if target[0] != "/" or method == "CONNECT":  # origin-form needs no more checks
        _check_target(method, target)
    hosts = 0
    host = cl = te = expect = upgrade = conn = None
    for n, v in headers:  # one pass for Host, the framing fields and the rare ones
        if n == "host":
            hosts += 1
            host = v
        elif n == "content-length":
            cl = [v] if cl is None else cl + [v]
        elif n == "transfer-encoding":
            te = [v] if te is None else te + [v]
        elif n == "expect":
            if expect is None:
                expect = v
        elif n == "upgrade":
            if upgrade is None:
                upgrade = v
        elif n == "connection":
            conn = (v,) if conn is None else conn + (v,)
    if hosts > 1:
        raise ProtocolError(400, "more than one Host header")
    if hosts == 0:
        if version == "1.1":
            raise ProtocolError(400, "missing Host header")
    host_value = host
    if hosts:
        host = _validate_host(host, 400)[0]
    # Raises on CL/TE conflicts before anything is forwarded.
    return Request(method, target, version, tuple(headers), host,
                   _request_framing(version, cl, te),
                   host_value, expect, upgrade,
                   _NO_TOKENS if conn is None else _tokens_of(conn))


def _diagnose_request_line(text: str, pos: int, limits: Limits) -> ProtocolError:
    end = text.find("\r\n", pos)
    line = text[pos:end]
    parts = line.split(" ")
    if len(parts) == 3 and len(parts[1]) > limits.max_uri_length:
        return ProtocolError(414, "request target too long")
    if len(parts) == 2:
        return ProtocolError(400, "HTTP/0.9 request (no version)")
    if len(parts) == 3 and re.fullmatch(r"HTTP/[0-9]+(\.[0-9]+)?", parts[2]):
        if re.fullmatch(r"HTTP/[0-9]\.[0-9]", parts[2]) is None:
            return ProtocolError(400, "malformed HTTP version")
    if len(parts) != 3:
        return ProtocolError(400, "malformed request line")
    if not _TOKEN_RE.fullmatch(parts[0]):
        return ProtocolError(400, "invalid method")
    if not parts[1] or not re.fullmatch(r"[\x21-\x7e]+", parts[1]):
        return ProtocolError(400, "invalid character in request target")
    return ProtocolError(400, "malformed HTTP version")


def _check_target(method: str, target: str) -> None:
    c = target[0]
    if c == "/":
        if method == "CONNECT":
            raise ProtocolError(400, "CONNECT needs authority-form")
        return
    if target == "*":
        if method != "OPTIONS":
            raise ProtocolError(400, "asterisk-form only for OPTIONS")
        return
    if method == "CONNECT":
        host = target.rpartition(":")
        if not host[1] or not host[2].isdigit() or not host[2].isascii():
            raise ProtocolError(400, "CONNECT target must be host:port")
        h, port = _validate_host(target, 400)
        if not h or port is None:
            raise ProtocolError(400, "CONNECT target must be host:port")
        return
    if _SCHEME_RE.match(target):
        return
    raise ProtocolError(400, "invalid request target form")


def parse_response_head(head: bytes, limits: Limits = DEFAULT_LIMITS) -> Response:
    """Parse and validate a response head from an upstream; errors are 502."""
    if len(head) > REMEMBERED_HEAD_SIZE or isinstance(head, str):
        return _parse_response_head(head, limits)
    r = _remembered_response_head(bytes(head), limits)
    return Response(r.status, r.reason, r.version, list(r.headers))  # a copy, as above


@lru_cache(maxsize=256)
def _remembered_response_head(head: bytes, limits: Limits) -> Response:
    return _parse_response_head(head, limits)


def _parse_response_head(head: bytes, limits: Limits) -> Response:
    text = head.decode("latin-1") if not isinstance(head, str) else head
    m = _STATUS_LINE_RE.match(text)
    if m is None:
        raise ProtocolError(502, "malformed status line")
    major, minor, status, reason = m.groups()
    if major != "1" or minor not in "01":
        raise ProtocolError(502, f"upstream spoke HTTP/{major}.{minor}")
    code = int(status)
    if code < 100:
        raise ProtocolError(502, "status code below 100")
    headers = _parse_fields(text, m.end(), limits, 502)
    return Response(code, reason or "", "1.1" if minor == "1" else "1.0", headers)


# --------------------------------------------------------------------------
# Framing (RFC 9112 6.3)
# --------------------------------------------------------------------------

def _content_length(values: list[str], status: int) -> int:
    if len(values) == 1:  # the usual one plain number: no splitting, no regex
        value = values[0]
        if value.isdigit() and value.isascii() and len(value) < 19:
            return int(value)
    found = None
    for value in values:
        for item in value.split(","):
            item = item.strip(" \t")
            if not _DIGITS_RE.fullmatch(item) or len(item) > 19:
                raise ProtocolError(status, "invalid Content-Length")
            n = int(item)
            if found is not None and n != found:
                raise ProtocolError(status, "differing Content-Length values")
            found = n
    if found is None or found > MAX_CONTENT_LENGTH:
        raise ProtocolError(status, "invalid Content-Length")
    return found


def _transfer_codings(values: list[str], status: int, unknown_status: int) -> list[str]:
    codings = []
    for value in values:
        for item in value.split(","):
            item = item.strip(" \t").lower()
            if not item:
                continue  # empty list elements are legal and ignored (RFC 9110 5.6.1)
            if not _TOKEN_RE.fullmatch(item):
                raise ProtocolError(status, "invalid transfer coding")
            codings.append(item)
    if not codings:
        raise ProtocolError(status, "empty Transfer-Encoding")
    for c in codings:
        if c not in KNOWN_CODINGS:
            raise ProtocolError(unknown_status, f"unknown transfer coding {c!r}")
    if codings.count("chunked") > 1:
        raise ProtocolError(status, "chunked applied more than once")
    return codings


def request_body_framing(req: Request) -> Framing:
    """How the request body is delimited; raises ProtocolError (400/501)."""
    cl = te = None
    for n, v in req.headers:
        if n == "content-length":
            cl = [v] if cl is None else cl + [v]
        elif n == "transfer-encoding":
            te = [v] if te is None else te + [v]
    return _request_framing(req.version, cl, te)


def _request_framing(version: str, cl: list[str] | None, te: list[str] | None) -> Framing:
    if te is not None:
        if version == "1.0":
            raise ProtocolError(400, "Transfer-Encoding in an HTTP/1.0 request")
        if cl is not None:
            raise ProtocolError(400, "both Content-Length and Transfer-Encoding")
        codings = _transfer_codings(te, 400, 501)
        if codings[-1] != "chunked":
            raise ProtocolError(400, "final transfer coding is not chunked")
        if len(codings) > 1:
            # As nginx: a coding before chunked (gzip, identity...) is refused,
            # never passed on; backends that read it differently desync the
            # pooled connection behind it (RFC 9112 6.1: 501).
            raise ProtocolError(501, f"transfer coding {codings[0]!r} before chunked not supported")
        return CHUNKED
    if cl is not None:
        return Framing("length", _content_length(cl, 400))
    return NO_BODY


def response_body_framing(request_method: str, resp: Response) -> Framing:
    """How the response body is delimited; raises ProtocolError(502)."""
    status = resp.status
    if request_method == "HEAD" or status < 200 or status == 204 or status == 304:
        return NO_BODY
    if request_method == "CONNECT" and status < 300:
        return NO_BODY  # the connection becomes a tunnel
    cl = te = None
    for n, v in resp.headers:
        if n == "content-length":
            cl = [v] if cl is None else cl + [v]
        elif n == "transfer-encoding":
            te = [v] if te is None else te + [v]
    if te is not None:
        if cl is not None:
            # RFC 9112 6.3 lets a client prefer chunked; a proxy that guesses
            # here can be desynchronised, so it refuses (DESIGN section 4).
            raise ProtocolError(502, "both Transfer-Encoding and Content-Length")
        if resp.version == "1.0":
            raise ProtocolError(502, "Transfer-Encoding in an HTTP/1.0 response")
        codings = _transfer_codings(te, 502, 502)
        if codings[-1] == "chunked":
            return CHUNKED if len(codings) == 1 else Framing("chunked", 0, tuple(codings[:-1]))
        return Framing("close", 0, tuple(codings))
    if cl is not None:
        return Framing("length", _content_length(cl, 502))
    return UNTIL_CLOSE


# --------------------------------------------------------------------------
# Body decoders
# --------------------------------------------------------------------------

class BodyDecoder:
    """Base of the decoders returned by ``make_decoder``.

    ``feed(data) -> (pieces, leftover)``; ``eof()``; ``done``; ``trailers``.
    Pieces are slices of the fed data (no copies when a whole feed is body).
    """

    __slots__ = ("done", "trailers", "status")

    def __init__(self, status: int) -> None:
        self.done = False
        self.trailers: list[tuple[str, str]] = []
        self.status = status

    def feed(self, data):  # pragma: no cover - abstract
        raise NotImplementedError

    def eof(self) -> None:
        if not self.done:
            raise IncompleteBody("peer closed before the end of the body")


class NoBodyDecoder(BodyDecoder):
    __slots__ = ()

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.done = True

    def feed(self, data):
        return [], data


class LengthDecoder(BodyDecoder):
    __slots__ = ("remaining",)

    def __init__(self, length: int, status: int) -> None:
        super().__init__(status)
        self.remaining = length
        self.done = length == 0

    def feed(self, data):
        remaining = self.remaining
        if remaining == 0:
            return [], data
        n = len(data)
        if n <= remaining:
            self.remaining = remaining - n
            if self.remaining == 0:
                self.done = True
            return ([data] if n else []), b""
        self.remaining = 0
        self.done = True
        return [data[:remaining]], data[remaining:]


class CloseDecoder(BodyDecoder):
    __slots__ = ()

    def feed(self, data):
        if self.done:
            return [], data
        return ([data] if data else []), b""

    def eof(self) -> None:
        self.done = True


# Chunked decoder states, and what each expects next.
_SIZE, _DATA, _DATA_CRLF, _TRAILER, _DONE = range(5)


class ChunkedDecoder(BodyDecoder):
    """RFC 9112 7.1 chunked decoding with bounded state.

    State table (one transition per line or data run):
        _SIZE      chunk-size line ``HEX[ext]CRLF``    -> _DATA, or _TRAILER on 0
        _DATA      ``size`` bytes of data              -> _DATA_CRLF
        _DATA_CRLF exactly CRLF                        -> _SIZE
        _TRAILER   field line CRLF                     -> _TRAILER; empty line -> _DONE
    """

    __slots__ = ("_state", "_remaining", "_line", "_limits", "_trailer_bytes")

    def __init__(self, status: int, limits: Limits = DEFAULT_LIMITS) -> None:
        super().__init__(status)
        self._state = _SIZE
        self._remaining = 0
        self._line = bytearray()
        self._limits = limits
        self._trailer_bytes = 0

    def feed(self, data):
        pieces = []
        if self.done:
            return pieces, data
        pos = 0
        n = len(data)
        while pos < n:
            state = self._state
            if state == _DATA:
                take = self._remaining
                if take >= n - pos:
                    take = n - pos
                    pieces.append(data if pos == 0 else data[pos:])
                else:
                    pieces.append(data[pos:pos + take])
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    self._state = _DATA_CRLF
            elif state == _DATA_CRLF:
                line = self._line
                need = 2 - len(line)
                line += data[pos:pos + need]
                pos += need
                if not b"\r\n".startswith(line):
                    raise ProtocolError(self.status, "chunk data not followed by CRLF")
                if len(line) == 2:
                    line.clear()
                    self._state = _SIZE
            else:
                pos = self._feed_line(data, pos, n)
                if self._state == _DONE:
                    self.done = True
                    return pieces, data[pos:]
        return pieces, b""

    def _feed_line(self, data, pos: int, n: int) -> int:
        line = self._line
        bound = MAX_CHUNK_LINE if self._state == _SIZE else self._limits.max_head_size
        i = data.find(b"\n", pos)
        if i < 0:
            line += data[pos:]
            if len(line) > bound:
                raise ProtocolError(self.status, "chunk size or trailer line too long")
            return n
        line += data[pos:i + 1]
        if len(line) > bound:
            raise ProtocolError(self.status, "chunk size or trailer line too long")
        text = line.decode("latin-1")
        line.clear()
        if self._state == _SIZE:
            m = _CHUNK_LINE_RE.fullmatch(text)
            if m is None:
                raise ProtocolError(self.status, "invalid chunk size line")
            size = int(m.group(1), 16)
            if size:
                self._remaining = size
                self._state = _DATA
            else:
                self._state = _TRAILER
        elif text == "\r\n":
            self._state = _DONE
        else:
            self._trailer_bytes += len(text)
            if self._trailer_bytes > self._limits.max_head_size:
                raise ProtocolError(self.status, "trailer section too large")
            m = _FIELD_RE.fullmatch(text)
            if m is None:
                raise ProtocolError(self.status, "invalid trailer field")
            if len(self.trailers) >= self._limits.max_headers:
                raise ProtocolError(self.status, "too many trailer fields")
            self.trailers.append((m.group(1).lower(), m.group(2)))
        return i + 1


def make_decoder(framing: Framing, status: int = 400, limits: Limits = DEFAULT_LIMITS) -> BodyDecoder:
    """A fresh decoder for ``framing``; errors it raises carry ``status``."""
    kind = framing.kind
    if kind == "length":
        return LengthDecoder(framing.length, status)
    if kind == "chunked":
        return ChunkedDecoder(status, limits)
    if kind == "close":
        return CloseDecoder(status)
    if kind == "none":
        return NoBodyDecoder(status)
    raise ValueError(f"unknown framing kind {kind!r}")


# --------------------------------------------------------------------------
# Serialising
# --------------------------------------------------------------------------

def _fields(headers) -> str:
    if not headers:
        return ""
    return "\r\n".join(map(": ".join, headers)) + "\r\n"


def serialize_request_head(method: str, target: str, headers) -> bytes:
    return f"{method} {target} HTTP/1.1\r\n{_fields(headers)}\r\n".encode("latin-1")


def split_url(url: str) -> tuple[str, str, str, int]:
    """(scheme, authority, origin-form target, port) of an absolute http(s) URL,
    as an operator types it (``forkproxyctl purge`` and ``explain``); the port
    defaults to the scheme's.  ``ValueError`` saying why when it is not one."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"expected a URL such as http://example.com/path, got {url!r}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ValueError(f"invalid port in {url!r}") from None
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, parts.netloc, target, port


def reason_phrase(status: int) -> str:
    """The reason phrase forkproxy writes for its own responses of ``status``
    (RFC 9110's names, e.g. 413 Content Too Large); "Error" when it has none."""
    try:
        return "Content Too Large" if status == 413 else http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def serialize_response_head(status: int, reason: str, headers) -> bytes:
    return f"HTTP/1.1 {status} {reason}\r\n{_fields(headers)}\r\n".encode("latin-1")


def encode_chunk(data) -> bytes:
    """One chunk; empty data encodes to b"" (an empty chunk would end the body)."""
    if not data:
        return b""
    return b"%x\r\n%s\r\n" % (len(data), data)


def encode_last_chunk(trailers=()) -> bytes:
    return b"0\r\n" + _fields(trailers).encode("latin-1") + b"\r\n"


# --------------------------------------------------------------------------
# Keep-alive and Host
# --------------------------------------------------------------------------

def connection_tokens(headers) -> frozenset[str]:
    """Lower-cased tokens of every Connection header."""
    values = tuple(v for n, v in headers if n == "connection")
    return _tokens_of(values) if values else _NO_TOKENS


_NO_TOKENS: frozenset[str] = frozenset()


@lru_cache(maxsize=64)  # a handful of values in practice: keep-alive, close, Upgrade
def _tokens_of(values: tuple[str, ...]) -> frozenset[str]:
    tokens = set()
    for v in values:
        for t in v.split(","):
            t = t.strip(" \t")
            if t:
                tokens.add(t.lower())
    return frozenset(tokens)


def wants_keep_alive(version: str, headers) -> bool:
    return keep_alive(version, connection_tokens(headers))


def keep_alive(version: str, tokens: frozenset[str]) -> bool:
    """``wants_keep_alive`` for a message whose Connection tokens are known."""
    if version == "1.1":
        return "close" not in tokens
    return "keep-alive" in tokens and "close" not in tokens


_VALID_HOSTS: dict[str, tuple[str, int | None]] = {}  # value -> result, for values seen valid


def _validate_host(value: str, status: int) -> tuple[str, int | None]:
    known = _VALID_HOSTS.get(value)
    if known is not None:
        return known
    result = _check_host(value, status)
    if len(_VALID_HOSTS) >= 4096:  # a bound, not an LRU: the common hosts come back at once
        _VALID_HOSTS.clear()
    _VALID_HOSTS[value] = result
    return result


def _check_host(value: str, status: int) -> tuple[str, int | None]:
    m = _HOST_RE.fullmatch(value)
    if m is None:
        raise ProtocolError(status, "invalid Host")
    host, port = m.groups()
    if port:
        p = int(port)
        if p > 65535:
            raise ProtocolError(status, "invalid port in Host")
        return host.lower(), p
    return host.lower(), None


def split_host(value: str) -> tuple[str, int | None]:
    """Validate a Host value; return (lower-cased host, port or None).

    IPv6 literals keep their brackets (``"[::1]"``).  An empty value gives
    ``("", None)`` (RFC 9112 3.2).  Invalid: ``ProtocolError(400)``.
    """
    return _validate_host(value, 400)
