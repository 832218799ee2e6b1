"""Forwarding: the head sent upstream, server choice with retries, one exchange.

``exchange`` picks a server of the pool (a sticky cookie's first, then the
balancer's), sends the request and relays the response, failing over to
another server when DESIGN section 4 allows (``core.failover`` has the
rules); ``attempt`` is one try on one upstream connection: request out
(``net.request_body``), response head in, response body to the client
(``net.relay``), or the tunnel after a 101 (``net.websocket``).
``upstream_fields`` builds the request head's fields (hop-by-hop out,
forwarding fields and X-Request-Id in).
"""

from __future__ import annotations

import socket
import time

from forkproxy.core import failover
from forkproxy.core import headers as hdr
from forkproxy.core import http1
from forkproxy.net import relay, request_body, response, websocket
from forkproxy.net.pools import PoolRuntime
from forkproxy.net.request_body import UpstreamSendError
from forkproxy.net.request_path import no_server_why
from forkproxy.net.sockio import recv_ready, wait_readable
from forkproxy.net.upstream import RECV_SIZE, UpstreamConn, UpstreamError

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# Fields the proxy writes itself (or consumes), dropped with the hop-by-hop ones.
REWRITTEN_REQUEST_FIELDS = frozenset({"host", "content-length", "expect", "x-request-id"})


def upstream_head(s, req, rec, host_value) -> tuple[list, str | None]:
    """``upstream_fields`` of the request being served (route ``rec.route``)."""
    return upstream_fields(s, req, s.rt.routes[rec.route], s.edge_req, host_value,
                           req.connection)


def upstream_fields(s, req, rc, er, host_value, tokens) -> tuple[list, str | None]:
    """(fields, Host) of the head sent upstream for ``req``: hop-by-hop and
    rewritten fields out, forwarding fields, X-Request-Id and the route's
    request_headers in, the framing fields rebuilt (DESIGN section 4).

    Without request_headers (which may use per-request variables), the
    fields are a function of the request's fields and version, the peer,
    the scheme, the Host and the route, but for X-Request-Id: for a head
    of at most http1.REMEMBERED_HEAD_SIZE bytes, what is around it is
    remembered in the runtime's upstream_heads (at most CLIENT_HEADS,
    then forgotten at once).
    """
    if er.rules.req_rules is None and s.head_size <= http1.REMEMBERED_HEAD_SIZE:
        key = (tuple(req.headers), req.version, s.peer, s.proto, host_value, rc.index)
        memo = s.rt.upstream_heads
        got = memo.get(key)
        if got is None:
            got = response.remember(memo, key, (tuple(_forwarded(s, req, host_value, tokens)),
                                                tuple(_framing_fields(req, rc)),
                                                rc.host_header or host_value))
        before, after, out_host = got
        headers = [*before, ("x-request-id", er.request_id), *after]
    else:
        # X-Request-Id, then request_headers
        headers, out_host = er.upstream(_forwarded(s, req, host_value, tokens),
                                        rc.host_header or host_value)
        headers += _framing_fields(req, rc)
    if s.spool is not None and req.framing.kind == "chunked":
        # The body was read whole: it goes with its length (as nginx does).
        headers = [f for f in headers if f[0] != "Transfer-Encoding"]
        headers.append(("Content-Length", str(s.spool.size)))
    return headers, out_host


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


