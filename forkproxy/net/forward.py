"""Forwarding: server choice with retries, and one exchange with a server.

``ServerChoice`` says which server of a pool to try next, for an HTTP
request (``exchange``) and for an L4 connection (``net.tcp_proxy``) alike:
each server at most once, a sticky cookie's first, then the balancer's,
within ``retry.tries`` and ``retry.timeout``.  ``exchange`` sends a request
and relays the response, failing over to another server when DESIGN
section 4 allows (``core.failover`` has the rules); ``attempt`` is one try
on one upstream connection: request out (``net.request_body``), response
head in (``net.upstream_http``), response body to the client
(``net.relay``), or the tunnel after a 101 (``net.websocket``).
"""

from __future__ import annotations

import socket
import time

from forkproxy.core import failover
from forkproxy.core import http1
from forkproxy.net import duplex, relay, request_body, response, websocket
from forkproxy.net.pools import PoolRuntime
from forkproxy.net.request_body import UpstreamSendError
from forkproxy.net.request_path import no_server_why
from forkproxy.net.upstream import UpstreamConn, UpstreamError
from forkproxy.net.upstream_http import read_response_head, upgrade_asked, upstream_head

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_NOTHING_TRIED: frozenset = frozenset()


class PoolFull(Exception):
    """Every server that could take the request is at max_conns, and the
    pool's queue is full, absent, or its wait ran out."""


class ServerChoice:
    """The servers one request (or one L4 connection) tries, one ``next()`` each.

    ``pick(tried)``: the balancer's choice among the servers not in
    ``tried`` (None: none is usable).  ``retry``: the pool's retry limits
    (None: every server once, as the L4 proxy does).  ``pinned``: a server to
    try first (a sticky cookie's).  ``queue``: when the servers left are all
    at max_conns, wait in the pool's queue (``next`` raises ``PoolFull``
    when that is not possible).  ``on_retry()`` is called for every attempt
    after the first.
    """

    # The state of a first attempt lives on the class: one choice is made
    # per request, and most never need a second attempt.
    tried: frozenset | set = _NOTHING_TRIED  # the servers that failed (a set once one did)
    attempts = 0
    first_at = 0.0
    fresh: int | None = None  # a server whose pooled connection turned out stale
    queue_deadline: float | None = None
    # With a retry budget: this request counts in the pool's requests
    # (active) and, once it retried, in its retries in flight (retrying);
    # over_budget: the budget refused it a retry.
    active = retrying = over_budget = False

    def __init__(self, pool: PoolRuntime, pick, retry=None, pinned=None, queue: bool = False,
                 on_retry=None):
        self.pool, self.pick, self.retry, self.pinned = pool, pick, retry, pinned
        self.queue, self.on_retry = queue, on_retry
        self.budgeted = retry is not None and retry.budget is not None

    def may_try_again(self) -> bool:
        retry = self.retry
        if retry is None:
            return True
        if retry.tries and self.attempts >= retry.tries:
            return False
        if retry.timeout and time.monotonic() - self.first_at >= retry.timeout:
            return False
        if self.budgeted and not self._within_budget():
            self.over_budget = True
            return False
        return True

    def _within_budget(self) -> bool:
        pool, retry = self.pool, self.retry
        return failover.within_budget(pool.retrying - self.retrying, pool.active,
                                      retry.budget, retry.budget_min)

    def denied(self) -> bool:
        """The retry budget refused a retry that a server was left for."""
        return self.over_budget and (self.pool.any_usable(self.tried) or self.pool.full(self.tried))

    def close(self) -> None:
        """The request is over: out of the budget's counts (``exchange``)."""
        pool = self.pool
        if self.active:
            pool.active -= 1
            self.active = False
        if self.retrying:
            pool.retrying -= 1
            self.retrying = False

    def next(self) -> int | None:
        """The next server to try, None when there is none left to try.

        Raises ``PoolFull`` (with ``queue``) when the servers left are all at
        max_conns and the pool's queue cannot take the request."""
        if self.fresh is not None:  # not counted as a try
            i, self.fresh = self.fresh, None
            return i
        pool = self.pool
        while True:
            if self.attempts and not self.may_try_again():
                return None
            if self.pinned is not None:
                i, self.pinned = self.pinned, None
            else:
                i = self.pick(self.tried)
                if i is None and self.queue and pool.full(self.tried):
                    if self.queue_deadline is None:
                        wait = pool.cfg.queue.timeout if pool.cfg.queue is not None else 0.0
                        self.queue_deadline = time.monotonic() + wait
                    remaining = self.queue_deadline - time.monotonic()
                    if remaining > 0 and pool.wait_turn(remaining):
                        continue
                    raise PoolFull()
            if i is not None:
                self.attempts += 1
                if self.attempts == 1:
                    self.first_at = time.monotonic()
                    if self.budgeted:
                        self.active = True
                        pool.active += 1
                else:
                    if self.budgeted and not self.retrying:
                        self.retrying = True
                        pool.retrying += 1
                    if self.on_retry is not None:
                        self.on_retry()
            return i

    def failed(self, i: int, same: bool = False) -> None:
        """Server ``i`` failed; ``same``: its pooled connection was found
        closed, and it is tried again at once on a new one."""
        if not self.tried:
            self.tried = set()
        self.tried.add(i)
        if same:
            self.fresh = i

    def more(self) -> bool:
        """Whether another attempt may follow the last failure."""
        return self.fresh is not None or ((
            self.pool.any_usable(self.tried) or self.pool.full(self.tried)) and self.may_try_again())


