"""forkproxy's main job in a minute: balancing, failover, caching, the status page.

    python demo/run.py            # shows it all, then serves on http://127.0.0.1:8080/ until Ctrl-C
    python demo/run.py --once     # shows it all, stops everything, exits

It starts three demo backends (``demo/backend.py``), writes a config to a
temporary directory (one round-robin pool with active health checks and
retries, a cached ``/static/`` route, the admin endpoint), runs
``python -m forkproxy -c FILE`` in the foreground (as a child of this
script), waits until the listener answers, and then shows:

1. six requests spread over the three backends (round robin);
2. backend 2 stopped while requests keep flowing: none fails (a request
   that finds it gone is retried on another server), the health checks
   mark it down, and the admin status says so;
3. a cached response: ``X-Cache: MISS``, then ``HIT`` for the same URL;
4. the admin status page's URL, to open in a browser while it runs.

It stops everything it started, by pid, on Ctrl-C, SIGTERM or after
``--once``. Exit status: 0 when all went well, 1 when something failed to
start, a request failed, or a step did not show what it should.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
START_TIMEOUT = 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port (connections in TIME_WAIT do not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


class Child:
    """A process we started, in its own session, output in a log file."""

    def __init__(self, name, argv, logdir, env=None):
        self.name = name
        self.log = Path(logdir) / f"{name.replace(' ', '-')}.log"
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self.pid = self.popen.pid

    def alive(self):
        return self.popen.poll() is None

    def stop(self, timeout=10):
        """TERM, wait, KILL; then KILL, by pid, anything left in its process group."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        for pid in group_members(self.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def tail(self, n=30):
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def group_members(pgid):
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(name))
    return out


def get(port, path="/", timeout=5, conn=None):
    """One GET: (status, headers, body text); on a fresh connection unless ``conn``."""
    own = conn is None
    if own:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r, r.read().decode(errors="replace").strip()
    finally:
        if own:
            conn.close()


def wait_until_answers(port, proc, what):
    """Poll until port answers HTTP (any status); fail fast when proc died."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{what} exited with status {proc.popen.returncode}")
        try:
            get(port, timeout=2)
            return
        except (OSError, http.client.HTTPException):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer on 127.0.0.1:{port} within {START_TIMEOUT}s")
        time.sleep(0.05)


CONFIG = """\
[server]
workers = {workers}
pidfile = "{d}/forkproxy.pid"
runtime_dir = "{d}/run"
error_log = "{d}/error.log"
access_log = "{d}/access.log"
# GET / on the admin endpoint is the status page; /status is its JSON.
admin = "127.0.0.1:{admin_port}"

# No [cache] servers: each worker keeps an in-process cache.
[cache]
memory_size = "16m"

[[listener]]
name = "web"
bind = "127.0.0.1:{port}"

[[route]]
path = "/static/"
pool = "demo"
cache = true

[[route]]
pool = "demo"

[pool.demo]
balance = "round_robin"
# A request that finds a server gone is tried on the next one.
retry = {{ tries = 3 }}
# Probe every server twice a second; two failures in a row take it down.
health = {{ path = "/", interval = "500ms", timeout = "2s", rise = 1, fall = 2 }}
servers = [
{servers}
]
"""


class Stop(Exception):
    pass


class Failed(Exception):
    """A step of the demo did not show what it should."""


def admin_status(admin_port):
    """The admin endpoint's GET /status document."""
    status, _, body = get(admin_port, "/status")
    if status != 200:
        raise Failed(f"admin /status answered {status}")
    return json.loads(body)


def server_states(doc):
    """{addr: "up" | "down" | ...} of the demo pool, from an admin /status document."""
    states = {}
    for pool in doc.get("pools", []):
        for srv in pool.get("servers", []):
            state = srv.get("health") or "?"
            if srv.get("admin") not in (None, "ready"):
                state += f" ({srv['admin']})"
            states[srv["addr"]] = state
    return states


