"""Shadow traffic (route ``mirror``): a copy of a request to another pool,
its answer read and thrown away.

The forwarding stage (``net.stages``) calls ``Mirrors.copy`` once the
upstream head of a request is ready and before it is sent: the decisions
(``core.mirror``: sampled or not, what of the body goes) are made there,
and so is the mirror pool's pick (no server to take it: the copy fails
there, at once); the copy is then a job for the route's ``Copiers``
(at most ``queue`` copies in flight per worker, sent by greenlets kept for
the worker's life; a copy over it is dropped, never waited for) and the
real request goes on at once.  The copy's greenlet runs when the real
request first waits on its server.

A copy: the mirror pool's balancer picks a server (counted in its
in-flight requests, so max_conns and least_conn see it), one of the
pool's keep-alive connections to it (or a new one), the real request's
head (its very bytes, ``upstream_http.upstream_head``) plus
``X-Forkproxy-Mirror: 1`` and its body when ``core.mirror.body_plan``
allows, then the whole answer is read and thrown away (the connection
goes back to the pool when it ended cleanly), all within the mirror's
``timeout`` (a reusable ``net.sockio`` timer of the sending greenlet).  A
server that takes no connection gets a passive
failure of the mirror pool (its max_fails: the next copies skip it, cheaply,
as the pool's own requests would); nothing else of a copy is charged, and
never to the route's pool.  Copies are never retried; their fate is counted
(``forkproxy_mirror_total``) and said in a debug line (formatted only when
the error log takes debug lines), never in the access log.
"""

from __future__ import annotations

import collections
import functools
import ipaddress
import logging
import random
import socket
import sys
import time

import gevent
from gevent import get_hub

from forkproxy.core import http1
from forkproxy.core import mirror as decide
from forkproxy.net.request_body import _client_body_read
from forkproxy.net.upstream import RECV_SIZE, UpstreamConn, UpstreamError
from forkproxy.net.sockio import Timers, recv_ready, send_now, wait_readable
from forkproxy.net.upstream_http import upgrade_asked, upstream_head

NOTHING = frozenset()  # no server excluded: a copy is never retried
MARK_LINE = b"X-Forkproxy-Mirror: 1\r\n\r\n"  # the copy's last field, then its head's end


class Mirrors:
    """A worker's mirroring routes: a bounded set of copiers for each.

    ``routes``: the configuration's routes; ``pools``: the worker's
    ``net.pools.PoolRuntime`` by name; ``metrics``: a
    ``core.metrics.SlotCounter`` or None; ``limits``: the server's
    ``http1.Limits`` (the answers' heads); ``draw``: uniform in [0, 1)."""

    def __init__(self, routes, pools: dict, metrics, log, limits=http1.DEFAULT_LIMITS,
                 draw=random.random):
        self.queues = {r.index: Copiers(r.mirror.queue, self._send)
                       for r in routes if r.mirror is not None}
        self.pools, self.metrics, self.log, self.draw = pools, metrics, log, draw
        self.limits = limits
        self.debug = _debugging(log)  # said only then: no line is formatted otherwise

    def count(self, route: int, result: str) -> None:
        if self.metrics is not None:
            self.metrics.mirror(route, result)

    def copy(self, s, tx) -> None:
        """Mirror ``tx`` (its route has a ``mirror``) when it is drawn: its
        head (``upstream_http.upstream_head``: the real request's bytes) and body.

        A streamed body small enough (``core.mirror.READ``) is read whole
        into ``s.buf`` first, where the real request's send takes it from.
        The mirror pool's server is picked here: with none to take it the
        copy fails at once, with no greenlet."""
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
        if queue.full():  # checked after the last wait: a copy never waits for room
            self.count(rc.index, "dropped")
            return
        pool = self.pools[m.pool]
        i = pool.pick(req, s.peer, NOTHING)
        if i is None:
            if self.debug:
                self.log.debug("mirror of request %s: route=%s pool=%s: no server to take it",
                               tx.rec.request_id, rc.index, pool.name)
            self.count(rc.index, "failed")
            return
        head = upstream_head(tx, tx.out_host or pool.servers[i].addr)
        pool.begin(i)  # counted from now on (max_conns, least_conn), ended by _send
        queue.put((pool, i, rc.index, m.timeout, tx.rec.request_id, req.method,
                   head[:-2] + MARK_LINE + body))

    def _send(self, job: tuple, timers: Timers) -> None:
        """One copy to server ``i`` of the mirror pool (begun by ``copy``),
        the answer thrown away; run by a ``Copiers`` greenlet, within the
        mirror's timeout (one of its ``timers``)."""
        pool, i, route, seconds, request_id, method, data = job
        answered, conn, why = [False], None, "no answer"
        try:
            timer = timers.start(seconds)
            try:
                try:
                    conn = _checkout(pool, i, seconds)
                except (UpstreamError, OSError):
                    # A server that takes no connection: the mirror pool's passive
                    # failure (max_fails), which keeps its next copies from trying it.
                    pool.failed(i, time.time())
                    raise
                _send_all(conn, data)
                if _discard_answer(conn, method, answered, self.limits):
                    pool.conns[i].checkin(conn)  # the whole answer read: the next copy's
                    conn = None
            finally:
                timer.stop()
        except socket.timeout:
            why = f"no answer within {seconds:g}s"
        except UpstreamError as exc:
            why = exc.detail
        except http1.ProtocolError as exc:
            why = f"invalid response: {exc.reason}"
        except OSError as exc:
            why = exc.strerror or str(exc)
        finally:
            pool.end(i)
            if conn is not None:
                conn.close()
        if self.debug:
            self.log.debug("mirror of request %s: route=%s pool=%s server=%s: %s", request_id,
                           route, pool.name, pool.servers[i].addr,
                           "answered" if answered[0] else why)
        self.count(route, "sent" if answered[0] else "failed")


