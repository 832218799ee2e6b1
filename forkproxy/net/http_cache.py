"""The shared HTTP cache in the proxy: the glue between the request path,
``net.cache_store`` (bytes in memcached or memory) and ``core.cache_policy``
(RFC 9111 as pure functions).  It imports nothing of the connection loop.

CONTRACT (what the request path calls, with the request's ``Transaction``):

- The connection loop hands a request to ``Cache.handle(s, tx)`` instead of
  ``forward.exchange`` when its route has ``cache = true`` (and every
  ``PURGE`` request when the cache is on).  ``handle`` answers from the
  store, or calls ``forward.exchange`` itself with ``tx.hook`` set, and
  returns what ``exchange`` would: True when the connection may carry
  another request.
- ``forward.attempt`` calls ``tx.hook.on_response(resp, framing)`` once the
  response head is parsed and will be used (after any retry decision).  It
  returns a ``Tee``: either ``served`` (the cache answered the client itself:
  a 304 merged into the stored entry, or a stale entry served because the
  origin answered 5xx; the upstream connection is closed and ``tee.keep``
  returned) or a sink (``tx.tee``) whose ``headers`` are added to the
  client's and which gets every piece of the origin's (decoded,
  uncompressed) body with ``write`` and, once the body ended cleanly,
  ``commit``.  A body that does not end cleanly is never committed, so
  never stored.
- ``refuse`` calls ``tx.hook.on_refuse(tx, status)`` before a 5xx error
  response: True when a stale entry was served instead (stale-if-error with
  the pool down or unreachable).

Keys.  Each URL's primary key (``cache_policy.primary_key``: scheme, Host,
target with its query) is prefixed with its authority's namespace token
(``store.namespace``, one memcached get), so a host purge is one set, and
with its route's namespace (``route_namespace``: the route's ``cache_key``,
else a digest of the route's definition), so no route ever serves what
another stored.  The target is the client's, before the route's
strip_prefix, add_prefix and rewrite (``tx.asked_target``): two routes sharing a ``cache_key`` still keep
``/internal/x`` and ``/x`` apart.  A URL purge, and the invalidation by an
unsafe request (RFC 9111 4.4), delete the URL in the namespace of every
cached route that a request for it would reach on any listener
(``namespaces_serving``): the resource changed for each of them.  A
response with ``Vary`` is stored under ``key \\n token \\n secondary-key``,
and a small ``VARY`` marker under the key itself names the fields and a
random token; invalidating the URL deletes the marker, which makes every
variant unreachable at once.  A ``PASS`` marker (hit-for-pass, 10 s)
records that the URL's last response could not be stored, so its misses do
not queue behind the coalescing lock.

Coalescing.  A miss takes ``store.lock(key)`` (memcached ``add``: one
holder across every worker of every forkproxy sharing the servers) and goes
upstream; the others poll the store (5 ms doubling to 50 ms) until the
entry is there, the lock is free again (they take it), a PASS marker
appears, or ``lock_timeout`` runs out (they go upstream themselves).

Left out, on purpose: responses to HEAD never update a stored GET; a
client's own conditional request that misses is forwarded as it is (its
304 is not stored); the body of a response is stored only while a client
reads it to the end (a client that leaves early leaves nothing stored).

Hits go out through the route's response step like relayed responses
(``Cache.serve``, in ``net.cache_answer``): the store keeps the origin's head and body, and the
route's header rules and compression apply on the way out, per client.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import time
from typing import NamedTuple

import gevent

from forkproxy.config import CacheConfig
from forkproxy.core import cache_policy as policy
from forkproxy.core import headers as hdr
from forkproxy.core import http1
from forkproxy.logs import AccessRecord
from forkproxy.net import cache_answer, stages
from forkproxy.net.cache_filter import CONDITIONAL_FIELDS, Background, Hook
from forkproxy.net.cache_memcached import make_store
from forkproxy.net.response import CLOSE, own_response
from forkproxy.net.transaction import Transaction
from forkproxy.net.upstream_http import upstream_fields

log = logging.getLogger("forkproxy.cache")

PASS_TTL = 10.0
# How long a stored response is kept beyond its freshness when it has a
# validator: a stale entry with an ETag still saves a body transfer.
VALIDATOR_KEEP = 3600.0
_VARY = b"VARY "
_PASS = b"PASS"
_FRESH = policy.Action.FRESH  # a module global: an Enum member read from its class is slow
_tuple_new = tuple.__new__
HOT_REQUESTS = 256  # request objects remembered for their fresh hits ("hot hits" in Cache)
# The largest body a hot hit is remembered with: what the memo may keep alive
# beyond the store's own bounds is at most HOT_REQUESTS such bodies (4 MiB).
HOT_BODY_MAX = 16 << 10
_NOTHING = (None, None)  # lookup_key's fetched: the store was asked, and had nothing


def route_namespace(rc) -> str:
    """The cache namespace of route ``rc`` (a ``config.RouteConfig``).

    ``cache_key`` when the route sets one ("k:NAME": routes naming the same
    one share entries on purpose); else "r:" and a digest of what decides
    which requests reach the route and what is asked upstream for them: its
    listener list, host, path, path_regex, pool (a split's pools, not weights), strip_prefix,
    add_prefix, rewrite, host_header and request_headers.  Not its index (a route added in
    front must not empty the others), nor rules that apply before the lookup or to every
    response alike (access, methods, deny, rate limit, hide_headers, response_headers,
    compress): the first route matching a (listener, host, path) is the only one that ever
    serves it, so two routes with the same digest could not both be reached.  Stable across
    reloads and processes for an unchanged route (memcached is shared by both).
    """
    if rc.cache_key is not None:
        return "k:" + rc.cache_key
    what = repr((tuple(sorted(rc.listener)), rc.host, rc.path, rc.path_regex, rc.pool or
                 rc.split.pools, rc.strip_prefix, rc.add_prefix, rc.rewrite, rc.host_header,
                 rc.request_headers))
    return "r:" + hashlib.sha256(what.encode("utf-8", "surrogatepass")).hexdigest()[:24]


@functools.lru_cache(maxsize=1024)
def _authority(primary: str) -> str:
    return re.split(r"[/?*]", primary.partition("://")[2], maxsplit=1)[0]


def _path(primary: str) -> str:
    """The path of a primary key (no query), as the router matches it."""
    rest = primary.partition("://")[2][len(_authority(primary)):]
    return rest.partition("?")[0] or "/"


class Lookup(NamedTuple):
    """``Cache.consult``'s answer for one request (a tuple: one per request).

    ``primary``: the URL's key (scheme://host/target).  ``key`` None: not
    looked up (an unsafe method or a body: BYPASS; the response invalidates
    the URL).  ``passed``: the last response could not be stored
    (hit-for-pass: forwarded).  Otherwise ``decision`` (core.cache_policy)
    on ``entry`` (None: nothing stored) and its body ``reader``.
    """

    primary: str
    key: str | None = None
    passed: bool = False
    entry: policy.Entry | None = None
    reader: object = None
    decision: policy.Decision | None = None


class _Hot(NamedTuple):
    """What ``Cache._remember_hit`` keeps of a request's last fresh hit."""

    req: object
    proto: str
    ns: str
    authority: str
    token: str
    key: str
    reader: object  # the store's, for these bytes: compared by identity
    stamp: object  # the store's cheaper check of the same (``store.still``), or None
    entry: policy.Entry
    lifetime: float


class Cache:
    """One worker's cache: the store plus the ``[cache]`` settings."""

    def __init__(self, cfg: CacheConfig, store, log_=None):
        self.cfg = cfg
        self.store = store
        self.log = log_ or log
        self.cdn = cfg.cdn_cache_control.lower() or ()
        self.hmax = cfg.heuristic_max
        self.sie = cfg.stale_if_error or None  # the default stale-if-error window
        self.header = cfg.header
        self._namespaces: dict[int, tuple] = {}  # route index -> (RouteConfig, namespace)
        self._hot: dict[int, _Hot] = {}  # id(request) -> its last fresh hit ("hot hits")

    @classmethod
    def from_config(cls, cfg: CacheConfig, log_=None, epochs_buf=None, region=None) -> "Cache":
        return cls(cfg, make_store(cfg, log_, epochs_buf, region), log_)

    # -- keys and store access ----------------------------------------------

    def namespace(self, rc) -> str:
        """``route_namespace(rc)``, worked out once per route."""
        got = self._namespaces.get(rc.index)
        if got is None or got[0] is not rc:
            got = self._namespaces[rc.index] = (rc, route_namespace(rc))
        return got[1]

    def namespaces_serving(self, rt, host: str | None, path: str) -> list[str]:
        """The namespaces of the cached routes a request for ``host`` (lower
        case, no port: ``request_path.request_target``'s) and ``path`` reaches, on
        every listener of ``rt``: where a URL purge or invalidation looks."""
        found = []
        for lc in rt.cfg.listeners:
            spec = rt.router.match(lc.name, host, path) if lc.mode == "http" else None
            rc = rt.routes[spec.index] if spec is not None else None
            if rc is not None and rc.cache and self.namespace(rc) not in found:
                found.append(self.namespace(rc))
        return found

    def key(self, primary: str, ns: str) -> str:
        """The store key of URL ``primary`` in route namespace ``ns``."""
        return self.store.namespace(_authority(primary)) + "\n" + ns + "\n" + primary

    def lookup_key(self, key: str, req_headers, fetched=None):
        """(entry, reader), ``_PASS`` or None; the variant the request selects.
        ``fetched``: ``store.get_entry(key)``'s answer when already asked
        (a ``(head, reader)`` tuple, or ``_NOTHING``)."""
        got = self.store.get_entry(key) if fetched is None else fetched
        if got is None or got is _NOTHING:
            return None
        head, reader = got
        if head.startswith(_VARY):
            try:
                token, fields = json.loads(head[len(_VARY):])
            except ValueError:
                return None
            sk = policy.vary_key(fields, req_headers)
            if sk is None:
                return None
            got = self.store.get_entry(f"{key}\n{token}\n{sk}")
            if got is None:
                return None
            head, reader = got
        if head == _PASS:
            return _PASS
        try:
            return policy.Entry.from_bytes(head), reader
        except ValueError:
            return None

    def ttl(self, entry: policy.Entry) -> float:
        life = policy.freshness_lifetime(entry, heuristic_max=self.hmax, cdn_header=self.cdn)
        cc, _ = policy.response_directives(entry.headers, self.cdn)
        sie = cc.stale_if_error if cc.stale_if_error is not None else self.sie
        extra = max(cc.stale_while_revalidate or 0, sie or 0)
        if policy.conditional_headers(entry):
            extra += VALIDATOR_KEEP
        return max(1.0, life + extra)

    def begin(self, key: str, entry: policy.Entry, req_headers):
        """A writer for ``entry``'s body (None when the store is bypassed)."""
        ttl = self.ttl(entry)
        fields = [n for n, _ in entry.vary_headers]
        if not fields:
            return self.store.begin_write(key, entry.to_bytes(), ttl)
        token = None
        got = self.store.get_entry(key)
        if got is not None and got[0].startswith(_VARY):
            try:
                old_token, old_fields = json.loads(got[0][len(_VARY):])
                if old_fields == fields:
                    token = old_token
            except ValueError:
                pass
        token = token or os.urandom(8).hex()
        marker = self.store.begin_write(key, _VARY + json.dumps([token, fields]).encode(), ttl)
        if marker is None or not marker.commit():
            return None
        return self.store.begin_write(f"{key}\n{token}\n{entry.secondary_key}",
                                      entry.to_bytes(), ttl)

    def mark_pass(self, key: str) -> None:
        w = self.store.begin_write(key, _PASS, PASS_TTL)
        if w is not None:
            w.commit()

    def invalidate_serving(self, rt, host: str | None, primary: str, ns: str) -> None:
        """Delete URL ``primary`` in every cached route serving it (``ns`` if none)."""
        for other in self.namespaces_serving(rt, host, _path(primary)) or [ns]:
            self.invalidate(primary, other)

    def invalidate(self, primary: str, ns: str) -> bool:
        """Delete a URL in namespace ``ns``, every variant of it; True when
        something was there."""
        return self.store.delete(self.key(primary, ns))

    # -- the request path ----------------------------------------------------

    def consult(self, proto: str, host: str | None, target: str, req,
                has_body: bool, ns: str, fetched=None) -> "Lookup":
        """What the store says about a request of a cached route, before anything
        is sent (``handle`` acts on it; ``forkproxyctl explain`` reports it).
        ``target``: the client's (before rewrites); ``ns``: the route's namespace;
        ``fetched``: see ``lookup_key``."""
        primary = policy.primary_key(proto, host or "", target)
        if req.method not in ("GET", "HEAD") or has_body:
            return Lookup(primary)
        key = self.key(primary, ns)
        found = self.lookup_key(key, req.headers, fetched)
        if found is _PASS:
            return Lookup(primary, key, True)
        entry, reader = found or (None, None)
        d = policy.decide(entry, req.method, req.headers, time.time(), heuristic_max=self.hmax,
                          cdn_header=self.cdn)
        return _tuple_new(Lookup, (primary, key, False, entry, reader, d))  # Lookup(...), faster

    def lookup(self, s, tx):
        """The cache lookup stage (``net.stages.cache_lookup``): answer ``tx.req``
        from the store and return True to keep the connection (False: close
        it), or set up a miss and return None: ``tx.hook`` then sees the
        response the forwarding stage gets.  ``tx.asked_target`` (the
        client's) names the URL in the store; a hit never builds the head that
        would go upstream (``upstream_http.upstream_fields``)."""
        req, rec = tx.req, tx.rec
        method = req.method
        if method == "PURGE":
            return self.purge(s, tx)
        if not tx.rc.cache:
            return None
        ns = self.namespace(tx.rc)
        hot = self._hot.get(id(req))
        fetched = None
        if hot is not None and hot.req is req and hot.proto == s.proto and hot.ns == ns:
            fetched = self._hot_check(hot)
            if fetched is hot:
                return self.serve(s, tx, hot.entry, hot.reader, "HIT", tx.keep)
        look = self.consult(s.proto, tx.host_value, tx.asked_target, req, tx.has_body, ns, fetched)
        d = look.decision
        if d is not None and d.action is _FRESH:  # a hit: nothing more to set up
            if 0 < tx.head_size <= http1.REMEMBERED_HEAD_SIZE:  # a head that comes again
                self._remember_hit(req, s.proto, ns, look)
            return self.serve(s, tx, look.entry, look.reader, "HIT", tx.keep)
        if look.key is None:
            rec.cache = "BYPASS"
            tx.hook = Hook(self, s, tx, None,
                            invalidate=(ns, s.proto, tx.host_value or "", tx.asked_target))
            return None
        key = look.key
        if look.passed:
            tx.hook = Hook(self, s, tx, key, whole=False)
            return None
        entry, reader = look.entry, look.reader
        action = d.action
        if action is policy.Action.STALE_OK:
            if d.background_refresh:
                self.refresh_later(s, tx, key, d.conditional_headers, (entry, reader))
            return self.serve(s, tx, entry, reader, "STALE", tx.keep)
        if action is policy.Action.GATEWAY_TIMEOUT:
            s.refuse(tx, 504, "only-if-cached and nothing usable in the cache")
            return False
        if action is policy.Action.REVALIDATE:
            tx.hook = Hook(self, s, tx, key, stale=(entry, reader),
                            validators=d.conditional_headers)
            return None
        # MISS; a stored entry it could not use (no validator) may still serve
        # if the origin fails (stale-if-error)
        stale = (entry, reader) if entry is not None else None
        if method != "GET" or any(n in CONDITIONAL_FIELDS for n, _ in req.headers):
            tx.hook = Hook(self, s, tx, key, stale=stale)
            return None
        return self.coalesced(s, tx, key, stale)

    # -- hot hits: the same request again, the same entry --------------------------
    #
    # A hot URL is asked for with the same head bytes again and again (one
    # client polling, a crowd behind one CDN, a load generator), and
    # ``http1.parse_request_head`` hands out the same request object for
    # them (an HTTP/1.1 head of at most REMEMBERED_HEAD_SIZE bytes; an
    # HTTP/2 stream's request is a new object each time).  A fresh hit
    # remembers, for that object, the key it was found under, the host's
    # namespace token, the store's body reader (a store hands out the same
    # one while an item's bytes stay the same) or the store's stamp of them
    # (``store.still``: a near copy's change counter), and the entry's
    # ``plain_lifetime``.  The next time the same object comes on the same
    # scheme and route namespace, the token and the store are asked again (a
    # purge, an invalidation, a new response stored by any worker: each
    # changes one of them), the clock against the lifetime, and nothing
    # else: no key built, no Vary, no entry decoded, no ``decide``.  Entries
    # under a Vary marker (two keys), bodies over HOT_BODY_MAX and requests
    # with cache directives (``decide`` reads them) are not remembered.

    def _hot_check(self, hot: "_Hot"):
        """``hot`` itself when its hit still holds; else what ``store.get_entry``
        answered for its key (``_NOTHING``: nothing there), None when not asked."""
        store = self.store
        if store.namespace(hot.authority) != hot.token:
            return None
        fetched = None
        if hot.stamp is None:  # the store hands out one reader per item: the same bytes?
            fetched = store.get_entry(hot.key) or _NOTHING
            same = fetched[1] is hot.reader
        else:
            same = store.still(hot.stamp)
        # and decide's FRESH, by plain_lifetime's promise:
        if same and hot.lifetime > hot.entry.initial_age + (time.time() - hot.entry.response_time):
            return hot
        return fetched

    def _remember_hit(self, req, proto: str, ns: str, look: "Lookup") -> None:
        """Remember a fresh hit for ``req`` (see above), when it may be."""
        entry, reader = look.entry, look.reader
        if reader.whole is None or reader.length > HOT_BODY_MAX or entry.vary_fields \
                or entry.vary_headers:
            return  # a chunked body (a new reader each time), a large one, a Vary variant
        lifetime = policy.plain_lifetime(entry, req.headers, heuristic_max=self.hmax,
                                         cdn_header=self.cdn)
        if lifetime is None:
            return
        hot = self._hot
        if len(hot) >= HOT_REQUESTS:
            hot.clear()  # request objects come from clients: bound what they make us keep
        token = look.key.partition("\n")[0]  # the one the key was made with (``key``)
        hot[id(req)] = _Hot(req, proto, ns, _authority(look.primary), token, look.key, reader,
                            self.store.stamp(look.key, reader), entry, lifetime)

    def coalesced(self, s, tx, key: str, stale=None):
        """A GET miss: one request upstream per key across the fleet (module
        docstring).  A hit answers (``lookup``'s return); else the miss is set
        up, holding the lock when it got it (released when ``tx`` ends);
        ``stale``: what ``Hook`` may serve when the origin fails."""
        store = self.store
        req = tx.req
        lock_ttl = self.cfg.lock_timeout
        if not store.lock(key, lock_ttl):
            deadline = time.monotonic() + lock_ttl
            pause = 0.005
            while True:
                gevent.sleep(pause)
                pause = min(pause * 2, 0.05)
                found = self.lookup_key(key, req.headers)
                if found is _PASS:
                    break
                if found is not None:
                    entry, reader = found
                    d = policy.decide(entry, req.method, req.headers, time.time(),
                                      heuristic_max=self.hmax, cdn_header=self.cdn)
                    if d.action is policy.Action.FRESH:
                        return self.serve(s, tx, entry, reader, "HIT", tx.keep)
                if store.lock(key, lock_ttl):
                    return self._locked(s, tx, key, stale)  # the holder is done: our turn
                if time.monotonic() >= deadline:
                    break
            tx.hook = Hook(self, s, tx, key, stale=stale)
            return None
        return self._locked(s, tx, key, stale)

    def _locked(self, s, tx, key: str, stale=None):
        """``coalesced`` with the lock on ``key`` held, until ``tx`` ends
        (``tx.cleanup``), whatever it ends with."""
        tx.cleanup = functools.partial(self.store.unlock, key)
        # Stored between our lookup and the lock (the previous holder's): use it.
        found = self.lookup_key(key, tx.req.headers)
        if found is not None and found is not _PASS:
            entry, reader = found
            d = policy.decide(entry, tx.req.method, tx.req.headers, time.time(),
                              heuristic_max=self.hmax, cdn_header=self.cdn)
            if d.action is policy.Action.FRESH:
                return self.serve(s, tx, entry, reader, "HIT", tx.keep)
        tx.hook = Hook(self, s, tx, key, stale=stale)
        return None

    def refresh_later(self, s, tx, key, validators, stale) -> None:
        """stale-while-revalidate: one background conditional GET per key across
        the fleet, through the forwarding stage with no client (``Background``)."""
        lock = key + "\nrefresh"
        if not self.store.lock(lock, self.cfg.lock_timeout):
            return
        bg = Background(s.rt, s.proto)
        headers, out_host = upstream_fields(s, tx)  # the client's, as a miss would send
        btx = Transaction(AccessRecord("-", time.time()), time.time())
        btx.req = tx.req._replace(method="GET", version="1.1")
        for name in ("host_value", "host", "path", "asked_target", "target", "rc", "pool"):
            setattr(btx, name, getattr(tx, name))
        hook = Hook(self, bg, btx, key, stale=stale, validators=validators)
        btx.headers, btx.out_host, btx.keep = hook.upstream_fields(headers), out_host, True
        rec = btx.rec
        rec.route, rec.pool, rec.cache = tx.rc.index, tx.pool.name, "REFRESH"

        def run():
            btx.hook = hook
            try:
                stages.balancing(bg, btx)
                stages.forwarding(bg, btx)
            except Exception:  # a background refresh must never take anything down
                self.log.debug("background refresh of a stale entry failed", exc_info=True)
            finally:
                btx.hook = None
                bg.timers.close()
                self.store.unlock(lock)

        gevent.spawn(run)

    # Answering from the store (hits, stale answers, revalidated entries): a
    # function of the cache, the connection and the transaction.
    serve = cache_answer.serve

    # -- purge -------------------------------------------------------------------

    def purge_url(self, host: str | None, target: str, namespaces) -> bool:
        """Delete the URL ``host`` + ``target`` (as clients ask for it), every
        variant, http and https, in each of ``namespaces`` (``namespaces_serving``);
        True when something was there.  PURGE and the admin endpoint use it."""
        hit = [self.invalidate(policy.primary_key(scheme, host or "", target), ns)
               for ns in namespaces for scheme in ("http", "https")]
        return any(hit)

    def purge_host(self, host: str | None) -> bool:
        """Make every URL of ``host`` (with its port) a miss by replacing its
        namespace; False when the store could not be told."""
        return self.store.bump_namespace(_authority(policy.primary_key("http", host or "", "/")))

    def purge(self, s, tx) -> bool:
        """PURGE URL deletes it (every variant, http and https, in every route
        that serves it); PURGE /* bumps the Host's namespace (every URL of it,
        every route).  200 done, 404 nothing was cached, 403 when the client
        (after server.trusted_proxies, as the access rules see it) is outside
        purge_allowed: a refusal of who asks, not of the method (no 405)."""
        req, rec, host, target = tx.req, tx.rec, tx.host_value, tx.asked_target
        rec.cache = "PURGE"
        client = tx.edge.client if tx.edge is not None else s.peer
        if client != "unix" and not hdr.in_networks(client, self.cfg.purge_allowed):
            s.refuse(tx, 403, f"PURGE from {client}, outside cache.purge_allowed"
                     + ("" if self.cfg.purge_allowed else " (empty: PURGE is refused; "
                        "forkproxyctl purge goes through the admin endpoint)"))
            return False
        if req.framing.kind != "none" and not (req.framing.kind == "length"
                                               and req.framing.length == 0):
            s.refuse(tx, 400, "PURGE with a body")
            return False
        if target == "/*":
            code, text = (200, "purged every URL of the host\n") if self.purge_host(host) else \
                (503, "the cache could not be reached\n")
        else:
            code, text = (200, "purged\n") if self.purge_url(
                host, target, self.namespaces_serving(s.rt, tx.host, tx.path)) else \
                (404, "not in the cache\n")
        keep = tx.keep and not s.draining
        rec.status = code
        s._send(own_response(code, body=text.encode(), ctype="text/plain; charset=utf-8",
                             connection="" if keep else CLOSE))
        return keep
