"""The cache's store over memcached, through pylibmc, guarded.

The contract is ``net.cache_store``'s; this store adds near copies,
change counters shared by the workers (``core.epochs``) and a breaker.

Guarding pylibmc (DESIGN section 1).  pylibmc does its own blocking socket
I/O, so under gevent every call blocks the whole worker until it returns.
Two modes:

- ``"direct"``: the call runs on the hub, bounded by low libmemcached
  timeouts (``timeout_ms`` for connect, poll, send and receive).  Measured
  by ``bench/cache_guard.py`` (timeout 30 ms): a 10 KB hit costs ~16 us at
  p50; against a frozen (SIGSTOPped) memcached the first call stalls the
  hub for ``timeout_ms`` (30-36 ms measured), after which libmemcached
  marks the server failed for ``retry_timeout`` (1 s) and answers at once,
  and the breaker opens after ``failures`` errors (31-37 ms after the
  freeze).
- ``"threadpool"``: the call runs in gevent's threadpool (pylibmc releases
  the GIL during I/O), so the hub does not stall (no more than under normal
  load, measured), but every hit pays the hand-off to a thread and back
  (~45-50 us at p50, about 3x direct), and a call against a frozen
  memcached waits up to two or three timeouts (64-83 ms) when the pool is busy.

The default is ``"direct"``: hits are the common case and are several times
cheaper, and the stall is bounded by ``timeout_ms`` (default 30 ms, well
under the 100 ms target) once per ``retry_timeout`` per worker, then by the
breaker.  ``"threadpool"`` is for memcached across a slow network, where
a timeout low enough for the hub would be too low for the network.

The circuit breaker (``Breaker``) counts errors and calls slower than
``slow``; it opens after ``failures`` of them within ``window`` seconds, or
at once after one call slower than ``open_after``, and then bypasses
memcached (every call is a miss, without I/O) for ``cooldown`` seconds; then
it half-opens and lets one probe call through: success closes it, failure
opens it again.  ``breaker_for`` fits both thresholds to the calls' own
timeout: a call that took no longer than the operator allows is never held
against memcached.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import time
from typing import Callable

import gevent
import pylibmc

from forkproxy.core.epochs import Epochs
from forkproxy.config import CacheConfig
from forkproxy.net.cache_store import (ITEM_SIZE, LRU, NAMESPACE_TTL, NEAR_TTL, MemoryStore, _Backend,
                                       _ttl, log)

__all__ = ["Breaker", "breaker_for", "MemcachedStore", "MemcachedSettings", "make_store"]


# ------------------------------------------------------------------ breaker

class Breaker:
    """Circuit breaker; pure apart from the injected ``clock`` (monotonic seconds).

    ``allow()`` says whether to call the backend now; every allowed call must
    be followed by ``record(ok, elapsed)``.  Closed: everything is allowed;
    ``failures`` bad calls (errors, or slower than ``slow`` seconds) within
    ``window`` seconds, or one call slower than ``open_after``, open it.
    Open: nothing is allowed for ``cooldown`` seconds.  Half-open: one probe
    is allowed (another one if it has not reported within ``cooldown``); its
    success closes the breaker, its failure opens it again.
    """

    CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"

    def __init__(self, *, failures: int = 3, window: float = 10.0, slow: float = 0.1,
                 open_after: float = 0.25, cooldown: float = 2.0,
                 clock: Callable[[], float] = time.monotonic):
        self.failures, self.window, self.slow = failures, window, slow
        self.open_after, self.cooldown, self.clock = open_after, cooldown, clock
        self._bad: collections.deque[float] = collections.deque()
        self._state = self.CLOSED
        self._opened_at = 0.0
        self._probe_at: float | None = None
        self.opened = 0          # times opened, for state()

    @property
    def state(self) -> str:
        if self._state == self.OPEN and self.clock() - self._opened_at >= self.cooldown:
            return self.HALF_OPEN
        return self._state

    def allow(self) -> bool:
        if self._state == self.CLOSED:
            return True
        now = self.clock()
        if self._state == self.OPEN:
            if now - self._opened_at < self.cooldown:
                return False
            self._state = self.HALF_OPEN
            self._probe_at = None
        if self._probe_at is None or now - self._probe_at >= self.cooldown:
            self._probe_at = now
            return True
        return False

    def record(self, ok: bool, elapsed: float) -> str | None:
        """Count one allowed call; the new state when this call changed it, else None."""
        now = self.clock()
        bad = not ok or elapsed > self.slow
        if self._state == self.HALF_OPEN:
            self._probe_at = None
            if bad:
                self._open(now)
                return self.OPEN
            self._state = self.CLOSED
            self._bad.clear()
            return self.CLOSED
        if self._state == self.OPEN or not bad:
            return None
        self._bad.append(now)
        while self._bad and now - self._bad[0] > self.window:
            self._bad.popleft()
        if len(self._bad) >= self.failures or elapsed > self.open_after:
            self._open(now)
            return self.OPEN
        return None

    def _open(self, now: float) -> None:
        self._state = self.OPEN
        self._opened_at = now
        self._bad.clear()
        self.opened += 1


def behaviors(timeout_ms: float) -> dict:
    """pylibmc behaviors bounding every call by ``timeout_ms`` (see the module docstring);
    the cache's store and the fleet's rate limits (``net.fleetlimit``) share them."""
    t = int(timeout_ms)
    return {"tcp_nodelay": True, "ketama": True, "connect_timeout": t,
            "send_timeout": t * 1000, "receive_timeout": t * 1000, "_poll_timeout": t,
            # after a timeout, libmemcached answers "server down" at once for this long
            "retry_timeout": 1}


def breaker_for(timeout: float, **kw) -> Breaker:
    """A breaker for calls bounded by ``timeout`` seconds (``cache.timeout``).

    A call is slow past the timeout, and never below 0.1 s (the stall the
    cache may add to a request); one call past three timeouts (connect, send,
    receive), and never below 0.25 s, means the timeouts are not holding and
    opens the breaker at once.  ``kw``: the other settings of ``Breaker``.
    """
    return Breaker(slow=max(0.1, timeout), open_after=max(0.25, 3 * timeout), **kw)


class FleetClient:
    """The pylibmc client of what a fleet shares besides the cache (``net.fleetlimit``,
    ``net.sticktable``): ``client()`` is made in the process that calls it (after
    the fork), its calls bounded by ``timeout`` seconds (cache.timeout)."""

    def __init__(self, servers, timeout: float):
        self.servers, self.timeout = tuple(servers), timeout
        self._client = None
        self._pid: int | None = None  # the _FORKS count the client was made for

    def client(self):
        if self._pid != _FORKS[0]:
            self._client = pylibmc.Client(list(self.servers), binary=True,
                                          behaviors=behaviors(max(1, self.timeout * 1000)))
            self._pid = _FORKS[0]
        return self._client

    def answers(self) -> bool:
        """Whether memcached answers now: one set of a key of its own that
        expires in a second, bounded by the timeout.  Asked each time: the
        worker answering /status may not be the one that took the requests,
        and its last call says nothing about memcached now.  A set, not a
        get: libmemcached reports the first get on a connection the server
        closed as a miss, not as an error."""
        try:
            return bool(self.client().set("fp:fleet:probe", "1", time=1))
        except pylibmc.Error:
            return False



# ------------------------------------------------------------------ memcached

@dataclasses.dataclass(frozen=True)
class MemcachedSettings:
    """How a ``MemcachedStore`` stores: its largest object and item, the
    guarding mode, the calls' timeout, and the bytes of near copies (0: none)."""

    max_object_size: int = 8 << 20
    item_size: int = ITEM_SIZE
    timeout_ms: int = 30
    mode: str = "direct"
    near_size: int = 0