def exchange(s, req, rec, pool: PoolRuntime, target, out_host, headers, framing,
             has_body, max_body, client_keepalive) -> bool:
    """Pick a server, send the request, relay the response; fail over when allowed.

    The server a valid sticky cookie names comes first.  After a failed
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
      on only (core.failover has the rules).
    When every server that could take the request is at max_conns, it
    waits in the pool's queue (503 when there is none, it is full, or
    the wait runs out).
    """
    rt = s.rt
    retry = pool.retry
    tried: set[int] = set()
    # A buffered body can be sent again (route request_buffering).
    replayable = (not has_body or s.spool is not None) and req.method in IDEMPOTENT
    last_error: UpstreamError | None = None
    fresh: int | None = None  # a server whose pooled connection turned out stale
    attempts = 0
    first_at = 0.0
    queue_deadline: float | None = None
    pinned, token = sticky_choice(pool, req) if pool.sticky is not None else (None, None)

    def may_try_again() -> bool:
        if retry.tries and attempts >= retry.tries:
            return False
        return not retry.timeout or time.monotonic() - first_at < retry.timeout

    while True:
        if fresh is not None:
            i, fresh = fresh, None
        else:
            if attempts and not may_try_again():
                i = None
            elif pinned is not None:
                i, pinned = pinned, None
            else:
                i = pool.pick(req, s.peer, tried)
                if i is None and pool.full(tried):
                    if queue_deadline is None:
                        wait = pool.cfg.queue.timeout if pool.cfg.queue is not None else 0.0
                        queue_deadline = time.monotonic() + wait
                    remaining = queue_deadline - time.monotonic()
                    if remaining > 0 and pool.wait_turn(remaining):
                        continue
                    s.refuse(rec, 503, f'every server of pool "{pool.name}" is at '
                             "max_conns" + (" and the queue is full or the wait ran out"
                                               if pool.cfg.queue is not None else ""))
                    return False
            if i is not None:
                attempts += 1
                if attempts == 1:
                    first_at = time.monotonic()
                elif rt.metrics is not None:
                    rt.metrics.retry(pool.name)
        if i is None:
            if last_error is None:
                s.refuse(rec, 503, no_server_why(pool.name))
            else:
                s.refuse(rec, last_error.status, last_error.detail)
            return False
        server = pool.servers[i]
        rec.upstream = server.addr
        # Counted from the pick on: max_conns and least_conn must see a
        # request that is still connecting.
        pool.begin(i)
        try:
            try:
                conn = (pool.conns[i].checkout(replayable) if i not in tried
                        else pool.conns[i].connect())
            except UpstreamError as exc:
                rt.log.warning("request %s: route=%s pool=%s server=%s: %s", rec.request_id,
                               rec.route, pool.name, server.addr, exc.detail)
                pool.failed(i, time.time())
                last_error = exc
                tried.add(i)
                continue
            host = out_host or server.addr
            head = http1.serialize_request_head(req.method, target, [("Host", host)] + headers)
            cookie = (("Set-Cookie", pool.set_cookie(i, s.tls_version is not None)),) if (
                pool.sticky is not None and token != pool.sticky.token(i)) else ()

            if retry.on and replayable:
                def retry_status(status: int, i=i) -> bool:
                    return (status in retry.on and may_try_again()
                            and pool.any_usable(tried | {i}))
            else:
                retry_status = None

            try:
                return attempt(s, req, rec, pool, i, conn, head, framing, max_body,
                               client_keepalive, time.time(), cookie, retry_status)
            except UpstreamError as exc:
                conn.close()
                last_error = exc
                code = exc.code if exc.kind == "status" else None
                if failover.charged(exc.kind, conn.reused, code in pool.cfg.fail_status):
                    pool.failed(i, time.time())  # this server's, never another's
                step = failover.after_failure(
                    exc.kind, sent=exc.sent, reused=conn.reused, replayable=replayable,
                    listed=failover.condition(exc.kind, code) in retry.on)
                if step == failover.STOP:
                    s.refuse(rec, exc.status, exc.detail)
                    return False
                tried.add(i)
                if step == failover.SAME:
                    fresh = i  # the server had closed the pooled connection
                # Said only when another attempt follows: else the
                # answer's own error line (serve_one) reports it.
                if fresh is not None or (may_try_again() and (
                        pool.any_usable(tried) or pool.full(tried))):
                    rt.log.warning("request %s: route=%s pool=%s server=%s: %s (retrying)",
                                   rec.request_id, rec.route, pool.name, server.addr,
                                   exc.detail)
            except BaseException:
                conn.close()
                raise
        finally:
            pool.end(i)


