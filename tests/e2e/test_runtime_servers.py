"""Servers that come and go at run time: forkproxyctl add-server / remove-server,
the admin endpoint's equivalents, the state file across reloads and restarts.

Real master and workers, real backends (``/_stats`` counts what each served).
"""

from __future__ import annotations

import json
import re
import threading

import requests

from support.configs import one_pool
from support.procs import free_port, wait_until
from support.runner import http_get

TOKEN = "s3cret-token"


def servers(fp) -> dict:
    """{addr as status shows it: server document} of pool web, from the table."""
    doc = fp.ctl_status()
    return {s["addr"]: s for p in doc["pools"] if p["name"] == "web" for s in p["servers"]}


def hit(port, n=1):
    for _ in range(n):
        status, _, _ = http_get("127.0.0.1", port, "/x")
        assert status == 200


def using(fp, addr) -> set[int]:
    """Worker pids that logged they use ``addr`` in pool web."""
    return {int(m.group(1)) for m in re.finditer(
        r"\[(\d+)\] \[INFO\] pool web: now using " + re.escape(addr), fp.error_log())}


def test_add_server_reaches_every_worker_without_a_reload(forkproxy_factory, backend_factory):
    a, b = backend_factory("a"), backend_factory("b")
    port = free_port()
    fp = forkproxy_factory(one_pool(port, [a.addr]), server={"workers": 3})
    workers = set(fp.wait_workers(3))
    gen = fp.ctl_status()["generation"]
    out = fp.ctl("add-server", "web", b.addr, "--weight", "2")
    assert out.returncode == 0, out.stderr
    assert f"web/{b.addr}: added" in out.stdout
    wait_until(lambda: using(fp, b.addr) >= workers, timeout=15, what="every worker using b")

    def b_served():
        hit(port)
        return b.stats()["requests"] > 0
    wait_until(b_served, timeout=15, what="a request reaching b")
    s = servers(fp)
    assert s[b.addr]["origin"] == "runtime" and s[b.addr]["config_weight"] is None
    assert s[a.addr]["origin"] == "config"
    assert fp.ctl_status()["generation"] == gen  # no reload
    assert f"{b.addr} (runtime)" in fp.ctl("status").stdout
    again = fp.ctl("add-server", "web", b.addr)
    assert again.returncode == 1 and "already a server of pool" in again.stderr


def test_remove_server_lets_requests_in_flight_finish_then_frees_the_row(
        forkproxy_factory, backend_factory):
    a, b = backend_factory("a"), backend_factory("b")
    port = free_port()
    fp = forkproxy_factory(one_pool(port, [a.addr, b.addr]),
                           server={"workers": 2})
    fp.wait_workers(2)
    b.freeze()  # requests to b stay in flight until it thaws
    results = []

    def slow():
        results.append(http_get("127.0.0.1", port, "/slow", timeout=30)[0])
    threads = [threading.Thread(target=slow) for _ in range(4)]
    for t in threads:
        t.start()
    wait_until(lambda: servers(fp)[b.addr]["inflight"] >= 1, timeout=15,
               what="a request in flight to b")
    out = fp.ctl("remove-server", "web", b.addr)
    assert out.returncode == 0, out.stderr
    assert servers(fp)[b.addr]["member"] == "removing"
    assert "removing" in fp.ctl("status").stdout
    b.thaw()
    for t in threads:
        t.join(30)
    assert results == [200] * 4  # the ones on b finished
    b.reset()
    wait_until(lambda: b.addr not in servers(fp), timeout=20, what="b's row freed")
    hit(port, 10)
    assert b.stats()["requests"] == 0
    state = json.loads((fp.dir / "run" / "servers.json").read_text())
    assert state["pools"]["web"]["removed"] == {
        b.addr: {"weight": 1, "backup": False, "max_conns": 0}}


def test_changes_survive_reloads_and_restarts_until_the_file_says_otherwise(
        forkproxy_factory, backend_factory):
    a, b, c = backend_factory("a"), backend_factory("b"), backend_factory("c")
    port = free_port()
    fp = forkproxy_factory(one_pool(port, [a.addr, b.addr]), server={"workers": 2})
    assert fp.ctl("add-server", "web", c.addr, "--backup").returncode == 0
    assert fp.ctl("remove-server", "web", b.addr).returncode == 0
    fp.reload()
    wait_until(lambda: servers(fp).get(c.addr, {}).get("origin") == "runtime"
               and b.addr not in servers(fp), timeout=20, what="the changes after a reload")
    fp.stop()
    fp.start()
    fp.wait_ready()
    s = servers(fp)
    assert set(s) == {a.addr, c.addr} and s[c.addr]["origin"] == "runtime"
    # The file now lists c, and b with another weight: the file wins for both.
    fp.write_config(one_pool(port, [a.addr, f'{{ addr = "{b.addr}", weight = 2 }}', c.addr]))
    fp.reload()
    wait_until(lambda: set(servers(fp)) == {a.addr, b.addr, c.addr}, timeout=20,
               what="b back, c configured")
    assert all(s["origin"] == "config" for s in servers(fp).values())
    assert json.loads((fp.dir / "run" / "servers.json").read_text())["pools"] == {}
    assert "now in the configuration" in fp.error_log()


