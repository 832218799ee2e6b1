"""Compression figures: compressed vs uncompressed responses through forkproxy.

    python bench/compress.py [--seconds 5] [--size 65536] [--level 6]

One origin serves a ``--size`` bytes text/html page (HTML-like text that
compresses about 8:1).  forkproxy (2 workers) serves it on two routes, one
with ``compress = { level = L }`` and one without, and ``wrk`` (or the
Python client of bench/run.py) loads it with keep-alive connections:

- identity: the route without compress (the baseline of the ratios);
- gzip / br: the compress route with ``Accept-Encoding: gzip`` / ``br``;
- nginx gzip: nginx (2 workers, ``gzip_comp_level L``) in front of the
  same origin, when installed.

Printed per row: requests/s, p50/p99, bytes per response on the wire, and
the ratio of requests/s to identity.  Client, proxy and origin share the
CPUs: only the ratios mean anything.  Everything started here is stopped
here, by pid.
"""

from __future__ import annotations

import argparse
import http.client
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import Ctx, Result, StartError, load_python, nginx_conf, parse_wrk  # noqa: E402
from support.procs import free_port, kill_leaked, wait_for_port  # noqa: E402

ORIGIN = r"""
from gevent import monkey; monkey.patch_all()
import sys
from gevent.server import StreamServer
size = int(sys.argv[2])
line = b"<li class='item'><a href='/product/%d'>Product number %d</a> <span>in stock</span></li>\n"
body = b"".join(line % (i, i * 7) for i in range(size // 40 + 1))[:size]
resp = (b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nETag: \"v1\"\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)) + body
def handle(sock, addr):
    buf = b""
    while True:
        data = sock.recv(65536)
        if not data:
            return
        buf += data
        n = buf.count(b"\r\n\r\n")
        if n:
            buf = buf[buf.rfind(b"\r\n\r\n") + 4:]
            sock.sendall(resp * n)
StreamServer(("127.0.0.1", int(sys.argv[1])), handle).serve_forever()
"""

FORKPROXY = """\
[[listener]]
name = "bench"
bind = "127.0.0.1:{{port}}"

[[route]]
path = "/raw/"
pool = "origin"

[[route]]
pool = "origin"
compress = {{ level = {level}, types = ["text/html"] }}

[pool.origin]
servers = [{{ addr = "127.0.0.1:{origin}" }}]
"""



def wire_bytes(port: int, path: str, accept: str | None) -> int:
    """Body bytes of one response as sent (still encoded; chunk framing not counted)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", path, headers={"Accept-Encoding": accept} if accept else {})
    n = len(c.getresponse().read())
    c.close()
    return n


def load(ctx: Ctx, target: str, url: str, accept: str | None) -> Result:
    a = ctx.args
    if shutil.which("wrk") and not a.python_client:
        cmd = ["wrk", f"-t{a.threads}", f"-c{a.connections}", f"-d{a.seconds}s", "--latency"]
        if accept:
            cmd += ["-H", f"Accept-Encoding: {accept}"]
        proc = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=a.seconds + 60)
        res = parse_wrk(proc.stdout)
        if proc.returncode != 0 or res["rps"] is None:
            return Result(target=target, error=f"wrk failed: {proc.stderr.strip() or proc.stdout}")
        res["tool"] = " ".join(cmd)
        return Result(target=target, **res)
    if accept:
        return Result(target=target, error="needs wrk (the Python client sends no Accept-Encoding)")
    return Result(target=target, **load_python(url, a.seconds, a.threads, a.connections))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--size", type=int, default=65536, help="response size in bytes (default 64 KiB)")
    ap.add_argument("--level", type=int, default=6, help="compression level 1..9 (default 6)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--python-client", action="store_true")
    args = ap.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="forkproxy-bench-compress-"))
    workdir.chmod(0o755)
    ctx = Ctx(args, workdir)
    rows: list[tuple[Result, int]] = []
    try:
        origin = free_port()
        p = ctx.start("origin", [sys.executable, "-c", ORIGIN, str(origin), str(args.size)])
        wait_for_port(origin, timeout=20, proc=p)
        port = ctx.start_forkproxy(FORKPROXY.format(origin=origin, level=args.level))
        for target, path, accept in (("identity", "/raw/", None), ("gzip", "/", "gzip"),
                                     ("br", "/", "br")):
            url = f"http://127.0.0.1:{port}{path}"
            rows.append((load(ctx, target, url, accept), wire_bytes(port, path, accept)))
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        if Path(binary).exists():
            d = workdir / "nginx"
            d.mkdir()
            nport = free_port()
            (d / "nginx.conf").write_text(nginx_conf(
                d, nport, f"127.0.0.1:{origin}",
                http_extra=f"gzip on; gzip_comp_level {args.level}; gzip_types text/html; "
                           "gzip_proxied any;"))
            np = ctx.start("nginx", [binary, "-p", str(d), "-c", str(d / "nginx.conf"),
                                     "-e", str(d / "error.log")])
            ctx.wait_http(nport, np, "nginx")
            rows.append((load(ctx, "nginx gzip", f"http://127.0.0.1:{nport}/", "gzip"),
                         wire_bytes(nport, "/", "gzip")))
    except (StartError, OSError, RuntimeError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    finally:
        ctx.close()
        kill_leaked()
    base = rows[0][0].rps if rows and rows[0][0].ok else None
    print(f"compression: {args.size} B text/html, level {args.level}, {args.seconds}s per row, "
          f"{args.connections} connections")
    print(f"{'target':<12}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'bytes/resp':>12}{'vs identity':>13}")
    for r, wire in rows:
        if not r.ok:
            print(f"{r.target:<12} {r.error}")
            continue
        ratio = f"{r.rps / base:.3f}" if base else "-"
        print(f"{r.target:<12}{r.rps:>10.0f}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}{wire:>12}{ratio:>13}")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0 if all(r.ok for r, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
