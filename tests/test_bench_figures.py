"""bench/run.py's figures: the share of CPU the host stole, the CPU a target's process
tree spent per request, the ratios of rounds, the report's tables."""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

from support.runner import REPO_ROOT

# bench/run.py is a script, not a package module: load it under a name of its own
_spec = importlib.util.spec_from_file_location("fp_bench_run", REPO_ROOT / "bench" / "run.py")
bench = sys.modules["fp_bench_run"] = importlib.util.module_from_spec(_spec)  # dataclasses look it up
_spec.loader.exec_module(bench)


@pytest.mark.parametrize("before, after, share", [
    # user nice system idle iowait irq softirq steal guest guest_nice
    ([10, 0, 10, 70, 0, 0, 0, 5, 0, 0], [20, 0, 20, 130, 0, 0, 0, 35, 0, 0], 30 / 110 * 100),
    ([10, 0, 10, 70, 0, 0, 0, 5, 3, 0], [20, 0, 20, 170, 0, 0, 0, 5, 9, 0], 0.0),  # guest in user
    ([5, 0, 5, 5, 0, 0, 0, 5], [5, 0, 5, 5, 0, 0, 0, 5], None),      # no time passed
    ([1, 2, 3, 4], [2, 3, 4, 5], None),                               # no steal column
    (None, [1, 2, 3, 4, 5, 6, 7, 8], None),                           # no /proc/stat
])
def test_steal_share(before, after, share):
    got = bench.steal_share(before, after)
    assert got == (None if share is None else pytest.approx(share))


def test_steal_warning_only_past_the_threshold():
    assert bench.steal_warning(None) is None
    assert bench.steal_warning(bench.STEAL_WARN) is None
    assert "12%" in bench.steal_warning(12.3)


def test_cpu_times_reads_this_machine():
    times = bench.cpu_times()
    assert times is not None and len(times) >= 8 and all(t >= 0 for t in times)


# -- CPU per request: /proc/PID/stat, the live process tree ------------------

def _stat_line(pid, comm, ppid, utime, stime, cutime, cstime):
    # fields 1-17 of /proc/PID/stat, then a tail as the kernel writes it
    return (f"{pid} ({comm}) S {ppid} {pid} {pid} 0 -1 4194560 100 0 0 0 "
            f"{utime} {stime} {cutime} {cstime} 20 0 1 0 100 1000 50\n")


@pytest.mark.parametrize("text, want", [
    (_stat_line(10, "python", 1, 7, 3, 0, 0), (1, 10)),
    (_stat_line(11, "gunicorn: worker [x]", 10, 100, 50, 0, 0), (10, 150)),  # spaces in comm
    (_stat_line(12, "a) S 99 (b", 10, 1, 1, 0, 0), (10, 2)),                # ')' in comm
    (_stat_line(13, "master", 1, 5, 5, 40, 20), (1, 70)),                   # reaped children's time
    ("13 (cut short) S 1 13", None),
    ("no parenthesis at all", None),
    ("", None),
])
def test_parse_stat(text, want):
    assert bench.parse_stat(text) == want


# pid: (ppid, ticks). 100 is a master with workers 101, 102; 102 forked 103;
# 200 is memcached; 300 an unrelated process; 1 is init.
SNAP = {1: (0, 1000), 100: (1, 5), 101: (100, 40), 102: (100, 30), 103: (102, 7),
        200: (1, 11), 300: (1, 500)}


@pytest.mark.parametrize("roots, want", [
    ([100], 5 + 40 + 30 + 7),            # the master and every descendant, grandchild too
    ([102], 30 + 7),                     # a subtree only
    ([103], 7),                          # a leaf
    ([100, 200], 82 + 11),               # forkproxy plus memcached (cache hits)
    ([100, 102], 82),                    # a root inside another's tree is counted once
    ([100, 100], 82),
    ([999], 0),                          # gone: nothing
    ([999, 200], 11),
    ([], 0),
])
def test_tree_ticks(roots, want):
    assert bench.tree_ticks(SNAP, roots) == want


def test_tree_ticks_ignores_a_parent_loop():
    # pid reuse between two reads of /proc can make a process look like its ancestor's parent
    assert bench.tree_ticks({5: (6, 1), 6: (5, 2)}, [5]) == 3


