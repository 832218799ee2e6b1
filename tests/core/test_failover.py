"""core.failover as tables: whom a failed attempt is charged to, where the request goes next."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forkproxy.core.failover import (OTHER, SAME, STOP, after_failure, charged, condition,
                                     within_budget)

KINDS = ("refused", "reset", "timeout", "closed", "invalid", "status")


@pytest.mark.parametrize("kind, code, expected", [
    ("timeout", None, "timeout"),
    ("refused", None, "error"),
    ("reset", None, "error"),
    ("closed", None, "error"),
    ("invalid", None, "error"),
    ("status", 503, 503),
])
def test_condition(kind, code, expected):
    assert condition(kind, code) == expected


# (kind, reused, already counted by fail_status) -> charged to its server
CHARGES = [
    ("timeout", False, False, True),
    ("timeout", True, False, True),     # a pooled connection that hangs: the server's fault
    ("refused", False, False, True),
    ("reset", False, False, True),
    ("reset", True, False, False),      # a pooled connection the server had reset
    ("closed", False, False, True),
    ("closed", True, False, False),     # a pooled connection the server had closed
    ("invalid", True, False, True),
    ("status", False, False, True),     # a 5xx retry.on lists: a failure
    ("status", False, True, False),     # in fail_status: the relay counted it once already
]


@pytest.mark.parametrize("kind, reused, counted, expected", CHARGES)
def test_charged(kind, reused, counted, expected):
    assert charged(kind, reused, counted) is expected


# (kind, sent, reused, replayable, listed) -> next step
STEPS = [
    # nothing reached the server: always elsewhere (a POST too)
    ("refused", False, False, False, False, OTHER),
    ("timeout", False, False, False, False, OTHER),   # connect timeout
    ("reset", False, True, False, False, SAME),       # a stale pooled connection
    # a GET that timed out before the response head: elsewhere (nginx's timeout)
    ("timeout", True, False, True, True, OTHER),
    ("timeout", True, True, True, True, OTHER),
    ("timeout", True, False, True, False, STOP),      # retry.on without "timeout"
    ("timeout", True, False, False, True, STOP),      # a POST is never sent twice
    ("reset", True, False, True, True, OTHER),
    ("reset", True, True, True, False, SAME),         # stale: once more whatever on says
    ("closed", True, True, False, True, STOP),        # a sent POST on a stale connection
    ("closed", True, False, True, True, OTHER),
    ("invalid", True, True, True, True, OTHER),       # invalid is never "stale"
    ("status", True, False, True, True, OTHER),
    ("status", True, False, True, False, STOP),
]


@pytest.mark.parametrize("kind, sent, reused, replayable, listed, expected", STEPS)
def test_after_failure(kind, sent, reused, replayable, listed, expected):
    assert after_failure(kind, sent=sent, reused=reused, replayable=replayable,
                         listed=listed) == expected


@given(kind=st.sampled_from(KINDS), sent=st.booleans(), reused=st.booleans(),
       replayable=st.booleans(), listed=st.booleans())
def test_a_sent_request_that_is_not_replayable_only_ever_stops(kind, sent, reused, replayable,
                                                                listed):
    step = after_failure(kind, sent=sent, reused=reused, replayable=replayable, listed=listed)
    if sent and not replayable:
        assert step == STOP  # a POST whose bytes left is never sent twice
    if not sent:
        assert step in (SAME, OTHER)  # nothing was sent: never the client's problem
    if step == SAME:
        assert reused and not charged(kind, reused)  # the same server only for a stale one


# Retry budgets (pool retry.budget, Envoy's retry_budget):
# (retries in flight but this one, requests in flight, percent, minimum) -> may retry
BUDGETS = [
    (0, 1, 20.0, 3, True),     # few requests: the minimum lets them retry
    (2, 1, 20.0, 3, True),
    (3, 1, 20.0, 3, False),    # the minimum reached, 20% of 1 is less
    (3, 20, 20.0, 3, True),    # 20% of 20 = 4
    (4, 20, 20.0, 3, False),
    (19, 100, 20.0, 3, True),
    (20, 100, 20.0, 3, False),
    (0, 10, 0.0, 0, False),    # 0% and no minimum: never
    (0, 1, 100.0, 0, True),    # 100%: every request may be on a retry
    (1, 1, 100.0, 0, False),
    (0, 0, 20.0, 0, False),
]


@pytest.mark.parametrize("retrying, active, percent, minimum, allowed", BUDGETS)
def test_within_budget(retrying, active, percent, minimum, allowed):
    assert within_budget(retrying, active, percent, minimum) is allowed


@given(st.integers(0, 1000), st.integers(0, 1000), st.integers(0, 100), st.integers(0, 50),
       st.integers(0, 10))
def test_a_budget_is_monotonic(retrying, active, percent, minimum, more):
    """More requests in flight never refuse what fewer allowed; more retries
    in flight never allow what fewer refused; the minimum always holds."""
    ok = within_budget(retrying, active, percent, minimum)
    if ok:
        assert within_budget(retrying, active + more, percent, minimum)
        assert within_budget(max(0, retrying - more), active, percent, minimum)
    else:
        assert not within_budget(retrying + more, active, percent, minimum)
    assert within_budget(retrying, active, percent, minimum) or retrying >= minimum
    # Never more retries in flight than the share allows (or the minimum).
    assert not ok or retrying < max(minimum, active * percent / 100)
