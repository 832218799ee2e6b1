"""A token bucket per key, shared by every worker, over any writable buffer.

CONTRACT (consumed by the session; the master creates the buffer, a
MAP_SHARED mmap, before forking, as for ``forkproxy.core.table``):

    ``ratelimit_size(n_keys, n_slots, ways=WAYS)`` bytes needed.
    ``RateLimiter(buf, n_keys, n_slots, rate, burst, create=False, seed=b"")``
        ``rate`` in requests per second (> 0), ``burst`` >= 1 requests.
        ``create=True`` formats a zeroed buffer (``seed``: 16 random bytes
        from the caller, keying the hash so clients cannot aim keys at one
        bucket); otherwise the header must match the arguments
        (``LayoutError``).
    ``.check(key, slot, now) -> (allowed, retry_after)``
        one request for ``key`` served by the worker owning ``slot`` at time
        ``now``. ``retry_after`` (seconds, > 0) is when a request would next
        be allowed, 0.0 when allowed. ``now`` must come from one clock shared
        by all processes: ``time.monotonic()`` (CLOCK_MONOTONIC is
        system-wide). No clock is read here.
    ``parse_rate("100r/s") -> 100.0`` (also ``r/m`` and ``r/h``).

Semantics: GCRA, the token bucket's exact equivalent: emission interval
``T = 1/rate``, tolerance ``tau = (burst - 1) * T``; a full bucket admits
``burst`` requests at once, then one every ``T``. Over ANY window of length
``W`` at most ``rate * W + burst`` requests of a key are admitted. Denied
requests cost nothing (they do not push the next allowed time further).

Cross-process design (the same discipline as ``core.table``: Python has no
cross-process atomics, so one writer per 8-byte cell, aligned 8-byte loads
and stores through ``memoryview`` casts). GCRA keeps one number per key, the
theoretical arrival time TAT, which every worker would have to update:
impossible with one writer per cell. So TAT is split into per-slot parts
whose combination the workers never need to write together::

    TAT(key) = max over slots j of base_j  +  (sum over slots j of count_j) * T

``count_j`` is the number of requests of the key slot ``j`` admitted (only
ever incremented, by that slot); ``base_j`` moves only when the bucket was
found full (TAT < now), to ``now - sum(count) * T``, which makes TAT = now;
it only grows, so the max over slots is right whichever slot wrote last.
An admission is then "read all parts, decide, increment my own count".
Nothing is ever lost: two workers admitting at the same instant both count.
The only error is that race itself: k workers deciding in the same
microsecond may each admit the last token, so at most ``n_slots - 1``
requests above the bound, after which TAT is correct again (and further in
the future, so the key is held back for the excess). Readers re-check the
key hash after reading a cell's numbers, so an entry being reused for
another key is skipped.

Memory is bounded: a set-associative table of ``ceil(n_keys / ways)``
buckets; in each bucket every slot owns ``ways`` entries (key hash u64,
count u64, base f64, last seen f64), so each worker tracks up to ``n_keys``
keys and the buffer holds ``n_keys * n_slots * 32`` bytes plus a 64-byte
header. A key maps to one bucket; a slot admitting a key it has no entry for
takes an empty entry of its own in that bucket, else its least recently
seen one (a denied request refreshes "seen" but claims nothing). Eviction
forgets that slot's share of the evicted key's history: harmless when the
key's bucket had refilled (its TAT was past: the usual case for the least
recently seen key), otherwise the key gets up to that share back early.

A slot whose worker died keeps its counts: they are part of the keys'
history and stay correct for the next owner of the slot, which just goes on
incrementing them. Hash collisions (64-bit keyed BLAKE2b) are ignored.
"""

from __future__ import annotations

import hashlib
import math
import re
import struct

__all__ = ["RateLimiter", "ratelimit_size", "parse_rate", "LayoutError", "WAYS", "MAGIC"]

MAGIC = b"FPXRLIM1"
WAYS = 4
_HEADER = struct.Struct("@8sIIQI4xdd16s")
HEADER_SIZE = 64
_ENTRY = 32  # hash, count, base, seen: four 8-byte cells
_EPS = 1e-9  # float slack in the conformance test: never deny an exact-boundary request
assert _HEADER.size == HEADER_SIZE


class LayoutError(ValueError):
    """The buffer is not a rate limiter with these parameters."""