class Copiers:
    """At most ``limit`` copies in flight (queued or being sent), sent by
    greenlets kept for the worker's life: a copy is a job for an idle one
    (woken as the hub next runs, when the real request first waits), a
    new one made only while fewer than ``limit`` exist.

    A greenlet made per copy (``gevent.pool.Pool.spawn``) cost tens of µs
    of CPU (bench/callgrind.py ``--mirror``); waking a parked one costs
    a switch.  Each greenlet has its own reusable timers (``net.sockio``).
    ``run(job, timers)`` sends one copy and raises nothing it expects."""

    def __init__(self, limit: int, run):
        self.limit, self.run = limit, run
        self.jobs: collections.deque = collections.deque()
        self.idle: list = []  # parked greenlets
        self.inflight = self.made = 0

    def full(self) -> bool:
        return self.inflight >= self.limit

    def __len__(self) -> int:
        return self.inflight

    def put(self, job: tuple) -> None:
        """Queue ``job`` (the caller checked ``full``) and wake a greenlet for it."""
        self.inflight += 1
        self.jobs.append(job)
        if self.idle:
            get_hub().loop.run_callback(self.idle.pop().switch)
        elif self.made < self.limit:
            self.made += 1
            gevent.spawn_raw(self._work)

    def _work(self) -> None:
        timers, hub, me = Timers(), get_hub(), gevent.getcurrent()
        try:
            while True:
                while self.jobs:
                    job = self.jobs.popleft()
                    try:
                        self.run(job, timers)
                    except Exception:  # noqa: BLE001 - never lose the greenlet (nor the count)
                        hub.handle_error(me, *sys.exc_info())
                    finally:
                        self.inflight -= 1
                self.idle.append(me)
                hub.switch()  # parked until put() wakes it
        finally:
            timers.close()


def _debugging(log) -> bool:
    """Whether ``log`` (a gunicorn logger or a ``logging.Logger``) writes debug lines."""
    target = getattr(log, "error_log", log)
    check = getattr(target, "isEnabledFor", None)
    return True if check is None else check(logging.DEBUG)


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


def _send_all(conn: UpstreamConn, data: bytes) -> None:
    """All of ``data`` to the server: what its socket takes at once first
    (``sockio.send_now``, nearly always all), only the rest through gevent."""
    sent = send_now(conn.sock, data) if conn.plain else 0
    if sent < len(data):
        conn.sock.sendall(memoryview(data)[sent:])


def _discard_answer(conn: UpstreamConn, method: str, answered: list, limits) -> bool:
    """Read the answer to a copy on ``conn`` whole, 1xx heads skipped, and
    throw it away; ``answered[0]`` once its final head came (a copy answered
    counts as sent even if its body is then cut).  True when the connection
    may carry another request.  The first read waits before it reads: the
    answer cannot be there yet (``net.sockio``)."""
    sock = conn.sock
    if conn.plain:
        wait_readable(sock)
        buf = recv_ready(sock, RECV_SIZE)
        if not buf:
            return False
    else:
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
