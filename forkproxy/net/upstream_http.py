"""HTTP/1.1 with a server: the request head's fields, the response head read.

``upstream_fields`` builds the fields of the head sent upstream (DESIGN
section 4: rebuilt, never relayed): hop-by-hop and rewritten fields out,
forwarding fields, X-Request-Id and the route's request_headers in, the
framing fields rebuilt; ``upstream_head`` serializes them, once per
request and Host (the real request's attempts and its mirror copy share
the bytes).  ``read_response_head`` reads and parses the server's answer
within the pool's read_timeout.
"""

from __future__ import annotations

import socket
import time

from forkproxy.core import headers as hdr
from forkproxy.core import http1
from forkproxy.net import response
from forkproxy.net.sockio import recv_ready, wait_readable
from forkproxy.net.upstream import RECV_SIZE, UpstreamConn, UpstreamError

# Fields the proxy writes itself (or consumes), dropped with the hop-by-hop ones.
REWRITTEN_REQUEST_FIELDS = frozenset({"host", "content-length", "expect", "x-request-id"})


def upgrade_asked(req, rc=None) -> str | None:
    """The Upgrade value of a request that asks to switch protocols, else None.

    Only HTTP/1.1 requests can (RFC 9110 7.8), and only with ``upgrade`` in
    their Connection field. With the route ``rc``, only the protocols its
    ``upgrade`` list allows (``core.headers.allowed_upgrade``): None when
    there is none, and the request goes upstream as a plain one.
    """
    if req.version != "1.1":
        return None
    value = req.upgrade
    if value is None or "upgrade" not in req.connection:
        return None
    return value if rc is None else hdr.allowed_upgrade(value, rc.upgrade)


def upstream_fields(s, tx) -> tuple[list, str | None]:
    """(fields, Host) of the head sent upstream for ``tx.req``: hop-by-hop and
    rewritten fields out, forwarding fields, X-Request-Id and the route's
    request_headers in, the framing fields rebuilt (DESIGN section 4).

    Without request_headers (which may use per-request variables), the
    fields are a function of the request's fields and version, the peer,
    the scheme, the Host and the route, but for X-Request-Id: for a head
    of at most http1.REMEMBERED_HEAD_SIZE bytes, what is around it is
    remembered in the runtime's upstream_heads (at most CLIENT_HEADS,
    then forgotten at once).
    """
    req, rc, er, host_value = tx.req, tx.rc, tx.edge, tx.host_value
    tokens = req.connection
    if er.rules.req_rules is None and tx.head_size <= http1.REMEMBERED_HEAD_SIZE:
        key = (tuple(req.headers), req.version, s.peer, s.proto, host_value, rc.index)
        memo = s.rt.upstream_heads
        got = memo.get(key)
        if got is None:
            before = tuple(_forwarded(s, req, host_value, tokens))
            after = tuple(_framing_fields(req, rc))
            got = response.remember(memo, key, (before, after, rc.host_header or host_value,
                                                http1.field_lines(before),
                                                http1.field_lines(after)))
        before, after, out_host, before_lines, after_lines = got
        headers = [*before, ("x-request-id", er.request_id), *after]
        # upstream_head's parts, while tx.headers is this very list
        tx.wire_lines = (headers, before_lines, after_lines)
    else:
        # X-Request-Id, then request_headers
        headers, out_host = er.upstream(_forwarded(s, req, host_value, tokens),
                                        rc.host_header or host_value)
        headers += _framing_fields(req, rc)
    if tx.spool is not None and req.framing.kind == "chunked":
        # The body was read whole: it goes with its length (as nginx does).
        headers = [f for f in headers if f[0] != "Transfer-Encoding"]  # (wire_lines: not these)
        headers.append(("Content-Length", str(tx.spool.size)))
    return headers, out_host


def upstream_head(tx, host: str) -> bytes:
    """The head sent upstream for ``tx`` with ``host`` as its Host: request
    line, Host, ``tx.headers``, the empty line.  Kept on the transaction
    (``tx.wire``) for the next call with the same Host: a retry, the
    request after its mirror copy (``net.mirror``), need not serialize it
    again.  ``tx.headers`` is never changed once the forwarding stage set it.

    When ``tx.headers`` is the very list ``upstream_fields`` made from its
    memo, the field lines around X-Request-Id were serialized with the memo
    (``tx.wire_lines``): the same bytes (``http1.field_lines`` of a list is
    the lines of its parts in order), without joining every field again."""
    wire = tx.wire
    if wire is None or wire[0] != host:
        parts, headers = tx.wire_lines, tx.headers
        if parts is not None and parts[0] is headers:
            lines = f"Host: {host}\r\n{parts[1]}x-request-id: {tx.edge.request_id}\r\n{parts[2]}"
            data = http1.request_head(tx.req.method, tx.target, lines)
        else:
            data = http1.serialize_request_head(tx.req.method, tx.target,
                                                [("Host", host)] + headers)
        wire = tx.wire = (host, data)
    return wire[1]


