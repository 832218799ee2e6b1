"""Rise/fall, next_interval, passive_out and slow start, as tables."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forkproxy.core.health import RiseFall, ejected, passive_out, slow_start_weight
from forkproxy.core.table import HealthRow


def run(machine, start, probes):
    """Feed 'S'/'F' probes; return the states after each and the final row."""
    h, states = start, []
    for i, p in enumerate(probes, 1):
        h = machine.step(h, p == "S", float(i), "ok" if p == "S" else "timeout", 0.01)
        states.append(h.state)
    return states, h


UP = HealthRow(state="up")
DOWN = HealthRow(state="down")

# (start, rise, fall, probes, 1-based index of the probe that flips the state, or None)
SEQUENCES = [
    (UP, 2, 3, "FFSFFF", 6),      # the success resets the failure run
    (UP, 2, 3, "FFF", 3),
    (UP, 2, 3, "FFSFF", None),
    (UP, 2, 1, "SSF", 3),         # fall=1: the first failure
    (UP, 2, 3, "SSSSSS", None),
    (DOWN, 2, 3, "SS", 2),
    (DOWN, 2, 3, "SFSFS", None),  # never two in a row
    (DOWN, 3, 3, "SSFSSS", 6),
    (DOWN, 1, 3, "FFFS", 4),
    (DOWN, 2, 3, "FFFFF", None),
]


@pytest.mark.parametrize("start, rise, fall, probes, flip", SEQUENCES)
def test_rise_fall_sequences(start, rise, fall, probes, flip):
    states, _ = run(RiseFall(rise=rise, fall=fall, init_state="fully-up"), start, probes)
    other = "down" if start.state == "up" else "up"
    expected = [start.state if flip is None or i < flip else other for i in range(1, len(probes) + 1)]
    assert states == expected


def test_transition_records_when_and_why_and_keeps_it():
    m = RiseFall(rise=2, fall=2)
    h = m.step(UP, False, 10.0, "refused", 0.0)
    assert h.last_change == 0.0 and h.reason == ""
    h = m.step(h, False, 11.0, "status 500", 0.2)
    assert (h.state, h.last_change, h.last_check, h.last_result, h.latency) == ("down", 11.0, 11.0, "status 500", 0.2)
    assert h.reason == "2 failed checks, last: status 500"
    h = m.step(h, False, 12.0, "timeout", 1.0)  # still down: the change time stays
    assert (h.last_change, h.reason, h.failures) == (11.0, "2 failed checks, last: status 500", 3)
    h = m.step(h, True, 13.0, "ok", 0.01)
    assert (h.successes, h.failures, h.state) == (1, 0, "down")


def test_step_is_pure():
    m = RiseFall()
    before = HealthRow(state="up", failures=2)
    after = m.step(before, False, 5.0, "timeout", 1.0)
    assert before == HealthRow(state="up", failures=2)
    assert after.state == "down"


# init-state -> probes -> expected states (rise=2, fall=3)
INIT = [
    ("up", "F", ["down"]),
    ("up", "SF", ["up", "up"]),
    ("fully-up", "FF", ["up", "up"]),
    ("fully-up", "FFF", ["up", "up", "down"]),
    ("down", "S", ["up"]),
    ("fully-down", "SS", ["down", "up"]),
]


@pytest.mark.parametrize("init, probes, expected", INIT)
def test_init_state(init, probes, expected):
    m = RiseFall(rise=2, fall=3, init_state=init)
    assert m.initial(0.0).state == ("up" if "up" in init else "down")
    states, _ = run(m, None, probes)
    assert states == expected


@pytest.mark.parametrize("kwargs", [dict(rise=0), dict(fall=0), dict(init_state="sideways")])
def test_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        RiseFall(**kwargs)


@settings(deadline=None)  # the suite also runs loaded, under xdist
@given(rise=st.integers(1, 5), fall=st.integers(1, 5),
       probes=st.lists(st.booleans(), max_size=40))
def test_state_is_determined_by_the_runs(rise, fall, probes):
    """Property: flips happen exactly when a run of the opposite result reaches the threshold."""
    m = RiseFall(rise=rise, fall=fall, init_state="fully-up")
    h, state, run_len, last = UP, "up", 0, None
    for i, ok in enumerate(probes):
        h = m.step(h, ok, float(i), "", 0.0)
        run_len = run_len + 1 if ok == last else 1
        last = ok
        if state == "up" and not ok and run_len >= fall:
            state = "down"
        elif state == "down" and ok and run_len >= rise:
            state = "up"
        assert h.state == state
        assert (h.successes if ok else h.failures) == run_len
        assert (h.failures if ok else h.successes) == 0


# (state, successes, failures) -> which interval (rise=2, fall=3)
INTERVALS = [
    (None, "inter"),
    (HealthRow(state="up"), "inter"),
    (HealthRow(state="up", successes=7), "inter"),
    (HealthRow(state="up", failures=1), "fast"),
    (HealthRow(state="up", failures=2), "fast"),
    (HealthRow(state="down"), "down"),
    (HealthRow(state="down", failures=9), "down"),
    (HealthRow(state="down", successes=1), "fast"),
]


@pytest.mark.parametrize("h, which", INTERVALS)
def test_next_interval(h, which):
    m = RiseFall(rise=2, fall=3)
    assert m.next_interval(h, 2.0, 0.5, 10.0) == {"inter": 2.0, "fast": 0.5, "down": 10.0}[which]
    assert m.next_interval(h, 2.0) == 2.0  # unset fastinter/downinter fall back to inter


@pytest.mark.parametrize("fails, max_fails, out", [
    (0, 1, False), (1, 1, True), (2, 3, False), (3, 3, True), (4, 3, True), (100, 0, False),
])
def test_passive_out(fails, max_fails, out):
    assert passive_out(fails, max_fails) is out


@pytest.mark.parametrize("weight, since_up, slow_start, expected", [
    (100, 0, 30, 10),      # starts at a tenth
    (100, 15, 30, 55),     # halfway
    (100, 30, 30, 100),
    (100, 300, 30, 100),
    (100, -5, 30, 10),     # clock went backwards: lowest step, not below
    (5, 0, 30, 1),         # never below 1
    (5, 29, 30, 4),
    (1, 0, 30, 1),
    (100, 0, 0, 100),      # slow start disabled
    (0, 10, 30, 0),
])
def test_slow_start_ramp(weight, since_up, slow_start, expected):
    assert slow_start_weight(weight, since_up, slow_start) == expected


@settings(deadline=None)  # the suite also runs loaded, under xdist
@given(weight=st.integers(1, 1000), slow=st.floats(0.1, 1000), a=st.floats(0, 2000), b=st.floats(0, 2000))
def test_slow_start_is_monotonic_and_bounded(weight, slow, a, b):
    lo, hi = sorted((a, b))
    wl, wh = slow_start_weight(weight, lo, slow), slow_start_weight(weight, hi, slow)
    assert 1 <= wl <= wh <= weight


# (failures, eligible ("1" / "0" per server), max_fails, max_ejection_percent) -> out ("1"/"0")
EJECTIONS = [
    ([1, 1, 1], "111", 1, 50, "100"),       # the cascade: one of three at most
    ([1, 3, 2], "111", 1, 50, "010"),       # the most failures goes first
    ([2, 2, 0], "111", 2, 50, "100"),       # a tie: the lower index
    ([1, 1, 1], "111", 1, 100, "111"),      # 100: every server may go (then 503)
    ([1, 1, 1], "111", 1, 0, "000"),        # 0: counted, nobody out
    ([1, 0, 0, 0], "1111", 1, 50, "1000"),
    ([1, 1, 0, 0], "1111", 1, 50, "1100"),  # 4 servers, 50: two
    ([1, 1, 1, 0], "1111", 1, 50, "1100"),
    ([5], "1", 1, 50, "0"),                 # a pool of one: never out (nginx)
    ([5], "1", 1, 100, "1"),                # ...unless the operator allows everything
    ([1, 1, 0], "011", 1, 50, "110"),       # down by active checks: out anyway, not counted
    ([0, 1, 1], "011", 1, 50, "010"),       # two eligible: one of them at most
    ([0, 1, 0], "001", 1, 0, "010"),        # an ineligible one that failed is shown out
    ([3, 3, 3], "111", 0, 100, "000"),      # max_fails 0: passive checks off
    ([0, 0, 0], "111", 1, 100, "000"),
]


@pytest.mark.parametrize("fails, eligible, max_fails, pct, out", EJECTIONS)
def test_ejected(fails, eligible, max_fails, pct, out):
    got = ejected(fails, [c == "1" for c in eligible], max_fails, pct)
    assert "".join("1" if o else "0" for o in got) == out


@given(st.lists(st.tuples(st.integers(0, 5), st.booleans()), min_size=1, max_size=12),
       st.integers(0, 3), st.integers(0, 100))
def test_ejection_keeps_a_server_and_only_takes_failed_ones(servers, max_fails, pct):
    fails = [f for f, _ in servers]
    eligible = [e for _, e in servers]
    out = ejected(fails, eligible, max_fails, pct)
    n = sum(eligible)
    out_eligible = [i for i, o in enumerate(out) if o and eligible[i]]
    assert len(out_eligible) <= n * pct // 100
    for i, o in enumerate(out):
        if o:
            assert passive_out(fails[i], max_fails)  # only a server that failed
        elif not eligible[i] and passive_out(fails[i], max_fails):
            raise AssertionError("a failed server that is out anyway is shown out")
    if pct < 100 and n:
        assert any(eligible[i] and not out[i] for i in range(len(out)))  # never the whole pool
    # the cap takes the worst first: nobody kept in has more failures than one taken out
    kept = [fails[i] for i in range(len(out)) if eligible[i] and not out[i]
            and passive_out(fails[i], max_fails)]
    if kept and out_eligible:
        assert max(kept) <= min(fails[i] for i in out_eligible)
