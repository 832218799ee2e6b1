"""Balancing algorithms and sticky tokens: pure logic, seeded randomness, no sockets."""

import os
import random
import subprocess
import sys
from collections import Counter

import pytest
from hypothesis import given, settings, strategies as st

from forkproxy.core import balance
from forkproxy.core.balance import (
    ALGORITHMS,
    Balancer,
    ServerSpec,
    StickyTable,
    cookie_value,
    query_value,
    sticky_lookup,
    sticky_token,
)

# chi-square critical values at p = 0.001, by degrees of freedom
CHI2_999 = {1: 10.828, 2: 13.816, 3: 16.266, 4: 18.467, 5: 20.515, 6: 22.458,
            7: 24.322, 8: 26.124, 9: 27.877, 10: 29.588}

# (algorithm, hash_method) pairs: every algorithm, both hash methods
ALGOS = [("round_robin", "ketama"), ("least_conn", "ketama"), ("ip_hash", "ketama"),
         ("hash", "ketama"), ("hash", "maglev"), ("random2", "ketama")]


class View:
    """A ServerView over plain lists."""

    def __init__(self, servers, usable=None, inflight=None, weights=None):
        n = len(servers)
        self.up = list(usable) if usable is not None else [True] * n
        self.load = list(inflight) if inflight is not None else [0] * n
        self.ew = list(weights) if weights is not None else [s.weight for s in servers]

    def usable(self, i):
        return self.up[i]

    def inflight(self, i):
        return self.load[i]

    def effective_weight(self, i):
        return self.ew[i]


def servers(weights, backups=()):
    return [ServerSpec(f"10.0.{i // 200}.{i % 200 + 1}:8080", weight=w, backup=i in backups)
            for i, w in enumerate(weights)]


def key_for(algorithm, rng):
    if algorithm == "ip_hash":
        return f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}".encode()
    return f"/object/{rng.getrandbits(64):x}".encode()


def chi_square(counts, weights, n):
    total = sum(weights)
    return sum((counts.get(i, 0) - n * w / total) ** 2 / (n * w / total) for i, w in enumerate(weights))


# ---------------------------------------------------------------- distribution


@pytest.mark.parametrize("algorithm, method", ALGOS)
@pytest.mark.parametrize("weights", [(1, 1, 1), (5, 1, 1), (3, 2, 1, 4)])
def test_distribution_matches_weights(algorithm, method, weights):
    svs = servers(weights)
    b = Balancer(svs, algorithm=algorithm, hash_method=method)
    view = View(svs)
    rng = random.Random(20240601)
    n = 20_000
    counts = Counter(b.pick(view, key=key_for(algorithm, rng), rng=rng) for _ in range(n))
    assert set(counts) == set(range(len(weights)))
    expected = weights
    if method == "ketama" and algorithm == "hash":
        # 160 points per weight unit leave each server's arc of the ring a few
        # percent off its weight (libketama does the same): check the arcs are
        # close to the weights, and the picks follow the arcs exactly.
        expected = ketama_arc_shares(svs)
        for share, w in zip(expected, weights):
            assert abs(share / sum(expected) - w / sum(weights)) <= 0.2 * w / sum(weights)
    assert chi_square(counts, expected, n) < CHI2_999[len(weights) - 1], counts


def ketama_arc_shares(svs):
    points, owner = balance._ketama_ring(tuple((s.key, s.weight) for s in svs))
    shares = [0] * len(svs)
    prev = points[-1] - 2**32  # the arc before the first point wraps around
    for p, o in zip(points, owner):
        shares[o] += p - prev
        prev = p
    return shares


@pytest.mark.parametrize("algorithm", ["round_robin", "least_conn"])
def test_deterministic_algorithms_are_exact_over_a_cycle(algorithm):
    weights = (3, 2, 1, 4)
    b = Balancer(servers(weights), algorithm=algorithm)
    view = View(servers(weights))
    counts = Counter(b.pick(view) for _ in range(sum(weights) * 7))
    assert counts == {i: w * 7 for i, w in enumerate(weights)}


def test_random2_follows_effective_weight_not_configured_weight():
    svs = servers((4, 4, 4))
    view = View(svs, weights=[1, 4, 9])  # slow start ramps and a runtime raise
    b = Balancer(svs, algorithm="random2")
    rng = random.Random(7)
    n = 20_000
    # with no load the first of the two draws wins, so picks follow weights
    counts = Counter(b.pick(view, rng=rng) for _ in range(n))
    assert chi_square(counts, [1, 4, 9], n) < CHI2_999[2], counts


