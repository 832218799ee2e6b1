"""The daemon as a process: command line, master/worker split, stop signals, the demo.

Real ``python -m forkproxy`` processes on 127.0.0.1, real signals.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import threading

import pytest
import requests

from forkproxy import __version__
from support.configs import one_pool
from support.procs import free_port, wait_until

ROOT = pathlib.Path(__file__).resolve().parents[2]


def run_cli(*args, timeout=30):
    return subprocess.run([sys.executable, "-m", "forkproxy", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


# -- command line ------------------------------------------------------------------

def test_version():
    out = run_cli("-v")
    assert out.returncode == 0 and out.stdout.strip() == f"forkproxy {__version__}"


def test_usage_error_exits_2():
    out = run_cli("--no-such-flag")
    assert out.returncode == 2


def test_t_accepts_a_good_file_and_T_prints_the_effective_config(tmp_path):
    f = tmp_path / "ok.toml"
    f.write_text(one_pool(8080, ["127.0.0.1:8081"]))
    ok = run_cli("-t", "-c", str(f))
    assert ok.returncode == 0, ok.stderr
    dump = run_cli("-T", "-c", str(f))
    assert dump.returncode == 0
    assert 'graceful_timeout = "30s"' in dump.stdout      # a default filled in
    assert 'bind = "127.0.0.1:8080"' in dump.stdout


def test_t_reports_every_error_with_file_line_and_key(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("""[server]
workers = 0
graceful_timeout = 30

[[listener]]
name = "web"
bind = "127.0.0.1:99999"

[[route]]
pool = "nope"
""")
    out = run_cli("-t", "-c", str(f))
    assert out.returncode == 1
    lines = out.stderr.splitlines()
    assert any(l.startswith(f"{f}:2: server.workers: ") for l in lines), out.stderr
    assert any(l.startswith(f"{f}:3: server.graceful_timeout: ") for l in lines), out.stderr
    assert any(l.startswith(f"{f}:7: listener[0].bind: ") for l in lines), out.stderr
    assert any(l.startswith(f"{f}:10: route[0].pool: ") for l in lines), out.stderr


def test_missing_file_is_a_clear_config_error(tmp_path):
    out = run_cli("-t", "-c", str(tmp_path / "absent.toml"))
    assert out.returncode == 1 and "absent.toml" in out.stderr


def test_signal_without_a_running_master_is_a_clear_error(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text(f'[server]\npidfile = "{tmp_path}/none.pid"\n'
                 + one_pool(8080, ["127.0.0.1:8081"]))
    out = run_cli("-s", "reload", "-c", str(f))
    assert out.returncode == 1 and "no pidfile" in out.stderr


# -- master and workers ----------------------------------------------------------

def _maps(pid: int) -> str:
    """The shared libraries a process has loaded (not every mapped path: the
    table file's path may contain any word)."""
    return "\n".join(l for l in pathlib.Path(f"/proc/{pid}/maps").read_text().splitlines()
                     if ".so" in l)


def test_master_never_loads_gevent_and_workers_do(forkproxy_factory, backend_factory):
    b = backend_factory("b")
    port = free_port()
    fp = forkproxy_factory(one_pool(port, [b.addr]))
    workers = fp.wait_workers(2)
    # A worker imports gevent as it boots: wait for both to have done so...
    wait_until(lambda: all("gevent" in _maps(w) for w in workers), what="workers booted")
    # ... while the master, which forked them, never did.
    assert "gevent" not in _maps(fp.pid)
    assert "pylibmc" not in _maps(fp.pid)


def test_workers_auto_is_one_per_cpu(forkproxy_factory, backend_factory):
    b = backend_factory("b")
    port = free_port()
    fp = forkproxy_factory(one_pool(port, [b.addr]), server={"workers": "auto"})
    assert len(fp.wait_workers(os.cpu_count())) == os.cpu_count()


def test_a_killed_worker_is_replaced_and_service_continues(forkproxy_factory, backend_factory):
    b = backend_factory("b")
    port = free_port()
    fp = forkproxy_factory(one_pool(port, [b.addr]))
    before = set(fp.wait_workers(2))
    victim = sorted(before)[0]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: len(set(fp.worker_pids()) - before) == 1 and len(fp.worker_pids()) == 2)
    assert victim not in fp.worker_pids()
    for _ in range(5):
        assert requests.get(f"http://127.0.0.1:{port}/", timeout=10).status_code == 200


