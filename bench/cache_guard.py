"""Guarding pylibmc under gevent: hit latency and hub stalls, direct vs threadpool.

    python bench/cache_guard.py                    # 5000 hits per mode, 2 s frozen per mode
    python bench/cache_guard.py --hits 20000 --json out.json

Runs as a forkproxy worker does (gevent monkey-patched) against a real
memcached it starts on 127.0.0.1 and stops by pid.  For each mode of
``forkproxy.net.cache_memcached.MemcachedStore``:

- hit: ``get_entry`` of a stored 10 KB body, read to its end (p50/p99 us);
- live: the same load on a running memcached, for the baseline hub stall;
- frozen: memcached is SIGSTOPped while 20 greenlets keep calling
  ``get_entry`` and a ticker greenlet sleeps 1 ms at a time; reported are
  the longest hub stall (the ticker's longest gap beyond its 1 ms), the
  slowest ``get_entry``, the time from the freeze to the breaker opening,
  and (after SIGCONT) the time until it is closed again.

Numbers are from this machine, this run; compare the modes, not the absolutes.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))

from forkproxy.net.cache_memcached import Breaker, MemcachedStore  # noqa: E402
from support.procs import Proc, free_port, wait_for_port  # noqa: E402

MODES = ("direct", "threadpool")


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p / 100))]


def store_for(addr, mode, timeout_ms):
    return MemcachedStore([addr], mode=mode, timeout_ms=timeout_ms, breaker=Breaker())


def read(store, key):
    got = store.get_entry(key)
    if got is not None:
        for _ in got[1]:
            pass
    return got


def bench_hits(addr, mode, n, timeout_ms):
    store = store_for(addr, mode, timeout_ms)
    w = store.begin_write("hit10k", b"head")
    w.write(b"x" * 10_240)
    assert w.commit(), "could not store the 10 KB body"
    for _ in range(200):           # warm up: connection, pool threads
        read(store, "hit10k")
    lat = []
    for _ in range(n):
        t0 = time.perf_counter()
        assert read(store, "hit10k") is not None
        lat.append((time.perf_counter() - t0) * 1e6)
    return {"hit_p50_us": round(pct(lat, 50), 1), "hit_p99_us": round(pct(lat, 99), 1)}


def load(store, seconds):
    """The longest hub stall while 20 greenlets call a live memcached (the baseline)."""
    stop = False
    stall = [0.0]

    def ticker():
        last = time.perf_counter()
        while not stop:
            gevent.sleep(0.001)
            now = time.perf_counter()
            stall[0] = max(stall[0], now - last - 0.001)
            last = now

    def client(i):
        while not stop:
            read(store, f"k{i}")
            gevent.sleep(0.002)

    greenlets = [gevent.spawn(ticker)] + [gevent.spawn(client, i) for i in range(20)]
    gevent.sleep(seconds)
    stop = True
    gevent.joinall(greenlets)
    return stall[0]


def bench_frozen(mc, mode, seconds, timeout_ms):
    store = store_for(mc["addr"], mode, timeout_ms)
    read(store, "warm")             # connected before the freeze
    live = load(store, seconds / 2)
    stop = False
    stalls, calls = [0.0], [0.0]

    def ticker():
        last = time.perf_counter()
        while not stop:
            gevent.sleep(0.001)
            now = time.perf_counter()
            stalls[0] = max(stalls[0], now - last - 0.001)
            last = now

    def client(i):
        while not stop:
            t0 = time.perf_counter()
            read(store, f"k{i}")
            calls[0] = max(calls[0], time.perf_counter() - t0)
            gevent.sleep(0.002)

    tick = gevent.spawn(ticker)
    gevent.sleep(0.05)
    mc["proc"].signal(signal.SIGSTOP)
    frozen_at = time.perf_counter()
    workers = [gevent.spawn(client, i) for i in range(20)]
    opened = None
    while time.perf_counter() - frozen_at < seconds:
        if opened is None and store.breaker.state != "closed":
            opened = time.perf_counter() - frozen_at
        gevent.sleep(0.001)
    mc["proc"].signal(signal.SIGCONT)
    thawed = time.perf_counter()
    closed = None
    while time.perf_counter() - thawed < 10:
        if store.breaker.state == "closed":
            closed = time.perf_counter() - thawed
            break
        gevent.sleep(0.005)
    stop = True
    gevent.joinall(workers + [tick])
    return {"live_max_hub_stall_ms": round(live * 1e3, 1),
            "frozen_max_hub_stall_ms": round(stalls[0] * 1e3, 1),
            "frozen_max_call_ms": round(calls[0] * 1e3, 1),
            "breaker_open_after_ms": None if opened is None else round(opened * 1e3, 1),
            "breaker_closed_after_thaw_ms": None if closed is None else round(closed * 1e3, 1),
            "errors": store.counters["errors"], "bypassed": store.counters["bypassed"]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hits", type=int, default=5000)
    ap.add_argument("--frozen-seconds", type=float, default=2.0)
    ap.add_argument("--timeout-ms", type=int, default=30)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    import os
    import shutil
    binary = shutil.which("memcached") or "/usr/bin/memcached"
    port = free_port()
    argv_mc = [binary, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", "64"]
    if os.geteuid() == 0:
        argv_mc += ["-u", "root"]
    with tempfile.TemporaryDirectory() as tmp:
        proc = Proc(argv_mc, Path(tmp), name="memcached-bench")
        try:
            wait_for_port(port, proc=proc)
            mc = {"addr": f"127.0.0.1:{port}", "proc": proc}
            results = {}
            for mode in MODES:
                results[mode] = {**bench_hits(mc["addr"], mode, args.hits, args.timeout_ms),
                                 **bench_frozen(mc, mode, args.frozen_seconds, args.timeout_ms)}
        finally:
            proc.signal(signal.SIGCONT)
            proc.stop()
    cols = list(results[MODES[0]])
    print(f"timeout_ms={args.timeout_ms} hits={args.hits} frozen={args.frozen_seconds}s")
    print("%-30s" % "" + "".join("%14s" % m for m in MODES))
    for c in cols:
        print("%-30s" % c + "".join("%14s" % results[m][c] for m in MODES))
    d, t = results["direct"]["hit_p50_us"], results["threadpool"]["hit_p50_us"]
    print(f"hit p50 threadpool/direct: {t / d:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"timeout_ms": args.timeout_ms, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
