"""Weighted splits across pools (route ``pools``, ``split_by``) and per-route
upstream time limits, end to end.

A real master with 2 workers in front of real backends that say who served
(``X-Backend``).  The split's ratio is checked against a binomial bound
4 standard deviations wide (a failure by bad luck: about 1 run in 15000);
no timing is asserted.
"""

from __future__ import annotations

import json

import pytest
import requests

from forkproxy.core.split import Split
from support.procs import free_port, wait_until

TOKEN = "canary-token"
N = 400


def config(port: int, v1, v2, v3) -> str:
    return f"""
[[listener]]
name = "web"
bind = "127.0.0.1:{port}"

[[route]]
host = "random.test"
pools = [{{ pool = "v1", weight = 90 }}, {{ pool = "v2", weight = 10 }}]

[[route]]
host = "zero.test"
pools = [{{ pool = "v1", weight = 5 }}, {{ pool = "v2", weight = 0 }}, {{ pool = "v3", weight = 5 }}]

[[route]]
host = "sticky.test"
pools = [{{ pool = "v1", weight = 50 }}, {{ pool = "v2", weight = 50 }}]
split_by = "header:X-User"

[[route]]
host = "hurry.test"
pool = "v1"
read_timeout = "1s"

[[route]]
pool = "v1"

[pool.v1]
servers = [{{ addr = "{v1.addr}" }}]
read_timeout = "30s"

[pool.v2]
servers = [{{ addr = "{v2.addr}" }}]

[pool.v3]
servers = [{{ addr = "{v3.addr}" }}]
"""


@pytest.fixture
def canary(forkproxy_factory, backend_factory):
    bs = [backend_factory(f"v{i}") for i in (1, 2, 3)]
    port = free_port()
    fp = forkproxy_factory(config(port, *bs), server={
        "admin": f"127.0.0.1:{free_port()}", "admin_token": TOKEN,
        "access_log_format": "json"})
    fp.wait_workers()
    return fp, port


def get(session, port: int, host: str, path: str = "/", headers=None) -> requests.Response:
    return session.get(f"http://127.0.0.1:{port}{path}", timeout=30,
                       headers={"Host": host, **(headers or {})})


def served(port: int, host: str, n: int, headers=None) -> dict[str, int]:
    counts: dict[str, int] = {}
    with requests.Session() as s:
        for _ in range(n):
            r = get(s, port, host, headers=headers)
            assert r.status_code == 200, r.text
            counts[r.headers["X-Backend"]] = counts.get(r.headers["X-Backend"], 0) + 1
    return counts


def access_pools(fp, host: str) -> dict[str, int]:
    """{pool: requests} of the access log's lines for ``host``."""
    out: dict[str, int] = {}
    for line in fp.access_log().splitlines():
        doc = json.loads(line)
        if doc.get("host") == host:
            out[doc["pool"]] = out.get(doc["pool"], 0) + 1
    return out


def test_a_90_10_split_lands_within_bounds_and_the_logs_and_metrics_say_so(canary):
    fp, port = canary
    counts = served(port, "random.test", N)
    assert set(counts) <= {"v1", "v2"}
    share = counts.get("v2", 0) / N
    # 10% +/- 6 points: 4 standard deviations of a binomial(400, 0.1) (1.5 points).
    assert abs(share - 0.10) <= 0.06, counts
    print(f"\n90/10 split over {N} requests: {counts}")
    # A request is logged and counted when it ends, just after its last byte
    # went out: the client may have read the last answer before its line and
    # count are there.  Wait for all N, then compare.
    wait_until(lambda: sum(access_pools(fp, "random.test").values()) == N,
               what=f"{N} access-log lines")
    assert access_pools(fp, "random.test") == {f"v{i}": n for i, n in
                                                ((1, counts.get("v1", 0)), (2, counts.get("v2", 0)))
                                                if n}

    def by_pool() -> dict[str, float]:
        text = requests.get(f"http://{fp.server['admin']}/metrics", timeout=30,
                            headers={"Authorization": f"Bearer {TOKEN}"}).text
        return {pool: sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                          if line.startswith("forkproxy_requests_total{") and 'route="0"' in line
                          and f'pool="{pool}"' in line) for pool in ("v1", "v2")}
    wait_until(lambda: sum(by_pool().values()) == N, what=f"{N} requests counted")
    assert by_pool() == {pool: counts.get(pool, 0) for pool in ("v1", "v2")}


def test_a_pool_of_weight_zero_gets_nothing(canary):
    fp, port = canary
    counts = served(port, "zero.test", 100)
    assert "v2" not in counts
    assert counts.get("v1", 0) > 0 and counts.get("v3", 0) > 0, counts


