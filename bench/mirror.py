"""Shadow traffic's cost to the client: a route that mirrors every request against one that does not.

    python bench/mirror.py [--seconds 5] [--rounds 3] [--rate 1000] [--count 5000] [--no-nginx]

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
one whose copies are all sent.

A copy is real work on the same CPUs (a second exchange, its answer read),
so a saturating load pays for it in requests/s.  Two more views say what
that costs next to another proxy and to a client that is not saturating:

- nginx (when installed, 2 workers, the same origin and shadow backend)
  runs the same cases with its ``mirror`` (a full subrequest per copy:
  ``mirror /m; location = /m { internal; proxy_pass
  http://shadow$request_uri; }``; 10% through ``split_clients`` on
  ``$request_id``, the other 90% of the subrequests answered 204 without
  a connection, nginx having no sampling of its own): each proxy's rows
  are given as a share of its own ``none``;
- a fixed-rate run (``--rate`` requests/s, ``--count`` requests per target
  and round, well below capacity): a Python client on ``FIXED_CONNS``
  keep-alive connections sends each request at its scheduled time and
  measures its latency from that time (a late send counts: no coordinated
  omission); p50 and p99 of the median round (one stall of the shared
  machine would make a pooled p99), with the range of the rounds' p99, for
  ``none``, ``live10`` and ``live`` through forkproxy and nginx.

Loopback only; every run is bounded in time and count; everything started
here is stopped here, by pid.
"""

from __future__ import annotations

import argparse
import re
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

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
NGINX_CASES = (("none", "/"), ("live10", "/live10/"), ("live", "/live/"), ("dead", "/dead/"),
               ("frozen", "/frozen/"))  # nginx takes a lone server out never: no dead-out
FIXED_CASES = ("none", "live10", "live")
FIXED_CONNS = 8

# nginx_conf's extras: the mirror subrequests' upstreams and locations.
NGINX_HTTP = """
    upstream shadow { server 127.0.0.1:SHADOW; keepalive 32; }
    upstream dead { server 127.0.0.1:DEAD; }
    upstream frozen { server 127.0.0.1:FROZEN; }
    split_clients "${request_id}" $mirror10 { 10% "1"; * ""; }
"""
NGINX_PASS = """proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection "";"""
NGINX_MIRROR = """proxy_http_version 1.1; proxy_set_header Connection "";
            proxy_connect_timeout 2s; proxy_send_timeout 2s; proxy_read_timeout 2s;"""
NGINX_SERVER = f"""
        location /live10/ {{ mirror /m10; {NGINX_PASS} }}
        location /live/ {{ mirror /m; {NGINX_PASS} }}
        location /dead/ {{ mirror /mdead; {NGINX_PASS} }}
        location /frozen/ {{ mirror /mfrozen; {NGINX_PASS} }}
        location = /m {{ internal; proxy_pass http://shadow$request_uri; {NGINX_MIRROR} }}
        location = /m10 {{
            internal;
            if ($mirror10 = "") {{ return 204; }}
            proxy_pass http://shadow$request_uri; {NGINX_MIRROR}
        }}
        location = /mdead {{ internal; proxy_pass http://dead$request_uri; {NGINX_MIRROR} }}
        location = /mfrozen {{ internal; proxy_pass http://frozen$request_uri; {NGINX_MIRROR} }}
"""


def end_to_end(seconds: int, rounds: int, rate: int, count: int, nginx: bool) -> dict:
    """Every case's runs by (proxy, case), each proxy's copies' fate, and
    the fixed-rate runs' latencies by (proxy, case)."""
    import run  # bench/run.py: the load client and process helpers

    args = argparse.Namespace(seconds=seconds, warmup=1, threads=2, connections=16,
                              python_client=False)
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(4096)  # never accepted: a frozen server
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, not listening: refused
    ports = {"DEAD": dead.getsockname()[1], "FROZEN": hung.getsockname()[1]}
    with tempfile.TemporaryDirectory(prefix="fp-mirror-") as tmp:
        ctx = run.Ctx(args, Path(tmp))
        try:
            origin, ports["SHADOW"] = ctx.start_backend(1024), ctx.start_backend(1024)
            body = BODY.replace("ORIGIN", str(origin))
            for name, port in ports.items():
                body = body.replace(name, str(port))
            admin = f"127.0.0.1:{run.free_port()}"
            targets = {"forkproxy": (ctx.start_forkproxy(body, server={"admin": admin}), CASES)}
            if nginx:
                extra = NGINX_HTTP
                for name, port in ports.items():
                    extra = extra.replace(name, str(port))
                port = ctx.start_nginx(origin, http_extra=extra, server_extra=NGINX_SERVER)
                if port is not None:
                    targets["nginx"] = (port, NGINX_CASES)
            out = {"runs": {}, "fixed": {}}
            for _ in range(rounds):
                for proxy, (port, cases) in targets.items():
                    for name, path in cases:
                        out["runs"].setdefault((proxy, name), []).append(
                            ctx.load(f"{proxy} {name}", f"http://127.0.0.1:{port}{path}"))
            out["copies"] = copies(admin)
            for _ in range(rounds):
                for proxy, (port, cases) in targets.items():
                    for name, path in cases:
                        if name in FIXED_CASES:
                            out["fixed"].setdefault((proxy, name), []).append(fixed_rate(
                                f"http://127.0.0.1:{port}{path}", rate, count))
        finally:
            ctx.close()
            hung.close()
            dead.close()
    return out