class _RequestChoice(ServerChoice):
    """The ``ServerChoice`` of one HTTP request: the balancer picks by the
    request's key, the pool's queue is waited in, and every attempt after
    the first is counted in ``metrics`` (None: nothing counted).

    The first server is chosen here, as ``next`` would choose it (the
    sticky cookie's, else the balancer's pick), and ``next`` hands it out
    first: most requests make no other attempt.  When no server can take
    the request now, ``next`` decides (the queue, or None)."""

    queue = True

    def __init__(self, pool: PoolRuntime, req, peer: str, pinned: int | None, metrics):
        self.pool = pool
        self.req = req
        self.peer = peer
        self.metrics = metrics
        retry = self.retry = pool.retry
        self.budgeted = retry is not None and retry.budget is not None
        self.pinned = None
        self.tried = _NOTHING_TRIED
        i = pinned if pinned is not None else pool.pick(req, peer, self.tried)
        self.fresh = i
        if i is None:
            self.attempts = 0
        else:  # counted as next() counts a first attempt
            self.attempts = 1
            self.first_at = time.monotonic()
            if self.budgeted:
                self.active = True
                pool.active += 1

    def pick(self, tried) -> int | None:
        return self.pool.pick(self.req, self.peer, tried)

    def on_retry(self) -> None:
        if self.metrics is not None:
            self.metrics.retry(self.pool.name)


def exchange(s, tx) -> bool:
    """Pick a server, send the request, relay the response; fail over when allowed.

    The server a valid sticky cookie names (``tx.pinned``, from the
    balancing stage) comes first.  After a failed
    attempt (forkproxy.toml(5), retry):
    - a pooled connection found closed is retried once on a new
      connection to the same server (not counted as a try);
    - an attempt none of whose bytes were sent moves to another server;
    - a sent one moves only when the request is replayable (idempotent,
      no body: a POST is never sent twice), the failure is listed in
      ``retry.on``, and no byte of the response reached the client;
    - each server is tried at most once, at most ``retry.tries``
      attempts, none started after ``retry.timeout``; each attempt has
      its own connect, send and read time limits;
    - a failure counts as a passive failure of the server it happened
      on only (core.failover has the rules);
    - with ``retry.budget``, a retry starts only while the pool's retries
      in flight in this worker are within it (``failover.within_budget``).
    When every server that could take the request is at max_conns, it
    waits in the pool's queue (503 when there is none, it is full, or
    the wait runs out).
    """
    rt, pool, req = s.rt, tx.pool, tx.req
    # A buffered body can be sent again (route request_buffering).
    replayable = (not tx.has_body or tx.spool is not None) and req.method in IDEMPOTENT
    metrics = rt.metrics
    choice = _RequestChoice(pool, req, s.peer, tx.pinned, metrics)
    if not choice.budgeted:
        return _attempts(s, tx, choice, replayable)
    try:  # a retry budget counts the pool's requests and retries in flight
        return _attempts(s, tx, choice, replayable)
    finally:
        choice.close()
        if metrics is not None and choice.denied():
            metrics.retry_denied(pool.name)


