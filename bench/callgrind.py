"""Instructions per proxied request, counted by valgrind: a figure machine load does not move.

    python bench/callgrind.py                        # this tree
    python bench/callgrind.py --at f8e67dc --at .    # that commit, then this tree
    python bench/callgrind.py --profile [--at REV]   # cProfile: forkproxy's calls per request
    python bench/callgrind.py --mirror live          # the route mirrors every request

One process holds the whole request path: a gevent origin answering every
request with the same canned 1 KiB ``200 OK`` (as ``bench/backend.py``),
a worker's ``Runtime`` built the way a worker builds it
(``daemon.hooks.on_starting`` then ``build_runtime``: one listener, one
default route to a one-server pool, access log off), and a client that
sends keep-alive GETs one after the other on one connection and reads
each response.  No fork, no master, no wrk: the count is the proxy's
path plus a client and an origin that are the same for every revision.

The program is run twice under ``valgrind --tool=callgrind``, with
``N_LO`` (200) and ``N_HI`` (1200) measured requests after ``WARMUP``
(300); ``(instructions(N_HI) - instructions(N_LO)) / (N_HI - N_LO)`` is
the figure: start-up, imports, warm-up and exit cancel out.  The
interpreter's hash seed is fixed (``PYTHONHASHSEED=0``); a run still repeats
its count only within about 0.7% (gevent's scheduling differs from run to run).

``--at REV`` (repeatable; ``.`` is this tree, copied first): ``git
archive REV`` into a temporary directory, which goes first on
``PYTHONPATH``; the harness itself (this file, with ``bench/backend.py``'s
origin and ``bench/run.py``'s configuration) stays the same for every
revision.  It needs ``daemon.hooks.on_starting`` and ``build_runtime(ctx,
log)`` as they are since the master's ``WorkerContext``: the commits of
issue 18 either side of the redesign (f8e67dc and after) have them.

``--profile`` runs the same workload once, without valgrind, under
cProfile, and prints forkproxy's function calls per request, most frequent
first: which calls the per-request path makes, not how long they take.

``--mirror live`` gives the route ``mirror = { pool = "shadow" }`` (every
request copied) to a second in-process origin, ``--mirror dead`` to a
pool whose one server refuses connections and is taken out after its
first failure (``max_ejection_percent = 100``): the count less the plain
one is what a copy costs (for ``live``, its origin's share included).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WARMUP = 300
N_LO, N_HI = 200, 1200
RESPONSE_SIZE = 1024

SERVER = """\
[server]
workers = 2
runtime_dir = "{run}"
error_log = "{run}/error.log"
access_log = "off"

