"""Service management that tells the truth: -D's exit status, -p across reloads,
systemd notifications and socket activation, -V, process titles, one generation
number, and reloads the master cannot apply.

Real ``python -m forkproxy`` masters on 127.0.0.1, a real datagram socket for
NOTIFY_SOCKET, a real inherited listening socket for LISTEN_FDS.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from support import procs
from support.configs import one_pool
from support.procs import Proc, children_of, free_port, wait_until
from support.runner import REPO_ROOT, _child_env, http_get


def reload_status(fp) -> dict | None:
    try:
        return json.loads((fp.dir / "run" / "reload.json").read_text())
    except (OSError, ValueError):
        return None


def hup_and_wait(fp, state):
    before = (reload_status(fp) or {}).get("reload", 0)
    fp.reload()
    wait_until(lambda: (st := reload_status(fp)) is not None and st["reload"] > before
               and st["state"] in ("serving", "rejected"), timeout=60, what="the reload's outcome")
    st = reload_status(fp)
    assert st["state"] == state, st
    return st


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()


def run_cli(*args, timeout=60, env=None):
    return subprocess.run([sys.executable, "-m", "forkproxy", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO_ROOT, env=_child_env(env))


# -- reloads the master cannot apply --------------------------------------------------

def test_a_pool_listing_a_server_twice_is_refused_and_the_old_generation_serves(
        forkproxy_factory, backend_factory):
    b = backend_factory("b")
    port = free_port()
    fp = forkproxy_factory(one_pool(port, [b.addr]))
    fp.write_config(one_pool(port, [b.addr, b.addr]))
    st = hup_and_wait(fp, "rejected")
    assert b.addr in " ".join(st["errors"]), st
    assert fp.alive()
    assert requests.get(f"http://127.0.0.1:{port}/", timeout=10).status_code == 200
    fp.write_config(one_pool(port, [b.addr]))
    hup_and_wait(fp, "serving")
    assert fp.alive()
    assert requests.get(f"http://127.0.0.1:{port}/", timeout=10).status_code == 200


def test_a_reload_whose_pidfile_cannot_be_written_is_refused(forkproxy_factory, backend_factory):
    b = backend_factory("b")
    port = free_port()
    fp = forkproxy_factory(one_pool(port, [b.addr]))
    pidfile = fp.pidfile
    pid_before = pidfile.read_text()
    fp.write_config(server={**fp.server, "pidfile": "/nonexistent-forkproxy-dir/forkproxy.pid"})
    st = hup_and_wait(fp, "rejected")
    assert "nonexistent-forkproxy-dir" in " ".join(st["errors"]), st
    assert fp.alive() and pidfile.read_text() == pid_before
    assert requests.get(f"http://127.0.0.1:{port}/", timeout=10).status_code == 200


# -- -p, -D ---------------------------------------------------------------------------

def test_p_pidfile_is_kept_across_reloads(forkproxy_factory, backend_factory, tmp_path):
    b = backend_factory("b")
    port = free_port()
    pidfile = tmp_path / "other.pid"
    fp = forkproxy_factory(one_pool(port, [b.addr]), args=["-p", str(pidfile)])
    wait_until(lambda: pidfile.exists(), what="the -p pidfile")
    hup_and_wait(fp, "serving")
    assert pidfile.read_text().strip() == str(fp.pid)
    assert not fp.pidfile.exists()  # server.pidfile was overridden, before and after
    out = run_cli("-c", str(fp.config_path), "-p", str(pidfile), "-s", "stop")
    assert out.returncode == 0, out.stderr
    assert fp.wait(30) == 0
    assert not pidfile.exists()


def test_D_exits_1_without_a_pidfile_when_the_port_is_taken(forkproxy_factory, backend_factory):
    b = backend_factory("b")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        fp = forkproxy_factory(one_pool(port, [b.addr]), args=["-D"], ready=False)
        assert fp.wait(60) == 1, fp.output()
    assert "the master exited with status 1 before serving" in fp.output()
    assert not fp.pidfile.exists()


def test_D_returns_0_once_the_workers_serve(forkproxy_factory, backend_factory):
    b = backend_factory("b")
    port = free_port()
    fp = forkproxy_factory(one_pool(port, [b.addr]), args=["-D"], ready=False)
    assert fp.wait(60) == 0, fp.output()
    fp.track_daemon()
    # No waiting: when -D returns the listener is bound and a worker accepts.
    status, _, _ = http_get("127.0.0.1", port, timeout=10)
    assert status == 200


# -- systemd ----------------------------------------------------------------------------

class Notify:
    """A NOTIFY_SOCKET: the datagrams a master sends, in order."""

    def __init__(self, path: Path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.got: list[str] = []

    def next_with(self, word: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while True:
            for i, msg in enumerate(self.got):
                if word in msg.split("\n"):
                    del self.got[:i + 1]
                    return msg
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {word} within {timeout}s; got {self.got}")
            self.sock.settimeout(left)
            try:
                self.got.append(self.sock.recv(4096).decode())
            except TimeoutError:
                pass

    def close(self):
        self.sock.close()


def test_notify_ready_after_the_workers_serve_and_around_reloads(forkproxy_factory,
                                                                 backend_factory, tmp_path):
    b = backend_factory("b")
    port = free_port()
    notify = Notify(tmp_path / "notify.sock")
    try:
        fp = forkproxy_factory(one_pool(port, [b.addr]), env={"NOTIFY_SOCKET": notify.path},
                               ready=False)
        ready = notify.next_with("READY=1")
        # Sent once every worker of generation 1 serves: gunicorn's own
        # READY=1 came before any worker existed.
        assert "STATUS=serving: generation 1, 2 workers" in ready, ready
        assert len(children_of(fp.pid)) == 2
        status, _, _ = http_get("127.0.0.1", port, timeout=10)
        assert status == 200

        fp.reload()
        reloading = notify.next_with("RELOADING=1")
        assert "MONOTONIC_USEC=" in reloading
        ready = notify.next_with("READY=1")
        assert "STATUS=serving: generation 2" in ready, ready
        # One generation number everywhere.
        wait_until(lambda: (reload_status(fp) or {}).get("state") == "serving")
        assert reload_status(fp)["generation"] == 2
        assert fp.ctl_status()["generation"] == 2
        wait_until(lambda: "generation 2 serves" in fp.error_log(), what="the error log line")
        titles = {cmdline(p) for p in children_of(fp.pid)}
        wait_until(lambda: all("generation 2" in cmdline(p) for p in children_of(fp.pid)),
                   what=f"only generation 2 workers (titles {titles})")
    finally:
        notify.close()


# -- socket activation ----------------------------------------------------------------

LAUNCH = """
import os, socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(16)
os.dup2(s.fileno(), 3)
os.set_inheritable(3, True)
os.environ["LISTEN_PID"] = str(os.getpid())
os.environ["LISTEN_FDS"] = "1"
os.execv(sys.executable, [sys.executable, "-m", "forkproxy", *sys.argv[2:]])
"""


def activated(fp, handed_port) -> Proc:
    """Start ``fp``'s config as systemd would, handing over a socket on ``handed_port`` as fd 3."""
    argv = [sys.executable, "-c", LAUNCH, str(handed_port), "-c", str(fp.config_path)]
    fp.proc = Proc(argv, fp.dir, name="forkproxy-activated", env=_child_env(), cwd=fp.dir)
    return fp.proc


