"""Counters shared by every worker, and their Prometheus text rendering.

The layout is fixed when the master loads a configuration: one *key* per
time series (a metric family name and its labels), one row of 8-byte cells
per worker slot, plus a last row, the *base*, written only by the master.
Cell ``(slot, key)`` lives at ``(slot * n_keys + key) * 8``.

One writer per cell, as in ``core.table``: a worker adds only to its own
slot's row (one aligned 8-byte store through a ``memoryview`` cast to
``"Q"``), readers sum the column over every row. So a worker killed with
SIGKILL loses nothing it had counted, and its successor in the same slot
keeps adding to the same cells: a restart never resets a total. Gauges
(``GAUGES``) are the exception: the master zeroes a dead worker's gauge
cells (it is then their only writer). On a reload whose keys change, the
master builds a new buffer and writes each key's old total into the base
row (``carry``), so totals survive for every series that stays.

The buffer is any writable buffer of ``size(n_keys, n_slots)`` bytes (a
shared anonymous mmap in production, a ``bytearray`` in tests). The keys
themselves are not in the buffer: the master builds them and the workers
inherit them through fork. Sans-IO: nothing here reads a clock or a socket.
"""

from __future__ import annotations

from bisect import bisect_left

from forkproxy.core.outlier import REASONS as OUTLIER_REASONS

__all__ = ["FAMILIES", "GAUGES", "CLASSES", "PROTOCOLS", "BUCKETS", "CACHE_RESULTS",
           "MIRROR_RESULTS", "Metrics", "SlotCounter", "request_keys", "render"]

#: family name -> (Prometheus type, help text). Names are without the prefix.
FAMILIES: dict[str, tuple[str, str]] = {
    "requests_total": ("counter", "Requests answered, by route, pool, server, status class "
                       "and client protocol (http1, h2)."),
    "request_duration_seconds": ("histogram", "Time from the request head read to the "
                                 "response's last byte written, by route and pool."),
    "upstream_duration_seconds": ("histogram", "Time from connecting to the server to the end "
                                  "of its response head, by pool and server."),
    "received_bytes_total": ("counter", "Request bytes received from clients (head and body)."),
    "sent_bytes_total": ("counter", "Response bytes sent to clients (head and body)."),
    "connections_active": ("gauge", "Client connections open now, every listener but admin."),
    "connections_parked": ("gauge", "Of those, keep-alive connections idle over a second, held "
                           "without a greenlet until their next request."),
    "retries_total": ("counter", "Requests sent again to another server of the pool."),
    "retries_denied_total": ("counter", "Requests the pool's retry budget refused a retry."),
    "health_transitions_total": ("counter", "Servers marked up or down by the active checks."),
    "outlier_ejections_total": ("counter", "Servers ejected by outlier detection, by reason "
                                "(consecutive_5xx, consecutive_gateway_failure, success_rate)."),
    "cache_requests_total": ("counter", "Requests on cached routes, by route and cache result."),
    "ratelimited_total": ("counter", "Requests refused with 429 by a route's rate limit."),
    "mirror_total": ("counter", "Copies of a route's requests for its mirror pool, by result: "
                     "sent (answered), failed, dropped (queue full), skipped (body)."),
    "reloads_total": ("counter", "Configuration reloads taken (SIGHUP or the admin API)."),
}
GAUGES = frozenset({"connections_active", "connections_parked"})
CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
#: The ``protocol`` label of requests_total, by index: a request of an HTTP/1.x
#: connection, a stream of an HTTP/2 one (TLS or h2c). Sessions count with the
#: index (``Session.protocol_index``), never the string.
PROTOCOLS = ("http1", "h2")
#: Histogram upper bounds in seconds (Prometheus's defaults); +Inf is implicit.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: ``AccessRecord.cache`` values, as they label cache_requests_total.
CACHE_RESULTS = ("HIT", "MISS", "STALE", "REVALIDATED", "BYPASS", "REFRESH", "PURGE")
#: What became of a mirrored copy (route ``mirror``, ``net.mirror``).
MIRROR_RESULTS = ("sent", "failed", "dropped", "skipped")
PREFIX = "forkproxy_"
_SINGLE = ("received_bytes_total", "sent_bytes_total", "connections_active",
           "connections_parked", "reloads_total")
