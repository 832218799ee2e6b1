"""net.outlier.Detector over a table in a bytearray: what the checker's lock
holder decides from the workers' counts (no processes, a clock of its own)."""

from __future__ import annotations

import logging

from forkproxy.config import loads
from forkproxy.core.table import Table, table_size
from forkproxy.net.outlier import CONSECUTIVE_POLL, Detector

SERVERS = ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"]


def setup(outlier: str, extra: str = "", slots: int = 2):
    servers = ", ".join(f'{{ addr = "{a}" }}' for a in SERVERS)
    cfg = loads(f"""
[[listener]]
name = "web"
bind = "127.0.0.1:8080"

[[route]]
pool = "web"

[pool.web]
servers = [{servers}]
outlier = {{ {outlier} }}
{extra}

[pool.plain]
servers = [{{ addr = "127.0.0.1:9100" }}]
""", "a.toml")
    t = Table(bytearray(table_size(4, slots)), create=True, n_rows=4, n_slots=slots)
    for row, addr in enumerate(SERVERS):
        t.set_label(row, f"web/{addr}")
    t.set_label(3, "plain/127.0.0.1:9100")
    clock = [1000.0]
    log = _Log()
    d = Detector(t, cfg, log, metrics=_Counts(), clock=lambda: clock[0])
    return d, t, clock, log


class _Log(logging.Logger):
    def __init__(self):
        super().__init__("test")
        self.lines: list[str] = []

    def _log(self, level, msg, args, *a, **kw):
        self.lines.append(msg % args)


class _Counts:
    def __init__(self):
        self.seen: list[tuple] = []

    def ejection(self, pool, server, reason):
        self.seen.append((pool, server, reason))


def test_poll_is_fast_with_a_consecutive_rule_else_the_interval():
    assert setup('consecutive_5xx = 3, interval = "10s"')[0].poll == CONSECUTIVE_POLL
    assert setup('consecutive_5xx = 0, interval = "2s"')[0].poll == 2.0


def test_consecutive_5xx_over_workers_ejects_then_the_multiplier_grows():
    d, t, clock, log = setup('consecutive_5xx = 3, success_rate = false, '
                             'base_ejection_time = "30s", interval = "10s"')
    t.outcome(2, 0, 999.0, "5xx")
    t.outcome(2, 1, 999.1, "5xx")
    d.job()
    assert t.read_outlier(2).until == 0.0  # two: not yet
    t.outcome(2, 0, 999.2, "gateway")
    d.job()
    o = t.read_outlier(2)
    assert (o.until, o.ejections, o.reason) == (1030.0, 1, "3 consecutive 5xx")
    assert d.metrics.seen == [("web", SERVERS[2], "consecutive_5xx")]
    assert f"server web/{SERVERS[2]} ejected for 30s (outlier: 3 consecutive 5xx)" in log.lines
    # It ends; errors after it begin a new run, and the second ejection is twice as long.
    clock[0] = 1031.0
    d.job()
    assert f"server web/{SERVERS[2]} is back in rotation after its ejection" in log.lines
    for k in range(3):
        t.outcome(2, 0, 1031.0 + k / 10, "5xx", since=1000.0)
    d.job()
    assert t.read_outlier(2).until == 1031.0 + 60 and t.read_outlier(2).ejections == 2


def test_the_max_share_keeps_the_second_server_in_and_says_so_once():
    d, t, clock, log = setup('consecutive_5xx = 2, success_rate = false',
                             "max_ejection_percent = 34")
    for row in (1, 2):
        t.outcome(row, 0, 999.0, "5xx")
        t.outcome(row, 1, 999.5, "5xx")
    d.job()
    d.job()
    assert [t.read_outlier(r).until > clock[0] for r in range(3)] == [False, True, False]
    held = [line for line in log.lines if "max_ejection_percent (34%)" in line]
    assert len(held) == 1 and SERVERS[2] in held[0]


def test_success_rate_pass_per_interval_and_decay():
    d, t, clock, log = setup('consecutive_5xx = 0, interval = "1s", '
                             "success_rate_minimum_hosts = 3, success_rate_request_volume = 10, "
                             "success_rate_stdev_factor = 1.0")
    d.job()  # the first pass only takes the baseline
    for row in range(3):
        for k in range(20):
            bad = row == 0 and k % 2
            t.outcome(row, k % 2, 1000.0 + k / 100, "5xx" if bad else "ok")
    clock[0] = 1000.5
    d.job()  # not an interval yet
    assert t.read_outlier(0).until == 0.0
    clock[0] = 1001.0
    d.job()
    o = t.read_outlier(0)
    assert o.until == 1031.0 and o.reason.startswith("success rate 50% < ")
    assert [t.read_outlier(r).until for r in (1, 2)] == [0.0, 0.0]
    assert t.read_outlier(3).until == 0.0  # a pool without outlier: never
    # Back in rotation, the multiplier goes down by one once it stayed an interval.
    clock[0] = 1031.5
    d.job()
    assert t.read_outlier(0).ejections == 1
    clock[0] = 1032.5
    d.job()
    assert t.read_outlier(0).ejections == 0
