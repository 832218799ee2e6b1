"""Outlier detection (pool ``outlier``), end to end: a real master with two
workers, three real backends, one or two of them answering 500
(``/_setstatus``).

Readiness checks only: the status (``forkproxyctl --json status``) says who
is ejected; a batch of requests all answered 200 says every worker applies
it; the error log says when the max share kept a server in.  No timing is
asserted.
"""

from __future__ import annotations

import re

import requests

from support.configs import one_pool
from support.procs import free_port, wait_until

TOKEN = "outlier-token"


def config(port: int, backends, outlier: str, extra: str = "") -> str:
    return one_pool(port, [b.addr for b in backends],
                    f"max_fails = 0\noutlier = {{ {outlier} }}\n{extra}")


def start(forkproxy_factory, backends, outlier: str, extra: str = ""):
    port = free_port()
    fp = forkproxy_factory(config(port, backends, outlier, extra), server={
        "workers": 2, "admin": f"127.0.0.1:{free_port()}", "admin_token": TOKEN})
    fp.wait_workers()
    return fp, port


def statuses(session, port: int, n: int) -> list[int]:
    return [session.get(f"http://127.0.0.1:{port}/", timeout=30).status_code for _ in range(n)]


def servers(fp) -> dict[str, dict]:
    return {s["addr"]: s for p in fp.ctl_status()["pools"] for s in p["servers"]}


def metric(fp, name: str, labels: str) -> float:
    text = requests.get(f"http://{fp.server['admin']}/metrics", timeout=30,
                        headers={"Authorization": f"Bearer {TOKEN}"}).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(f"forkproxy_{name}{{") and labels in line)


def test_consecutive_5xx_ejects_a_server_and_it_takes_no_requests(
        forkproxy_factory, backend_factory):
    backends = [backend_factory(f"b{i}") for i in range(3)]
    bad = backends[2]
    requests.get(f"http://{bad.addr}/_setstatus?code=500", timeout=30)
    fp, port = start(forkproxy_factory, backends,
                     'consecutive_5xx = 3, success_rate = false, base_ejection_time = "1h"')
    s = requests.Session()
    # Requests until the checker ejected it, and every worker stopped using it.
    wait_until(lambda: 500 not in statuses(s, port, 9) and servers(fp)[bad.addr]["ejected"],
               timeout=60, what="the failing server ejected")
    doc = servers(fp)[bad.addr]
    assert doc["ejection_reason"] == "3 consecutive 5xx" and doc["ejections"] == 1
    assert not any(servers(fp)[b.addr]["ejected"] for b in backends[:2])
    before = bad.stats()["requests"]
    assert statuses(s, port, 30) == [200] * 30
    assert bad.stats()["requests"] == before  # no request reached it
    text = fp.ctl("status").stdout
    assert "EJECTED" in text and "ejected (outlier: 3 consecutive 5xx) for " in text
    assert metric(fp, "outlier_ejections_total",
                  f'server="{bad.addr}",reason="consecutive_5xx"') == 1
    assert metric(fp, "server_ejected", f'server="{bad.addr}"') == 1
    assert metric(fp, "server_ejected", f'server="{backends[0].addr}"') == 0
    assert f"server web/{bad.addr} ejected for 3600s (outlier: 3 consecutive 5xx)" \
        in fp.error_log()
    # A reload keeps the ejection: the next generation's workers send it nothing either.
    fp.reload_and_wait()
    assert servers(fp)[bad.addr]["ejected"]
    wait_until(lambda: statuses(s, port, 9) == [200] * 9, timeout=60,
               what="the new generation serving")
    assert bad.stats()["requests"] == before


def test_an_ejection_ends_and_the_server_takes_requests_again(
        forkproxy_factory, backend_factory):
    backends = [backend_factory(f"b{i}") for i in range(3)]
    bad = backends[2]
    requests.get(f"http://{bad.addr}/_setstatus?code=500", timeout=30)
    fp, port = start(forkproxy_factory, backends,
                     'consecutive_5xx = 2, success_rate = false, base_ejection_time = "1s"')
    s = requests.Session()
    wait_until(lambda: statuses(s, port, 6) and servers(fp)[bad.addr]["ejected"],
               timeout=60, what="the failing server ejected")
    requests.get(f"http://{bad.addr}/_setstatus", timeout=30)  # it recovers
    wait_until(lambda: not servers(fp)[bad.addr]["ejected"], timeout=60,
               what="the ejection's end")
    before = bad.stats()["requests"]
    wait_until(lambda: statuses(s, port, 6) and bad.stats()["requests"] > before,
               timeout=60, what="requests to the server again")
    fp.wait_error_log(f"server web/{bad.addr} is back in rotation")


def test_max_ejection_percent_keeps_all_but_one_failing_server_in(
        forkproxy_factory, backend_factory):
    backends = [backend_factory(f"b{i}") for i in range(3)]
    for b in backends[1:]:
        requests.get(f"http://{b.addr}/_setstatus?code=500", timeout=30)
    fp, port = start(forkproxy_factory, backends,
                     'consecutive_5xx = 3, success_rate = false, base_ejection_time = "1h"',
                     "max_ejection_percent = 34")
    s = requests.Session()
    wait_until(lambda: statuses(s, port, 9) and "max_ejection_percent (34%)" in fp.error_log(),
               timeout=60, what="the second failing server kept in by the share")
    state = servers(fp)
    ejected = [b.addr for b in backends if state[b.addr]["ejected"]]
    assert len(ejected) == 1 and ejected[0] != backends[0].addr
    kept = next(b for b in backends[1:] if b.addr not in ejected)
    before = kept.stats()["requests"]
    assert 500 in statuses(s, port, 12)  # the one kept in still gets its share
    assert kept.stats()["requests"] > before
    assert sum(servers(fp)[b.addr]["ejected"] for b in backends) == 1


def test_success_rate_ejects_the_server_with_errors_among_clean_ones(
        forkproxy_factory, backend_factory):
    backends = [backend_factory(f"b{i}") for i in range(3)]
    bad = backends[0]
    requests.get(f"http://{bad.addr}/_setstatus?code=500&every=2", timeout=30)  # 50 % errors
    fp, port = start(forkproxy_factory, backends,
                     'consecutive_5xx = 0, interval = "500ms", base_ejection_time = "1h", '
                     "success_rate_minimum_hosts = 3, success_rate_request_volume = 5, "
                     "success_rate_stdev_factor = 1.0")
    s = requests.Session()
    wait_until(lambda: statuses(s, port, 30) and servers(fp)[bad.addr]["ejected"],
               timeout=90, what="the server with 50% errors ejected")
    doc = servers(fp)[bad.addr]
    assert re.fullmatch(r"success rate \d+% < \d+%", doc["ejection_reason"])
    assert not any(servers(fp)[b.addr]["ejected"] for b in backends[1:])
    assert metric(fp, "outlier_ejections_total",
                  f'server="{bad.addr}",reason="success_rate"') == 1
