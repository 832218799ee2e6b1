"""SIGHUP reload: validate first, switch pools, drain the old generation, drop nothing.

Real ``python -m forkproxy`` masters and backends on 127.0.0.1; real signals.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading

import requests

from support.configs import one_pool
from support.procs import free_port, wait_until
from support.rawhttp import Conn
from support.runner import REPO_ROOT


def served_by(port, path="/"):
    r = requests.get(f"http://127.0.0.1:{port}{path}", timeout=10)
    assert r.status_code == 200
    return r.headers.get("X-Backend") or r.text


def status(fp):
    return fp.reload_status()


def reload_and_wait(fp, state="serving"):
    return fp.reload_and_wait(state)


def write_atomically(fp, body):
    """Rewrite the config with a rename, as editors do: a HUP never reads half a file."""
    tmp = fp.config_path.with_suffix(".tmp")
    path = fp.config_path
    fp.config_path = tmp
    try:
        fp.write_config(body)
    finally:
        fp.config_path = path
    os.replace(tmp, path)


def run_cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "forkproxy", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO_ROOT)


def test_hup_with_a_good_file_switches_traffic_to_the_new_pool(forkproxy_factory,
                                                                 backend_factory):
    a, b = backend_factory("alpha"), backend_factory("beta")
    port = free_port()
    fp = forkproxy_factory(one_pool(port, [a.addr]))
    old = set(fp.wait_workers(2))
    assert "alpha" in served_by(port)
    fp.write_config(one_pool(port, [b.addr]))
    st = reload_and_wait(fp)
    assert st["errors"] == []
    for _ in range(6):
        assert "beta" in served_by(port)
    # the old generation goes away; the master keeps two serving workers
    wait_until(lambda: not (set(fp.worker_pids()) & old), timeout=30)
    assert len(fp.wait_workers(2)) == 2


def test_a_reload_is_announced_only_once_no_old_worker_accepts(forkproxy_factory,
                                                               backend_factory):
    """reload.json's "serving" promises that every new connection meets the new
    file: a retired worker that has not closed its listeners yet (here: stopped,
    so it cannot even see its SIGTERM) holds the announcement back."""
    a, b = backend_factory("alpha"), backend_factory("beta")
    port = free_port()
    fp = forkproxy_factory(one_pool(port, [a.addr]))
    old = fp.wait_workers(2)
    before = status(fp) or {"reload": 0}
    for pid in old:
        os.kill(pid, signal.SIGSTOP)
    try:
        fp.write_config(one_pool(port, [b.addr]))
        fp.reload()
        # the new generation serves (stopped workers accept nothing), the
        # master asked the old one to go (a SIGTERM pending), which has not
        # closed its listeners yet
        wait_until(lambda: "beta" in served_by(port), timeout=30, what="the new pool")
        wait_until(lambda: all(sigterm_pending(pid) for pid in old), timeout=30,
                   what="the old workers retired")
        st = status(fp)
        assert st is None or st["reload"] == before["reload"] or st["state"] == "loading"
    finally:
        for pid in old:
            os.kill(pid, signal.SIGCONT)
    st = reload_and_wait_for(fp, before["reload"] + 1)
    assert st["state"] == "serving"
    for _ in range(6):
        assert "beta" in served_by(port)


def sigterm_pending(pid):
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return bool(int(fields["ShdPnd"], 16) & (1 << (signal.SIGTERM - 1)))


def reload_and_wait_for(fp, n):
    wait_until(lambda: (st := status(fp)) is not None and st["reload"] >= n
               and st["state"] != "loading", timeout=30, what=f"reload {n} announced")
    return status(fp)


def test_hup_with_a_broken_file_keeps_serving_and_logs_every_error(forkproxy_factory,
                                                                   backend_factory):
    a = backend_factory("alpha")
    port = free_port()
    fp = forkproxy_factory(one_pool(port, [a.addr]))
    workers = set(fp.wait_workers(2))
    fp.write_config(one_pool(port, [a.addr]) + "\n[pool.q]\nbalance = \"nope\"\nservers = []\n")
    st = reload_and_wait(fp, "rejected")
    assert st["errors"] and all(str(fp.config_path) in e for e in st["errors"])
    assert "pool.q" in st["errors"][0]
    log = fp.error_log() + fp.output()
    assert f"reload rejected: {fp.config_path}:" in log
    assert fp.alive()
    assert set(fp.worker_pids()) == workers       # nothing restarted
    assert "alpha" in served_by(port)


def test_ten_hups_in_one_second_end_on_the_last_file(forkproxy_factory, backend_factory):
    a, b = backend_factory("alpha"), backend_factory("beta")
    port = free_port()
    fp = forkproxy_factory(one_pool(port, [a.addr]))
    fp.wait_workers(2)
    for i in range(10):
        write_atomically(fp, one_pool(port, [(a if i % 2 else b).addr]))
        fp.reload()  # the kernel may merge HUPs still pending: each handled one reloads
    assert served_by(port) in ("alpha", "beta")  # served throughout, by some generation
    # One more, waited for: the master handled the burst and is still in charge.
    out = run_cli("-s", "reload", "--wait", "-c", str(fp.config_path))
    assert out.returncode == 0, out.stderr
    # The last file (i = 9) serves every new connection once the older
    # workers have handled their TERM (moments after --wait returns).
    wait_until(lambda: all("alpha" in served_by(port) for _ in range(6)),
               what="the last file serving every new connection")
    wait_until(lambda: len(fp.worker_pids()) == 2, timeout=60)
    assert fp.alive()


def test_a_keep_alive_connection_in_flight_finishes_then_moves_to_the_new_generation(
        forkproxy_factory, backend_factory):
    """The request in flight ends on the old pool, kept alive; the same
    connection's next request is served by the new generation (net.handoff)."""
    a, b = backend_factory("alpha"), backend_factory("beta")
    port = free_port()
    fp = forkproxy_factory(one_pool(port, [a.addr]), server={"workers": 1})
    fp.wait_workers(1)
    get = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    slow = f"GET /slow?ms=5000 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    with Conn(port, timeout=30) as c:
        c.send(get)
        r = c.reply()
        assert r.status == 200 and r.headers.get("X-Backend") == "alpha"
        before = a.stats()["by_path"].get("/slow", 0)
        c.send(slow)
        wait_until(lambda: a.stats()["by_path"].get("/slow", 0) > before)
        fp.write_config(one_pool(port, [b.addr]))
        reload_and_wait(fp)     # the old worker is draining from here on
        r = c.reply()
        assert r.status == 200 and r.headers.get("X-Backend") == "alpha"
        assert r.headers.get("Connection", "").lower() != "close", fp.error_log()
        c.send(get)  # the same connection: now the new generation's
        r = c.reply()
        assert r.status == 200 and r.headers.get("X-Backend") == "beta", fp.error_log()


