"""The admin endpoint end to end: metrics summed across workers, commands, tokens.

A real master with 4 workers, real backends (``/_stats`` counts what they
served), the admin endpoint on its own loopback port.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import requests

from support.configs import one_pool
from support.procs import free_port, wait_until

TOKEN = "s3cret-token"


def config(port, backends) -> str:
    return one_pool(port, [b.addr for b in backends])


@pytest.fixture
def admin(forkproxy_factory, backend_factory):
    """(fp, port, admin_port, backends): 4 workers, 2 backends, the admin endpoint."""
    bs = [backend_factory(f"b{i + 1}") for i in range(2)]
    port, aport = free_port(), free_port()
    fp = forkproxy_factory(config(port, bs), server={
        "workers": 4, "admin": f"127.0.0.1:{aport}", "admin_token": TOKEN})
    fp.wait_workers(4)
    return fp, port, aport, bs


def aget(aport, path, token=None, method="GET"):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.request(method, f"http://127.0.0.1:{aport}{path}", headers=headers, timeout=30)


def totals(aport) -> dict:
    """{(server, code): n} of forkproxy_requests_total, from GET /metrics."""
    r = aget(aport, "/metrics")
    assert r.status_code == 200, r.text
    out = {}
    for line in r.text.splitlines():
        if line.startswith("forkproxy_requests_total{"):
            labels, value = line[len("forkproxy_requests_total{"):].split("} ")
            d = dict(part.split("=", 1) for part in labels.split(","))
            key = (d["server"].strip('"'), d["code"].strip('"'))
            out[key] = out.get(key, 0) + int(value)
    return out


def test_metrics_add_up_across_workers_and_a_sigkill(admin):
    fp, port, aport, bs = admin
    url = f"http://127.0.0.1:{port}/x"

    def burst(n):
        for _ in range(n):
            assert requests.get(url, headers={"Connection": "close"}, timeout=30).status_code == 200

    def settled():
        served = {b.addr: b.stats()["requests"] for b in bs}
        return totals(aport) == {(addr, "2xx"): n for addr, n in served.items() if n}

    burst(40)
    # A worker counts a request just after its last byte went out: let the
    # counts settle, so the kill tests what the metrics keep, not that race.
    wait_until(settled, timeout=10)
    victim = fp.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: victim not in fp.worker_pids() and len(fp.worker_pids()) == 4, timeout=30)
    burst(40)
    # The backends count every request they served (the harness's readiness
    # probe included): the metrics, summed over the workers, must say the same.
    served = {b.addr: b.stats()["requests"] for b in bs}
    assert sum(served.values()) >= 80
    expected = {(addr, "2xx"): n for addr, n in served.items() if n}
    wait_until(lambda: totals(aport) == expected, timeout=10)
    text = aget(aport, "/metrics").text
    print("\n" + "\n".join(line for line in text.splitlines() if not line.startswith("#")))
    assert "# TYPE forkproxy_requests_total counter" in text
    assert "forkproxy_connections_active" in text


def test_status_is_json_with_pools_and_listeners(admin):
    fp, port, aport, bs = admin
    doc = aget(aport, "/status").json()
    assert [s["addr"] for s in doc["pools"][0]["servers"]] == [b.addr for b in bs]
    assert doc["listeners"][0]["name"] == "web"
    assert doc["master_pid"] == fp.pid
    assert doc["generation"] >= 1


def test_commands_need_the_token(admin):
    fp, port, aport, bs = admin
    path = f"/servers/web/{bs[0].addr}/maint"
    assert aget(aport, path, method="POST").status_code == 401
    assert aget(aport, path, token="wrong", method="POST").status_code == 403
    assert aget(aport, "/reload", token="s3cret-tokem", method="POST").status_code == 403
    doc = aget(aport, "/status").json()
    assert doc["pools"][0]["servers"][0]["admin"] == "ready"  # nothing changed


def test_maint_through_the_api_applies_in_every_worker(admin):
    fp, port, aport, bs = admin
    r = aget(aport, f"/servers/web/{bs[0].addr}/maint", token=TOKEN, method="POST")
    assert r.status_code == 200, r.text
    assert r.json() == {"server": f"web/{bs[0].addr}", "field": "admin", "before": "ready",
                        "after": "maint", "changed": True}
    wait_until(lambda: "asked by 127.0.0.1" in fp.error_log(), timeout=10)
    for b in bs:
        b.reset()

    def only_b2():  # every worker's snapshot has the change: 40 requests, none to b1
        for b in bs:
            b.reset()
        for _ in range(40):
            requests.get(f"http://127.0.0.1:{port}/", headers={"Connection": "close"}, timeout=30)
        return bs[0].stats()["requests"] == 0 and bs[1].stats()["requests"] == 40
    wait_until(only_b2, timeout=20)
    r = aget(aport, f"/servers/web/{bs[0].addr}/weight/5", token=TOKEN, method="POST")
    assert r.json()["after"] == 5
    assert aget(aport, "/servers/web/nope:1/drain", token=TOKEN, method="POST").status_code == 404
    assert aget(aport, f"/servers/web/{bs[0].addr}/weight/0", token=TOKEN,
                method="POST").status_code == 400


def test_reload_through_the_api_counts(admin):
    fp, port, aport, bs = admin
    gen = aget(aport, "/status").json()["generation"]
    assert aget(aport, "/reload", token=TOKEN, method="POST").status_code == 200
    def settled():
        # Observed (rarely): one admin connection reset while the generations
        # switch; the lead knows (see the report). A retry is not a wrong answer.
        try:
            return ("forkproxy_reloads_total 1" in aget(aport, "/metrics").text
                    and aget(aport, "/status").json()["generation"] > gen)
        except requests.ConnectionError:
            return False
    wait_until(settled, timeout=30)


def test_admin_port_never_proxies_and_ctl_metrics(admin):
    fp, port, aport, bs = admin
    assert aget(aport, "/x").status_code == 404  # a backend would answer 200
    requests.get(f"http://127.0.0.1:{port}/", timeout=30)
    out = subprocess.run([sys.executable, "-m", "forkproxy.ctl", "-c", str(fp.config_path),
                          "metrics"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "forkproxy_requests_total{" in out.stdout
    out = subprocess.run([sys.executable, "-m", "forkproxy.ctl", "-c", str(fp.config_path),
                          "--json", "metrics"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert any(s["name"] == "forkproxy_requests_total" for s in doc["samples"])


def test_ctl_changes_go_through_the_endpoint_and_are_logged(admin):
    fp, port, aport, bs = admin
    label = f"web/{bs[1].addr}"
    out = fp.ctl("drain", "web", bs[1].addr)
    assert (out.returncode, out.stdout) == (0, f"{label}: ready -> drain\n"), out.stderr
    assert fp.ctl("drain", "web", bs[1].addr).stdout == f"{label}: already drain\n"
    out = fp.ctl("--json", "weight", "web", bs[1].addr, "7")
    assert json.loads(out.stdout) == {"server": label, "field": "weight", "before": None,
                                      "after": 7, "changed": True}
    # The endpoint logged both, with the peer: the table was not written behind its back.
    log = fp.error_log()
    assert f"admin: {label} admin: ready -> drain (asked by 127.0.0.1)" in log
    assert f"admin: {label} weight: None -> 7 (asked by 127.0.0.1)" in log
    doc = aget(aport, "/status").json()
    row = next(s for s in doc["pools"][0]["servers"] if s["addr"] == bs[1].addr)
    assert row["admin"] == "drain"
    out = fp.ctl("maint", "web", "nope:1")
    assert out.returncode == 1 and "nope:1" in out.stderr
