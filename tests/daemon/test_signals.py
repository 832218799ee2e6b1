"""Signals to the master and the classic daemon: TTIN/TTOU, USR1, USR2 + WINCH, -D.

Real ``python -m forkproxy`` masters and backends on 127.0.0.1; real signals.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import requests

from support import procs
from support.configs import one_pool
from support.procs import children_of, free_port, open_files, wait_until
from support.runner import REPO_ROOT


def get(port, path="/"):
    return requests.get(f"http://127.0.0.1:{port}{path}", timeout=10)


def read_pid(path: Path):
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def test_ttin_adds_a_worker_and_ttou_removes_one(forkproxy_factory, backend_factory):
    b = backend_factory("b")
    port = free_port()
    fp = forkproxy_factory(one_pool(port, [b.addr]))
    fp.wait_workers(2)
    fp.signal(signal.SIGTTIN)
    fp.wait_workers(3)
    fp.signal(signal.SIGTTOU)
    fp.wait_workers(2)
    fp.signal(signal.SIGTTOU)
    fp.wait_workers(1)
    fp.signal(signal.SIGTTOU)          # never below one
    assert get(port).status_code == 200
    assert len(fp.wait_workers(1)) == 1


def test_usr1_reopens_the_error_and_access_logs(forkproxy_factory, backend_factory):
    b = backend_factory("b")
    port = free_port()
    fp = forkproxy_factory(one_pool(port, [b.addr]))
    fp.wait_workers(2)
    access, error = Path(fp.server["access_log"]), Path(fp.server["error_log"])
    assert get(port, "/before").status_code == 200
    wait_until(lambda: access.exists() and "/before" in access.read_text())
    os.rename(access, access.with_suffix(".log.1"))     # what logrotate does
    os.rename(error, error.with_suffix(".log.1"))
    fp.signal(signal.SIGUSR1)
    # master and every worker reopen: the readiness check is that no process
    # of this forkproxy still holds a file that logrotate moved away
    rotated = {str(access.with_suffix(".log.1")), str(error.with_suffix(".log.1"))}
    wait_until(lambda: error.exists() and access.exists()
               and not rotated & open_files(fp.pid, *fp.worker_pids()),
               what="every process to reopen its logs")
    # every later request, whichever worker takes it, lands in the new file
    old_size = access.with_suffix(".log.1").stat().st_size
    for n in range(10):
        assert get(port, f"/after-{n}").status_code == 200
    wait_until(lambda: all(f"/after-{n} " in access.read_text() for n in range(10)),
               what="the requests in the new access log")
    assert access.with_suffix(".log.1").stat().st_size == old_size


def test_usr2_winch_term_upgrade_while_requests_keep_succeeding(forkproxy_factory,
                                                               backend_factory):
    b = backend_factory("b")
    port = free_port()
    fp = forkproxy_factory(one_pool(port, [b.addr]))
    old_workers = set(fp.wait_workers(2))
    # "phase": the last signal sent, so that a failure says when it happened
    stats = {"ok": 0, "failed": [], "phase": "before USR2"}
    stop = threading.Event()

    def load():
        s = requests.Session()
        while not stop.is_set():
            try:
                r = s.get(f"http://127.0.0.1:{port}/", timeout=10)
                if r.status_code == 200:
                    stats["ok"] += 1
                else:
                    stats["failed"].append(f"{stats['phase']}: {r.status_code}")
            except requests.RequestException as exc:
                stats["failed"].append(f"{stats['phase']}: {exc!r}")

    threads = [threading.Thread(target=load, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    new_pidfile = Path(str(fp.pidfile) + ".2")
    new_master = None
    try:
        wait_until(lambda: stats["ok"] > 20)
        stats["phase"] = "after USR2"
        fp.signal(signal.SIGUSR2)
        wait_until(lambda: read_pid(new_pidfile) is not None, timeout=30)
        new_master = read_pid(new_pidfile)
        procs.track(new_master)
        assert new_master != fp.pid
        wait_until(lambda: len(children_of(new_master)) == 2, timeout=30)
        stats["phase"] = "after WINCH"
        fp.signal(signal.SIGWINCH)          # the old workers drain and exit
        wait_until(lambda: not (set(children_of(fp.pid)) & old_workers), timeout=30)
        n = stats["ok"]
        wait_until(lambda: stats["ok"] > n + 20)   # served by the new master alone
        stats["phase"] = "after TERM to the old master"
        fp.signal(signal.SIGTERM)
        assert fp.wait(30) == 0
        # the new master is promoted: the pidfile is its own again
        wait_until(lambda: read_pid(fp.pidfile) == new_master, timeout=30)
        assert not new_pidfile.exists()
        n = stats["ok"]
        wait_until(lambda: stats["ok"] > n + 20)
    finally:
        stop.set()
        for t in threads:
            t.join(15)
        if new_master and procs.pid_alive(new_master):
            os.kill(new_master, signal.SIGTERM)
            wait_until(lambda: not procs.pid_alive(new_master), timeout=30)
    assert stats["failed"] == [], stats["failed"][:5]
    print(f"\nUSR2 upgrade under load: {stats['ok']} requests, {len(stats['failed'])} failed")


def test_D_daemonizes_writes_the_pidfile_and_s_stop_removes_it(forkproxy_factory,
                                                               backend_factory):
    b = backend_factory("b")
    port = free_port()
    fp = forkproxy_factory(one_pool(port, [b.addr]), args=["-D"], ready=False)
    assert fp.wait(30) == 0             # the foreground process returns at once
    wait_until(lambda: read_pid(fp.pidfile) is not None, timeout=30)
    master = fp.track_daemon()
    assert master != fp.pid and procs.pid_alive(master)
    # a session of its own, not its leader (double fork: no terminal can come back)
    assert os.getsid(master) not in (os.getsid(0), master)
    assert (fp.pidfile.stat().st_mode & 0o777) == 0o644
    wait_until(lambda: len(children_of(master)) == 2, timeout=30)
    wait_until(lambda: _answers(port), timeout=30)
    out = subprocess.run([sys.executable, "-m", "forkproxy", "-s", "stop", "-c",
                          str(fp.config_path)], capture_output=True, text=True, timeout=30,
                         cwd=REPO_ROOT)
    assert out.returncode == 0, out.stderr
    wait_until(lambda: not procs.pid_alive(master), timeout=30)
    assert not fp.pidfile.exists()


def _answers(port):
    try:
        return get(port).status_code == 200
    except requests.RequestException:
        return False


def test_s_with_a_stale_pidfile_is_a_clear_error(forkproxy_factory, backend_factory, tmp_path):
    b = backend_factory("b")
    port = free_port()
    fp = forkproxy_factory(one_pool(port, [b.addr]), start=False)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    fp.pidfile.write_text(f"{dead.pid}\n")
    out = subprocess.run([sys.executable, "-m", "forkproxy", "-s", "reload", "-c",
                          str(fp.config_path)], capture_output=True, text=True, timeout=30,
                         cwd=REPO_ROOT)
    assert out.returncode == 1 and "stale pidfile" in out.stderr
