"""Request bodies from the client: read whole (request_buffering) or streamed upstream.

``buffer_body`` reads a body before a server is chosen (into ``net.spool``);
``send_spooled``, ``send_length_body`` and ``send_chunked_body`` send the
head and the body to the server, through fixed-size reads.  A first send
that fails leaves the session's buffer as it was, so that another server
can be tried with it (``forward.exchange``).
"""

from __future__ import annotations

import socket
import time

from forkproxy.core import http1
from forkproxy.net.relay import ClientGone
from forkproxy.net.sockio import send_within
from forkproxy.net.spool import Spool
from forkproxy.net.upstream import UpstreamConn


class UpstreamSendError(Exception):
    """Sending to the server failed; ``sent``: earlier bytes of the request had gone."""

    def __init__(self, detail: str, sent: bool):
        super().__init__(detail)
        self.sent = sent


def up_send(s, conn: UpstreamConn, data, *, sent: bool) -> None:
    """All of ``data`` to the server within its send_timeout.

    Raises ``socket.timeout``, or ``UpstreamSendError`` saying whether
    earlier bytes of the request had been sent.
    """
    try:
        send_within(conn.sock, data, conn.plain, s.timers, conn.send_timeout)
    except socket.timeout:
        raise
    except OSError as exc:
        raise UpstreamSendError(exc.strerror or str(exc), sent) from None


def _client_body_read(s, tx) -> bytes:
    try:
        data = s._recv(tx.edge.body_timeout if tx.edge is not None
                       else s.rt.cfg.server.body_timeout)
    except socket.timeout:
        raise ClientGone() from None
    if not data:
        raise ClientGone()
    return data


def buffer_body(s, tx) -> Spool:
    """The request's whole body, read before a server is chosen (route
    request_buffering): in memory up to request_buffer_memory, then in a
    file (net.spool).

    Raises ``ProtocolError``: 408 when it has not all come within the
    route's request_buffer_timeout, or nothing came for body_timeout;
    413 for a chunked body over ``tx.max_body``; 400 for bad chunks; 500
    when it cannot be stored.  Bytes past the body stay in ``s.buf``.
    """
    rc, framing, max_body = tx.rc, tx.req.framing, tx.max_body
    spool = Spool(rc.request_buffer_memory, s.rt.body_dir)
    deadline = time.monotonic() + rc.request_buffer_timeout
    data, s.buf = s.buf, b""
    try:
        if framing.kind == "length":
            remaining = framing.length
            while len(data) < remaining:
                spool.write(data)
                remaining -= len(data)
                data = _buffered_read(s, tx, deadline)
            spool.write(data[:remaining])
            s.buf = data[remaining:]
            return spool
        decoder = http1.make_decoder(http1.CHUNKED, status=400, limits=s.rt.limits)
        while True:
            if data:
                pieces, leftover = decoder.feed(data)
                for piece in pieces:
                    if piece:
                        spool.write(piece)
                if max_body and spool.size > max_body:
                    raise http1.ProtocolError(413, f"chunked body over the limit {max_body}")
                if decoder.done:
                    s.buf = leftover
                    return spool
            data = _buffered_read(s, tx, deadline)
    except OSError as exc:  # the file of a large body (not socket errors: ClientGone)
        spool.close()
        raise http1.ProtocolError(500, f"cannot store the request body in "
                                  f"{s.rt.body_dir}: {exc}") from None
    except BaseException:
        spool.close()
        raise


def _buffered_read(s, tx, deadline: float) -> bytes:
    rc = tx.rc
    idle = tx.edge.body_timeout if tx.edge is not None \
        else s.rt.cfg.server.body_timeout
    left = deadline - time.monotonic()
    try:
        if left <= 0:
            raise socket.timeout()
        data = s._recv(idle if idle < left else left)
    except socket.timeout:
        if time.monotonic() < deadline:
            why = f"nothing of the request body for body_timeout ({idle:g}s)"
        else:
            why = f"request body not received within request_buffer_timeout " \
                  f"({rc.request_buffer_timeout:g}s)"
        raise http1.ProtocolError(408, why) from None
    if not data:
        raise ClientGone()
    return data


def send_spooled(s, tx, conn: UpstreamConn, head: bytes) -> None:
    """The head and the buffered body (``buffer_body``) to the server."""
    sent = False
    for piece in tx.spool.pieces(head):
        up_send(s, conn, piece, sent=sent)
        sent = True


def send_length_body(s, tx, conn: UpstreamConn, head: bytes, length: int) -> None:
    buf = s.buf
    first = buf[:length]
    remaining = length - len(first)
    up_send(s, conn, head + first, sent=False)
    s.buf = buf[length:]  # only now: a failed first send is retried with them
    while remaining:
        data = _client_body_read(s, tx)
        if len(data) > remaining:
            s.buf = data[remaining:]
            data = data[:remaining]
        remaining -= len(data)
        up_send(s, conn, data, sent=True)


def send_chunked_body(s, tx, conn: UpstreamConn, head: bytes, max_body: int) -> None:
    decoder = http1.make_decoder(http1.CHUNKED, status=400,
                                 limits=s.rt.limits)
    up_send(s, conn, head, sent=False)  # first: a failed one is retried with s.buf intact
    data, s.buf = s.buf, b""
    total = 0
    while True:
        if data:
            pieces, leftover = decoder.feed(data)
            out = []
            for piece in pieces:
                if piece:
                    total += len(piece)
                    out.append(http1.encode_chunk(piece))
            if max_body and total > max_body:
                raise http1.ProtocolError(413, f"chunked body over the limit {max_body}")
            if decoder.done:
                s.buf = leftover
                out.append(http1.encode_last_chunk())
            if out:
                up_send(s, conn, b"".join(out), sent=True)
            if decoder.done:
                return
        data = _client_body_read(s, tx)

# -- responses ---------------------------------------------------------
