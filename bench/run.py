"""forkproxy benchmark: the same load against a backend directly, through nginx, HAProxy, forkproxy.

    python bench/run.py                         # scenario get1k, 3 rounds of 10 s per target and shape
    python bench/run.py --seconds 5 --rounds 5 --json out.json
    python bench/run.py --shape t2c64           # wrk -t2 -c64 only (default: t1c32,t2c64)
    python bench/run.py --list

The headline figure is the CPU (user + system) each target's whole
process tree spent per request served, read from /proc before and after
each run: it barely depends on how the machine is shared, unlike req/s
and latency.  Every number is measured in the same run on the same
machine; compare the ratios (to nginx, to HAProxy), not the absolute
numbers.  The targets take turns, one run each per round (``--rounds``):
a shared machine's speed drifts by tens of percent within minutes, so a
ratio is the median of the rounds' ratios, each from runs made close
together, and a row shows its target's median round; one table per load
shape.  The "floor" row is bench/floor.py, a gevent relay that does
nothing but move the bytes: the ceiling of any proxy built on gevent
workers, here.  Everything started here is stopped here, by pid. Exit
status 1 when any target failed to start or its load run failed; 2 on
bad arguments.

Adding a scenario: write ``def my_scenario(ctx) -> list[Result]`` decorated
with ``@scenario("name", "one line of help")``; use ``ctx.start_backend()``,
``ctx.start_nginx(port)``, ``ctx.start_haproxy(port)``, ``ctx.start_forkproxy(body)``,
then ``ctx.compare(targets)`` (or ``ctx.load(url)`` for a single run).
Rows named "nginx" and "haproxy" get ratio columns; "direct", "nginx",
"haproxy", "floor" and "forkproxy" the ratio lines.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))

from support.procs import POLL, Proc, free_port, kill_leaked, wait_for_port  # noqa: E402


class StartError(RuntimeError):
    """A benchmark target did not come up."""


@dataclass
class Result:
    target: str
    rps: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    requests: int = 0
    errors: int = 0
    tool: str = ""
    error: str = ""  # set when the target failed to start or the run failed
    notes: list[str] = field(default_factory=list)
    rounds: list[float] = field(default_factory=list)  # req/s of each round (Ctx.compare)
    steal_pct: float | None = None  # CPU the host took from this VM during the run (worst round)
    cpu_us: float | None = None  # CPU microseconds the target spent per request (median round)
    cpu_rounds: list = field(default_factory=list)  # cpu_us of each round (None: not measured)
    p99_rounds: list = field(default_factory=list)  # p99_ms of each round
    shape: str = ""  # the load's shape, "t2c64" = 2 wrk threads, 64 connections

    @property
    def ok(self) -> bool:
        return not self.error and self.rps is not None


# -- the machine -------------------------------------------------------------

def cpu_times() -> list[int] | None:
    """The "cpu" line of /proc/stat (jiffies: user nice system idle iowait irq softirq steal ...)."""
    try:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None


def steal_share(before: list[int] | None, after: list[int] | None) -> float | None:
    """Percent of the CPU time between two ``cpu_times`` that the hypervisor stole.

    On a shared VM this is what makes a run slow for reasons outside it; None
    when it cannot be told (no /proc/stat, a kernel without the column, no time).
    """
    if not before or not after or len(before) < 8 or len(after) < 8:
        return None
    total = sum(after[:8]) - sum(before[:8])  # guest time is already in user and nice
    return 100.0 * (after[7] - before[7]) / total if total > 0 else None


def parse_stat(text: str) -> tuple[int, int] | None:
    """(ppid, CPU clock ticks) from the text of /proc/PID/stat, or None when malformed.

    The ticks are utime + stime + cutime + cstime (fields 14-17): the
    process's own time and that of the children it has reaped.  A child's
    time reaches its parent's cutime only when the parent waits for it, so
    the live children are not in it; ``tree_ticks`` adds them, and the
    cutime term keeps the time of a worker that exited during a run.
    """
    try:
        # comm (field 2) may hold spaces and parentheses: split after the last ')'
        rest = text[text.rindex(")") + 2:].split()
        if len(rest) < 15:
            return None
        return int(rest[1]), sum(int(x) for x in rest[11:15])
    except ValueError:
        return None


def proc_snapshot() -> dict[int, tuple[int, int]]:
    """{pid: (ppid, ticks)} of every process now in /proc (zombies included:
    their time is not yet in their parent's cutime)."""
    snap = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    st = parse_stat(f.read())
            except OSError:
                continue  # gone while we looked
            if st is not None:
                snap[int(name)] = st
    return snap


def tree_pids(snap: dict[int, tuple], roots) -> set[int]:
    """The pids of ``roots`` and all their descendants in ``snap`` ({pid: (ppid, ...)});
    roots not in ``snap`` (gone) are left out."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, *_) in snap.items():
        children.setdefault(ppid, []).append(pid)
    seen: set[int] = set()
    todo = [r for r in roots if r in snap]
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo.extend(children.get(pid, ()))
    return seen


def tree_ticks(snap: dict[int, tuple[int, int]], roots) -> int:
    """CPU ticks of the processes ``roots`` and all their descendants in ``snap``
    (each counted once, however the roots are related)."""
    return sum(snap[pid][1] for pid in tree_pids(snap, roots))


CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_us_per_request(ticks_before: int, ticks_after: int, requests: int, hz: int = CLK_TCK) -> float | None:
    """Microseconds of CPU per request between two ``tree_ticks``; None without
    requests or when the count went backwards (a root exited and took its time away)."""
    if requests <= 0 or ticks_after < ticks_before:
        return None
    return (ticks_after - ticks_before) * 1e6 / hz / requests


# -- load generators --------------------------------------------------------

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def parse_wrk(text: str) -> dict:
    """Requests/s, p50/p99 in ms, request and error counts from ``wrk --latency`` output."""
    out = {"rps": None, "p50_ms": None, "p99_ms": None, "requests": 0, "errors": 0}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if m:
        out["rps"] = float(m.group(1))
    for pct, key in (("50", "p50_ms"), ("99", "p99_ms")):
        m = re.search(rf"^\s*{pct}(?:\.0+)?%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        if m:
            out[key] = float(m.group(1)) * _UNITS[m.group(2)]
    m = re.search(r"(\d+) requests in", text)
    if m:
        out["requests"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        out["errors"] += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m:
        out["errors"] += int(m.group(1))
    return out


def load_wrk(url: str, seconds: int, threads: int, connections: int) -> dict:
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    res = parse_wrk(proc.stdout)
    if res["rps"] is None:
        raise RuntimeError(f"could not parse wrk output:\n{proc.stdout}")
    res["tool"] = " ".join(cmd[:-1])
    return res


def load_python(url: str, seconds: int, threads: int, connections: int) -> dict:
    """Fallback without wrk: ``min(connections, 16)`` keep-alive connections, one thread each."""
    u = urlsplit(url)
    n = max(1, min(connections, 16))
    deadline = time.monotonic() + seconds
    lat: list[list[float]] = [[] for _ in range(n)]
    errs = [0] * n

    def run(i):
        conn = None
        while time.monotonic() < deadline:
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
                t0 = time.perf_counter()
                conn.request("GET", u.path or "/")
                r = conn.getresponse()
                r.read()
                lat[i].append(time.perf_counter() - t0)
                if r.status >= 400:
                    errs[i] += 1
            except (OSError, http.client.HTTPException):
                errs[i] += 1
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    t0 = time.monotonic()
    ts = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    elapsed = time.monotonic() - t0
    all_lat = sorted(x for per in lat for x in per)
    if not all_lat:
        raise RuntimeError("python client: no request succeeded")

    def pct(p):
        return all_lat[min(len(all_lat) - 1, int(p / 100 * len(all_lat)))] * 1000

    return {
        "rps": len(all_lat) / elapsed,
        "p50_ms": pct(50),
        "p99_ms": pct(99),
        "requests": len(all_lat),
        "errors": sum(errs),
        "tool": f"python client ({n} keep-alive connections)",
    }


# -- the context scenarios run in -------------------------------------------



def nginx_conf(d: Path, port: int, upstream: str, *, workers: int = 2, listen: str = "",
               http_extra: str = "", server_extra: str = "", location_extra: str = "",
               worker_connections: int = 4096) -> str:
    """The nginx every bench compares against: a proxy to ``upstream`` ("host:port")
    with upstream keep-alive, access log off, its files in ``d``; the extras are
    nginx directives added to the http, server and location blocks (``listen``
    to the listen line, e.g. " ssl")."""
    return f"""daemon off;
master_process on;
worker_processes {workers};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections {worker_connections}; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    {http_extra}
    upstream backend {{ server {upstream}; keepalive 32; }}
    server {{
        listen 127.0.0.1:{port}{listen};
        {server_extra}
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            {location_extra}
        }}
    }}
}}
"""


def haproxy_conf(port: int, upstream: str, *, threads: int = 2, maxconn: int = 4096,
                 keepalive: str = "75s") -> str:
    """The HAProxy compared against: ``threads`` threads (its way of using as many
    CPUs as 2 workers do), keep-alive on both sides, idle server connections
    reused by any client (``http-reuse always``), no log lines at all.
    ``maxconn``: HAProxy refuses to start unless RLIMIT_NOFILE allows about
    twice as many descriptors.  ``keepalive``: how long an idle client
    connection is kept (75 s, as nginx's and forkproxy's defaults)."""
    return f"""global
    nbthread {threads}
    maxconn {maxconn}
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client {keepalive}
    timeout server 60s
    timeout http-keep-alive {keepalive}
