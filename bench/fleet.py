"""Servers that come and go: time from a change to the first request it moves, per worker.

    python bench/fleet.py [--workers 4] [--connections 16] [--rounds 5]

1. ``forkproxyctl add-server``: a forkproxy (``--workers``) with a pool of
   one backend ``a`` (round robin); ``--connections`` keep-alive client
   connections, each in its own thread, send GETs back to back and note
   which backend answered (``X-Backend``).  Each connection belongs to one
   worker for its life (found with ``ss -tnp`` from the connection's port).
   Then ``forkproxyctl add-server web B``; per worker, the time from the
   table write (the row's ``admin_changed``, wall clock) and from the
   command's start (a Python process: most of that is its start-up) to the
   first answer from ``b`` on any of its connections.  Then ``remove-server`` and the next round.
2. DNS: the pool is ``{ srv = "_http._tcp.app.test" }`` against
   ``tests/support/dnsserver.py`` on 127.0.0.1 (TTL 1 s, dns_min_ttl 1 s);
   the zone file is rewritten to add ``b``; the time from that rewrite to
   the first answer from ``b`` per worker.  Bounded by the TTL (the next
   resolution) + the workers' 0.2 s refresh.

3. What a fleet rate limit costs: the median latency of keep-alive GETs
   through a 1-worker forkproxy without a limit, with a node limit and with
   a fleet limit (memcached on 127.0.0.1), alternating in rounds.

Prints one line per round and the median and max over rounds and workers.

    python bench/fleet.py --sticky [--rounds 5]

4. What a sticky table costs (only this, with ``--sticky``): the median
   latency of keep-alive GETs with ``X-Client`` through a 1-worker forkproxy
   of a pool of three backends, without stickiness, with a node table and
   with a fleet table (memcached on 127.0.0.1), alternating in rounds;
   "fleet" repeats one key per connection (a memcached get per request),
   "fleet-new" sends a new key every request (a get, then an add).
   Then the same calls in one process, without HTTP: the median time of a
   ``StickTable`` lookup (and store) per request, node and fleet (less
   noisy on a busy host).
"""

from __future__ import annotations

import argparse
import http.client
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))  # forkproxy itself, for the in-process calls

from support.dnsserver import write_zone  # noqa: E402
from support.procs import Proc, free_port, kill_leaked, wait_until  # noqa: E402
from support.runner import Backend, ForkProxy  # noqa: E402

DNSSERVER_PY = REPO / "tests" / "support" / "dnsserver.py"


def fp_body(port: int, server: str) -> str:
    """One listener on ``port``, every request to pool web of one server entry."""
    return f"""
[[listener]]
name = "web"
bind = "127.0.0.1:{port}"
[[route]]
pool = "web"
[pool.web]
servers = [{server}]
"""


