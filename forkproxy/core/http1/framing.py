"""How a message's body is delimited (RFC 9112 6.3).

``request_body_framing(req) -> Framing``
``response_body_framing(request_method, resp) -> Framing``
    A request with both Content-Length and Transfer-Encoding, several
    differing Content-Lengths, an invalid Content-Length, or a
    Transfer-Encoding whose final coding is not ``chunked`` is a
    ``ProtocolError`` (400; 501 for a transfer coding we do not know).  A
    request's Transfer-Encoding must be exactly one ``chunked`` (any case): a
    coding before it (``gzip, chunked``, ``identity, chunked``) is 501, so a
    request's ``Framing.codings`` is always empty.  Responses to HEAD, 1xx,
    204 and 304 have no body; a response with neither header reads until
    close; a response with both uses chunked.
"""

from __future__ import annotations

from .grammar import _DIGITS_RE, _TOKEN_RE, MAX_CONTENT_LENGTH
from .messages import (CHUNKED, KNOWN_CODINGS, NO_BODY, UNTIL_CLOSE, Framing, ProtocolError,
                       Request, Response)


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
