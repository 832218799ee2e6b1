"""A pool as one worker sees it: balancer, upstream connections, and the shared table.

``PoolRuntime`` is the ``ServerView`` its balancer reads on every pick.
Reading the shared table (a seqlocked record per server) on every request
would cost microseconds per server, so each worker keeps a snapshot of what
the balancer needs (usable or not, effective weight) and refreshes it from
the table every ``REFRESH`` seconds: an admin change or a health transition
reaches every worker within that time.  In-flight counts are different:
they are this worker's own writes (``begin``/``end``) and are read live when
an algorithm needs them.
"""

from __future__ import annotations

from forkproxy.config import PoolConfig
from forkproxy.core.balance import Balancer, ServerSpec
from forkproxy.core.health import passive_out, slow_start_weight
from forkproxy.core.table import Table
from forkproxy.net.upstream import ConnPool

REFRESH = 0.2  # seconds between two snapshots of the shared table


def came_back(h) -> bool:
    """True when the row's state comes from checks, not from start-up.

    Slow start ramps a server that came back up, never every server at
    start (as HAProxy's slowstart).
    """
    return not h.reason.startswith("init-state") and not h.reason.startswith("initial")


class PoolRuntime:
    """One pool inside one worker."""

    def __init__(self, cfg: PoolConfig, table: Table, rows: list[int], slot: int | None):
        self.cfg = cfg
        self.name = cfg.name
        self.servers = cfg.servers
        self.table = table
        self.rows = rows
        self.slot = slot
        self.balancer = Balancer([ServerSpec(s.addr, s.weight, s.backup) for s in cfg.servers],
                                 algorithm=cfg.balance)
        self.conns = [ConnPool(s, cfg) for s in cfg.servers]
        n = len(cfg.servers)
        self._usable = [True] * n
        self._weight = [s.weight for s in cfg.servers]
        self._forgiven = [0.0] * n  # last successful active check, per server

    # -- ServerView ---------------------------------------------------------

    def usable(self, i: int) -> bool:
        return self._usable[i]

    def inflight(self, i: int) -> int:
        return self.table.inflight(self.rows[i])

    def effective_weight(self, i: int) -> int:
        return self._weight[i]

    # -- what a request does ------------------------------------------------

    def begin(self, i: int) -> None:
        if self.slot is not None:
            self.table.inflight_add(self.rows[i], self.slot, 1)

    def end(self, i: int) -> None:
        if self.slot is not None:
            self.table.inflight_add(self.rows[i], self.slot, -1)

    def failed(self, i: int, now: float) -> None:
        """A passive failure (connect error, timeout, configured 5xx).

        As nginx: a pool of one server never takes it out (there is nowhere
        else to go, and a 502 says more than a 503).
        """
        cfg = self.cfg
        if self.slot is None or not cfg.max_fails or len(self.servers) == 1:
            return
        self.table.passive_fail(self.rows[i], self.slot, now, cfg.fail_timeout,
                                since=self._forgiven[i])
        # This worker stops sending there at once; the others see it at
        # their next refresh.
        if passive_out(self.table.passive_failures(self.rows[i], now, cfg.fail_timeout,
                                                   since=self._forgiven[i]), cfg.max_fails):
            self._usable[i] = False

    # -- the snapshot -------------------------------------------------------

    def refresh(self, now: float) -> None:
        """Re-read health, admin state and passive failures of every server."""
        cfg = self.cfg
        table = self.table
        for i, row in enumerate(self.rows):
            h = table.read_health(row)
            a = table.read_admin(row)
            if h is not None and h.state == "up" and h.failures == 0 and h.last_check:
                self._forgiven[i] = h.last_check
            up = h is None or h.state == "up"
            out = cfg.max_fails and len(self.servers) > 1 and passive_out(
                table.passive_failures(row, now, cfg.fail_timeout, since=self._forgiven[i]),
                cfg.max_fails)
            self._usable[i] = up and a.state == "ready" and not out
            weight = a.weight if a.weight > 0 else self.servers[i].weight
            if cfg.slow_start and h is not None and h.state == "up" and came_back(h):
                weight = slow_start_weight(weight, now - h.last_change, cfg.slow_start)
            self._weight[i] = weight

    def close(self) -> None:
        for pool in self.conns:
            pool.close()
