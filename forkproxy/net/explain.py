"""``GET /explain`` on the admin endpoint: what a request would get, without sending it.

``explain(rt, method, url, headers, listener=None, client=...)`` builds the
request a client would send for ``url`` and runs the request path's own
stages on it (``net.stages.run``, the walk the connection loop makes), in
a dry mode (``DryRun``) that stops before anything leaves the worker:

1. the head is parsed by ``core.http1`` with the server's limits (400, 414, 431);
2. admission: ``request_path.canonical_request`` (400 for a path no rule can
   judge), ``request_path.request_target``; routing (404 when no route matches);
3. edge rules: ``Edge.request(count=False)``: access list, methods, the
   route's limits, deny rules, then rewrites or a redirect; redirects:
   ``request_path.https_location`` for a ``redirect_https`` route; body:
   ``request_path.body_limit`` (413);
4. cache lookup: ``Cache.consult``, a lookup in the store (reads only);
5. balancing, reported where forwarding would start: ``forward.sticky_choice``,
   else the pool's ``pick`` on a copy of its balancer, so this worker's
   rotation does not move, and nothing is counted in flight.

Two differences with a real request, on purpose: the rate limit is not
consulted (that would count the request against the client); its rule and
the bucket the request falls in are reported instead.  And the server is the
one *this* worker would pick now: with ``hash``, ``ip_hash``, a sticky
cookie or a pool of one it is the one every worker picks; with
``round_robin``, ``least_conn`` and ``random2`` the next request may go
elsewhere.

The answer (``forkproxyctl explain --json`` prints it)::

    {request: {method, url, target, host, client},
     listener: {name, bind, proto},
     route: {id, host, path, path_regex, pool, cache} | null,
     split: {by, key, pool, how: "hash" | "random",
             pools: [{pool, weight, share}]} | null,  # a route's pools = [...]
     upstream_target: target after rewrites | null,
     refused: {status, why} | null,      # forkproxy would answer itself
     redirect: {status, location} | null,
     rate_limit: {rate, burst, key} | null,
     mirror: {pool, percent, queue, max_body, timeout} | null,  # the route's shadow traffic
     pool: {name, balance, key} | null,  # key: the hash / ip_hash key
     server: {addr, by: "sticky" | "balance"} | null,
     why_no_server: str | null,
     sticky: {cookie, token, server} | {table: scope, key, value, server} | null,
     cache: {result, key, namespace, action, reason, age} | null}

On a route with a weighted split (``pools``), ``route.pool`` is the pool
this request takes, and ``split`` says how: ``how`` "hash" (``split_by``:
the same ``key`` always takes the same pool) or "random" (no ``split_by``:
this request drew ``pool``, the next one draws again, by weight); ``key``
is "key VALUE" (the cookie's or header's value) or "src ADDRESS" (the
client's, for ``split_by = "ip"`` or a request without the cookie or header).

``cache.result`` is the ``X-Cache`` value the response would carry: HIT,
STALE, MISS, BYPASS, PURGE, or REVALIDATE (a conditional request upstream:
REVALIDATED on a 304, MISS otherwise) and 504 (only-if-cached, nothing stored).
``request.host`` is the Host the request carries: a ``Host`` header among
``headers``, else the URL's authority.
``cache.key`` is the URL as the cache names it (the client's target, before
rewrites), ``cache.namespace`` the route's (``net.http_cache.route_namespace``).
"""

from __future__ import annotations

import copy

from forkproxy.core import http1
from forkproxy.core.cache_policy import Action
from forkproxy.logs import AccessRecord
from forkproxy.net.forward import sticky_choice
from forkproxy.net.listener import Runtime
from forkproxy.net.request_path import https_location, no_server_why
from forkproxy.net import stages
from forkproxy.net.transaction import Transaction

__all__ = ["explain", "BadQuestion", "request_for"]

# The X-Cache value a response gets, by what the cache decided before sending.
_RESULTS = {Action.FRESH: "HIT", Action.STALE_OK: "STALE", Action.REVALIDATE: "REVALIDATE",
            Action.MISS: "MISS", Action.GATEWAY_TIMEOUT: "504"}


class BadQuestion(ValueError):
    """The question cannot be asked (bad URL, unknown listener): a 400 for the caller."""