def test_round_robin_follows_effective_weight():
    svs = servers((5, 5))
    view = View(svs, weights=[1, 3])
    b = Balancer(svs)
    assert Counter(b.pick(view) for _ in range(40)) == {0: 10, 1: 30}


# ---------------------------------------------------------------- exact sequences


def test_swrr_sequence_5_1_1():
    b = Balancer(servers((5, 1, 1)), algorithm="round_robin")
    view = View(servers((5, 1, 1)))
    seq = "".join("abc"[b.pick(view)] for _ in range(14))
    assert seq == "aabacaa" * 2


def test_swrr_skips_unusable_without_disturbing_the_rest():
    svs = servers((1, 1, 1))
    b = Balancer(svs)
    view = View(svs, usable=[True, False, True])
    assert [b.pick(view) for _ in range(6)] == [0, 2, 0, 2, 0, 2]


# ---------------------------------------------------------------- least_conn


@pytest.mark.parametrize(
    "weights, inflight, expected",
    [
        ((1, 1, 1), (5, 2, 7), {1}),
        ((1, 1, 1), (0, 0, 3), {0, 1}),         # tie: round robin among tied
        ((2, 1), (4, 3), {0}),                  # 4/2 < 3/1
        ((1, 3), (1, 2), {1}),                  # 2/3 < 1/1
        ((2, 1), (2, 1), {0, 1}),               # 2/2 == 1/1: tie
        ((1, 1, 1, 1), (9, 9, 9, 0), {3}),
    ],
)
def test_least_conn_prefers_fewest_inflight_per_weight(weights, inflight, expected):
    svs = servers(weights)
    b = Balancer(svs, algorithm="least_conn")
    view = View(svs, inflight=inflight)
    picks = {b.pick(view) for _ in range(20)}
    assert picks == expected


def test_least_conn_ties_follow_weights():
    svs = servers((5, 1, 1))
    b = Balancer(svs, algorithm="least_conn")
    view = View(svs, inflight=[10, 2, 2])  # 10/5 == 2/1 == 2/1: all tied
    assert "".join("abc"[b.pick(view)] for _ in range(7)) == "aabacaa"


def test_random2_takes_the_less_loaded_of_two():
    svs = servers((1, 1))
    b = Balancer(svs, algorithm="random2")
    view = View(svs, inflight=[3, 1])
    rng = random.Random(1)
    assert {b.pick(view, rng=rng) for _ in range(200)} == {1}


def test_random2_never_picks_the_most_loaded_of_many():
    svs = servers((1,) * 10)
    b = Balancer(svs, algorithm="random2")
    view = View(svs, inflight=list(range(10)))
    rng = random.Random(3)
    counts = Counter(b.pick(view, rng=rng) for _ in range(5000))
    assert 9 not in counts  # it loses every comparison
    assert counts[0] > counts[8]


def test_random2_requires_rng():
    b = Balancer(servers((1, 1)), algorithm="random2")
    with pytest.raises(ValueError):
        b.pick(View(servers((1, 1))))


# ---------------------------------------------------------------- safety properties

pools = st.lists(
    st.tuples(
        st.integers(1, 5),        # configured weight
        st.booleans(),            # backup
        st.booleans(),            # usable
        st.integers(0, 6),        # effective weight (0: no new traffic)
        st.integers(0, 20),       # inflight
        st.booleans(),            # excluded (already tried)
    ),
    min_size=1,
    max_size=12,
)


@pytest.mark.parametrize("algorithm, method", ALGOS)
@settings(max_examples=150, deadline=None)
@given(pool=pools, seed=st.integers(0, 2**32), calls=st.integers(1, 5))
def test_only_candidates_of_the_first_tier_with_any(algorithm, method, pool, seed, calls):
    svs = [ServerSpec(f"h{i}:80", weight=w, backup=bk) for i, (w, bk, *_ ) in enumerate(pool)]
    view = View(svs, usable=[p[2] for p in pool], weights=[p[3] for p in pool],
                inflight=[p[4] for p in pool])
    exclude = frozenset(i for i, p in enumerate(pool) if p[5])
    cands = [i for i, p in enumerate(pool) if p[2] and p[3] > 0 and i not in exclude]
    primaries = [i for i in cands if not pool[i][1]]
    allowed = set(primaries or cands)
    b = Balancer(svs, algorithm=algorithm, hash_method=method)
    rng = random.Random(seed)
    for _ in range(calls):
        got = b.pick(view, key=key_for(algorithm, rng), rng=rng, exclude=exclude)
        if not allowed:
            assert got is None
        else:
            assert got in allowed