def test_socket_activation_binds_what_was_not_handed_over(forkproxy_factory, backend_factory):
    b = backend_factory("b")
    web, other, admin = free_port(), free_port(), free_port()
    extra = f'\n[[listener]]\nname = "other"\nbind = "127.0.0.1:{other}"\n'
    fp = forkproxy_factory(one_pool(web, [b.addr], listener_extra=extra),
                           server={"admin": f"127.0.0.1:{admin}"}, start=False)
    activated(fp, web)
    fp.wait_ready(web)
    assert http_get("127.0.0.1", other, timeout=10)[0] == 200
    assert http_get("127.0.0.1", admin, "/status", timeout=10)[0] == 200


def test_socket_activation_refuses_a_socket_the_file_does_not_name(forkproxy_factory,
                                                                    backend_factory):
    b = backend_factory("b")
    web, stranger = free_port(), free_port()
    fp = forkproxy_factory(one_pool(web, [b.addr]), start=False)
    proc = activated(fp, stranger)
    assert proc.wait(60) == 1
    assert f"127.0.0.1:{stranger}" in fp.output(), fp.output()
    assert "no [[listener]]" in fp.output()
    assert not fp.pidfile.exists()


# -- -V, titles -------------------------------------------------------------------------

def test_V_prints_the_versions_of_what_forkproxy_runs_on():
    out = run_cli("-V")
    assert out.returncode == 0, out.stderr
    names = [line.split()[0].rstrip(":") for line in out.stdout.splitlines()]
    assert names == ["forkproxy", "Python", "gevent", "gunicorn", "OpenSSL", "libmemcached"]
    assert "not installed" not in out.stdout and "unavailable" not in out.stdout


def test_process_titles_say_what_each_process_is(forkproxy_factory, backend_factory):
    b = backend_factory("b")
    port = free_port()
    fp = forkproxy_factory(one_pool(port, [b.addr]))
    wait_until(lambda: cmdline(fp.pid).startswith("forkproxy: master"), what="the master's title")
    assert cmdline(fp.pid) == f"forkproxy: master -c {fp.config_path}"
    wait_until(lambda: sorted(cmdline(p) for p in children_of(fp.pid)) ==
               ["forkproxy: worker 0 generation 1", "forkproxy: worker 1 generation 1"],
               what="the workers' titles")


def test_the_worker_running_the_health_checks_says_so(forkproxy_factory, backend_factory):
    b = backend_factory("b")
    port = free_port()
    fp = forkproxy_factory(one_pool(port, [b.addr]) + 'health = { interval = "1s" }\n')
    wait_until(lambda: sorted(cmdline(p).endswith("(checker)") for p in children_of(fp.pid))
               == [False, True], what="one checker among the workers")
