"""Token bucket (GCRA) over a shared buffer: arithmetic with an injected clock,
the bound over any window, per-slot columns summing to one bucket, eviction."""

import math

import pytest
from hypothesis import given, settings, strategies as st

from forkproxy.core.ratelimit import (
    LayoutError, RateLimiter, fleet_window, parse_rate, ratelimit_size,
)


def make(rate=10.0, burst=5, n_keys=64, n_slots=4, **kw):
    buf = bytearray(ratelimit_size(n_keys, n_slots))
    return RateLimiter(buf, n_keys, n_slots, rate, burst, create=True, seed=b"s" * 16, **kw)


class Reference:
    """Single-process GCRA with one TAT per key: what the shared one must equal."""

    def __init__(self, rate, burst):
        self.T, self.tau, self.tat = 1 / rate, (burst - 1) / rate, {}

    def check(self, key, now):
        tat = max(self.tat.get(key, now), now)
        if tat - now > self.tau + 1e-9:
            return False, tat - self.tau - now
        self.tat[key] = tat + self.T
        return True, 0.0


def test_burst_then_one_per_interval():
    rl = make(rate=10, burst=5)
    assert [rl.check("a", 0, 100.0)[0] for _ in range(6)] == [True] * 5 + [False]
    ok, retry = rl.check("a", 0, 100.0)
    assert not ok and retry == pytest.approx(0.1)
    assert not rl.check("a", 1, 100.09)[0]         # another worker sees the same bucket
    assert rl.check("a", 2, 100.1)[0]
    assert not rl.check("a", 3, 100.1)[0]
    assert rl.check("b", 0, 100.1)[0]              # keys are independent
    # idle long enough: full again, but never more than the burst
    assert [rl.check("a", 1, 200.0)[0] for _ in range(6)] == [True] * 5 + [False]


def test_retry_after_is_when_the_next_request_passes():
    rl = make(rate=2, burst=1)
    assert rl.check("k", 0, 10.0) == (True, 0.0)
    ok, retry = rl.check("k", 1, 10.1)
    assert not ok and retry == pytest.approx(0.4)
    assert not rl.check("k", 2, 10.1 + retry - 0.01)[0]
    assert rl.check("k", 2, 10.1 + retry)[0]


def test_denials_cost_nothing():
    rl = make(rate=1, burst=1)
    assert rl.check("k", 0, 0.0)[0]
    for i in range(100):
        assert not rl.check("k", i % 4, 0.5)[0]
    assert rl.check("k", 3, 1.0)[0]


# Dyadic rates and times keep the float arithmetic exact, so decisions can be
# compared with the reference one for one.
RATES = st.sampled_from([0.5, 1.0, 2.0, 4.0, 16.0])
EVENTS = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2), st.integers(0, 64)),
                  max_size=120)


@settings(max_examples=200, deadline=None)
@given(RATES, st.integers(1, 6), EVENTS)
def test_spreading_over_slots_equals_one_bucket(rate, burst, events):
    rl, ref = make(rate=rate, burst=burst), Reference(rate, burst)
    now = 0.0
    for slot, key, step in events:
        now += step / 64
        got, want = rl.check(f"k{key}", slot, now), ref.check(f"k{key}", now)
        assert got[0] == want[0]
        assert got[1] == pytest.approx(want[1], abs=1e-9)


@settings(max_examples=200, deadline=None)
@given(st.floats(0.1, 1000), st.integers(1, 20),
       st.lists(st.tuples(st.integers(0, 3), st.floats(0, 0.5)), min_size=1, max_size=150))
def test_any_window_admits_at_most_rate_times_length_plus_burst(rate, burst, arrivals):
    rl = make(rate=rate, burst=burst)
    now, admitted = 1000.0, []
    for slot, gap in arrivals:
        now += gap
        if rl.check("key", slot, now)[0]:
            admitted.append(now)
    for i, start in enumerate(admitted):
        for j in range(i, len(admitted)):
            window = admitted[j] - start
            assert j - i + 1 <= rate * window + burst + 1e-6


@settings(max_examples=100, deadline=None)
@given(st.floats(0.1, 50), st.integers(1, 10), st.floats(0, 3))
def test_a_saturating_client_gets_the_rate(rate, burst, duration):
    # Requests arriving 8 times faster than the rate: admitted = burst + rate * t (+-1).
    rl, n, sent, t = make(rate=rate, burst=burst), 0, 0, 0.0
    step = 1 / (rate * 8)
    while t <= duration:
        n += rl.check("x", sent % 4, 50.0 + t)[0]
        sent += 1
        t += step
    assert min(sent, burst + rate * duration - 2) <= n <= burst + rate * duration + 1


