"""core.cache_slab: the embedded cache store's layout, over a bytearray (no I/O, no lock)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings, strategies as st

from forkproxy.core.cache_slab import (
    CLASSES, HEADER_SIZE, SLOT_HEADER, Slab, pick_victim, region_size_ok, row_size, tag_of,
)

ONE_ROW = HEADER_SIZE + row_size()


def key(*parts) -> bytes:
    return hashlib.sha256(repr(parts).encode()).digest()


def slab(rows: int = 1) -> Slab:
    return Slab(bytearray(HEADER_SIZE + rows * row_size()), create=True)


class Stamps:
    def __init__(self):
        self.n = 0

    def __call__(self) -> int:
        self.n += 2
        return self.n


@pytest.mark.parametrize("slots,now,want", [
    ([(0, 0.0, 0.0), (2, 1.0, 0.0)], 5.0, 0),               # never written
    ([(2, 1.0, 0.0), (1, 9.0, 0.0)], 5.0, 1),               # a dead writer's slot
    ([(2, 1.0, 0.0), (4, 9.0, 4.0)], 5.0, 1),               # expired
    ([(2, 3.0, 0.0), (4, 1.0, 0.0), (6, 2.0, 0.0)], 5.0, 1),  # least recently used
    ([(2, 3.0, 0.0), (4, 1.0, 9.0)], 5.0, 1),               # not yet expired: LRU decides
])
def test_pick_victim(slots, now, want):
    assert pick_victim(slots, now) == want


def test_tags_are_never_zero():
    assert tag_of(bytes(32)) != bytes(8) and len(tag_of(bytes(32))) == 8


@pytest.mark.parametrize("size,ok", [(0, False), (ONE_ROW - 8, False), (ONE_ROW, True),
                                     (64 << 20, True)])
def test_region_sizes(size, ok):
    assert region_size_ok(size) == ok
    if ok:
        assert Slab(bytearray(size), create=True).rows == (size - HEADER_SIZE) // row_size()
    else:
        with pytest.raises(ValueError):
            Slab(bytearray(size), create=True)


def test_a_buffer_that_is_not_a_region_is_refused():
    with pytest.raises(ValueError):
        Slab(bytearray(ONE_ROW))
    s = slab()
    assert Slab(s.buf).rows == 1  # a second view of a formatted region (a worker's)


@pytest.mark.parametrize("length", [0, 1, 1024, 1025, 4096, 16384, 30000, 65536])
def test_every_size_up_to_the_largest_class_round_trips(length):
    s, stamp = slab(), Stamps()
    assert s.put(key(length), bytes([length % 251]) * length, 0.0, 1.0, stamp())
    assert s.get(key(length), 2.0) == bytes([length % 251]) * length


def test_too_large_expired_deleted_and_added():
    s, stamp = slab(), Stamps()
    assert not s.put(key("big"), b"x" * (CLASSES[-1][0] + 1), 0.0, 1.0, stamp())
    assert s.put(key("t"), b"v", 10.0, 1.0, stamp())
    assert s.get(key("t"), 9.9) == b"v" and s.get(key("t"), 10.0) is None
    assert s.add(key("t"), b"w", 0.0, 10.0, stamp())  # expired: add takes it
    assert not s.add(key("t"), b"z", 0.0, 11.0, stamp())
    assert s.get(key("t"), 12.0) == b"w"
    assert s.delete(key("t")) and not s.delete(key("t"))
    assert s.get(key("t"), 12.0) is None


def test_a_key_that_changes_class_leaves_one_value():
    s, stamp = slab(), Stamps()
    for v in (b"a" * 10, b"b" * 5000, b"c" * 100, b"d" * 60000):
        assert s.put(key("k"), v, 0.0, 1.0, stamp())
        assert s.get(key("k"), 1.0) == v
        assert s.count(1.0)[0] == 1


def test_the_least_recently_used_goes_first():
    s, stamp = slab(), Stamps()
    ways = CLASSES[0][1]
    keys = [key("lru", i) for i in range(ways + 1)]
    for i, k in enumerate(keys[:ways]):
        assert s.put(k, b"v%d" % i, 0.0, float(i), stamp())
    assert s.get(keys[0], 100.0) == b"v0"   # used last: keys[1] is now the oldest
    s.put(keys[ways], b"new", 0.0, 101.0, stamp())
    assert s.get(keys[1], 102.0) is None
    assert s.get(keys[0], 102.0) == b"v0" and s.get(keys[ways], 102.0) == b"new"


def way_of(s: Slab, k: bytes) -> int:
    start = HEADER_SIZE + s.row_of(k) * s.row_bytes
    return bytes(s.buf[start:start + 8 * len(s.ways)]).index(tag_of(k)) // 8


def slot_at(s: Slab, k: bytes) -> int:
    return HEADER_SIZE + s.row_of(k) * s.row_bytes + s.ways[way_of(s, k)][0]


@pytest.mark.parametrize("damage", ["odd seq", "value byte", "length", "expires"])
def test_a_slot_half_written_or_torn_is_not_read(damage):
    """What a writer killed mid-write leaves: readers miss, the next write takes the slot."""
    s, stamp = slab(), Stamps()
    k = key("torn")
    s.put(k, b"x" * 3000, 0.0, 1.0, stamp())
    at = slot_at(s, k)
    if damage == "odd seq":
        s.buf[at] |= 1
    elif damage == "value byte":
        s.buf[at + SLOT_HEADER + 2000] ^= 0xFF
    elif damage == "length":
        s.buf[at + 24] ^= 1
    else:
        s.buf[at + 16 + 7] ^= 0x40
    assert s.get(k, 2.0) is None
    assert s.put(k, b"y" * 3000, 0.0, 3.0, stamp()) and s.get(k, 3.0) == b"y" * 3000
    assert s.count(3.0)[0] == 1


def test_of_two_copies_the_later_stamp_wins():
    """A writer killed between writing the new slot and freeing the old one."""
    s, stamp = slab(), Stamps()
    k = key("two")
    s.put(k, b"old", 0.0, 1.0, stamp())
    snapshot = bytes(s.buf)
    s.put(k, b"n" * 3000, 0.0, 1.0, stamp())  # another class
    start = HEADER_SIZE + s.row_of(k) * s.row_bytes
    old_way = snapshot[start:start + 8 * len(s.ways)].index(tag_of(k)) // 8
    off = start + s.ways[old_way][0]
    s.buf[off:off + SLOT_HEADER + 3] = snapshot[off:off + SLOT_HEADER + 3]  # old not freed
    s.buf[start + 8 * old_way:start + 8 * old_way + 8] = tag_of(k)
    assert s.get(k, 2.0) == b"n" * 3000


def test_the_namespace_counter():
    s = slab()
    assert s.epoch == 0
    s.bump_epoch(2 ** 64 + 7)
    assert Slab(s.buf).epoch == 7


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["put", "delete", "get"]), st.integers(0, 40),
                          st.integers(0, 70000)), max_size=80))
def test_against_a_dict(ops):
    """What ``get`` answers is always what the last put stored, or nothing (evicted):
    never another key's value, never an older version."""
    s, stamp = slab(), Stamps()
    model: dict[bytes, bytes] = {}
    for n, (op, i, length) in enumerate(ops):
        k = key("m", i)
        if op == "put":
            v = (b"%d:%d:" % (i, n)) * (length // 8 + 1)
            v = v[:length]
            if s.put(k, v, 0.0, float(n), stamp()):
                model[k] = v
            else:
                assert length > CLASSES[-1][0]
        elif op == "delete":
            s.delete(k)
            model.pop(k, None)
        got = s.get(k, float(n))
        assert got is None or got == model.get(k)
    for k, v in model.items():
        assert s.get(k, 1e9) in (None, v)
