"""Keep-alive soak: mixed requests on long-lived client connections, none lost.

    python bench/soak.py [--seconds 600] [--clients 32] [--keepalive-timeout 75s]
                         [--gap 0.5]

A forkproxy (2 workers, the in-process cache) in front of one backend
(``tests/support/backend.py``); ``--clients`` threads, each with one
keep-alive connection (``requests``), send GETs, 64 KiB POSTs (checked by
their sha256), cached GETs and slow (200 ms) requests, with an idle gap of
up to ``--gap`` seconds after each, for ``--seconds``.  Reported: requests,
failures (exceptions and wrong answers), reconnects (connections a client
had to open beyond its first: forkproxy closed one under it), and the
workers' RSS at the start and the end.  The bounded version is
tests/e2e/test_keepalive.py.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from support.configs import mixed_site  # noqa: E402
from support.procs import free_port, kill_leaked  # noqa: E402
from support.runner import Backend, ForkProxy  # noqa: E402

BODY = bytes(range(256)) * 256  # 64 KiB


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--keepalive-timeout", default="75s")
    ap.add_argument("--gap", type=float, default=0.5, help="longest idle gap (s)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fp-soak-"))
    b = Backend("b", work / "backend")
    port = free_port()
    fp = ForkProxy(work / "fp", mixed_site(port, b.addr),
                   server={"keepalive_timeout": args.keepalive_timeout, "access_log": "off"})
    fp.start()
    try:
        fp.wait_ready()
        workers = fp.wait_workers(2)
        rss0 = {w: rss_kib(w) for w in workers}
        base = f"http://127.0.0.1:{port}"
        sha = hashlib.sha256(BODY).hexdigest()
        end = time.monotonic() + args.seconds
        count = [0]
        failures: list[str] = []
        reconnects = [0]
        lock = threading.Lock()

        def client(n: int) -> None:
            rnd = random.Random(n)
            s = requests.Session()
            i = done = 0
            while time.monotonic() < end:
                kind = rnd.randrange(4)
                try:
                    if kind == 0:
                        ok = s.get(f"{base}/plain", timeout=10).status_code == 200
                    elif kind == 1:
                        r = s.post(f"{base}/upload", data=BODY, timeout=10)
                        ok = r.status_code == 200 and r.json()["sha256"] == sha
                    elif kind == 2:
                        ok = s.get(f"{base}/c/{i % 50}?hdr=Cache-Control:max-age%3D30",
                                   timeout=10).status_code == 200
                    else:
                        ok = s.get(f"{base}/slow?ms=200", timeout=10).status_code == 200
                    if not ok:
                        failures.append(f"client {n}: wrong answer ({kind})")
                except requests.RequestException as exc:
                    failures.append(f"client {n}: {exc!r}")
                i += 1
                done += 1
                time.sleep(rnd.uniform(0, args.gap))
            pools = s.get_adapter(base).poolmanager.pools
            with lock:
                count[0] += done
                reconnects[0] += sum(pools[k].num_connections for k in pools.keys()) - 1
            s.close()

        threads = [threading.Thread(target=client, args=(n,), daemon=True)
                   for n in range(args.clients)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(args.seconds + 60)
        took = time.monotonic() - t0
        rss1 = {w: rss_kib(w) for w in workers if Path(f"/proc/{w}").exists()}
        print(f"soak: {args.clients} keep-alive clients, {took:.0f} s, keepalive_timeout "
              f"{args.keepalive_timeout}, idle gaps up to {args.gap} s")
        print(f"  requests {count[0]} ({count[0] / took:.0f}/s), failures {len(failures)}, "
              f"reconnects {reconnects[0]}")
        for w in workers:
            print(f"  worker {w} RSS {rss0[w] / 1024:.1f} -> {rss1.get(w, 0) / 1024:.1f} MiB")
        for line in failures[:10]:
            print("  " + line)
        return 1 if failures or reconnects[0] else 0
    finally:
        fp.stop()
        b.stop()
        kill_leaked()


if __name__ == "__main__":
    sys.exit(main())