def test_memory_is_bounded_and_recent_keys_survive_eviction():
    rl = make(rate=1, burst=2, n_keys=8, n_slots=2)
    size = len(rl._views[0])
    assert size == ratelimit_size(8, 2)
    now = 0.0
    assert rl.check("flood", 0, now)[0] and rl.check("flood", 0, now)[0]
    for i in range(2000):
        now += 0.0001
        rl.check(f"client-{i}", 0, now)   # pressure: far more keys than entries
        # the flooding key is seen between every other key, so it is never the LRU entry
        assert not rl.check("flood", 0, now)[0]
        assert rl.keys_tracked(0) <= 8
    assert rl.keys_tracked(1) == 0


def test_eviction_of_a_refilled_key_is_harmless():
    rl = make(rate=1, burst=1, n_keys=1, n_slots=1)
    assert rl.check("a", 0, 0.0)[0]
    for i in range(10):                      # one bucket of 4 ways: "a" is evicted
        assert rl.check(f"c{i}", 0, 6.0 + i)[0]
    assert rl.check("a", 0, 20.0)[0]         # a had refilled: forgetting it changed nothing
    assert not rl.check("a", 0, 20.0)[0]


def test_second_view_shares_state_and_checks_the_header():
    rl = make(rate=5, burst=1, n_keys=16, n_slots=2)
    buf = rl._views[0].obj
    other = RateLimiter(buf, 16, 2, 5, 1)
    assert rl.check("k", 0, 1.0)[0]
    assert not other.check("k", 1, 1.0)[0]
    for args in [(16, 2, 6, 1), (16, 2, 5, 2), (16, 3, 5, 1), (32, 2, 5, 1)]:
        with pytest.raises(LayoutError):
            RateLimiter(buf, *args)
    with pytest.raises(LayoutError):
        RateLimiter(bytearray(ratelimit_size(16, 2)), 16, 2, 5, 1)   # never formatted
    with pytest.raises(LayoutError):
        RateLimiter(bytearray(10), 16, 2, 5, 1, create=True)


def test_the_seed_keys_the_bucket_choice():
    buf1, buf2 = bytearray(ratelimit_size(256, 1)), bytearray(ratelimit_size(256, 1))
    r1 = RateLimiter(buf1, 256, 1, 1, 1, create=True, seed=b"1" * 16)
    r2 = RateLimiter(buf2, 256, 1, 1, 1, create=True, seed=b"2" * 16)
    assert [r1._hash(f"k{i}") % 64 for i in range(20)] != [r2._hash(f"k{i}") % 64 for i in range(20)]


@pytest.mark.parametrize("kwargs", [{"rate": 0}, {"rate": -1}, {"rate": math.inf}, {"burst": 0}])
def test_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        make(**kwargs)


def test_slot_out_of_range():
    with pytest.raises(IndexError):
        make(n_slots=2).check("k", 2, 0.0)


@pytest.mark.parametrize("text, rate", [("100r/s", 100.0), ("30r/m", 0.5), ("3600r/h", 1.0),
                                        (" 2.5r/s ", 2.5)])
def test_parse_rate(text, rate):
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["100", "0r/s", "r/s", "10r/d", "-1r/s", "1e3r/s"])
def test_parse_rate_rejects(text):
    with pytest.raises(ValueError):
        parse_rate(text)


def test_forked_workers_share_one_bucket():
    """Four processes hammer one key through a MAP_SHARED mapping: the burst is
    shared, and racing deciders overshoot by at most n_slots - 1."""
    import mmap
    import os
    import time

    n_slots, burst = 4, 50
    mem = mmap.mmap(-1, ratelimit_size(64, n_slots))
    RateLimiter(mem, 64, n_slots, 0.001, burst, create=True)
    pids, reads = [], []
    for slot in range(n_slots):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: no pytest machinery, just count and exit
            try:
                rl = RateLimiter(mem, 64, n_slots, 0.001, burst)
                n = sum(rl.check("k", slot, time.monotonic())[0] for _ in range(3000))
                os.write(w, str(n).encode())
            finally:
                os._exit(0)
        os.close(w)
        pids.append(pid)
        reads.append(r)
    counts = []
    for pid, r in zip(pids, reads):
        os.waitpid(pid, 0)
        counts.append(int(os.read(r, 64) or b"0"))
        os.close(r)
    assert burst <= sum(counts) <= burst + n_slots - 1, counts


# -- fleet windows (scope = "fleet", counted in memcached) -----------------------------

@pytest.mark.parametrize("rate, burst, now, expect", [
    ("10r/s", 1, 5.5, (5, 10, 6.0)),
    ("10r/s", 5, 5.0, (5, 14, 6.0)),        # the window starts at its own second
    ("6r/h", 1, 7199.0, (1, 6, 7200.0)),
    ("30r/m", 1, 60.0, (1, 30, 120.0)),
    ("0.5r/s", 1, 3.2, (3, 1, 4.0)),        # never less than one request
])
def test_fleet_window(rate, burst, now, expect):
    assert fleet_window(rate, burst, now) == expect
