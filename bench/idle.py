"""Memory at rest: idle RSS per worker, and what each idle keep-alive client connection costs.

    python bench/idle.py [--conns 10000] [--targets forkproxy,nginx,haproxy] [--requests 200]

For each target in turn (forkproxy with 2 workers, nginx with 2 workers,
HAProxy with 2 threads, each in front of the same bench/backend.py origin):

1. 100 GETs on one connection (code loaded, upstream connection pooled),
   then the memory of every process of the target's tree: RSS and PSS
   (``/proc/PID/smaps_rollup``; PSS shares the pages forked workers still
   share with their master among them, so it is what a worker really adds).
2. ``--conns`` client connections opened, ``--batch`` at a time, each sending
   one GET and reading its answer, then left idle: keep-alive connections
   the server must hold; then ``--idle`` seconds (default 2), so that every
   one has been idle that long (forkproxy holds a connection idle over a
   second without a greenlet: net.http_session, PARK_AFTER).  The soft ``RLIMIT_NOFILE`` is raised to the hard
   limit first (the targets inherit it); fewer connections are opened when
   it cannot hold them (HAProxy wants two descriptors per ``maxconn``).
3. With all of them open: ``--requests`` GETs on a fresh connection (latency
   p50/p99: requests are still served), then the tree's memory again, and
   how many of the idle connections the server closed meanwhile (readable =
   EOF), and one GET on each of 100 of them spread over the set (they still
   answer: they were held, not dropped).
4. Printed per target: idle RSS and PSS of the largest worker, the tree's
   RSS and PSS growth per held connection in KiB, the connections held,
   closed and answering, and the latencies meanwhile.

RSS is user-space memory only: the kernel's socket buffers of an idle
connection are not in it, for any of the targets.  Every target runs with
its idle keep-alive timeout raised to 10 minutes, so opening the set cannot
outlast it.  Everything started here is stopped here, by pid.  Exit status
1 when a target failed to start or could not hold a single connection.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import select
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import (Ctx, StartError, cpu_times, interpreter, proc_snapshot, steal_share,  # noqa: E402
                 steal_warning, tree_pids)
from support.procs import kill_leaked  # noqa: E402

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
KEEPALIVE = "600s"
SPARE_FDS = 256  # descriptors kept for everything but the held connections


@dataclass
class Figures:
    target: str
    workers: int = 0
    idle_rss_kib: int | None = None  # the largest worker's, before the connections
    idle_pss_kib: int | None = None
    wanted: int = 0
    held: int = 0  # opened and answered
    closed: int = 0  # closed by the server while idle
    answering: str = ""  # "k/n" of the sample that answered a second GET
    rss_kib_per_conn: float | None = None
    pss_kib_per_conn: float | None = None
    p50_ms: float | None = None  # --requests served while the connections were open
    p99_ms: float | None = None
    served: str = ""  # "ok/asked"
    steal_pct: float | None = None
    error: str = ""
    notes: list[str] = field(default_factory=list)


def parse_mem(text: str) -> tuple[int, int | None] | None:
    """(RSS, PSS) in KiB from /proc/PID/smaps_rollup text, or (VmRSS, None) from
    /proc/PID/status text; None when neither is there."""
    rss = re.search(r"^Rss:\s+(\d+) kB", text, re.M) or re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
    if not rss:
        return None
    pss = re.search(r"^Pss:\s+(\d+) kB", text, re.M)
    return int(rss.group(1)), int(pss.group(1)) if pss else None


def mem_of(pid: int) -> tuple[int, int | None] | None:
    for name in ("smaps_rollup", "status"):
        try:
            with open(f"/proc/{pid}/{name}") as f:
                got = parse_mem(f.read())
        except OSError:
            continue
        if got:
            return got
    return None


def tree_mem(root: int) -> dict[int, tuple[int, int | None]]:
    """{pid: (RSS, PSS)} of root and its live descendants."""
    out = {}
    for pid in sorted(tree_pids(proc_snapshot(), [root])):
        m = mem_of(pid)
        if m:
            out[pid] = m
    return out


def per_conn(before: int | None, after: int | None, conns: int) -> float | None:
    """KiB per connection from two totals in KiB; None when unknown or no connection held.
    Negative when the tree shrank meanwhile (freed caches): reported as measured."""
    if before is None or after is None or conns <= 0:
        return None
    return (after - before) / conns


def conn_budget(wanted: int, fd_limit: int, fds_per_conn: int = 1) -> int:
    """How many idle connections one process can hold under ``fd_limit`` descriptors."""
    return max(0, min(wanted, (fd_limit - SPARE_FDS) // fds_per_conn))


def raise_nofile() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > 1 << 20:
        hard = 1 << 20
    if soft == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def read_response(sock: socket.socket) -> int:
    """Read one Content-Length-framed response; return its status (ConnectionError on EOF)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before a complete response")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    need = int(m.group(1)) if m else 0
    while len(body) < need:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed in the middle of a body")
        body += chunk
    return status


