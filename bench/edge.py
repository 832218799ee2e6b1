"""Edge figures: TLS handshakes/s, keep-alive requests/s over TLS, TCP relay MB/s.

    python bench/edge.py [--seconds 5] [--clients 4] [--mib 512]

Every figure is measured in the same run for forkproxy and, when installed,
nginx with the same number of workers (2) in front of the same origin, so
only the ratios mean anything (client, proxy and origin share the CPUs):

- handshakes/s: ``--clients`` parallel ``openssl s_time -new`` (a full
  handshake and one GET per connection; TLS 1.3, ECDSA P-256 certificate)
  and the same with ``-reuse`` (session resumption);
- TLS keep-alive requests/s: ``wrk`` over https, 1 KiB responses (the
  Python client of bench/run.py without wrk);
- TCP relay: ``--mib`` MiB pushed through a tcp listener to a sink that
  counts them (one connection), against the sink directly and nginx's
  stream module when it is loadable.

Everything started here is stopped here, by pid.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import Ctx, Result, StartError, nginx_conf  # noqa: E402
from support.procs import free_port, kill_leaked, wait_for_port  # noqa: E402

SINK = r"""
import socket, sys
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", int(sys.argv[1]))); ls.listen(16)
buf = bytearray(1 << 20)
while True:
    c, _ = ls.accept()
    n = 0
    while (k := c.recv_into(buf)):
        n += k
    c.sendall(b"%d\n" % n); c.close()
"""


def make_cert(d: Path) -> tuple[Path, Path]:
    import trustme

    ca = trustme.CA()
    leaf = ca.issue_cert("bench.example", "127.0.0.1")
    cert, key = d / "cert.pem", d / "key.pem"
    cert.write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    return cert, key


def s_time(port: int, seconds: int, clients: int, reuse: bool) -> float:
    """Connections/s summed over ``clients`` parallel ``openssl s_time`` runs."""
    argv = ["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-www", "/",
            "-time", str(seconds), "-reuse" if reuse else "-new"]
    ps = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
          for _ in range(clients)]
    total = 0.0
    for p in ps:
        out, _ = p.communicate(timeout=seconds + 30)
        m = re.search(r"([\d.]+) connections/user sec", out)
        n = re.search(r"(\d+) connections in ([\d.]+)s", out)
        if n:  # real seconds, not CPU seconds of the client
            total += int(n.group(1)) / max(seconds, float(n.group(2)))
        elif m:
            total += float(m.group(1))
    return total


def nginx_tls(ctx: Ctx, origin: int, cert: Path, key: Path) -> int | None:
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if not binary:
        return None
    port = free_port()
    d = ctx.dir / "nginx-tls"
    d.mkdir(exist_ok=True)
    conf = d / "nginx.conf"
    conf.write_text(nginx_conf(
        d, port, f"127.0.0.1:{origin}", listen=" ssl",
        server_extra=f"ssl_certificate {cert}; ssl_certificate_key {key}; "
                     "ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:SSL:10m;"))
    p = ctx.start("nginx-tls", [binary, "-p", str(d), "-c", str(conf), "-e", str(d / "error.log")])
    wait_for_port(port, timeout=20, proc=p)
    return port


def nginx_stream(ctx: Ctx, sink: int) -> int | None:
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    module = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
    if not os.path.exists(binary) or not module.exists():
        return None
    port = free_port()
    d = ctx.dir / "nginx-stream"
    d.mkdir(exist_ok=True)
    conf = d / "nginx.conf"
    conf.write_text(f"""load_module {module};
daemon off; master_process on; worker_processes 2; pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
stream {{ server {{ listen 127.0.0.1:{port}; proxy_pass 127.0.0.1:{sink}; }} }}
""")
    p = ctx.start("nginx-stream", [binary, "-p", str(d), "-c", str(conf), "-e", str(d / "error.log")])
    wait_for_port(port, timeout=20, proc=p)
    return port


def push(port: int, mib: int) -> float:
    """MB/s of ``mib`` MiB sent through ``port`` until the sink's count comes back."""
    chunk = b"\0" * (1 << 20)
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as c:
        for _ in range(mib):
            c.sendall(chunk)
        c.shutdown(socket.SHUT_WR)
        reply = c.recv(64)
    elapsed = time.perf_counter() - t0
    if int(reply) != mib << 20:
        raise RuntimeError(f"sink counted {reply!r}, sent {mib << 20}")
    return mib * 1.048576 / elapsed