def test_admin_endpoint_adds_and_removes_with_the_token(forkproxy_factory, backend_factory):
    a, b = backend_factory("a"), backend_factory("b")
    port, aport = free_port(), free_port()
    fp = forkproxy_factory(one_pool(port, [a.addr]), server={
        "admin": f"127.0.0.1:{aport}", "admin_token": TOKEN})
    url = f"http://127.0.0.1:{aport}/servers/web/{b.addr}/add?weight=3&max_conns=5"
    assert requests.post(url, timeout=30).status_code == 401
    assert requests.post(url, headers={"Authorization": "Bearer nope"}, timeout=30).status_code == 403
    r = requests.post(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert r.status_code == 200, r.text
    s = servers(fp)[b.addr]
    assert s["origin"] == "runtime" and s["config_weight"] is None
    bad = requests.post(f"http://127.0.0.1:{aport}/servers/nopool/{b.addr}/add",
                        headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert bad.status_code == 404 and "no pool" in bad.text
    # forkproxyctl goes through the endpoint when it knows the token
    out = fp.ctl("remove-server", "web", b.addr)
    assert out.returncode == 0, out.stderr
    wait_until(lambda: "removed (asked by 127.0.0.1)" in fp.error_log(), timeout=10,
               what="the endpoint's log line")


def test_a_full_table_is_a_clear_error(forkproxy_factory, backend_factory):
    a, b, c = backend_factory("a"), backend_factory("b"), backend_factory("c")
    fp = forkproxy_factory(one_pool(free_port(), [a.addr]), server={"runtime_servers": 1})
    assert fp.ctl("add-server", "web", b.addr).returncode == 0
    out = fp.ctl("add-server", "web", c.addr)
    assert out.returncode == 1
    assert "the health table is full" in out.stderr and "runtime_servers" in out.stderr


def test_health_checks_start_for_an_added_server(forkproxy_factory, backend_factory):
    a, b = backend_factory("a"), backend_factory("b")
    fp = forkproxy_factory(one_pool(free_port(), [a.addr], pool_extra=(
        'health = { path = "/healthz", interval = "200ms", rise = 1, fall = 1 }')))
    assert fp.ctl("add-server", "web", b.addr).returncode == 0
    wait_until(lambda: servers(fp)[b.addr]["last_check"] is not None, timeout=15,
               what="a check of b")
    b.set_health(503)
    wait_until(lambda: servers(fp)[b.addr]["health"] == "down", timeout=15, what="b down")


def test_a_server_added_at_run_time_has_its_own_metrics(forkproxy_factory, backend_factory):
    a, b = backend_factory("a"), backend_factory("b")
    port, aport = free_port(), free_port()
    fp = forkproxy_factory(one_pool(port, [a.addr]),
                           server={"workers": 2, "admin": f"127.0.0.1:{aport}",
                                   "admin_token": TOKEN})
    assert fp.ctl("add-server", "web", b.addr).returncode == 0

    def b_served():
        hit(port, 4)
        return b.stats()["requests"] >= 4
    wait_until(b_served, timeout=15, what="requests reaching b")
    served = b.stats()["requests"]
    labels = f'pool="web",server="{b.addr}"'

    def samples() -> dict[str, float]:
        text = requests.get(f"http://127.0.0.1:{aport}/metrics", timeout=30).text
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                for line in text.splitlines() if line and not line.startswith("#")}
    # A request is counted when it ends, just after its last byte went out.
    series = f'forkproxy_requests_total{{route="0",{labels},code="2xx",protocol="http1"}}'
    wait_until(lambda: samples().get(series)
               == served, timeout=15, what="every request to b counted")
    text = requests.get(f"http://127.0.0.1:{aport}/metrics", timeout=30).text
    got = samples()
    assert got[f"forkproxy_upstream_duration_seconds_count{{{labels}}}"] == served
    assert got[f"forkproxy_server_up{{{labels}}}"] == 1
    assert 'server="#' not in text  # the rows' series are named by their servers
