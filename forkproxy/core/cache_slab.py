"""The embedded cache store's layout: a fixed-size region of slots, over any writable buffer.

The master creates the region (a file in ``server.runtime_dir``, mapped
shared, ``net.cache_shm``) before it forks; every worker of every
generation maps the same bytes.  This module is the layout only: no I/O,
no clock (times and stamps are passed in), no lock (the caller holds the
row's lock around ``put``, ``add`` and ``delete``; ``get`` takes none).

Layout (native byte order, offsets multiples of 8)::

    header   64 bytes   magic "FPSLAB01", region size, rows, at +24 the
                        namespace counter (u64, see ``bump_epoch``)
    row r    at 64 + r * row_size:
      index  8 bytes per way: the tag (the key's first 8 bytes, low bit
             set) of the slot in that way, 0 for none
      class c, for each of ``CLASSES``: ``ways`` slots of 64 + ``payload`` bytes
    slot     seq u64, used f64, expires f64, length u32, crc u32, key 32 bytes,
             then the value

A key (32 bytes: a sha256) lives in row ``key % rows``: one lock per row
covers every slot the key can be in, whatever its size.  A value goes to
the smallest class it fits; within the row's ways of that class the victim
is a free slot (never written, being written by a writer that died, or
expired), else the least recently used (each hit writes ``used``): LRU
within a set, as a CPU cache.

Crash safety (a writer killed mid-write).  A writer makes ``seq`` odd
first, writes tag, header and value, then writes ``seq`` = its stamp (even,
larger for a later write: the caller's monotonic nanoseconds times two).
A slot left odd is never read and is the first victim of the next write.
A reader copies the value and accepts it only when ``seq`` was even and
the same before and after the copy *and* the CRC-32 of the header and the
value matches (the CRC catches stores seen out of order, as in
``core.table``).  ``seq`` and ``used`` are written through a ``"Q"``/``"d"``
memoryview (one aligned 8-byte store), never ``struct.pack_into``.

A ``put`` writes the new slot before it frees the key's older one (a key
may move between classes); a reader that finds both takes the larger stamp.
"""

from __future__ import annotations

import struct
import zlib

__all__ = ["CLASSES", "HEADER_SIZE", "SLOT_HEADER", "Slab", "region_size_ok", "row_size",
           "pick_victim", "tag_of"]

MAGIC = b"FPSLAB01"
HEADER_SIZE = 64
_HEADER = struct.Struct("=8sQQQ")  # magic, size, rows, namespace counter (at +24)
# (payload bytes, ways): a row holds every class.
CLASSES: tuple[tuple[int, int], ...] = (
    (1024, 32), (2048, 32), (4096, 32), (8192, 16), (16384, 16), (32768, 12), (65536, 16))
SLOT_HEADER = 64
_SLOT = struct.Struct("=QddII32s")  # seq, used, expires, length, crc, key
_CRC_PART = struct.Struct("=dI32s")  # expires, length, key: what the CRC covers besides the value
WAYS = sum(w for _, w in CLASSES)
INDEX_SIZE = 8 * WAYS
BUSY = 1  # an odd seq: being written (or its writer died)
# A body may take at most this share of the largest class: its chunks are
# spread over the rows by their keys, so it does not evict itself.
BODY_SHARE = 4


def row_size() -> int:
    return INDEX_SIZE + sum(w * (SLOT_HEADER + p) for p, w in CLASSES)


def region_size_ok(size: int) -> bool:
    """Whether a region of ``size`` bytes holds at least one row."""
    return size >= HEADER_SIZE + row_size()


def tag_of(key: bytes) -> bytes:
    """The index tag of a 32-byte key: its first 8 bytes, never all zero."""
    return key[:7] + bytes((key[7] | 1,))


def pick_victim(slots: list[tuple[int, float, float]], now: float) -> int:
    """The way to write among ``slots`` (seq, used, expires) of one class of one row:
    the first free one (seq 0 or odd, or expired), else the least recently used."""
    best, best_used = 0, None
    for i, (seq, used, expires) in enumerate(slots):
        if seq == 0 or seq & 1 or (expires and expires <= now):
            return i
        if best_used is None or used < best_used:
            best, best_used = i, used
    return best