def _slow_request(port, ms, result):
    try:
        r = requests.get(f"http://127.0.0.1:{port}/slow?ms={ms}", timeout=30)
        result["status"] = r.status_code
    except requests.RequestException as exc:
        result["error"] = exc


def _start_slow(fp, backend, port, ms):
    result = {}
    t = threading.Thread(target=_slow_request, args=(port, ms, result), daemon=True)
    before = backend.stats()["by_path"].get("/slow", 0)
    t.start()
    # readiness, not a sleep: the backend has the request in hand
    wait_until(lambda: backend.stats()["by_path"].get("/slow", 0) > before)
    return t, result


def test_term_is_graceful_the_request_in_flight_finishes(forkproxy_factory, backend_factory):
    b = backend_factory("b")
    port = free_port()
    fp = forkproxy_factory(one_pool(port, [b.addr]))
    t, result = _start_slow(fp, b, port, 1500)
    fp.signal(signal.SIGTERM)
    t.join(30)
    assert result == {"status": 200}
    assert fp.wait(30) == 0
    assert not os.path.exists(fp.pidfile)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGQUIT])
def test_int_and_quit_stop_fast_cutting_requests_in_flight(forkproxy_factory, backend_factory, sig):
    b = backend_factory("b")
    port = free_port()
    fp = forkproxy_factory(one_pool(port, [b.addr]))
    t, result = _start_slow(fp, b, port, 20000)
    fp.signal(sig)
    assert fp.wait(15) is not None     # it exits long before the 20 s request would finish
    t.join(15)
    assert "status" not in result      # the request was cut, not answered


def test_s_stop_signals_the_master_through_its_pidfile(forkproxy_factory, backend_factory):
    b = backend_factory("b")
    port = free_port()
    fp = forkproxy_factory(one_pool(port, [b.addr]))
    out = run_cli("-s", "stop", "-c", str(fp.config_path))
    assert out.returncode == 0, out.stderr
    assert fp.wait(30) == 0


def test_demo_shows_balancing_failover_caching_and_the_status_page():
    port, admin = free_port(), free_port()
    out = subprocess.run([sys.executable, str(ROOT / "demo" / "run.py"), "--once", "--port",
                          str(port), "--admin-port", str(admin)],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"http://127.0.0.1:{port}/" in out.stdout
    assert f"status page: http://127.0.0.1:{admin}/" in out.stdout
    answered = {n for n in ("backend 1", "backend 2", "backend 3") if n in out.stdout}
    assert len(answered) >= 2, out.stdout
    assert "none failed" in out.stdout and "backend 2 down" in out.stdout, out.stdout
    assert "X-Cache: MISS" in out.stdout and "X-Cache: HIT" in out.stdout, out.stdout


def test_T_redacts_secrets_unless_asked_and_the_placeholder_is_refused(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text('[server]\nadmin_token = "tok-3141"\n'
                 + one_pool(8080, ["127.0.0.1:8081"], 'sticky = { secret = "stk-2718" }'))
    dump = run_cli("-T", "-c", str(f))
    assert dump.returncode == 0, dump.stderr
    assert "tok-3141" not in dump.stdout and "stk-2718" not in dump.stdout
    assert 'admin_token = "<redacted>"' in dump.stdout
    assert 'secret = "<redacted>"' in dump.stdout
    shown = run_cli("-T", "--show-secrets", "-c", str(f))
    assert 'admin_token = "tok-3141"' in shown.stdout and 'secret = "stk-2718"' in shown.stdout
    # The redacted dump pasted back as a configuration: refused, key by key.
    pasted = tmp_path / "pasted.toml"
    pasted.write_text(dump.stdout)
    out = run_cli("-t", "-c", str(pasted))
    assert out.returncode == 1
    assert "server.admin_token: " in out.stderr and "sticky.secret: " in out.stderr, out.stderr
    assert "write the secret itself" in out.stderr
