"""The shared health table end to end: active checks, election, passive checks, admin states.

A real master with 4 workers in front of three real backends; the state is
read back with ``forkproxyctl status --json`` (which reads the shared table)
and by counting what the backends receive.  Waits are readiness checks
(polling a condition with a deadline); the times they took are printed for
the closing note, never asserted.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
import requests

from support.configs import one_pool
from support.procs import free_port, wait_until
from support.runner import ForkProxy

INTERVAL = 1.0  # the figures: interval 1s, fall 3, rise 2


def status(fp: ForkProxy) -> dict:
    return fp.ctl_status()


def server_state(fp: ForkProxy, pool: str, addr: str) -> dict:
    for p in status(fp)["pools"]:
        if p["name"] == pool:
            for s in p["servers"]:
                if s["addr"] == addr:
                    return s
    raise KeyError((pool, addr))


def checked_config(port, backends, health=True, **pool):
    extra = "\n".join(f"{k} = {json.dumps(v)}" for k, v in pool.items())
    hc = ('health = { path = "/healthz", interval = "1s", timeout = "500ms", rise = 2, fall = 3 }'
          if health else "")
    return one_pool(port, [b.addr for b in backends], f"{hc}\n{extra}")


def spread(port: int, n: int) -> None:
    """n requests on fresh connections, so every worker takes some; all must succeed."""
    for _ in range(n):
        r = requests.get(f"http://127.0.0.1:{port}/", headers={"Connection": "close"}, timeout=10)
        assert r.status_code == 200, r.text


def served(b) -> int:
    """Requests for / the backend answered (its /healthz probes are not traffic)."""
    return b.stats()["by_path"].get("/", 0)


def counts(backends) -> list[int]:
    return [served(b) for b in backends]


@pytest.fixture
def trio(forkproxy_factory, backend_factory):
    bs = [backend_factory(f"b{i}") for i in (1, 2, 3)]
    port = free_port()
    fp = forkproxy_factory(checked_config(port, bs), server={"workers": 4})
    fp.wait_workers(4)
    wait_until(lambda: all(s["last_check"] for s in status(fp)["pools"][0]["servers"]),
               what="a first check of every server")
    return fp, port, bs


def test_a_stopped_server_goes_down_gets_no_traffic_and_comes_back(trio):
    fp, port, (b1, b2, b3) = trio
    assert {s["health"] for s in status(fp)["pools"][0]["servers"]} == {"up"}

    b2.stop()
    t0 = time.monotonic()
    wait_until(lambda: server_state(fp, "web", b2.addr)["health"] == "down", timeout=30,
               what="b2 marked down")
    detect = time.monotonic() - t0
    st = server_state(fp, "web", b2.addr)
    assert "refused" in st["reason"] and st["last_result"] == "refused"

    # Once every worker's snapshot (refreshed every 200 ms) has it, no request
    # is sent to it any more: none fails, none is even attempted.  (A run of
    # requests without an attempt says so only of the workers that took one.)
    fp.wait_seen("web", b2.addr)
    attempts = fp.error_log().count(f"server={b2.addr}")
    b1.reset()
    b3.reset()
    spread(port, 60)
    assert sum(counts([b1, b3])) == 60
    assert fp.error_log().count(f"server={b2.addr}") == attempts

    b2.start()
    t1 = time.monotonic()
    wait_until(lambda: server_state(fp, "web", b2.addr)["health"] == "up", timeout=30,
               what="b2 back up")
    recover = time.monotonic() - t1
    wait_until(lambda: (spread(port, 10), served(b2) > 0)[1], timeout=30,
               what="traffic reaching b2 again")
    print(f"\nhealth figures (interval 1s, fall 3, rise 2): detect {detect:.2f}s, "
          f"recover {recover:.2f}s")


def test_sigkill_of_the_checking_worker_hands_checks_to_another(trio):
    fp, port, bs = trio
    checker = status(fp)["checker_pid"]
    assert checker in fp.worker_pids()
    os.kill(checker, signal.SIGKILL)
    killed_at = time.time()
    wait_until(lambda: status(fp)["checker_pid"] not in (None, checker), timeout=30,
               what="another worker elected")
    wait_until(lambda: all(s["last_check"] > killed_at + 0.1
                           for s in status(fp)["pools"][0]["servers"]),
               timeout=30, what="checks running again from the new checker")
    spread(port, 10)


@pytest.mark.parametrize("state", ["drain", "maint"])
def test_drain_and_maint_take_effect_in_every_worker(trio, state):
    fp, port, (b1, b2, b3) = trio
    out = fp.ctl(state, "web", b1.addr)
    assert out.returncode == 0, out.stderr
    assert fp.wait_seen("web", b1.addr)["admin"] == state  # every worker honours it
    b1.reset()
    spread(port, 80)             # fresh connections: all four workers serve some
    assert served(b1) == 0

    assert fp.ctl("ready", "web", b1.addr).returncode == 0
    wait_until(lambda: (spread(port, 10), served(b1) > 0)[1], timeout=20,
               what="b1 back in rotation")


def test_admin_state_survives_a_reload_for_servers_that_stay(trio):
    fp, port, (b1, b2, b3) = trio
    assert fp.ctl("maint", "web", b3.addr).returncode == 0
    gen = status(fp)["generation"]
    fp.signal(signal.SIGHUP)
    wait_until(lambda: status(fp)["generation"] > gen, timeout=30, what="the reload")
    assert server_state(fp, "web", b3.addr)["admin"] == "maint"


def test_passive_failures_take_a_server_out_and_a_good_check_brings_it_back(
        forkproxy_factory, backend_factory):
    b1, b2 = backend_factory("b1"), backend_factory("b2")
    port = free_port()
    # Active checks every 5 s, so the passive check is what notices first.
    body = checked_config(port, [b1, b2], health=False, max_fails=1, fail_timeout="60s")
    body = body.replace("[pool.web]", "[pool.web]\nhealth = { path = \"/healthz\", "
                        "interval = \"5s\", rise = 1, fall = 100 }")
    fp = forkproxy_factory(body, server={"workers": 4})
    b2.stop()
    # The failed attempts are retried on b1: all 200.  Once the table holds
    # a failure of b2, every worker that re-read its row skips it; a run of
    # requests without an attempt on b2 would not say every worker did (one
    # that took none of them, or was still booting, had an older snapshot).
    wait_until(lambda: (spread(port, 4), server_state(fp, "web", b2.addr)["passive_out"])[1],
               timeout=30, what="b2 out by passive checks")
    fp.wait_seen("web", b2.addr)
    before = fp.error_log().count(f"server={b2.addr}")
    spread(port, 60)
    assert fp.error_log().count(f"server={b2.addr}") == before

    b2.start()
    wait_until(lambda: (spread(port, 10), served(b2) > 0)[1], timeout=30,
               what="a successful active check bringing b2 back")


def test_a_sigkilled_worker_leaves_no_in_flight_count_behind(forkproxy_factory, backend_factory):
    b = backend_factory("b")
    port = free_port()
    fp = forkproxy_factory(checked_config(port, [b], health=False), server={"workers": 1})
    (worker,) = fp.wait_workers(1)
    import threading

    def slow():
        try:
            requests.get(f"http://127.0.0.1:{port}/slow?ms=20000", timeout=30)
        except requests.RequestException:
            pass  # expected: its worker is killed under it
    t = threading.Thread(target=slow, daemon=True)
    t.start()
    wait_until(lambda: server_state(fp, "web", b.addr)["inflight"] == 1, what="one in flight")
    os.kill(worker, signal.SIGKILL)
    wait_until(lambda: server_state(fp, "web", b.addr)["inflight"] == 0, timeout=10,
               what="the dead worker's in-flight count cleared")


def test_initial_health_down_keeps_servers_out_until_they_pass_rise_checks(
        forkproxy_factory, backend_factory):
    b = backend_factory("b")
    port = free_port()
    fp = forkproxy_factory(checked_config(port, [b]), server={"initial_health": "down"},
                           ready=False)
    wait_until(lambda: fp.alive() and os.path.exists(fp.pidfile), what="the master")
    wait_until(lambda: server_state(fp, "web", b.addr)["health"] == "up", timeout=30,
               what="rise checks passing")
    # It came up through checks (rise = 2), not from its initial state.
    assert server_state(fp, "web", b.addr)["reason"].startswith("2 successful checks")
    wait_until(lambda: requests.get(f"http://127.0.0.1:{port}/", timeout=10).status_code == 200,
               timeout=10, what="the workers' snapshot")


def test_initial_health_up_serves_at_once(forkproxy_factory, backend_factory):
    b = backend_factory("b")
    port = free_port()
    forkproxy_factory(checked_config(port, [b]))
    assert requests.get(f"http://127.0.0.1:{port}/", timeout=10).status_code == 200


def test_all_servers_down_is_503(forkproxy_factory, backend_factory):
    b = backend_factory("b")
    port = free_port()
    fp = forkproxy_factory(checked_config(port, [b]))
    b.stop()
    wait_until(lambda: server_state(fp, "web", b.addr)["health"] == "down", timeout=30,
               what="b down")
    url = f"http://127.0.0.1:{port}/"
    fp.wait_seen("web", b.addr)  # every worker's snapshot (refreshed every 200 ms) has it
    for _ in range(8):  # fresh connections, spread over the workers
        r = requests.get(url, headers={"Connection": "close"}, timeout=10)
        assert r.status_code == 503 and b.addr not in r.text
