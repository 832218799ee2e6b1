"""A route's rate limit shared by every forkproxy on the same memcached (``scope = "fleet"``).

Each request costs one memcached ``incr`` (an ``add`` for the first request
of a key in a window) of the key ``hashed_key("rl", route, rate, bucket,
window)``: nodes whose route has the same index and rate share it, like
HAProxy's peers share stick tables.  The count is a fixed window
(``core.ratelimit.fleet_window``); it expires with its window.

pylibmc is called on the worker's event loop, bounded by ``cache.timeout``
as the cache's store is, behind the same kind of circuit breaker
(``net.cache_memcached.breaker_for``).  When memcached errors, is too slow or is not
configured, the request is judged by the node's own limiter (the shared
memory token bucket, ``core.ratelimit.RateLimiter``): each node then holds
the limit on its own, so a fleet of N nodes admits up to N times it until
memcached answers again.  The breaker's transitions are logged, and
``state()`` says which limit applies (``/status``, ``forkproxyctl status``).
"""

from __future__ import annotations

import time

import pylibmc

from forkproxy.core.ratelimit import fleet_window
from forkproxy.net.cache_memcached import FleetClient, breaker_for
from forkproxy.net.cache_store import hashed_key

__all__ = ["FleetLimiter"]


class FleetLimiter:
    """``check(key, slot, now)`` as ``RateLimiter``'s, counted in memcached.

    ``local``: the node's limiter, used when memcached cannot be used;
    ``servers``: cache.servers ("HOST:PORT"; empty: always the node's);
    ``timeout``: cache.timeout in seconds; ``route``: the route's index.
    """

    def __init__(self, local, servers, timeout: float, rate: str, burst: int, route: int,
                 log=None, clock=time.time):
        self.local, self.servers, self.timeout = local, tuple(servers), timeout
        self.rate, self.burst, self.route, self.log, self.clock = rate, burst, route, log, clock
        self.breaker = breaker_for(timeout)
        fleet = FleetClient(self.servers, timeout)
        self._memcached, self._answers = fleet.client, fleet.answers

    def state(self) -> dict:
        """{route, scope: "fleet", shared: whether memcached holds the count now, why}."""
        if not self.servers:
            return {"route": self.route, "scope": "fleet", "shared": False,
                    "why": "no cache.servers: each node limits on its own"}
        # Ask memcached itself, each time (a readiness request just before an
        # outage left this worker's last call "answering").
        shared = self._answers()
        return {"route": self.route, "scope": "fleet", "shared": shared,
                "why": None if shared else "memcached unreachable: each node limits on its own"}

    def _count(self, key: str) -> tuple[bool, float]:
        now = self.clock()
        window, allowed, end = fleet_window(self.rate, self.burst, now)
        mkey = hashed_key("rl", str(self.route), self.rate, str(self.burst), key, str(window))
        mc = self._memcached()
        try:
            n = mc.incr(mkey)
        except pylibmc.NotFound:
            if mc.add(mkey, "1", time=int(end - now) + 2):
                n = 1
            else:  # another node or worker added it first
                n = mc.incr(mkey)
        return (True, 0.0) if n <= allowed else (False, end - now)

    def check(self, key: str, slot: int, now: float) -> tuple[bool, float]:
        if self.servers and self.breaker.allow():
            started = time.monotonic()
            try:
                result = self._count(key)
            except pylibmc.Error:
                result = None
            change = self.breaker.record(result is not None, time.monotonic() - started)
            if change is not None and self.log is not None:
                if change == "closed":
                    self.log.warning("rate limit of route %s: memcached answers again; the "
                                     "limit is shared by the fleet", self.route)
                elif change == "open":
                    self.log.warning("rate limit of route %s: memcached misbehaves; each node "
                                     "limits on its own", self.route)
            if result is not None:
                return result
        return self.local.check(key, slot, now)