@pytest.mark.parametrize("algorithm, method", ALGOS)
def test_backups_only_when_no_primary_is_usable(algorithm, method):
    svs = servers((1, 1, 1, 1), backups={2, 3})
    b = Balancer(svs, algorithm=algorithm, hash_method=method)
    rng = random.Random(5)
    up = View(svs)
    assert {b.pick(up, key=key_for(algorithm, rng), rng=rng) for _ in range(300)} == {0, 1}
    down = View(svs, usable=[False, False, True, True])
    assert {b.pick(down, key=key_for(algorithm, rng), rng=rng) for _ in range(300)} == {2, 3}
    # every primary already tried: the retry goes to a backup
    assert b.pick(up, key=b"10.0.0.1", rng=rng, exclude={0, 1}) in {2, 3}
    nothing = View(svs, usable=[False] * 4)
    assert b.pick(nothing, key=b"10.0.0.1", rng=rng) is None
    assert b.pick(up, key=b"10.0.0.1", rng=rng, exclude={0, 1, 2, 3}) is None


@pytest.mark.parametrize("algorithm, method", ALGOS)
def test_retries_walk_every_server_once(algorithm, method):
    svs = servers((3, 1, 2, 1, 1))
    b = Balancer(svs, algorithm=algorithm, hash_method=method)
    view = View(svs)
    rng = random.Random(11)
    key = key_for(algorithm, rng)
    tried = set()
    for _ in range(len(svs)):
        i = b.pick(view, key=key, rng=rng, exclude=tried)
        assert i is not None and i not in tried
        tried.add(i)
    assert b.pick(view, key=key, rng=rng, exclude=tried) is None


# ---------------------------------------------------------------- hash


def mapping(b, keys, view):
    return [b.pick(view, key=k) for k in keys]


KEYS = [f"/k/{i}".encode() for i in range(20_000)]


@pytest.mark.parametrize("method", ["ketama", "maglev"])
@pytest.mark.parametrize("n", [3, 10, 50])
def test_hash_remap_fraction_on_add_and_remove(method, n):
    before = servers([1] * n)
    after = servers([1] * (n + 1))  # one server added at the end
    b1 = Balancer(before, algorithm="hash", hash_method=method)
    b2 = Balancer(after, algorithm="hash", hash_method=method)
    m1 = [before[i].key for i in mapping(b1, KEYS, View(before))]
    m2 = [after[i].key for i in mapping(b2, KEYS, View(after))]
    moved = [(a, c) for a, c in zip(m1, m2) if a != c]
    fraction = len(moved) / len(KEYS)
    # adding is the inverse of removing, so this bounds both directions
    assert 0.5 / n <= fraction <= 2 / n, fraction
    new_key = after[-1].key
    to_new = sum(1 for _, c in moved if c == new_key)
    if method == "ketama":
        assert to_new == len(moved)  # a ring only gives keys to the newcomer
    else:
        assert to_new >= 0.75 * len(moved)  # maglev: small extra disruption

    # removing a server from the middle
    fewer = before[:1] + before[2:]
    b3 = Balancer(fewer, algorithm="hash", hash_method=method)
    m3 = [fewer[i].key for i in mapping(b3, KEYS, View(fewer))]
    moved = sum(1 for a, c in zip(m1, m3) if a != c)
    assert 0.5 / n <= moved / len(KEYS) <= 2 / n


@pytest.mark.parametrize("method", ["ketama", "maglev"])
def test_down_server_keys_move_and_others_stay(method):
    svs = servers([1] * 10)
    b = Balancer(svs, algorithm="hash", hash_method=method)
    base = mapping(b, KEYS, View(svs))
    up = [True] * 10
    up[4] = False
    degraded = mapping(b, KEYS, View(svs, usable=up))
    for k, (x, y) in enumerate(zip(base, degraded)):
        if x == 4:
            assert y != 4
        else:
            assert y == x, k
    # the orphaned keys spread over several servers, not onto one neighbour
    spread = Counter(y for x, y in zip(base, degraded) if x == 4)
    assert len(spread) >= 5
    # and they come back when the server does
    assert mapping(b, KEYS, View(svs)) == base


@pytest.mark.parametrize("method", ["ketama", "maglev"])
def test_hash_is_the_same_in_two_instances(method):
    svs = servers((2, 1, 3, 1))
    b1 = Balancer(svs, algorithm="hash", hash_method=method)
    balance._ketama_ring.cache_clear()
    balance._maglev_table.cache_clear()
    b2 = Balancer(list(svs), algorithm="hash", hash_method=method)
    view = View(svs)
    assert mapping(b1, KEYS[:3000], view) == mapping(b2, KEYS[:3000], view)


