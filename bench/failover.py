"""Failover figures: one of three servers fails under keep-alive load (issue 17).

    python bench/failover.py [--seconds 30] [--hang 15] [--clients 32]
                             [--mode hang|slow|reset] [--read-timeout 5]
                             [--targets forkproxy,nginx,haproxy]

Three test backends (tests/support/backend.py) behind each target in turn:
forkproxy (2 workers, active checks every 1 s, fall 3, rise 2, retries on),
nginx (passive checks only: max_fails 1, proxy_next_upstream error timeout)
and HAProxy (active checks inter 1s fall 3 rise 2, retries with redispatch),
each with the same read timeout; a target that is not installed is skipped.
``--clients`` keep-alive clients plus one bystander (its own counts) send
GETs for ``--seconds``; after 3 s the middle backend fails for ``--hang`` s:
``hang`` SIGSTOPs it (the kernel accepts, nothing answers), ``slow`` makes
it answer after 100 ms, ``reset`` makes it reset every request.  Reported
per target: requests, failed requests (by status) during the fault and in
all, the bystander's, the requests that took over 1 s (those caught on the
failing server) with their longest time, and for forkproxy how long its
active checks took to mark the server DOWN (read from its health table).  Loopback only; everything
started here is stopped here, by pid.
"""

from __future__ import annotations

import argparse
import http.client
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from forkproxy.daemon import shm  # noqa: E402

from support.configs import one_pool  # noqa: E402
from support.procs import Proc, free_port, kill_leaked, wait_for_port  # noqa: E402
from support.runner import Backend, ForkProxy  # noqa: E402

WARMUP = 3.0


class Client(threading.Thread):
    """One keep-alive client: GET / until ``stop``; (time, latency, failure or None) per request."""

    def __init__(self, port: int, stop: threading.Event, timeout: float):
        super().__init__(daemon=True)
        self.port, self.stop_ev, self.timeout = port, stop, timeout
        self.results: list[tuple[float, float, str | None]] = []

    def run(self) -> None:
        conn = None
        while not self.stop_ev.is_set():
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            t0 = time.monotonic()
            try:
                conn.request("GET", "/")
                resp = conn.getresponse()
                resp.read()
                bad = None if resp.status == 200 else str(resp.status)
                if resp.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                bad = type(exc).__name__
                conn.close()
                conn = None
            self.results.append((t0, time.monotonic() - t0, bad))
        if conn is not None:
            conn.close()


def watch_down(path: str, label: str, since: float, stop: threading.Event, out: list) -> None:
    """Poll forkproxy's health table every 50 ms; append the seconds from
    ``since`` to ``label`` showing DOWN."""
    while not stop.is_set():
        t = shm.open_table(path)
        try:
            h = t.read_health(t.find(label))
        finally:
            shm.close_table(t)
        if h is not None and h.state == "down":
            out.append(time.monotonic() - since)
            return
        stop.wait(0.05)


def nginx_conf(d: Path, port: int, addrs: list[str], read_timeout: float) -> str:
    servers = "".join(f"server {a} max_fails=1 fail_timeout=10s; " for a in addrs)
    return f"""daemon off;
master_process on;
worker_processes 2;
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
    upstream backend {{ {servers} keepalive 32; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_read_timeout {int(read_timeout * 1000)}ms;
            proxy_next_upstream error timeout;
        }}
    }}
}}
"""


def haproxy_conf(d: Path, port: int, addrs: list[str], read_timeout: float) -> str:
    servers = "\n".join(f"    server s{i} {a} check inter 1s fall 3 rise 2"
                        for i, a in enumerate(addrs))
    return f"""global
    pidfile {d}/haproxy.pid
    nbthread 2
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server {int(read_timeout * 1000)}ms
    timeout check 1s
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response response-timeout
    http-reuse safe
frontend web
    bind 127.0.0.1:{port}
    default_backend pool
backend pool
    option httpchk GET /healthz
{servers}
"""


