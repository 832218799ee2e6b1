"""Outlier detection's decisions, made by the worker that runs the health checks.

Every worker counts its attempts' outcomes in the shared table
(``net.pools.PoolRuntime.outcome``, ``core.table.Table.outcome``); the
worker holding the checker lock runs ``Detector.job`` at every poll of the
checker (a housekeeping job of ``net.checker.Checker``, so one process
decides, and a new lock holder carries on from the table):

* at every poll (``CONSECUTIVE_POLL``), a server whose consecutive 5xx or gateway errors (summed
  over the workers) reached the pool's threshold is ejected;
* every ``interval``, the success rates of the pool's servers over the
  interval (the difference of the table's totals since the last pass) are
  compared (``core.outlier.success_rate_outliers``), and the multiplier of
  servers back in rotation goes down by one.

An ejection is a write of the row's outlier cell (until when, why); every
worker reads it at its next refresh (``net.pools``, within 0.2 s) and sends
the server no new request until then.  ``room`` keeps ejections within the
pool's ``max_ejection_percent``.
"""

from __future__ import annotations

import time

from forkproxy import control
from forkproxy.core.outlier import (
    after_interval, consecutive_reason, eject, room, success_rate_outliers,
)

__all__ = ["Detector", "CONSECUTIVE_POLL"]

#: Seconds between two looks at the runs of consecutive errors.
CONSECUTIVE_POLL = 0.1


class Detector:
    """The outlier decisions for ``cfg``'s pools that have ``outlier``.

    ``metrics``: a ``core.metrics.SlotCounter`` (None: not counted);
    ``clock``: the epoch clock (the table's times are epoch seconds).
    """

    def __init__(self, table, cfg, log, metrics=None, clock=time.time):
        self.table, self.log, self.metrics, self.clock = table, log, metrics, clock
        self.pools = {p.name: p for p in cfg.pools if p.outlier is not None}
        self._window: dict[int, tuple[int, int, int]] = {}  # row -> (serial, successes, errors)
        self._next: dict[str, float] = {}  # pool -> when its next interval pass is due
        self._out: set[int] = set()  # rows this detector saw ejected (to say when they return)
        self._held: set[int] = set()  # rows the max share kept in, already said

    @property
    def poll(self) -> float | None:
        """The longest the checker may wait between two runs of ``job``:
        ``CONSECUTIVE_POLL`` when a pool has a consecutive rule (a run past
        its threshold is ejected within it), else the shortest interval."""
        polls = [min(p.outlier.interval, CONSECUTIVE_POLL)
                 if p.outlier.consecutive_5xx or p.outlier.consecutive_gateway_failure
                 else p.outlier.interval for p in self.pools.values()]
        return min(polls, default=None)

    def job(self) -> None:
        if not self.pools:
            return
        now = self.clock()
        by_pool: dict[str, list] = {}
        for row, label, m in control.members(self.table):
            pool, _, addr = label.partition("/")
            if m.state == "active" and pool in self.pools:
                by_pool.setdefault(pool, []).append((row, addr, m.serial))
        for name, servers in by_pool.items():
            self._pool(self.pools[name], servers, now)

    def _pool(self, pool, servers: list, now: float) -> None:
        rules = pool.outlier
        cells = [self.table.read_outlier(row) for row, _, _ in servers]
        for (row, addr, _), o in zip(servers, cells):
            if row in self._out and o.until <= now:
                self._out.discard(row)
                self.log.info("server %s/%s is back in rotation after its ejection",
                              pool.name, addr)
        free = room(len(servers), sum(o.until > now for o in cells), pool.max_ejection_percent)
        for k, (row, addr, _) in enumerate(servers):
            o = cells[k]
            if o.until > now:
                continue
            counts = self.table.outlier_counts(row, since=o.since)
            why = consecutive_reason(counts, rules.consecutive_5xx,
                                     rules.consecutive_gateway_failure)
            if why is None:
                self._held.discard(row)
            elif free > 0:
                label = ("consecutive_gateway_failure" if "gateway" in why else "consecutive_5xx")
                cells[k] = self._eject(pool, row, addr, o, now, why, label)
                free -= 1
            else:
                self._hold(pool, row, addr, why)
        if now >= self._next.get(pool.name, 0.0):
            self._next[pool.name] = now + rules.interval
            self._interval(pool, servers, cells, now, free)

    def _interval(self, pool, servers: list, cells: list, now: float, free: int) -> None:
        """The success-rate pass over the last interval, and the multipliers' decay."""
        rules = pool.outlier
        volumes: list[tuple[int, int] | None] = []
        for k, (row, _, serial) in enumerate(servers):
            c = self.table.outlier_counts(row)
            last = self._window.get(row)
            self._window[row] = (serial, c.successes, c.errors)
            if last is None or last[0] != serial or cells[k].until > now:
                volumes.append(None)  # no interval yet, another server's row, or ejected
                continue
            ok, bad = max(0, c.successes - last[1]), max(0, c.errors - last[2])
            volumes.append((ok, ok + bad))
            lower = after_interval(cells[k], now, rules.interval)
            if lower != cells[k]:
                self.table.write_outlier(row, lower)
                cells[k] = lower
        if not rules.success_rate:
            return
        found = success_rate_outliers(volumes, rules.success_rate_minimum_hosts,
                                      rules.success_rate_request_volume,
                                      rules.success_rate_stdev_factor)
        for k, (rate, threshold) in sorted(found.items(), key=lambda kv: kv[1][0]):
            row, addr, _ = servers[k]
            why = f"success rate {rate:.0f}% < {max(0.0, threshold):.0f}%"
            if free > 0:
                self._eject(pool, row, addr, cells[k], now, why, "success_rate")
                free -= 1
            else:
                self._hold(pool, row, addr, why)

    def _hold(self, pool, row: int, addr: str, why: str) -> None:
        """Say once that the pool's max_ejection_percent keeps a server in."""
        if row not in self._held:
            self._held.add(row)
            self.log.warning("server %s/%s not ejected (outlier: %s): pool %s is at its "
                             "max_ejection_percent (%d%%)", pool.name, addr, why, pool.name,
                             pool.max_ejection_percent)

    def _eject(self, pool, row: int, addr: str, o, now: float, why: str, label: str):
        rules = pool.outlier
        new = eject(o, now, why, rules.base_ejection_time, rules.max_ejection_time)
        self.table.write_outlier(row, new)
        self._out.add(row)
        self._held.discard(row)
        self.log.warning("server %s/%s ejected for %gs (outlier: %s)", pool.name, addr,
                         round(new.until - now, 3), why)
        if self.metrics is not None:
            self.metrics.ejection(pool.name, addr, label)
        return new
