"""A pool as one worker sees it: balancer, upstream connections, and the shared table.

``PoolRuntime`` is the ``ServerView`` its balancer reads on every pick.
Reading the shared table (a seqlocked record per server) on every request
would cost microseconds per server, so each worker keeps a snapshot of what
the balancer needs (usable or not, effective weight) and refreshes it from
the table every ``REFRESH`` seconds: an admin change or a health transition
reaches every worker within that time.

In-flight counts (least_conn, random2, max_conns) must include the other
workers' requests.  Summing a server's cells over the slots costs about
2.5 us, so a pool of up to ``LIVE_INFLIGHT_MAX`` servers reads them live at
every pick; a bigger pool uses the other workers' counts as of the last
snapshot plus this worker's own live count (bench/balance.py measures both).

Servers come and go at run time (``control.add_server``, ``remove_server``,
DNS discovery): the table's member cells say which rows hold this pool's
servers.  A refresh that finds the table's membership version moved
re-reads them (``sync_members``).  Indexes are stable for the worker's
life, because a request holds its server's index from pick to end: a new
server is appended, a removed one stays at its index, never picked again
(``_dead``), its in-flight requests ending normally.  The balancer then
runs over the live servers only (``_LiveView`` maps its indexes to ours).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import random
import time
from collections import deque
from dataclasses import replace

import gevent.event

from forkproxy.config import PoolConfig, RetryConfig, ServerEntry, split_host_port
from forkproxy.control import members
from forkproxy.core.balance import Balancer, ServerSpec, StickyTable, cookie_value, query_value
from forkproxy.core.health import ejected, slow_start_weight
from forkproxy.core.outlier import kind_of
from forkproxy.core.table import Table
from forkproxy.net.upstream import ConnPool


def conn_pool(server, pool) -> ConnPool:
    """The connections of one worker to one server of ``pool``, as its protocol says.

    net.upstream_h2 is imported for an HTTP/2 pool only: a worker that speaks no
    HTTP/2 never loads h2 (some 2 MiB of RSS per worker)."""
    if pool.protocol == "http1":
        return ConnPool(server, pool)
    from forkproxy.net.upstream_h2 import H2Pool

    return H2Pool(server, pool)

REFRESH = 0.2  # seconds between two snapshots of the shared table
LIVE_INFLIGHT_MAX = 16  # pools up to this size read in-flight counts live
QUEUE_POLL = 0.05  # a queued request re-checks at least this often (other workers free slots too)
DEFAULT_RETRY = RetryConfig()
# The worker's error log (gunicorn's): membership changes are rare and worth a line.
_log = logging.getLogger("gunicorn.error")


def came_back(h) -> bool:
    """True when the row's state comes from checks, not from start-up.

    Slow start ramps a server that came back up, never every server at
    start (as HAProxy's slowstart).
    """
    return not h.reason.startswith("init-state") and not h.reason.startswith("initial")


def sticky_secret(cfg: PoolConfig, daemon_key: bytes | None) -> bytes:
    """The HMAC key of a pool's sticky tokens: ``sticky.secret``, else one
    derived from ``daemon_key`` (the random key the master keeps in
    server.runtime_dir, ``daemon.hooks.sticky_key``) and the pool name.

    Never from the pool name alone: anyone could compute that key, and with
    it a cookie for any server addr they guess.
    """
    secret = cfg.sticky.secret if cfg.sticky is not None else None
    if secret is not None:
        return secret.encode("utf-8")
    if not daemon_key:
        raise ValueError(f"pool {cfg.name}: sticky needs sticky.secret or the daemon's key")
    return hmac.new(daemon_key, b"forkproxy sticky v1\0" + cfg.name.encode("utf-8"),
                    hashlib.sha256).digest()


class PoolRuntime:
    """One pool inside one worker.

    ``sticky``: the cookie's token table (``sticky`` without ``key``);
    ``stick``: the sticky table (``sticky = { key = ... }``, a
    ``net.sticktable.StickTable`` the runtime sets), else None.
    """

    stick = None

    def __init__(self, cfg: PoolConfig, table: Table, rows: list[int], slot: int | None,
                 sticky_key: bytes | None = None):
        """``sticky_key``: the daemon's random key (``sticky_secret``)."""
        self.cfg = cfg
        self.name = cfg.name
        self.servers = list(cfg.servers)
        self.table = table
        self.rows = list(rows)
        self.slot = slot
        # Whether attempts' outcomes are counted (``outcome``): the hot path asks this first.
        self.outliers = slot is not None and cfg.outlier is not None
        self._serials: list[int | None] = [None] * len(rows)  # None: as the master made it
        self._dead = [False] * len(rows)  # removed from the pool: never picked again
        self._secret = (sticky_secret(cfg, sticky_key)
                        if cfg.sticky is not None and cfg.sticky.key is None else None)
        self._version = None  # the table's membership version last synced
        self._build_balancer()
        self.retry = cfg.retry or DEFAULT_RETRY
        # With retry.budget: this worker's requests of the pool in flight,
        # and of those, the ones on a retry (net.forward.ServerChoice).
        self.active = self.retrying = 0
        self.conns = [conn_pool(s, cfg) for s in cfg.servers]
        n = len(cfg.servers)
        self._usable = [True] * n
        self._sticky_ok = [True] * n  # usable, or in drain: still takes its sticky clients
        # Up and ready but for passive checks (core.health.ejected), and of
        # those, out by passive checks, at the last refresh.
        self._eligible = [True] * n
        self._drain = [False] * n
        self._out = [False] * n
        self._ejected = [False] * n  # ejected by outlier detection (core.outlier), at the last refresh
        self._since = [0.0] * n  # when outlier detection last ejected it (runs before it are over)
        self._weight = [s.weight for s in cfg.servers]
        self._forgiven = [0.0] * n  # last successful active check, per server
        self._own = [0] * n  # this worker's requests in flight, per server
        # This worker's in-flight cell of each server in the shared table.
        self._cells = [table.inflight_cell(r, slot) for r in rows] if slot is not None else None
        self._others = [0] * n  # the other workers' ones at the last refresh (big pools)
        self._limit = [s.max_conns for s in cfg.servers]
        self._waiters: deque = deque()
        self._rng = random.Random()  # built in the worker, after the fork: seeded per worker
        self._sized()
        self._keyed = cfg.balance in ("ip_hash", "hash")  # else key() is None
        if cfg.balance == "ip_hash":
            self.key = _peer_key
        elif cfg.balance == "hash":
            self.key = _hash_key_reader(cfg.hash_key)

    def _sized(self) -> None:
        """What depends on the number of servers and their limits."""
        self._live = len(self.servers) <= LIVE_INFLIGHT_MAX
        self._needs_inflight = self.cfg.balance in ("least_conn", "random2") or any(self._limit)
        if any(self._limit):
            # The balancer reads view.usable per candidate: only pools with
            # max_conns pay for the in-flight read it then needs.
            self.usable = self._usable_below_limit

    def _build_balancer(self) -> None:
        """Balancer and sticky table over the servers not removed (None: none left)."""
        live = [i for i, dead in enumerate(self._dead) if not dead]
        specs = [ServerSpec(self.servers[i].addr, self.servers[i].weight, self.servers[i].backup)
                 for i in live]
        self._live_idx = None if specs and len(live) == len(self.servers) else live
        self.balancer = (Balancer(specs, algorithm=self.cfg.balance,
                                  hash_method=self.cfg.hash_method) if specs else None)
        self._by_addr = {self.servers[i].addr: i for i in live}  # the sticky table's servers
        sticky = StickyTable(specs, self._secret) if self._secret is not None and specs else None
        self.sticky = (sticky if sticky is None or self._live_idx is None
                       else _LiveSticky(sticky, self._live_idx))

    # -- membership ----------------------------------------------------------

    def sync_members(self, now: float) -> bool:
        """Follow the table's member cells: servers removed, servers added.

        Returns True when the pool changed.  Cheap when nothing moved (one
        8-byte read); otherwise reads every row's member cell.
        """
        version = self.table.members_version
        if version == self._version:
            return False
        self._version = version
        prefix = self.name + "/"
        mine = {row: (label, m) for row, label, m in members(self.table)
                if label.startswith(prefix)}
        changed = False
        known = set()
        for i, row in enumerate(self.rows):
            got = mine.get(row)
            alive = (not self._dead[i] and got is not None
                     and got[0] == prefix + self.servers[i].addr
                     and self._serials[i] in (None, got[1].serial) and got[1].state == "active")
            if alive:
                self._serials[i] = got[1].serial
                known.add((row, got[1].serial))
                m, server = got[1], self.servers[i]
                if (m.weight, m.backup, m.max_conns) != (server.weight, server.backup,
                                                         server.max_conns):
                    # DNS discovery follows an SRV record's new weight or priority.
                    self.servers[i] = replace(server, weight=m.weight, backup=m.backup,
                                              max_conns=m.max_conns)
                    self._limit[i] = m.max_conns
                    changed = True
            elif not self._dead[i]:
                _log.info("pool %s: %s removed: no new requests", self.name, self.servers[i].addr)
                self._dead[i] = changed = True
                self._usable[i] = self._sticky_ok[i] = self._eligible[i] = False
                self.conns[i].close()
        for row, (label, m) in mine.items():
            if m.state == "active" and (row, m.serial) not in known:
                self._append(row, label[len(prefix):], m)
                _log.info("pool %s: now using %s (%s)", self.name, label[len(prefix):], m.origin)
                changed = True
        if changed:
            self._sized()
            self._build_balancer()
        return changed

    def _append(self, row: int, addr: str, m) -> None:
        host, port = split_host_port(addr)
        server = ServerEntry(addr=addr, host=host, port=port, weight=m.weight, backup=m.backup,
                             max_conns=m.max_conns)
        self.servers.append(server)
        self.rows.append(row)
        self._serials.append(m.serial)
        self._dead.append(False)
        self.conns.append(conn_pool(server, self.cfg))
        for col, value in ((self._usable, False), (self._sticky_ok, False),
                           (self._eligible, False), (self._drain, False), (self._out, False),
                           (self._ejected, False), (self._since, 0.0),
                           (self._weight, m.weight), (self._own, 0), (self._others, 0),
                           (self._limit, m.max_conns)):
            col.append(value)
        # Passive failures counted in this row before it was given to this
        # server belong to its last occupant.
        self._forgiven.append(m.changed)
        if self._cells is not None:
            self._cells.append(self.table.inflight_cell(row, self.slot))

    # -- ServerView ---------------------------------------------------------

    def usable(self, i: int) -> bool:
        return self._usable[i]

    def _usable_below_limit(self, i: int) -> bool:
        lim = self._limit[i]
        return self._usable[i] and (not lim or self.inflight(i) < lim)

    def inflight(self, i: int) -> int:
        """Requests in flight to server i in every worker (see the module docstring)."""
        if self._live:
            n = self.table.inflight(self.rows[i])
            return n if self.slot is not None else n + self._own[i]
        return self._others[i] + self._own[i]

    def effective_weight(self, i: int) -> int:
        return self._weight[i]

    # -- what a request does ------------------------------------------------

    def key(self, req, peer: str) -> bytes | None:
        """The balancer's request key (client address for ip_hash, hash_key for hash)."""
        return None

    def pick(self, req, peer: str, exclude) -> int | None:
        """The server for this attempt, or None when no server can take it now."""
        key = self.key(req, peer) if self._keyed else None
        if self._live_idx is None:  # pick_key's first case, without its call
            return self.balancer.pick(self, key=key, rng=self._rng, exclude=exclude)
        return self.pick_key(key, self._rng, exclude)

    def pick_key(self, key: bytes | None, rng, exclude) -> int | None:
        """``pick`` with the balancer's key and random source given (tcp listeners)."""
        if self._live_idx is None:
            return self.balancer.pick(self, key=key, rng=rng, exclude=exclude)
        if self.balancer is None:
            return None
        idx = self._live_idx
        j = self.balancer.pick(_LiveView(self, idx), key=key, rng=rng,
                               exclude={j for j, i in enumerate(idx) if i in exclude}
                               if exclude else exclude)
        return None if j is None else idx[j]

    def sticky_server(self, req) -> tuple[int | None, str | None]:
        """(server the request's sticky cookie names if it may take it, the cookie's token)."""
        if self.sticky is None:
            return None, None
        token = cookie_value(req.get_all("cookie"), self.cfg.sticky.cookie)
        if token is None:
            return None, None
        i = self.sticky.index(token)
        return (i if i is not None and self._may_stick(i) else None), token

    def stuck_server(self, addr: str | None) -> int | None:
        """The server of addr ``addr`` (a sticky table's entry) if it may take the request."""
        i = self._by_addr.get(addr) if addr is not None else None
        return i if i is not None and self._may_stick(i) else None

    def row_of(self, addr: str) -> int | None:
        """The table row of this pool's server ``addr`` (None: not one now)."""
        i = self._by_addr.get(addr)
        return self.rows[i] if i is not None else None

    def _may_stick(self, i: int) -> bool:
        """Server i takes its sticky clients: usable or in drain, below max_conns."""
        if not self._sticky_ok[i]:
            return False
        lim = self._limit[i]
        return not (lim and self.inflight(i) >= lim)

    def set_cookie(self, i: int, tls: bool = False) -> str:
        """The Set-Cookie value that pins a client to server i; ``tls``: the
        client came over TLS, so the cookie is ``Secure`` (never sent back in
        clear) and ``SameSite=Lax`` (not on other sites' cross-site posts)."""
        st = self.cfg.sticky
        value = f"{st.cookie}={self.sticky.token(i)}; Path=/; HttpOnly"
        if st.ttl:
            value += f"; Max-Age={int(st.ttl)}"
        if tls:
            value += "; Secure; SameSite=Lax"
        return value

    def any_usable(self, exclude) -> bool:
        """True when some server outside ``exclude`` could take a request now
        (what pick would consider, without moving the balancer's state)."""
        return any(self.usable(i) and self._weight[i] > 0
                   for i in range(len(self.servers)) if i not in exclude)

    def full(self, exclude) -> bool:
        """True when a server that could take the request is only at max_conns."""
        if not any(self._limit):
            return False
        for i, lim in enumerate(self._limit):
            if lim and self._usable[i] and i not in exclude and self.inflight(i) >= lim:
                return True
        return False

    def wait_turn(self, timeout: float) -> bool:
        """Wait (in this worker's queue) until a request ends or ``timeout``
        passes; False at once when the pool has no queue or it is full."""
        q = self.cfg.queue
        if q is None or len(self._waiters) >= q.size:
            return False
        ev = gevent.event.Event()
        self._waiters.append(ev)
        try:
            ev.wait(min(timeout, QUEUE_POLL))
        finally:
            self._waiters.remove(ev)
        return True

    def begin(self, i: int) -> None:
        self._own[i] += 1
        if self._cells is not None:
            cells, k = self._cells[i]
            cells[k] += 1

    def end(self, i: int) -> None:
        self._own[i] -= 1
        if self._cells is not None:
            cells, k = self._cells[i]
            cells[k] -= 1
        if self._waiters:
            self._waiters[0].set()  # first come, first served

    def failed(self, i: int, now: float) -> None:
        """A passive failure (connect error, timeout, configured 5xx) of server i.

        Counted in the shared table (a pool of one server too: the status
        shows it), and applied at once in this worker, within the pool's
        max_ejection_percent (core.health.ejected); the other workers see
        it at their next refresh.
        """
        cfg = self.cfg
        if self.slot is None or not cfg.max_fails:
            return
        self.table.passive_fail(self.rows[i], self.slot, now, cfg.fail_timeout,
                                since=self._forgiven[i])
        self._apply_passive(now)

    def outcome(self, i: int, status: int | None) -> None:
        """What an attempt on server i got, for outlier detection: the
        response's ``status``, or None for no response (connect error,
        reset, timeout), 0 for an L4 connection made.  Counted in this worker's slot of the table; the
        checker decides (net.outlier)."""
        if self.outliers:
            self.table.outcome(self.rows[i], self.slot, time.time(), kind_of(status),
                               self._since[i])

    def _apply_passive(self, now: float) -> None:
        """Who passive checks keep out now, from the table and the last refresh."""
        cfg = self.cfg
        fails = [self.table.passive_failures(row, now, cfg.fail_timeout, since=self._forgiven[i])
                 for i, row in enumerate(self.rows)] if cfg.max_fails else [0] * len(self.rows)
        self._out = ejected(fails, self._eligible, cfg.max_fails, cfg.max_ejection_percent)
        for i, out in enumerate(self._out):
            out = out or self._ejected[i]
            self._usable[i] = self._eligible[i] and not out
            self._sticky_ok[i] = (self._eligible[i] or self._drain[i]) and not out

    # -- the snapshot -------------------------------------------------------

    def refresh(self, now: float) -> None:
        """Re-read health, admin state and passive failures of every server."""
        cfg = self.cfg
        table = self.table
        self.sync_members(now)
        for i, row in enumerate(self.rows):
            if self._dead[i]:
                continue
            h = table.read_health(row)
            a = table.read_admin(row)
            if h is not None and h.state == "up" and h.failures == 0 and h.last_check:
                self._forgiven[i] = h.last_check
            up = h is None or h.state == "up"
            self._eligible[i] = up and a.state == "ready"
            self._drain[i] = up and a.state == "drain"
            if self._needs_inflight and not self._live:
                total = table.inflight(row)
                self._others[i] = total - self._own[i] if self.slot is not None else total
            weight = a.weight if a.weight > 0 else self.servers[i].weight
            if cfg.slow_start and h is not None and h.state == "up" and came_back(h):
                weight = slow_start_weight(weight, now - h.last_change, cfg.slow_start)
            self._weight[i] = weight
            if cfg.outlier is not None:
                o = table.read_outlier(row)
                self._ejected[i], self._since[i] = o.until > now, o.since
        self._apply_passive(now)
        if self.slot is not None:  # every change written before ``now`` is taken in
            for i, row in enumerate(self.rows):
                if not self._dead[i]:
                    table.mark_seen(row, self.slot, now)

    def close(self) -> None:
        for pool in self.conns:
            pool.close()


class _LiveView:
    """The balancer's view of a pool some of whose servers were removed:
    its index j is the pool's ``idx[j]``."""

    __slots__ = ("pool", "idx")

    def __init__(self, pool: PoolRuntime, idx: list[int]):
        self.pool, self.idx = pool, idx

    def usable(self, j: int) -> bool:
        return self.pool.usable(self.idx[j])

    def inflight(self, j: int) -> int:
        return self.pool.inflight(self.idx[j])

    def effective_weight(self, j: int) -> int:
        return self.pool.effective_weight(self.idx[j])


class _LiveSticky:
    """A StickyTable over the live servers, in the pool's indexes."""

    __slots__ = ("table", "idx", "back")

    def __init__(self, table: StickyTable, idx: list[int]):
        self.table, self.idx = table, idx
        self.back = {i: j for j, i in enumerate(idx)}

    def index(self, token: str) -> int | None:
        j = self.table.index(token)
        return None if j is None else self.idx[j]

    def token(self, i: int) -> str:
        return self.table.token(self.back[i])


# -- request keys ---------------------------------------------------------------


def _peer_key(req, peer: str) -> bytes | None:
    return peer.encode("ascii", "replace")


def _hash_key_reader(spec: str):
    """A ``key(req, peer)`` for a hash_key: "uri", "header:N", "cookie:N", "query:N"."""
    kind, _, name = spec.partition(":")
    if kind == "uri":
        def key(req, peer):
            return req.target.encode("utf-8", "surrogateescape")
    elif kind == "header":
        def key(req, peer):
            v = req.get(name)
            return None if v is None else v.encode("utf-8", "surrogateescape")
    elif kind == "cookie":
        def key(req, peer):
            v = cookie_value(req.get_all("cookie"), name)
            return None if v is None else v.encode("utf-8", "surrogateescape")
    else:
        def key(req, peer):
            v = query_value(req.target, name)
            return None if v is None else v.encode("utf-8", "surrogateescape")
    return key
