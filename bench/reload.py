"""Reload under keep-alive load: failed requests across many reloads, and a USR2 upgrade.

    python bench/reload.py [--seconds 60] [--every 0.5] [--connections 32] [--no-nginx]
                           [--no-upgrade]

Two backends (``tests/support/backend.py``, which names itself in
``X-Backend``) and a forkproxy (2 workers) whose file alternates between a
pool of one and a pool of the other; a HUP every ``--every`` seconds for
``--seconds``.  Load: wrk (keep-alive, ``--connections``) when installed,
plus a small client of our own (8 keep-alive connections) that records
which backend answered each request, for the share of traffic that reached
the new pool between one reload and the next.  Failures are wrk's socket
errors (connect, read, write, timeout) and non-2xx answers, plus our own
client's errors and non-2xx.  The same run is made against nginx's reload
(HUP, file alternating the same way) when nginx is installed.  Finally a
USR2 + WINCH + TERM binary upgrade of forkproxy under the same load.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from support.procs import Proc, children_of, free_port, kill_leaked, wait_until  # noqa: E402
from support.runner import Backend, ForkProxy  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import nginx_conf  # noqa: E402


def fp_body(port: int, addr: str) -> str:
    return f"""
[[listener]]
name = "web"
bind = "127.0.0.1:{port}"

[[route]]
pool = "p"

[pool.p]
servers = [{{ addr = "{addr}" }}]
"""


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Prober:
    """Keep-alive clients of our own: every answer's time and backend, every failure."""

    def __init__(self, port: int, connections: int = 8):
        self.port = port
        self.n = connections
        self.answers: list[tuple[float, str]] = []
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(self.n)]

    def run(self):
        conn = None
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("GET", "/")
                r = conn.getresponse()
                r.read()
                if 200 <= r.status < 300:
                    self.answers.append((time.monotonic(), r.getheader("X-Backend", "?")))
                else:
                    self.failures.append(f"status {r.status}")
                if r.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                self.failures.append(repr(exc))
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(15)