_LE = tuple(repr(b) for b in BUCKETS) + ("+Inf",)


def _histogram(name: str, labels: tuple) -> list[tuple]:
    """The cells of one histogram series: a bucket per bound and +Inf
    (each counts only its own band; ``render`` accumulates), the sum in
    microseconds (cells hold integers) and the count."""
    return ([(f"{name}_bucket", labels + (("le", le),)) for le in _LE]
            + [(f"{name}_sum", labels), (f"{name}_count", labels)])


def row_label(row: int) -> str:
    """The ``server`` label of the series kept for table row ``row``: a server
    that came at run time (add-server, DNS discovery), named by its addr only
    when the page is rendered (``relabel_rows``)."""
    return f"#{row}"


def request_keys(routes, pools=None, spare_rows=(), mirrors=()) -> list[tuple]:
    """Every key of a configuration.

    ``routes``: ``[(route_id, pool, [server addrs])]``, one entry per pool
    of a route that splits its requests across pools; ``pools``: ``{pool:
    [server addrs]}`` (default: the pools the routes name). A key is
    ``(family, ((label, value), ...))``; histogram families are stored as
    their ``_bucket``, ``_sum`` and ``_count`` keys.

    Requests get one series per route, pool, server of that pool (plus ``""``:
    answered without a server, such as a 502 after every try failed or a
    redirect), status class and client protocol (``PROTOCOLS``, last label);
    requests that matched no route count under route ``""``.

    ``spare_rows``: the table rows kept for servers that come at run time;
    each gets the series of a server (``row_label``) in every pool, and in
    every route of its pool.

    ``mirrors``: the ids of the routes that mirror their requests (a
    ``mirror_total`` series per result).
    """
    if pools is None:
        pools = {p: list(s) for _, p, s in routes if p}
    spares = [row_label(r) for r in spare_rows]
    routes = [(r, p, list(s) + (spares if p else [])) for r, p, s in routes]
    pools = {p: list(s) + spares for p, s in pools.items()}
    keys: list[tuple] = [(name, ()) for name in _SINGLE]
    targets = [("", "", [])] + [(str(r), p or "", list(s)) for r, p, s in routes]
    seen = set()
    for route, pool, servers in targets:
        for server in [""] + servers:
            for cls in CLASSES:
                keys += [("requests_total", (("route", route), ("pool", pool), ("server", server),
                                             ("code", cls), ("protocol", proto)))
                         for proto in PROTOCOLS]
        keys += _histogram("request_duration_seconds", (("route", route), ("pool", pool)))
        if route not in seen:  # once per route, whatever its pools
            seen.add(route)
            keys += [("cache_requests_total", (("route", route), ("result", r)))
                     for r in CACHE_RESULTS]
            keys.append(("ratelimited_total", (("route", route),)))
    keys += [("mirror_total", (("route", str(r)), ("result", res)))
             for r in mirrors for res in MIRROR_RESULTS]
    for pool, servers in pools.items():
        keys.append(("retries_total", (("pool", pool),)))
        keys.append(("retries_denied_total", (("pool", pool),)))
        for server in servers:
            keys += _histogram("upstream_duration_seconds", (("pool", pool), ("server", server)))
            keys += [("health_transitions_total", (("pool", pool), ("server", server), ("to", to)))
                     for to in ("up", "down")]
            keys += [("outlier_ejections_total", (("pool", pool), ("server", server),
                                                  ("reason", why))) for why in OUTLIER_REASONS]
    return keys


