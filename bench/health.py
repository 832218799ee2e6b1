"""Health-check figures: time to detect a dead server and to recover it, and the
cost of the shared table on the request path.

    python bench/health.py [--runs 5] [--interval 1s] [--fall 3] [--rise 2]

A real master (4 workers) in front of three real backends with active checks;
one backend is stopped and restarted ``--runs`` times.  "detect" is the time
from the backend's exit to the table showing it DOWN; "recover" from its
restart to UP.  Both are read from the shared table itself, polled every 10 ms.
The micro-benchmarks time the table operations a request and a snapshot
refresh do, in this process, over a table of the same shape.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from forkproxy.config import loads  # noqa: E402
from forkproxy.daemon import shm  # noqa: E402
from support.configs import one_pool  # noqa: E402
from support.procs import free_port, kill_leaked  # noqa: E402
from support.runner import Backend, ForkProxy  # noqa: E402


def state_of(path: str, label: str) -> str | None:
    """"up" once a check succeeded (not merely the initial state), "down", or None."""
    t = shm.open_table(path)
    try:
        h = t.read_health(t.find(label))
        if h is None or (h.state == "up" and h.last_result != "ok"):
            return None
        return h.state
    finally:
        shm.close_table(t)


def wait_state(path, label, want, timeout=60.0) -> float:
    t0 = time.monotonic()
    while state_of(path, label) != want:
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"{label} not {want} after {timeout}s")
        time.sleep(0.01)
    return time.monotonic() - t0


def transitions(args, work: Path) -> tuple[list[float], list[float]]:
    bs = [Backend(f"b{i}", work / "backends") for i in (1, 2, 3)]
    port = free_port()
    health = (f'health = {{ path = "/healthz", interval = "{args.interval}", timeout = "500ms", '
              f"rise = {args.rise}, fall = {args.fall} }}")
    fp = ForkProxy(work / "fp", one_pool(port, [b.addr for b in bs], health), {"workers": 4})
    detect, recover = [], []
    try:
        fp.start()
        fp.wait_ready(port)
        path = str(Path(fp.parsed()["server"]["runtime_dir"]) / "health.tbl")
        label = f"web/{bs[1].addr}"
        wait_state(path, label, "up")
        for _ in range(args.runs):
            bs[1].stop()
            detect.append(wait_state(path, label, "down"))
            bs[1].start()
            recover.append(wait_state(path, label, "up"))
    finally:
        fp.stop()
        for b in bs:
            b.stop()
    return detect, recover


def table_costs() -> dict[str, float]:
    """Microseconds per operation, over a 3-server pool and 8 worker slots."""
    from forkproxy.net.pools import PoolRuntime  # imports gevent: fine in the bench

    cfg = loads("""
[[listener]]
name = "web"
bind = "127.0.0.1:8080"
[[route]]
pool = "web"
[pool.web]
servers = [{ addr = "127.0.0.1:1" }, { addr = "127.0.0.1:2" }, { addr = "127.0.0.1:3" }]
""")
    d = tempfile.mkdtemp(prefix="forkproxy-bench-table-")
    mm, t = shm.create(f"{d}/health.tbl", 3, 8, 1, labels=[f"web/127.0.0.1:{i}" for i in (1, 2, 3)])
    pool = PoolRuntime(cfg.pools[0], t, [0, 1, 2], 0)
    n = 20000
    out = {}
    for name, fn in [
        ("read_health (one row)", lambda: t.read_health(1)),
        ("read_admin (one row)", lambda: t.read_admin(1)),
        ("inflight_add (one cell)", lambda: t.inflight_add(1, 0, 1)),
        ("inflight sum (8 slots)", lambda: t.inflight(1)),
        ("request path: begin + end", lambda: (pool.begin(1), pool.end(1))),
        ("snapshot refresh, 3 servers", lambda: pool.refresh(time.time())),
    ]:
        out[name] = timeit.timeit(fn, number=n) / n * 1e6
    shm.close_table(t)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--interval", default="1s")
    ap.add_argument("--fall", type=int, default=3)
    ap.add_argument("--rise", type=int, default=2)
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="forkproxy-bench-health-"))
    try:
        detect, recover = transitions(args, work)
    finally:
        kill_leaked()
    print(f"health checks: interval {args.interval}, fall {args.fall}, rise {args.rise}, "
          f"{args.runs} runs, 4 workers")
    for name, xs in (("detect (stop -> DOWN)", detect), ("recover (start -> UP)", recover)):
        print(f"  {name:<24} median {statistics.median(xs):.2f}s  "
              f"min {min(xs):.2f}s  max {max(xs):.2f}s")
    print("shared table costs (microseconds per operation):")
    for name, us in table_costs().items():
        print(f"  {name:<30} {us:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
