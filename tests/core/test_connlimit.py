"""core.connlimit: open connections per key, one column per worker slot, summed by readers."""

import pytest

from forkproxy.core.connlimit import ConnTable, LayoutError, connlimit_size


def table(n_entries=64, n_slots=4):
    buf = bytearray(connlimit_size(n_entries, n_slots))
    return buf, ConnTable(buf, n_entries, n_slots, create=True, seed=b"k" * 16)


def test_limit_is_summed_over_slots_and_release_frees():
    buf, t = table()
    other = ConnTable(buf, 64, 4)  # another worker's view of the same buffer
    tickets = [t.acquire("web 10.0.0.1", 0, 3), other.acquire("web 10.0.0.1", 1, 3),
               other.acquire("web 10.0.0.1", 2, 3)]
    assert all(x is not None and x >= 0 for x in tickets)
    assert t.acquire("web 10.0.0.1", 3, 3) is None
    assert t.acquire("web 10.0.0.2", 3, 3) is not None  # another address
    other.release(tickets[1], 1)
    assert t.count("web 10.0.0.1") == 2
    assert t.acquire("web 10.0.0.1", 3, 3) is not None


def test_dead_slot_is_cleared_and_entries_are_reused():
    _, t = table(n_entries=8, n_slots=2)
    for i in range(8):
        assert t.acquire(f"k{i}", 0, 1) >= -1
    t.clear_slot(0)
    assert all(t.count(f"k{i}") == 0 for i in range(8))
    for i in range(100):  # entries whose count fell to 0 are reused: never refused
        ticket = t.acquire(f"n{i}", 0, 1)
        assert ticket is not None
        t.release(ticket, 0)


def test_full_bucket_fails_open_and_layout_is_checked():
    _, t = table(n_entries=8, n_slots=1)  # one bucket of 8 entries
    tickets = [t.acquire(f"k{i}", 0, 1) for i in range(9)]
    assert tickets[-1] == -1  # admitted, not counted
    t.release(-1, 0)
    with pytest.raises(LayoutError):
        ConnTable(bytearray(connlimit_size(8, 1)), 8, 1)
