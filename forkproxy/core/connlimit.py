"""Connections per client address, counted across workers, over any writable buffer.

CONTRACT (the master creates the buffer, a MAP_SHARED mmap, before forking;
workers count in it; ``forkproxy.net.edge`` calls it for listeners with
``max_conns_per_ip``):

    ``connlimit_size(n_entries, n_slots)`` bytes needed.
    ``ConnTable(buf, n_entries, n_slots, create=False, seed=b"")``
        ``create=True`` formats a zeroed buffer; otherwise the header must
        match (``LayoutError``). ``seed`` keys the hash (16 random bytes).
    ``.acquire(key, slot, limit) -> int | None``
        one more connection of ``key`` (a listener name and an address) in
        the worker owning ``slot``: ``None`` when ``limit`` connections of
        the key are open already (summed over every slot), else a ticket for
        ``release``. A ticket of ``-1`` means "admitted but not counted":
        every entry of this slot in the key's bucket is held by other live
        keys (the table fails open rather than refusing an innocent client).
    ``.release(ticket, slot)``: the connection closed.
    ``.clear_slot(slot)``: the slot's worker died (the master calls it).
    ``.count(key) -> int``: open connections of ``key``, for tests and metrics.

Layout and discipline (as ``core.table`` and ``core.ratelimit``: one writer
per 8-byte cell, aligned stores through ``memoryview`` casts): a 64-byte
header, then buckets; in each bucket every slot owns ``WAYS`` entries of
two cells (key hash, open count). Readers sum the counts of the entries
holding the key's hash over all slots. A slot reuses one of its entries
whose count fell to 0; the count is 0 while the hash changes, so a reader
racing the change adds nothing. Between two workers accepting from the same
address at the same instant, each may see the other's count before its
increment: at most ``n_slots - 1`` connections above the limit, for that
instant only.
"""

from __future__ import annotations

import hashlib
import struct

__all__ = ["ConnTable", "connlimit_size", "LayoutError", "WAYS", "MAGIC"]

MAGIC = b"FPXCONN1"
WAYS = 8
HEADER_SIZE = 64
_HEADER = struct.Struct("@8sIIQ16s")
_ENTRY = 16


class LayoutError(ValueError):
    """The buffer is not a connection table with these parameters."""


def _buckets(n_entries: int) -> int:
    return max(1, -(-n_entries // WAYS))


def connlimit_size(n_entries: int, n_slots: int) -> int:
    """Bytes for ``n_entries`` tracked addresses per worker slot over ``n_slots`` slots."""
    if n_entries < 1 or n_slots < 1:
        raise ValueError("n_entries and n_slots must be >= 1")
    return HEADER_SIZE + _buckets(n_entries) * n_slots * WAYS * _ENTRY


class ConnTable:
    """Open connections per key, one column per worker slot; see the module docstring."""

    def __init__(self, buf, n_entries: int, n_slots: int, *, create: bool = False,
                 seed: bytes = b""):
        size = connlimit_size(n_entries, n_slots)
        if len(buf) < size:
            raise LayoutError(f"buffer of {len(buf)} bytes < {size}")
        n_buckets = _buckets(n_entries)
        if create:
            _HEADER.pack_into(buf, 0, b"\0" * 8, n_slots, WAYS, n_buckets,
                              seed[:16].ljust(16, b"\0"))
            buf[0:8] = MAGIC
        magic, h_slots, h_ways, h_buckets, h_seed = _HEADER.unpack_from(buf, 0)
        if magic != MAGIC or (h_slots, h_ways, h_buckets) != (n_slots, WAYS, n_buckets):
            raise LayoutError("buffer was created with other parameters")
        self.n_slots, self.n_buckets, self._seed = n_slots, n_buckets, h_seed
        self._E = n_slots * WAYS
        self._u64 = memoryview(buf)[:size].cast("Q")

    def _hash(self, key: str) -> int:
        d = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8, key=self._seed)
        return int.from_bytes(d.digest(), "little") or 1  # 0 marks an unused entry

    def _bucket(self, h: int) -> int:
        return (HEADER_SIZE >> 3) + (h % self.n_buckets) * 2 * self._E

    def _sum(self, i0: int, h: int) -> int:
        u64, E = self._u64, self._E
        hashes = u64[i0:i0 + E].tolist()
        return sum(u64[i0 + E + e] for e, x in enumerate(hashes) if x == h)

    def count(self, key: str) -> int:
        h = self._hash(key)
        return self._sum(self._bucket(h), h)

    def acquire(self, key: str, slot: int, limit: int) -> int | None:
        if not 0 <= slot < self.n_slots:
            raise IndexError(f"slot {slot} out of range 0..{self.n_slots - 1}")
        h = self._hash(key)
        i0 = self._bucket(h)
        if self._sum(i0, h) >= limit:
            return None
        u64, E = self._u64, self._E
        own = free = -1
        for e in range(slot * WAYS, slot * WAYS + WAYS):
            if u64[i0 + e] == h:
                own = e
                break
            if free < 0 and u64[i0 + E + e] == 0:
                free = e
        if own < 0:
            if free < 0:
                return -1
            own = free
            u64[i0 + own] = h  # its count is 0: no reader adds anything meanwhile
        u64[i0 + E + own] += 1
        return i0 + E + own

    def release(self, ticket: int, slot: int) -> None:
        if ticket is not None and ticket >= 0 and self._u64[ticket] > 0:
            self._u64[ticket] -= 1

    def clear_slot(self, slot: int) -> None:
        u64, E = self._u64, self._E
        for b in range(self.n_buckets):
            i0 = (HEADER_SIZE >> 3) + b * 2 * E
            for e in range(slot * WAYS, slot * WAYS + WAYS):
                u64[i0 + E + e] = 0