def _forwarded(s, req, host_value, tokens) -> list:
    # The client's X-Request-Id goes with the hop-by-hop fields
    # (REWRITTEN_REQUEST_FIELDS): upstream_fields adds forkproxy's.
    return hdr.forwarded_for_request(
        req.headers, client_addr=s.peer, proto=s.proto, host=host_value,
        trusted=s.rt.trusted_peer(s.peer),
        drop=hdr.hop_by_hop(req.headers, REWRITTEN_REQUEST_FIELDS, tokens),
        underscores=s.rt.cfg.server.underscores_in_headers)


def _framing_fields(req, rc) -> list:
    framing = req.framing
    out = []
    if framing.kind == "length":
        out.append(("Content-Length", str(framing.length)))
    elif framing.kind == "chunked":
        out.append(("Transfer-Encoding", ", ".join(framing.codings + ("chunked",))))
    upgrade = upgrade_asked(req, rc)
    if upgrade is not None:  # the one hop-by-hop pair that must cross (WebSocket)
        out += [("Connection", "upgrade"), ("Upgrade", upgrade)]
    return out


def _head_end(conn: UpstreamConn, buf: bytes, limit: int) -> int:
    """``http1.find_head_end`` of a response head: -1 while there is no end
    yet; ``UpstreamError`` on a bare CR or LF (the server's fault, not the
    client's) or past ``limit`` bytes without an end."""
    try:
        end = http1.find_head_end(buf)
    except http1.ProtocolError as exc:
        raise UpstreamError("invalid", f"{conn.server.addr}: invalid response: {exc.reason}",
                            sent=True) from None
    if end < 0 and len(buf) > limit:
        raise UpstreamError("invalid", f"{conn.server.addr}: response head too large",
                            sent=True)
    return end


def read_response_head(s, tx, conn: UpstreamConn):
    """(response, bytes past its head) of the request just sent on ``conn``.

    The whole head must come within the pool's read_timeout of this call
    (this attempt's own deadline: a server dripping bytes cannot hold a
    request longer).  Raises ``UpstreamError``.
    """
    buf = conn.buf
    conn.buf = b""
    # The request has just gone out: the answer cannot be there yet.
    wait = not buf and conn.plain
    limit = s.rt.cfg.server.max_head_size
    got_any = bool(buf)
    seconds = conn.read_timeout
    deadline = None
    while True:
        if buf:
            end = buf.find(b"\r\n\r\n")
            if end > 0 and buf[:2] != b"\r\n":  # find_head_end's answer, without its call
                end += 4
                break
            end = _head_end(conn, buf, limit)  # leading empty lines, bare CR or LF, size
            if end >= 0:
                break
        if deadline is None:  # the first read: the configured duration, a reused timer
            deadline = time.monotonic() + seconds
        else:
            seconds = max(deadline - time.monotonic(), 0.0)  # 0: expires at once
        t = s.timers.start(seconds)
        try:
            if wait:
                wait = False
                wait_readable(conn.sock)
                data = recv_ready(conn.sock, RECV_SIZE)
            else:
                data = conn.sock.recv(RECV_SIZE)
        except socket.timeout:
            raise UpstreamError("timeout", f"upstream {conn.server.addr} did not answer in "
                                f"time ({conn.read_timeout:g}s reading the response head)",
                                sent=True) from None
        except OSError as exc:
            raise UpstreamError("reset" if not got_any else "invalid",
                                f"{conn.server.addr}: {exc.strerror or exc} before a response",
                                sent=True) from None
        finally:
            t.stop()
        if not data:
            raise UpstreamError("closed", f"{conn.server.addr} closed the connection "
                                "without a response", sent=True)
        got_any = True
        buf += data
    tx.resp_head_size = end
    try:
        resp = http1.parse_response_head(buf[:end], s.rt.limits)
    except http1.ProtocolError as exc:
        raise UpstreamError("invalid", f"{conn.server.addr}: invalid response: {exc.reason}",
                            sent=True) from None
    return resp, buf[end:]
