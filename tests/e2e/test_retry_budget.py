"""Retry budgets (pool ``retry.budget``), end to end: a failing pool under
concurrent load gets at most its budget of retries.

One real master with one worker (the budget is counted per worker), four
real backends that answer every request 503 after a delay ``D`` (a slow,
failing pool), and two pools over them that retry on 503: one with
``budget = "20%"`` (``budget_min = 3``), one without (``max_fails = 0``:
a retried 503 is a passive failure, which would take servers out).  ``N``
clients send one request each, all at once.

Without a budget each request tries the four servers: 3 retries each.
With it, at most max(3, 20% of N) retries are in flight at any time, each
lasting at least ``D`` (the backends' delay), and a request's attempts all
happen within 4 ``D`` of its start, the first ending at ``D``: so at most
max(3, N / 5) x 3 retries in all, whatever the scheduling.  No timing is
asserted; the counts come from the metrics and the backends.
"""

from __future__ import annotations

import threading

import requests

from support.procs import free_port, wait_until

TOKEN = "budget-token"
N = 20
DELAY_MS = 500


def config(port: int, backends) -> str:
    servers = ", ".join(f'{{ addr = "{b.addr}" }}' for b in backends)
    return f"""
[[listener]]
name = "web"
bind = "127.0.0.1:{port}"

[[route]]
host = "budget.test"
pool = "budget"

[[route]]
pool = "free"

[pool.budget]
servers = [{servers}]
retry = {{ on = ["503"], budget = "20%", budget_min = 3 }}
max_fails = 0

[pool.free]
servers = [{servers}]
retry = {{ on = ["503"] }}
max_fails = 0
"""


def metric(fp, name: str, pool: str) -> float:
    text = requests.get(f"http://{fp.server['admin']}/metrics", timeout=30,
                        headers={"Authorization": f"Bearer {TOKEN}"}).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(f"forkproxy_{name}{{") and f'pool="{pool}"' in line)


def burst(port: int, host: str) -> list[int]:
    """N requests at once, one client each; their statuses."""
    start = threading.Barrier(N)
    statuses: list[int] = []

    def one():
        start.wait()
        r = requests.get(f"http://127.0.0.1:{port}/status/503", timeout=60,
                         headers={"Host": host, "Connection": "close"})
        statuses.append(r.status_code)

    threads = [threading.Thread(target=one) for _ in range(N)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statuses


def test_a_failing_pool_under_load_gets_at_most_its_budget_of_retries(
        forkproxy_factory, backend_factory):
    backends = [backend_factory(f"b{i}") for i in range(4)]
    for b in backends:
        requests.get(f"http://{b.addr}/_setfault?ms={DELAY_MS}", timeout=30)
    port = free_port()
    fp = forkproxy_factory(config(port, backends), server={
        "workers": 1, "admin": f"127.0.0.1:{free_port()}", "admin_token": TOKEN})
    fp.wait_workers()

    def hits() -> int:
        return sum(b.stats()["by_path"].get("/status/503", 0) for b in backends)

    # Without a budget: every request tries every server.  The readiness
    # check's request went to the free pool; it is counted when it ends, after
    # its answer (and after its access-log line): wait for it.
    wait_until(lambda: (n := fp.access_log().count(" pool=free ")) >= 1
               and metric(fp, "requests_total", "free") == n, what="the readiness check counted")
    base = metric(fp, "requests_total", "free")
    assert burst(port, "free.test") == [503] * N
    wait_until(lambda: metric(fp, "requests_total", "free") == base + N,
               what="the free pool's counts")
    assert metric(fp, "retries_total", "free") == N * 3
    assert hits() == N * 4

    # With one: at most max(3, 20% of N) retries in flight, for 3 delays at most.
    assert burst(port, "budget.test") == [503] * N
    wait_until(lambda: metric(fp, "requests_total", "budget") == N,
               what="the budget pool's counts")
    retries = metric(fp, "retries_total", "budget")
    denied = metric(fp, "retries_denied_total", "budget")
    print(f"\n{N} requests at once on 4 failing servers: {N * 3} retries without a "
          f"budget, {retries:g} with 20% (budget_min 3), {denied:g} requests refused a retry")
    assert 1 <= retries <= max(3, N // 5) * 3
    assert hits() == N * 4 + N + retries
    assert denied >= N - max(3, N // 5)  # the first wave: all but the budget's share
    assert "the retry budget" not in fp.error_log()  # relayed 503s, not forkproxy's own
