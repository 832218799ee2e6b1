"""The cache's store: the contract, its shared pieces, and a per-worker LRU store.

CONTRACT (consumed by ``net.http_cache``; HTTP semantics live in
``core.cache_policy``, this layer stores bytes):

- ``get_entry(key) -> (head, BodyReader) | None``.  ``head`` is what the
  writer passed (``Entry.to_bytes()``); the reader iterates the body in
  chunks and has ``length``.  ``None`` is a miss, and so is every error:
  the cache fails open.  Body chunks after the first one are fetched as the
  reader is iterated; when one has vanished meanwhile (evicted, memcached
  gone), iteration raises ``CacheError``: the caller has sent part of the
  body already and must end the client connection without a clean
  terminator (DESIGN section 4), never pass a truncated body off as whole.
- ``begin_write(key, head, ttl=0) -> Writer | None``.  ``write(chunk)``
  streams the body (``False`` once the write gave up: larger than
  ``max_object_size``, or a cache error; later calls are no-ops, nothing is
  buffered any more), ``commit()`` publishes it (``True`` when stored),
  ``abort()`` drops it.  ``None`` when the cache is bypassed (breaker open).
- A reader never sees a mix of two versions: a body is written under a fresh
  random version (chunks first), then the entry item that names the version;
  chunks are never overwritten, so a reader that got version 1's entry reads
  version 1's chunks to the end, whatever is written meanwhile.  A body that
  fits in one item with its head is stored inline (one round trip per hit).
- ``lock(key, ttl) -> bool`` is True when the caller should fetch upstream:
  it got the lock (memcached ``add``, shared by every worker of every
  forkproxy using the same servers), or the cache is unusable (fail open).
  ``unlock`` deletes the lock; the lock also expires after ``ttl``.
- ``namespace(host)`` is a token to put in every key of that host;
  ``bump_namespace(host)`` (purge of a whole host) replaces it, so every
  older key is never read again (memcached evicts them in time).  When the
  namespace cannot be read a fresh random one is returned: a miss, never a
  purged entry.  A token read from the store is kept in this process for
  ``NAMESPACE_TTL`` (1 s), so a hit is one round trip, not two: a host
  purge done by another forkproxy takes effect here within that time; one
  done by any worker of this forkproxy at once (memcached stores: the
  change counters below; the in-process store is per worker anyway).
- Near copies (memcached only).  An entry item read from memcached is kept
  in this process (bounded by ``near_size`` bytes, least recently used out)
  and answered from there for ``NEAR_TTL`` (0.5 s), so a hot URL costs two
  memcached round trips a second per worker, not one per hit.  A change
  made through this forkproxy (an entry stored or deleted, a host purged,
  by any of its workers) is seen by every worker at once: each change bumps
  a counter in ``Epochs`` (memory the master shares with its workers), and
  a near copy is used only while the counter of its key is what it was
  before the copy was read.  A change made by another forkproxy sharing
  the servers is seen within ``NEAR_TTL`` (a host purge within
  ``NAMESPACE_TTL``).
- Breaker transitions ("memcached ... misbehaves, bypassing it", "...
  answers again") go to ``log`` (the worker's error log, given by
  ``net.http_cache.make_store``; the ``forkproxy.cache`` logger otherwise).
- ``state`` -> dict: backend, servers, mode, breaker state
  ("closed", "open", "half-open") and counters.

Keys are hashed (sha256, prefix "fp:") so any string fits memcached's 250
bytes.  pylibmc clients are created on first use, in the process that uses
them (after the fork), and again if that process forks.

The memcached store (``net.cache_memcached``) has the same contract.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import logging
import math
import os
import struct
import time
from typing import Callable, Iterator, Protocol



__all__ = ["CacheError", "BodyReader", "Writer", "Store", "MemoryStore", "LRU", "hashed_key",
           "ITEM_SIZE"]

log = logging.getLogger("forkproxy.cache")

# memcached's default item limit is 1 MiB including key and item header; a
# chunk of 1,000,000 bytes leaves room for both.
ITEM_SIZE = 1_000_000
MAX_TTL = 30 * 24 * 3600        # memcached reads a larger expiry as a Unix time
# How long a process trusts a host's namespace token it read (see the contract),
# and how many hosts' tokens it keeps.
NAMESPACE_TTL = 1.0
NAMESPACE_HOSTS = 1024
# How many keys' hashed forms a process remembers (_Backend._entry_key).
ENTRY_KEYS = 4096
# How long a near copy of an entry item is used without asking memcached (see
# the contract).  Half a second: a hot URL costs each worker two round trips
# a second, and a frozen memcached is noticed (the breaker opens) well
# within a second even when every request was a near hit.
NEAR_TTL = 0.5

_MAGIC = b"FPC1"
# magic, version (16 random bytes), chunk count, body length, head length
_HEADER = struct.Struct("!4s16sIQI")


class CacheError(Exception):
    """A stored body could not be read to its end (a chunk vanished, the cache failed)."""


def hashed_key(*parts: str) -> str:
    """``"fp:" + sha256hex`` of the parts: any string, memcached-safe, 67 bytes."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return "fp:" + h.hexdigest()


