"""The response body pump: upstream to client, through fixed-size reads.

``relay_length`` moves a Content-Length body; ``relay_decoded`` a chunked or
close-delimited one, or any body through a compression encoder.  The
cache's tee (``net.http_cache``) gets the origin's bytes before any
encoding.  A body that cannot be completed raises ``Abort``: the client
connection is dropped without a clean terminator (DESIGN section 4).
"""

from __future__ import annotations

import errno
import socket

from forkproxy.core import http1
from forkproxy.net.upstream import RECV_SIZE, UpstreamConn


class ClientGone(Exception):
    """The client closed, reset or stalled: stop serving this connection."""


class Abort(Exception):
    """The response cannot be completed (upstream died mid-body): drop the client."""


def up_recv(s, conn: UpstreamConn) -> bytes:
    t = s.timers.start(conn.read_timeout)
    try:
        return conn.sock.recv(RECV_SIZE)
    except socket.timeout:
        s.rt.log.error("%s timed out in the middle of a response body; dropping the "
                       "client", conn.server.addr)
        raise Abort() from None
    except OSError as exc:
        if exc.errno not in (errno.ECONNRESET, errno.EPIPE):
            s.rt.log.error("%s: %s in the middle of a response body", conn.server.addr,
                           exc)
        raise Abort() from None
    finally:
        t.stop()


def relay_length(s, tx, conn: UpstreamConn, head: bytes, data: bytes, length: int) -> None:
    if len(data) > length:
        conn.buf = data[length:]  # garbage past the body: never reuse this connection
        data = data[:length]
    remaining = length - len(data)
    tee = tx.tee
    if tee is not None and data:
        tee.write(data)
        if not remaining:
            tee.commit()  # before the last byte goes out: the client's next request hits
    s._send(head + data)
    while remaining:
        data = up_recv(s, conn)
        if not data:
            s.rt.log.error("%s closed the connection %d bytes short of the response "
                           "body; dropping the client", conn.server.addr, remaining)
            raise Abort()
        if len(data) > remaining:
            conn.buf = data[remaining:]
            data = data[:remaining]
        remaining -= len(data)
        if tee is not None:
            tee.write(data)
            if not remaining:
                tee.commit()  # before the last byte goes out: the client's next request hits
        s._send(data)


def relay_decoded(s, tx, conn: UpstreamConn, head: bytes, data: bytes, framing,
                  chunk_out: bool, encoder=None) -> bool:
    """Relay a chunked or close-delimited body; True when it ended cleanly framed.

    With an ``encoder`` (net.compress) any body, length-framed too, goes
    through it: it is the last step before the client, so what comes
    before it (``piece``) is the origin's representation.  Each read from
    the upstream is flushed on to the client as it came.
    """
    decoder = http1.make_decoder(framing, status=502, limits=s.rt.limits)
    pending = [head]
    tee = tx.tee
    while True:
        if data:
            try:
                pieces, leftover = decoder.feed(data)
            except http1.ProtocolError as exc:
                s.rt.log.error("%s sent a badly framed body (%s); dropping the client",
                               conn.server.addr, exc.reason)
                raise Abort() from None
            for piece in pieces:
                if piece:
                    if tee is not None:
                        tee.write(piece)  # the origin's bytes, before any encoding
                    if encoder is not None:
                        piece = encoder.feed(piece)
                    pending.append(http1.encode_chunk(piece) if chunk_out else piece)
            if decoder.done:
                conn.buf = leftover
                if tee is not None:
                    tee.commit()  # before the end goes out: the client's next request hits
                if encoder is not None:
                    _encoder_end(encoder.finish(), pending, chunk_out)
                if chunk_out:
                    pending.append(http1.encode_last_chunk())
                s._send(b"".join(pending))
                return True
            if encoder is not None:
                _encoder_end(encoder.flush(), pending, chunk_out)
            if pending:
                s._send(b"".join(pending))
                pending = []
        data = up_recv(s, conn)
        if not data:
            try:
                decoder.eof()
            except http1.IncompleteBody:
                s.rt.log.error("%s closed the connection in the middle of a chunked "
                               "body; dropping the client", conn.server.addr)
                raise Abort() from None
            if tee is not None:
                tee.commit()
            if encoder is not None:
                _encoder_end(encoder.finish(), pending, chunk_out)
            if chunk_out:
                pending.append(http1.encode_last_chunk())
            s._send(b"".join(pending))
            return False


def _encoder_end(data: bytes, pending: list, chunk_out: bool) -> None:
    if data:
        pending.append(http1.encode_chunk(data) if chunk_out else data)
