"""How long a SIGKILLed worker's replacement takes to serve.

    python bench/respawn.py [--kills 7] [--health]

One forkproxy master with one worker in front of one ``demo/backend.py``;
each round SIGKILLs the worker and times one GET sent right after: it waits
in the listener's accept queue until the replacement accepts it, so its time
is the replacement's boot.  ``--health`` adds active checks: the replacement
is then also the worker that probes, and imports requests once it serves.
Prints every time and the median.  Everything runs on 127.0.0.1 and is
stopped by pid at the end.
"""

from __future__ import annotations

import argparse
import http.client
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, timeout: float = 30) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=7)
    ap.add_argument("--health", action="store_true", help="active health checks on the pool")
    args = ap.parse_args(argv)
    d = Path(tempfile.mkdtemp(prefix="forkproxy-respawn-"))
    bport, port = free_port(), free_port()
    health = 'health = { interval = "1s" }\n' if args.health else ""
    (d / "fp.toml").write_text(f"""[server]
workers = 1
pidfile = "{d}/fp.pid"
runtime_dir = "{d}/run"
error_log = "{d}/error.log"
access_log = "{d}/access.log"

[[listener]]
name = "web"
bind = "127.0.0.1:{port}"

[[route]]
pool = "p"

[pool.p]
servers = [{{ addr = "127.0.0.1:{bport}" }}]
{health}""")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    backend = subprocess.Popen([sys.executable, str(REPO / "demo" / "backend.py"), "--port", str(bport)])
    fp = subprocess.Popen([sys.executable, "-m", "forkproxy", "-c", str(d / "fp.toml")], env=env, cwd=d)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                get(port, 2)
                break
            except OSError:
                if time.monotonic() > deadline or fp.poll() is not None:
                    print(f"forkproxy did not start; see {d}/error.log", file=sys.stderr)
                    return 1
                time.sleep(0.05)
        times = []
        for _ in range(args.kills):
            time.sleep(1.0)  # the previous replacement settles (and, with --health, probes)
            (worker,) = [int(p) for p in Path(f"/proc/{fp.pid}/task/{fp.pid}/children").read_text().split()]
            os.kill(worker, signal.SIGKILL)
            t0 = time.monotonic()
            if get(port) != 200:
                print("a request failed", file=sys.stderr)
                return 1
            times.append(time.monotonic() - t0)
        print("replacement serves after (s):", " ".join(f"{t:.2f}" for t in times),
              f"median {statistics.median(times):.2f}")
        return 0
    finally:
        fp.terminate()
        fp.wait(30)
        backend.terminate()
        backend.wait(10)


if __name__ == "__main__":
    sys.exit(main())