class Demo:
    """The steps of the demo against a running forkproxy; each raises ``Failed``."""

    def __init__(self, port, admin_port, backends):
        self.port, self.admin_port = port, admin_port
        self.backends = backends  # [(Child, port)]
        self.names = {f"127.0.0.1:{p}": b.name for b, p in backends}

    def status_line(self):
        states = server_states(admin_status(self.admin_port))
        return ", ".join(f"{self.names.get(a, a)} {s}" for a, s in states.items())

    def request(self, n, path="/", conn=None):
        try:
            status, r, body = get(self.port, path, conn=conn)
        except (OSError, http.client.HTTPException) as exc:
            raise Failed(f"request {n} ({path}) failed: {exc!r}") from None
        if status != 200:
            raise Failed(f"request {n} ({path}) answered {status}: {body}")
        return r, body

    def balancing(self):
        print("\n1. Balancing: six requests, round robin over three backends")
        seen = {}
        for n in range(1, 7):
            r, body = self.request(n)
            seen[r.getheader("X-Backend", "?")] = seen.get(r.getheader("X-Backend", "?"), 0) + 1
            print(f"   request {n}: 200  {body}")
        print("   spread: " + ", ".join(f"{k}: {v}" for k, v in sorted(seen.items())))
        if len(seen) < 2:
            raise Failed(f"all six requests went to {list(seen)}")

    def failover(self, timeout=20):
        victim, vport = self.backends[1]
        addr = f"127.0.0.1:{vport}"
        print(f"\n2. Failover: {victim.name} stops while requests keep coming")
        print(f"   status before: {self.status_line()}")
        victim.stop()
        print(f"   {victim.name} stopped (pid {victim.pid})")
        n, served, deadline = 0, {}, time.monotonic() + timeout
        while True:
            n += 1
            r, _ = self.request(n)
            who = r.getheader("X-Backend", "?")
            served[who] = served.get(who, 0) + 1
            if server_states(admin_status(self.admin_port)).get(addr) == "down":
                break
            if time.monotonic() > deadline:
                raise Failed(f"the health checks did not mark {victim.name} down within {timeout}s")
            time.sleep(0.05)
        # Once it is down, nothing is sent to it any more: show a few more.
        for _ in range(6):
            n += 1
            r, _ = self.request(n)
            who = r.getheader("X-Backend", "?")
            served[who] = served.get(who, 0) + 1
        print(f"   {n} requests while it went down, none failed: "
              + ", ".join(f"{k}: {v}" for k, v in sorted(served.items())))
        if served.get(victim.name):
            raise Failed(f"{victim.name} answered after it was stopped")
        print(f"   status after:  {self.status_line()}")

    def caching(self):
        print("\n3. Caching: the same URL twice (/static/ responses say max-age=60)")
        # One keep-alive connection: both requests reach the same worker,
        # whose in-process cache holds the first response.
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            caches = []
            for n in (1, 2):
                r, body = self.request(n, "/static/logo.txt", conn=conn)
                caches.append(r.getheader("X-Cache", "none"))
                print(f"   request {n}: 200  X-Cache: {caches[-1]}  {body}")
        finally:
            conn.close()
        if caches != ["MISS", "HIT"]:
            raise Failed(f"expected X-Cache MISS then HIT, got {caches}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Show forkproxy in front of three demo backends.")
    ap.add_argument("--port", type=int, default=8080, help="listener port (default 8080)")
    ap.add_argument("--admin-port", type=int, default=9901,
                    help="admin endpoint and status page port (default 9901)")
    ap.add_argument("--workers", type=int, default=2, help="forkproxy worker processes (default 2)")
    ap.add_argument("--once", action="store_true", help="exit after showing everything once")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (config and logs)")
    args = ap.parse_args(argv)

    for what, port in (("--port", args.port), ("--admin-port", args.admin_port)):
        if port_in_use(port):
            print(f"demo: 127.0.0.1:{port} is in use; pick another with {what}", file=sys.stderr)
            return 1

    def on_term(signum, frame):
        raise Stop()

    signal.signal(signal.SIGTERM, on_term)
    workdir = Path(tempfile.mkdtemp(prefix="forkproxy-demo-"))
    env = dict(os.environ)
    # Works from a checkout too: the package next to this script comes first
    # (its dependencies are the ones installed with this interpreter).
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    children: list[Child] = []
    ok = False
    try:
        backends = []
        for i in (1, 2, 3):
            port = free_port()
            name = f"backend {i}"
            b = Child(name, [sys.executable, str(HERE / "backend.py"), "--port", str(port), "--name", name], workdir)
            children.append(b)
            backends.append((b, port))
        for b, port in backends:
            wait_until_answers(port, b, b.name)

        servers = ",\n".join(f'  {{ addr = "127.0.0.1:{port}", weight = 1 }}' for _, port in backends)
        conf = workdir / "forkproxy.toml"
        conf.write_text(CONFIG.format(workers=args.workers, d=workdir, port=args.port,
                                      admin_port=args.admin_port, servers=servers))
        fp = Child("forkproxy", [sys.executable, "-m", "forkproxy", "-c", str(conf)], workdir, env=env)
        children.append(fp)
        print(f"demo: forkproxy (pid {fp.pid}) with config {conf}")
        try:
            wait_until_answers(args.port, fp, "forkproxy")
        except RuntimeError:
            err = workdir / "error.log"
            print(f"demo: forkproxy did not start; its output:\n{fp.tail()}", file=sys.stderr)
            if err.exists():
                print(f"error log:\n{err.read_text(errors='replace')[-3000:]}", file=sys.stderr)
            raise

        url = f"http://127.0.0.1:{args.port}/"
        page = f"http://127.0.0.1:{args.admin_port}/"
        print(f"demo: ready. Try:  curl {url}")
        print(f"demo: status page: {page}  (open it in a browser while the demo runs)")
        demo = Demo(args.port, args.admin_port, backends)
        try:
            demo.balancing()
            demo.failover()
            demo.caching()
        except Failed as exc:
            print(f"\ndemo: FAILED: {exc}", file=sys.stderr)
            err = workdir / "error.log"
            if err.exists():
                print(f"error log tail:\n{err.read_text(errors='replace')[-2000:]}", file=sys.stderr)
            return 1
        if not fp.alive():
            print(f"demo: forkproxy exited with status {fp.popen.returncode}", file=sys.stderr)
            return 1
        print(f"\ndemo: all good. Logs in {workdir} (error.log, access.log; removed at exit unless --keep)")
        ok = True
        if args.once:
            return 0
        print(f"demo: running: curl {url} , status page {page} ; Ctrl-C to stop")
        while fp.alive():
            try:
                fp.popen.wait(1)
            except subprocess.TimeoutExpired:
                pass
        print(f"demo: forkproxy exited with status {fp.popen.returncode}", file=sys.stderr)
        ok = False
        return 1
    except (KeyboardInterrupt, Stop):
        print("\ndemo: stopping")
        return 0 if ok else 1
    except RuntimeError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    finally:
        # forkproxy first (graceful TERM), then the backends behind it.
        for c in reversed(children):
            c.stop()
        if ok and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"demo: kept {workdir}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
