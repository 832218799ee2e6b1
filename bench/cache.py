"""Cache figures: hit throughput and hit rate against nginx's proxy_cache, and memcached frozen.

    python bench/cache.py [--seconds 5] [--connections 64] [--hit-requests 20000]

1. **hits**: a 1 KiB cacheable response (``Cache-Control: max-age=3600``)
   requested over keep-alive by wrk (or bench/run.py's Python client)
   through forkproxy (2 workers, ``cache = true``) over memcached, through
   forkproxy over its embedded store (``servers = []``, ``shared_size``
   64m) and through nginx (2 workers, ``proxy_cache`` on a directory in the
   work dir), in the same run: CPU microseconds per request (forkproxy over
   memcached counts memcached's CPU too), requests/s, p50, p99, and the
   ratios.  Every request after the first is a hit on all (checked: each
   target has its own origin, whose count is printed).
2. **hit rate**: the same three caches (64 MiB each: memcached -m 64,
   shared_size 64m, nginx max_size=64m), ``--hit-requests`` GETs by 4
   keep-alive clients over 6000 URLs drawn from a Zipf law (s = 1, fixed
   seed), bodies of 1 to 48 KiB (about 150 MiB in all, so the caches evict):
   the share of answers that were hits (``X-Cache: HIT``) and requests/s.
3. **frozen memcached**: 8 client threads send GETs of a cached URL in a
   loop; after 1 s memcached gets SIGSTOP.  Printed: the per-request
   latency p50/p99/max before and after the freeze, the uncached latency
   (the same route with memcached stopped from the start would be the
   origin's; here: p50 of the misses after the freeze), the worst stall
   beyond it, and how long after the freeze the breaker opened (the
   "bypassing" line in forkproxy's error log, polled every 2 ms), and
   whether every request got a 200.

Only ratios from one run mean anything.  Everything started here is
stopped here, by pid.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import (SCENARIOS, Ctx, Result, StartError, cpu_times, nginx_conf, report,  # noqa: E402
                 steal_share, steal_warning)
from support.procs import free_port, kill_leaked, wait_for_port  # noqa: E402

BACKEND_PY = HERE.parent / "tests" / "support" / "backend.py"
PATH = "/bytes?n=1024&hdr=Cache-Control:max-age%3D3600"


def start_origin(ctx: Ctx) -> int:
    port = free_port()
    p = ctx.start("origin", [sys.executable, str(BACKEND_PY), "--port", str(port), "--name", "o"])
    wait_for_port(port, timeout=20, proc=p)
    return port


def start_memcached(ctx: Ctx) -> tuple[int, object] | None:
    binary = shutil.which("memcached") or "/usr/bin/memcached"
    if not Path(binary).exists():
        return None
    port = free_port()
    argv = [binary, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", "64", "-u", "root"]
    p = ctx.start("memcached", argv)
    wait_for_port(port, timeout=20, proc=p)
    return port, p


def start_nginx_cache(ctx: Ctx, origin: int) -> int | None:
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if not binary:
        return None
    port = free_port()
    d = ctx.dir / "nginx"
    d.mkdir(exist_ok=True)
    # nginx's workers run as an unprivileged user when started by root: let them write the cache
    ctx.dir.chmod(0o755)
    d.chmod(0o777)
    conf = d / "nginx.conf"
    conf.write_text(nginx_conf(
        d, port, f"127.0.0.1:{origin}",
        http_extra=f"proxy_cache_path {d}/cache keys_zone=bench:10m max_size=64m;",
        location_extra="proxy_cache bench; proxy_cache_lock on; "
                       "add_header X-Cache $upstream_cache_status;"))
    p = ctx.start("nginx", [binary, "-p", str(d), "-c", str(conf), "-e", str(d / "error.log")])
    ctx.wait_http(port, p, "nginx", path=PATH)
    ctx.cpu_pids[port] = [p.pid]
    return port


def forkproxy_body(origin: int, mc_port: int | None) -> str:
    """memcached at ``mc_port``, or the embedded store (None)."""
    store = f'servers = ["127.0.0.1:{mc_port}"]' if mc_port else 'servers = []\nshared_size = "64m"'
    return f"""
[cache]
{store}

[[listener]]
name = "bench"
bind = "127.0.0.1:{{port}}"