def start_wrk(port: int, seconds: float, connections: int):
    if not shutil.which("wrk"):
        return None
    return subprocess.Popen(["wrk", "-t2", f"-c{connections}", f"-d{int(seconds) + 1}s",
                             f"http://127.0.0.1:{port}/"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wrk_result(proc) -> dict:
    if proc is None:
        return {"requests": 0, "errors": 0, "detail": "wrk not installed"}
    out, _ = proc.communicate(timeout=120)
    res = {"requests": 0, "errors": 0, "detail": ""}
    m = re.search(r"(\d+) requests in", out)
    if m:
        res["requests"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        res["errors"] += sum(int(x) for x in m.groups())
        res["detail"] = m.group(0)
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        res["errors"] += int(m.group(1))
        res["detail"] += f" non-2xx {m.group(1)}"
    return res


def alternate(label, port, names, switch, args) -> dict:
    """Load ``port`` while ``switch(i)`` reloads to pool ``names[i % 2]`` every args.every s."""
    wrk = start_wrk(port, args.seconds, args.connections)
    hups: list[tuple[float, str]] = []
    with Prober(port) as probe:
        t0 = time.monotonic()
        i = 0
        while time.monotonic() - t0 < args.seconds:
            i += 1
            switch(i)
            hups.append((time.monotonic(), names[i % 2]))
            time.sleep(args.every)  # the bench's own pacing, not a synchronisation
    w = wrk_result(wrk)
    shares = []
    for k, (t, new) in enumerate(hups):
        end = hups[k + 1][0] if k + 1 < len(hups) else t + args.every
        window = [b for (ta, b) in probe.answers if t <= ta < end]
        if window:
            shares.append(sum(1 for b in window if b == new) / len(window))
    fails = w["errors"] + len(probe.failures)
    print(f"{label}: {len(hups)} reloads in {args.seconds:g}s; wrk {w['requests']} requests, "
          f"{w['errors']} failed ({w['detail'].strip() or 'none'}); own client "
          f"{len(probe.answers)} requests, {len(probe.failures)} failed")
    if probe.failures:
        print(f"  first failures: {probe.failures[:3]}")
    if shares:
        print(f"  share of traffic on the new pool before the next reload: median "
              f"{statistics.median(shares):.0%}, min {min(shares):.0%}, max {max(shares):.0%}")
    return {"failed": fails, "reloads": len(hups)}


def run_forkproxy(work: Path, a: Backend, b: Backend, args) -> None:
    port = free_port()
    fp = ForkProxy(work / "fp", fp_body(port, a.addr), server={"access_log": "off"})
    fp.start().wait_ready()
    try:
        fp.wait_workers(2)

        def switch(i):
            write_atomically(fp.config_path, fp.config_path.read_text().replace(
                *(((a.addr, b.addr)) if i % 2 else (b.addr, a.addr))))
            fp.reload()
        alternate("forkproxy HUP", port, (a.name, b.name), switch, args)
        if not args.no_upgrade:
            upgrade(fp, port, args)
    finally:
        fp.stop()
        for p in children_of(fp.pid) if fp.alive() else []:
            os.kill(p, signal.SIGKILL)


def upgrade(fp: ForkProxy, port: int, args) -> None:
    """USR2, wait for the new master's workers, WINCH, TERM the old master."""
    wrk = start_wrk(port, 12, args.connections)
    new_pidfile = Path(str(fp.pidfile) + ".2")
    with Prober(port) as probe:
        time.sleep(2)  # load before the upgrade (pacing)
        fp.signal(signal.SIGUSR2)
        wait_until(lambda: new_pidfile.exists() and new_pidfile.read_text().strip(), timeout=30)
        new = int(new_pidfile.read_text())
        wait_until(lambda: len(children_of(new)) == 2, timeout=30)
        time.sleep(2)
        fp.signal(signal.SIGWINCH)
        wait_until(lambda: set(children_of(fp.pid)) <= {new}, timeout=60)  # old workers gone
        fp.signal(signal.SIGTERM)
        fp.wait(60)
        time.sleep(2)
    w = wrk_result(wrk)
    print(f"forkproxy USR2+WINCH+TERM upgrade: wrk {w['requests']} requests, {w['errors']} "
          f"failed ({w['detail'].strip() or 'none'}); own client {len(probe.answers)} "
          f"requests, {len(probe.failures)} failed")
    os.kill(new, signal.SIGTERM)
    wait_until(lambda: not os.path.exists(f"/proc/{new}"), timeout=60)


def run_nginx(work: Path, a: Backend, b: Backend, args) -> None:
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx")
                                       else None)
    if not binary or args.no_nginx:
        print("nginx: not installed (or --no-nginx): no comparison")
        return
    d = work / "nginx"
    d.mkdir()
    port = free_port()
    conf = d / "nginx.conf"
    conf.write_text(nginx_conf(d, port, a.addr))
    p = Proc([binary, "-p", str(d), "-c", str(conf), "-e", str(d / "error.log")], d, name="nginx")
    try:
        wait_until(lambda: _answers(port), timeout=30)

        def switch(i):
            write_atomically(conf, nginx_conf(d, port, (b if i % 2 else a).addr))
            p.signal(signal.SIGHUP)
        alternate("nginx HUP", port, (a.name, b.name), switch, args)
    finally:
        p.stop(timeout=30, sig=signal.SIGQUIT)


def _answers(port) -> bool:
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        c.request("GET", "/")
        ok = c.getresponse().status == 200
        c.close()
        return ok
    except (OSError, http.client.HTTPException):
        return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--every", type=float, default=0.5)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--no-nginx", action="store_true")
    ap.add_argument("--no-upgrade", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fp-reload-") as tmp:
        work = Path(tmp)
        a, b = Backend("alpha", work / "b"), Backend("beta", work / "b")
        try:
            run_forkproxy(work, a, b, args)
            run_nginx(work, a, b, args)
        finally:
            a.stop()
            b.stop()
            kill_leaked()
    return 0


if __name__ == "__main__":
    sys.exit(main())