class Slab:
    """The region over ``buf`` (``create``: format it, ``size`` bytes); see the module docstring."""

    def __init__(self, buf, *, create: bool = False):
        self.buf = buf
        size = len(buf)
        if create:
            if not region_size_ok(size):
                raise ValueError(f"a region of {size} bytes holds no row")
            rows = (size - HEADER_SIZE) // row_size()
            _HEADER.pack_into(buf, 0, MAGIC, size, rows, 0)
        magic, hsize, rows, _ = _HEADER.unpack_from(buf, 0)
        if magic != MAGIC or hsize != size or rows < 1:
            raise ValueError("not a cache region, or one of another size")
        self.rows = rows
        self.row_bytes = row_size()
        self._q = memoryview(buf)[:HEADER_SIZE + rows * self.row_bytes].cast("B").cast("Q")
        self._d = self._q.cast("B").cast("d")
        # way -> (offset in the row, payload, class)
        self.ways: list[tuple[int, int, int]] = []
        off = INDEX_SIZE
        for c, (payload, ways) in enumerate(CLASSES):
            for _ in range(ways):
                self.ways.append((off, payload, c))
                off += SLOT_HEADER + payload
        self.max_value = CLASSES[-1][0]
        self.max_body = rows * CLASSES[-1][1] * self.max_value // BODY_SHARE

    # -- the namespace counter -------------------------------------------------

    @property
    def epoch(self) -> int:
        return self._q[3]

    def bump_epoch(self, value: int) -> None:
        """Every host's namespace changed: ``value`` is a random 64-bit number."""
        self._q[3] = value & 0xFFFF_FFFF_FFFF_FFFF

    # -- addressing ----------------------------------------------------------------

    def row_of(self, key: bytes) -> int:
        return int.from_bytes(key[8:16], "little") % self.rows

    def _row_start(self, row: int) -> int:
        return HEADER_SIZE + row * self.row_bytes

    def _matches(self, key: bytes, row: int):
        """The ways of ``row`` whose tag is ``key``'s (a slot's own key still to be checked)."""
        start = self._row_start(row)
        tags = bytes(self.buf[start:start + INDEX_SIZE])
        tag = tag_of(key)
        pos = tags.find(tag)
        while pos >= 0:
            if pos % 8 == 0:
                yield pos // 8
            pos = tags.find(tag, pos + 1)

    def _read(self, start: int, way: int, key: bytes, now: float) -> tuple[int, bytes, float] | None:
        """(stamp, value, expires) of ``way`` when it holds ``key``, whole and unexpired."""
        off, _, _ = self.ways[way]
        at = start + off
        seq = self._q[at // 8]
        if seq == 0 or seq & 1:
            return None
        _, _, expires, length, crc, k = _SLOT.unpack_from(self.buf, at)
        if k != key or (expires and expires <= now) or length > self.ways[way][1]:
            return None
        value = bytes(self.buf[at + SLOT_HEADER:at + SLOT_HEADER + length])
        if zlib.crc32(value, zlib.crc32(_CRC_PART.pack(expires, length, k))) != crc:
            return None
        if self._q[at // 8] != seq:
            return None
        return seq, value, expires

    # -- reads (no lock) -----------------------------------------------------------

    def get(self, key: bytes, now: float, touch: bool = True) -> bytes | None:
        """The value of ``key`` (None: absent, expired, or being written); ``touch``
        records the use for LRU."""
        got = self.find(key, now, touch)
        return None if got is None else got[0]

    def find(self, key: bytes, now: float, touch: bool = True) -> tuple[bytes, int, int, float] | None:
        """``get``, with what ``still`` needs to tell later that the copy is still the
        slot's: (value, the slot's seq word index, seq, expires)."""
        row = self.row_of(key)
        start = self._row_start(row)
        best = None
        for way in self._matches(key, row):
            got = self._read(start, way, key, now)
            if got is not None and (best is None or got[0] > best[0]):
                best = got + (way,)
        if best is None:
            return None
        q = (start + self.ways[best[3]][0]) // 8
        if touch:
            self._d[q + 1] = now
        return best[1], q, best[0], best[2]

    def still(self, q: int, seq: int, expires: float, now: float, touch: bool = True) -> bool:
        """Whether the copy ``find`` made is still the value of its key: its slot was not
        written since (any write, move or delete changes ``seq``: stamps only grow)
        and it has not expired.  One 8-byte read instead of a lookup and a copy."""
        if self._q[q] != seq or (expires and expires <= now):
            return False
        if touch:
            self._d[q + 1] = now
        return True

    # -- writes (the caller holds the row's lock) -----------------------------------

    def put(self, key: bytes, value: bytes, expires: float, now: float, stamp: int) -> bool:
        """Store ``value`` under ``key`` (False: larger than the largest class).
        ``stamp``: even, larger than any earlier write's (see the module docstring)."""
        length = len(value)
        if length > self.max_value:
            return False
        c = next(i for i, (payload, _) in enumerate(CLASSES) if length <= payload)
        row = self.row_of(key)
        start = self._row_start(row)
        old = [w for w in self._matches(key, row) if self._holds(start, w, key)]
        same = [w for w in old if self.ways[w][2] == c]
        if same:
            way = same[0]
        else:
            ways = [w for w, (_, _, wc) in enumerate(self.ways) if wc == c]
            way = ways[pick_victim([self._state(start, w) for w in ways], now)]
        off, _, _ = self.ways[way]
        at = start + off
        q = at // 8
        self._q[q] = BUSY
        self.buf[start + 8 * way:start + 8 * way + 8] = tag_of(key)
        crc = zlib.crc32(value, zlib.crc32(_CRC_PART.pack(expires, length, key)))
        self.buf[at + SLOT_HEADER:at + SLOT_HEADER + length] = value
        struct.pack_into("=ddII32s", self.buf, at + 8, now, expires, length, crc, key)
        self._q[q] = stamp if stamp > BUSY and not stamp & 1 else BUSY + 1
        for w in old:
            if w != way:
                self._free(start, w)
        return True

    def add(self, key: bytes, value: bytes, expires: float, now: float, stamp: int) -> bool:
        """``put`` unless ``key`` is there (unexpired): False then."""
        if self.get(key, now, touch=False) is not None:
            return False
        return self.put(key, value, expires, now, stamp)

    def delete(self, key: bytes) -> bool:
        """Drop ``key``; whether it was there."""
        row = self.row_of(key)
        start = self._row_start(row)
        found = False
        for way in list(self._matches(key, row)):
            if self._holds(start, way, key):
                self._free(start, way)
                found = True
        return found

    def _holds(self, start: int, way: int, key: bytes) -> bool:
        at = start + self.ways[way][0]
        return bytes(self.buf[at + 32:at + 64]) == key

    def _state(self, start: int, way: int) -> tuple[int, float, float]:
        at = start + self.ways[way][0]
        return self._q[at // 8], self._d[at // 8 + 1], self._d[at // 8 + 2]

    def _free(self, start: int, way: int) -> None:
        self._q[(start + self.ways[way][0]) // 8] = 0
        self.buf[start + 8 * way:start + 8 * way + 8] = bytes(8)

    # -- counts (for state) ----------------------------------------------------------

    def count(self, now: float) -> tuple[int, int]:
        """(entries, value bytes) held; reads every slot header."""
        n = size = 0
        for row in range(self.rows):
            start = self._row_start(row)
            for way, (off, _, _) in enumerate(self.ways):
                seq, _, expires = self._state(start, way)
                if seq and not seq & 1 and not (expires and expires <= now):
                    n += 1
                    size += struct.unpack_from("=I", self.buf, start + off + 24)[0]
        return n, size
