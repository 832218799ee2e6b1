"""The embedded cache store: one region of memory shared by every worker of a forkproxy.

The default store when ``[cache]`` names no memcached (``cache.shared_size``
bytes; 0: each worker's own ``MemoryStore`` instead).  The contract is
``net.cache_store``'s; the layout (rows of slots, LRU within a row, the
commit word that makes a half-written slot invisible) is
``core.cache_slab``'s.  This module adds the file, the locks and the clock.

- The region is a file in ``server.runtime_dir`` (``REGION_NAME``), made
  by the master before it forks (``create_region``: built under a temporary
  name, renamed into place, so the file is never seen half made) and mapped
  shared; the master keeps it across reloads (the new generation's workers
  inherit the same mapping, so a reload keeps every entry) unless the size
  changed.  A new master (start, USR2) makes a new, empty one.
- Writers (set, add, delete) take an exclusive ``lockf`` on one byte per
  row of the file's descriptor, which the master opened and every worker
  inherits: ``lockf`` locks belong to the process, and the kernel frees
  them when it dies, so a worker killed while it holds one blocks nobody.
  The lock is held for a copy of at most one slot (64 KiB) and taken
  without yielding to other greenlets.  Readers take no lock.
- Every change is at once visible to every worker.  A worker keeps copies
  of the values it read (``near_size`` bytes, least recently used out, as
  ``cache.memory_size`` says), each with its slot's commit word: a copy is
  used only while that word is unchanged, and any write, move or delete of
  the slot changes it (one 8-byte read instead of a lookup, a copy and a
  CRC), so a copy is never older than the region.  A host purge changes the
  region's namespace counter, which every worker compares with the one it
  read its host tokens under.
- Coalescing is ``_Backend.lock``'s: one worker of the forkproxy goes
  upstream for a URL, the others wait for its entry; a lock whose holder
  (its pid is the value) is gone is free at once, not after its ttl.
- Bodies are stored in chunks of the largest class (64 KiB), as in
  memcached; a body larger than ``Slab.max_body`` (a quarter of the largest
  class's bytes) or ``max_object_size`` is not stored.  A hit checks that
  every chunk of its body is still there before it answers.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import time
from typing import Callable

from forkproxy.core.cache_slab import Slab, region_size_ok
from forkproxy.net.cache_store import LRU, BodyReader, _Backend, _split_entry, hashed_key

__all__ = ["REGION_NAME", "Region", "create_region", "SharedStore"]

REGION_NAME = "cache.shm"


class Region:
    """The region's mapping and the descriptor its locks are taken on (the master's)."""

    def __init__(self, mm: mmap.mmap, fd: int, path: str):
        self.mm, self.fd, self.path = mm, fd, path
        self.size = len(mm)
        self.slab = Slab(mm)


def create_region(runtime_dir: str, size: int, owner: tuple[int, int] | None = None) -> Region:
    """Master: a new, empty region of ``size`` bytes at ``runtime_dir/cache.shm``.

    ``owner`` (uid, gid): server.user's.  The descriptor stays open (and is
    inherited by the workers) for the row locks.  ValueError when ``size``
    holds no row.
    """
    if not region_size_ok(size):
        raise ValueError(f"cache.shared_size {size} is too small for one row")
    path = os.path.join(runtime_dir, REGION_NAME)
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        if owner is not None and os.geteuid() == 0:
            os.fchown(fd, *owner)
        os.ftruncate(fd, size)
        mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        Slab(mm, create=True)
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        os.close(fd)
        raise
    return Region(mm, fd, path)


def _key32(k: str) -> bytes:
    """The 32 bytes of a ``hashed_key`` ("fp:" + sha256 hex)."""
    return bytes.fromhex(k[3:])


def _alive(pid: bytes) -> bool:
    """Whether the process a lock names (its pid, as written by ``lock``) exists."""
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    return True


class SharedStore(_Backend):
    """The store over a ``Region`` shared by the workers (module docstring)."""

    wall: Callable[[], int] = staticmethod(time.monotonic_ns)

    def __init__(self, region: Region, *, max_object_size: int = 8 << 20, item_size: int = 0,
                 near_size: int = 1 << 20, clock: Callable[[], float] = time.monotonic):
        """``item_size``: the chunk size (0: the largest class's, its upper bound);
        ``near_size``: bytes of this process's copies of values read (0: none)."""
        slab = region.slab
        super().__init__(min(max_object_size, slab.max_body),
                         min(item_size or slab.max_value, slab.max_value))
        self.region, self.slab, self.clock = region, slab, clock
        self._ns_epoch = slab.epoch
        self.near = LRU(near_size, clock) if near_size > 0 else None

    @contextlib.contextmanager
    def _locked(self, key: bytes):
        row = self.slab.row_of(key)
        fcntl.lockf(self.region.fd, fcntl.LOCK_EX, 1, row)
        try:
            yield
        finally:
            fcntl.lockf(self.region.fd, fcntl.LOCK_UN, 1, row)

    def _expires(self, ttl: float) -> float:
        return self.clock() + ttl if ttl > 0 else 0.0

    def _stamp(self) -> int:
        return self.wall() << 1

    # primitives (see _Backend); every error is a miss or a failed write

    def _get(self, k):
        now = self.clock()
        near = self.near
        if near is not None:
            copy = near.get(k)
            if copy is not None:
                if self.slab.still(copy[1], copy[2], copy[3], now):
                    return copy[0]
                near.drop(k)
        try:
            got = self.slab.find(_key32(k), now)
        except (OSError, ValueError):
            self.counters["errors"] += 1
            return None
        if got is None:
            return None
        if near is not None and len(got[0]) <= near.max_bytes >> 4:
            near.put(k, got, len(got[0]))
        return got[0]

    def _write(self, op, k, *args, failed: bool = False) -> bool:
        key = _key32(k)
        try:
            with self._locked(key):
                return op(key, *args)
        except (OSError, ValueError):
            self.counters["errors"] += 1
            return failed

    def _set(self, k, v, ttl) -> bool:
        return self._write(self._put, k, bytes(v), ttl)

    def _put(self, key, v, ttl) -> bool:
        return self.slab.put(key, v, self._expires(ttl), self.clock(), self._stamp())

    def _add(self, k, v, ttl):
        return self._write(self._add_locked, k, bytes(v), ttl)

    def _add_locked(self, key, v, ttl) -> bool:
        return self.slab.add(key, v, self._expires(ttl), self.clock(), self._stamp())

    def _delete(self, k) -> bool:
        return self._write(self.slab.delete, k)

    # -- coalescing: a lock whose holder died is free --------------------------------

    def lock(self, key: str, ttl: float) -> bool:
        """``_Backend.lock``, and a lock held by a process that is gone (a worker
        killed while it fetched) is taken over at once, not after ``ttl``."""
        return self._write(self._take, hashed_key("lock", key), str(os.getpid()).encode(), ttl,
                           failed=True)

    def _take(self, key, v, ttl) -> bool:
        now = self.clock()
        held = self.slab.get(key, now, touch=False)
        if held is not None and _alive(held):
            return False
        return self.slab.put(key, v, self._expires(ttl), now, self._stamp())

    # -- hits: a body whose chunks are not all there is a miss ------------------------

    def get_entry(self, key: str) -> tuple[bytes, BodyReader] | None:
        got = super().get_entry(key)
        if got is None or got[1].whole is not None:
            return got
        item = self._get(self._entry_key(key))
        parsed = _split_entry(item) if item is not None else None
        if parsed is None:
            return None
        version, count = parsed[0], parsed[1]
        now = self.clock()
        for i in range(1, count):
            if self.slab.get(_key32(self._chunk_key(key, version, i)), now, touch=False) is None:
                self.counters["hits"] -= 1
                self.counters["misses"] += 1
                self.counters["broken"] = self.counters.get("broken", 0) + 1
                self.delete(key)
                return None
        return got

    # -- hot entries: a near copy's commit word, one 8-byte read ---------------------

    def stamp(self, key: str, reader):
        got = self._near_stamp(key, reader)
        return got[0] if got is not None else None  # (item, q, seq, expires): the slot's own expiry

    def still(self, copy) -> bool:
        if self.slab.still(copy[1], copy[2], copy[3], self.clock()):
            self.counters["hits"] += 1
            return True
        return False

    # -- host purges: the region's counter ---------------------------------------

    def namespace(self, host: str) -> str:
        epoch = self.slab.epoch
        if epoch != self._ns_epoch:  # a host purged by some worker
            self._ns.clear()
            self._ns_epoch = epoch
        return super().namespace(host)

    def bump_namespace(self, host: str) -> bool:
        ok = super().bump_namespace(host)
        self.slab.bump_epoch(int.from_bytes(os.urandom(8), "little"))
        self._ns_epoch = self.slab.epoch  # this process keeps the token it just set
        return ok

    @property
    def state(self) -> dict:
        items, size = self.slab.count(self.clock())
        return {"backend": "shared", "servers": [], "mode": "shared", "breaker": "closed",
                "bytes": size, "max_bytes": self.region.size, "items": items,
                "max_object_size": self.max_object_size, **self.counters}