class Client(threading.Thread):
    """One keep-alive connection sending GETs until ``stop``; records the
    time of the first answer from each backend after ``mark``."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.conn.connect()
        self.local_port = self.conn.sock.getsockname()[1]
        self.first: dict[str, float] = {}
        self.running = True
        self.lock = threading.Lock()

    def mark(self) -> None:
        with self.lock:
            self.first = {}

    def run(self) -> None:
        while self.running:
            self.conn.request("GET", "/x")
            r = self.conn.getresponse()
            r.read()
            name = r.getheader("X-Backend")
            now = time.time()  # wall clock: compared with the table's change time
            with self.lock:
                self.first.setdefault(name, now)


def owners(fp_port: int, clients: list[Client]) -> dict[int, list[Client]]:
    """worker pid -> its client connections (``ss -tnp``: who holds the server side)."""
    out = subprocess.run(["ss", "-tnpH", "state", "established", f"( sport = :{fp_port} )"],
                         capture_output=True, text=True, check=True).stdout
    by_port = {}
    for line in out.splitlines():
        m = re.search(r":(\d+)\s+users:\(\(\"[^\"]*\",pid=(\d+)", line)
        if m:
            by_port[int(m.group(1))] = int(m.group(2))
    groups: dict[int, list[Client]] = {}
    for c in clients:
        groups.setdefault(by_port[c.local_port], []).append(c)
    return groups


def listed(fp: ForkProxy, addr: str) -> bool:
    """Whether ``forkproxyctl status`` lists a server at ``addr``."""
    return any(s["addr"] == addr for p in fp.ctl_status()["pools"] for s in p["servers"])


def per_worker(groups, name: str, since: float, timeout: float = 30) -> list[float]:
    """Seconds from ``since`` to the first answer from ``name``, per worker."""
    def seen():
        return all(any(name in c.first for c in cs) for cs in groups.values())
    wait_until(seen, timeout=timeout, what=f"every worker answering from {name}")
    return [min(c.first[name] for c in cs if name in c.first) - since for cs in groups.values()]


def start_clients(port: int, n: int, workers: int) -> tuple[list[Client], dict]:
    clients = [Client(port) for _ in range(n)]
    for c in clients:
        c.start()
    # Accepted and answered once: ss then shows which worker holds each.
    wait_until(lambda: all(c.first for c in clients), timeout=30, what="every connection served")
    groups = owners(port, clients)
    if len(groups) < workers:
        print(f"note: the {n} connections landed on {len(groups)} of {workers} workers")
    return clients, groups


def bench_add_server(args, tmp: Path) -> list[float]:
    a, b = Backend("a", tmp / "b"), Backend("b", tmp / "b")
    port = free_port()
    fp = ForkProxy(tmp / "fp", fp_body(port, f'{{ addr = "{a.addr}" }}'), server={"workers": args.workers, "access_log": "off"}).start()
    all_ret = []
    try:
        fp.wait_ready()
        fp.wait_workers(args.workers)
        clients, groups = start_clients(port, args.connections, args.workers)
        for rnd in range(args.rounds):
            for c in clients:
                c.mark()
            t_start = time.time()
            out = fp.ctl("add-server", "web", b.addr)
            assert out.returncode == 0, out.stderr
            written = next(s["admin_changed"] for p in fp.ctl_status()["pools"]
                           for s in p["servers"] if s["addr"] == b.addr)
            ret = per_worker(groups, "b", written)
            start = [x + (written - t_start) for x in ret]
            all_ret += ret
            print(f"add-server round {rnd + 1}: per worker, from the table write "
                  + " ".join(f"{x * 1000:.0f}" for x in ret) + " ms; from the command's start "
                  + " ".join(f"{x * 1000:.0f}" for x in start) + " ms")
            assert fp.ctl("remove-server", "web", b.addr).returncode == 0
            wait_until(lambda: not listed(fp, b.addr), timeout=30, what="b's row freed")
        for c in clients:
            c.running = False
    finally:
        fp.stop()
        a.stop()
        b.stop()
    return all_ret


def bench_dns(args, tmp: Path) -> list[float]:
    a, b = Backend("a", tmp / "b"), Backend("b", tmp / "b")
    dport = free_port()
    zone = tmp / "zone.json"

    def records(*backends):
        return {"_http._tcp.app.test.": {"SRV": [[10, 1, x.port, "app.test."] for x in backends]},
                "app.test.": {"A": ["127.0.0.1"]}}
    write_zone(zone, records(a), ttl=1)
    dns = Proc([sys.executable, DNSSERVER_PY, "--port", dport, "--zone", zone], tmp,
               name="dnsserver")
    wait_until(lambda: "ready" in dns.log_text(), timeout=15, what="dnsserver")
    port = free_port()
    fp = ForkProxy(tmp / "fpdns", fp_body(port, '{ srv = "_http._tcp.app.test" }'), server={"workers": args.workers, "access_log": "off",
             "resolvers": [f"127.0.0.1:{dport}"], "dns_min_ttl": "1s"}).start()
    all_t = []
    try:
        fp.wait_workers(args.workers)
        wait_until(lambda: listed(fp, a.addr), timeout=30, what="a found")
        clients, groups = start_clients(port, args.connections, args.workers)
        for rnd in range(args.rounds):
            for c in clients:
                c.mark()
            t0 = time.time()
            write_zone(zone, records(a, b), ttl=1)
            ts = per_worker(groups, "b", t0)
            all_t += ts
            print(f"dns round {rnd + 1}: per worker, from the zone change "
                  + " ".join(f"{x * 1000:.0f}" for x in ts) + " ms")
            write_zone(zone, records(a), ttl=1)
            wait_until(lambda: not listed(fp, b.addr), timeout=30, what="b's row freed")
        for c in clients:
            c.running = False
    finally:
        fp.stop()
        dns.stop()
        a.stop()
        b.stop()
    return all_t


def median_latencies(ports: dict[str, int], rounds: int, headers) -> dict[str, float]:
    """Median seconds of a keep-alive GET per target (name -> port), 250 in a
    row each in turn, ``rounds`` x 4 times; ``headers(name, n)``: the nth
    request's fields."""
    times: dict[str, list[float]] = {k: [] for k in ports}
    conns = {k: http.client.HTTPConnection("127.0.0.1", p, timeout=10) for k, p in ports.items()}
    n = 0
    for _ in range(rounds * 4):
        for k, conn in conns.items():
            for _ in range(250):
                n += 1
                fields = headers(k, n)
                t = time.perf_counter()
                conn.request("GET", "/x", headers=fields)
                conn.getresponse().read()
                times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_limit_cost(args, tmp: Path) -> dict[str, float]:
    """Median latency of one keep-alive GET through forkproxy (1 worker) with no
    rate limit, a node limit and a fleet limit (memcached on 127.0.0.1), in
    rounds alternating between the three; the limits never refuse."""
    from support.runner import Memcached

    mc, a = Memcached(tmp / "mc"), Backend("a", tmp / "b")
    fps, ports = {}, {}
    try:
        for scope in ("none", "node", "fleet"):
            ports[scope] = port = free_port()
            extra = "" if scope == "none" else (
                f'rate_limit = {{ rate = "1000000r/s", burst = 1000000, scope = "{scope}" }}')
            body = (f'[cache]\nservers = ["{mc.addr}"]\n'
                    + fp_body(port, f'{{ addr = "{a.addr}" }}').replace(
                        'pool = "web"\n[pool', f'pool = "web"\n{extra}\n[pool'))
            fps[scope] = ForkProxy(tmp / f"fp-{scope}", body,
                                   server={"workers": 1, "access_log": "off"}).start()
            fps[scope].wait_ready()
        return median_latencies(ports, args.rounds, lambda k, n: {})
    finally:
        for fp in fps.values():
            fp.stop()
        mc.stop()
        a.stop()


