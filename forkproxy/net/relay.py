"""The response body pump and its filters: to the client, through fixed-size reads.

``pump`` is the one loop that sends a response body: from the server
(``length_body`` for a Content-Length body, ``DecodedBody`` for a chunked
or close-delimited one) or from the cache's store (``net.http_cache``),
through the response filters, one contract (``on_data``, ``on_flush``,
``on_end``): the cache's tee (``net.cache_filter.Tee``: store-on-miss, the
origin's bytes before any encoding) and compression (``net.compress``).  A
body that cannot be completed raises ``Abort``: the client connection is
dropped without a clean terminator (DESIGN section 4).
"""

from __future__ import annotations

import errno
import socket

from forkproxy.core import headers as hdr
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


def pump(s, head: bytes, batches, filters=(), chunk_out: bool = False,
         flush: bool = True) -> None:
    """Send ``head`` and then a body to the client: the one body pump.

    ``batches`` yields ``(pieces, last)``: the body's pieces as one read gave
    them (from the server, or a stored chunk), and whether the body ends with
    them.  Every piece goes through ``filters`` in order, one contract
    (``on_data(bytes) -> bytes``; ``on_flush() -> bytes`` after each batch
    when ``flush``; ``on_end() -> bytes`` when the body ended cleanly, before
    its last bytes go out, so that a stored copy is there for the client's
    next request); what a filter gives out goes through the filters after
    it.  The cache's tee and the compression encoders are filters.
    ``chunk_out``: frame the output chunked, the last chunk after the end.
    What one batch made is sent at once, the head with the first one.
    """
    pending = [head]
    for pieces, last in batches:
        for piece in pieces:
            if piece:
                _out(filters, 0, piece, pending, chunk_out)
        if last or flush:
            for i, f in enumerate(filters):
                tail = f.on_end() if last else f.on_flush()
                if tail:
                    _out(filters, i + 1, tail, pending, chunk_out)
        if last and chunk_out:  # with the body's trailers, when it has some to pass
            pending.append(http1.encode_last_chunk(getattr(batches, "trailers", ())))
        if pending:
            s._send(pending[0] if len(pending) == 1 else b"".join(pending))
            pending = []
        if last:
            return


def _out(filters, start: int, data: bytes, pending: list, chunk_out: bool) -> None:
    """``data`` through ``filters[start:]``, framed, onto ``pending``."""
    for f in filters[start:]:
        data = f.on_data(data)
        if not data:
            return
    pending.append(http1.encode_chunk(data) if chunk_out else data)


def length_body(s, conn: UpstreamConn, data: bytes, length: int):
    """The batches of a Content-Length body from the server (``pump``): ``data``
    came with the head; bytes past the body stay in ``conn.buf`` (and the
    connection is then not reused).  ``Abort`` when the server stops short."""
    if len(data) > length:
        conn.buf = data[length:]  # garbage past the body: never reuse this connection
        data = data[:length]
    remaining = length - len(data)
    yield (data,), not remaining
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
        yield (data,), not remaining


class DecodedBody:
    """The batches of a chunked or close-delimited body from the server
    (any body, with an encoder): iterate it in ``pump``; ``clean`` says
    afterwards whether it ended cleanly framed (else the connection is not
    reused); ``trailers``, the chunked body's trailer fields for the client.  ``Abort`` when it is badly framed or cut."""

    def __init__(self, s, conn: UpstreamConn, data: bytes, framing, te: bool = False):
        self.s, self.conn, self.data = s, conn, data
        self.decoder = http1.make_decoder(framing, status=502, limits=s.rt.limits)
        self.clean = False
        self.te = te  # the client takes trailers (TE: trailers): ``pump`` passes them

    @property
    def trailers(self) -> list:
        """The trailer fields of a chunked body once ended, when the client takes them."""
        return hdr.passed_trailers(self.decoder.trailers) if self.te else []

    def __iter__(self):
        s, conn, decoder, data = self.s, self.conn, self.decoder, self.data
        while True:
            if data:
                try:
                    pieces, leftover = decoder.feed(data)
                except http1.ProtocolError as exc:
                    s.rt.log.error("%s sent a badly framed body (%s); dropping the client",
                                   conn.server.addr, exc.reason)
                    raise Abort() from None
                if decoder.done:
                    conn.buf = leftover
                    self.clean = True
                    yield pieces, True
                    return
                yield pieces, False
            data = up_recv(s, conn)
            if not data:
                try:
                    decoder.eof()
                except http1.IncompleteBody:
                    s.rt.log.error("%s closed the connection in the middle of a chunked "
                                   "body; dropping the client", conn.server.addr)
                    raise Abort() from None
                yield (), True
                return


class Discard:
    """A filter that lets nothing through (a HEAD whose stored body is re-stored)."""

    @staticmethod
    def on_data(data) -> bytes:
        return b""

    @staticmethod
    def on_flush() -> bytes:
        return b""

    @staticmethod
    def on_end() -> bytes:
        return b""
