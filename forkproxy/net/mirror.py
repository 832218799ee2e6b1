"""Shadow traffic (route ``mirror``): a copy of a request to another pool,
its answer read and thrown away.

The forwarding stage (``net.stages``) calls ``Mirrors.copy`` once the
upstream head of a request is ready and before it is sent: the decisions
(``core.mirror``: sampled or not, what of the body goes) are made there,
the copy is handed to a greenlet of the route's own ``gevent.pool.Pool``
(``queue`` greenlets per worker; a copy over it is dropped, never waited
for) and the real request goes on at once.  The copy's greenlet runs when
the real request first waits on its server.

A copy: the mirror pool's balancer picks a server (counted in its
in-flight requests, so max_conns and least_conn see it), one of the
pool's keep-alive connections to it (or a new one), the real request's
head plus ``X-Forkproxy-Mirror: 1`` and its body when
``core.mirror.body_plan`` allows, then the whole answer is read and thrown
away (the connection goes back to the pool when it ended cleanly), all
within the mirror's ``timeout``.  A server that takes no connection gets a passive
failure of the mirror pool (its max_fails: the next copies skip it, cheaply,
as the pool's own requests would); nothing else of a copy is charged, and
never to the route's pool.  Copies are never retried; their fate is counted
(``forkproxy_mirror_total``) and said in a debug line, never in the access
log.
"""

from __future__ import annotations

import functools
import ipaddress
import random
import socket
import time

import gevent
from gevent.pool import Pool

from forkproxy.core import http1
from forkproxy.core import mirror as decide
from forkproxy.net.request_body import _client_body_read
from forkproxy.net.upstream import RECV_SIZE, UpstreamConn, UpstreamError
from forkproxy.net.upstream_http import upgrade_asked

MARK = ("X-Forkproxy-Mirror", "1")


class Mirrors:
    """A worker's mirroring routes: a bounded greenlet pool for each.

    ``routes``: the configuration's routes; ``pools``: the worker's
    ``net.pools.PoolRuntime`` by name; ``metrics``: a
    ``core.metrics.SlotCounter`` or None; ``limits``: the server's
    ``http1.Limits`` (the answers' heads); ``draw``: uniform in [0, 1)."""

    def __init__(self, routes, pools: dict, metrics, log, limits=http1.DEFAULT_LIMITS,
                 draw=random.random):
        self.queues = {r.index: Pool(r.mirror.queue) for r in routes if r.mirror is not None}
        self.pools, self.metrics, self.log, self.draw = pools, metrics, log, draw
        self.limits = limits

    def count(self, route: int, result: str) -> None:
        if self.metrics is not None:
            self.metrics.mirror(route, result)

    def copy(self, s, tx) -> None:
        """Mirror ``tx`` (its route has a ``mirror``) when it is drawn: its
        head (``tx.headers``, ``tx.out_host``, ``tx.target``) and body.

        A streamed body small enough (``core.mirror.READ``) is read whole
        into ``s.buf`` first, where the real request's send takes it from."""
        rc, req = tx.rc, tx.req
        m = rc.mirror
        if not decide.sampled(m.percent, self.draw()):
            return
        framing, spool = req.framing, tx.spool
        how = decide.body_plan(framing.kind, framing.length,
                               spool.size if spool is not None else None, m.max_body,
                               upgrade_asked(req, rc) is not None)
        if how == decide.SKIP:
            self.count(rc.index, "skipped")
            return
        if how == decide.SPOOLED:
            body = b"".join(spool.pieces(b""))
        elif how == decide.READ:
            body = read_whole(s, tx, framing.length)
        else:
            body = b""
        queue = self.queues[rc.index]
        if queue.full():  # checked after the last wait: spawn must not block
            self.count(rc.index, "dropped")
            return
        head = (req.method, tx.target, tx.out_host, tx.headers + [MARK])
        job = (self.pools[m.pool], rc.index, m.timeout, tx.rec.request_id)
        queue.spawn(self.send, job, req, s.peer, head, body)

    def send(self, job: tuple, req, peer: str, head: tuple, body: bytes) -> None:
        """One copy to a server of the mirror pool, the answer thrown away (a
        greenlet).  ``job``: (pool, route id, timeout, request id); ``head``:
        (method, target, Host or None, fields)."""
        pool, route, seconds, request_id = job
        i = pool.pick(req, peer, frozenset())
        if i is None:
            self.log.debug("mirror of request %s: route=%s pool=%s: no server to take it",
                           request_id, route, pool.name)
            self.count(route, "failed")
            return
        server = pool.servers[i]
        method, target, out_host, fields = head
        pool.begin(i)
        answered, conn, why = [False], None, "no answer"
        timer = gevent.Timeout(seconds)
        timer.start()
        try:
            try:
                conn = _checkout(pool, i, seconds)
            except (UpstreamError, OSError, gevent.Timeout):
                # A server that takes no connection: the mirror pool's passive
                # failure (max_fails), which keeps its next copies from trying it.
                pool.failed(i, time.time())
                raise
            conn.sock.sendall(http1.serialize_request_head(
                method, target, [("Host", out_host or server.addr)] + fields) + body)
            if _discard_answer(conn.sock, method, answered, self.limits):
                pool.conns[i].checkin(conn)  # the whole answer read: the next copy's
                conn = None
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            why = f"no answer within {seconds:g}s"
        except UpstreamError as exc:
            why = exc.detail
        except http1.ProtocolError as exc:
            why = f"invalid response: {exc.reason}"
        except OSError as exc:
            why = exc.strerror or str(exc)
        finally:
            timer.close()
            pool.end(i)
            if conn is not None:
                conn.close()
        result = "sent" if answered[0] else "failed"
        self.log.debug("mirror of request %s: route=%s pool=%s server=%s: %s", request_id,
                       route, pool.name, server.addr, "answered" if answered[0] else why)
        self.count(route, result)


