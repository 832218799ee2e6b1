"""The edge rules of a configuration, compiled once per worker, and the hooks the session calls.

``Edge(cfg, shared, slot)`` compiles every route's rules (``core.access``,
``core.rewrite``, ``core.ratelimit``) and attaches the shared buffers the
master created before forking (``shared``: see ``daemon.hooks``; None gives
per-process buffers, for tests and tools that build a Runtime by hand).

Session calls, in this order:

``Edge.admit(listener, peer) -> ticket | None`` and ``release(ticket)``
    around a whole connection: ``max_conns_per_ip`` (None: close it now).
``Edge.request(tx, peer, proto) -> EdgeRequest``
    after routing, before anything goes upstream: ``.answer`` is None or
    the ``Answer`` to send instead (403, 404..., 405 with Allow, 429 with
    Retry-After, 414, 431, a redirect); otherwise ``.target`` is the target
    to send upstream (rewritten; ``target`` must be canonical, see
    ``request_path.canonical_request``, and a rewritten path is made canonical
    again, 400 when it cannot be). The checks run in the order ACL, methods,
    limits, deny rules, rate limit, rewrites/redirect; an answer's ``why``
    names the rule, for the error log. ``rec.request_id`` is kept when set,
    else chosen by ``Edge.request_id(req, peer)`` (a trusted proxy's
    ``X-Request-Id`` is kept), which the session calls as soon as the head
    is parsed, so that a request refused before routing has an id too.
    With ``count=False`` (``forkproxyctl explain``) the rate limit is
    skipped, so asking costs the client nothing.
``EdgeRequest.upstream(headers, host) -> (headers, host)``
    the request fields sent upstream: ``X-Request-Id`` and request_headers.
``EdgeRequest.downstream(headers, server_addr, servers=None) -> headers``
    the response fields sent to the client: hide_headers, rewrite_location,
    response_headers; relayed responses and cache hits alike.
``Edge.page(index, status) -> (body, content_type) | None``
    the configured error page of a status (route's, else server's).
"""

from __future__ import annotations

import ipaddress
import math
import mmap
import os
import random
import re
import time
from dataclasses import dataclass
from operator import itemgetter

from forkproxy.config import Config
from forkproxy.core import headers as hdr
from forkproxy.core.access import DenyRule, Methods, compile_acl, first_denial
from forkproxy.core.canon import PathRefused, canonical_path
from forkproxy.core.connlimit import ConnTable, connlimit_size
from forkproxy.core.ratelimit import RateLimiter, parse_rate, ratelimit_size
from forkproxy.core.rewrite import HeaderRules, Redirect, compile_rewrites

__all__ = ["Edge", "EdgeRequest", "Answer", "create_shared", "CONN_ENTRIES"]

#: Client addresses tracked per worker slot by the max_conns_per_ip table.
CONN_ENTRIES = 4096
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


@dataclass(frozen=True)
class Answer:
    """forkproxy answers itself: ``status``, extra ``fields``, ``why`` for the error log."""

    status: int
    why: str
    fields: tuple = ()


def create_shared(cfg: Config, n_slots: int) -> dict:
    """Master, before forking: the shared buffers ``cfg`` needs (anonymous MAP_SHARED mmaps).

    ``{"n_slots": n, "rate": {route index: mmap}, "conns": mmap | None}``;
    each rate-limit buffer is formatted here with a fresh random seed.
    """
    out: dict = {"n_slots": n_slots, "rate": {}, "conns": None}
    for r in cfg.routes:
        if r.rate_limit is not None:
            rl = r.rate_limit
            mm = mmap.mmap(-1, ratelimit_size(rl.keys, n_slots))
            RateLimiter(mm, rl.keys, n_slots, parse_rate(rl.rate), rl.burst, create=True,
                        seed=os.urandom(16)).release()
            out["rate"][r.index] = mm
    if any(lc.max_conns_per_ip for lc in cfg.listeners):
        mm = mmap.mmap(-1, connlimit_size(CONN_ENTRIES, n_slots))
        ConnTable(mm, CONN_ENTRIES, n_slots, create=True, seed=os.urandom(16))
        out["conns"] = mm
    return out