def _buckets(n_keys: int, ways: int) -> int:
    return max(1, -(-n_keys // ways))


def ratelimit_size(n_keys: int, n_slots: int, ways: int = WAYS) -> int:
    """Bytes needed for ``n_keys`` keys per worker slot over ``n_slots`` slots."""
    if n_keys < 1 or n_slots < 1 or ways < 1:
        raise ValueError("n_keys, n_slots and ways must be >= 1")
    return HEADER_SIZE + _buckets(n_keys, ways) * n_slots * ways * _ENTRY


_RATE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*r/([smh])\s*")
_PER = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_rate(text: str) -> float:
    """``"100r/s"`` -> 100.0 requests per second; ``"30r/m"`` -> 0.5. ``ValueError`` otherwise."""
    m = _RATE.fullmatch(text)
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"{text!r}: expected a positive rate such as \"100r/s\" or \"30r/m\"")
    return float(m.group(1)) / _PER[m.group(2)]


def fleet_window(text: str, burst: int, now: float) -> tuple[int, int, float]:
    """(window number, requests allowed in it per key, when it ends) of a fleet
    limit (``scope = "fleet"``, counted in memcached by every node).

    A fixed window of the rate's unit (1 s for "Nr/s", 1 min for "Nr/m", 1 h
    for "Nr/h"), epoch-aligned so that every node names the same window,
    admitting N + burst - 1 requests (at least 1).  Coarser than the
    per-node token bucket: up to twice that around a window's edge.
    ``ValueError`` for a rate ``parse_rate`` refuses.
    """
    parse_rate(text)
    m = _RATE.fullmatch(text)
    width = _PER[m.group(2)]
    window = int(now // width)
    return window, max(1, int(float(m.group(1))) + burst - 1), (window + 1) * width


class RateLimiter:
    """One route's limiter over ``buf``; see the module docstring."""

    ways = WAYS  # entries per slot in a bucket (the layout's; one for every limiter)

    def __init__(self, buf, n_keys: int, n_slots: int, rate: float, burst: int, *,
                 create: bool = False, seed: bytes = b""):
        ways = self.ways
        if not rate > 0 or not math.isfinite(rate):
            raise ValueError(f"rate {rate}: must be > 0")
        if burst < 1:
            raise ValueError(f"burst {burst}: must be >= 1")
        size = ratelimit_size(n_keys, n_slots, ways)
        if len(buf) < size:
            raise LayoutError(f"buffer of {len(buf)} bytes < {size}")
        n_buckets = _buckets(n_keys, ways)
        if create:
            _HEADER.pack_into(buf, 0, b"\0" * 8, ways, n_slots, n_buckets, 0,
                              float(rate), float(burst), seed[:16].ljust(16, b"\0"))
            buf[0:8] = MAGIC
        magic, h_ways, h_slots, h_buckets, _, h_rate, h_burst, h_seed = _HEADER.unpack_from(buf, 0)
        if magic != MAGIC:
            raise LayoutError(f"bad magic {magic!r}")
        if (h_ways, h_slots, h_buckets, h_rate, h_burst) != (ways, n_slots, n_buckets,
                                                             float(rate), float(burst)):
            raise LayoutError("buffer was created with other parameters")
        self.n_slots, self.ways, self.n_buckets = n_slots, ways, n_buckets
        self.rate, self.burst = float(rate), int(burst)
        self._T = 1.0 / rate
        self._tau = (burst - 1) / rate
        self._seed = h_seed
        self._E = n_slots * ways  # entries per bucket
        whole = memoryview(buf)[:size]
        self._views = (whole, whole.cast("Q"), whole.cast("d"))
        _, self._u64, self._f64 = self._views

    def release(self) -> None:
        """Drop this view's hold on the buffer (needed before ``mmap.close``)."""
        for v in reversed(self._views):
            v.release()

    def _hash(self, key: str) -> int:
        d = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8, key=self._seed)
        return int.from_bytes(d.digest(), "little") or 1  # 0 marks an empty entry

    def check(self, key: str, slot: int, now: float) -> tuple[bool, float]:
        """Admit or refuse one request of ``key`` in ``slot`` at ``now``; see the module docstring."""
        if not 0 <= slot < self.n_slots:
            raise IndexError(f"slot {slot} out of range 0..{self.n_slots - 1}")
        h = self._hash(key)
        u64, f64, E = self._u64, self._f64, self._E
        # Bucket layout, in 8-byte cells: E hashes, E counts, E bases, E seens.
        i0 = (HEADER_SIZE >> 3) + (h % self.n_buckets) * 4 * E
        lo, hi = slot * self.ways, slot * self.ways + self.ways
        hashes = u64[i0:i0 + E].tolist()
        total, base, own = 0, -math.inf, -1
        if h in hashes:
            for e, x in enumerate(hashes):
                if x != h:
                    continue
                c, b = u64[i0 + E + e], f64[i0 + 2 * E + e]
                if u64[i0 + e] != h:  # reused for another key while we read
                    continue
                total += c
                if b > base:
                    base = b
                if lo <= e < hi:
                    own = e
        tat = base + total * self._T
        new_base = None
        if tat < now:  # the bucket is full: restart the arithmetic from now
            tat, new_base = now, now - total * self._T
        if tat - now > self._tau + _EPS:
            if own >= 0:
                f64[i0 + 3 * E + own] = now
            return False, tat - self._tau - now
        if own < 0:
            own = self._claim(i0, lo, hi, hashes, h, now)
        if new_base is not None:
            f64[i0 + 2 * E + own] = new_base
        u64[i0 + E + own] += 1
        f64[i0 + 3 * E + own] = now
        return True, 0.0

    def _claim(self, i0: int, lo: int, hi: int, hashes: list[int], h: int, now: float) -> int:
        """Take an entry of this slot in the bucket for ``h``: an empty one, else the LRU one."""
        E, f64, u64 = self._E, self._f64, self._u64
        e = next((e for e in range(lo, hi) if hashes[e] == 0), -1)
        if e < 0:
            e = min(range(lo, hi), key=lambda e: f64[i0 + 3 * E + e])
        # Hash first to 0 so no reader adds this entry's numbers to either key.
        u64[i0 + e] = 0
        u64[i0 + E + e] = 0
        f64[i0 + 2 * E + e] = -math.inf
        f64[i0 + 3 * E + e] = now
        u64[i0 + e] = h
        return e

    def keys_tracked(self, slot: int) -> int:
        """How many entries ``slot`` holds (for metrics and tests)."""
        E, n = self._E, 0
        for b in range(self.n_buckets):
            i0 = (HEADER_SIZE >> 3) + b * 4 * E
            n += sum(1 for e in range(slot * self.ways, (slot + 1) * self.ways) if self._u64[i0 + e])
        return n