[[route]]
pool = "origin"
cache = true

[pool.origin]
servers = [{{ addr = "127.0.0.1:{origin}" }}]
"""


def origin_count(origin: int) -> int:
    c = http.client.HTTPConnection("127.0.0.1", origin, timeout=5)
    c.request("GET", "/_stats")
    doc = json.loads(c.getresponse().read())
    c.close()
    return doc["by_path"].get("/bytes", 0)


def hits(ctx: Ctx, mc_port: int, mc_pid: int) -> tuple[list[Result], dict[str, int]]:
    """The hit throughput rows, and the port of each target ("nginx", "forkproxy",
    "forkproxy-shared"; nginx absent when it could not start).  One origin each."""
    origins = {name: start_origin(ctx) for name in ("nginx", "forkproxy", "forkproxy-shared")}
    ports: dict[str, int] = {}
    try:
        port = start_nginx_cache(ctx, origins["nginx"])
        nginx = ("nginx", f"http://127.0.0.1:{port}{PATH}") if port \
            else Result("nginx", error="not installed")
        if port:
            ports["nginx"] = port
    except StartError as exc:
        nginx = Result("nginx", error=str(exc))
    fp = ctx.start_forkproxy(forkproxy_body(origins["forkproxy"], mc_port), server={"access_log": "off"})
    # a hit costs forkproxy's CPU and memcached's; nginx's cache is in its own workers
    ctx.cpu_pids[fp].append(mc_pid)
    ctx.wait_http(fp, ctx.procs[-1], "forkproxy", path=PATH)
    shared = ctx.start_forkproxy(forkproxy_body(origins["forkproxy-shared"], None),
                                 server={"access_log": "off"})
    ctx.wait_http(shared, ctx.procs[-1], "forkproxy-shared", path=PATH)
    ports.update({"forkproxy": fp, "forkproxy-shared": shared})
    rows = ctx.compare([nginx, ("forkproxy", f"http://127.0.0.1:{fp}{PATH}"),
                        ("forkproxy-shared", f"http://127.0.0.1:{shared}{PATH}")])
    for r in rows:
        if r.target in origins and not r.error:
            r.notes.append(f"origin requests: {origin_count(origins[r.target])} "
                           "(the rest were hits)")
    return rows, ports


def zipf_paths(n_urls: int, n: int, seed: int = 23) -> list[str]:
    """``n`` request targets over ``n_urls`` URLs, Zipf (s = 1), bodies of 1 to 48 KiB."""
    import bisect
    import itertools
    import random

    rnd = random.Random(seed)
    weights = list(itertools.accumulate(1 / (i + 1) for i in range(n_urls)))
    sizes = [rnd.randint(1, 48) * 1024 for _ in range(n_urls)]
    order = list(range(n_urls))
    rnd.shuffle(order)  # the hot URLs are not the small ones
    out = []
    for _ in range(n):
        i = order[bisect.bisect(weights, rnd.random() * weights[-1])]
        out.append(f"/bytes?n={sizes[i]}&u={i}&hdr=Cache-Control:max-age%3D3600")
    return out


def hit_rate(port: int, paths: list[str], clients: int = 4) -> dict:
    """GET every path (``clients`` keep-alive connections taking turns): hit share, req/s."""
    counts: dict[str, int] = {}
    lock = threading.Lock()
    it = iter(paths)

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine: dict[str, int] = {}
        while True:
            with lock:
                path = next(it, None)
            if path is None:
                break
            try:
                conn.request("GET", path)
                r = conn.getresponse()
                r.read()
                xc = r.getheader("X-Cache", "none") if r.status == 200 else f"status {r.status}"
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                xc = "error"
            mine[xc] = mine.get(xc, 0) + 1
        conn.close()
        with lock:
            for k, v in mine.items():
                counts[k] = counts.get(k, 0) + v

    t0 = time.monotonic()
    ts = [threading.Thread(target=client) for _ in range(clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    took = time.monotonic() - t0
    total = sum(counts.values())
    return {"requests": total, "hit_pct": round(100 * counts.get("HIT", 0) / max(1, total), 1),
            "rps": round(total / took), "answers": counts}


def frozen(fp_port: int, mc_proc, error_log: Path, threads: int = 8) -> dict:
    lat: list[tuple[float, float, int, str]] = []  # (start, seconds, status, x-cache)
    stop = threading.Event()
    lock = threading.Lock()

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", fp_port, timeout=30)
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                conn.request("GET", PATH)
                r = conn.getresponse()
                r.read()
                status, xc = r.status, r.getheader("X-Cache", "")
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", fp_port, timeout=30)
                status, xc = 0, "error"
            with lock:
                lat.append((t0, time.monotonic() - t0, status, xc))
        conn.close()

    log_size = error_log.stat().st_size if error_log.exists() else 0
    opened = [None]

    def watch(freeze_at):
        while not stop.is_set():
            text = error_log.read_bytes()[log_size:] if error_log.exists() else b""
            if b"bypassing" in text:
                opened[0] = time.monotonic() - freeze_at
                return
            time.sleep(0.002)

    ts = [threading.Thread(target=client) for _ in range(threads)]
    cpu_before = cpu_times()
    for t in ts:
        t.start()
    time.sleep(1.0)
    freeze_at = time.monotonic()
    mc_proc.signal(signal.SIGSTOP)
    w = threading.Thread(target=watch, args=(freeze_at,))
    w.start()
    time.sleep(3.0)
    stop.set()
    for t in ts + [w]:
        t.join(30)
    mc_proc.signal(signal.SIGCONT)
    stolen = steal_share(cpu_before, cpu_times())

    def pct(xs, p):
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] * 1000 if xs else None

    before = [d for s, d, _, _ in lat if s < freeze_at]
    after = [d for s, d, _, _ in lat if s >= freeze_at]
    uncached = [d for s, d, _, xc in lat if s >= freeze_at + 0.5 and xc == "MISS"]
    base = pct(uncached, 50) or 0.0
    return {
        "requests": len(lat), "non_200": sum(1 for _, _, st, _ in lat if st != 200),
        "before_p50_ms": pct(before, 50), "before_p99_ms": pct(before, 99),
        "after_p50_ms": pct(after, 50), "after_p99_ms": pct(after, 99),
        "after_max_ms": pct(after, 100), "uncached_p50_ms": base,
        "worst_stall_beyond_uncached_ms": (pct(after, 100) or 0) - base,
        "breaker_opened_after_s": opened[0],
        "steal_pct": stolen,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3, help="runs per target, taking turns")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--python-client", action="store_true")
    ap.add_argument("--hit-requests", type=int, default=20000, help="GETs of the hit-rate run")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    ctx = Ctx(args, Path(tempfile.mkdtemp(prefix="fp-bench-cache-")))
    try:
        mc = start_memcached(ctx)
        if mc is None:
            print("memcached is not installed: nothing to measure")
            return 1
        rows, ports = hits(ctx, mc[0], mc[1].pid)
        SCENARIOS.setdefault("cache-hits", (None, "1 KiB cached response, keep-alive"))
        print(report("cache-hits", rows, args))
        for r in rows:
            for n in r.notes:
                print(f"  {r.target}: {n}")
        paths = zipf_paths(6000, args.hit_requests)
        rates = {}
        print(f"hit rate: {len(paths)} GETs, 6000 URLs (Zipf), 1-48 KiB bodies, 64 MiB caches, "
              "4 keep-alive clients:")
        for name, port in ports.items():
            rates[name] = hit_rate(port, paths)
            print(f"  {name:18} hits {rates[name]['hit_pct']:5.1f}%  {rates[name]['rps']:6d} req/s  "
                  f"{rates[name]['answers']}")
        fp = ports["forkproxy"]
        fz = frozen(fp, mc[1], ctx.forkproxy_dirs[fp] / "error.log")
        print("memcached frozen (SIGSTOP) under load, 8 sequential clients:")
        for k, v in fz.items():
            print(f"  {k:32} {v if not isinstance(v, float) else round(v, 3)}")
        warning = steal_warning(fz["steal_pct"])
        if warning:
            print(warning)
        if args.json:
            Path(args.json).write_text(json.dumps({"hits": [r.__dict__ for r in rows],
                                                   "hit_rate": rates, "frozen": fz}, indent=2))
        return 0
    finally:
        ctx.close()
        kill_leaked()


if __name__ == "__main__":
    sys.exit(main())