def explain(rt: Runtime, method: str, url: str, headers: list[tuple[str, str]],
            listener: str | None = None, client: str = "127.0.0.1") -> dict:
    """The document of the module docstring; raises ``BadQuestion``."""
    lc, target, host = _listener_and_target(rt, url, listener)
    proto = "https" if lc.contexts else "http"
    # A Host header given replaces the URL's authority, as it does in the request.
    host = next((v.strip() for n, v in headers if n.strip().lower() == "host"), host)
    doc = {"request": {"method": method, "url": url, "target": target, "host": host,
                       "client": client},
           "listener": {"name": lc.name, "bind": lc.bind, "proto": proto},
           "route": None, "split": None, "upstream_target": None, "refused": None, "redirect": None,
           "rate_limit": None, "mirror": None, "pool": None, "server": None, "why_no_server": None,
           "sticky": None, "cache": None}
    try:
        _walk(rt, doc, lc, proto, request_for(rt, method, target, host, headers), client)
    except http1.ProtocolError as exc:
        doc["refused"] = {"status": exc.status, "why": exc.reason}
    return doc


def _listener_and_target(rt: Runtime, url: str, name: str | None):
    """(listener, origin-form target, Host value) for ``url``: the listener
    named ``name``, else the http listener on the URL's port."""
    try:
        _, authority, target, port = http1.split_url(url)
    except ValueError as exc:
        raise BadQuestion(str(exc)) from None
    http = [lc for lc in rt.cfg.listeners if lc.mode == "http"]
    if name is not None:
        found = [lc for lc in http if lc.name == name]
        what = f"no http listener named {name!r}"
    else:
        found = [lc for lc in http if lc.port == port]
        what = f"no http listener on port {port}"
    if not found:
        raise BadQuestion(what + "; http listeners: "
                          + (", ".join(f"{lc.name} ({lc.bind})" for lc in http) or "none"))
    return found[0], target, authority


def request_for(rt: Runtime, method: str, target: str, host: str, headers) -> http1.Request:
    """The request as forkproxy would parse it (``ProtocolError`` as it would refuse it)."""
    fields = list(headers)
    if not any(n.lower() == "host" for n, _ in fields):
        fields.insert(0, ("Host", host))
    for n, v in [("", method), ("", target)] + fields:
        if any(c in n + v for c in "\r\n\0"):
            raise BadQuestion("CR, LF and NUL are not allowed in a method, URL or header")
    head = "".join(f"{n}: {v}\r\n" for n, v in fields)
    try:
        raw = f"{method} {target} HTTP/1.1\r\n{head}\r\n".encode("latin-1")
    except UnicodeEncodeError:
        raise BadQuestion("a header or the URL has characters outside Latin-1") from None
    return http1.parse_request_head(raw, rt.limits)


class DryRun:
    """The connection the request stages (``net.stages``) see in a dry run:
    what would be sent is written into ``doc``, and every answer stops."""

    live = False
    mirrored = False

    def __init__(self, rt: Runtime, doc: dict, listener, proto: str, peer: str):
        self.rt, self.doc, self.listener, self.proto, self.peer = rt, doc, listener, proto, peer

    def refuse(self, tx, status: int, why: str, *, fields=()) -> bool:
        location = dict(fields).get("Location")
        if location is not None:
            self.doc["redirect"] = {"status": status, "location": location}
        else:
            self.doc["refused"] = {"status": status, "why": why}
        return False

    def redirect_https(self, tx) -> bool:
        self.doc["redirect"] = {"status": 308,
                                "location": https_location(self.rt, tx.rc.index, tx.host,
                                                           tx.target)}
        return False

    def take_body(self, tx) -> None:
        return None

    def cached(self, tx):
        rt, doc = self.rt, self.doc
        doc["cache"] = _cache(rt, tx.rc, self.proto, tx.host_value, tx.asked_target, tx.req,
                              tx.req.framing.carries_body)
        result = doc["cache"]["result"]
        if result == "504":
            self.refuse(tx, 504, "only-if-cached and nothing usable in the cache")
        if result in ("504", "PURGE"):  # the cache answers itself: no server is asked
            return False
        return None

    def balanced(self, tx) -> bool:
        pool, req = tx.pool, tx.req
        self.doc["pool"] = _pool(pool, req, self.peer)
        _server(self.doc, pool, req, self.peer)
        return False  # nothing leaves the worker


def _walk(rt: Runtime, doc: dict, lc, proto: str, req: http1.Request, peer: str) -> None:
    """Fill ``doc`` along the request stages (``stages.run``, the connection
    loop's own walk); returns at the first answer forkproxy gives itself, or
    before forwarding."""
    dry = DryRun(rt, doc, lc, proto, peer)
    tx = Transaction(AccessRecord(peer, 0.0), 0.0)
    tx.req = req
    try:
        stages.run(dry, tx)
    finally:  # a refusal raised (400, 413) still reports what came before it
        _report(doc, tx)
        if doc["split"] is None and tx.pool is not None and tx.rc.split is not None:
            doc["split"] = _split(tx.rc.split, tx, rt.edge.client(req, peer))


