"""Sticky tables (a pool's ``sticky = { key = ... }``), the pure part: keys, entries, a table.

A sticky table maps a request's key (its client address, a header's value,
a cookie's value) to the server its first request went to, as HAProxy's
stick tables do.  The server is named by its addr, never by an index: an
entry stays valid across reloads, in every node of a fleet, and as servers
come and go.  ``net.sticktable`` keeps entries in memcached (scope
"fleet") or in the worker (scope "node", and the fleet's fallback) with
``LocalTable``.

An entry is ``b"1 " + addr + b" " + stamp``: the format's version, the
server's addr, and when it was last written (whole seconds of the epoch).
Readers refresh an entry (write it again) once it is ``refresh_due``, a
tenth of the ttl after its stamp: an entry in use never expires, and a
table in use costs a write per key per tenth of ttl, not one per request.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Sequence

from forkproxy.core.balance import cookie_value

__all__ = ["LocalTable", "decode_entry", "encode_entry", "refresh_due", "stick_key"]

#: An entry is written again once this share of the ttl has passed since its stamp.
REFRESH_SHARE = 0.1
#: The longest addr an entry holds ("[IPv6]:PORT" or a DNS name and a port).
MAX_ADDR = 300


def stick_key(key: str, header: Callable[[str], str | None], cookies: Sequence[str],
              client: str) -> str | None:
    """The table key of a request, or None when it has none (then it is balanced as usual).

    ``key``: the configured ``sticky.key`` ("ip", "header:NAME" with NAME
    lower-case, "cookie:NAME"); ``header(name)``: the request's first value
    of a field; ``cookies``: its Cookie field values; ``client``: its real
    client address.  The kind is part of the key, so a header whose value
    is an address never meets the client of that address.  An empty value
    is no key.
    """
    if key == "ip":
        return "ip " + client if client else None
    kind, _, name = key.partition(":")
    value = header(name) if kind == "header" else cookie_value(cookies, name)
    if not value:
        return None
    return ("h " if kind == "header" else "c ") + value


def encode_entry(addr: str, stamp: float) -> bytes:
    """The stored form of "``addr`` was chosen (or confirmed) at ``stamp``"."""
    if not addr or " " in addr or len(addr) > MAX_ADDR:
        raise ValueError(f"not a server addr: {addr!r}")
    return b"1 %s %d" % (addr.encode("ascii"), int(stamp))


def decode_entry(raw) -> tuple[str, float] | None:
    """``(addr, stamp)`` of a stored entry, or None for anything else (a torn
    write, another version, another program's value under the same key)."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "replace")
    if not isinstance(raw, (bytes, bytearray)) or len(raw) > MAX_ADDR + 40:
        return None
    parts = bytes(raw).split(b" ")
    if len(parts) != 3 or parts[0] != b"1" or not parts[1] or not parts[2].isdigit():
        return None
    try:
        return parts[1].decode("ascii"), float(int(parts[2]))
    except UnicodeDecodeError:
        return None


def refresh_due(stamp: float, now: float, ttl: float) -> bool:
    """Whether an entry read at ``now`` should be written again to keep it
    alive ``ttl`` after this use (true past a tenth of the ttl, and for a
    stamp from the future: a clock that went back; never for ``ttl`` 0, no expiry)."""
    if ttl <= 0:  # no expiry: nothing to keep alive
        return False
    age = now - stamp
    return age >= ttl * REFRESH_SHARE or age < -1


class LocalTable:
    """key -> (addr, stamp) for one worker: at most ``capacity`` entries, the
    least recently used forgotten first, each dropped ``ttl`` seconds after
    its last use (``ttl`` 0: never).  ``now`` is given by the caller (no clock here)."""

    __slots__ = ("capacity", "ttl", "_entries")

    def __init__(self, capacity: int, ttl: float):
        self.capacity, self.ttl = capacity, ttl
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str, now: float) -> str | None:
        """The addr ``key`` is stuck to, or None (never written, forgotten or
        expired); a hit counts as a use: the entry lives ``ttl`` from now."""
        got = self._entries.get(key)
        if got is None:
            return None
        if self.ttl > 0 and now - got[1] >= self.ttl:
            del self._entries[key]
            return None
        self._entries[key] = (got[0], now)
        self._entries.move_to_end(key)
        return got[0]

    def put(self, key: str, addr: str, now: float) -> None:
        """Stick ``key`` to ``addr`` as of ``now``."""
        entries = self._entries
        entries[key] = (addr, now)
        entries.move_to_end(key)
        while len(entries) > self.capacity:
            entries.popitem(last=False)
