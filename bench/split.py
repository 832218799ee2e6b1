"""A weighted split's cost: a route split across two pools against a one-pool route.

    python bench/split.py [--seconds 5] [--rounds 3] [--number 100000]

Two figures:

- in process: ``core.split.Split.choose`` for a random split and for a
  sticky one (``split_by = "ip"``, and a cookie), microseconds per request
  (best of 5 timeit runs);
- end to end: keep-alive GET requests/s and p99 through a real forkproxy (2
  workers) on a one-pool route and on a route split 95/5 by client address
  across two pools of the same origin, taking turns for ``--rounds``, with
  bench/run.py's load client (wrk when installed).

Everything started here is stopped here, by pid.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import timeit
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from forkproxy.core import http1  # noqa: E402
from forkproxy.core.split import Split  # noqa: E402

BODY = """\
[[listener]]
name = "bench"
bind = "127.0.0.1:{port}"

[[route]]
path = "/split/"
pools = [{ pool = "v1", weight = 95 }, { pool = "v2", weight = 5 }]
split_by = "ip"

[[route]]
pool = "v1"

[pool.v1]
servers = [{ addr = "127.0.0.1:ORIGIN" }]

[pool.v2]
servers = [{ addr = "127.0.0.1:ORIGIN" }]
"""


def in_process(number: int) -> list[tuple[str, float]]:
    req = http1.parse_request_head(b"GET / HTTP/1.1\r\nHost: a\r\nCookie: a=1; s=0123456789\r\n"
                                   b"User-Agent: bench/1\r\n\r\n", http1.Limits())
    out = []
    for name, split in [("random", Split(("v1", "v2"), (95, 5))),
                        ("ip", Split(("v1", "v2"), (95, 5), "ip")),
                        ("cookie", Split(("v1", "v2"), (95, 5), "cookie:s"))]:
        t = min(timeit.repeat(lambda: split.choose(req, "127.0.0.1"), number=number, repeat=5))
        out.append((name, t / number * 1e6))
    return out


def end_to_end(seconds: int, rounds: int) -> tuple[list, list]:
    import run  # bench/run.py: the load client and process helpers

    args = argparse.Namespace(seconds=seconds, warmup=1, threads=2, connections=16,
                              python_client=False)
    one, split = [], []
    with tempfile.TemporaryDirectory(prefix="fp-split-") as tmp:
        ctx = run.Ctx(args, Path(tmp))
        try:
            origin = ctx.start_backend(1024)
            port = ctx.start_forkproxy(BODY.replace("ORIGIN", str(origin)))
            for _ in range(rounds):
                one.append(ctx.load("one pool", f"http://127.0.0.1:{port}/"))
                split.append(ctx.load("split", f"http://127.0.0.1:{port}/split/"))
        finally:
            ctx.close()
    return one, split


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--number", type=int, default=100000)
    ap.add_argument("--no-e2e", action="store_true", help="only the in-process figure")
    a = ap.parse_args()
    print("in process, Split.choose: " + ", ".join(f"{n} {us:.2f} us" for n, us in
                                                    in_process(a.number)))
    if a.no_e2e:
        return 0
    one, split = end_to_end(a.seconds, a.rounds)
    if not all(r.ok for r in one + split):
        print("end to end failed: " + "; ".join(r.error for r in one + split if not r.ok))
        return 1
    rps = [statistics.median(r.rps for r in rs) for rs in (one, split)]
    p99 = [statistics.median(r.p99_ms for r in rs) for rs in (one, split)]
    print(f"end to end ({one[0].tool}, median of {a.rounds}): one pool {rps[0]:.0f} req/s "
          f"p99 {p99[0]} ms, split 95/5 by src {rps[1]:.0f} req/s p99 {p99[1]} ms; "
          f"split/one = {rps[1] / rps[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