def _report(doc: dict, tx) -> None:
    """What the stages so far decided: the route, the edge's client and rate
    limit, the target sent upstream."""
    rc, er = tx.rc, tx.edge
    if rc is not None:
        doc["route"] = {"id": rc.index, "host": rc.host, "path": rc.path,
                        "path_regex": rc.path_regex, "cache": rc.cache,
                        "pool": tx.pool.name if tx.pool is not None else rc.pool}
    if er is not None:
        doc["request"]["client"] = er.client
        if rc.rate_limit is not None:
            doc["rate_limit"] = {"rate": rc.rate_limit.rate, "burst": rc.rate_limit.burst,
                                 "key": er.rules.rate_key(tx.req, er.client)}
    if rc is not None and rc.mirror is not None:
        m = rc.mirror
        doc["mirror"] = {"pool": m.pool, "percent": m.percent, "queue": m.queue,
                         "max_body": m.max_body, "timeout": m.timeout}
    if tx.target is not None:
        doc["upstream_target"] = tx.target


def _split(split, tx, client: str) -> dict:
    """The route's split and the pool the routing stage took for this request."""
    key = split.key(tx.req, client)
    return {"by": split.by, "key": None if key is None else key.decode("utf-8", "replace"),
            "pool": tx.pool.name, "how": "random" if key is None else "hash",
            "pools": [{"pool": p, "weight": w, "share": round(split.share(i), 4)}
                      for i, (p, w) in enumerate(zip(split.pools, split.weights))]}


def _cache(rt: Runtime, rc, proto: str, host_value, target: str, req, has_body: bool):
    """What the cache would do, as ``Cache.lookup`` decides it
    (``target``: the client's, which the cache keys)."""
    if rt.cache is None or not (rc.cache or req.method == "PURGE"):
        return None
    if req.method == "PURGE":
        return {"result": "PURGE", "key": None, "namespace": None, "action": None,
                "reason": "PURGE deletes the URL in every route serving it "
                          "(cache.purge_allowed applies)", "age": None}
    ns = rt.cache.namespace(rc)
    look = rt.cache.consult(proto, host_value, target, req, has_body, ns)
    if look.key is None:
        return {"result": "BYPASS", "key": look.primary, "namespace": ns, "action": None,
                "age": None,
                "reason": f"{req.method} with a body" if has_body
                else f"{req.method} is never answered from the cache; a success invalidates "
                     "the URL"}
    if look.passed:
        return {"result": "MISS", "key": look.primary, "namespace": ns, "action": None,
                "age": None,
                "reason": "hit-for-pass: the last response of this URL could not be stored"}
    d = look.decision
    return {"result": _RESULTS[d.action], "key": look.primary, "namespace": ns,
            "action": d.action.value,
            "reason": d.reason or None, "age": d.age if look.entry is not None else None}


def _pool(pool, req, peer: str) -> dict:
    key = pool.key(req, peer)
    return {"name": pool.name, "balance": pool.cfg.balance,
            "key": None if key is None else key.decode("utf-8", "replace")}


def _server(doc: dict, pool, req, peer: str) -> None:
    """The server ``forward.exchange`` would try first, and the sticky cookie's part in it."""
    pinned, token = sticky_choice(pool, req, peer)
    if pool.stick is not None:  # a sticky table: the request's key and its entry
        doc["sticky"] = {"table": pool.cfg.sticky.scope, "key": pool.cfg.sticky.key,
                         "value": token.key if token is not None else None,
                         "server": token.addr if token is not None else None}
    elif pool.sticky is not None:
        named = pool.sticky.index(token) if token is not None else None
        doc["sticky"] = {"cookie": pool.cfg.sticky.cookie, "token": token,
                         "server": pool.servers[named].addr if named is not None else None}
    if pinned is not None:
        doc["server"] = {"addr": pool.servers[pinned].addr, "by": "sticky"}
        return
    i = _preview(pool).pick(req, peer, frozenset())
    if i is not None:
        doc["server"] = {"addr": pool.servers[i].addr, "by": "balance"}
    elif pool.full(frozenset()):
        doc["why_no_server"] = "every server is at max_conns: the request would queue (503 " \
                               "when the pool has no queue or the wait runs out)"
    else:
        doc["why_no_server"] = f"{no_server_why(pool.name)}: 503"


def _preview(pool):
    """``pool`` with a copy of its balancer: a pick on it leaves the real
    balancer's state (round robin's position) where it was."""
    view = copy.copy(pool)
    view.balancer = copy.deepcopy(pool.balancer)
    return view