class MemcachedStore(_Backend):
    """The store over memcached servers ("host:port"), through pylibmc.

    ``mode`` is "direct" or "threadpool" (see the module docstring);
    ``timeout_ms`` bounds connect, send, receive and poll.  No I/O happens
    before the first call; no method raises.
    """

    def __init__(self, servers: list[str], *, breaker: Breaker | None = None, log_=None,
                 epochs: Epochs | None = None, **settings):
        """``settings``: the fields of ``MemcachedSettings`` (sizes, mode, timeout)."""
        cfg = MemcachedSettings(**settings)
        mode, timeout_ms, near_size = cfg.mode, cfg.timeout_ms, cfg.near_size
        if mode not in ("direct", "threadpool"):
            raise ValueError(f"mode must be 'direct' or 'threadpool', not {mode!r}")
        super().__init__(cfg.max_object_size, cfg.item_size)
        # Near copies (the contract): none when near_size is 0.
        # The store's clock itself, not a call through the store: it is read on
        # every hit (a test that sets the store's clock sets this one too).
        self.near = LRU(near_size, self.clock) if near_size > 0 else None
        self.epochs = epochs if epochs is not None else Epochs()
        self._ns_epoch = self.epochs.values[0]  # counter 0 when the namespaces were read
        self.counters["near_hits"] = 0
        self.servers = list(servers)
        self.mode = mode
        self.timeout_ms = timeout_ms
        self.breaker = breaker or breaker_for(timeout_ms / 1000)
        self.log = log_ or log  # anything with debug() and warning(): the worker's error log
        self._pid: int | None = None  # the _FORKS count the client was made for
        self._base = None
        self._free: list = []

    @property
    def behaviors(self) -> dict:
        return behaviors(self.timeout_ms)

    def _client(self):
        """A client for this process (created after the fork, again after another fork)."""
        # _FORKS, not os.getpid(): getpid is a system call, and this runs on every call.
        if self._pid != _FORKS[0]:
            self._base = pylibmc.Client(self.servers, binary=True, behaviors=self.behaviors)
            self._free = []
            self._pid = _FORKS[0]
        return self._base

    def _run(self, fn: Callable, *args):
        base = self._client()
        if self.mode == "direct":
            return fn(base, *args)
        # pylibmc clients are not thread-safe: one per concurrent call, reused.
        mc = self._free.pop() if self._free else base.clone()
        try:
            return gevent.get_hub().threadpool.apply(fn, (mc,) + args)
        finally:
            self._free.append(mc)

    def _call(self, fn: Callable, *args, default=None):
        """Run ``fn(client, *args)`` through the breaker; ``default`` on bypass or error."""
        breaker = self.breaker
        if not breaker.allow():
            self.counters["bypassed"] += 1
            return default
        t0 = time.monotonic()
        answered = True
        try:
            result = self._run(fn, *args)
            ok = True
        except Exception as exc:  # pylibmc.Error and anything else: fail open
            result, ok = default, False
            self.counters["errors"] += 1
            self.log.debug("memcached %s: %s", fn.__name__, exc)
            # An item memcached refuses as too big (its -I is below item_size)
            # is memcached answering, not misbehaving: no reason to bypass it.
            answered = isinstance(exc, pylibmc.TooBig)
        changed = breaker.record(ok or answered, time.monotonic() - t0)
        if changed == Breaker.OPEN:
            self.log.warning("cache: memcached %s misbehaves: breaker open, bypassing it for "
                             "%g s", ",".join(self.servers), breaker.cooldown)
        elif changed == Breaker.CLOSED:
            self.log.warning("cache: memcached %s answers again: breaker closed",
                             ",".join(self.servers))
        return result if ok else default

    def _get(self, k):
        v = self._call(_mc_get, k)
        return v if isinstance(v, bytes) else None

    # -- near copies and change counters (see the contract) --------------------

    def stamp(self, key: str, reader):
        return self._near_stamp(key, reader)  # ((item, epoch, slot), the copy's NEAR_TTL expiry)

    def still(self, stamp) -> bool:
        (_, epoch, slot), expires = stamp
        if self.epochs.values[slot] == epoch and (not expires or self.clock() < expires):
            counters = self.counters
            counters["hits"] += 1
            counters["near_hits"] += 1
            return True
        return False

    def _get_entry_item(self, key: str) -> bytes | None:
        near = self.near
        hashed = self._entry_keys.get(key) or self._entry_key(key)
        if near is None:
            return self._get(hashed)
        got = near.get(hashed)
        if got is not None:
            item, epoch, slot = got
            if self.epochs.values[slot] == epoch:
                self.counters["near_hits"] += 1
                return item
            near.drop(hashed)
        slot = Epochs.slot(hashed)
        epoch = self.epochs.values[slot]  # before the read: see Epochs
        item = self._get(hashed)
        # Only items of at most 1/16 of near_size are kept, so one big body
        # cannot push every hot small one out.
        if item is not None and len(item) <= near.max_bytes >> 4:
            near.put(hashed, (item, epoch, slot), len(item), NEAR_TTL)
        return item

    def _changed(self, hashed: str) -> None:
        """After ``hashed``'s item changed in memcached: every worker's near copy is void."""
        self.epochs.bump(Epochs.slot(hashed), _random64())
        if self.near is not None:
            self.near.drop(hashed)

    def _put_entry(self, key, item, ttl) -> bool:
        hashed = self._entry_key(key)
        ok = self._set(hashed, item, ttl)
        self._changed(hashed)  # even when the set failed: the old item may be gone
        return ok

    def delete(self, key: str) -> bool:
        hashed = self._entry_key(key)
        ok = self._delete(hashed)
        self._changed(hashed)
        return ok

    def namespace(self, host: str) -> str:
        now_epoch = self.epochs.values[0]
        if now_epoch != self._ns_epoch:  # a host purged through this forkproxy
            self._ns.clear()
            self._ns_epoch = now_epoch
        known = self._ns.get(host)  # _Backend.namespace's first step, inline: every request
        if known is not None and self.clock() - known[1] < NAMESPACE_TTL:
            return known[0]
        return super().namespace(host)

    def bump_namespace(self, host: str) -> bool:
        ok = super().bump_namespace(host)
        self.epochs.bump(0, _random64())
        self._ns_epoch = self.epochs.values[0]  # this process keeps the token it just set
        return ok

    def _set(self, k, v, ttl) -> bool:
        return bool(self._call(_mc_set, k, v, _ttl(ttl), default=False))

    def _add(self, k, v, ttl):
        return self._call(_mc_add, k, v, _ttl(ttl), default=None)

    def _delete(self, k) -> bool:
        return bool(self._call(_mc_delete, k, default=False))

    def _usable(self) -> bool:
        return self.breaker.state != Breaker.OPEN

    @property
    def state(self) -> dict:
        near = self.near
        return {"backend": "memcached", "servers": list(self.servers), "mode": self.mode,
                "breaker": self.breaker.state, "breaker_opened": self.breaker.opened,
                "near_items": len(near) if near is not None else 0,
                "near_bytes": near.bytes if near is not None else 0, **self.counters}


