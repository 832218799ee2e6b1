"""forkproxy benchmark: the same load against a backend directly, through nginx, through forkproxy.

    python bench/run.py                         # scenario get1k, 3 rounds of 10 s per target
    python bench/run.py --seconds 5 --rounds 5 --json out.json
    python bench/run.py --list

Every number is measured in the same run on the same machine; compare the
ratios (forkproxy/nginx, forkproxy/direct), not the absolute numbers.  The
targets take turns, one run each per round (``--rounds``): a shared
machine's speed drifts by tens of percent within minutes, so a ratio is
the median of the rounds' ratios, each from runs made close together, and
a row shows its target's median round.  The
"floor" row is bench/floor.py, a gevent relay that does nothing but move the
bytes: the ceiling of any proxy built on gevent workers, here.
Everything started here is stopped here, by pid. Exit status 1 when any
target failed to start or its load run failed; 2 on bad arguments.

Adding a scenario: write ``def my_scenario(ctx) -> list[Result]`` decorated
with ``@scenario("name", "one line of help")``; use ``ctx.start_backend()``,
``ctx.start_nginx(port)``, ``ctx.start_forkproxy(body)``, then ``ctx.compare(targets)``
(or ``ctx.load(url)`` for a single run).
Rows named "direct", "nginx", "floor" and "forkproxy" get the ratio lines.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
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
    from urllib.parse import urlsplit

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
               http_extra: str = "", server_extra: str = "", location_extra: str = "") -> str:
    """The nginx every bench compares against: a proxy to ``upstream`` ("host:port")
    with upstream keep-alive, access log off, its files in ``d``; the extras are
    nginx directives added to the http, server and location blocks (``listen``
    to the listen line, e.g. " ssl")."""
    return f"""daemon off;
master_process on;
worker_processes {workers};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
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