def test_split_by_header_keeps_each_client_on_one_pool(canary):
    fp, port = canary
    seen: dict[str, set[str]] = {}
    with requests.Session() as s:
        for rnd in range(4):
            for u in range(30):
                r = get(s, port, "sticky.test", headers={"X-User": f"user-{u}"})
                seen.setdefault(f"user-{u}", set()).add(r.headers["X-Backend"])
    assert all(len(pools) == 1 for pools in seen.values()), seen
    # Both pools get clients (30 clients at 50/50: all on one side is 2**-29).
    assert {p for pools in seen.values() for p in pools} == {"v1", "v2"}


def test_raising_a_canary_weight_on_reload_moves_clients_only_to_it(canary):
    """The assignment is the same in every worker and generation (the
    worker's answers match ``core.split`` run here), and a reload that
    raises v2's weight moves clients from v1 to v2, never back."""
    fp, port = canary
    users = [f"user-{u}" for u in range(60)]

    def pools_now() -> dict[str, str]:
        out = {}
        for u in users:  # a new connection each: no old worker keeps serving it
            r = requests.get(f"http://127.0.0.1:{port}/", timeout=30, headers={
                "Host": "sticky.test", "X-User": u, "Connection": "close"})
            out[u] = r.headers["X-Backend"]
        return out

    def predicted(weights) -> dict[str, str]:
        split = Split(("v1", "v2"), weights, "header:x-user")
        return {u: split.pools[split.pick(f"key {u}".encode())] for u in users}

    before = pools_now()
    assert before == predicted((50, 50))
    fp.write_config(fp.body.replace('{ pool = "v1", weight = 50 }, { pool = "v2", weight = 50 }',
                                    '{ pool = "v1", weight = 20 }, { pool = "v2", weight = 80 }'))
    fp.reload()
    after_weights = predicted((20, 80))
    wait_until(lambda: pools_now() == after_weights, timeout=30,
               what="the new generation's split")
    moved = [u for u in users if before[u] != after_weights[u]]
    assert moved and all(before[u] == "v1" and after_weights[u] == "v2" for u in moved)
    print(f"\n50/50 -> 20/80 on reload: {len(moved)} of {len(users)} clients moved, all v1 -> v2")


def test_explain_says_the_split_and_the_pool_a_request_takes(canary):
    fp, port = canary
    for u in range(6):
        out = fp.ctl("--json", "explain", "GET", f"http://sticky.test:{port}/",
                     "-H", f"X-User: user-{u}")
        assert out.returncode == 0, out.stderr
        doc = json.loads(out.stdout)
        split = doc["split"]
        assert split["how"] == "hash" and split["key"] == f"key user-{u}"
        assert [p["pool"] for p in split["pools"]] == ["v1", "v2"]
        assert doc["route"]["pool"] == split["pool"] == doc["pool"]["name"]
        with requests.Session() as s:
            r = get(s, port, "sticky.test", headers={"X-User": f"user-{u}"})
        assert r.headers["X-Backend"] == split["pool"]
    doc = json.loads(fp.ctl("--json", "explain", "GET", f"http://random.test:{port}/").stdout)
    assert doc["split"]["how"] == "random" and doc["split"]["key"] is None
    assert doc["split"]["pools"][1] == {"pool": "v2", "weight": 10, "share": 0.1}
    text = fp.ctl("explain", "GET", f"http://sticky.test:{port}/", "-H", "X-User: user-1").stdout
    line = next(ln for ln in text.splitlines() if ln.startswith("split"))
    assert "v1 50, v2 50 (by header:x-user, key 'key user-1' -> v" in line, text


def test_a_route_read_timeout_overrides_the_pool(canary):
    fp, port = canary
    with requests.Session() as s:  # one client connection: one worker, its pooled connections
        # A fast answer on the hurried route leaves its upstream connection pooled ...
        assert get(s, port, "hurry.test", "/").status_code == 200
        # ... and another route to the same pool reuses it with the pool's 30 s.
        r = get(s, port, "other.test", "/slow?ms=1000")
        assert r.status_code == 200 and r.headers["X-Backend"] == "v1"
        # The pool waits 30 s; the hurried route only 1 s (a fast answer on a
        # loaded machine may take 300 ms): a 504 for it ...
        assert get(s, port, "hurry.test", "/slow?ms=3000").status_code == 504
        # ... while the other route still waits for the answer.
        assert get(s, port, "other.test", "/slow?ms=1000").status_code == 200
    fp.wait_error_log("1s reading the response head")  # written as the 504 ended
