"""The request stages, in request-path order: one list, run live and dry.

``STAGES`` is what happens to a request once its head is parsed.  Each
stage is a function ``stage(s, tx)`` of the connection ``s`` and the
request's ``Transaction``: it fills in ``tx`` and returns None to pass it
on, or a bool when the request has been answered (True: the connection may
carry another request).  The decisions are made here, the same for both
kinds of ``s``; what leaves the worker goes through ``s``:

- the connection loop (``net.http_session.Session``, ``s.live`` True)
  answers, reads the body, forwards;
- ``net.explain``'s ``DryRun`` (``s.live`` False) records what would
  happen and stops before anything is sent; ``forkproxyctl explain`` thus
  runs this very list and cannot disagree with the request path.

What ``s`` offers the stages: ``rt``, ``listener``, ``peer``, ``proto``,
``live``, ``rt.plans`` (each route's stages, ``plan``), ``mirrored`` (a
client's request: a route's mirror may copy it), and
``refuse(tx, status, why, fields=())``,
``redirect_https(tx)``, ``take_body(tx)``, ``cached(tx)``, and, for a dry run,
``balanced(tx)``.
"""

from __future__ import annotations

from forkproxy.core import http1
from forkproxy.net import forward
from forkproxy.net.forward import sticky_choice
from forkproxy.net.response import remember
from forkproxy.net.request_path import (body_limit, canonical_request, no_route_why,
                                        request_target)
from forkproxy.net.upstream_http import upstream_fields


def admission(s, tx):
    """The canonical target (400 for a path no rule can judge) and its form
    (400, 501 for CONNECT): every later decision sees the canonical one.

    Both are pure functions of the request (and the server's canon
    settings): for a small head, whose parsed request ``parse_request_head``
    hands out again for the same bytes, they are remembered by that object
    in ``rt.admitted`` (at most CLIENT_HEADS, then forgotten at once)."""
    req = tx.req
    if 0 < tx.head_size <= http1.REMEMBERED_HEAD_SIZE:
        memo = s.rt.admitted
        got = memo.get(id(req))
        if got is None or got[0] is not req:  # the object is kept: its id is not reused
            canon = canonical_request(req, *s.rt.canon)
            got = remember(memo, id(req), (req, canon, *request_target(canon)))
        _, tx.req, tx.host_value, tx.host, tx.path, tx.asked_target = got
    else:
        req = tx.req = canonical_request(req, *s.rt.canon)
        tx.host_value, tx.host, tx.path, tx.asked_target = request_target(req)
    tx.rec.host = tx.host


def routing(s, tx):
    """The route of (listener, host, path), 404 when none matches; its pool,
    or the pool its split (``core.split``) gives this request."""
    rt = s.rt
    route = rt.router.match(s.listener.name, tx.host, tx.path)
    if route is None:
        s.refuse(tx, 404, no_route_why(s.listener.name, tx.host, tx.path))
        return False
    rc = tx.rc = rt.routes[route.index]
    split = rc.split  # a weighted split across pools (core.split): this request's pool
    name = route.pool if split is None else split.pools[
        split.choose(tx.req, rt.edge.client(tx.req, s.peer) if split.by is not None else "")]
    tx.pool = rt.pools[name]
    rec = tx.rec
    rec.route, rec.pool = route.index, name


def edge_rules(s, tx):
    """ACL, methods, limits, deny rules, rate limit, rewrites, redirects
    (``net.edge``); a dry run does not count the request against its rate limit."""
    er = tx.edge = s.rt.edge.request(tx, s.peer, s.proto, count=s.live)
    if er.answer is not None:
        s.refuse(tx, er.answer.status, er.answer.why, fields=er.answer.fields)
        return False
    tx.target = er.target  # the cache keys the client's (asked_target)


def redirects(s, tx):
    """A ``redirect_https`` route answers plain http with a 308; over TLS its
    HSTS value goes on the response."""
    rc = tx.rc
    if rc.redirect_https and s.proto == "http":
        return s.redirect_https(tx)
    tx.hsts = rc.hsts if s.proto == "https" else None


def body(s, tx):
    """The body limit (413), then the body itself: ``Expect``, request
    buffering (``s.take_body``; nothing in a dry run)."""
    req = tx.req
    tx.max_body = body_limit(s.rt, tx.rc, req.framing)
    tx.keep = http1.keep_alive(req.version, req.connection)
    tx.has_body = req.framing.carries_body
    if tx.has_body or req.expect is not None:
        return s.take_body(tx)


def cache_lookup(s, tx):
    """On a cached route (and for every PURGE when the cache is on): the
    cache answers (hit, stale, PURGE, 504) or sets up the miss
    (``net.http_cache``); ``s.cached`` does it, or reports it."""
    cache = s.rt.cache
    if cache is None or not (tx.rc.cache or tx.req.method == "PURGE"):
        return None
    return s.cached(tx)


def balancing(s, tx):
    """The server a sticky cookie or sticky table pins the request to (else
    the balancer's pick, made by ``forward.ServerChoice`` as it forwards);
    only in the plans of routes to a pool with either (a split's pools may
    differ: the one this request takes decides)."""
    pool = tx.pool
    if pool.sticky is not None or pool.stick is not None:
        tx.pinned, tx.token = sticky_choice(pool, tx.req, tx.edge.client if tx.edge else s.peer)


def forwarding(s, tx):
    """The upstream head (a cache hook may add its validators), then the
    exchange with a server (``net.forward``); always answers.  A dry run
    stops here: it reports the server the balancer would pick."""
    if not s.live:
        return s.balanced(tx)
    hook = tx.hook
    mirror = False
    if tx.headers is None:
        headers, tx.out_host = upstream_fields(s, tx)
        tx.headers = hook.upstream_fields(headers) if hook is not None else headers
        mirror = tx.rc.mirror is not None and s.mirrored
    try:
        if mirror:  # a copy to the route's mirror pool (net.mirror), sent by its own greenlet
            s.rt.mirrors.copy(s, tx)
        return forward.exchange(s, tx)
    finally:
        tx.hook = None
        if hook is not None:
            hook.done()


STAGES = (admission, routing, edge_rules, redirects, body, cache_lookup, balancing, forwarding)


def plan(rc, sticky: bool, cache: bool) -> tuple:
    """The stages after routing that a request on route ``rc`` runs, in
    ``STAGES`` order: the others could only pass every request of the route
    on, so they are left out.  ``sticky``: a pool of the route has sticky
    cookies or a sticky table; ``cache``: the worker has a cache (it answers PURGE on every
    route).  Made once per route when a worker's runtime is built
    (``Runtime.plans``)."""
    skip = set()
    if not rc.redirect_https and rc.hsts is None:
        skip.add(redirects)  # it would only set tx.hsts to None, its default
    if not cache:
        skip.add(cache_lookup)
    if not sticky:
        skip.add(balancing)  # nothing to pin by: the balancer picks as it forwards
    return tuple(stage for stage in STAGES[2:] if stage not in skip)


def run(s, tx) -> bool:
    """Run ``STAGES`` on ``tx`` until one answers; what it answered.

    Admission and routing come first; then the route's plan
    (``s.rt.plans``, see ``plan``): the connection loop and ``explain`` run
    this one function, so they walk the same stages."""
    got = admission(s, tx)
    if got is None:
        got = routing(s, tx)
        if got is None:
            for stage in s.rt.plans[tx.rc.index]:
                got = stage(s, tx)
                if got is not None:
                    return got
            raise AssertionError("forwarding always answers")
    return got
