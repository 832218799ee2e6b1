"""Every response head forkproxy sends a client, built here.

Relayed responses (``client_head``), relayed 1xx and 101 heads
(``interim_head``) and cache hits (``net.http_cache``) frame their bodies
through ``framing_fields_out`` and apply the route's ``compress`` through
``encoder_for``; forkproxy's own answers (errors, the https redirect,
PURGE's) come from ``own_response``; ``CLOCK`` gives the Date text of every
head forkproxy writes.  Heads made from small origin heads are remembered
(``remember``, at most CLIENT_HEADS per worker).
"""

from __future__ import annotations

import email.utils
import time

from forkproxy.core import encoding
from forkproxy.core import headers as hdr
from forkproxy.core import http1
from forkproxy.net import compress

REWRITTEN_RESPONSE_FIELDS = frozenset({"content-length"})
# How many client response heads (forward.attempt) and upstream request fields
# (forward.upstream_fields) a worker remembers.
CLIENT_HEADS = 512


class _Clock:
    """Date header text, formatted once per second."""

    second = -1
    text = ""

    def date(self) -> str:
        now = int(time.time())
        if now != self.second:
            self.second = now
            self.text = email.utils.formatdate(now, usegmt=True)
        return self.text


CLOCK = _Clock()
CLOSE = "Connection: close\r\n"


def own_response(status: int, fields=(), body: bytes = b"", ctype: str | None = None,
                 connection: str = CLOSE, head_only: bool = False) -> bytes:
    """A response forkproxy writes itself (an error, a redirect, a PURGE's answer):
    status line, Date, ``fields``, Content-Type (with ``ctype``), Content-Length,
    ``connection`` (a whole header line, or ""), then ``body`` unless ``head_only``."""
    extra = "".join(f"{n}: {v}\r\n" for n, v in fields)
    ctype_line = f"Content-Type: {ctype}\r\n" if ctype is not None else ""
    head = (f"HTTP/1.1 {status} {http1.reason_phrase(status)}\r\nDate: {CLOCK.date()}\r\n"
            f"{extra}{ctype_line}Content-Length: {len(body)}\r\n{connection}\r\n").encode()
    return head if head_only else head + body


def error_response(status: int, fields, page, head_only: bool) -> bytes:
    """forkproxy's own error response, which closes the connection: ``page``
    (body, type) is the route's error page, else the status line's text."""
    body, ctype = page or (f"{status} {http1.reason_phrase(status)}\n".encode(),
                           "text/plain; charset=utf-8")
    return own_response(status, fields, body, ctype, head_only=head_only)


def redirect(location: str, keep_alive_line: str | None) -> bytes:
    """A 308 to ``location``; ``keep_alive_line``: the kept connection's Keep-Alive
    line (None: the connection closes)."""
    return own_response(308, (("Location", location),),
                        connection=CLOSE if keep_alive_line is None else keep_alive_line)


def framing_fields_out(out: list, version: str, keep: bool, encoder, kind: str,
                       length: int | None = None, codings: tuple = (),
                       keep_alive=None) -> tuple[bool, bool]:
    """Append to ``out`` the fields that frame a response body for a client
    (``kind``: the body's framing as it comes, "none", "length", "chunked" or
    "close") and its Connection field; (keep-alive, chunked) come back.
    ``keep_alive``: the Keep-Alive field a kept connection gets
    (``Runtime.keep_alive``).

    Relayed responses and cache hits both go out through here.
    """
    chunk_out = False
    if encoder is not None:
        # Length unknown until the end: chunked (1.1) or until close (1.0).
        if version == "1.1":
            out.append(("Transfer-Encoding", "chunked"))
            chunk_out = True
        else:
            keep = False
    elif kind == "length":
        out.append(("Content-Length", str(length)))
    elif kind in ("chunked", "close"):
        if version == "1.1":
            out.append(("Transfer-Encoding", ", ".join(codings + ("chunked",))))
            chunk_out = True
        else:
            keep = False
    if not keep:
        out.append(("Connection", "close"))
    else:
        if version == "1.0":
            out.append(("Connection", "keep-alive"))
        if keep_alive is not None:
            out.append(keep_alive)
    return keep, chunk_out


