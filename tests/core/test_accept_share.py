"""core.accept_share: who defers a new connection, and the shared slots."""

from __future__ import annotations

import mmap

import pytest
from hypothesis import given, strategies as st

from forkproxy.core import accept_share
from forkproxy.core.accept_share import LIVE_NS, SLACK, AcceptShare, defers


@pytest.mark.parametrize("mine, others, expect", [
    (0, [], False),            # alone: always takes it
    (50, [], False),
    (0, [0], False),           # even: takes it
    (1, [0], False),           # one more: still within SLACK
    (2, [0], True),            # two more: leaves it to the other
    (3, [1], True),
    (17, [15, 30], False),     # the least-loaded other counts; within a quarter more
    (18, [15, 30], False),     # 18 is not over 15 by more than a quarter (18.75)...
    (19, [15, 30], True),      # ...19 is
    (3, [9, 9, 9], False),
])
def test_defers(mine, others, expect):
    assert defers(mine, others) is expect


@given(st.integers(0, 10_000), st.lists(st.integers(0, 10_000), max_size=6))
def test_the_least_loaded_worker_never_defers(mine, others):
    # Some live worker always takes a connection: the one holding the least.
    if not others or mine <= min(others):
        assert not defers(mine, others)
    assert defers(mine, others) == (bool(others) and mine - min(others) > SLACK
                                    and mine > 1.25 * min(others))


def test_slots_round_trip_liveness_and_withdrawal():
    buf = mmap.mmap(-1, accept_share.size(4))
    share = AcceptShare(buf)
    assert share.n_slots == 4
    now = 10 * LIVE_NS
    assert share.others(0, now) == []                  # nobody published: nobody live
    share.publish(0, 7, now)
    share.publish(1, 3, now - LIVE_NS + 1)             # published just within LIVE_NS
    share.publish(2, 9, now - LIVE_NS)                 # too long ago: gone or hung
    assert share.others(3, now) == [7, 3]
    assert share.others(0, now) == [3]                 # never its own slot
    share.withdraw(1)                                  # it drains: accepts no more
    assert share.others(3, now) == [7]
    share.publish(3, 5, 0)                             # a clock at 0 still counts as published
    assert 5 in share.others(0, 1)
    # Another process sees the same slots: the buffer is all there is.
    assert AcceptShare(buf).others(0, now) == share.others(0, now)