frontend bench
    bind 127.0.0.1:{port}
    default_backend origin
backend origin
    server s1 {upstream}
"""


class Ctx:
    """Where a scenario starts processes and runs load; ``close()`` stops all of them."""

    def __init__(self, args, workdir: Path):
        self.args = args
        self.dir = workdir
        self.procs: list[Proc] = []
        self.forkproxy_dirs: dict[int, Path] = {}  # listener port -> its config, logs, runtime dir
        # listener port -> the pids whose process trees a request to it costs CPU in
        self.cpu_pids: dict[int, list[int]] = {}
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), self.env.get("PYTHONPATH")]))
        # --also: (target name "forkproxy@<commit>", directory holding that commit's forkproxy/)
        self.also: list[tuple[str, Path]] = []

    def add_commit(self, rev: str) -> None:
        """Make forkproxy at ``rev`` a target of the forkproxy scenarios
        ("forkproxy@<short commit>"): ``git archive`` of its ``forkproxy/``
        into the work directory, run with that directory first on PYTHONPATH."""
        short = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", rev + "^{commit}"],
                               check=True, capture_output=True, text=True).stdout.strip()
        dest = self.dir / f"src-{short}"
        dest.mkdir()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", short, "forkproxy"],
                                 check=True, stdout=subprocess.PIPE).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        self.also.append((f"forkproxy@{short}", dest))

    def wants(self, target: str) -> bool:
        """Whether ``--targets`` keeps ``target`` ("forkproxy" keeps every "forkproxy@...")."""
        only = getattr(self.args, "targets", None)
        return not only or target in only or target.split("@")[0] in only

    def started(self, target: str, start, path: str = "/"):
        """``_started``, or None (left out of ``compare``) when ``--targets`` leaves it out."""
        return _started(target, start, path) if self.wants(target) else None

    def forkproxy_targets(self, body: str, name: str = "forkproxy", **kw) -> list:
        """This tree's forkproxy with ``body``, then the same at every ``--also`` commit."""
        return [self.started(name, lambda: self.start_forkproxy(body, **kw))] + [
            self.started(f"{name}@{label.split('@')[1]}",
                         lambda src=src: self.start_forkproxy(body, src=src, **kw))
            for label, src in self.also]

    def start(self, name: str, argv, env=None, cwd=None) -> Proc:
        p = Proc(argv, self.dir, name=name, env=env or self.env, cwd=cwd)
        self.procs.append(p)
        return p

    def wait_http(self, port: int, proc: Proc, what: str, path: str = "/", want: int = 200, timeout: float = 30):
        """Poll until GET path answers ``want``: the whole chain (proxy -> backend) is up."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            if not proc.alive():
                raise StartError(f"{what} exited with {proc.returncode}:\n{proc.log_tail(20)}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", path)
                r = conn.getresponse()
                r.read()
                conn.close()
                if r.status == want:
                    return
                last = f"status {r.status}"
            except (OSError, http.client.HTTPException) as exc:
                last = repr(exc)
            if time.monotonic() > deadline:
                raise StartError(f"{what} not answering {want} on port {port} after {timeout}s ({last}):\n{proc.log_tail(20)}")
            time.sleep(POLL)

    def start_backend(self, size: int = 1024) -> int:
        port = free_port()
        p = self.start("backend", [sys.executable, str(HERE / "backend.py"), "--port", str(port), "--size", str(size)])
        wait_for_port(port, timeout=20, proc=p)
        self.cpu_pids[port] = [p.pid]
        return port

    def start_floor(self, upstream_port: int, workers: int = 2) -> int:
        """bench/floor.py (the least a gevent proxy costs) in front of upstream_port."""
        port = free_port()
        p = self.start("floor", [sys.executable, str(HERE / "floor.py"), "--port", str(port),
                                 "--upstream", str(upstream_port), "--workers", str(workers)])
        self.wait_http(port, p, "floor")
        self.cpu_pids[port] = [p.pid]
        return port

    def start_nginx(self, upstream_port: int, workers: int = 2, **extra) -> int | None:
        """nginx in front of upstream_port, or None when nginx is not installed;
        ``extra``: more keyword arguments of ``nginx_conf``."""
        binary = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
        if not binary:
            return None
        port = free_port()
        d = self.dir / "nginx"
        d.mkdir(exist_ok=True)
        conf = d / "nginx.conf"
        conf.write_text(nginx_conf(d, port, f"127.0.0.1:{upstream_port}", workers=workers, **extra))
        p = self.start("nginx", [binary, "-p", str(d), "-c", str(conf), "-e", str(d / "error.log")])
        self.wait_http(port, p, "nginx")
        self.cpu_pids[port] = [p.pid]
        return port

    def start_haproxy(self, upstream_port: int, threads: int = 2, **extra) -> int | None:
        """HAProxy in front of upstream_port (``nbthread``, keep-alive and
        ``http-reuse`` to the server, no log), or None when not installed;
        ``extra``: more keyword arguments of ``haproxy_conf``."""
        binary = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None)
        if not binary:
            return None
        port = free_port()
        d = self.dir / "haproxy"
        d.mkdir(exist_ok=True)
        conf = d / "haproxy.cfg"
        conf.write_text(haproxy_conf(port, f"127.0.0.1:{upstream_port}", threads=threads, **extra))
        # -db: foreground, no master process; stopped by pid like the others
        p = self.start("haproxy", [binary, "-db", "-f", str(conf)], cwd=d)
        self.wait_http(port, p, "haproxy")
        self.cpu_pids[port] = [p.pid]
        return port

    def start_forkproxy(self, body: str, workers: int = 2, server: dict | None = None,
                        src: Path | None = None) -> int:
        """forkproxy with ``body`` (use ``{port}`` for the listener port); returns the port.
        ``src``: a directory with another commit's ``forkproxy/`` to run instead (``add_commit``)."""
        port = free_port()
        d = self.forkproxy_dirs[port] = Path(tempfile.mkdtemp(prefix="forkproxy", dir=self.dir))
        srv = {
            "workers": workers,
            "pidfile": str(d / "forkproxy.pid"),
            "runtime_dir": str(d / "run"),
            "error_log": str(d / "error.log"),
            # nginx runs with access_log off; so does forkproxy here.
            "access_log": "off",
            **(server or {}),
        }
        lines = ["[server]"] + [f"{k} = {json.dumps(v)}" for k, v in srv.items()]
        conf = d / "forkproxy.toml"
        conf.write_text("\n".join(lines) + "\n\n" + body.replace("{port}", str(port)))
        env = dict(self.env, PYTHONPATH=str(src)) if src is not None else None
        p = self.start("forkproxy", [sys.executable, "-m", "forkproxy", "-c", str(conf)], env=env)
        try:
            self.wait_http(port, p, "forkproxy")
        except StartError as exc:
            err = d / "error.log"
            tail = err.read_text(errors="replace")[-2000:] if err.exists() else ""
            raise StartError(f"{exc}\nerror log:\n{tail}") from None
        self.cpu_pids[port] = [p.pid]
        return port

    def load(self, target: str, url: str, shape: tuple[int, int] | None = None) -> Result:
        """One warm-up then one measured run of ``shape`` (wrk threads, connections;
        default ``--threads``/``--connections``) against url.  When the url's
        port was started by this Ctx, ``cpu_us`` is the CPU its process trees
        (``cpu_pids``) spent during the measured run, per request."""
        a = self.args
        threads, conns = shape or (a.threads, a.connections)
        fn = load_wrk if (shutil.which("wrk") and not a.python_client) else load_python
        if a.warmup:
            try:
                fn(url, a.warmup, threads, conns)
            except Exception:  # noqa: BLE001 - a failed warm-up shows in the real run
                pass
        roots = self.cpu_pids.get(urlsplit(url).port, [])
        ticks = tree_ticks(proc_snapshot(), roots) if roots else None
        before = cpu_times()
        try:
            r = Result(target=target, **fn(url, a.seconds, threads, conns))
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            return Result(target=target, error=f"load failed: {exc}", shape=shape_name(threads, conns))
        r.steal_pct = steal_share(before, cpu_times())
        if ticks is not None:
            r.cpu_us = cpu_us_per_request(ticks, tree_ticks(proc_snapshot(), roots), r.requests)
        r.shape = shape_name(threads, conns)
        return r

    def shapes(self) -> list[tuple[int, int]]:
        """The load shapes to run: ``args.shapes`` (run.py's ``--shape``), else
        the one of ``--threads``/``--connections`` (the other bench scripts)."""
        return getattr(self.args, "shapes", None) or [(self.args.threads, self.args.connections)]

    def compare(self, targets: list) -> list[Result]:
        """Load each target once per round, in turn, for ``--rounds`` rounds, per shape.

        ``targets``: (name, url) pairs, or a ``Result`` (a target that did not
        start), kept in its place.  For every shape (``shapes()``, one after
        the other) each row is the median round of its target (req/s, p50,
        p99), with the totals of requests and errors and every round's req/s,
        p99 and CPU per request; a failed run fails the row.
        """
        n = max(1, getattr(self.args, "rounds", 1))
        targets = [t for t in targets if t is not None]  # left out by --targets
        rows: list[Result] = []
        for shape in self.shapes():
            runs: dict[str, list[Result]] = {t[0]: [] for t in targets if not isinstance(t, Result)}
            for _ in range(n):
                for t in targets:
                    if not isinstance(t, Result):
                        runs[t[0]].append(self.load(*t, shape=shape))
            for t in targets:
                if isinstance(t, Result):
                    rows.append(Result(target=t.target, error=t.error, shape=shape_name(*shape)))
                else:
                    rows.append(_median_row(runs[t[0]]))
        return rows

    def close(self):
        for p in reversed(self.procs):
            p.stop(timeout=10)