@pytest.mark.parametrize("before, after, requests, hz, want", [
    (100, 300, 10_000, 100, 200.0),                # 2 s of CPU over 10,000 requests
    (0, 1, 1, 100, 10_000.0),                      # one tick is 10 ms at HZ=100
    (0, 250, 1_000_000, 250, 1.0),
    (50, 50, 5, 100, 0.0),
    (100, 300, 0, 100, None),                      # no request served
    (300, 100, 10, 100, None),                     # went backwards: a root exited
])
def test_cpu_us_per_request(before, after, requests, hz, want):
    got = bench.cpu_us_per_request(before, after, requests, hz)
    assert got == (None if want is None else pytest.approx(want))


def test_proc_snapshot_sees_this_process_and_its_parent():
    snap = bench.proc_snapshot()
    assert snap[os.getpid()][0] == os.getppid()
    assert bench.tree_ticks(snap, [os.getppid()]) >= snap[os.getpid()][1]


# -- ratios: the median of the rounds' ratios --------------------------------

@pytest.mark.parametrize("top, base, each, median", [
    ([2.0, 3.0, 4.0], [1.0, 1.0, 2.0], [2.0, 3.0, 2.0], 2.0),
    ([1.0, 4.0], [2.0, 2.0], [0.5, 2.0], 1.25),               # even count: mean of the middle two
    ([5.0], [2.0], [2.5], 2.5),
    ([1.0, None, 3.0], [1.0, 1.0, 1.0], [1.0, 3.0], 2.0),     # a round without a figure is left out
    ([1.0, 2.0], [0.0, 1.0], [2.0], 2.0),                     # so is a zero base
    ([1.0, 2.0], [1.0], [], None),                            # not the same rounds: no ratio
    ([], [], [], None),
])
def test_round_ratios_and_their_median(top, base, each, median):
    assert bench.round_ratios(top, base) == pytest.approx(each)
    assert bench.ratio_of(top, base) == (None if median is None else pytest.approx(median))


@pytest.mark.parametrize("text, want", [
    ("t1c32,t2c64", [(1, 32), (2, 64)]),
    ("t4c4", [(4, 4)]),
    (" t1c32 , t2c64 ", [(1, 32), (2, 64)]),
])
def test_parse_shapes(text, want):
    assert bench.parse_shapes(text) == want


@pytest.mark.parametrize("text", ["", "t1", "c32", "t0c32", "t4c2", "t1c32,", "2x64", "t1c32;t2c64"])
def test_parse_shapes_rejects(text):
    with pytest.raises(ValueError, match="tNcM"):
        bench.parse_shapes(text)


def _run(target, rps, p99, cpu, shape="t1c32"):
    return bench.Result(target=target, rps=rps, p50_ms=p99 / 2, p99_ms=p99, requests=100,
                        cpu_us=cpu, shape=shape)


def test_median_row_takes_each_figures_median_round():
    row = bench._median_row([_run("x", 100, 9.0, 30.0), _run("x", 300, 3.0, None),
                             _run("x", 200, 5.0, 10.0), _run("x", 150, 4.0, 20.0)])
    assert row.rps == 175.0 and row.cpu_us == 20.0              # medians, each on its own
    assert row.p99_ms == 5.0                                    # the median-req/s round's (200)
    assert row.cpu_rounds == [30.0, None, 10.0, 20.0] and row.p99_rounds == [9.0, 3.0, 5.0, 4.0]
    assert row.requests == 400 and row.shape == "t1c32"


def test_report_has_one_table_per_shape_with_ratio_columns():
    def row(target, rps, p99, cpu, shape):
        r = bench._median_row([_run(target, rps, p99, cpu, shape)])
        return r

    rows = [row("nginx", 1000, 2.0, 50.0, "t1c32"), row("haproxy", 1000, 2.0, 40.0, "t1c32"),
            row("forkproxy", 500, 5.0, 200.0, "t1c32"),
            row("nginx", 2000, 4.0, 40.0, "t2c64"), row("forkproxy", 800, 6.0, 120.0, "t2c64")]
    args = type("Args", (), {"seconds": 3})()
    text = bench.report("get1k", rows, args)
    t1, t2 = text.split("shape t1c32")[1].split("shape t2c64")
    assert "/haproxy" in t1 and "/haproxy" not in t2
    assert "ratio forkproxy/nginx: cpu/req 4.000; req/s 0.500; p99 2.500" in t1
    assert "ratio forkproxy/haproxy: cpu/req 5.000" in t1
    assert "ratio forkproxy/nginx: cpu/req 3.000; req/s 0.400; p99 1.500" in t2
    fp = next(line for line in t1.splitlines() if line.startswith("forkproxy"))
    assert fp.split()[1:4] == ["200.0", "4.00", "5.00"]         # cpu us/req, /nginx, /haproxy