def get(sock: socket.socket) -> int:
    sock.sendall(REQUEST)
    return read_response(sock)


def open_idle(port: int, n: int, batch: int, deadline: float) -> tuple[list[socket.socket], int]:
    """Open up to n connections, ``batch`` at a time, each answered once; (held, failed)."""
    held: list[socket.socket] = []
    failed = 0
    while len(held) + failed < n and time.monotonic() < deadline:
        fresh = []
        for _ in range(min(batch, n - len(held) - failed)):
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=30)
                s.sendall(REQUEST)
                fresh.append(s)
            except OSError:
                failed += 1
        for s in fresh:
            try:
                if read_response(s) == 200:
                    held.append(s)
                    continue
            except (OSError, ValueError, IndexError):
                pass
            failed += 1
            s.close()
    return held, failed


def closed_by_server(socks: list[socket.socket]) -> int:
    """How many idle connections are readable now: the server closed them (EOF)."""
    poller = select.poll()  # not select(): the fds are past FD_SETSIZE
    for s in socks:
        poller.register(s, select.POLLIN)
    return len(poller.poll(0))


def latencies(port: int, n: int) -> tuple[list[float], int]:
    lat, ok = [], 0
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            try:
                status = get(s)
            except OSError:
                s.close()
                s = socket.create_connection(("127.0.0.1", port), timeout=30)
                continue
            lat.append(time.perf_counter() - t0)
            ok += status == 200
    finally:
        s.close()
    return lat, ok


def pct(values: list[float], p: float) -> float | None:
    v = sorted(values)
    return v[min(len(v) - 1, int(p / 100 * len(v)))] * 1000 if v else None


