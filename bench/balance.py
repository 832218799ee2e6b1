"""Per-request cost of each balancing algorithm, in a real PoolRuntime over a real table.

    python bench/balance.py [--number 20000]

For pools of 3 and of 300 servers and every ``balance`` value (hash with
both methods, and round_robin with sticky sessions and with max_conns),
times what a request does on the balancing path: ``pick`` (with the
request's key), ``begin`` and ``end`` (the in-flight cells of the shared
table).  The table is a file-backed mmap made by ``daemon.shm`` with 8 worker
slots, as in the daemon; other slots hold some in-flight counts.  Also times
the two ways of reading cross-worker in-flight counts (live sum over slots
vs. the snapshot) and one snapshot refresh.  Figures in microseconds, best of
5 runs.  For the distribution tables, run
``python -m pytest -p no:xdist -s tests/e2e/test_balancing.py``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import timeit
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from forkproxy.config import loads  # noqa: E402
from forkproxy.core.http1.heads import parse_request_head  # noqa: E402
from forkproxy.core.http1.messages import Limits  # noqa: E402
from forkproxy.daemon import shm  # noqa: E402
from forkproxy.net import pools as pools_mod  # noqa: E402
from forkproxy.net.pools import PoolRuntime  # noqa: E402

VARIANTS = [
    ("round_robin", ""),
    ("least_conn", 'balance = "least_conn"'),
    ("ip_hash", 'balance = "ip_hash"'),
    ("hash ketama", 'balance = "hash"\nhash_key = "uri"'),
    ("hash maglev", 'balance = "hash"\nhash_key = "uri"\nhash_method = "maglev"'),
    ("random2", 'balance = "random2"'),
    ("rr + sticky", 'sticky = { cookie = "srv" }'),
    ("rr + max_conns", None),  # servers get max_conns = 1000
]


def pool_cfg(n: int, extra: str | None):
    limit = ", max_conns = 1000" if extra is None else ""
    servers = ", ".join(f'{{ addr = "10.0.{i // 250}.{i % 250 + 1}:8080"{limit} }}' for i in range(n))
    return loads(f"""
[[listener]]
name = "web"
bind = "127.0.0.1:8080"
[pool.web]
servers = [{servers}]
{extra or ""}
""").pools[0]


def runtime(tmp: Path, n: int, extra: str | None) -> PoolRuntime:
    mm, table = shm.create(str(tmp / f"t{n}.tbl"), n, 8, 1)
    for row in range(n):
        for slot in range(1, 8):
            table.inflight_add(row, slot, (row * 7 + slot) % 3)
    pool = PoolRuntime(pool_cfg(n, extra), table, list(range(n)), 0, sticky_key=bytes(32))
    pool.refresh(time.time())
    return pool


def best(stmt, number: int) -> float:
    return min(timeit.repeat(stmt, number=number, repeat=5)) / number * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--number", type=int, default=20000)
    args = ap.parse_args()
    req = parse_request_head(
        b"GET /a/b?c=1 HTTP/1.1\r\nHost: x\r\nCookie: srv=zzzz\r\n\r\n", Limits())
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        print(f"{'algorithm':16} {'3 servers':>12} {'300 servers':>12}   (us per request: pick + begin + end)")
        for name, extra in VARIANTS:
            row = []
            for n in (3, 300):
                pool = runtime(tmp, n, extra)
                seq = [0]

                def one(pool=pool, seq=seq):
                    seq[0] += 1
                    i = (pool.sticky_server(req)[0] if pool.sticky is not None else None)
                    if i is None:
                        i = pool.pick(req, f"10.1.{seq[0] % 200}.7", ())
                    pool.begin(i)
                    pool.end(i)

                row.append(best(one, args.number if n == 3 else args.number // 10))
            print(f"{name:16} {row[0]:12.2f} {row[1]:12.2f}")
        print()
        for n in (3, 16, 300):
            pool = runtime(tmp, n, 'balance = "least_conn"')
            live = best(lambda: pool.table.inflight(pool.rows[0]), args.number)
            snap = best(lambda: pool._others[0] + pool._own[0], args.number)
            refresh = best(lambda: pool.refresh(time.time()), 200)
            print(f"{n:3} servers: in-flight read live {live:.2f} us, from the snapshot {snap:.2f} us; "
                  f"snapshot refresh {refresh:.0f} us every {pools_mod.REFRESH * 1000:.0f} ms"
                  f" ({'live' if n <= pools_mod.LIVE_INFLIGHT_MAX else 'snapshot'} in use)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