def bench_sticky_cost(args, tmp: Path) -> dict[str, float]:
    """Median latency of one keep-alive GET with an X-Client key through
    forkproxy (1 worker, three backends): no stickiness, a node table, a
    fleet table with the same key every request, and with a new one."""
    from support.runner import Memcached

    mc = Memcached(tmp / "mc")
    bs = [Backend(n, tmp / "b") for n in ("a", "b", "c")]
    servers = ", ".join(f'{{ addr = "{b.addr}" }}' for b in bs)
    fps, ports = {}, {}
    try:
        for scope in ("none", "node", "fleet"):
            ports[scope] = port = free_port()
            body = f'[cache]\nservers = ["{mc.addr}"]\n' + fp_body(port, servers)
            if scope != "none":
                body += f'sticky = {{ key = "header:X-Client", ttl = "30m", scope = "{scope}" }}\n'
            fps[scope] = ForkProxy(tmp / f"fp-{scope}", body,
                                   server={"workers": 1, "access_log": "off"}).start()
            fps[scope].wait_ready()
        ports["fleet-new"] = ports["fleet"]
        return median_latencies(ports, args.rounds, lambda k, n: {
            "X-Client": f"new-{n}" if k == "fleet-new" else "one-client"})
    finally:
        for fp in fps.values():
            fp.stop()
        mc.stop()
        for b in bs:
            b.stop()


def bench_sticky_calls(tmp: Path, n: int = 5000) -> dict[str, float]:
    """Median seconds of one request's sticky-table work (lookup, then store
    of the server chosen) in this process, with memcached on 127.0.0.1."""
    from types import SimpleNamespace

    from forkproxy.net.sticktable import StickTable
    from support.runner import Memcached

    mc = Memcached(tmp / "mc-calls")
    try:
        out = {}
        for name, scope, new in (("node", "node", False), ("fleet", "fleet", False),
                                 ("fleet-new", "fleet", True)):
            cfg = SimpleNamespace(key="header:x-client", ttl=1800.0, scope=scope, keys=100000)
            table = StickTable("web", cfg, [mc.addr], 0.5)
            times = []
            for i in range(n):
                value = f"{name}-{i}" if new else "one-client"
                req = SimpleNamespace(get=lambda h, v=value: v, get_all=lambda h: [])
                t = time.perf_counter()
                stuck = table.lookup(req, "127.0.0.1")
                table.store(stuck, "127.0.0.1:8080")
                times.append(time.perf_counter() - t)
            out[name] = statistics.median(times)
        return out
    finally:
        mc.stop()


def summary(what: str, xs: list[float]) -> None:
    print(f"{what}: median {statistics.median(xs) * 1000:.0f} ms, max {max(xs) * 1000:.0f} ms "
          f"over {len(xs)} worker-rounds")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--connections", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sticky", action="store_true", help="only what a sticky table costs")
    args = ap.parse_args()
    if args.sticky:
        with tempfile.TemporaryDirectory(prefix="fp-fleet-") as d:
            try:
                cost = bench_sticky_cost(args, Path(d))
                calls = bench_sticky_calls(Path(d))
            finally:
                kill_leaked()
        print("one request's sticky-table work in-process (lookup + store): "
              + ", ".join(f"{k} {v * 1e6:.0f} us" for k, v in calls.items()))
        print("median GET latency: " + ", ".join(f"{k} {v * 1e6:.0f} us" for k, v in cost.items())
              + f"; a fleet sticky table costs {(cost['fleet'] - cost['node']) * 1e6:.0f} us per "
              f"request more than a node one ({(cost['fleet-new'] - cost['node']) * 1e6:.0f} us "
              "for a new key)")
        return
    with tempfile.TemporaryDirectory(prefix="fp-fleet-") as d:
        try:
            cost = bench_limit_cost(args, Path(d) / "limits")
            add = bench_add_server(args, Path(d) / "add")
            dns = bench_dns(args, Path(d) / "dns")
        finally:
            kill_leaked()
    summary("add-server -> first request per worker (from the table write)", add)
    summary("DNS change -> first request per worker (TTL 1 s)", dns)
    print("median GET latency: " + ", ".join(f"{k} {v * 1e6:.0f} us" for k, v in cost.items())
          + f"; a fleet limit costs {(cost['fleet'] - cost['node']) * 1e6:.0f} us per request "
          "more than a node limit")


if __name__ == "__main__":
    main()
