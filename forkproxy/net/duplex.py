"""Full-duplex streams to an HTTP/2 server: the request body sent while the response comes.

HTTP/1.1 sends a request whole before its response is read (``forward.attempt``);
a gRPC bidirectional call may wait for an answer before it sends more.  For an
HTTP/2 client's streamed body (no Content-Length, no request_buffering) on a
stream of an HTTP/2 server (``net.upstream_h2``), ``start`` sends the head in
the request's greenlet and the body from a greenlet of its own, through the
same ``net.request_body.send_chunked_body``, while the request's greenlet reads
and relays the response.  The body's greenlet reads the client through a
``_BodySide``: the session with timers of its own (a ``Timers`` serves one
greenlet).  It ends with the body, or when the stream closes (the response
ended first, or the attempt failed); a body that fails (the client gone, over
the limit) fails the stream.
"""

from __future__ import annotations

import gevent

from forkproxy.net import request_body
from forkproxy.net.sockio import Timers


class _BodySide:
    """The client session ``s`` as the body's greenlet sees it: its own timers
    and reading state, everything else the session's."""

    def __init__(self, s):
        self.__dict__["_s"] = s
        self.timers = Timers()
        self.buf, s.buf = s.buf, b""

    def __getattr__(self, name):
        return getattr(self._s, name)

    def _recv(self, seconds: float, idle: bool = False) -> bytes:
        return type(self._s)._recv(self, seconds, idle)


def start(s, tx, conn, head: bytes) -> bool:
    """Send ``head`` and start the body's greenlet; False (nothing sent) when the
    request is not one for a duplex stream."""
    if s.http_version is None or tx.spool is not None or tx.req.framing.kind != "chunked":
        return False
    # Here, not at the top: a worker that speaks no HTTP/2 never loads h2 (its RSS).
    from forkproxy.net.upstream_h2 import StreamSock

    sock = conn.sock
    if not isinstance(sock, StreamSock):
        return False
    request_body.up_send(s, conn, head, sent=False)
    sock.sender = gevent.spawn(_send_body, _BodySide(s), tx, conn)
    return True


def _send_body(side: _BodySide, tx, conn) -> None:
    sock = conn.sock
    try:
        request_body.send_chunked_body(side, tx, conn, b"", tx.max_body)
    except gevent.GreenletExit:
        pass
    except BaseException as exc:  # noqa: B036 - reported as the stream's failure
        sock.fail(f"request body: {type(exc).__name__} {exc}")
    finally:
        side._s.received = side.received
        side.timers.close()