def _ttl(ttl: float) -> int:
    """memcached expiry: whole seconds, 0 = until evicted, capped below the absolute-time switch."""
    return 0 if ttl <= 0 else min(MAX_TTL, max(1, math.ceil(ttl)))


# ------------------------------------------------------------------ readers and writers

def _nothing() -> None:
    pass


class BodyReader:
    """Iterator over a stored body's chunks (bytes); ``length`` is the whole body's size.

    Raises ``CacheError`` when a chunk cannot be read (see the module contract),
    after calling ``on_broken`` (the store drops the entry: later readers miss).
    """

    __slots__ = ("length", "whole", "_first", "_rest", "_count", "_on_broken")

    def __init__(self, length: int, first: bytes, rest: Callable[[int], bytes | None] | None,
                 count: int, on_broken: Callable[[], object] | None = None):
        self.length = length
        # The body itself when its first piece is all of it (a small body:
        # the common case), so a hit sends it without iterating.
        self.whole = first if count <= 1 and len(first) == length else None
        self._first = first
        self._rest = rest
        self._count = count
        self._on_broken = on_broken or _nothing

    def __iter__(self) -> Iterator[bytes]:
        seen = 0
        if self._first:
            seen += len(self._first)
            yield self._first
        for i in range(1, self._count):
            chunk = self._rest(i)
            if chunk is None:
                self._on_broken()
                raise CacheError(f"chunk {i} of {self._count} is gone")
            seen += len(chunk)
            yield chunk
        if seen != self.length:
            self._on_broken()
            raise CacheError(f"body is {seen} bytes, the entry says {self.length}")


class Writer:
    """Streams one body into a store; see the module contract.

    Bytes are kept until an item's worth is there (``item_size``), then sent
    as one chunk, so at most one item is buffered per writer.
    """

    def __init__(self, store: "_Backend", key: str, head: bytes, ttl: float):
        self._store, self._key, self._head, self._ttl = store, key, head, ttl
        self._version = os.urandom(16)
        self._buf = bytearray()
        self._chunks = 0
        self._size = 0
        self._dead = False
        self._done = False

    def write(self, data: bytes) -> bool:
        if self._dead or self._done:
            return False
        self._size += len(data)
        if self._size > self._store.max_object_size:
            self._store.counters["too_large"] += 1
            self.abort()
            return False
        self._buf += data
        item = self._store.item_size
        while len(self._buf) > item:
            if not self._flush(bytes(self._buf[:item])):
                return False
            del self._buf[:item]
        return True

    def _flush(self, piece: bytes) -> bool:
        if not self._store._put_chunk(self._key, self._version, self._chunks, piece, self._ttl):
            self.abort()
            return False
        self._chunks += 1
        return True

    def commit(self) -> bool:
        if self._dead or self._done:
            return False
        self._done = True
        inline = self._chunks == 0 and _HEADER.size + len(self._head) + len(self._buf) <= self._store.item_size
        if inline:
            body, count = bytes(self._buf), 0
        else:
            if self._buf and not self._flush(bytes(self._buf)):
                return False
            body, count = b"", self._chunks
        self._buf = bytearray()
        item = _HEADER.pack(_MAGIC, self._version, count, self._size, len(self._head)) + self._head + body
        ok = self._store._put_entry(self._key, item, self._ttl)
        if ok:
            self._store.counters["stores"] += 1
        return ok

    def abort(self) -> None:
        """Drop the write and, best effort, the chunks already sent (nothing names them)."""
        if self._dead:
            return
        self._dead = True
        self._buf = bytearray()
        for i in range(self._chunks):
            self._store._delete(self._store._chunk_key(self._key, self._version, i))


# A hit on a hot key brings the same item back (the same bytes object from the
# in-process store or a near copy, whose hash Python keeps).  For an item that
# holds its whole body, what ``get_entry`` answers is a function of its bytes
# (a BodyReader is never changed by reading it): it is remembered, for items
# up to REMEMBERED_ITEM_SIZE (16 MiB in all at most: each item and its body).
REMEMBERED_ITEM_SIZE = 64 << 10


@functools.lru_cache(maxsize=128)
def _remembered_inline(item: bytes) -> tuple[bytes, "BodyReader"] | None:
    """(head, reader) of an item whose body is in it whole, else None."""
    parsed = _split_entry(item)
    if parsed is None:
        return None
    _, count, length, head, body = parsed
    if count != 0 or len(body) != length:
        return None
    return head, BodyReader(length, body, None, 1)