SCRIPT = """
import sys
from forkproxy.core.balance import Balancer, ServerSpec
class V:
    def usable(self, i): return True
    def inflight(self, i): return 0
    def effective_weight(self, i): return 1
alg, method = sys.argv[1], sys.argv[2]
b = Balancer([ServerSpec(f"s{i}.example:80") for i in range(7)], algorithm=alg, hash_method=method)
key = (lambda i: f"10.{i % 200}.{i // 200}.9".encode()) if alg == "ip_hash" else (lambda i: f"/k/{i}".encode())
print(",".join(str(b.pick(V(), key=key(i))) for i in range(2000)))
"""


@pytest.mark.parametrize("algorithm, method", [("hash", "ketama"), ("hash", "maglev"), ("ip_hash", "ketama")])
def test_mapping_agrees_across_processes(algorithm, method):
    out = set()
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        proc = subprocess.run([sys.executable, "-c", SCRIPT, algorithm, method], env=env,
                              capture_output=True, text=True, timeout=60,
                              cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
        assert proc.returncode == 0, proc.stderr
        out.add(proc.stdout)
    assert len(out) == 1
    assert len(set(out.pop().strip().split(","))) == 7


def test_hash_without_key_falls_back_to_round_robin():
    svs = servers((1, 1, 1))
    b = Balancer(svs, algorithm="hash")
    assert [b.pick(View(svs)) for _ in range(6)] == [0, 1, 2, 0, 1, 2]


def test_ketama_ring_has_160_points_per_weight_unit():
    svs = servers((1, 3))
    points, owner = balance._ketama_ring(tuple((s.key, s.weight) for s in svs))
    assert len(points) == 160 * 4
    assert Counter(owner) == {0: 160, 1: 480}
    assert list(points) == sorted(points)


@pytest.mark.parametrize("n, size", [(1, 65537), (655, 65537), (656, 131071), (2000, 262147)])
def test_maglev_table_size(n, size):
    assert balance._maglev_size(n) == size


def test_maglev_slots_follow_weights():
    svs = servers((1, 2, 3))
    table = balance._maglev_table(tuple((s.key, s.weight) for s in svs))
    counts = Counter(table)
    assert -1 not in counts
    for pos, w in enumerate((1, 2, 3)):
        assert abs(counts[pos] - 65537 * w / 6) <= 3


# ---------------------------------------------------------------- ip_hash


def test_ip_hash_groups_by_slash_24():
    svs = servers((1,) * 8)
    b = Balancer(svs, algorithm="ip_hash")
    view = View(svs)
    rng = random.Random(2)
    for _ in range(200):
        net = f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}"
        picks = {b.pick(view, key=f"{net}.{h}".encode()) for h in (0, 1, 77, 255)}
        assert len(picks) == 1
    # different /24s do spread out
    nets = {b.pick(view, key=f"10.1.{i}.5".encode()) for i in range(256)}
    assert nets == set(range(8))


def test_ip_hash_groups_ipv6_by_slash_64_and_maps_ipv4():
    svs = servers((1,) * 8)
    b = Balancer(svs, algorithm="ip_hash")
    view = View(svs)
    for i in range(100):
        prefix = f"2001:db8:{i:x}:{i * 7:x}"
        picks = {b.pick(view, key=f"{prefix}::{h:x}".encode()) for h in (1, 2, 0xFFFF)}
        picks.add(b.pick(view, key=f"{prefix}:ffff:1:2:3".encode()))
        assert len(picks) == 1
    for i in range(50):
        assert b.pick(view, key=f"::ffff:10.9.{i}.1".encode()) == b.pick(view, key=f"10.9.{i}.200".encode())


def nginx_ip_hash(octets, weights):
    """ngx_http_upstream_get_ip_hash_peer, first try, all peers up."""
    h = 89
    for octet in octets:
        h = (h * 113 + octet) % 6271
    w = h % sum(weights)
    p = 0
    while w >= weights[p]:
        w -= weights[p]
        p += 1
    return p


def test_ip_hash_matches_nginx_formula():
    weights = (1, 2, 1, 3)
    svs = servers(weights)
    b = Balancer(svs, algorithm="ip_hash")
    rng = random.Random(9)
    for _ in range(500):
        octets = [rng.randrange(256) for _ in range(4)]
        key = ".".join(map(str, octets)).encode()
        assert b.pick(View(svs), key=key) == nginx_ip_hash(octets[:3], weights)


