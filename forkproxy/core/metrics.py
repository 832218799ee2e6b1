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

__all__ = ["FAMILIES", "GAUGES", "CLASSES", "Metrics", "SlotCounter", "request_keys", "status_class", "render"]

#: family name -> (Prometheus type, help text). Names are without the prefix.
FAMILIES: dict[str, tuple[str, str]] = {
    "requests_total": ("counter", "Requests answered, by route, pool, server and status class."),
    "received_bytes_total": ("counter", "Request bytes received from clients (head and body)."),
    "sent_bytes_total": ("counter", "Response bytes sent to clients (head and body)."),
    "connections_active": ("gauge", "Client connections open now, every listener but admin."),
    "reloads_total": ("counter", "Configuration reloads taken (SIGHUP or the admin API)."),
}
GAUGES = frozenset({"connections_active"})
CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
PREFIX = "forkproxy_"


def status_class(status: int) -> str | None:
    """``"2xx"`` for 200..299 and so on; None outside 100..599."""
    return f"{status // 100}xx" if 100 <= status <= 599 else None


def request_keys(routes) -> list[tuple]:
    """Every key of a configuration: ``routes`` is ``[(route_id, pool, [server addrs])]``.

    A key is ``(family, ((label, value), ...))``. Requests get one series
    per route, server of its pool (plus ``""``: answered without a server,
    such as a 502 after every try failed or a redirect) and status class;
    requests that matched no route count under route ``""``.
    """
    keys: list[tuple] = [(name, ()) for name in FAMILIES if name != "requests_total"]
    targets = [("", "", [])] + [(str(r), p or "", list(s)) for r, p, s in routes]
    for route, pool, servers in targets:
        for server in [""] + servers:
            for cls in CLASSES:
                keys.append(("requests_total", (("route", route), ("pool", pool),
                                                ("server", server), ("code", cls))))
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
        self._req = {(d["route"], d["server"], d["code"]): i for i, (name, labels) in
                     enumerate(self.keys) if name == "requests_total" for d in [dict(labels)]}
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
        out = {}
        for k, key in enumerate(self.keys):
            total = sum(cells[row * n + k] for row in range(self.n_slots + 1)) & 0xFFFFFFFFFFFFFFFF
            out[key] = total - (1 << 64) if total >= 1 << 63 else total
        return out

    def count_request(self, slot: int, route, server: str | None, status: int,
                      received: int, sent: int) -> None:
        """Count one answered request in ``slot`` (the owning worker only).

        ``route``: the route's id (None: matched none); ``server``: the
        address it was last sent to (None: none). A server the route's pool
        does not list counts as ``""``.
        """
        cls = status_class(status)
        if cls is None:
            return
        r = "" if route is None else str(route)
        k = self._req.get((r, server or "", cls))
        if k is None:
            k = self._req.get((r, "", cls))
        row = slot * self.n_keys
        cells = self.cells
        if k is not None:
            cells[row + k] += 1
        cells[row + self._in] += received
        cells[row + self._out] += sent

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

    __slots__ = ("metrics", "slot", "_conns")

    def __init__(self, metrics: Metrics, slot: int):
        self.metrics, self.slot = metrics, slot
        self._conns = metrics.index[("connections_active", ())]

    def request(self, rec) -> None:
        """Count an answered request from its access-log record (``logs.AccessRecord``)."""
        self.metrics.count_request(self.slot, rec.route, rec.upstream, rec.status,
                                   rec.bytes_received, rec.bytes_sent)

    def connection(self, n: int) -> None:
        """+1 when a client connection opens, -1 when it closes."""
        self.metrics.add(self.slot, self._conns, n)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(totals: dict[tuple, int], extra: list[tuple] = ()) -> str:
    """The Prometheus text exposition (format 0.0.4) of ``totals``.

    ``extra``: more ``(family, labels, value, type, help)`` samples (e.g.
    health read from the table). Request series still at zero are left
    out, so the page lists what happened, not every combination.
    """
    families: dict[str, list[str]] = {}
    meta: dict[str, tuple[str, str]] = {}
    items = [(k[0], k[1], v) + FAMILIES[k[0]] for k, v in totals.items()] + list(extra)
    for name, labels, value, kind, help_text in items:
        if name == "requests_total" and value == 0:
            continue
        meta.setdefault(name, (kind, help_text))
        lab = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels)
        families.setdefault(name, []).append(
            f"{PREFIX}{name}{{{lab}}} {value}" if lab else f"{PREFIX}{name} {value}")
    lines = []
    for name, samples in families.items():
        kind, help_text = meta[name]
        lines.append(f"# HELP {PREFIX}{name} {help_text}")
        lines.append(f"# TYPE {PREFIX}{name} {kind}")
        lines.extend(samples)
    return "\n".join(lines) + "\n"
