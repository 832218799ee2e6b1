"""core.mirror: which requests a route's mirror copies, and with what body."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forkproxy.core.mirror import NONE, READ, SKIP, SPOOLED, body_plan, sampled


@pytest.mark.parametrize("percent, draw, want", [
    (0, 0.0, False), (0, 0.999, False),
    (100, 0.0, True), (100, 0.999999, True),
    (10, 0.0, True), (10, 0.0999, True), (10, 0.1, False), (10, 0.5, False),
    (50, 0.4999, True), (50, 0.5, False),
])
def test_sampled(percent, draw, want):
    assert sampled(percent, draw) is want


@given(st.integers(0, 100), st.floats(0, 1, exclude_max=True))
def test_sampled_is_monotonic_in_percent(percent, draw):
    if sampled(percent, draw):
        assert all(sampled(p, draw) for p in range(percent, 101))
    else:
        assert not any(sampled(p, draw) for p in range(0, percent + 1))


@given(st.integers(0, 100))
def test_sampled_share_is_percent(percent):
    draws = [i / 1000 for i in range(1000)]  # an even grid over [0, 1)
    assert sum(sampled(percent, d) for d in draws) == percent * 10


K = 65536


@pytest.mark.parametrize("kind, length, spooled, upgrade, want", [
    ("none", 0, None, False, NONE),          # GET
    ("length", 0, None, False, NONE),        # Content-Length: 0
    ("length", 10, 10, False, SPOOLED),      # read whole (request_buffering)
    ("chunked", 0, 10, False, SPOOLED),      # a chunked body read whole
    ("length", K, K, False, SPOOLED),        # at the bound
    ("length", K + 1, K + 1, False, SKIP),   # over it
    ("chunked", 0, K + 1, False, SKIP),
    ("length", 10, None, False, READ),       # streamed, small and known
    ("length", K, None, False, READ),
    ("length", K + 1, None, False, SKIP),    # streamed, too large
    ("chunked", 0, None, False, SKIP),       # streamed, length unknown
    ("none", 0, None, True, SKIP),           # WebSocket upgrade
])
def test_body_plan(kind, length, spooled, upgrade, want):
    assert body_plan(kind, length, spooled, K, upgrade) == want


@given(st.sampled_from(["none", "length", "chunked"]), st.integers(0, 10 ** 7),
       st.one_of(st.none(), st.integers(0, 10 ** 7)), st.integers(0, 10 ** 7))
def test_a_copy_never_carries_more_than_max_body(kind, length, spooled, max_body):
    if kind == "none":
        length = 0
    how = body_plan(kind, length, spooled, max_body)
    size = {NONE: 0, SPOOLED: spooled, READ: length, SKIP: 0}[how]
    assert size <= max_body
    if how == READ:
        assert kind == "length" and spooled is None
