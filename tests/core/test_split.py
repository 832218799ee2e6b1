"""core.split: weighted splits across pools, random and sticky (rendezvous hashing)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forkproxy.core import http1
from forkproxy.core.split import Split


def req(*headers: tuple[str, str]) -> http1.Request:
    head = "".join(f"{n}: {v}\r\n" for n, v in (("Host", "a"),) + headers)
    return http1.parse_request_head(f"GET / HTTP/1.1\r\n{head}\r\n".encode(), http1.Limits())


@pytest.mark.parametrize("pools, weights, by, error", [
    ((), (), None, "at least one pool"),
    (("a", "b"), (1,), None, "one weight per pool"),
    (("a", "a"), (1, 1), None, "twice"),
    (("a", "b"), (0, 0), None, "sum to 0"),
    (("a",), (1001,), None, "0..1000"),
    (("a",), (-1,), None, "0..1000"),
    (("a",), (1,), "query:x", "split_by"),
    (("a",), (1,), "cookie:", "split_by"),
])
def test_invalid_splits_are_refused(pools, weights, by, error):
    with pytest.raises(ValueError, match=error):
        Split(pools, weights, by)


@pytest.mark.parametrize("weights, r, want", [
    ((95, 5), 0.0, 0),
    ((95, 5), 0.9499, 0),
    ((95, 5), 0.95, 1),
    ((95, 5), 0.999999, 1),
    ((0, 5), 0.0, 1),  # weight 0 never drawn
    ((5, 0), 0.999999, 0),
    ((1, 0, 1), 0.5, 2),
    ((1, 1, 1, 1), 0.25, 1),
])
def test_draw_by_weight(weights, r, want):
    split = Split(tuple("abcd"[:len(weights)]), weights)
    assert split.draw(r) == want


@pytest.mark.parametrize("by, headers, key", [
    (None, [("Cookie", "s=1")], None),
    ("ip", [("Cookie", "s=1")], b"src 192.0.2.1"),
    ("cookie:s", [("Cookie", "t=0; s=abc")], b"key abc"),
    ("cookie:s", [("Cookie", "t=0")], b"src 192.0.2.1"),  # no cookie: the client's address
    ("header:x-user", [("X-User", "alice")], b"key alice"),
    ("header:x-user", [], b"src 192.0.2.1"),
])
def test_key_of_a_request(by, headers, key):
    assert Split(("a", "b"), (1, 1), by).key(req(*headers), "192.0.2.1") == key


def test_choose_is_sticky_with_a_key_and_random_without():
    sticky = Split(("a", "b"), (50, 50), "header:x-user")
    r = req(("X-User", "alice"))
    assert {sticky.choose(r, "192.0.2.1", rand=lambda: 0.99) for _ in range(20)} \
        == {sticky.pick(b"key alice")}
    random_split = Split(("a", "b"), (50, 50))
    assert random_split.choose(r, "", rand=lambda: 0.1) == 0
    assert random_split.choose(r, "", rand=lambda: 0.9) == 1


def test_a_pool_of_weight_zero_gets_no_key():
    split = Split(("a", "b", "c"), (3, 0, 1), "ip")
    assert all(split.pick(b"k%d" % i) != 1 for i in range(2000))


KEYS = [b"client-%d" % i for i in range(4000)]


def bound(n: int, p: float) -> float:
    """Six standard deviations of a binomial count: never hit by chance."""
    return 6 * math.sqrt(n * p * (1 - p)) + 1


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 1000), min_size=1, max_size=5).filter(lambda w: sum(w) > 0))
def test_each_pool_gets_its_share_of_the_keys(weights):
    split = Split(tuple(f"p{i}" for i in range(len(weights))), tuple(weights), "ip")
    counts = [0] * len(weights)
    for k in KEYS:
        counts[split.pick(k)] += 1
    total = sum(weights)
    for w, got in zip(weights, counts):
        p = w / total
        assert abs(got - len(KEYS) * p) <= bound(len(KEYS), p), (weights, counts)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 1000), min_size=1, max_size=5).filter(lambda w: sum(w) > 0),
       st.binary(max_size=40))
def test_the_same_key_always_takes_the_same_pool(weights, key):
    names = tuple(f"p{i}" for i in range(len(weights)))
    a, b = Split(names, tuple(weights), "ip"), Split(names, tuple(weights), "ip")
    assert a.pick(key) == a.pick(key) == b.pick(key)  # no state, no per-process seed
    assert weights[a.pick(key)] > 0


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 1000), min_size=2, max_size=5), st.data())
def test_changing_one_weight_moves_keys_only_to_or_from_that_pool(weights, data):
    j = data.draw(st.integers(0, len(weights) - 1))
    new = list(weights)
    new[j] = data.draw(st.integers(0, 1000))
    names = tuple(f"p{i}" for i in range(len(weights)))
    before, after = Split(names, tuple(weights)), Split(names, tuple(new))
    moved = 0
    for k in KEYS:
        x, y = before.pick(k), after.pick(k)
        if x != y:
            moved += 1
            assert (y == j) if new[j] > weights[j] else (x == j), (weights, new, k)
    # About as many as the pool's share changed: the fewest possible.
    change = abs(new[j] / sum(new) - weights[j] / sum(weights))
    assert moved <= len(KEYS) * change + bound(len(KEYS), max(change, 0.01))


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(1, 1000), min_size=1, max_size=4), st.integers(1, 1000))
def test_adding_a_pool_moves_keys_only_to_it(weights, w_new):
    names = tuple(f"p{i}" for i in range(len(weights)))
    before = Split(names, tuple(weights))
    after = Split(names + ("canary",), tuple(weights) + (w_new,))
    for k in KEYS[:1000]:
        x, y = before.pick(k), after.pick(k)
        assert x == y or after.pools[y] == "canary"


def test_known_assignments_stay_the_same_across_versions():
    """Clients keep their pool across upgrades: the hash is fixed (BLAKE2b
    of the key, splitmix64 with the pool's seed), pinned here on a few keys."""
    split = Split(("v1", "v2"), (50, 50), "ip")
    got = [split.pools[split.pick(b"key user-%d" % i)] for i in range(8)]
    assert got == PINNED


PINNED = ["v2", "v1", "v2", "v1", "v1", "v2", "v1", "v2"]