def test_a_slow_request_in_flight_survives_a_reload(forkproxy_factory, backend_factory):
    a, b = backend_factory("alpha"), backend_factory("beta")
    port = free_port()
    fp = forkproxy_factory(one_pool(port, [a.addr]))
    fp.wait_workers(2)
    result = {}

    def slow():
        try:
            result["status"] = requests.get(f"http://127.0.0.1:{port}/slow?ms=1500",
                                            timeout=30).status_code
        except requests.RequestException as exc:
            result["error"] = exc

    before = a.stats()["by_path"].get("/slow", 0)
    t = threading.Thread(target=slow, daemon=True)
    t.start()
    wait_until(lambda: a.stats()["by_path"].get("/slow", 0) > before)
    fp.write_config(one_pool(port, [b.addr]))
    reload_and_wait(fp)
    t.join(30)
    assert result == {"status": 200}


def test_listeners_added_and_removed_by_a_reload(forkproxy_factory, backend_factory):
    a = backend_factory("alpha")
    port, port2 = free_port(), free_port()
    fp = forkproxy_factory(one_pool(port, [a.addr]))
    extra = f'[[listener]]\nname = "two"\nbind = "127.0.0.1:{port2}"\n'
    fp.write_config(one_pool(port, [a.addr], listener_extra=extra))
    reload_and_wait(fp)
    assert "alpha" in served_by(port2)
    assert "alpha" in served_by(port)
    fp.write_config(one_pool(port, [a.addr]))
    reload_and_wait(fp)

    def closed():
        try:
            socket.create_connection(("127.0.0.1", port2), timeout=1).close()
            return False
        except OSError:
            return True
    wait_until(closed, timeout=30)
    assert "alpha" in served_by(port)


def test_s_reload_wait_exits_0_when_serving_and_1_with_the_errors(forkproxy_factory,
                                                                 backend_factory):
    a, b = backend_factory("alpha"), backend_factory("beta")
    port = free_port()
    fp = forkproxy_factory(one_pool(port, [a.addr]))
    fp.write_config(one_pool(port, [b.addr]))
    out = run_cli("-s", "reload", "--wait", "-c", str(fp.config_path))
    assert out.returncode == 0, out.stderr
    assert all("beta" in served_by(port) for _ in range(4))
    # A file that is bad in a way the running master finds: the master
    # rejects it, --wait prints why and exits 1.
    fp.config_path.write_text(fp.config_path.read_text() + '\n[pool.q]\nbalance = "nope"\n'
                              'servers = []\n')
    out = run_cli("-s", "reload", "--wait", "-p", str(fp.pidfile), "-c", str(fp.config_path))
    assert out.returncode == 1
    assert "pool.q" in out.stderr
    assert "beta" in served_by(port)


def test_pidfile_is_kept_across_reloads(forkproxy_factory, backend_factory):
    a = backend_factory("alpha")
    port = free_port()
    fp = forkproxy_factory(one_pool(port, [a.addr]))
    reload_and_wait(fp)
    assert int(fp.pidfile.read_text()) == fp.pid
    assert os.stat(fp.dir / "run").st_mode & 0o002 == 0
    fp.signal(signal.SIGTERM)
    assert fp.wait(30) == 0
    assert not fp.pidfile.exists()
