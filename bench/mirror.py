"""Shadow traffic's cost to the client: a route that mirrors every request against one that does not.

    python bench/mirror.py [--seconds 5] [--rounds 3]

Keep-alive GET requests/s and p99 through a real forkproxy (2 workers),
with bench/run.py's load client (wrk when installed), on four routes of
the same origin, taking turns for ``--rounds``:

- ``none``: no mirror;
- ``live10``: ``mirror = { pool = "shadow", percent = 10 }``, the shadow pool a
  second bench/backend.py;
- ``live``: the same with ``percent = 100`` (every request costs a second
  exchange, on the same machine's CPUs, unless the queue is full);
- ``dead``: the same to a port nothing listens on (refused at once); a pool
  of one server is never taken out by max_fails (max_ejection_percent 50),
  so every copy tries it;
- ``dead-out``: the same with ``max_ejection_percent = 100`` on the mirror
  pool: the refusals take its server out for fail_timeout, and the copies
  fail at once without a connection (as they would with active checks);
- ``frozen``: the same to a socket that listens but never accepts (a hung
  server: copies wait their timeout, the queue fills, the rest are dropped).

The copies' fate (``forkproxy_mirror_total``, from the admin endpoint) is
printed per route: a case whose copies are mostly dropped costs less than
one whose copies are all sent.  Everything started here is stopped here,
by pid.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

BODY = """\
[[listener]]
name = "bench"
bind = "127.0.0.1:{port}"

[[route]]
path = "/live10/"
pool = "web"
mirror = { pool = "shadow", percent = 10 }

[[route]]
path = "/live/"
pool = "web"
mirror = { pool = "shadow", percent = 100 }

[[route]]
path = "/dead/"
pool = "web"
mirror = { pool = "dead", percent = 100 }

[[route]]
path = "/dead-out/"
pool = "web"
mirror = { pool = "dead_out", percent = 100 }

[[route]]
path = "/frozen/"
pool = "web"
mirror = { pool = "frozen", percent = 100, timeout = "2s" }

[[route]]
pool = "web"

[pool.web]
servers = [{ addr = "127.0.0.1:ORIGIN" }]

[pool.shadow]
servers = [{ addr = "127.0.0.1:SHADOW" }]

[pool.dead]
servers = [{ addr = "127.0.0.1:DEAD" }]

[pool.dead_out]
servers = [{ addr = "127.0.0.1:DEAD" }]
max_ejection_percent = 100

[pool.frozen]
servers = [{ addr = "127.0.0.1:FROZEN" }]
"""

CASES = (("none", "/"), ("live10", "/live10/"), ("live", "/live/"), ("dead", "/dead/"),
         ("dead-out", "/dead-out/"), ("frozen", "/frozen/"))


def end_to_end(seconds: int, rounds: int) -> dict[str, list]:
    import run  # bench/run.py: the load client and process helpers

    args = argparse.Namespace(seconds=seconds, warmup=1, threads=2, connections=16,
                              python_client=False)
    out: dict[str, list] = {name: [] for name, _ in CASES}
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(4096)  # never accepted: a frozen server
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, not listening: refused
    with tempfile.TemporaryDirectory(prefix="fp-mirror-") as tmp:
        ctx = run.Ctx(args, Path(tmp))
        try:
            origin, shadow = ctx.start_backend(1024), ctx.start_backend(1024)
            body = (BODY.replace("ORIGIN", str(origin)).replace("SHADOW", str(shadow))
                    .replace("DEAD", str(dead.getsockname()[1]))
                    .replace("FROZEN", str(hung.getsockname()[1])))
            admin = f"127.0.0.1:{run.free_port()}"
            port = ctx.start_forkproxy(body, server={"admin": admin})
            for _ in range(rounds):
                for name, path in CASES:
                    out[name].append(ctx.load(name, f"http://127.0.0.1:{port}{path}"))
            out["copies"] = copies(admin)
        finally:
            ctx.close()
            hung.close()
            dead.close()
    return out


def copies(admin: str) -> dict[str, dict[str, int]]:
    """forkproxy_mirror_total by case and result."""
    text = urllib.request.urlopen(f"http://{admin}/metrics", timeout=30).read().decode()
    names = {str(i): name for i, (name, _) in enumerate(CASES[1:])}  # BODY's routes, in order
    got: dict[str, dict[str, int]] = {}
    for line in text.splitlines():
        if line.startswith("forkproxy_mirror_total{"):
            route = line.split('route="', 1)[1].split('"', 1)[0]
            result = line.split('result="', 1)[1].split('"', 1)[0]
            got.setdefault(names[route], {})[result] = int(float(line.rsplit(" ", 1)[1]))
    return got


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    got = end_to_end(a.seconds, a.rounds)
    fate = got.pop("copies")
    runs = [r for rs in got.values() for r in rs]
    if not all(r.ok for r in runs):
        print("end to end failed: " + "; ".join(r.error for r in runs if not r.ok))
        return 1
    base = statistics.median(r.rps for r in got["none"])
    print(f"end to end ({runs[0].tool}, median of {a.rounds} rounds of {a.seconds} s):")
    for name, _ in CASES:
        rps = statistics.median(r.rps for r in got[name])
        p99 = statistics.median(r.p99_ms for r in got[name])
        cpu = [r.cpu_us for r in got[name] if r.cpu_us is not None]
        cpu_text = f"  cpu {statistics.median(cpu):5.0f} us/req" if cpu else ""
        print(f"  {name:8} {rps:7.0f} req/s  p99 {p99:7.2f} ms  ({rps / base:.2f} of none)"
              + cpu_text
              + (f"  copies: {fate.get(name)}" if name != "none" else ""))
    print("cpu: forkproxy's process tree (master and workers), per request served")
    return 0


if __name__ == "__main__":
    sys.exit(main())
