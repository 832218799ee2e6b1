"""Edge rules' cost: a route with 20 rules and a rate limit against the bare route.

    python bench/rules.py [--seconds 5] [--number 20000]

Two figures, both ratios measured in the same run:

- in process: the edge hooks of one request (``Edge.request``, then the
  upstream and downstream header steps) for the bare route and for the
  ruled one, microseconds per request (best of 5 timeit runs);
- end to end: keep-alive GET requests/s through a real forkproxy (2
  workers) on the bare route and on the ruled route of the same
  configuration, with bench/run.py's load client (wrk when installed).

The ruled route: an access list (3 entries), methods, 8 deny rules (path,
regexes, headers), strip_prefix + add_prefix + 2 rewrites, request_headers
(set, add, remove) and response_headers, and a rate limit far above the load
(every request is checked, none refused). Everything started here is
stopped here, by pid.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import timeit
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from forkproxy.config import loads  # noqa: E402
from forkproxy.core.http1.heads import parse_request_head  # noqa: E402
from forkproxy.core.http1.messages import Limits  # noqa: E402
from forkproxy.logs import AccessRecord  # noqa: E402
from forkproxy.net.edge import Edge  # noqa: E402

RULED = """\
[[route]]
path = "/ruled/"
pool = "origin"
access = ["deny 192.0.2.0/24", "allow 127.0.0.0/8", "deny all"]
methods = ["GET", "POST"]
deny = [
  { path = "/ruled/admin/" },
  { path = "/ruled/.git/" },
  { path_regex = "\\\\.(env|bak|swp)$" },
  { query_regex = "(^|&)debug=" },
  { query_regex = "(?i)union\\\\s+select" },
  { header = "X-Debug" },
  { header = "User-Agent", header_regex = "(?i)(sqlmap|nikto)" },
  { header = "X-Forwarded-Host", methods = ["POST"] },
]
rate_limit = { rate = "1000000r/s", burst = 1000000 }
strip_prefix = "/ruled"
add_prefix = "/v1"
rewrite = [{ from = "^/v1/old/(.*)", to = "/v1/new/$1" }, { from = "^/v1/x$", to = "/" }]
request_headers = { set = { X-Env = "bench" }, add = { X-Client = "$remote_addr" }, remove = ["Cookie"] }
response_headers = { set = { X-Served-By = "edge" }, add = { X-Id = "$request_id" } }
"""

BODY = """\
[[listener]]
name = "bench"
bind = "127.0.0.1:{port}"

RULED
[[route]]
pool = "origin"

[pool.origin]
servers = [{ addr = "127.0.0.1:ORIGIN" }]
""".replace("RULED", RULED)


def in_process(number: int) -> tuple[float, float]:
    cfg = loads("[server]\nworkers = 1\n" + BODY.replace("{port}", "1").replace("ORIGIN", "2"))
    edge = Edge(cfg, None, None)
    head = (b"GET /x HTTP/1.1\r\nHost: shop.example\r\nUser-Agent: bench/1\r\n"
            b"Accept: */*\r\nCookie: a=1\r\n\r\n")
    req = parse_request_head(head, Limits())
    up = [("user-agent", "bench/1"), ("accept", "*/*"), ("x-forwarded-for", "127.0.0.1")]
    down = [("content-type", "text/plain"), ("server", "origin"), ("date", "x"), ("via", "1.1 forkproxy")]

    def one(index):
        def run():
            er = edge.request(index, req, AccessRecord("127.0.0.1", 0.0), "127.0.0.1", "http",
                              "shop.example", "/" + ("ruled" if index == 0 else "bare") + "/x")
            er.upstream(up, "shop.example")
            er.downstream(down, "127.0.0.1:2")
        return run

    ruled = min(timeit.repeat(one(0), number=number, repeat=5)) / number
    bare = min(timeit.repeat(one(1), number=number, repeat=5)) / number
    return bare * 1e6, ruled * 1e6


def end_to_end(seconds: int) -> tuple:
    import run  # bench/run.py: the load client and process helpers

    args = argparse.Namespace(seconds=seconds, warmup=1, threads=2, connections=16,
                              python_client=False)
    with tempfile.TemporaryDirectory(prefix="fp-rules-") as tmp:
        ctx = run.Ctx(args, Path(tmp))
        try:
            origin = ctx.start_backend(1024)
            port = ctx.start_forkproxy(BODY.replace("ORIGIN", str(origin)))
            bare = ctx.load("bare", f"http://127.0.0.1:{port}/bare/")
            ruled = ctx.load("ruled", f"http://127.0.0.1:{port}/ruled/x")
        finally:
            ctx.close()
    return bare, ruled


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--number", type=int, default=20000)
    ap.add_argument("--no-e2e", action="store_true", help="only the in-process figure")
    a = ap.parse_args()
    bare_us, ruled_us = in_process(a.number)
    print(f"in process: bare route {bare_us:.1f} us, 20 rules + rate limit {ruled_us:.1f} us "
          f"per request (x{ruled_us / bare_us:.2f}, +{ruled_us - bare_us:.1f} us)")
    if a.no_e2e:
        return 0
    bare, ruled = end_to_end(a.seconds)
    if not (bare.ok and ruled.ok):
        print(f"end to end failed: {bare.error or ruled.error}")
        return 1
    print(f"end to end ({bare.tool}): bare {bare.rps:.0f} req/s p99 {bare.p99_ms} ms, "
          f"ruled {ruled.rps:.0f} req/s p99 {ruled.p99_ms} ms; "
          f"ruled/bare = {ruled.rps / bare.rps:.2f}, errors {bare.errors + ruled.errors}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