class RouteRules:
    """One route's compiled rules."""

    def __init__(self, cfg: Config, r, limiter: RateLimiter | None):
        s = cfg.server
        self.index = r.index
        self.route = str(r.index)
        access = r.access if r.access is not None else s.access
        self.acl = compile_acl(tuple(e.split(" ", 1)) for e in access) if access else None
        self.acl_owner = f"route {r.index}" if r.access is not None else "server.access"
        self.methods = Methods(r.methods) if r.methods else None
        self.deny = tuple(DenyRule(path=d.path, path_regex=d.path_regex, query_regex=d.query_regex,
                                   header=d.header, header_regex=d.header_regex,
                                   methods=frozenset(d.methods), status=d.status) for d in r.deny)
        self.limiter = limiter
        self.rate_limit = r.rate_limit  # as configured, for the error log
        key = r.rate_limit.key if r.rate_limit is not None else "ip"
        self.key_header = key[7:].lower() if key.startswith("header:") else None
        self.rewriter = None
        if r.strip_prefix or r.add_prefix or r.rewrite or r.redirect:
            self.rewriter = compile_rewrites(
                r.strip_prefix, r.add_prefix, [(w.pattern, w.to) for w in r.rewrite],
                (r.redirect.to, r.redirect.status) if r.redirect is not None else None)
        self.req_rules = _rules(r.request_headers)
        self.resp_rules = _rules(r.response_headers)
        self.hide = frozenset(r.hide_headers if r.hide_headers is not None else s.hide_headers)
        pages = r.error_pages if r.error_pages is not None else s.error_pages
        self.pages = {p.status: (p.body, p.content_type) for p in pages}
        self.rewrite_location = r.rewrite_location
        self.host_header = (r.host_header or "").lower()
        self.body_timeout = r.body_timeout if r.body_timeout is not None else s.body_timeout
        self.max_uri = r.max_uri_length
        self.max_headers = r.max_headers
        # Whether Edge._check has anything to check: most routes have nothing.
        self.checks = any(x is not None for x in (self.acl, self.methods, self.max_uri,
                                                  self.max_headers, self.limiter)) or bool(self.deny)

    def rate_key(self, req, client: str) -> str:
        """The rate-limit bucket of a request: its key header's value, else its client."""
        value = req.get(self.key_header) if self.key_header is not None else None
        return "ip " + client if value is None else "h " + value


def _rules(c) -> HeaderRules | None:
    if c is None:
        return None
    rules = HeaderRules(dict(c.set), dict(c.add), c.remove)
    return rules or None


def rate_limit_states(edge) -> list[dict]:
    """What each fleet rate limit of ``edge``'s routes applies now (``FleetLimiter.state``)."""
    return [rules.limiter.state() for rules in edge.routes
            if hasattr(rules.limiter, "state")]  # net.fleetlimit.FleetLimiter