"""


# -- the workload (in the process valgrind runs) --------------------------------

MIRRORED = """
[pool.shadow]
servers = [{{ addr = "127.0.0.1:{shadow}" }}]
max_ejection_percent = 100
"""


CACHED = """
[cache]
servers = []
shared_size = "16m"
"""


def configuration(origin: int, port: int, mirror: str, shadow: int, cache: bool = False) -> str:
    """bench/run.py's one-pool configuration; with ``mirror`` ("live",
    "dead"), its route mirrors every request to the pool ``shadow``; with
    ``cache``, the route caches in the embedded store."""
    from run import FORKPROXY_ONE_POOL

    body = FORKPROXY_ONE_POOL.format(origin=origin).replace("{port}", str(port))
    if cache:
        body = body.replace('pool = "origin"\n', 'pool = "origin"\ncache = true\n', 1) + CACHED
    if mirror == "none":
        return body
    body = body.replace('pool = "origin"\n', 'pool = "origin"\nmirror = { pool = "shadow" }\n', 1)
    return body + MIRRORED.format(shadow=shadow)


def workload(n: int, profile: bool = False, direct: bool = False,
             mirror: str = "none", cache: bool = False) -> None:
    """Serve WARMUP then ``n`` requests through an in-process runtime; with
    ``profile``, cProfile the ``n`` and print forkproxy's calls per request;
    with ``direct``, the client talks to the origin (the proxy idles)."""
    from gevent import monkey

    monkey.patch_all()
    import logging
    import socket
    from types import SimpleNamespace

    from gevent.server import StreamServer

    from forkproxy.config import loads
    from forkproxy.daemon import hooks
    from forkproxy.daemon.state import MasterState

    # bench/run.py's origin (bench/backend.py) and configuration, in this process
    from backend import make_response, serve
    answer = make_response(RESPONSE_SIZE)
    if cache:  # every request after the first is a hit
        answer = answer.replace(b"\r\n\r\n", b"\r\nCache-Control: max-age=3600\r\n\r\n", 1)
    origin = StreamServer(("127.0.0.1", 0), serve(answer))
    origin.start()
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(128)
    port = lsock.getsockname()[1]
    shadow = StreamServer(("127.0.0.1", 0), serve(make_response(RESPONSE_SIZE)))
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, never listening: refused
    if mirror == "live":
        shadow.start()
    run = tempfile.mkdtemp(prefix="fp-callgrind-")
    cfg = loads(SERVER.format(run=run) + configuration(
        origin.server_port, port, mirror,
        shadow.server_port if mirror == "live" else dead.getsockname()[1], cache))
    log = logging.getLogger("bench")
    arbiter = SimpleNamespace(state=MasterState(config=cfg), log=log)
    hooks.on_starting(arbiter)
    ctx = arbiter.state.new_worker(0.0)
    rt, _checker = hooks.build_runtime(ctx, log)  # the checker is not started
    proxy = StreamServer(lsock, lambda client, addr: rt.handle(lsock, client, addr))
    proxy.start()

    request = b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: callgrind\r\nAccept: */*\r\n\r\n"
    conn = socket.create_connection(("127.0.0.1", origin.server_port if direct else port))
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    pending = [b""]

    def one() -> None:
        conn.sendall(request)
        buf = pending[0]
        while b"\r\n\r\n" not in buf:
            data = conn.recv(65536)
            if not data:
                raise SystemExit("the proxy closed the connection")
            buf += data
        end = buf.index(b"\r\n\r\n") + 4
        head = buf[:end]
        if not head.startswith(b"HTTP/1.1 200 "):
            raise SystemExit(f"unexpected response: {head[:80]!r}")
        length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))
        while len(buf) < end + length:
            buf += conn.recv(65536)
        pending[0] = buf[end + length:]

    for _ in range(WARMUP):
        one()
    if profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        for _ in range(n):
            one()
        prof.disable()
        _print_profile(pstats.Stats(prof), n, by_time=profile == "time")
    else:
        for _ in range(n):
            one()
    sys.stdout.flush()
    os._exit(0)  # no teardown: the same for both counts anyway


def _print_profile(stats, n: int, by_time: bool = False) -> None:
    if by_time:  # every function of the process (client and origin too), own time
        rows = sorted(((tt / n * 1e6, nc / n, f"{path}:{line}({name})")
                       for (path, line, name), (cc, nc, tt, ct, callers) in stats.stats.items()),
                      reverse=True)
        print(f"own time per request under cProfile, us: {sum(r[0] for r in rows):.1f}")
        for us, calls, where in rows[:30]:
            print(f"{us:8.2f} us {calls:6.2f} calls  {where}")
        return
    rows, total = [], 0
    for (path, line, name), (cc, nc, tt, ct, callers) in stats.stats.items():
        if "/forkproxy/" not in path:
            continue
        total += nc
        rows.append((nc / n, f"{path.split('/forkproxy/', 1)[1]}:{line}({name})"))
    rows.sort(reverse=True)
    print(f"forkproxy function calls per request: {total / n:.1f}")
    for per, where in rows:
        if per >= 0.01:
            print(f"{per:8.2f}  {where}")


# -- the driver -----------------------------------------------------------------

def checkout(rev: str, into: Path) -> Path:
    """A directory holding ``forkproxy/`` at ``rev`` (``.``: a copy of this
    tree's, so that editing it meanwhile changes nothing)."""
    dest = Path(tempfile.mkdtemp(prefix="rev-", dir=into))
    if rev == ".":
        shutil.copytree(REPO / "forkproxy", dest / "forkproxy")
        return dest
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "forkproxy"],
                             check=True, stdout=subprocess.PIPE).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def instructions(src: Path, counts: tuple[int, ...], extra=()) -> list[int]:
    """Instructions valgrind counted in runs of the workload with each of
    ``counts`` requests (the runs go in parallel: a count does not depend on load)."""
    with tempfile.TemporaryDirectory(prefix="fp-callgrind-") as d:
        env = dict(os.environ, PYTHONPATH=str(src), PYTHONHASHSEED="0")
        procs = [subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={d}/{n}.out",
                                   sys.executable, str(Path(__file__).resolve()), "--serve", str(n), *extra],
                                  env=env, cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True) for n in counts]
        got = []
        for p in procs:
            err = p.communicate()[1]
            m = re.search(r"Collected : (\d+)", err)
            if p.returncode != 0 or m is None:
                raise SystemExit(f"valgrind run failed ({p.returncode}):\n{err[-3000:]}")
            got.append(int(m.group(1)))
        return got