# -- scenarios ----------------------------------------------------------------

SCENARIOS: dict[str, tuple] = {}


def scenario(name: str, help: str):
    def register(fn):
        SCENARIOS[name] = (fn, help)
        return fn

    return register


def _started(target: str, start, path: str = "/"):
    """(target, url) once ``start() -> port | None`` brought it up; else its error row."""
    try:
        port = start()
    except (StartError, OSError, RuntimeError) as exc:
        return Result(target=target, error=f"failed to start: {exc}")
    if port is None:
        return Result(target=target, error="not installed")
    return target, f"http://127.0.0.1:{port}{path}"


def _median(values: list[float]) -> float:
    v = sorted(values)
    return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2


def _median_row(runs: list[Result]) -> Result:
    """One row for a target's rounds: req/s and CPU per request are the medians
    of the rounds' (each on its own), p50 and p99 those of the median-req/s round."""
    bad = [r for r in runs if not r.ok]
    if bad:
        return bad[0]
    mid = sorted(runs, key=lambda r: r.rps)[len(runs) // 2]
    cpu = [r.cpu_us for r in runs if r.cpu_us is not None]
    return Result(target=mid.target, rps=_median([r.rps for r in runs]), p50_ms=mid.p50_ms,
                  p99_ms=mid.p99_ms, requests=sum(r.requests for r in runs),
                  errors=sum(r.errors for r in runs), tool=mid.tool,
                  rounds=[r.rps for r in runs], steal_pct=_worst(r.steal_pct for r in runs),
                  cpu_us=_median(cpu) if cpu else None, cpu_rounds=[r.cpu_us for r in runs],
                  p99_rounds=[r.p99_ms for r in runs], shape=mid.shape)


def shape_name(threads: int, connections: int) -> str:
    return f"t{threads}c{connections}"


def parse_shapes(text: str) -> list[tuple[int, int]]:
    """"t1c32,t2c64" -> [(1, 32), (2, 64)]; ValueError on anything else."""
    shapes = []
    for part in text.split(","):
        m = re.fullmatch(r"t(\d+)c(\d+)", part.strip())
        if not m or int(m.group(1)) < 1 or int(m.group(2)) < int(m.group(1)):
            raise ValueError(f"bad shape {part.strip()!r}: want tNcM with 1 <= N <= M, e.g. t2c64")
        shapes.append((int(m.group(1)), int(m.group(2))))
    return shapes


def round_ratios(top: list, base: list) -> list[float]:
    """Each round's top/base, for the rounds where both were measured (and base > 0);
    [] when the two did not run the same number of rounds."""
    if len(top) != len(base):
        return []
    return [t / b for t, b in zip(top, base) if t is not None and b]


def ratio_of(top: list, base: list) -> float | None:
    """The median of the rounds' ratios (each round's runs were close in time)."""
    each = round_ratios(top, base)
    return _median(each) if each else None


def _worst(values) -> float | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


FORKPROXY_ONE_POOL = """\
[[listener]]
name = "bench"
bind = "127.0.0.1:{{port}}"

[[route]]
pool = "origin"

[pool.origin]
servers = [{{ addr = "127.0.0.1:{origin}" }}]
"""


@scenario("get1k", "keep-alive GET of a 1 KiB response: direct, nginx, HAProxy, gevent floor, forkproxy")
def get1k(ctx: Ctx) -> list[Result]:
    origin = ctx.start_backend(1024)
    body = FORKPROXY_ONE_POOL.format(origin=origin)
    return ctx.compare([ctx.started("direct", lambda: origin),
                        ctx.started("nginx", lambda: ctx.start_nginx(origin)),
                        ctx.started("haproxy", lambda: ctx.start_haproxy(origin)),
                        ctx.started("floor", lambda: ctx.start_floor(origin)),
                        *ctx.forkproxy_targets(body)])


@scenario("metrics", "get1k through forkproxy with metrics off, then on (server.admin set)")
def metrics(ctx: Ctx) -> list[Result]:
    origin = ctx.start_backend(1024)
    body = FORKPROXY_ONE_POOL.format(origin=origin)
    admin = {"admin": f"127.0.0.1:{free_port()}"}
    return ctx.compare([*ctx.forkproxy_targets(body),
                        *ctx.forkproxy_targets(body, "metrics", server=admin)])


@scenario("outlier", "get1k through forkproxy without, then with outlier detection on the pool")
def outlier(ctx: Ctx) -> list[Result]:
    origin = ctx.start_backend(1024)
    body = FORKPROXY_ONE_POOL.format(origin=origin)
    detected = body + 'outlier = { consecutive_5xx = 5, consecutive_gateway_failure = 3 }\n'
    return ctx.compare([_started("forkproxy", lambda: ctx.start_forkproxy(body)),
                        _started("outlier", lambda: ctx.start_forkproxy(detected))])


# -- report -------------------------------------------------------------------


STEAL_WARN = 5.0  # percent of stolen CPU in a round past which a run is not worth quoting


def steal_warning(steal_pct: float | None) -> str | None:
    """The line to print when the host took more than STEAL_WARN percent of the CPU."""
    if steal_pct is None or steal_pct <= STEAL_WARN:
        return None
    return (f"warning: the host took up to {steal_pct:.0f}% of this VM's CPU during a run "
            f"(steal%): these figures measure its other guests as much as the targets")


def _fmt(v, spec=".1f"):
    return "-" if v is None else format(v, spec)


def _range(top: list, base: list) -> str:
    """"M (rounds LO-HI)": the median of the rounds' ratios and their range; "-" if none."""
    each = round_ratios(top, base)
    if not each:
        return "-"
    if len(each) == 1:
        return f"{each[0]:.3f}"
    return f"{_median(each):.3f} (rounds {min(each):.3f}-{max(each):.3f})"


BASELINES = ("nginx", "haproxy")  # the columns of ratios, when these rows ran
RATIO_LINES = [("forkproxy", base) for base in ("nginx", "haproxy", "direct", "floor")] + [
    ("metrics", "forkproxy"), ("outlier", "forkproxy")]


def interpreter() -> str:
    """The Python that runs forkproxy here (the bench starts it with its own
    ``sys.executable``), and whether its interpreter is a shared libpython.

    It moves the figures: Debian's ``/usr/bin/python3`` (the one the README's
    scripts make their virtualenvs with) has the interpreter in the executable,
    built with the distribution's optimisations; pyenv's default build (a
    shared libpython, no PGO) ran the same forkproxy at 7 to 18% more CPU per
    request on the same machine.  Quote figures with this line.
    """
    try:
        with open("/proc/self/maps") as f:
            shared = "libpython" in f.read()
    except OSError:
        shared = None
    kind = {True: "libpython shared", False: "interpreter in the executable",
            None: "libpython unknown"}[shared]
    return f"python: {sys.executable} (Python {platform.python_version()}, {kind})"


def report(name: str, rows: list[Result], args) -> str:
    """One table per load shape, in the order the rows came, then the ratio lines of that shape.

    Columns: CPU microseconds per request, its ratio to nginx and to HAProxy
    (when they ran), req/s and p99 with their ratios to nginx, p50, requests,
    errors, steal%.  Every ratio is the median of the rounds' ratios.
    """
    out = [f"scenario {name}: {SCENARIOS[name][1]}", interpreter()]
    shapes: dict[str, list[Result]] = {}
    for r in rows:
        shapes.setdefault(r.shape, []).append(r)
    for shape, group in shapes.items():
        out.extend(_table(shape, group, args))
    warning = steal_warning(_worst(r.steal_pct for r in rows if r.ok))
    if warning:
        out.append(warning)
    for r in rows:
        if r.error and "\n" in r.error:
            out.append(f"\n{r.target}: {r.error}")
    return "\n".join(out)


def _table(shape: str, rows: list[Result], args) -> list[str]:
    by = {r.target: r for r in rows if r.ok}
    bases = [b for b in BASELINES if b in by]
    tools = sorted({r.tool for r in rows if r.tool})
    n = max((len(r.rounds) for r in rows), default=0)
    per = f"{n} rounds of {args.seconds}s" if n > 1 else f"{args.seconds}s"
    out = ["", f"shape {shape or '-'}; load: {', '.join(tools) or '-'}; {per} per target, in turn "
               f"(median round shown)"]
    w = max([11] + [len(r.target) + 1 for r in rows])
    head = f"{'target':<{w}}{'cpu us/req':>11}" + "".join(f"{'/' + b:>9}" for b in bases)
    head += f"{'req/s':>10}" + (f"{'/nginx':>8}" if "nginx" in by else "")
    head += f"{'p99 ms':>9}" + (f"{'/nginx':>8}" if "nginx" in by else "")
    head += f"{'p50 ms':>8}{'requests':>10}{'errors':>7}{'steal%':>7}"
    out.append(head)

    def col(v, width, spec=".2f"):
        return f"{_fmt(v, spec):>{width}}"

    for r in rows:
        if not r.ok:
            out.append(f"{r.target:<{w}}  {r.error.splitlines()[0] if r.error else 'no result'}")
            continue
        line = f"{r.target:<{w}}" + col(r.cpu_us, 11, ".1f")
        line += "".join(col(ratio_of(r.cpu_rounds, by[b].cpu_rounds), 9) for b in bases)
        line += col(r.rps, 10, ".0f")
        if "nginx" in by:
            line += col(ratio_of(r.rounds, by["nginx"].rounds), 8)
        line += col(r.p99_ms, 9)
        if "nginx" in by:
            line += col(ratio_of(r.p99_rounds, by["nginx"].p99_rounds), 8)
        line += f"{col(r.p50_ms, 8)}{r.requests:>10}{r.errors:>7}{col(r.steal_pct, 7, '.1f')}"
        out.append(line)
    pairs = RATIO_LINES + [(t.split("@")[0], t) for t in by if "@" in t]  # this tree / --also
    for top, base in pairs:
        if top in by and base in by:
            f, b = by[top], by[base]
            label = "metrics-on/metrics-off" if (top, base) == ("metrics", "forkproxy") else f"{top}/{base}"
            out.append(f"ratio {label}: cpu/req {_range(f.cpu_rounds, b.cpu_rounds)}; "
                       f"req/s {_range(f.rounds, b.rounds)}; p99 {_range(f.p99_rounds, b.p99_rounds)}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Benchmark forkproxy against nginx and a direct baseline.")
    ap.add_argument("--scenario", default="get1k", help="scenario name (default get1k; see --list)")
    ap.add_argument("--list", action="store_true", help="list scenarios and exit")
    ap.add_argument("--seconds", type=int, default=10, help="load duration per run (default 10)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="runs per target, the targets taking turns (default 3)")
    ap.add_argument("--warmup", type=int, default=1, help="warm-up seconds before each run (default 1; 0 = none)")
    ap.add_argument("--shape", default="t1c32,t2c64",
                    help="load shapes, comma-separated: tNcM = N wrk threads, M keep-alive "
                         "connections (default t1c32,t2c64; one table each)")
    ap.add_argument("--python-client", action="store_true", help="use the Python client even if wrk is installed")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs)")
    ap.add_argument("--also", action="append", default=[], metavar="COMMIT",
                    help="also run forkproxy as it is at COMMIT (repeatable): target "
                         "forkproxy@<commit>, in the same rounds as this tree's")
    ap.add_argument("--targets", type=lambda v: set(filter(None, v.split(","))),
                    help="run only these targets, comma-separated (\"forkproxy\" includes "
                         "every forkproxy@<commit>); default: all")
    args = ap.parse_args(argv)
    try:
        args.shapes = parse_shapes(args.shape)
    except ValueError as exc:
        ap.error(str(exc))  # exit status 2
    args.threads, args.connections = args.shapes[0]

    if args.list:
        for name, (_, help) in SCENARIOS.items():
            print(f"{name:<12}{help}")
        return 0
    if args.scenario not in SCENARIOS:
        print(f"bench: unknown scenario {args.scenario!r}; known: {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    workdir = Path(tempfile.mkdtemp(prefix="forkproxy-bench-"))
    workdir.chmod(0o755)  # nginx workers may run as another user when started by root
    ctx = Ctx(args, workdir)
    rows: list[Result] = []
    try:
        for rev in args.also:
            try:
                ctx.add_commit(rev)
            except subprocess.CalledProcessError as exc:
                print(f"bench: --also {rev}: {(exc.stderr or b'').decode(errors='replace').strip()}",
                      file=sys.stderr)
                return 2
        rows = SCENARIOS[args.scenario][0](ctx)
    except (StartError, OSError, RuntimeError) as exc:
        rows.append(Result(target="setup", error=f"failed to start: {exc}"))
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 1
    finally:
        ctx.close()
        kill_leaked()

    print(report(args.scenario, rows, args))
    if args.json:
        Path(args.json).write_text(json.dumps({"scenario": args.scenario, "results": [asdict(r) for r in rows]}, indent=2))
    failed = [r for r in rows if r.error and r.error != "not installed"]
    if failed or args.keep:
        print(f"bench: work directory kept: {workdir}", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