def _random64() -> int:
    return int.from_bytes(os.urandom(8), "little")


# Forks seen by this process's lineage: a child never uses its parent's pylibmc clients.
_FORKS = [0]


def _forked() -> None:
    _FORKS[0] += 1


os.register_at_fork(after_in_child=_forked)


# Module-level so the threadpool runs plain functions; each returns a bool/bytes or raises.
def _mc_get(mc, k):
    return mc.get(k)


def _mc_set(mc, k, v, ttl):
    return mc.set(k, v, time=ttl)


def _mc_add(mc, k, v, ttl):
    return mc.add(k, v, time=ttl)


def _mc_delete(mc, k):
    return mc.delete(k)


def make_store(cfg: CacheConfig, log_=None, epochs_buf=None, region=None):
    """The store ``[cache]`` describes; no I/O happens here (after the fork).

    ``region``: the embedded store's shared region (``net.cache_shm``), made
    by the master when servers = [] and shared_size > 0; None: each
    worker's own ``MemoryStore``.

    ``log_``: where the breaker's transitions go (the worker's error log).
    ``epochs_buf``: the change counters the master shares with its workers
    (``core.epochs``; None: this process's own, as for a tool outside a master).
    """
    if not cfg.servers:
        if region is not None:
            from forkproxy.net.cache_shm import SharedStore

            return SharedStore(region, max_object_size=cfg.max_object_size,
                               near_size=min(cfg.memory_size, cfg.shared_size // 4))
        return MemoryStore(cfg.memory_size, max_object_size=cfg.max_object_size)
    timeout_ms = max(1, round(cfg.timeout * 1000))  # libmemcached counts in whole ms
    breaker = breaker_for(timeout_ms / 1000, failures=cfg.breaker_failures,
                          window=cfg.breaker_window, cooldown=cfg.breaker_cooldown)
    return MemcachedStore(list(cfg.servers), max_object_size=cfg.max_object_size,
                          timeout_ms=timeout_ms, breaker=breaker,
                          mode=cfg.mode, log_=log_, near_size=cfg.memory_size,
                          epochs=Epochs(epochs_buf) if epochs_buf is not None else None)