def measure(name: str, port: int, root: int, wanted: int, args) -> Figures:
    fig = Figures(target=name, wanted=wanted)
    warm, _ = latencies(port, 100)
    if not warm:
        fig.error = "no answer to the warm-up requests"
        return fig
    before = tree_mem(root)
    workers = {p: m for p, m in before.items() if p != root} or before
    fig.workers = len(workers)
    fig.idle_rss_kib = max(m[0] for m in workers.values())
    pss = [m[1] for m in workers.values() if m[1] is not None]
    fig.idle_pss_kib = max(pss) if pss else None
    cpu0 = cpu_times()
    socks, failed = open_idle(port, wanted, args.batch, time.monotonic() + args.timeout)
    try:
        fig.held = len(socks)
        if failed:
            fig.notes.append(f"{failed} connections failed to open or were not answered")
        if not socks:
            fig.error = "could not hold a single connection"
            return fig
        time.sleep(args.idle)  # the last one opened answered just now: idle this long
        lat, ok = latencies(port, args.requests)
        fig.p50_ms, fig.p99_ms, fig.served = pct(lat, 50), pct(lat, 99), f"{ok}/{args.requests}"
        after = tree_mem(root)
        fig.closed = closed_by_server(socks)
        sample = socks[:: max(1, len(socks) // 100)][:100]
        answered = 0
        for s in sample:
            try:
                answered += get(s) == 200
            except (OSError, ValueError, IndexError):
                pass
        fig.answering = f"{answered}/{len(sample)}"

        def total(mem, i):
            vals = [m[i] for m in mem.values()]
            return None if not vals or None in vals else sum(vals)

        fig.rss_kib_per_conn = per_conn(total(before, 0), total(after, 0), fig.held)
        fig.pss_kib_per_conn = per_conn(total(before, 1), total(after, 1), fig.held)
        if set(after) != set(before):
            fig.notes.append(f"processes changed meanwhile: {sorted(before)} -> {sorted(after)}")
    finally:
        for s in socks:
            s.close()
        fig.steal_pct = steal_share(cpu0, cpu_times())
    return fig


def start_target(ctx: Ctx, name: str, origin: int, conns: int) -> int | None:
    if name == "forkproxy":
        from run import FORKPROXY_ONE_POOL
        return ctx.start_forkproxy(FORKPROXY_ONE_POOL.format(origin=origin),
                                   server={"keepalive_timeout": KEEPALIVE,
                                           "worker_connections": conns + 100})
    if name == "nginx":
        return ctx.start_nginx(origin, worker_connections=conns + 1024,
                               http_extra=f"keepalive_timeout {KEEPALIVE};")
    if name == "haproxy":
        return ctx.start_haproxy(origin, maxconn=conns + 16, keepalive=KEEPALIVE)
    raise ValueError(f"unknown target {name!r}")


def report(rows: list[Figures], limit: int) -> str:
    def f(v, spec=".1f"):
        return "-" if v is None else format(v, spec)

    out = [f"idle keep-alive connections (RLIMIT_NOFILE {limit}); memory in KiB, "
           "RSS / PSS; per connection: the target's whole process tree's growth / held",
           interpreter(),
           f"{'target':<11}{'workers':>8}{'idle RSS/worker':>16}{'PSS':>8}{'held':>7}{'closed':>7}"
           f"{'KiB/conn RSS':>13}{'PSS':>7}{'still answer':>13}{'served':>9}{'p50 ms':>8}{'p99 ms':>8}"]
    for r in rows:
        if r.error:
            out.append(f"{r.target:<11}  {r.error.splitlines()[0]}")
            continue
        out.append(f"{r.target:<11}{r.workers:>8}{f(r.idle_rss_kib, 'd'):>16}{f(r.idle_pss_kib, 'd'):>8}"
                   f"{r.held:>7}{r.closed:>7}{f(r.rss_kib_per_conn, '.2f'):>13}"
                   f"{f(r.pss_kib_per_conn, '.2f'):>7}{r.answering:>13}{r.served:>9}"
                   f"{f(r.p50_ms, '.2f'):>8}{f(r.p99_ms, '.2f'):>8}")
        for n in r.notes:
            out.append(f"  {r.target}: {n}")
    warning = steal_warning(max((r.steal_pct for r in rows if r.steal_pct is not None), default=None))
    if warning:
        out.append(warning)
    for r in rows:
        if r.error and "\n" in r.error:
            out.append(f"\n{r.target}: {r.error}")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conns", type=int, default=10000, help="idle connections to open (default 10000)")
    ap.add_argument("--targets", default="forkproxy,nginx,haproxy",
                    help="comma-separated, in this order (default forkproxy,nginx,haproxy)")
    ap.add_argument("--requests", type=int, default=200,
                    help="GETs served while the connections are open (default 200)")
    ap.add_argument("--batch", type=int, default=250, help="connections opened at once (default 250)")
    ap.add_argument("--idle", type=float, default=2.0,
                    help="seconds every held connection has been idle when measured (default 2: "
                         "forkproxy parks a connection idle over a second; 0 measures at once)")
    ap.add_argument("--timeout", type=float, default=300,
                    help="seconds to open the connections in, per target (default 300)")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = ap.parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [t for t in targets if t not in ("forkproxy", "nginx", "haproxy")]
    if unknown or args.conns < 1 or args.requests < 1 or args.batch < 1:
        ap.error(f"unknown targets {unknown}" if unknown else "--conns, --requests, --batch must be >= 1")

    limit = raise_nofile()
    conns = conn_budget(args.conns, limit)
    ctx = Ctx(argparse.Namespace(), Path(tempfile.mkdtemp(prefix="fp-bench-idle-")))
    ctx.dir.chmod(0o755)  # nginx workers may run as another user when started by root
    rows: list[Figures] = []
    try:
        origin = ctx.start_backend(1024)
        for name in targets:
            # HAProxy refuses to start unless it has two descriptors per maxconn
            n = conn_budget(conns, limit, 2) if name == "haproxy" else conns
            try:
                port = start_target(ctx, name, origin, n)
            except (StartError, OSError, RuntimeError) as exc:
                rows.append(Figures(target=name, error=f"failed to start: {exc}"))
                continue
            if port is None:
                rows.append(Figures(target=name, error="not installed"))
                continue
            rows.append(measure(name, port, ctx.cpu_pids[port][0], n, args))
            ctx.procs[-1].stop(timeout=10)  # one target at a time holds the connections
    finally:
        ctx.close()
        kill_leaked()
    print(report(rows, limit))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=2))
    failed = [r for r in rows if r.error and r.error != "not installed"]
    if failed:
        print(f"bench: work directory kept: {ctx.dir}", file=sys.stderr)
    else:
        shutil.rmtree(ctx.dir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