def start_target(name: str, d: Path, addrs: list[str], read_timeout: float, procs: list):
    """(port, stopper) of a started target, or None when it is not installed."""
    port = free_port()
    if name == "forkproxy":
        body = one_pool(port, addrs,
                        'health = { path = "/healthz", interval = "1s", timeout = "1s", '
                        f'rise = 2, fall = 3 }}\nread_timeout = "{read_timeout:g}s"\n')
        fp = ForkProxy(d / "forkproxy", body, server={"workers": 2, "access_log": "off"})
        fp.start()
        fp.wait_ready(port)
        fp.table_path = str(Path(fp.parsed()["server"]["runtime_dir"]) / "health.tbl")
        procs.append(fp)
        return port, fp.stop
    binary = shutil.which(name) or shutil.which(f"/usr/sbin/{name}")
    if binary is None:
        return None
    sub = d / name
    sub.mkdir()
    conf = sub / f"{name}.conf"
    if name == "nginx":
        conf.write_text(nginx_conf(sub, port, addrs, read_timeout))
        argv = [binary, "-p", str(sub), "-c", str(conf), "-e", str(sub / "error.log")]
    else:
        conf.write_text(haproxy_conf(sub, port, addrs, read_timeout))
        argv = [binary, "-db", "-f", str(conf)]
    p = Proc(argv, sub, name=name)
    procs.append(p)
    wait_for_port(port, proc=p)
    return port, p.stop


def run_target(name: str, args, d: Path) -> dict | None:
    backends = [Backend(f"b{i}", d / "backends") for i in (1, 2, 3)]
    procs: list = []
    stop_target = None
    victim = backends[1]
    try:
        started = start_target(name, d, [b.addr for b in backends], args.read_timeout, procs)
        if started is None:
            return None
        port, stop_target = started
        stop = threading.Event()
        timeout = args.read_timeout * 3 + 10
        clients = [Client(port, stop, timeout) for _ in range(args.clients + 1)]
        for c in clients:
            c.start()
        time.sleep(WARMUP)
        fault_from = time.monotonic()
        detect: list[float] = []
        if name == "forkproxy":
            threading.Thread(target=watch_down, daemon=True,
                             args=(procs[0].table_path, f"web/{victim.addr}", fault_from, stop,
                                   detect)).start()
        if args.mode == "hang":
            victim.freeze()
        elif args.mode == "slow":
            victim.set_fault(ms=100)
        else:
            victim.set_fault(reset=True)
        time.sleep(args.hang)
        if args.mode == "hang":
            victim.thaw()
        else:
            victim.set_fault()
        fault_to = time.monotonic()
        time.sleep(max(0.0, args.seconds - WARMUP - args.hang))
        stop.set()
        for c in clients:
            c.join(timeout + 5)
    finally:
        if stop_target is not None:
            stop_target()
        for b in backends:
            b.stop()
    everyone = [r for c in clients for r in c.results]
    bystander = clients[-1].results
    during = [r for r in everyone if fault_from <= r[0] < fault_to]
    slow = [r[1] for r in everyone if r[1] > 1.0]
    return {
        "target": name,
        "requests": len(everyone),
        "failed_during": sum(1 for r in during if r[2]),
        "during": len(during),
        "failed": Counter(r[2] for r in everyone if r[2]),
        "bystander": (sum(1 for r in bystander if r[2]), len(bystander)),
        "over_1s": len(slow),
        "longest": max(slow, default=0.0),
        "down_after": detect[0] if detect else None,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--hang", type=float, default=15.0, help="seconds the server fails")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--mode", choices=("hang", "slow", "reset"), default="hang")
    ap.add_argument("--read-timeout", type=float, default=5.0)
    ap.add_argument("--targets", default="forkproxy,nginx,haproxy")
    args = ap.parse_args(argv)
    if args.seconds < WARMUP + args.hang or args.seconds > 600:
        ap.error("--seconds must cover 3 s + --hang, and at most 600")
    with tempfile.TemporaryDirectory(prefix="failover") as tmp:
        try:
            for name in args.targets.split(","):
                res = run_target(name, args, Path(tmp) / name)
                if res is None:
                    print(f"{name}: not installed, skipped")
                    continue
                fails = ", ".join(f"{n} x {k}" for k, n in res["failed"].most_common()) or "none"
                print(f"{name}: {res['requests']} requests; failed during the {args.mode} "
                      f"{res['failed_during']} of {res['during']}; failed in all: {fails}; "
                      f"bystander failed {res['bystander'][0]} of {res['bystander'][1]}; "
                      f"{res['over_1s']} took over 1 s (longest {res['longest']:.2f} s)"
                      + (f"; DOWN after {res['down_after']:.2f} s" if res["down_after"] else ""),
                      flush=True)
        finally:
            kill_leaked()
    return 0


if __name__ == "__main__":
    sys.exit(main())