def _commit(rev: str) -> str:
    """``rev`` as a short commit id (so the output says which commit ran)."""
    return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", rev + "^{commit}"],
                          check=True, stdout=subprocess.PIPE, text=True).stdout.strip()


def describe(rev: str) -> str:
    if rev == ".":
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              stdout=subprocess.PIPE, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "forkproxy"],
                               stdout=subprocess.PIPE, text=True).stdout.strip()
        return f"tree ({head}{'+changes' if dirty else ''})"
    return rev


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="instructions per proxied request (callgrind)")
    ap.add_argument("--at", action="append", metavar="REV",
                    help="a commit to measure (repeatable; '.' = this tree; default: this tree)")
    ap.add_argument("--profile", nargs="?", const="calls", choices=("calls", "time"),
                    help="cProfile instead: forkproxy's function calls per request, or "
                         "(--profile time) the 30 functions with the most own time")
    ap.add_argument("--requests", type=int, default=1000,
                    help="--profile: measured requests (default 1000)")
    ap.add_argument("--direct", action="store_true",
                    help="the client sends to the origin, not through the proxy: the "
                         "harness's own share of a proxied request's count")
    ap.add_argument("--mirror", choices=("none", "live", "dead"), default="none",
                    help="the route mirrors every request to a live or a dead (ejected) pool")
    ap.add_argument("--cache", action="store_true",
                    help="the route caches (embedded store) and the origin's answer may be "
                         "cached: every measured request is a cache hit")
    ap.add_argument("--serve", type=int, metavar="N", help=argparse.SUPPRESS)  # the workload
    args = ap.parse_args(argv)
    if args.serve is not None:
        workload(args.serve, args.profile, args.direct, args.mirror, args.cache)
        return 0
    revs = args.at or ["."]
    revs = [rev if rev == "." else _commit(rev) for rev in revs]
    from run import interpreter  # the counts are the interpreter's as much as forkproxy's

    print(interpreter(), flush=True)
    with tempfile.TemporaryDirectory(prefix="fp-callgrind-src-") as tmp:
        for rev in revs:
            name = describe(rev)
            src = checkout(rev, Path(tmp))
            if args.profile:
                print(f"== {name}", flush=True)
                env = dict(os.environ, PYTHONPATH=str(src), PYTHONHASHSEED="0")
                subprocess.run([sys.executable, str(Path(__file__).resolve()), "--serve",
                                str(args.requests), "--profile", args.profile,
                                "--mirror", args.mirror] + (["--cache"] if args.cache else []),
                               env=env, check=True)
                continue
            extra = ("--mirror", args.mirror) + (("--direct",) if args.direct else ()) \
                + (("--cache",) if args.cache else ())
            lo, hi = instructions(src, (N_LO, N_HI), extra)
            name += " (direct)" if args.direct else ""
            name += f" (mirror {args.mirror})" if args.mirror != "none" else ""
            name += " (cache hits)" if args.cache else ""
            per = (hi - lo) / (N_HI - N_LO)
            print(f"{name:<28} {per:>10,.0f} instructions/request  "
                  f"(N={N_HI}: {hi:,}; N={N_LO}: {lo:,})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