def fixed_rate(url: str, rate: int, count: int, conns: int = FIXED_CONNS) -> dict:
    """``count`` keep-alive GETs at ``rate`` per second over ``conns``
    connections (request n goes on connection n % conns at t0 + n / rate);
    each latency is measured from the request's scheduled time, so a
    request sent late because the one before it was slow counts as late.
    First ``rate // 4`` requests of warm-up, not measured."""
    u = urlsplit(url)
    request = f"GET {u.path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    lat: list = [None] * count
    errors = [0]

    def one(sock, pending: bytes) -> bytes:
        sock.sendall(request)
        buf = pending
        while b"\r\n\r\n" not in buf:
            data = sock.recv(65536)
            if not data:
                raise OSError("closed")
            buf += data
        end = buf.index(b"\r\n\r\n") + 4
        if not buf.startswith(b"HTTP/1.1 200 "):
            errors[0] += 1
        m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", buf[:end])
        need = end + (int(m.group(1)) if m else 0)
        while len(buf) < need:
            data = sock.recv(65536)
            if not data:
                raise OSError("closed")
            buf += data
        return buf[need:]

    def client(k: int, t0: float, warm: int) -> None:
        try:
            with socket.create_connection((u.hostname, u.port), timeout=30) as sock:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                pending = b""
                for _ in range(warm):
                    pending = one(sock, pending)
                for n in range(k, count, conns):
                    due = t0 + n / rate
                    wait = due - time.perf_counter()
                    if wait > 0:
                        time.sleep(wait)
                    pending = one(sock, pending)
                    lat[n] = time.perf_counter() - due
        except OSError:
            errors[0] += 1

    t0 = time.perf_counter() + 0.5  # after the warm-up
    ts = [threading.Thread(target=client, args=(k, t0, max(1, rate // 4 // conns)), daemon=True)
          for k in range(conns)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=count / rate + 60)
    return {"lat": [x for x in lat if x is not None], "errors": errors[0] + lat.count(None)}


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


def _pct(values: list, p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))] * 1000


def report(got: dict, a) -> list[str]:
    """The saturating table (each proxy's rows as a share of its own none),
    then the fixed-rate latencies."""
    runs, fate = got["runs"], got["copies"]
    first = next(iter(runs.values()))[0]
    lines = [f"saturating ({first.tool}, median of {a.rounds} rounds of {a.seconds} s):"]
    for proxy in ("forkproxy", "nginx"):
        if (proxy, "none") not in runs:
            continue
        base = statistics.median(r.rps for r in runs[proxy, "none"])
        base_cpu = [r.cpu_us for r in runs[proxy, "none"] if r.cpu_us]
        for (who, name), rs in runs.items():
            if who != proxy:
                continue
            rps = statistics.median(r.rps for r in rs)
            p99 = statistics.median(r.p99_ms for r in rs)
            cpu = [r.cpu_us for r in rs if r.cpu_us is not None]
            cpu_text = f"  cpu {statistics.median(cpu):5.0f} us/req" if cpu else ""
            if cpu and base_cpu:
                cpu_text += f" (x{statistics.median(cpu) / statistics.median(base_cpu):.2f})"
            lines.append(f"  {proxy:9} {name:8} {rps:7.0f} req/s  p99 {p99:7.2f} ms  "
                         f"({rps / base:.2f} of its none){cpu_text}"
                         + (f"  copies: {fate.get(name)}" if proxy == "forkproxy"
                            and name != "none" else ""))
    lines.append("cpu: the proxy's process tree (master and workers), per request served "
                 "(x: of its none; the steadiest figure on a shared machine)")
    lines.append(f"fixed rate ({a.rate} req/s, {a.count} requests x {a.rounds} rounds, "
                 f"{FIXED_CONNS} keep-alive connections, latency from each scheduled send; "
                 "median round, [range of the rounds' p99]):")
    for (proxy, name), rs in got["fixed"].items():
        errors = sum(r["errors"] for r in rs)
        rs = [r["lat"] for r in rs if r["lat"]]
        if not rs:
            lines.append(f"  {proxy:9} {name:8} no answer ({errors} errors)")
            continue
        p50 = statistics.median(_pct(lat, 50) for lat in rs)
        p99s = [_pct(lat, 99) for lat in rs]
        lines.append(f"  {proxy:9} {name:8} p50 {p50:6.3f} ms  p99 {statistics.median(p99s):6.3f} ms"
                     f"  [{min(p99s):.2f}-{max(p99s):.2f}]  ({sum(map(len, rs))} requests, "
                     f"{errors} errors)")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=int, default=1000, help="fixed-rate run: requests/s")
    ap.add_argument("--count", type=int, default=5000,
                    help="fixed-rate run: requests per target and round")
    ap.add_argument("--no-nginx", action="store_true", help="forkproxy only")
    a = ap.parse_args()
    if a.rate < 1 or a.count < 1 or a.count / a.rate > 60:
        ap.error("--rate and --count: at least 1, at most 60 s per fixed-rate run")
    got = end_to_end(a.seconds, a.rounds, a.rate, a.count, not a.no_nginx)
    runs = [r for rs in got["runs"].values() for r in rs]
    if not all(r.ok for r in runs):
        print("end to end failed: " + "; ".join(r.error for r in runs if not r.ok))
        return 1
    print("\n".join(report(got, a)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
