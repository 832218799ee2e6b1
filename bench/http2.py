"""HTTP/2 to clients: h2load against forkproxy (a plain listener with http2 = true)
and nginx (``listen ... http2``, h2c with prior knowledge) in front of the same
origin (bench/backend.py, HTTP/1.1, a 1 KiB answer), in the same run.

    python bench/http2.py                      # 3 rounds of 5 s per target, -c 8 -m 16
    python bench/http2.py --seconds 10 --rounds 5 --clients 4 --streams 32
    python bench/http2.py --upstream-h2        # and forkproxy with an h2c pool ("fp-h2c-pool")

Reports req/s and the CPU (user + system) each target's process tree spent per
request (from /proc, as bench/run.py), and forkproxy's ratios to nginx (the
median of the rounds' ratios: targets take turns, one run each per round).
Loopback only; every process started here is stopped here, by pid.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run  # noqa: E402  (bench/run.py: processes, CPU accounting, nginx's config)
from run import Ctx, cpu_us_per_request, free_port, proc_snapshot, tree_ticks  # noqa: E402


def h2load(port: int, seconds: float, clients: int, streams: int) -> tuple[float, int, int]:
    """(req/s, requests succeeded, failed) of one h2load run of ``seconds``."""
    cmd = ["h2load", "-D", f"{seconds:g}s", "--warm-up-time", "1", "-c", str(clients),
           "-m", str(streams), "-t", "1", f"http://127.0.0.1:{port}/"]
    done_run = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    out = done_run.stdout + done_run.stderr
    rps = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    done = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed",
                     out)
    if rps is None or done is None:
        raise RuntimeError(f"could not parse h2load's output:\n{out}")
    return float(rps.group(1)), int(done.group(1)), int(done.group(2))


def start_nginx_h2c(ctx: Ctx, upstream: int) -> int:
    port = free_port()
    d = ctx.dir / "nginx"
    d.mkdir(exist_ok=True)
    conf = d / "nginx.conf"
    # keepalive_requests: nginx's default (1000) ends a connection with GOAWAY
    # after 1000 streams, and h2load's timed mode does not open another.
    conf.write_text(run.nginx_conf(d, port, f"127.0.0.1:{upstream}", listen=" http2",
                                   server_extra="keepalive_requests 100000000;"))
    p = ctx.start("nginx", [shutil.which("nginx") or "/usr/sbin/nginx", "-p", str(d), "-c",
                            str(conf), "-e", str(d / "error.log")])
    run.wait_for_port(port, timeout=20, proc=p)
    ctx.cpu_pids[port] = [p.pid]
    return port


def start_h2c_origin(ctx: Ctx) -> int:
    """nginx as an h2c origin (prior knowledge) answering 1 KiB: forkproxy's h2c pool's server."""
    port = free_port()
    d = ctx.dir / "origin-h2c"
    d.mkdir(exist_ok=True)
    conf = d / "nginx.conf"
    text = run.nginx_conf(d, port, "127.0.0.1:9", listen=" http2",
                          server_extra="keepalive_requests 100000000;")
    text = text.replace("proxy_pass http://backend;", 'return 200 "' + "x" * 1024 + '";')
    conf.write_text(text)
    p = ctx.start("origin-h2c", [shutil.which("nginx") or "/usr/sbin/nginx", "-p", str(d),
                                 "-c", str(conf), "-e", str(d / "error.log")])
    run.wait_for_port(port, timeout=20, proc=p)
    return port


def measure(ctx: Ctx, port: int, a) -> tuple[float, float | None, int]:
    roots = ctx.cpu_pids[port]
    before = tree_ticks(proc_snapshot(), roots)
    rps, ok, failed = h2load(port, a.seconds, a.clients, a.streams)
    # h2load's warm-up second is in the CPU too: counted as requests at the same rate
    cpu = cpu_us_per_request(before, tree_ticks(proc_snapshot(), roots),
                             int(ok + rps * 1.0))
    return rps, cpu, failed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--upstream-h2", action="store_true",
                    help="also forkproxy with an h2c pool (to nginx as an h2c origin)")
    a = ap.parse_args()
    if shutil.which("h2load") is None:
        print("h2load is not installed (apt-get install nghttp2-client)", file=sys.stderr)
        return 1
    ctx = Ctx(argparse.Namespace(), Path(tempfile.mkdtemp(prefix="bench-h2-")))
    try:
        origin = ctx.start_backend()
        targets = {"forkproxy": ctx.start_forkproxy(
            '[[listener]]\nname = "web"\nbind = "127.0.0.1:{port}"\nhttp2 = true\n\n'
            f'[[route]]\npool = "o"\n\n[pool.o]\nservers = [{{ addr = "127.0.0.1:{origin}" }}]\n')}
        if shutil.which("nginx") or Path("/usr/sbin/nginx").exists():
            targets["nginx"] = start_nginx_h2c(ctx, origin)
            if a.upstream_h2:  # forkproxy speaking h2c to its server too (pool protocol)
                h2o = start_h2c_origin(ctx)
                targets["fp-h2c-pool"] = ctx.start_forkproxy(
                    '[[listener]]\nname = "web"\nbind = "127.0.0.1:{port}"\nhttp2 = true\n\n'
                    '[[route]]\npool = "o"\n\n[pool.o]\nprotocol = "h2c"\n'
                    f'servers = [{{ addr = "127.0.0.1:{h2o}" }}]\n')
        runs: dict[str, list] = {t: [] for t in targets}
        for _ in range(a.rounds):
            for name, port in targets.items():
                runs[name].append(measure(ctx, port, a))
                time.sleep(0.2)
        print(f"h2load -c {a.clients} -m {a.streams}, {a.seconds:g} s x {a.rounds} rounds, "
              "GET of 1 KiB through each to bench/backend.py")
        print(f"{'target':<10} {'req/s':>9} {'CPU us/req':>11} {'failed':>7}   rounds (req/s)")
        for name, rs in runs.items():
            mid = sorted(rs)[len(rs) // 2]
            cpu = f"{mid[1]:.0f}" if mid[1] is not None else "-"
            print(f"{name:<10} {mid[0]:>9.0f} {cpu:>11} {sum(r[2] for r in rs):>7}   "
                  + " ".join(f"{r[0]:.0f}" for r in rs))
        if "nginx" in runs:
            f, n = runs["forkproxy"], runs["nginx"]
            rps = sorted(x[0] / y[0] for x, y in zip(f, n) if y[0])
            cpu = sorted(x[1] / y[1] for x, y in zip(f, n) if x[1] and y[1])
            if rps:
                print(f"forkproxy/nginx: req/s x{rps[len(rps) // 2]:.2f}"
                      + (f", CPU per request x{cpu[len(cpu) // 2]:.2f}" if cpu else ""))
        return 0
    finally:
        ctx.close()


if __name__ == "__main__":
    sys.exit(main())