def _attempts(s, tx, choice: ServerChoice, replayable: bool) -> bool:
    """``exchange``'s attempts, one server after the other, until one answers."""
    pool = tx.pool
    last_error: UpstreamError | None = None
    while True:
        try:
            i = choice.next()
        except PoolFull:
            s.refuse(tx, 503, f'every server of pool "{pool.name}" is at max_conns'
                     + (" and the queue is full or the wait ran out"
                        if pool.cfg.queue is not None else ""))
            return False
        if i is None:
            if last_error is None:
                s.refuse(tx, 503, no_server_why(pool.name))
            else:
                s.refuse(tx, last_error.status, last_error.detail
                         + (" (no retry: the retry budget is spent)" if choice.denied()
                            else ""))
            return False
        # Counted from the pick on: max_conns and least_conn must see a
        # request that is still connecting.
        pool.begin(i)
        try:
            got = _try_server(s, tx, choice, i, replayable)
        finally:
            pool.end(i)
        if not isinstance(got, UpstreamError):
            return got
        last_error = got


def _try_server(s, tx, choice: ServerChoice, i: int, replayable: bool):
    """One attempt on server ``i``: what ``exchange`` returns, or the
    ``UpstreamError`` after which another attempt may follow."""
    rt, pool, rec = s.rt, tx.pool, tx.rec
    server = pool.servers[i]
    rec.upstream = server.addr
    try:
        limits = tx.rc.timeouts  # the route's own time limits, if any
        conn = (pool.conns[i].checkout(replayable, limits) if i not in choice.tried
                else pool.conns[i].connect(limits))
    except UpstreamError as exc:
        rt.log.warning("request %s: route=%s pool=%s server=%s: %s", rec.request_id,
                       tx.rc.index, pool.name, server.addr, exc.detail)
        pool.failed(i, time.time())
        pool.outcome(i, None)
        choice.failed(i)
        return exc
    head = upstream_head(tx, tx.out_host or server.addr)
    cookie = (("Set-Cookie", pool.set_cookie(i, s.tls_version is not None)),) if (
        pool.sticky is not None and tx.token != pool.sticky.token(i)) else ()
    if pool.stick is not None and tx.token is not None:
        pool.stick.store(tx.token, server.addr)  # a new, moved or aging entry
    retry = pool.retry
    try:
        return attempt(s, tx, i, conn, head, cookie,
                       choice if retry.on and replayable else None)
    except UpstreamError as exc:
        conn.close()
        code = exc.code if exc.kind == "status" else None
        if failover.charged(exc.kind, conn.reused, code in pool.cfg.fail_status):
            pool.failed(i, time.time())  # this server's, never another's
            if exc.kind != "status":  # a status was counted by attempt
                pool.outcome(i, None)
        step = failover.after_failure(
            exc.kind, sent=exc.sent, reused=conn.reused, replayable=replayable,
            listed=failover.condition(exc.kind, code) in retry.on)
        if step == failover.STOP:
            s.refuse(tx, exc.status, exc.detail)
            return False
        choice.failed(i, same=step == failover.SAME)
        # Said only when another attempt follows: else the
        # answer's own error line (serve_one) reports it.
        if choice.more():
            rt.log.warning("request %s: route=%s pool=%s server=%s: %s (retrying)",
                           rec.request_id, tx.rc.index, pool.name, server.addr, exc.detail)
        return exc
    except BaseException:
        conn.close()
        raise