class Ctx:
    """Where a scenario starts processes and runs load; ``close()`` stops all of them."""

    def __init__(self, args, workdir: Path):
        self.args = args
        self.dir = workdir
        self.procs: list[Proc] = []
        self.forkproxy_dirs: dict[int, Path] = {}  # listener port -> its config, logs, runtime dir
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), self.env.get("PYTHONPATH")]))

    def start(self, name: str, argv, env=None) -> Proc:
        p = Proc(argv, self.dir, name=name, env=env or self.env)
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
        return port

    def start_floor(self, upstream_port: int, workers: int = 2) -> int:
        """bench/floor.py (the least a gevent proxy costs) in front of upstream_port."""
        port = free_port()
        p = self.start("floor", [sys.executable, str(HERE / "floor.py"), "--port", str(port),
                                 "--upstream", str(upstream_port), "--workers", str(workers)])
        self.wait_http(port, p, "floor")
        return port

    def start_nginx(self, upstream_port: int, workers: int = 2) -> int | None:
        """nginx in front of upstream_port, or None when nginx is not installed."""
        binary = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
        if not binary:
            return None
        port = free_port()
        d = self.dir / "nginx"
        d.mkdir(exist_ok=True)
        conf = d / "nginx.conf"
        conf.write_text(nginx_conf(d, port, f"127.0.0.1:{upstream_port}", workers=workers))
        p = self.start("nginx", [binary, "-p", str(d), "-c", str(conf), "-e", str(d / "error.log")])
        self.wait_http(port, p, "nginx")
        return port

    def start_forkproxy(self, body: str, workers: int = 2, server: dict | None = None) -> int:
        """forkproxy with ``body`` (use ``{port}`` for the listener port); returns the port."""
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
        p = self.start("forkproxy", [sys.executable, "-m", "forkproxy", "-c", str(conf)])
        try:
            self.wait_http(port, p, "forkproxy")
        except StartError as exc:
            err = d / "error.log"
            tail = err.read_text(errors="replace")[-2000:] if err.exists() else ""
            raise StartError(f"{exc}\nerror log:\n{tail}") from None
        return port

    def load(self, target: str, url: str) -> Result:
        a = self.args
        fn = load_wrk if (shutil.which("wrk") and not a.python_client) else load_python
        if a.warmup:
            try:
                fn(url, a.warmup, a.threads, a.connections)
            except Exception:  # noqa: BLE001 - a failed warm-up shows in the real run
                pass
        before = cpu_times()
        try:
            r = Result(target=target, **fn(url, a.seconds, a.threads, a.connections))
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            return Result(target=target, error=f"load failed: {exc}")
        r.steal_pct = steal_share(before, cpu_times())
        return r

    def compare(self, targets: list) -> list[Result]:
        """Load each target once per round, in turn, for ``--rounds`` rounds.

        ``targets``: (name, url) pairs, or a ``Result`` (a target that did not
        start), kept in its place.  Each row is the median round of its
        target (req/s, p50, p99), with the totals of requests and errors and
        every round's req/s in ``rounds``; a failed run fails the row.
        """
        n = max(1, getattr(self.args, "rounds", 1))
        runs: dict[str, list[Result]] = {t[0]: [] for t in targets if not isinstance(t, Result)}
        for _ in range(n):
            for t in targets:
                if not isinstance(t, Result):
                    runs[t[0]].append(self.load(*t))
        return [t if isinstance(t, Result) else _median_row(runs[t[0]]) for t in targets]

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
    bad = [r for r in runs if not r.ok]
    if bad:
        return bad[0]
    mid = sorted(runs, key=lambda r: r.rps)[len(runs) // 2]
    return Result(target=mid.target, rps=_median([r.rps for r in runs]), p50_ms=mid.p50_ms,
                  p99_ms=mid.p99_ms, requests=sum(r.requests for r in runs),
                  errors=sum(r.errors for r in runs), tool=mid.tool,
                  rounds=[r.rps for r in runs], steal_pct=_worst(r.steal_pct for r in runs))


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


@scenario("get1k", "keep-alive GET of a 1 KiB response: direct, nginx, gevent floor, forkproxy")
def get1k(ctx: Ctx) -> list[Result]:
    origin = ctx.start_backend(1024)
    body = FORKPROXY_ONE_POOL.format(origin=origin)
    return ctx.compare([("direct", f"http://127.0.0.1:{origin}/"),
                        _started("nginx", lambda: ctx.start_nginx(origin)),
                        _started("floor", lambda: ctx.start_floor(origin)),
                        _started("forkproxy", lambda: ctx.start_forkproxy(body))])


@scenario("metrics", "get1k through forkproxy with metrics off, then on (server.admin set)")
def metrics(ctx: Ctx) -> list[Result]:
    origin = ctx.start_backend(1024)
    body = FORKPROXY_ONE_POOL.format(origin=origin)
    admin = {"admin": f"127.0.0.1:{free_port()}"}
    return ctx.compare([_started("forkproxy", lambda: ctx.start_forkproxy(body)),
                        _started("metrics", lambda: ctx.start_forkproxy(body, server=admin))])


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


def _ratio(top: Result, base: Result) -> str:
    """The median of the rounds' ratios (each round's runs were close in time), with their range."""
    if len(top.rounds) > 1 and len(top.rounds) == len(base.rounds):
        each = [t / b for t, b in zip(top.rounds, base.rounds)]
        return f"{_median(each):.3f} (rounds {min(each):.3f}-{max(each):.3f})"
    return f"{top.rps / base.rps:.3f}"


def report(name: str, rows: list[Result], args) -> str:
    out = [f"scenario {name}: {SCENARIOS[name][1]}"]
    tools = sorted({r.tool for r in rows if r.tool})
    n = max((len(r.rounds) for r in rows), default=0)
    per = f"{n} rounds of {args.seconds}s" if n > 1 else f"{args.seconds}s"
    out.append(f"load: {', '.join(tools) or '-'}; {per} per target, in turn (median round shown)")
    out.append(f"{'target':<12}{'req/s':>12}{'p50 ms':>10}{'p99 ms':>10}{'requests':>11}{'errors':>8}"
               f"{'steal%':>8}")
    for r in rows:
        if r.ok:
            out.append(
                f"{r.target:<12}{_fmt(r.rps):>12}{_fmt(r.p50_ms, '.2f'):>10}{_fmt(r.p99_ms, '.2f'):>10}"
                f"{r.requests:>11}{r.errors:>8}{_fmt(r.steal_pct):>8}"
            )
        else:
            out.append(f"{r.target:<12}  {r.error.splitlines()[0] if r.error else 'no result'}")
    by = {r.target: r for r in rows if r.ok}
    pairs = [("forkproxy", base) for base in ("nginx", "direct", "floor")] + [("metrics", "forkproxy")]
    for top, base in pairs:
        if top in by and base in by and (top, base) != ("forkproxy", "forkproxy"):
            f, b = by[top], by[base]
            p99 = f"; p99 x{f.p99_ms / b.p99_ms:.2f}" if f.p99_ms and b.p99_ms else ""
            label = "metrics-on/metrics-off" if top == "metrics" else f"forkproxy/{base}"
            out.append(f"ratio {label}: req/s {_ratio(f, b)}{p99}")
    warning = steal_warning(_worst(r.steal_pct for r in rows if r.ok))
    if warning:
        out.append(warning)
    for r in rows:
        if r.error and "\n" in r.error:
            out.append(f"\n{r.target}: {r.error}")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Benchmark forkproxy against nginx and a direct baseline.")
    ap.add_argument("--scenario", default="get1k", help="scenario name (default get1k; see --list)")
    ap.add_argument("--list", action="store_true", help="list scenarios and exit")
    ap.add_argument("--seconds", type=int, default=10, help="load duration per run (default 10)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="runs per target, the targets taking turns (default 3)")
    ap.add_argument("--warmup", type=int, default=1, help="warm-up seconds before each run (default 1; 0 = none)")
    ap.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    ap.add_argument("--connections", type=int, default=64, help="keep-alive connections (default 64)")
    ap.add_argument("--python-client", action="store_true", help="use the Python client even if wrk is installed")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs)")
    args = ap.parse_args(argv)

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