def _checkout(pool, i: int, seconds: float) -> UpstreamConn:
    """A connection to server ``i`` of ``pool``: an idle one of the pool's
    (probed first unless warm: ``ConnPool.checkout``), else a new one.

    A new plain connection to an address is made here, without the
    resolver: ``socket.create_connection`` (``net.upstream``'s) asks gevent's
    resolver threads even for an address, which a copy per request made
    costly (bench/mirror.py, a dead mirror: a p99 of hundreds of ms); TLS
    and host names go through the pool's own ``connect``."""
    cp = pool.conns[i]
    server = cp.server
    family = _family(server.host) if pool.cfg.tls is None and not cp.idle else None
    if family is None:
        # Warm idle connections are taken without a probe (a copy lost to one
        # the server just closed is counted failed, never retried).
        return cp.checkout(True, (seconds, None, None))
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.connect((server.host, server.port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except BaseException:
        sock.close()
        raise
    return UpstreamConn(sock, server, cp.send_timeout, cp.read_timeout)


@functools.lru_cache(maxsize=1024)
def _family(host: str):
    """The address family of an address, None for a host name."""
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return None


def _discard_answer(sock, method: str, answered: list, limits) -> bool:
    """Read the answer to a copy whole, 1xx heads skipped, and throw it
    away; ``answered[0]`` once its final head came (a copy answered counts
    as sent even if its body is then cut).  True when the connection may
    carry another request."""
    buf = b""
    while True:
        end = http1.find_head_end(buf) if buf else -1
        if end >= 0:
            resp = http1.parse_response_head(buf[:end], limits)
            buf = buf[end:]
            if 100 <= resp.status < 200 and resp.status != 101:
                continue  # interim
            break
        if len(buf) > limits.max_head_size:
            raise http1.ProtocolError(502, "response head too large")
        data = sock.recv(RECV_SIZE)
        if not data:
            return False
        buf += data
    answered[0] = True
    if resp.status == 101:
        return False
    framing = http1.response_body_framing(method, resp)
    decoder = http1.make_decoder(framing, 502, limits)
    while True:
        if buf:
            _, buf = decoder.feed(buf)
        if decoder.done:
            return not buf and framing.kind != "close" and http1.keep_alive(
                resp.version, http1.connection_tokens(resp.headers))
        buf = sock.recv(RECV_SIZE)
        if not buf:
            return False


def read_whole(s, tx, length: int) -> bytes:
    """The request's ``length`` body bytes, read into ``s.buf`` (which the
    real request's send then takes them from) and copied."""
    while len(s.buf) < length:
        s.buf += _client_body_read(s, tx)
    return s.buf[:length]