def start_forkproxy_tls(ctx: Ctx, origin: int, cert: Path, key: Path) -> int:
    body = f"""[[listener]]
name = "bench"
bind = "127.0.0.1:{{port}}"
tls = {{ cert = "{cert}", key = "{key}" }}

[[route]]
pool = "origin"

[pool.origin]
servers = [{{ addr = "127.0.0.1:{origin}" }}]
"""
    # Ctx.start_forkproxy polls plain HTTP: the TLS port answers that with a
    # closed connection, so start it by hand and wait for the port.
    port = free_port()
    d = ctx.dir / "forkproxy-tls"
    d.mkdir(exist_ok=True)
    conf = d / "forkproxy.toml"
    conf.write_text(f"""[server]
workers = 2
pidfile = "{d}/forkproxy.pid"
runtime_dir = "{d}/run"
error_log = "{d}/error.log"
access_log = "off"

""" + body.replace("{port}", str(port)))
    p = ctx.start("forkproxy-tls", [sys.executable, "-m", "forkproxy", "-c", str(conf)])
    wait_for_port(port, timeout=30, proc=p)
    return port


def start_forkproxy_tcp(ctx: Ctx, sink: int) -> int:
    port = free_port()
    d = ctx.dir / "forkproxy-tcp"
    d.mkdir(exist_ok=True)
    conf = d / "forkproxy.toml"
    conf.write_text(f"""[server]
workers = 2
pidfile = "{d}/forkproxy.pid"
runtime_dir = "{d}/run"
error_log = "{d}/error.log"
access_log = "off"

[[listener]]
name = "l4"
bind = "127.0.0.1:{port}"
mode = "tcp"
pool = "sink"

[pool.sink]
servers = [{{ addr = "127.0.0.1:{sink}" }}]
""")
    p = ctx.start("forkproxy-tcp", [sys.executable, "-m", "forkproxy", "-c", str(conf)])
    wait_for_port(port, timeout=30, proc=p)
    return port


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--clients", type=int, default=4, help="parallel openssl s_time clients")
    ap.add_argument("--mib", type=int, default=512, help="MiB pushed through the TCP relay")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--python-client", action="store_true")
    args = ap.parse_args(argv)
    rows: list[tuple[str, str, float | None]] = []
    with tempfile.TemporaryDirectory(prefix="fp-edge-") as tmp:
        ctx = Ctx(args, Path(tmp))
        try:
            cert, key = make_cert(Path(tmp))
            origin = ctx.start_backend(1024)
            targets = {"forkproxy": lambda: start_forkproxy_tls(ctx, origin, cert, key),
                       "nginx": lambda: nginx_tls(ctx, origin, cert, key)}
            for name, start in targets.items():
                try:
                    port = start()
                except (StartError, OSError, RuntimeError) as exc:
                    print(f"{name}: failed to start: {exc}", file=sys.stderr)
                    port = None
                if port is None:
                    rows += [(name, m, None) for m in ("handshakes/s", "resumed/s", "TLS req/s")]
                    continue
                rows.append((name, "handshakes/s", s_time(port, args.seconds, args.clients, False)))
                rows.append((name, "resumed/s", s_time(port, args.seconds, args.clients, True)))
                res: Result = ctx.load(name, f"https://127.0.0.1:{port}/")
                rows.append((name, "TLS req/s", res.rps))
            sink = free_port()
            p = ctx.start("sink", [sys.executable, "-c", SINK, str(sink)])
            wait_for_port(sink, timeout=20, proc=p)
            rows.append(("direct", "TCP MB/s", push(sink, args.mib)))
            rows.append(("forkproxy", "TCP MB/s", push(start_forkproxy_tcp(ctx, sink), args.mib)))
            ns = nginx_stream(ctx, sink)
            rows.append(("nginx", "TCP MB/s", push(ns, args.mib) if ns else None))
        finally:
            ctx.close()
            kill_leaked()
    print(f"{'target':<10} {'figure':<14} {'value':>10}")
    for target, what, v in rows:
        print(f"{target:<10} {what:<14} {'-' if v is None else format(v, '.1f'):>10}")
    by = {(t, w): v for t, w, v in rows}
    for what in ("handshakes/s", "resumed/s", "TLS req/s", "TCP MB/s"):
        fp, ng = by.get(("forkproxy", what)), by.get(("nginx", what))
        if fp and ng:
            print(f"forkproxy/nginx {what}: {fp / ng:.2f}")
    fp, direct = by.get(("forkproxy", "TCP MB/s")), by.get(("direct", "TCP MB/s"))
    if fp and direct:
        print(f"forkproxy/direct TCP MB/s: {fp / direct:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
