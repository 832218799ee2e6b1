"""Outlier detection's pure rules (core.outlier) and its table columns (core.table)."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forkproxy.core.outlier import (
    after_interval, consecutive_reason, eject, ejection_time, kind_of, room,
    success_rate_outliers,
)
from forkproxy.core.table import OutlierCounts, OutlierRow, Table, copy_rows, table_size


def make(n_rows=2, n_slots=3):
    return Table(bytearray(table_size(n_rows, n_slots)), create=True, n_rows=n_rows,
                 n_slots=n_slots)


# -- outcomes ----------------------------------------------------------------------


@pytest.mark.parametrize("status, kind", [
    (200, "ok"), (404, "ok"), (499, "ok"), (500, "5xx"), (501, "5xx"), (599, "5xx"),
    (502, "gateway"), (503, "gateway"), (504, "gateway"), (None, "gateway"), (0, "ok"),
])
def test_kind_of(status, kind):
    assert kind_of(status) == kind


# -- durations, multiplier, share ----------------------------------------------------


@pytest.mark.parametrize("base, n, cap, want", [
    (30, 1, 300, 30), (30, 2, 300, 60), (30, 10, 300, 300), (30, 11, 300, 300),
    (30, 0, 300, 30), (30, 3, 10, 30),  # a cap below base: base
])
def test_ejection_time(base, n, cap, want):
    assert ejection_time(base, n, cap) == want


def test_eject_counts_and_times():
    o = eject(OutlierRow(), 100.0, "5 consecutive 5xx", 30, 300)
    assert o == OutlierRow(until=130.0, since=100.0, ejections=1, reason="5 consecutive 5xx")
    o2 = eject(o, 200.0, "again", 30, 300)
    assert (o2.until, o2.ejections) == (260.0, 2)


@pytest.mark.parametrize("o, now, n", [
    (OutlierRow(until=50, ejections=3), 60, 2),  # back in rotation for an interval: one less
    (OutlierRow(until=55, ejections=3), 60, 3),  # back, but not for a whole interval yet
    (OutlierRow(until=70, ejections=3), 60, 3),  # still ejected: unchanged
    (OutlierRow(), 60, 0),  # never ejected
])
def test_after_interval(o, now, n):
    assert after_interval(o, now, 10.0).ejections == n


@pytest.mark.parametrize("servers, ejected, percent, want", [
    (3, 0, 50, 1), (3, 1, 50, 0), (3, 0, 34, 1), (3, 0, 100, 3), (1, 0, 50, 0),
    (10, 0, 10, 1), (10, 2, 10, 0), (4, 0, 0, 0),
])
def test_room(servers, ejected, percent, want):
    assert room(servers, ejected, percent) == want


@pytest.mark.parametrize("c, five, gw, want", [
    (OutlierCounts(5, 0), 5, 0, "5 consecutive 5xx"),
    (OutlierCounts(4, 4), 5, 0, None),
    (OutlierCounts(4, 3), 5, 3, "3 consecutive gateway errors"),
    (OutlierCounts(9, 9), 0, 0, None),  # both rules off
    (OutlierCounts(7, 7), 5, 5, "5 consecutive gateway errors"),  # gateway first, the rule's number
])
def test_consecutive_reason(c, five, gw, want):
    assert consecutive_reason(c, five, gw) == want


# -- success rate ------------------------------------------------------------------------


@pytest.mark.parametrize("volumes, hosts, volume, factor, want", [
    # Envoy's rule: 50 % among 100 %s, factor 1: mean 83.3, stdev 23.6 -> threshold 59.8.
    ([(100, 100), (100, 100), (50, 100)], 3, 20, 1.0, {2}),
    # The same with the default factor 1.9: no outlier can exist among 3.
    ([(100, 100), (100, 100), (50, 100)], 3, 20, 1.9, set()),
    # Too few hosts with enough volume: nothing decided.
    ([(100, 100), (100, 100), (5, 10)], 3, 20, 1.0, set()),
    ([(100, 100), (100, 100), (50, 100)], 5, 20, 1.0, set()),
    # Ejected or new servers (None) are not candidates, nor counted as hosts.
    ([(100, 100), None, (100, 100), (50, 100)], 3, 20, 1.0, {3}),
    ([(100, 100), None, (50, 100)], 3, 20, 1.0, set()),
    # Five servers, one at 10 %: found with 1.9.
    ([(100, 100)] * 4 + [(10, 100)], 5, 100, 1.9, {4}),
    # Every rate equal: none.
    ([(70, 100)] * 6, 5, 100, 1.9, set()),
])
def test_success_rate_outliers(volumes, hosts, volume, factor, want):
    assert set(success_rate_outliers(volumes, hosts, volume, factor)) == want


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.none(), st.tuples(st.integers(0, 1000), st.integers(0, 1000))
                          .map(lambda t: (min(t), max(t)))), max_size=12),
       st.integers(1, 6), st.integers(1, 200), st.floats(0, 5))
def test_success_rate_outliers_properties(volumes, hosts, volume, factor):
    got = success_rate_outliers(volumes, hosts, volume, factor)
    rates = {i: 100.0 * v[0] / v[1] for i, v in enumerate(volumes)
             if v is not None and v[1] >= volume}
    assert set(got) <= set(rates)  # only servers with the volume
    if len(rates) < hosts:
        assert not got
    for i, (rate, threshold) in got.items():
        assert math.isclose(rate, rates[i]) and rate < threshold
        assert rate < max(rates.values())  # never the best server
    if len(set(rates.values())) <= 1:
        assert not got  # equal rates: nobody is an outlier


# -- the table's columns -----------------------------------------------------------------


def test_runs_sum_over_workers_and_a_success_anywhere_breaks_them():
    t = make()
    t.outcome(0, 0, 10.0, "5xx")
    t.outcome(0, 1, 11.0, "gateway")
    t.outcome(0, 2, 12.0, "gateway")
    assert t.outlier_counts(0) == OutlierCounts(3, 2, 0, 3)
    t.outcome(0, 2, 13.0, "ok")  # a success in another worker: slots 0 and 1's runs are older
    assert t.outlier_counts(0) == OutlierCounts(0, 0, 1, 3)
    t.outcome(0, 0, 14.0, "5xx")
    t.outcome(0, 1, 15.0, "5xx")
    assert t.outlier_counts(0).consecutive_5xx == 2
    assert t.outlier_counts(1) == OutlierCounts()  # another server


def test_a_5xx_ends_the_gateway_run_in_every_worker():
    t = make()
    t.outcome(0, 0, 10.0, "gateway")
    t.outcome(0, 0, 11.0, "gateway")
    t.outcome(0, 1, 12.0, "5xx")
    assert t.outlier_counts(0) == OutlierCounts(3, 0, 0, 3)
    t.outcome(0, 0, 13.0, "gateway")  # slot 0's gateway run of 10 ended at 12: a new one
    assert t.outlier_counts(0).consecutive_gateway == 1
    t.outcome(0, 1, 14.0, "gateway")
    assert t.outlier_counts(0).consecutive_gateway == 2


def test_an_ejection_ends_the_runs_before_it():
    t = make()
    for k in range(3):
        t.outcome(0, 0, 10.0 + k, "5xx")
    assert t.outlier_counts(0, since=20.0).consecutive_5xx == 0
    t.outcome(0, 0, 21.0, "5xx", since=20.0)  # after the ejection: a new run
    assert t.outlier_counts(0, since=20.0).consecutive_5xx == 1


def test_outlier_cell_round_trip_copy_and_clear():
    t = make()
    assert t.read_outlier(1) == OutlierRow()
    o = OutlierRow(until=130.5, since=100.5, ejections=2, reason="x" * 40)
    t.write_outlier(1, o)
    assert t.read_outlier(1) == OutlierRow(130.5, 100.5, 2, "x" * 28)
    dst = make()
    copy_rows(t, dst, {1: 0})
    assert dst.read_outlier(0).until == 130.5 and dst.read_outlier(1) == OutlierRow()
    t.outcome(0, 1, 5.0, "5xx")
    t.clear_slot(1)
    assert t.outlier_counts(0) == OutlierCounts(0, 0, 0, 1)  # totals kept, run gone


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.sampled_from(["ok", "5xx", "gateway"])),
                max_size=60))
def test_runs_never_exceed_the_true_run(events):
    """Whatever the interleaving, the summed run is at most the true
    consecutive count (it errs low), and exact within one worker."""
    t = make(1, 3)
    run5 = rungw = 0
    for k, (slot, kind) in enumerate(events):
        t.outcome(0, slot, 1.0 + k, kind)
        run5 = 0 if kind == "ok" else run5 + 1
        rungw = rungw + 1 if kind == "gateway" else 0
    c = t.outlier_counts(0)
    assert c.consecutive_5xx <= run5 and c.consecutive_gateway <= rungw
    assert c.successes == sum(k == "ok" for _, k in events)
    assert c.errors == sum(k != "ok" for _, k in events)
    if len({s for s, _ in events}) <= 1:
        assert (c.consecutive_5xx, c.consecutive_gateway) == (run5, rungw)