def remember(memo: dict, key, value):
    """``memo[key] = value``, forgetting everything first once CLIENT_HEADS are kept."""
    if len(memo) >= CLIENT_HEADS:
        memo.clear()
    memo[key] = value
    return value


def _compressed(out: list, req, cz):
    """(client headers, encoder or None) for an eligible response (core.encoding).

    Vary is added whatever the client accepts; when it accepts a coding we
    have, the headers describe the compressed representation: its coding, a
    weak ETag, no Content-Length (the caller frames it), no Accept-Ranges
    (ranges of the original bytes would not fit it).
    """
    out = encoding.add_vary(out)
    coding = encoding.choose(req.get_all("accept-encoding"), compress.AVAILABLE)
    if coding is None:
        return out, None
    out = [(n, encoding.weaken_etag(v) if n == "etag" else v) for n, v in out
           if n not in ("content-length", "accept-ranges")]
    out.append(("Content-Encoding", coding))
    return out, compress.new(coding, cz.level)


def interim_head(resp, extra=()) -> bytes:
    """The head of a 1xx response relayed to the client: the origin's fields,
    hop-by-hop out; a 101 keeps the Connection and Upgrade pair it switches
    with, and gets ``extra`` (the sticky Set-Cookie)."""
    out = hdr.response_headers_for_client(resp.headers)
    if resp.status == 101:
        upgrade = resp.get("upgrade")
        out.append(("Connection", "upgrade"))
        if upgrade is not None:
            out.append(("Upgrade", upgrade))
        out.extend(extra)
    return http1.serialize_response_head(resp.status, resp.reason, out)


def client_head(s, tx, resp, rframing, conn, extra, keep) -> tuple:
    """(head bytes, keep, chunked, encoder or None, upstream keep-alive) of the
    response ``forward.attempt`` sends the client for ``resp``."""
    tokens = http1.connection_tokens(resp.headers)
    out = hdr.response_headers_for_client(
        resp.headers, also=REWRITTEN_RESPONSE_FIELDS if rframing.kind != "none" else frozenset(),
        tokens=tokens)
    if tx.edge is not None:  # hide_headers, rewrite_location, response_headers
        out = tx.edge.downstream(out, conn.server.addr)
    if resp.get("date") is None:  # RFC 9110 6.6.1: an origin without a clock
        out.append(("Date", CLOCK.date()))
    if tx.hsts is not None:
        out.append(("Strict-Transport-Security", tx.hsts))
    out.extend(extra)
    if tx.tee is not None:
        out.extend(tx.tee.headers)
    out, encoder = encoder_for(tx, resp.status, resp.headers, out,
                               rframing.length if rframing.kind == "length" else None,
                               rframing.codings)
    keep, chunk_out = framing_fields_out(out, tx.req.version, keep, encoder, rframing.kind,
                                         rframing.length, rframing.codings,
                                         s.rt.keep_alive)
    return (http1.serialize_response_head(resp.status, resp.reason, out), keep, chunk_out,
            encoder, http1.keep_alive(resp.version, tokens))


def encoder_for(tx, status: int, origin_headers, out: list, length: int | None, codings=()):
    """(client headers, encoder or None): the route's ``compress`` applied to one response.

    The hook for every path that sends a response body (relay, cache
    hits): call it last, on the headers about to go out (``out``); the
    decision reads ``origin_headers`` (the stored or upstream ones).
    With an encoder, the headers lost their Content-Length: frame the
    body chunked (or until close), pass every piece through
    ``encoder.feed`` and end with ``encoder.finish()``.
    """
    cz = tx.rc.compress if tx.rc is not None else None
    req = tx.req
    if cz is None or not encoding.eligible(req.method, status, origin_headers,
                                           types=cz.types, min_size=cz.min_size,
                                           length=length, transfer_codings=codings):
        return out, None
    return _compressed(out, req, cz)