def attempt(s, tx, i: int, conn: UpstreamConn, head: bytes, extra=(), choice=None) -> bool:
    """Send one request on ``conn`` and relay its response to the client.

    ``extra``: response fields to add (the sticky Set-Cookie).  ``choice``: the
    request's ``ServerChoice`` when a status ``retry.on`` lists may be dropped for
    another attempt (``_StatusRetry``: nothing sent yet, a server left, the limits)."""
    tx.upstream_start = time.time()
    try:  # the request head, and its body (``_send_body``)
        if tx.spool is None and tx.req.framing.kind == "none":
            request_body.up_send(s, conn, head, sent=False)
        elif not duplex.start(s, tx, conn, head):  # an HTTP/2 server's stream: both ways
            _send_body(s, tx, conn, head)
    except UpstreamSendError as exc:
        raise UpstreamError("reset", f"sending to {conn.server.addr}: {exc}",
                            sent=exc.sent) from None
    except socket.timeout:
        raise UpstreamError("timeout", f"sending to {conn.server.addr} timed out",
                            sent=True) from None
    resp, body_start = read_response_head(s, tx, conn)
    interim = False
    if 100 <= resp.status < 200:
        resp, body_start, interim = _interim(s, tx, conn, resp, body_start)
    status = resp.status
    if status == 101:
        return websocket.tunnel(s, tx, conn, resp, body_start, extra)
    rec, pool = tx.rec, tx.pool
    rec.upstream_status = status
    if pool.outliers:
        pool.outcome(i, status)
    if status in pool.cfg.fail_status:
        pool.failed(i, time.time())
    if choice is not None and not interim and status in pool.retry.on \
            and choice.may_try_again() and pool.any_usable(choice.tried | {i}):
        raise _StatusRetry(status, f"upstream {conn.server.addr} answered {status}")
    got = _client_head(s, tx, conn, resp, extra)
    if got is None:  # a 304 merged, or stale-if-error: the cache answered
        conn.close()
        return tx.tee.keep
    client_head, keep, _, encoder, up_keepalive, rframing = got
    tee = tx.tee  # with a view: the client gets a part of the origin's 200 (a range)
    rec.status = status if tee is None or tee.view is None else tee.view[0].status
    if status >= 500:  # relayed as it came: the error log names who answered it
        rec.why = f"upstream {conn.server.addr} answered {status}"
    length = rframing.length
    if rframing.kind == "length" and encoder is None and tx.tee is None \
            and len(body_start) >= length:
        # The whole body came with the head (a small response): one send.
        conn.buf = body_start[length:]  # garbage past the body: never reuse this connection
        s._send(client_head + body_start[:length])
    else:
        up_keepalive = _relay_body(s, tx, conn, body_start, got) and up_keepalive
    rec.upstream_time = time.time() - tx.upstream_start
    if tx.tee is not None:
        tx.tee.commit()  # bodiless responses (HEAD, 304): committed here; no-op otherwise
    if up_keepalive and rframing.kind != "close":
        pool.conns[i].checkin(conn)
    else:
        conn.close()
    return keep


def _relay_body(s, tx, conn: UpstreamConn, body_start: bytes, got) -> bool:
    """The client head and the response body through the response filters
    (the cache's tee, compression) and the body pump (``net.relay``); False
    when the body did not end cleanly framed."""
    client_head, _, chunk_out, encoder, _, rframing = got
    kind, length, tee = rframing.kind, rframing.length, tx.tee
    if kind == "none":
        s._send(client_head)
        conn.buf = body_start
        return True
    filters = [f for f in (tee, encoder) if f is not None]
    if kind == "length" and encoder is None:
        relay.pump(s, client_head, relay.length_body(s, conn, body_start, length), filters)
        return True
    # Trailers (gRPC's status) pass to an HTTP/2 client, or one that sent TE: trailers.
    te = s.http_version is not None or "trailers" in (tx.req.get("te") or "").lower()
    body = relay.DecodedBody(s, conn, body_start, rframing, te)
    relay.pump(s, client_head, body, filters, chunk_out)
    return body.clean


