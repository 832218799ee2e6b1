"""The status document of a running forkproxy, read from its shared health table.

Shared by ``forkproxyctl status`` (which maps the table itself) and the admin
endpoint's ``GET /status`` (``net.admin``, which reads its worker's mapping).
Pure: the table, the configuration (any object with ``pool(name)``, or None)
and the time are passed in; nothing is written. ``traffic`` sums the
``core.metrics`` totals into the counters the status page charts.
"""

from __future__ import annotations

import contextlib

from forkproxy.core.health import ejected
from forkproxy.core.metrics import CLASSES
from forkproxy.core.table import MemberRow, OutlierRow, Table

__all__ = ["snapshot", "traffic"]

# Pool settings used for presentation when there is no configuration: the defaults.
_MAX_FAILS, _FAIL_TIMEOUT, _MAX_EJECTION = 1, 10.0, 50


def _pool_settings(cfg, name: str) -> tuple[int, float, int, dict[str, int]]:
    """(max_fails, fail_timeout, max_ejection_percent, {addr: configured weight})
    of pool ``name`` in ``cfg``, else the defaults and no weights."""
    pool = None
    if cfg is not None:
        with contextlib.suppress(KeyError):
            pool = cfg.pool(name)
    if pool is None:
        return _MAX_FAILS, _FAIL_TIMEOUT, _MAX_EJECTION, {}
    weights = {s.addr: s.weight for s in pool.servers}
    return pool.max_fails, pool.fail_timeout, pool.max_ejection_percent, weights


def _outlier_on(cfg, name: str) -> bool:
    """False when the configuration says pool ``name`` has no outlier
    detection (a cell left by an earlier generation then means nothing)."""
    if cfg is None:
        return True
    try:
        return cfg.pool(name).outlier is not None
    except KeyError:
        return True


def snapshot(table: Table, cfg, now: float,
             checker: int | None = None) -> dict:
    """The status document (what ``status --json`` prints) for ``table`` at ``now``.

    Shape::

        {generation, checker_pid, master_pid, pools: [{name, servers: [{
            addr, health ("up" | "down" | null: never written),
            admin ("ready" | "drain" | "maint"),
            weight (operator override 1..1000, null: the configured weight),
            config_weight (the configured weight | null: no configuration),
            inflight (summed over worker slots),
            last_check (epoch s | null), last_result (str | null),
            latency (seconds, of the last check | null),
            last_change (epoch s of the last health change | null),
            reason (why it last changed | null),
            admin_changed (epoch s | null), admin_by (str | null),
            passive_failures (in the open fail_timeout window, and
                after the last check if it succeeded),
            passive_out (out of rotation by passive checks: max_fails
                reached, within max_ejection_percent; a pool of one
                server is never out, but its failures count),
            origin ("config" | "runtime": added by forkproxyctl add-server
                or the admin endpoint | "dns": found by DNS discovery),
            member ("active" | "removing": removed, its requests in
                flight not all ended yet),
            ejected (bool: ejected by outlier detection now),
            ejected_until (epoch s | null), ejection_reason (str | null),
            ejections (the multiplier of its next ejection),
            seen (epoch s by which every worker had re-read this row, so
                decides by what was written to it before | null: none has)}]}]}

    Pools and servers are in table order (config order, then servers that
    came at run time); free rows are left out. Rows are read
    under the table's seqlocks; nothing is written. ``master_pid`` is None
    here; ``main`` fills it in from the pidfile.
    """
    pools: list[dict] = []
    by_name: dict[str, dict] = {}
    settings: dict[str, tuple] = {}
    for row in range(table.n_rows):
        got = table.read_member(row)
        if got is None:  # a table made by set_label alone: configured rows
            label, member = table.label(row), MemberRow("active")
        else:
            label, member = got
        if member.state == "free" or not label:
            continue
        pool_name, _, addr = label.partition("/")
        entry = by_name.get(pool_name)
        if entry is None:
            entry = by_name[pool_name] = {"name": pool_name, "servers": []}
            pools.append(entry)
            settings[pool_name] = _pool_settings(cfg, pool_name)
        max_fails, fail_timeout, _, weights = settings[pool_name]
        h = table.read_health(row)
        a = table.read_admin(row)
        # A successful active check forgives earlier passive failures (the
        # workers apply the same rule, see net.pools): count only windows
        # opened after it, as far as the row still shows it.
        since = h.last_check if h is not None and h.state == "up" and h.failures == 0 else 0.0
        since = max(since, member.changed)  # a reused row's older failures are not its own
        fails = table.passive_failures(row, now, fail_timeout, since=since)
        o = table.read_outlier(row) if _outlier_on(cfg, pool_name) else OutlierRow()
        ejected_now = o.until > now
        checked = h is not None and h.last_check > 0
        entry["servers"].append({
            "addr": addr,
            "health": h.state if h is not None else None,
            "admin": a.state,
            "weight": a.weight or None,
            "config_weight": weights.get(addr),
            "inflight": table.inflight(row),
            "last_check": h.last_check if checked else None,
            "last_result": h.last_result if checked else None,
            "latency": h.latency if checked else None,
            "last_change": h.last_change if h is not None and h.last_change > 0 else None,
            "reason": h.reason if h is not None and h.reason else None,
            "admin_changed": a.changed or None,
            "admin_by": a.by or None,
            "passive_failures": fails,
            "passive_out": False,  # below, once the pool's rows are all read
            "origin": member.origin,
            "member": member.state,
            "ejected": ejected_now,
            "ejected_until": o.until if ejected_now else None,
            "ejection_reason": o.reason if ejected_now else None,
            "ejections": o.ejections,
            "seen": table.seen(row) or None,
        })
    for entry in pools:  # the workers' rule (net.pools), from the same table
        max_fails, _, max_percent, _ = settings[entry["name"]]
        servers = entry["servers"]
        out = ejected([s["passive_failures"] for s in servers],
                      [s["health"] != "down" and s["admin"] == "ready"
                       and s["member"] == "active" for s in servers],
                      max_fails, max_percent)
        for s, o in zip(servers, out):
            s["passive_out"] = o
    return {"generation": table.generation, "checker_pid": checker, "master_pid": None,
            "pools": pools}


def traffic(totals: dict[tuple, int]) -> dict:
    """Cumulative request counters from ``core.metrics`` ``totals``, summed over labels.

    ``totals`` is ``Metrics.totals()``: ``{(family, ((label, value), ...)): int}``
    (empty when metrics are off). Returns::

        {requests, by_code: {"1xx": n, ..., "5xx": n} (every class),
         servers: {"POOL/ADDR": n} (requests answered by a server; one
            entry per server any route sends to, 0 included),
         latency: {count, sum (seconds)} (of request_duration_seconds)}

    Counts grow, except that a reload drops the series of a route or server
    that left: a client turning two documents into rates (the status page)
    must treat a decrease as a restart. Keys that are absent count as 0.
    """
    by_code = dict.fromkeys(CLASSES, 0)
    servers: dict[str, int] = {}
    count = micros = 0
    for (family, labels), value in totals.items():
        if family == "requests_total":
            d = dict(labels)
            by_code[d["code"]] = by_code.get(d["code"], 0) + value
            if d["server"]:
                label = f"{d['pool']}/{d['server']}"
                servers[label] = servers.get(label, 0) + value
        elif family == "request_duration_seconds_count":
            count += value
        elif family == "request_duration_seconds_sum":
            micros += value  # cells hold integers: the sum is in microseconds
    return {"requests": sum(by_code.values()), "by_code": by_code, "servers": servers,
            "latency": {"count": count, "sum": micros / 1e6}}