def test_ip_hash_down_server_clients_move_others_stay():
    svs = servers((1,) * 6)
    b = Balancer(svs, algorithm="ip_hash")
    keys = [f"10.{i // 256}.{i % 256}.1".encode() for i in range(3000)]
    base = mapping(b, keys, View(svs))
    view = View(svs, usable=[True, True, False, True, True, True])
    again = mapping(b, keys, view)
    for x, y in zip(base, again):
        assert y != 2
        if x != 2:
            assert x == y


@pytest.mark.parametrize("key", [None, b"", b"unix:/tmp/sock", b"999.1.1.1", b"1.2.3", b"fe80::zz"])
def test_ip_hash_unparsable_key_uses_round_robin(key):
    svs = servers((1, 1))
    b = Balancer(svs, algorithm="ip_hash")
    assert [b.pick(View(svs), key=key) for _ in range(4)] == [0, 1, 0, 1]


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "svs, kwargs",
    [
        ([], {}),
        (servers((1,)), {"algorithm": "leastconn"}),
        (servers((1,)), {"algorithm": "hash", "hash_method": "crc32"}),
        ([ServerSpec("a:1"), ServerSpec("a:1")], {}),
        ([ServerSpec("a:1", weight=0)], {}),
    ],
)
def test_invalid_balancers(svs, kwargs):
    with pytest.raises(ValueError):
        Balancer(svs, **kwargs)


def test_algorithms_constant():
    assert ALGORITHMS == ("round_robin", "least_conn", "ip_hash", "hash", "random2")


# ---------------------------------------------------------------- sticky sessions

SECRET = b"s3cret-key-from-config"


def test_sticky_round_trip_and_opacity():
    svs = servers((1,) * 20)
    table = StickyTable(svs, SECRET)
    tokens = {table.token(i) for i in range(20)}
    assert len(tokens) == 20
    for i, s in enumerate(svs):
        t = sticky_token(s.key, SECRET)
        assert t == table.token(i)
        assert table.index(t) == i
        assert sticky_lookup(t, svs, SECRET) == i
        assert len(t) == 16 and t.isalnum() and t == t.lower()
        host, port = s.key.rsplit(":", 1)
        for part in [host, port, *host.split(".")]:
            if len(part) > 1:
                assert part not in t
    assert table.index("a" * 16) is None
    assert sticky_lookup("a" * 16, svs, SECRET) is None


def test_sticky_token_depends_on_secret_and_is_stable():
    assert sticky_token("10.0.0.1:80", SECRET) == sticky_token("10.0.0.1:80", SECRET)
    assert sticky_token("10.0.0.1:80", SECRET) != sticky_token("10.0.0.1:80", b"other")
    assert sticky_token("10.0.0.1:80", SECRET) != sticky_token("10.0.0.2:80", SECRET)
    # a reload that reorders the pool keeps every server's token
    svs = servers((1,) * 5)
    rev = list(reversed(svs))
    t1, t2 = StickyTable(svs, SECRET), StickyTable(rev, SECRET)
    for i, s in enumerate(svs):
        assert t2.index(t1.token(i)) == rev.index(s)


@given(key=st.text(min_size=1, max_size=60), secret=st.binary(min_size=1, max_size=64))
def test_sticky_token_is_cookie_safe(key, secret):
    t = sticky_token(key, secret)
    assert len(t) == 16
    assert set(t) <= set("abcdefghijklmnopqrstuvwxyz234567")


# --------------------------------------------------------------------------
# Request keys (hash_key = "cookie:NAME" / "query:NAME", sticky cookies)


@pytest.mark.parametrize("headers, name, want", [
    (["a=1; srv=tok; b=2"], "srv", "tok"),
    (["a=1", "srv=tok"], "srv", "tok"),
    (['srv="tok"'], "srv", "tok"),
    (["srv=first; srv=second"], "srv", "first"),
    (["xsrv=1; srv"], "srv", None),
    ([], "srv", None),
    (["srv="], "srv", ""),
])
def test_cookie_value(headers, name, want):
    assert cookie_value(headers, name) == want


@pytest.mark.parametrize("target, name, want", [
    ("/p?user=42&x=1", "user", "42"),
    ("/p?x=1&user=a%20b", "user", "a%20b"),
    ("/p?user", "user", ""),
    ("/p?users=1", "user", None),
    ("/p", "user", None),
])
def test_query_value(target, name, want):
    assert query_value(target, name) == want