class Edge:
    """A worker's edge rules for one configuration; see the module docstring."""

    def __init__(self, cfg: Config, shared: dict | None, slot: int | None, log=None):
        self.log = log
        if shared is None:  # no master: private buffers, slot 0
            shared, slot = create_shared(cfg, 1), 0
        self.slot = slot if slot is not None and slot < shared["n_slots"] else None
        n = shared["n_slots"]
        self.routes = []
        for r in cfg.routes:
            limiter = None
            if r.rate_limit is not None and self.slot is not None:
                rl = r.rate_limit
                limiter = RateLimiter(shared["rate"][r.index], rl.keys, n, parse_rate(rl.rate),
                                      rl.burst)
                if rl.scope == "fleet":  # counted in memcached, the node's as the fallback
                    # Here, in the worker: the master imports this module (create_shared)
                    # and must never load gevent or pylibmc, which net.cache_memcached does.
                    from forkproxy.net.fleetlimit import FleetLimiter

                    limiter = FleetLimiter(limiter, cfg.cache.servers, cfg.cache.timeout,
                                           rl.rate, rl.burst, r.index, log)
            self.routes.append(RouteRules(cfg, r, limiter))
        self.conns = (ConnTable(shared["conns"], CONN_ENTRIES, n)
                      if shared["conns"] is not None and self.slot is not None else None)
        self.server_pages = {p.status: (p.body, p.content_type) for p in cfg.server.error_pages}
        self.trusted = hdr.parse_networks(cfg.server.trusted_proxies)
        self.canon = (cfg.server.merge_slashes, cfg.server.encoded_slashes)
        self._rand = random.Random(os.urandom(16))

    # -- connections -------------------------------------------------------

    def admit(self, listener, addr):
        """A ticket for ``release``, or None when the address has too many connections."""
        limit = listener.max_conns_per_ip
        if not limit or self.conns is None or not isinstance(addr, tuple):
            return -1
        return self.conns.acquire(f"{listener.name} {addr[0]}", self.slot, limit)

    def release(self, ticket) -> None:
        if ticket is not None and ticket >= 0:
            self.conns.release(ticket, self.slot)

    # -- requests ----------------------------------------------------------

    def page(self, index: int | None, status: int):
        if index is not None and index < len(self.routes):
            return self.routes[index].pages.get(status)
        return self.server_pages.get(status)

    def _trusted(self, peer: str) -> bool:
        if not self.trusted:
            return False
        try:
            ip = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(ip.version == n.version and ip in n for n in self.trusted)

    def client(self, req, peer: str) -> str:
        """The real client of ``req`` from ``peer``: ``peer`` itself, or behind a
        trusted proxy the address its X-Forwarded-For vouches for."""
        if self.trusted and self._trusted(peer):
            return hdr.real_client_addr(req.headers, peer, self.trusted)
        return peer

    def request_id(self, req, peer: str) -> str:
        """The id of a request from ``peer``: a trusted proxy's well-formed
        ``X-Request-Id`` is kept; any other request gets 32 random hex digits."""
        rid = req.get("x-request-id") if self.trusted and self._trusted(peer) else None
        if rid is None or not _REQUEST_ID.fullmatch(rid):
            rid = "%032x" % self._rand.getrandbits(128)
        return rid

    def request(self, tx, peer: str, proto: str, *, count: bool = True) -> "EdgeRequest":
        """The edge's decision for one routed request (see the module docstring):
        the transaction's route (``tx.rc``), request, access record, host and
        target as the client asked for it (``tx.asked_target``).

        ``count=False`` (``forkproxyctl explain``): the same checks, except
        that the rate limit is not consulted, so nothing is counted against
        the client; the caller reports ``rules.rate_key`` instead.
        """
        req, rec, host, target = tx.req, tx.rec, tx.host, tx.asked_target
        rules = self.routes[tx.rc.index]
        client = self.client(req, peer)
        rid = rec.request_id = rec.request_id or self.request_id(req, peer)
        er = EdgeRequest(rules, client, rid, proto, host or "", req.host_value)
        er.answer = self._check(rules, req, client, target, count) if rules.checks else None
        if er.answer is None:
            er.target = target
            if rules.rewriter is not None and target.startswith("/"):
                path, _, query = target.partition("?")
                got = rules.rewriter.apply(path, query, er.variables(request_uri=target))
                if isinstance(got, Redirect):
                    er.answer = Answer(got.status, "redirect", (("Location", got.location),))
                else:
                    # A rewrite may put text from the query ($args) or its own
                    # dot segments in the path: what goes upstream is canonical too.
                    try:
                        path = canonical_path(got[0], *self.canon)
                    except PathRefused as exc:
                        er.answer = Answer(exc.status, f"rewrite of route {rules.index} made "
                                           f"a path no rule can judge: {exc.reason}")
                        return er
                    er.target = path + ("?" + got[1] if got[1] else "")
        return er

    def _check(self, rules: RouteRules, req, client: str, target: str,
               count: bool = True) -> Answer | None:
        route = rules.index
        if rules.acl is not None and not rules.acl.permits(client):
            return Answer(403, _acl_why(rules, client))
        if rules.methods is not None:
            allow = rules.methods.check(req.method)
            if allow is not None:
                return Answer(405, f"method {req.method} not allowed by route {route} "
                              f"(allowed: {allow})", (("Allow", allow),))
        if rules.max_uri is not None and len(target) > rules.max_uri:
            return Answer(414, f"request target of {len(target)} bytes over route {route}'s "
                          f"max_uri_length {rules.max_uri}")
        if rules.max_headers is not None and len(req.headers) > rules.max_headers:
            return Answer(431, f"{len(req.headers)} header fields over route {route}'s "
                          f"max_headers {rules.max_headers}")
        if rules.deny:
            path, _, query = target.partition("?")
            n = first_denial(rules.deny, req.method, path, query, req.headers)
            if n is not None:
                return Answer(rules.deny[n].status, f"denied by deny rule {n + 1} of route {route}")
        if rules.limiter is not None and count:
            ok, retry = rules.limiter.check(rules.rate_key(req, client), self.slot,
                                            time.monotonic())
            if not ok:
                rl = rules.rate_limit
                return Answer(429, f"rate limit of route {route} exceeded ({rl.rate}, burst "
                              f"{rl.burst}, key {rl.key})",
                              (("Retry-After", str(max(1, math.ceil(retry)))),))
        return None


def _acl_why(rules: RouteRules, client: str) -> str:
    """Which entry of the access list refused ``client``, in words (once it did)."""
    n = rules.acl.deciding(client)
    action, cidr = rules.acl.entries[n]
    return f'address {client} denied by access rule {n + 1} of {rules.acl_owner} ("{action} {cidr}")'


