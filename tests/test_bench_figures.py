"""bench/run.py's figures about the machine: the share of CPU the host stole."""

from __future__ import annotations

import importlib.util
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