class Metrics:
    """``n_slots`` worker rows and the master's base row over ``buf``."""

    @staticmethod
    def size(n_keys: int, n_slots: int) -> int:
        return (n_slots + 1) * n_keys * 8

    def __init__(self, keys: list[tuple], n_slots: int, buf):
        self.keys = list(keys)
        self.n_keys = len(self.keys)
        self.n_slots = n_slots
        if len(buf) < self.size(self.n_keys, n_slots):
            raise ValueError("buffer too small for this layout")
        self.buf = buf
        self.cells = memoryview(buf).cast("B")[: self.size(self.n_keys, n_slots)].cast("Q")
        self.index = {k: i for i, k in enumerate(self.keys)}
        self._gauges = [i for i, k in enumerate(self.keys) if k[0] in GAUGES]
        by_label: dict[str, dict[tuple, int]] = {}
        for i, (name, labels) in enumerate(self.keys):
            by_label.setdefault(name, {})[tuple(v for _, v in labels)] = i
        # (route, pool, server, class) -> its cells, one per protocol (PROTOCOLS order)
        reqs = by_label.get("requests_total", {})
        self._req = {(r, p, srv, c): tuple(reqs[(r, p, srv, c, x)] for x in PROTOCOLS)
                     for (r, p, srv, c, proto) in reqs if proto == PROTOCOLS[0]}
        # histogram series -> index of its first bucket (sum and count follow the buckets)
        self._dur = {(r, p): i for (r, p, le), i in
                     by_label.get("request_duration_seconds_bucket", {}).items() if le == _LE[0]}
        self._up = {(p, srv): i for (p, srv, le), i in
                    by_label.get("upstream_duration_seconds_bucket", {}).items() if le == _LE[0]}
        self._plans: dict[tuple, tuple] = {}
        # (pool, addr) -> table row of a server that came at run time, or
        # None (set by the worker's runtime: its pools know their rows).
        self.locate = None
        self._known = {(p, srv) for (p, srv) in self._up if not srv.startswith("#")}
        self._cache = by_label.get("cache_requests_total", {})
        self._limited = {r: i for (r,), i in by_label.get("ratelimited_total", {}).items()}
        self._retries = {p: i for (p,), i in by_label.get("retries_total", {}).items()}
        self._denied = {p: i for (p,), i in by_label.get("retries_denied_total", {}).items()}
        self._moves = by_label.get("health_transitions_total", {})
        self._ejections = by_label.get("outlier_ejections_total", {})
        self._mirror = by_label.get("mirror_total", {})
        self._in = self.index.get(("received_bytes_total", ()), 0)
        self._out = self.index.get(("sent_bytes_total", ()), 0)

    @property
    def base(self) -> int:
        """The master's row (carried totals, reloads)."""
        return self.n_slots

    def add(self, slot: int, key: int, n: int = 1) -> None:
        """Add ``n`` (may be negative for a gauge) to cell ``(slot, key)``: its owner only."""
        i = slot * self.n_keys + key
        self.cells[i] = (self.cells[i] + n) & 0xFFFFFFFFFFFFFFFF

    def totals(self) -> dict[tuple, int]:
        """Every key's value summed over all rows (gauges read as signed)."""
        cells, n = self.cells, self.n_keys
        rows = [cells[row * n:(row + 1) * n].tolist() for row in range(self.n_slots + 1)]
        out = {}
        for key, column in zip(self.keys, zip(*rows)):
            total = sum(column) & 0xFFFFFFFFFFFFFFFF
            out[key] = total - (1 << 64) if total >= 1 << 63 else total
        return out

    def count_request(self, slot: int, rec, protocol: int = 0) -> None:
        """Count one answered request in ``slot`` (the owning worker only).

        ``rec`` is its ``logs.AccessRecord``: ``route`` (the route's id, None:
        matched none), ``upstream`` (the server it was last sent to, None:
        none; one its pool does not list counts as ``""``), ``status``,
        ``request_time`` and ``upstream_time`` (seconds), ``cache``, byte
        counts. A 429 without an upstream is the route's rate limit.
        ``protocol``: the client's protocol, an index into ``PROTOCOLS``.
        """
        status = rec.status
        if not 100 <= status <= 599:
            return
        key = (rec.route, rec.pool, rec.upstream, status // 100)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plan(*key)
            if plan[4]:  # once per combination: the configuration bounds them
                self._plans[key] = plan
        req, dur, up, r, _ = plan
        row = slot * self.n_keys
        cells = self.cells
        if req is not None:
            cells[row + req[protocol]] += 1
        if dur is not None:
            self._observe(row + dur, rec.request_time)
        if up is not None and rec.upstream_time is not None:
            self._observe(row + up, rec.upstream_time)
        if rec.cache is not None:
            k = self._cache.get((r, rec.cache))
            if k is not None:
                cells[row + k] += 1
        if status == 429 and rec.upstream is None:
            k = self._limited.get(r)
            if k is not None:
                cells[row + k] += 1
        cells[row + self._in] += rec.bytes_received
        cells[row + self._out] += rec.bytes_sent

    def _plan(self, route, pool, upstream, cls: int) -> tuple:
        """(requests cell, duration histogram, upstream histogram, route label,
        whether it may be remembered) of a request.  A server that came at run
        time is counted in its row's series, found each time (rows are reused)."""
        r = "" if route is None else str(route)
        p = "" if route is None else pool or ""
        code = f"{cls}xx"
        server, fixed = upstream or "", True
        if server and (pool, server) not in self._known and self.locate is not None:
            row = self.locate(pool, server)
            server, fixed = (row_label(row) if row is not None else server), False
        req = self._req.get((r, p, server, code))
        if req is None:
            req = self._req.get((r, p, "", code))
        return req, self._dur.get((r, p)), self._up.get((pool or "", server)), r, fixed

    def _observe(self, i: int, seconds: float) -> None:
        """One observation into the histogram series whose first bucket is cell ``i``."""
        cells, n = self.cells, len(_LE)
        cells[i + bisect_left(BUCKETS, seconds)] += 1
        cells[i + n] += max(0, int(seconds * 1e6))
        cells[i + n + 1] += 1

    def count_retry(self, slot: int, pool: str) -> None:
        k = self._retries.get(pool)
        if k is not None:
            self.cells[slot * self.n_keys + k] += 1

    def count_retry_denied(self, slot: int, pool: str) -> None:
        k = self._denied.get(pool)
        if k is not None:
            self.cells[slot * self.n_keys + k] += 1

    def count_mirror(self, slot: int, route: int, result: str) -> None:
        k = self._mirror.get((str(route), result))
        if k is not None:
            self.cells[slot * self.n_keys + k] += 1

    def _count_server(self, slot: int, keys: dict, pool: str, server: str, what: str) -> None:
        """Count one in the cell ``keys[(pool, server, what)]``, a server
        that came at run time by its row's label."""
        k = keys.get((pool, server, what))
        if k is None and self.locate is not None:
            row = self.locate(pool, server)
            k = keys.get((pool, row_label(row), what)) if row is not None else None
        if k is not None:
            self.cells[slot * self.n_keys + k] += 1

    def count_transition(self, slot: int, pool: str, server: str, to: str) -> None:
        self._count_server(slot, self._moves, pool, server, to)

    def count_ejection(self, slot: int, pool: str, server: str, reason: str) -> None:
        self._count_server(slot, self._ejections, pool, server, reason)

    def clear_gauges(self, slot: int) -> None:
        """Zero ``slot``'s gauges (the master, once the slot's worker is dead)."""
        for k in self._gauges:
            self.cells[slot * self.n_keys + k] = 0

    def carry(self, old: "Metrics") -> None:
        """Write ``old``'s totals of the counters that stay into this base row (master, before fork)."""
        for key, value in old.totals().items():
            k = self.index.get(key)
            if k is not None and key[0] not in GAUGES and value > 0:
                self.cells[self.base * self.n_keys + k] = value

    def release(self) -> None:
        self.cells.release()


class SlotCounter:
    """What a worker counts with: ``Metrics`` bound to the worker's own slot."""

    __slots__ = ("metrics", "slot", "_conns", "_parked")

    def __init__(self, metrics: Metrics, slot: int):
        self.metrics, self.slot = metrics, slot
        self._conns = metrics.index[("connections_active", ())]
        self._parked = metrics.index[("connections_parked", ())]

    def request(self, rec, protocol: int = 0) -> None:
        """Count an answered request from its access-log record (``logs.AccessRecord``);
        ``protocol``: the client's, an index into ``PROTOCOLS``."""
        self.metrics.count_request(self.slot, rec, protocol)

    def retry(self, pool: str) -> None:
        """A request of ``pool`` goes to another server after a failed attempt."""
        self.metrics.count_retry(self.slot, pool)

    def retry_denied(self, pool: str) -> None:
        """The retry budget of ``pool`` refused a request its retry."""
        self.metrics.count_retry_denied(self.slot, pool)

    def mirror(self, route: int, result: str) -> None:
        """A copy of a request of route ``route`` for its mirror: ``MIRROR_RESULTS``."""
        self.metrics.count_mirror(self.slot, route, result)

    def transition(self, pool: str, server: str, to: str) -> None:
        """The active checks turned ``server`` of ``pool`` ``to`` "up" or "down"."""
        self.metrics.count_transition(self.slot, pool, server, to)

    def ejection(self, pool: str, server: str, reason: str) -> None:
        """Outlier detection ejected ``server`` of ``pool`` (``reason``: core.outlier.REASONS)."""
        self.metrics.count_ejection(self.slot, pool, server, reason)

    def connection(self, n: int) -> None:
        """+1 when a client connection opens, -1 when it closes."""
        self.metrics.add(self.slot, self._conns, n)

    def parked(self, n: int) -> None:
        """+1 when an idle connection parks (net.http_session), -1 when it resumes."""
        self.metrics.add(self.slot, self._parked, n)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _family(name: str) -> tuple[str, str]:
    """(family, part): ``("x_seconds", "_bucket")`` for a histogram cell's key name."""
    for part in ("_bucket", "_sum", "_count"):
        base = name[: -len(part)]
        if name.endswith(part) and FAMILIES.get(base, ("",))[0] == "histogram":
            return base, part
    return name, ""


def relabel_rows(totals: dict[tuple, int], rows: dict[int, tuple[str, str]]) -> dict[tuple, int]:
    """``totals`` with each row series (``row_label``) named by the server in
    that row now, ``rows``: {row: (pool, addr)}; a row that is free, or holds
    a server of another pool than the series', is left out."""
    out = {}
    for key, value in totals.items():
        labels = key[1]
        pool = None
        for k, v in labels:  # pool comes before server (request_keys)
            if k == "pool":
                pool = v
            elif k == "server":
                if v[:1] == "#":
                    got = rows.get(int(v[1:]))
                    if got is None or got[0] != pool:
                        break
                    key = (key[0], tuple((k, got[1] if k == "server" else v)
                                         for k, v in labels))
                out[key] = value
                break
        else:
            out[key] = value
    return out


def render(totals: dict[tuple, int], extra: list[tuple] = ()) -> str:
    """The Prometheus text exposition (format 0.0.4) of ``totals``.

    ``extra``: more ``(family, labels, value, type, help)`` samples (e.g.
    health read from the table). Series of the labelled families still at
    zero are left out (a histogram when its count is), so the page lists
    what happened, not every combination; histogram buckets are written
    cumulative, sums in seconds.
    """
    families: dict[str, list[str]] = {}
    meta: dict[str, tuple[str, str]] = {}
    counts = {k[1]: v for k, v in totals.items() if k[0].endswith("_count")}
    running: dict[tuple, int] = {}
    items = [(k[0], k[1], v) + FAMILIES[_family(k[0])[0]] for k, v in totals.items()]
    for name, labels, value, kind, help_text in items + list(extra):
        family, part = _family(name)
        if part:
            series = labels[:-1] if part == "_bucket" else labels
            if not counts.get(series):
                continue
            if part == "_bucket":
                value = running[series] = running.get(series, 0) + value
            elif part == "_sum":
                value = value / 1e6
        elif labels and value == 0 and family in FAMILIES and family not in _SINGLE:
            continue
        meta.setdefault(family, (kind, help_text))
        lab = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels)
        families.setdefault(family, []).append(
            f"{PREFIX}{name}{{{lab}}} {value}" if lab else f"{PREFIX}{name} {value}")
    lines = []
    for name, samples in families.items():
        kind, help_text = meta[name]
        lines.append(f"# HELP {PREFIX}{name} {help_text}")
        lines.append(f"# TYPE {PREFIX}{name} {kind}")
        lines.extend(samples)
    return "\n".join(lines) + "\n"
