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
in-flight requests, so max_conns and least_conn see it), a new connection
(never a pooled one: ``Connection: close``), the real request's head plus
``X-Forkproxy-Mirror: 1`` and its body when ``core.mirror.body_plan``
allows, then the answer is read until the server closes, all within the
mirror's ``timeout``.  Its failures are nobody's passive failures and are
never retried; they are counted (``forkproxy_mirror_total``) and said in a
debug line, never in the access log.
"""

from __future__ import annotations

import random

import gevent
from gevent.pool import Pool

from forkproxy.core import http1
from forkproxy.core import mirror as decide
from forkproxy.net.request_body import _client_body_read
from forkproxy.net.upstream import RECV_SIZE, UpstreamError
from forkproxy.net.upstream_http import upgrade_asked

MARK = ("X-Forkproxy-Mirror", "1")


class Mirrors:
    """A worker's mirroring routes: a bounded greenlet pool for each.

    ``routes``: the configuration's routes; ``pools``: the worker's
    ``net.pools.PoolRuntime`` by name; ``metrics``: a
    ``core.metrics.SlotCounter`` or None; ``draw``: uniform in [0, 1)."""

    def __init__(self, routes, pools: dict, metrics, log, draw=random.random):
        self.queues = {r.index: Pool(r.mirror.queue) for r in routes if r.mirror is not None}
        self.pools, self.metrics, self.log, self.draw = pools, metrics, log, draw

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
        head = (req.method, tx.target, tx.out_host, tx.headers + [MARK, ("Connection", "close")])
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
            conn = pool.conns[i].connect((seconds, None, None))
            conn.sock.sendall(http1.serialize_request_head(
                method, target, [("Host", out_host or server.addr)] + fields) + body)
            _discard_answer(conn.sock, answered)
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            why = f"no answer within {seconds:g}s"
        except UpstreamError as exc:
            why = exc.detail
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


def _discard_answer(sock, answered: list) -> None:
    """Read the answer until the server closes; ``answered[0]`` once a
    response line began (a copy answered counts as sent even if its body
    is then cut by the time limit)."""
    first = b""
    while True:
        data = sock.recv(RECV_SIZE)
        if not data:
            return
        if not answered[0]:
            first = (first + data)[:5]
            answered[0] = first == b"HTTP/"


def read_whole(s, tx, length: int) -> bytes:
    """The request's ``length`` body bytes, read into ``s.buf`` (which the
    real request's send then takes them from) and copied."""
    while len(s.buf) < length:
        s.buf += _client_body_read(s, tx)
    return s.buf[:length]
