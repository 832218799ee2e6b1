"""The shared table's layout over a bytearray: round trips, seqlock repair, slot columns."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forkproxy.core import table as T
from forkproxy.core.table import (
    AdminRow, HealthRow, LayoutError, SlotCounters, Table, copy_rows, table_size,
)


def make(n_rows=3, n_slots=4, generation=7):
    buf = bytearray(table_size(n_rows, n_slots))
    return Table(buf, create=True, n_rows=n_rows, n_slots=n_slots, generation=generation)


# -- header -------------------------------------------------------------------


def test_header_round_trip_through_a_second_view():
    t = make(5, 3, generation=42)
    again = Table(t.buf)
    assert (again.generation, again.n_rows, again.n_slots) == (42, 5, 3)
    assert bytes(t.buf[:8]) == T.MAGIC


def test_size_grows_with_rows_and_slots_and_is_aligned():
    assert table_size(0, 0) == T.HEADER_SIZE
    assert table_size(2, 3) - table_size(1, 3) == table_size(1, 3) - table_size(0, 3)
    assert table_size(1, 4) > table_size(1, 3)
    assert (table_size(1, 3) - T.HEADER_SIZE) % 64 == 0


@pytest.mark.parametrize("corrupt, message", [
    (lambda b: b.__setitem__(slice(0, 8), b"NOTATABL"), "magic"),
    (lambda b: struct.pack_into("@I", b, 8, T.LAYOUT_VERSION + 1), "version"),
    (lambda b: struct.pack_into("@I", b, 24, 99), "size"),
])
def test_open_rejects_foreign_buffers(corrupt, message):
    t = make()
    corrupt(t.buf)
    with pytest.raises(LayoutError, match=message):
        Table(t.buf)


def test_zeroed_buffer_is_not_a_table():
    with pytest.raises(LayoutError):
        Table(bytearray(table_size(1, 1)))


def test_create_needs_sizes_and_room():
    with pytest.raises(ValueError):
        Table(bytearray(4096), create=True)
    with pytest.raises(LayoutError):
        Table(bytearray(table_size(2, 2) - 1), create=True, n_rows=2, n_slots=2)


def test_row_and_slot_indices_are_bounds_checked():
    t = make(2, 2)
    with pytest.raises(IndexError):
        t.read_health(2)
    with pytest.raises(IndexError):
        t.inflight_add(0, 2, 1)
    with pytest.raises(IndexError):
        t.read_admin(-1)


# -- health and admin round trips ---------------------------------------------

# Stored strings lose trailing NULs only; keep them out of the round-trip property.
text = lambda n: st.text(alphabet=st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)),  # noqa: E731
                         max_size=n).filter(lambda s: len(s.encode()) <= n)
finite = st.floats(allow_nan=False)

health_rows = st.builds(
    HealthRow, state=st.sampled_from(["up", "down"]), successes=st.integers(0, 2**32 - 1),
    failures=st.integers(0, 2**32 - 1), last_check=finite, last_result=text(32),
    latency=finite, last_change=finite, reason=text(47),
)
admin_rows = st.builds(
    AdminRow, state=st.sampled_from(["ready", "drain", "maint"]), weight=st.integers(0, 2**32 - 1),
    changed=finite, by=text(32),
)


@settings(max_examples=300, deadline=None)
@given(h=health_rows, a=admin_rows, row=st.integers(0, 2))
def test_every_field_round_trips(h, a, row):
    t = make()
    t.write_health(row, h)
    t.write_admin(row, a)
    assert t.read_health(row) == h
    assert t.read_admin(row) == a
    # Through a fresh view too: nothing is cached, everything is in the bytes.
    fresh = Table(bytes(t.buf))
    assert fresh.read_health(row) == h
    assert fresh.read_admin(row) == a
    # Neighbouring rows are untouched.
    for other in {0, 1, 2} - {row}:
        assert t.read_health(other) is None
        assert t.read_admin(other) == AdminRow()


@settings(deadline=None)  # the suite also runs loaded, under xdist
@given(s=st.text(max_size=80))
def test_long_strings_truncate_on_a_character_boundary(s):
    t = make()
    t.write_health(0, HealthRow(last_result=s, reason=s))
    h = t.read_health(0)
    stripped = s.encode("utf-8", "replace").decode("utf-8").rstrip("\0")
    for got, limit in ((h.last_result, 32), (h.reason, 47)):
        assert len(got.encode()) <= limit
        assert stripped.startswith(got)


def test_counters_saturate_rather_than_wrap():
    t = make()
    t.write_health(0, HealthRow(successes=2**40, failures=-3))
    h = t.read_health(0)
    assert (h.successes, h.failures) == (2**32 - 1, 0)


def test_unknown_state_names_are_rejected():
    t = make()
    with pytest.raises(KeyError):
        t.write_health(0, HealthRow(state="maybe"))
    with pytest.raises(KeyError):
        t.write_admin(0, AdminRow(state="off"))


def test_labels():
    t = make(3, 1)
    t.set_label(1, "api/10.0.0.12:8080")
    t.set_label(2, "é" * 40)  # 80 bytes: truncated to 32 characters
    assert t.label(0) == ""
    assert t.label(1) == "api/10.0.0.12:8080"
    assert t.label(2) == "é" * 32
    assert t.find("api/10.0.0.12:8080") == 1
    assert t.find("é" * 40) == 2
    assert t.find("nope") is None


# -- seqlock: a writer that died mid-write --------------------------------------


def _health_off(t, row):
    return T.HEADER_SIZE + row * t._row_size + T._OFF_HEALTH


def test_reader_of_a_cell_locked_forever_gives_up_with_last_good_copy():
    t = make()
    good = HealthRow(state="down", failures=3, reason="3 failed checks")
    t.write_health(0, good)
    assert t.read_health(0) == good
    seq = struct.unpack_from("@Q", t.buf, _health_off(t, 0))[0]
    struct.pack_into("@Q", t.buf, _health_off(t, 0), seq + 1)  # writer died: odd for ever
    assert t.read_health(0, tries=5) == good           # this view saw a good copy
    assert Table(t.buf).read_health(0, tries=5) is None  # a fresh view has none


def test_next_writer_repairs_an_odd_sequence():
    t = make()
    t.write_health(1, HealthRow(state="up"))
    off = _health_off(t, 1)
    seq = struct.unpack_from("@Q", t.buf, off)[0]
    struct.pack_into("@Q", t.buf, off, seq + 1)
    t.buf[off + 40:off + 50] = b"\xff" * 10  # and left half a payload behind
    assert Table(t.buf).read_health(1, tries=3) is None
    t.write_health(1, HealthRow(state="down", reason="repaired"))
    after = struct.unpack_from("@Q", t.buf, off)[0]
    assert after % 2 == 0 and after > seq + 1
    assert Table(t.buf).read_health(1).reason == "repaired"


def test_torn_payload_with_even_sequence_is_rejected_by_crc():
    t = make()
    t.write_health(0, HealthRow(state="up", reason="fine"))
    off = _health_off(t, 0)
    t.buf[off + 100] ^= 0xFF
    assert Table(t.buf).read_health(0, tries=3) is None


def test_admin_cell_has_its_own_sequence():
    t = make()
    t.write_health(0, HealthRow(state="down"))
    admin_off = T.HEADER_SIZE + T._OFF_ADMIN
    struct.pack_into("@Q", t.buf, admin_off, 1)  # an admin writer died mid-write
    assert Table(t.buf).read_health(0) == HealthRow(state="down")
    assert Table(t.buf).read_admin(0, tries=3) == AdminRow()  # falls back to "ready"
    t.write_admin(0, AdminRow(state="drain", by="ctl"))
    assert Table(t.buf).read_admin(0).state == "drain"


# -- per-slot columns ------------------------------------------------------------


def test_inflight_sums_across_slots_and_clear_slot_resets_one():
    t = make(2, 3)
    t.inflight_add(0, 0, 2)
    t.inflight_add(0, 1, 5)
    t.inflight_add(0, 2, 1)
    t.inflight_add(0, 2, -1)
    t.inflight_add(1, 1, 4)
    assert (t.inflight(0), t.inflight(1)) == (7, 4)
    t.clear_slot(1)
    assert (t.inflight(0), t.inflight(1)) == (2, 0)
    t.inflight_add(0, 1, 1)  # the replacement worker starts from zero
    assert t.inflight(0) == 3


@pytest.mark.parametrize("marks, cleared, expected", [
    ({}, None, 0.0),                               # no worker re-read the row yet
    ({0: 5.0}, None, 5.0),                         # slots never taken hold nobody back
    ({0: 5.0, 2: 3.0}, None, 3.0),                 # the oldest worker's view
    ({0: 5.0, 2: 3.0}, 2, 5.0),                    # an exited worker's slot is cleared
    ({0: 5.0, 1: 9.0, 2: 7.0}, 0, 7.0),
])
def test_seen_is_the_oldest_workers_reread_of_the_row(marks, cleared, expected):
    t = make(2, 3)
    for slot, when in marks.items():
        t.mark_seen(0, slot, when)
        t.mark_seen(1, slot, when + 100)  # another row: its own column
    if cleared is not None:
        t.clear_slot(cleared)
    assert t.seen(0) == expected
    assert make(1, 0).seen(0) == 0.0  # a table without slots


def test_a_negative_slot_never_hides_another_slots_load():
    t = make(1, 2)
    t.inflight_add(0, 0, -3)
    t.inflight_add(0, 1, 2)
    assert t.inflight(0) == 2


@settings(deadline=None)  # the suite also runs loaded, under xdist
@given(ops=st.lists(st.tuples(st.integers(0, 3), st.sampled_from([1, -1])), max_size=60))
def test_inflight_matches_a_model(ops):
    t = make(1, 4)
    model = [0, 0, 0, 0]
    for slot, delta in ops:
        if model[slot] + delta < 0:
            continue  # a worker never releases what it did not take
        model[slot] += delta
        t.inflight_add(0, slot, delta)
    assert t.inflight(0) == sum(model)


PASSIVE = [
    # (slot, time) of each failure, fail_timeout, now, expected sum
    ([], 10, 0, 0),
    ([(0, 0), (0, 1), (0, 2)], 10, 5, 3),
    ([(0, 0), (1, 1), (2, 2)], 10, 5, 3),            # summed across workers
    ([(0, 0), (0, 1)], 10, 10, 0),                    # window expired
    ([(0, 0), (0, 1), (0, 11)], 10, 12, 1),           # a late failure opens a new window
    ([(0, 0), (1, 8)], 10, 12, 1),                    # slot 0's window closed, slot 1's open
]


@pytest.mark.parametrize("fails, timeout, now, expected", PASSIVE)
def test_passive_failures_window(fails, timeout, now, expected):
    t = make(1, 3)
    for slot, when in fails:
        t.passive_fail(0, slot, when, timeout)
    assert t.passive_failures(0, now, timeout) == expected


@pytest.mark.parametrize("fails, since, expected", [
    ([(0, 5), (1, 6)], 0.0, 2),
    ([(0, 5), (1, 6)], 5.5, 1),      # a check succeeded at 5.5: slot 0's window is forgiven
    ([(0, 5), (1, 6)], 7.0, 0),      # ... and after both
    ([(0, 5), (0, 8)], 6.0, 1),      # a failure after the check opens a new window
])
def test_passive_failures_since_a_successful_check(fails, since, expected):
    t = make(1, 2)
    for slot, when in fails:
        t.passive_fail(0, slot, when, 10, since=since)
    assert t.passive_failures(0, 9.0, 10, since=since) == expected


def test_clear_slot_forgets_passive_failures_but_keeps_counters():
    t = make(2, 2)
    t.passive_fail(0, 1, 100.0, 10)
    t.count(0, 1, requests=3, bytes_in=10, bytes_out=20)
    t.count(0, 0, requests=1)
    t.clear_slot(1)
    assert t.passive_failures(0, 101.0, 10) == 0
    assert t.counters(0) == SlotCounters(4, 10, 20)
    t.clear_slot(1, counters=True)
    assert t.counters(0) == SlotCounters(1, 0, 0)


def test_counters_wrap_at_u64():
    t = make(1, 2)
    t.count(0, 0, requests=2**64 - 1)
    t.count(0, 0, requests=2)
    t.count(0, 1, bytes_out=5)
    assert t.counters(0) == SlotCounters(1, 0, 5)


# -- reload ---------------------------------------------------------------------------


def test_copy_rows_carries_health_and_admin_of_servers_that_stay():
    old = make(3, 2, generation=1)
    old.write_health(0, HealthRow(state="down", failures=3, reason="gone"))
    old.write_health(2, HealthRow(state="up", successes=9))
    old.write_admin(2, AdminRow(state="maint", weight=5, by="ctl"))
    old.inflight_add(2, 0, 4)
    new = make(2, 2, generation=2)
    copy_rows(old, new, {2: 0, 1: 1})  # row 0 removed; row 1 never checked
    assert new.generation == 2
    assert new.read_health(0) == HealthRow(state="up", successes=9)
    assert new.read_admin(0) == AdminRow(state="maint", weight=5, by="ctl")
    assert new.read_health(1) is None and new.read_admin(1) == AdminRow()
    assert new.inflight(0) == 0


def test_read_only_buffer_reads_and_refuses_writes():
    t = make()
    t.write_health(0, HealthRow(reason="x"))
    ro = Table(bytes(t.buf))
    assert ro.read_health(0).reason == "x"
    with pytest.raises(TypeError):
        ro.write_health(0, HealthRow())


def test_an_inflight_cell_is_the_slot_count_inflight_add_moves():
    t = Table(bytearray(table_size(3, 2)), create=True, n_rows=3, n_slots=2)
    cells, k = t.inflight_cell(1, 1)
    cells[k] += 2
    t.inflight_add(1, 0, 1)
    assert t.inflight(1) == 3
    cells[k] -= 2
    assert t.inflight(1) == 1 and t.inflight(0) == 0 and t.inflight(2) == 0


# -- membership (layout 2) ------------------------------------------------------------


def test_member_cell_round_trips_with_its_label_and_bumps_the_version():
    t = make()
    assert t.read_member(1) is None and t.members_version == 0
    m = T.MemberRow("active", "runtime", weight=3, backup=True, max_conns=7, serial=2,
                    changed=12.5)
    t.write_member(1, "web/10.0.0.9:80", m)
    again = Table(t.buf)
    assert again.read_member(1) == ("web/10.0.0.9:80", m)
    assert again.label(1) == "web/10.0.0.9:80"
    assert again.members_version == 1
    t.write_member(1, "", T.MemberRow("free", "runtime", serial=2))
    assert again.members_version == 2 and again.read_member(1)[0] == ""


def test_member_cell_refuses_a_label_that_does_not_go_with_it():
    t = make()
    t.write_member(0, "web/a:1", T.MemberRow("active", serial=1))
    t.set_label(0, "web/b:1")  # a label changed without its cell: torn
    fresh = Table(t.buf)
    assert fresh.read_member(0, tries=3) is None
