"""The cache's store: memcached through pylibmc, guarded, or a per-worker LRU.

CONTRACT (consumed by ``net.session``; HTTP semantics live in
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
  ``net.caching.make_store``; the ``forkproxy.cache`` logger otherwise).
- ``state`` -> dict: backend, servers, mode, breaker state
  ("closed", "open", "half-open") and counters.

Keys are hashed (sha256, prefix "fp:") so any string fits memcached's 250
bytes.  pylibmc clients are created on first use, in the process that uses
them (after the fork), and again if that process forks.

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
import functools
import hashlib
import logging
import math
import os
import struct
import time
from typing import Callable, Iterator, Protocol

import gevent
import pylibmc

from forkproxy.core.epochs import Epochs

__all__ = ["CacheError", "Breaker", "breaker_for", "BodyReader", "Writer", "Store",
           "MemcachedStore", "MemoryStore", "LRU", "hashed_key", "ITEM_SIZE"]

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
    """pylibmc behaviors bounding every call by ``timeout_ms`` (see the module docstring)."""
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


# ------------------------------------------------------------------ memcached

class MemcachedStore(_Backend):
    """The store over memcached servers ("host:port"), through pylibmc.

    ``mode`` is "direct" or "threadpool" (see the module docstring);
    ``timeout_ms`` bounds connect, send, receive and poll.  No I/O happens
    before the first call; no method raises.
    """

    def __init__(self, servers: list[str], *, max_object_size: int = 8 << 20,
                 item_size: int = ITEM_SIZE, timeout_ms: int = 30, breaker: Breaker | None = None,
                 mode: str = "direct", log_=None, near_size: int = 0,
                 epochs: Epochs | None = None):
        if mode not in ("direct", "threadpool"):
            raise ValueError(f"mode must be 'direct' or 'threadpool', not {mode!r}")
        super().__init__(max_object_size, item_size)
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
        return {"backend": "memory", "servers": [], "mode": "memory", "breaker": Breaker.CLOSED,
                "bytes": self.bytes, "max_bytes": self.max_bytes, "items": len(self._items), **self.counters}
