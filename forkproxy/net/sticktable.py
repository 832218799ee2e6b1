"""A pool's sticky table (``sticky = { key = ... }``), per worker or shared by a fleet.

``lookup`` names the server a request's key is stuck to (the balancing
stage, through ``net.forward.sticky_choice``); ``store`` records the server
the request went to (``net.forward``, at each attempt): a new key, a key
whose server could not take it (down, maint, out, gone: the entry is
rewritten), or an entry due for its refresh.  The pure part (keys, the
entry's format, the worker's table) is ``core.stick``.

Scope "node": the worker's ``LocalTable``.  Scope "fleet": memcached
(cache.servers), the key ``hashed_key("st", pool, key)``, the entry
expiring ``ttl`` after its last write; a lookup costs one ``get``, a store
an ``add`` (new key: another node's entry, made in the same instant, wins
for the next requests) or a ``set``.  Calls run on the worker's event loop,
bounded by ``cache.timeout``, behind the cache's kind of circuit breaker
(``net.cache_memcached.breaker_for``).  The worker keeps a copy of every
entry it read or wrote in its own table: when memcached errors, is slow or
is not configured, that table answers, so each worker (of each node) is
then on its own; the breaker's transitions are logged and ``state()``
says which table applies (``/status`` ``sticky_tables``, ``forkproxyctl
status``).
"""

from __future__ import annotations

import time

import pylibmc

from forkproxy.core.stick import LocalTable, decode_entry, encode_entry, refresh_due, stick_key
from forkproxy.net.cache_memcached import FleetClient, breaker_for
from forkproxy.net.cache_store import hashed_key

__all__ = ["StickTable", "Stuck"]


class Stuck:
    """What a lookup found for one request: its table ``key``, the ``addr``
    stuck to (None: no entry), the entry's ``stamp`` (its last write), and
    whether memcached answered (``shared``)."""

    __slots__ = ("key", "addr", "stamp", "shared")

    def __init__(self, key: str, addr: str | None, stamp: float, shared: bool):
        self.key, self.addr, self.stamp, self.shared = key, addr, stamp, shared

    def __repr__(self) -> str:
        return f"Stuck({self.key!r}, {self.addr!r})"


class StickTable:
    """One pool's sticky table in one worker.

    ``cfg``: the pool's ``StickyConfig`` (``key``, ``ttl``, ``scope``,
    ``keys``); ``servers``: cache.servers ("HOST:PORT"; empty: always the
    worker's table); ``timeout``: cache.timeout in seconds.
    """

    def __init__(self, pool: str, cfg, servers, timeout: float, log=None, clock=time.time):
        self.pool, self.on, self.ttl, self.log, self.clock = pool, cfg.key, cfg.ttl, log, clock
        self.fleet = cfg.scope == "fleet"
        self.servers = tuple(servers) if self.fleet else ()
        self.timeout = timeout
        self.local = LocalTable(cfg.keys, cfg.ttl)
        self.breaker = breaker_for(timeout)
        self.memcached = FleetClient(self.servers, timeout)

    # -- the request path ---------------------------------------------------------

    def lookup(self, req, client: str) -> Stuck | None:
        """The entry of ``req``'s key (None: the request has no key)."""
        key = stick_key(self.on, req.get, req.get_all("cookie"), client)
        if key is None:
            return None
        now = self.clock()
        if self.servers:
            got = self._call(lambda mc: mc.get(self._mkey(key)), default=_FAILED)
            if got is not _FAILED:
                entry = decode_entry(got) if got is not None else None
                if entry is None:
                    return Stuck(key, None, 0.0, True)
                self.local.put(key, entry[0], now)  # the copy answers while memcached cannot
                return Stuck(key, entry[0], entry[1], True)
        return Stuck(key, self.local.get(key, now), now, False)

    def store(self, stuck: Stuck, addr: str) -> None:
        """The request of ``stuck`` goes to ``addr``: write the entry when it
        is new, moved, or (in memcached) due for its refresh."""
        now = self.clock()
        if addr == stuck.addr and not (stuck.shared and refresh_due(stuck.stamp, now, self.ttl)):
            return
        self.local.put(stuck.key, addr, now)
        if self.servers:
            value, mkey, ttl = encode_entry(addr, now), self._mkey(stuck.key), _expiry(self.ttl)
            if stuck.shared and stuck.addr is None:  # new: the first node's choice stays
                self._call(lambda mc: mc.add(mkey, value, time=ttl))
            else:
                self._call(lambda mc: mc.set(mkey, value, time=ttl))
        stuck.addr, stuck.stamp = addr, now

    # -- status ---------------------------------------------------------------------

    def state(self) -> dict:
        """{pool, scope: "fleet", shared: whether memcached holds the table now, why}."""
        if not self.servers:
            return {"pool": self.pool, "scope": "fleet", "shared": False,
                    "why": "no cache.servers: each worker keeps its own table"}
        shared = self.memcached.answers()
        return {"pool": self.pool, "scope": "fleet", "shared": shared,
                "why": None if shared else "memcached unreachable: each worker keeps its own table"}

    # -- memcached ---------------------------------------------------------------------

    def _mkey(self, key: str) -> str:
        return hashed_key("st", self.pool, key)

    def _call(self, fn, default=None):
        """``fn(client)`` through the breaker; ``default`` when it is open or the call fails."""
        if not self.breaker.allow():
            return default
        started = time.monotonic()
        try:
            got, ok = fn(self.memcached.client()), True
        except pylibmc.Error:
            got, ok = default, False
        change = self.breaker.record(ok, time.monotonic() - started)
        if change is not None and self.log is not None:
            if change == "closed":
                self.log.warning("sticky table of pool %s: memcached answers again; the "
                                 "table is shared by the fleet", self.pool)
            elif change == "open":
                self.log.warning("sticky table of pool %s: memcached misbehaves; each worker "
                                 "keeps its own table", self.pool)
        return got


_FAILED = object()


def _expiry(ttl: float) -> int:
    """memcached's expiry of an entry: whole seconds, at least 1, below 30 days
    (beyond, memcached reads it as an absolute time); 0 (no ttl): until evicted."""
    return 0 if ttl <= 0 else min(30 * 86400 - 1, max(1, int(ttl + 0.999)))