def attempt(s, req, rec, pool, i, conn: UpstreamConn, head: bytes, framing, max_body,
            client_keepalive, t0, extra=(), retry_status=None) -> bool:
    """Send one request on ``conn`` and relay its response to the client.

    ``extra``: response fields to add (the sticky Set-Cookie).
    ``retry_status(status)``: True when a response with that status should
    be dropped for another attempt; it is asked only while nothing of the
    response went to the client, and then ``_StatusRetry`` is raised.
    """
    cfgp = pool.cfg
    # 1. the request
    try:
        if s.spool is not None:
            request_body.send_spooled(s, conn, head)
        elif framing.kind == "length" and framing.length:
            request_body.send_length_body(s, conn, head, framing.length)
        elif framing.kind == "chunked":
            request_body.send_chunked_body(s, conn, head, max_body)
        else:
            request_body.up_send(s, conn, head, sent=False)
    except UpstreamSendError as exc:
        raise UpstreamError("reset", f"sending to {conn.server.addr}: {exc}",
                            sent=exc.sent) from None
    except socket.timeout:
        raise UpstreamError("timeout", f"sending to {conn.server.addr} timed out",
                            sent=True) from None
    # 2. the response head (1xx interim responses forwarded to 1.1 clients)
    interim = False
    while True:
        resp, body_start = read_response_head(s, conn)
        if 100 <= resp.status < 200:
            if resp.status == 101:
                if upgrade_asked(req, s.rt.routes[rec.route]) is not None:
                    return websocket.tunnel(s, rec, conn, resp, body_start, t0, extra)
                raise UpstreamError("invalid", f"{conn.server.addr} switched protocols "
                                    "without being asked", sent=True)
            interim = interim or req.version == "1.1"
            if req.version == "1.1":
                s._send(http1.serialize_response_head(
                    resp.status, resp.reason, hdr.response_headers_for_client(resp.headers)))
            conn.buf = body_start
            continue
        break
    rec.upstream_status = resp.status
    if resp.status in cfgp.fail_status:
        pool.failed(i, time.time())
    if retry_status is not None and not interim and retry_status(resp.status):
        raise _StatusRetry(resp.status, f"upstream {conn.server.addr} answered {resp.status}")
    # 3. the response to the client
    keep = client_keepalive and not s.rt.draining
    er = s.edge_req
    s.cache_tee = tee = None
    if s.cache_hook is None and not extra and (er is None or er.rules.resp_rules is None) \
            and (rec.route is None or s.rt.routes[rec.route].compress is None) \
            and s.resp_head_size <= http1.REMEMBERED_HEAD_SIZE:
        # No cache hook, sticky cookie, per-request variables or
        # Accept-Encoding: the body's framing and the client's head are a
        # function of these (Date: the clock's, for an origin without).
        key = (resp.status, resp.reason, resp.version, tuple(resp.headers), req.method,
               req.version, keep, er.rules if er is not None else None,
               er.host_value if er is not None else None, s.proto, conn.server.addr,
               s.hsts, response.CLOCK.date())
        got = s.rt.client_heads.get(key)
    else:
        key = got = None
    if got is None:
        try:
            rframing = http1.response_body_framing(req.method, resp)
        except http1.ProtocolError as exc:
            raise UpstreamError("invalid", f"{conn.server.addr}: invalid response: "
                                f"{exc.reason}", sent=True) from None
        if s.cache_hook is not None:
            tee = s.cache_hook.on_response(resp, rframing)
            if tee.served:  # a 304 merged, or stale-if-error: the cache answered
                conn.close()
                return tee.keep
            s.cache_tee = tee
        got = response.client_head(s, req, rec, resp, rframing, conn, extra, tee, keep) + (rframing,)
        if key is not None:
            response.remember(s.rt.client_heads, key, got)
    client_head, keep, chunk_out, encoder, up_keepalive, rframing = got
    rec.status = resp.status
    if resp.status >= 500:  # relayed as it came: the error log names who answered it
        rec.why = f"upstream {conn.server.addr} answered {resp.status}"

    if rframing.kind == "none":
        s._send(client_head)
        conn.buf = body_start
    elif rframing.kind == "length" and encoder is None:
        relay.relay_length(s, conn, client_head, body_start, rframing.length)
    else:
        up_keepalive = relay.relay_decoded(s, conn, client_head, body_start, rframing,
                                           chunk_out, encoder) and up_keepalive
    rec.upstream_time = time.time() - t0
    if tee is not None:
        tee.commit()  # bodiless responses (HEAD, 304): committed here; no-op otherwise
    if up_keepalive and rframing.kind != "close":
        pool.conns[i].checkin(conn)
    else:
        conn.close()
    return keep


def read_response_head(s, conn: UpstreamConn):
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
        try:
            end = http1.find_head_end(buf) if buf else -1
        except http1.ProtocolError as exc:  # a bare CR or LF: the server's fault, not the client's
            raise UpstreamError("invalid", f"{conn.server.addr}: invalid response: {exc.reason}",
                                sent=True) from None
        if end >= 0:
            break
        if len(buf) > limit:
            raise UpstreamError("invalid", f"{conn.server.addr}: response head too large",
                                sent=True)
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
    s.resp_head_size = end
    try:
        resp = http1.parse_response_head(buf[:end], s.rt.limits)
    except http1.ProtocolError as exc:
        raise UpstreamError("invalid", f"{conn.server.addr}: invalid response: {exc.reason}",
                            sent=True) from None
    return resp, buf[end:]


def sticky_choice(pool: PoolRuntime, req) -> tuple[int | None, str | None]:
    """(server the request's sticky cookie pins it to, or None; the cookie's token).

    A server in drain keeps its sticky requests but takes no new tunnel
    (WebSocket).  Read-only: ``forkproxyctl explain`` asks it too.
    """
    pinned, token = pool.sticky_server(req)
    if pinned is not None and not pool.usable(pinned) and upgrade_asked(req) is not None:
        pinned = None
    return pinned, token


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


class _StatusRetry(UpstreamError):
    """A response whose status ``retry.on`` lists, dropped for another attempt."""

    def __init__(self, code: int, detail: str):
        super().__init__("status", detail, sent=True)
        self.code = code

    @property
    def status(self) -> int:
        return self.code