def _split_entry(item: bytes) -> tuple[bytes, int, int, bytes, bytes] | None:
    """(version, chunk count, body length, head, inline body) or None when not ours."""
    if len(item) < _HEADER.size:
        return None
    magic, version, count, length, head_len = _HEADER.unpack_from(item)
    if magic != _MAGIC or _HEADER.size + head_len > len(item):
        return None
    head = item[_HEADER.size:_HEADER.size + head_len]
    return version, count, length, head, item[_HEADER.size + head_len:]


class Store(Protocol):
    def get_entry(self, key: str) -> tuple[bytes, BodyReader] | None: ...
    def begin_write(self, key: str, head: bytes, ttl: float = 0) -> Writer | None: ...
    def delete(self, key: str) -> bool: ...
    def namespace(self, host: str) -> str: ...
    def stamp(self, key: str, reader) -> object | None: ...
    def still(self, stamp) -> bool: ...
    def bump_namespace(self, host: str) -> bool: ...
    def lock(self, key: str, ttl: float) -> bool: ...
    def unlock(self, key: str) -> None: ...
    @property
    def state(self) -> dict: ...


class _Backend:
    """The item layout over four primitives: get, set, add, delete (None/False on error)."""

    clock: Callable[[], float] = staticmethod(time.monotonic)

    def __init__(self, max_object_size: int, item_size: int):
        self.max_object_size = max_object_size
        self.item_size = item_size
        self.counters = {"hits": 0, "misses": 0, "errors": 0, "bypassed": 0, "stores": 0, "too_large": 0}
        self._ns: dict[str, tuple[str, float]] = {}  # host -> (token, read at)
        self._entry_keys: dict[str, str] = {}  # key -> its memcached key (_entry_key)

    # primitives: _get(k) -> bytes | None (None: miss or error), _set(k, v, ttl) -> bool,
    # _add(k, v, ttl) -> bool | None (None: error), _delete(k) -> bool

    def _entry_key(self, key: str) -> str:
        # Every hit hashes its key: the keys of the hot URLs are remembered.
        hashed = self._entry_keys.get(key)
        if hashed is None:
            if len(self._entry_keys) >= ENTRY_KEYS:
                self._entry_keys.clear()  # keys come from clients: bound what they make us keep
            hashed = self._entry_keys[key] = hashed_key("e", key)
        return hashed

    def _chunk_key(self, key: str, version: bytes, i: int) -> str:
        return hashed_key("c", key, version.hex(), str(i))

    def _put_chunk(self, key, version, i, data, ttl) -> bool:
        return self._set(self._chunk_key(key, version, i), data, ttl)

    def _put_entry(self, key, item, ttl) -> bool:
        return self._set(self._entry_key(key), item, ttl)

    def _get_entry_item(self, key: str) -> bytes | None:
        return self._get(self._entry_key(key))

    def get_entry(self, key: str) -> tuple[bytes, BodyReader] | None:
        item = self._get_entry_item(key)
        if item is not None and len(item) <= REMEMBERED_ITEM_SIZE:
            got = _remembered_inline(item)
            if got is not None:  # a small body in the item itself: most hits
                self.counters["hits"] += 1
                return got
        parsed = _split_entry(item) if item is not None else None
        if parsed is None:
            self.counters["misses"] += 1
            return None
        version, count, length, head, body = parsed
        if count == 0:
            if len(body) != length:
                self.counters["misses"] += 1
                return None
            reader = BodyReader(length, body, None, 1)
        else:
            first = self._get(self._chunk_key(key, version, 0))
            if first is None:
                self.counters["misses"] += 1
                return None
            reader = BodyReader(length, first, lambda i: self._get(self._chunk_key(key, version, i)), count,
                                lambda: self.delete(key))
        self.counters["hits"] += 1
        return head, reader

    def begin_write(self, key: str, head: bytes, ttl: float = 0) -> Writer | None:
        if not self._usable():
            return None
        return Writer(self, key, head, ttl)

    def delete(self, key: str) -> bool:
        """Delete one entry (all its chunks become unreachable); False on error."""
        return self._delete(self._entry_key(key))

    # -- hot entries: net.http_cache's hot hits --------------------------------------

    def stamp(self, key: str, reader) -> object | None:
        """What ``still`` checks instead of a ``get_entry(key)`` that would
        hand out ``reader`` again (the same stored bytes, a small body whole),
        or None when this store has no cheaper way than ``get_entry``."""
        return None

    def still(self, stamp) -> bool:
        """True (counted as a hit) while ``get_entry`` of the stamped key
        would still hand out the same bytes; False: ask ``get_entry``."""
        return False

    def _near_stamp(self, key: str, reader):
        """``stamp`` of a store whose near copies (``self.near``, an LRU) hold the
        item itself first: the copy and its LRU expiry, when it is ``reader``'s."""
        near = self.near
        kept = near.peek(self._entry_key(key)) if near is not None else None
        if kept is None:
            return None
        copy, _, expires = kept
        got = _remembered_inline(copy[0]) if len(copy[0]) <= REMEMBERED_ITEM_SIZE else None
        return (copy, expires) if got is not None and got[1] is reader else None

    def namespace(self, host: str) -> str:
        now = self.clock()
        known = self._ns.get(host)
        if known is not None and now - known[1] < NAMESPACE_TTL:
            return known[0]
        k = hashed_key("ns", host)
        for _ in range(2):
            token = self._get(k)
            if token is not None:
                return self._keep_ns(host, token.decode("ascii", "replace"), now)
            fresh = os.urandom(8).hex().encode()
            added = self._add(k, fresh, 0)
            if added:
                return self._keep_ns(host, fresh.decode(), now)
            if added is None:
                break
        # Not kept: nothing is stored under it (a miss), and the next request asks again.
        return "unreadable-" + os.urandom(8).hex()

    def _keep_ns(self, host: str, token: str, now: float) -> str:
        if len(self._ns) >= NAMESPACE_HOSTS and host not in self._ns:
            self._ns.clear()  # Host comes from clients: bound what they can make us keep
        self._ns[host] = (token, now)
        return token

    def bump_namespace(self, host: str) -> bool:
        """Purge every key of ``host``; False when the cache could not be told."""
        token = os.urandom(8).hex()
        ok = self._set(hashed_key("ns", host), token.encode(), 0)
        if ok:
            self._keep_ns(host, token, self.clock())  # this process sees its own purge at once
        else:
            self._ns.pop(host, None)
        return ok

    def lock(self, key: str, ttl: float) -> bool:
        added = self._add(hashed_key("lock", key), str(os.getpid()).encode(), ttl)
        return added is None or added

    def unlock(self, key: str) -> None:
        self._delete(hashed_key("lock", key))

    def _usable(self) -> bool:
        return True