def test_report_compares_this_tree_with_another_commit():
    """--also COMMIT: its row, as wide as its name, and this tree's ratio to it."""
    rows = [bench._median_row([_run("forkproxy", 1000, 5.0, 90.0)]),
            bench._median_row([_run("forkproxy@f8e67dc", 800, 6.0, 100.0)])]
    text = bench.report("get1k", rows, type("Args", (), {"seconds": 3})())
    assert "ratio forkproxy/forkproxy@f8e67dc: cpu/req 0.900; req/s 1.250; p99 0.833" in text
    old = next(line for line in text.splitlines() if line.startswith("forkproxy@"))
    assert old.split()[:3] == ["forkproxy@f8e67dc", "100.0", "800"]


@pytest.mark.parametrize("only, target, want", [
    (None, "nginx", True),
    ({"forkproxy"}, "forkproxy@f8e67dc", True),       # a commit's forkproxy goes with it
    ({"forkproxy"}, "nginx", False),
    ({"forkproxy@f8e67dc"}, "forkproxy", False),
    ({"direct", "forkproxy"}, "direct", True),
])
def test_targets_keeps_the_named_ones(tmp_path, only, target, want):
    ctx = bench.Ctx(type("Args", (), {"targets": only})(), tmp_path)
    assert ctx.wants(target) is want
    assert (ctx.started(target, lambda: 1234) is None) is not want

# -- bench/idle.py: memory per idle keep-alive connection ---------------------

_ispec = importlib.util.spec_from_file_location("fp_bench_idle", REPO_ROOT / "bench" / "idle.py")
idle = sys.modules["fp_bench_idle"] = importlib.util.module_from_spec(_ispec)
_ispec.loader.exec_module(idle)

ROLLUP = """55d0c0a5e000-7ffd9e1f5000 ---p 00000000 00:00 0                          [rollup]
Rss:               36732 kB
Pss:               23286 kB
Pss_Anon:          20000 kB
Shared_Clean:       9000 kB
"""
STATUS = "Name:\tnginx\nVmPeak:\t   20000 kB\nVmRSS:\t    8844 kB\nRssAnon:\t    3000 kB\n"


@pytest.mark.parametrize("text, want", [
    (ROLLUP, (36732, 23286)),            # Pss_Anon is not Pss
    (STATUS, (8844, None)),              # no smaps_rollup: RSS only
    ("Name:\tkthreadd\n", None),         # a kernel thread has no memory lines
    ("", None),
])
def test_parse_mem(text, want):
    assert idle.parse_mem(text) == want


@pytest.mark.parametrize("before, after, conns, want", [
    (40000, 151600, 10000, 11.16),
    (40000, 40000, 10000, 0.0),
    (40000, 39000, 1000, -1.0),          # the tree shrank meanwhile: reported as measured
    (None, 50000, 10, None),
    (40000, 50000, 0, None),             # nothing held: no figure
])
def test_per_conn(before, after, conns, want):
    got = idle.per_conn(before, after, conns)
    assert got == (None if want is None else pytest.approx(want))


@pytest.mark.parametrize("wanted, limit, per, want", [
    (10000, 20000, 1, 10000),
    (10000, 20000, 2, (20000 - idle.SPARE_FDS) // 2),   # HAProxy: two descriptors each
    (10000, 1024, 1, 1024 - idle.SPARE_FDS),
    (10000, 100, 1, 0),                                 # not even the spares
    (50, 20000, 2, 50),
])
def test_conn_budget(wanted, limit, per, want):
    assert idle.conn_budget(wanted, limit, per) == want