class EdgeRequest:
    """What the edge decided for one request; see the module docstring."""

    __slots__ = ("rules", "client", "request_id", "proto", "host", "host_value", "answer",
                 "target", "body_timeout")

    def __init__(self, rules: RouteRules, client: str, request_id: str, proto: str, host: str,
                 host_value: str | None):
        self.rules = rules
        self.client = client
        self.request_id = request_id
        self.proto = proto
        self.host = host
        self.host_value = host_value
        self.answer: Answer | None = None
        self.target = ""
        self.body_timeout = rules.body_timeout

    def variables(self, **more) -> dict:
        v = {"remote_addr": self.client, "request_id": self.request_id,
             "route": self.rules.route, "host": self.host, "scheme": self.proto}
        v.update(more)
        return v

    def upstream(self, headers, host: str | None):
        """Request fields for upstream: X-Request-Id, then the route's request_headers.

        ``headers`` (a list the caller owns) no longer has the client's own
        X-Request-Id: the caller dropped it with the hop-by-hop fields.
        """
        headers.append(("x-request-id", self.request_id))
        rules = self.rules.req_rules
        if rules is not None:
            headers = rules.apply(headers, self.variables(upstream_addr=""))
            hosts = [v for n, v in headers if n == "host"]
            if hosts:  # set = { Host = ... }: the proxy writes Host itself
                host = hosts[-1]
                headers = [(n, v) for n, v in headers if n != "host"]
        return headers, host

    def downstream(self, headers, server_addr: str, servers=None):
        """Response fields for the client: hide_headers, rewrite_location, response_headers.

        ``server_addr`` answered (the ``upstream_addr`` variable; "" for a
        cache hit).  ``servers``: the addresses whose names rewrite_location
        turns public, by default ``server_addr`` alone; a cache hit passes
        its pool's, since any of them may have sent the stored response.
        ``headers`` (lower-case names, as core.http1 gives them) itself
        comes back when no rule changes it: pass a list the caller owns.
        """
        rules = self.rules
        hide = rules.hide
        # Checked in C first: most responses carry none of the hidden fields.
        out = [(n, v) for n, v in headers if n.lower() not in hide] \
            if hide and not hide.isdisjoint(map(itemgetter(0), headers)) else headers
        if rules.rewrite_location and self.host_value:
            # Most responses carry none of the fields that can name a server
            # (names are lower-case, as core.http1 gives them: checked in C).
            if not _RELOCATED.isdisjoint(map(itemgetter(0), out)):
                at = [i for i, (n, _) in enumerate(out) if n in _RELOCATED]
                names = set()
                for addr in (server_addr,) if servers is None else servers:
                    names |= _backend_names(addr, rules.host_header)
                out = list(out)
                for i in at:
                    n, v = out[i]
                    out[i] = (n, _relocate(n.lower(), v, names, self.proto, self.host_value))
        if rules.resp_rules is not None:
            out = rules.resp_rules.apply([(n.lower(), v) for n, v in out],
                                         self.variables(upstream_addr=server_addr))
        return out


_URL = re.compile(r"(?i)\bhttps?://([^/?#\s;,\"']+)")
_DOMAIN = re.compile(r"(?i)(;\s*domain\s*=\s*)([^;]*)")


# The fields _relocate may rewrite.
_RELOCATED = frozenset({"location", "refresh", "content-location", "set-cookie"})


def _backend_names(server_addr: str, host_header: str) -> set[str]:
    """How a server may name itself in a URL: its addr, its host alone, the host_header."""
    host = server_addr.rpartition(":")[0].lower()
    return {n for n in (server_addr.lower(), host, host.strip("[]"), host_header) if n}


def _relocate(name: str, value: str, names: set[str], proto: str, public: str) -> str:
    """Location/Refresh URLs and Set-Cookie domains naming the server, turned public."""
    if name in ("location", "refresh", "content-location"):

        def sub(m: re.Match) -> str:
            if m.group(1).lower() in names:
                return f"{proto}://{public}"
            return m.group(0)

        return _URL.sub(sub, value)
    if name == "set-cookie" and "omain" in value:
        public_host = hdr.split_host(public)[0] if public else ""

        def dom(m: re.Match) -> str:
            d = m.group(2).strip().lstrip(".").lower()
            return f"{m.group(1)}{public_host}" if d in names else m.group(0)

        return _DOMAIN.sub(dom, value)
    return value