# ------------------------------------------------------------------ shared pieces

class LRU:
    """Values by key, bounded in bytes (key and value lengths), least recently
    used out first; a value put with a ``ttl`` is gone after it.  The
    in-process store and memcached's near copies both keep their items here.
    """

    def __init__(self, max_bytes: int, clock: Callable[[], float] = time.monotonic):
        self.max_bytes = max_bytes
        self.clock = clock
        self.bytes = 0
        self._items: collections.OrderedDict[str, tuple[object, int, float]] = \
            collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def peek(self, k: str):
        """(value, size, expiry or 0) as kept, expired or not, without making it recent."""
        return self._items.get(k)

    def get(self, k: str):
        hit = self._items.get(k)
        if hit is None:
            return None
        value, _, expires = hit
        if expires and self.clock() >= expires:
            self.drop(k)
            return None
        self._items.move_to_end(k)
        return value

    def put(self, k: str, value, size: int, ttl: float = 0) -> bool:
        """Keep ``value`` (``size`` bytes besides the key); False when it is too big."""
        size += len(k)
        self.drop(k)
        if size > self.max_bytes:
            return False
        self._items[k] = (value, size, self.clock() + ttl if ttl > 0 else 0.0)
        self.bytes += size
        while self.bytes > self.max_bytes:
            self.drop(next(iter(self._items)))
        return True

    def drop(self, k: str) -> bool:
        old = self._items.pop(k, None)
        if old is None:
            return False
        self.bytes -= old[1]
        return True

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0


# ------------------------------------------------------------------ in-process

class MemoryStore(_Backend):
    """The store in this process's memory (``servers = []``): an LRU bounded in bytes.

    Same contract as ``MemcachedStore``; shared by nothing, so coalescing,
    purges and hits are per worker.  Items count their key and value bytes;
    the least recently used go first.
    """

    def __init__(self, max_bytes: int, *, max_object_size: int = 8 << 20, item_size: int = ITEM_SIZE,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__(min(max_object_size, max_bytes), item_size)
        self.max_bytes = max_bytes
        self.clock = clock
        self._items = LRU(max_bytes, clock)

    @property
    def bytes(self) -> int:
        return self._items.bytes

    def _get(self, k):
        return self._items.get(k)

    def _set(self, k, v, ttl) -> bool:
        v = bytes(v)
        return self._items.put(k, v, len(v), ttl)

    def _add(self, k, v, ttl):
        if self._get(k) is not None:
            return False
        return self._set(k, v, ttl)

    def _delete(self, k) -> bool:
        return self._items.drop(k)

    @property
    def state(self) -> dict:
        return {"backend": "memory", "servers": [], "mode": "memory", "breaker": "closed",
                "bytes": self.bytes, "max_bytes": self.max_bytes, "items": len(self._items), **self.counters}