def _send_body(s, tx, conn: UpstreamConn, head: bytes) -> None:
    """The request head and its body to the server (``attempt`` sends a
    request without one itself); raises what ``net.request_body`` raises."""
    framing = tx.req.framing
    if tx.spool is not None:
        request_body.send_spooled(s, tx, conn, head)
    elif framing.kind == "length" and framing.length:
        request_body.send_length_body(s, tx, conn, head, framing.length)
    elif framing.kind == "chunked":
        request_body.send_chunked_body(s, tx, conn, head, tx.max_body)
    else:
        request_body.up_send(s, conn, head, sent=False)


def _interim(s, tx, conn: UpstreamConn, resp, body_start: bytes):
    """After a 1xx ``resp``: (response, bytes past its head, an interim
    response went out): the final response head, or a 101 to a request that
    asked for it; 1xx interim responses are forwarded to 1.1 clients."""
    req = tx.req
    interim = False
    while True:
        if not 100 <= resp.status < 200:
            return resp, body_start, interim
        if resp.status == 101:
            if upgrade_asked(req, tx.rc) is not None:
                return resp, body_start, interim
            raise UpstreamError("invalid", f"{conn.server.addr} switched protocols "
                                "without being asked", sent=True)
        interim = interim or req.version == "1.1"
        if req.version == "1.1":
            s._send(response.interim_head(resp))
        conn.buf = body_start
        resp, body_start = read_response_head(s, tx, conn)


def _client_head(s, tx, conn: UpstreamConn, resp, extra):
    """(head, keep, chunked, encoder, upstream keep-alive, framing) of the
    response to the client, or None when the cache answered instead
    (``tx.hook``).  Remembered in the runtime's client_heads when nothing
    per request goes into it."""
    req, er = tx.req, tx.edge
    keep = tx.keep and not s.draining
    tx.tee = tee = None
    if tx.hook is None and not extra and (er is None or er.rules.resp_rules is None) \
            and (tx.rc is None or tx.rc.compress is None) \
            and tx.resp_head_size <= http1.REMEMBERED_HEAD_SIZE:
        # No cache hook, sticky cookie, per-request variables or
        # Accept-Encoding: the body's framing and the client's head are a
        # function of these (Date: the clock's, for an origin without).
        key = (resp.status, resp.reason, resp.version, tuple(resp.headers), req.method,
               req.version, keep, er.rules if er is not None else None,
               er.host_value if er is not None else None, s.proto, conn.server.addr,
               tx.hsts, response.CLOCK.date())
        got = s.rt.client_heads.get(key)
        if got is not None:
            return got
    else:
        key = None
    try:
        rframing = http1.response_body_framing(req.method, resp)
    except http1.ProtocolError as exc:
        raise UpstreamError("invalid", f"{conn.server.addr}: invalid response: "
                            f"{exc.reason}", sent=True) from None
    if tx.hook is not None:
        tee = tx.tee = tx.hook.on_response(resp, rframing)
        if tee.served:
            return None
        if tee.view is not None:  # the client's part of it (net.cache_ranges): its own head
            return response.client_head(s, tx, *tee.view, conn, extra, keep) + (rframing,)
    got = response.client_head(s, tx, resp, rframing, conn, extra, keep) + (rframing,)
    if key is not None:
        response.remember(s.rt.client_heads, key, got)
    return got


def sticky_choice(pool: PoolRuntime, req, client: str = "") -> tuple[int | None, object]:
    """(server the request's sticky cookie or sticky table entry pins it to,
    or None; the cookie's token, or the table's ``net.sticktable.Stuck``).

    A server in drain keeps its sticky requests but takes no new tunnel
    (WebSocket).  Read-only: ``forkproxyctl explain`` asks it too.
    """
    if pool.stick is not None:  # a sticky table: by the request's key, no cookie
        token = pool.stick.lookup(req, client)
        pinned = pool.stuck_server(token.addr) if token is not None else None
    else:
        pinned, token = pool.sticky_server(req)
    if pinned is not None and not pool.usable(pinned) and upgrade_asked(req) is not None:
        pinned = None
    return pinned, token


class _StatusRetry(UpstreamError):
    """A response whose status ``retry.on`` lists, dropped for another attempt."""

    def __init__(self, code: int, detail: str):
        super().__init__("status", detail, sent=True)
        self.code = code

    @property
    def status(self) -> int:
        return self.code
