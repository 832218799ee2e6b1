"""Real processes for integration tests: forkproxy itself, test backends, memcached.

All three write their output under a directory the test owns (normally a
``tmp_path`` subdirectory) and are stopped by pid; see ``procs.Proc``.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

from . import procs
from .procs import POLL, Proc, ProcError, children_of, free_port, wait_for_port, wait_until

__all__ = ["ForkProxy", "Backend", "Memcached", "toml_value", "http_get", "REPO_ROOT", "BACKEND_PY"]

_SIGTERM = signal.SIGTERM
REPO_ROOT = Path(__file__).resolve().parents[2]
BACKEND_PY = Path(__file__).resolve().with_name("backend.py")


def _child_env(extra=None):
    env = dict(os.environ)
    # The package under test, not whatever copy may be installed.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def toml_value(v) -> str:
    """Render a Python value as TOML (str, bool, int, float, list, dict as inline table)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot render {type(v).__name__} as TOML")


def http_get(host: str, port: int, path: str = "/", timeout: float = 5, tls: bool = False, headers=None):
    """One GET on a fresh connection; return (status, headers dict, body bytes). No proxies, no env."""
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=ctx)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


class ForkProxy:
    """A forkproxy master run as ``python -m forkproxy -c DIR/forkproxy.toml``.

    The config file is ``[server]`` (harness defaults, then ``server``
    overrides) followed by ``body`` verbatim (listeners, routes, pools...).
    Harness defaults: workers = 2; pidfile, runtime_dir, error_log and
    access_log inside ``directory``. An override of ``None`` drops a key.

    ``python``: the interpreter to run it with (default: the tests' own).
    Not started by the constructor: call ``start()`` (or use ``with``,
    which starts, and stops on exit).
    """

    def __init__(self, directory, body: str = "", server: dict | None = None, args=(), env=None, name="forkproxy",
                 python: str | None = None):
        self.python = python or sys.executable  # the interpreter that runs the master
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.args = [str(a) for a in args]
        self.env = env
        self.config_path = self.dir / "forkproxy.toml"
        self.proc: Proc | None = None
        self.write_config(body, server)

    # -- config -----------------------------------------------------------

    def defaults(self) -> dict:
        return {
            "workers": 2,
            "pidfile": str(self.dir / "forkproxy.pid"),
            "runtime_dir": str(self.dir / "run"),
            "error_log": str(self.dir / "error.log"),
            "access_log": str(self.dir / "access.log"),
        }

    def write_config(self, body: str | None = None, server: dict | None = None) -> Path:
        """(Re)write the config file; ``None`` keeps the previous body / overrides.

        Rewriting and then ``reload()`` is how reload tests change the config.
        """
        if body is not None:
            self.body = body
        if server is not None or not hasattr(self, "server"):
            self.server = {**self.defaults(), **(server or {})}
        lines = ["[server]"]
        lines += [f"{k} = {toml_value(v)}" for k, v in self.server.items() if v is not None]
        self.config_path.write_text("\n".join(lines) + "\n\n" + self.body.strip() + "\n")
        return self.config_path

    def parsed(self) -> dict:
        """The config file as TOML data (raises when the test wrote invalid TOML on purpose)."""
        return tomllib.loads(self.config_path.read_text())

    def listeners(self) -> list[dict]:
        try:
            return list(self.parsed().get("listener", []))
        except tomllib.TOMLDecodeError:
            return []

    @property
    def pidfile(self) -> Path:
        return Path(self.server["pidfile"])

    # -- process ----------------------------------------------------------

    def start(self) -> "ForkProxy":
        """Start the master (foreground) and return self; does not wait for readiness."""
        if self.proc is not None and self.proc.alive():
            raise ProcError("forkproxy already running")
        argv = [self.python, "-m", "forkproxy", "-c", str(self.config_path), *self.args]
        self.proc = Proc(argv, self.dir, name=self.name, env=_child_env(self.env), cwd=self.dir)
        return self

    @property
    def pid(self) -> int:
        return self._proc().pid

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def _proc(self) -> Proc:
        if self.proc is None:
            raise ProcError("forkproxy not started")
        return self.proc

    def signal(self, sig: int) -> None:
        self._proc().signal(sig)

    def reload(self) -> None:
        """SIGHUP to the master (rewrite the config first with ``write_config``)."""
        self.signal(signal.SIGHUP)

    def reload_status(self) -> dict | None:
        """``reload.json`` in runtime_dir (None before the first generation writes it)."""
        try:
            return json.loads((self.dir / "run" / "reload.json").read_text())
        except (OSError, ValueError):
            return None

    def reload_and_wait(self, state: str = "serving") -> dict:
        """SIGHUP, then wait until ``reload.json`` counts one more reload in ``state``."""
        before = (self.reload_status() or {}).get("reload", 0)
        self.reload()
        wait_until(lambda: (st := self.reload_status()) is not None and st["reload"] > before
                   and st["state"] == state, timeout=30, what=f"reload {before + 1} {state}")
        return self.reload_status()

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the master to exit; return its status (``subprocess.TimeoutExpired`` on timeout)."""
        return self._proc().wait(timeout)

    def worker_pids(self) -> list[int]:
        """Live children of the master: the workers (sorted pids)."""
        return children_of(self.pid) if self.alive() else []

    def wait_workers(self, n: int | None = None, timeout: float = 15) -> list[int]:
        """Poll until the master has ``n`` live children (default: server.workers)."""
        n = self.server.get("workers", 2) if n is None else n
        deadline = time.monotonic() + timeout
        while True:
            pids = self.worker_pids()
            if len(pids) == n:
                return pids
            self._check_alive(f"waiting for {n} workers")
            if time.monotonic() > deadline:
                raise ProcError(f"forkproxy has workers {pids}, wanted {n}, after {timeout}s\n{self._tail()}")
            time.sleep(POLL)

    def _tail(self, lines: int = 40) -> str:
        out = []
        err = self.error_log()
        if err:
            out.append("error log tail:\n" + "\n".join(err.splitlines()[-lines:]))
        if self.proc is not None:
            out.append("stdout/stderr tail:\n" + self.proc.log_tail(lines))
        return "\n".join(out)

    def _check_alive(self, what: str) -> None:
        if not self.alive():
            raise ProcError(f"forkproxy master exited with {self.returncode} while {what}\n{self._tail()}")

    def wait_ready(self, target=None, timeout: float = 15, mode: str | None = None) -> "ForkProxy":
        """Poll until a listener answers; raise ``ProcError`` (with log tails) on timeout or death.

        ``target``: a URL (``http://127.0.0.1:P/path``, ``https://...``), a
        port, or None for the config's first listener. ``mode`` "http" (the
        default for HTTP listeners) needs an HTTP response with any status;
        "tcp" (default for ``mode = "tcp"`` listeners) needs only a connect.
        """
        host, port, path, tls = "127.0.0.1", None, "/", False
        if target is None:
            ls = self.listeners()
            if not ls:
                raise ProcError("wait_ready: no target and no [[listener]] in the config")
            first = ls[0]
            bind = first["bind"]
            host, _, p = bind.rpartition(":")
            host = host.strip("[]") or "127.0.0.1"
            if host in ("0.0.0.0", "::", "*"):
                host = "127.0.0.1"
            port = int(p)
            tls = bool(first.get("tls"))
            if mode is None:
                mode = "tcp" if first.get("mode") == "tcp" else "http"
        elif isinstance(target, int):
            port = target
        else:
            u = urlsplit(target)
            host, port, tls = u.hostname or "127.0.0.1", u.port, u.scheme == "https"
            port = port or (443 if tls else 80)
            path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        mode = mode or "http"
        deadline = time.monotonic() + timeout
        last = None
        while True:
            self._check_alive(f"waiting for {host}:{port}")
            try:
                if mode == "tcp":
                    with socket.create_connection((host, port), timeout=1):
                        return self
                http_get(host, port, path, timeout=2, tls=tls)
                return self
            except (OSError, http.client.HTTPException) as exc:
                last = exc
            if time.monotonic() > deadline:
                raise ProcError(f"forkproxy not ready on {host}:{port} after {timeout}s ({last!r})\n{self._tail()}")
            time.sleep(POLL)

    def stop(self, timeout: float = 10, sig: int = _SIGTERM) -> int | None:
        """TERM (graceful), KILL after ``timeout``; kill leftover workers by pid. Idempotent."""
        if self.proc is None:
            return None
        rc = self.proc.stop(timeout=timeout, sig=sig)
        # A -D run leaves the real master elsewhere: it is in the pidfile.
        try:
            other = int(self.pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            other = None
        if other and other != self.proc.pid and procs.pid_alive(other) and _cmdline_mentions(other, "forkproxy"):
            family = procs.descendants_of(other)
            os.kill(other, sig)
            _wait_gone(other, timeout)
            for p in [other, *family]:
                if procs.pid_alive(p):
                    os.kill(p, signal.SIGKILL)
        return rc

    def track_daemon(self) -> int | None:
        """After a ``-D`` start: register the pidfile's master with the leak guard; return it."""
        try:
            pid = int(self.pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        procs.track(pid)
        return pid

    # -- logs -------------------------------------------------------------

    def _log(self, key: str) -> str:
        where = self.server.get(key)
        if where in (None, "-"):
            return self.proc.log_text() if self.proc else ""
        try:
            return Path(where).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def error_log(self) -> str:
        return self._log("error_log")

    def wait_error_log(self, text: str, timeout: float = 30) -> str:
        """The error log once it holds ``text``.  A request's error line is
        written when the request ends, after its response went out: a client
        can read the answer before the line is there."""
        wait_until(lambda: text in self.error_log(), timeout=timeout, what=f"{text!r} in the error log")
        return self.error_log()

    def ctl(self, *args: str) -> subprocess.CompletedProcess:
        """``forkproxyctl -c <this config> ARGS`` as a subprocess (output captured)."""
        return subprocess.run([sys.executable, "-m", "forkproxy.ctl", "-c", str(self.config_path),
                               *args], capture_output=True, text=True, timeout=30)

    def ctl_status(self) -> dict:
        """``forkproxyctl --json status``: the shared table as a document."""
        out = self.ctl("--json", "status")
        if out.returncode != 0:
            raise ProcError(f"forkproxyctl status failed: {out.stderr}")
        return json.loads(out.stdout)

    def server_status(self, pool: str, addr: str) -> dict:
        """Server ``addr`` of ``pool`` in ``ctl_status()``."""
        for p in self.ctl_status()["pools"]:
            for s in p["servers"] if p["name"] == pool else ():
                if s["addr"] == addr:
                    return s
        raise ProcError(f"no server {pool}/{addr} in forkproxyctl status")

    def wait_seen(self, pool: str, addr: str, after: float | None = None, timeout: float = 30) -> dict:
        """Until every worker re-read ``pool``/``addr``'s row of the shared
        table after ``after`` (default: now), by the status's ``seen``; return
        the server's status.  A change written to the row before ``after``
        (health, admin state, passive failures, ejection) then governs every
        worker's choices: a run of requests that met none of them proves it
        only for the workers that took one."""
        after = time.time() if after is None else after
        wait_until(lambda: (self.server_status(pool, addr)["seen"] or 0) > after, timeout=timeout,
                   what=f"every worker re-reading {pool}/{addr}")
        return self.server_status(pool, addr)

    def access_log(self) -> str:
        return self._log("access_log")

    def output(self) -> str:
        """What the master wrote to stdout/stderr."""
        return self.proc.log_text() if self.proc else ""

    def __enter__(self):
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


def _cmdline_mentions(pid: int, word: str) -> bool:
    try:
        return word.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while procs.pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(POLL)


class _Served:
    """A process listening on 127.0.0.1:``port``, as Backend and Memcached are.

    Subclasses give ``_argv()``, ``_proc_name()`` and ``_env()``; ``start()``
    (again after ``stop()``: the same port) returns once the port accepts.
    """

    frozen = False
    proc: Proc | None = None

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _env(self):
        return None

    def start(self, timeout: float = 15):
        if self.proc is not None and self.proc.alive():
            return self
        self.proc = Proc(self._argv(), self.dir, name=self._proc_name(), env=self._env())
        self.frozen = False
        wait_for_port(self.port, timeout=timeout, proc=self.proc)
        return self

    def stop(self, timeout: float = 10) -> None:
        if self.proc is not None:
            if self.frozen:
                self.thaw()  # else TERM would wait for the KILL
            self.proc.stop(timeout=timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def freeze(self) -> None:
        """SIGSTOP: the kernel still accepts connections, nothing answers (a hung server)."""
        self.proc.signal(signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        self.proc.signal(signal.SIGCONT)
        self.frozen = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class Backend(_Served):
    """A ``backend.py`` process (see its docstring for endpoints) on 127.0.0.1.

    Started by the constructor unless ``start=False``; ``stop()`` then
    ``start()`` brings it back on the same port.
    """

    def __init__(self, name: str, directory, port: int | None = None, start: bool = True):
        self.name = name
        self.dir = Path(directory)
        self.port = port or free_port()
        if start:
            self.start()

    @property
    def url(self) -> str:
        return f"http://{self.addr}"

    def _argv(self) -> list[str]:
        return [sys.executable, str(BACKEND_PY), "--port", str(self.port), "--name", self.name]

    def _proc_name(self) -> str:
        return f"backend-{self.name}"

    def _env(self):
        return _child_env()

    def set_fault(self, ms: int = 0, reset: bool = False) -> None:
        """Delay every later answer by ``ms``, or reset every later request (backend.py)."""
        self._get(f"/_setfault?ms={ms}&reset={int(reset)}")

    def _get(self, path: str):
        status, _, body = http_get("127.0.0.1", self.port, path)
        if status != 200:
            raise ProcError(f"backend {self.name}: {path} answered {status}")
        return json.loads(body)

    def stats(self) -> dict:
        """``{"requests": int, "by_path": {path: int}, "posts": [sha256, ...]}``."""
        return self._get("/_stats")

    def reset(self) -> None:
        self._get("/_reset")

    def set_health(self, status: int) -> None:
        """Make ``/healthz`` answer ``status`` from now on."""
        self._get(f"/_sethealth?status={status}")

    def log_text(self) -> str:
        return self.proc.log_text() if self.proc else ""

    def __repr__(self):
        return f"<Backend {self.name} {self.addr}>"


MEMCACHED = "/usr/bin/memcached"


class Memcached(_Served):
    """Debian's memcached on 127.0.0.1:PORT (``-U 0 -m 64``), started by the constructor.

    Skips the calling test when memcached is not installed.
    """

    def __init__(self, directory, port: int | None = None, start: bool = True, extra_args=()):
        binary = MEMCACHED if os.path.exists(MEMCACHED) else shutil.which("memcached")
        if not binary:
            import pytest

            pytest.skip("memcached is not installed (apt-get install memcached)")
        self.binary = binary
        self.dir = Path(directory)
        self.port = port or free_port()
        self.extra_args = list(extra_args)
        if start:
            self.start()

    def _argv(self) -> list[str]:
        argv = [self.binary, "-l", "127.0.0.1", "-p", str(self.port), "-U", "0", "-m", "64",
                *self.extra_args]
        if os.geteuid() == 0:
            argv += ["-u", "root"]  # memcached refuses to run as root without it
        return argv

    def _proc_name(self) -> str:
        return f"memcached-{self.port}"

    def command(self, line: str, timeout: float = 5) -> bytes:
        """Send one text-protocol command; return the reply up to END/OK/an error line."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            s.sendall(line.encode() + b"\r\n")
            buf = b""
            while not buf.endswith((b"END\r\n", b"OK\r\n", b"ERROR\r\n", b"STORED\r\n", b"DELETED\r\n", b"NOT_FOUND\r\n")):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
            return buf

    def stats(self) -> dict[str, str]:
        """``stats`` as a dict of strings (e.g. ``get_hits``, ``curr_items``)."""
        out = {}
        for line in self.command("stats").decode().splitlines():
            parts = line.split(" ", 2)
            if len(parts) == 3 and parts[0] == "STAT":
                out[parts[1]] = parts[2]
        return out

    def flush_all(self) -> None:
        self.command("flush_all")

    def __repr__(self):
        return f"<Memcached {self.addr}>"
