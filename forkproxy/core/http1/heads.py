"""Request and response heads: find where one ends, parse and validate it.

``find_head_end(buf, start=0) -> int``
    Index just past the ``\\r\\n\\r\\n`` that ends a head in ``buf`` (a
    bytes/bytearray), or -1 when more bytes are needed.  While the head is
    incomplete it raises ``ProtocolError(400)`` as soon as ``buf`` shows a
    bare LF (an LF not preceded by CR) or a bare CR, so a client that sends
    ``\\n\\n`` is refused at once instead of waiting for the size limit; a
    complete head is left to the parser, which checks every byte of it (400
    for a request, 502 for a response).  Leading empty lines before a
    request line (RFC 9112 2.2) are skipped by the parser, not here.
    ``start`` lets the caller resume scanning.

``parse_request_head(head: bytes, limits: Limits) -> Request``
    ``head`` is exactly the bytes up to and including the final CRLFCRLF.
    Validates per RFC 9112 strictly (see "Reject, never guess" below) and
    raises ``ProtocolError`` with the right status: 400 bad syntax, 414
    target longer than ``limits.max_uri_length``, 431 too many headers
    (``limits.max_headers``), 501 unknown transfer coding, 505 version other
    than HTTP/1.0 or HTTP/1.1 (HTTP/0.9 requests, with no version, are 400).
    Head size (431) is enforced by the caller, which knows how many bytes it
    buffered.  The request's body framing is decided here too
    (``framing.request_body_framing``), so a CL/TE conflict is refused
    before anything is forwarded.

``parse_response_head(head: bytes, limits: Limits) -> Response``
    Same for a status line + headers from an upstream; errors raise
    ``ProtocolError(502)`` (a lying backend is a bad gateway).

Reject, never guess (DESIGN section 4): obs-fold, whitespace between a field
name and its colon, invalid bytes in names (must be tchar), in values (no
CTLs other than HTAB, no NUL, CR or LF), in methods (tchar) or in the target
(visible ASCII only; origin-form, absolute-form, authority-form for CONNECT,
asterisk-form for OPTIONS), more than one Host header, a missing Host on
HTTP/1.1, bare CR or LF.
"""

from __future__ import annotations

import re
from functools import lru_cache

from .connection import _NO_TOKENS, _tokens_of
from .framing import _request_framing
from .grammar import (_FIELD_AT_LINE_START_RE, _FIELD_RE, _REQUEST_LINE_RE,
                      _STATUS_LINE_RE, _TOKEN_RE)
from .messages import DEFAULT_LIMITS, Limits, ProtocolError, Request, Response
from .targets import _check_target, _validate_host


# Heads up to this size are remembered (parse_request_head): 256 of them at most.
REMEMBERED_HEAD_SIZE = 2048


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
