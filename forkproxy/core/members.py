"""Which servers a pool has: the configuration file, then the runtime changes.

``forkproxyctl add-server`` / ``remove-server`` (and the admin endpoint's
equivalents) change a pool at run time; the changes are kept in a state
document (``control.STATE_NAME`` in ``server.runtime_dir``) so that they
survive reloads and restarts.  This module is the pure part: the document's
shape, recording a change in it, and merging it with the configuration.
No I/O, no clock.

Precedence (the configuration file wins whenever it says something new):

* A server **added** at run time stays while the configuration file does not
  list that address in that pool.  Once the file lists it, the file's entry
  is used and the runtime record is dropped.
* A configured server **removed** at run time stays removed while the file
  lists it exactly as it did when it was removed (same weight, backup,
  max_conns).  If the file changes that entry, or stops listing it, the
  record is dropped: the file says what to do with it.
* A pool that leaves the configuration takes its records with it.

Addresses are compared as written ("HOST:PORT"), as labels in the health
table are.

The document::

    {"version": 1, "pools": {POOL: {"added":   {ADDR: {weight, backup, max_conns}},
                                    "removed": {ADDR: {weight, backup, max_conns}}}}}
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

__all__ = ["Spec", "empty_state", "merge", "record_add", "record_remove", "spec_of"]

STATE_VERSION = 1


@dataclass(frozen=True)
class Spec:
    """One server of a pool: its address and the settings a row carries."""

    addr: str
    weight: int = 1
    backup: bool = False
    max_conns: int = 0

    def settings(self) -> dict:
        d = asdict(self)
        del d["addr"]
        return d


def spec_of(addr: str, settings: dict) -> Spec:
    """A Spec from a state record (missing settings take their defaults)."""
    return Spec(addr, int(settings.get("weight", 1)), bool(settings.get("backup", False)),
                int(settings.get("max_conns", 0)))


def empty_state() -> dict:
    return {"version": STATE_VERSION, "pools": {}}


def _pool(state: dict, pool: str) -> dict:
    return state["pools"].setdefault(pool, {"added": {}, "removed": {}})


def _tidy(state: dict) -> dict:
    state["pools"] = {p: v for p, v in state["pools"].items() if v["added"] or v["removed"]}
    return state


def merge(configured: dict[str, list[Spec]], state: dict
          ) -> tuple[dict[str, list[tuple[Spec, str, bool]]], dict, list[str]]:
    """Apply ``state`` to the ``configured`` servers of each pool (file order).

    Returns ``(pools, kept, notes)``: per pool, ``(spec, origin, active)``
    for every configured server (``origin`` "config"; ``active`` False when
    removed at run time) then every server added at run time (origin
    "runtime"); ``kept``, the state without the records the configuration
    now overrides; ``notes``, one sentence per dropped record (for the log).
    ``state`` is not modified.
    """
    kept, notes = empty_state(), []
    pools: dict[str, list[tuple[Spec, str, bool]]] = {}
    recorded = state.get("pools", {}) if isinstance(state, dict) else {}
    for name in recorded:
        if name not in configured:
            notes.append(f"pool {name}: no longer in the configuration; its runtime changes "
                         "are dropped")
    for name, specs in configured.items():
        rec = recorded.get(name, {})
        added, removed = rec.get("added", {}), rec.get("removed", {})
        by_addr = {s.addr: s for s in specs}
        out = []
        for s in specs:
            gone = s.addr in removed
            if gone and spec_of(s.addr, removed[s.addr]) != s:
                notes.append(f"pool {name}: {s.addr} removed at run time, but its entry in the "
                             "configuration changed: the configuration wins")
                gone = False
            if gone:
                _pool(kept, name)["removed"][s.addr] = s.settings()
            out.append((s, "config", not gone))
        for addr in removed:
            if addr not in by_addr:
                notes.append(f"pool {name}: {addr} removed at run time is no longer in the "
                             "configuration")
        for addr, settings in added.items():
            if addr in by_addr:
                notes.append(f"pool {name}: {addr} added at run time is now in the "
                             "configuration: the configuration's entry wins")
                continue
            spec = spec_of(addr, settings)
            _pool(kept, name)["added"][addr] = spec.settings()
            out.append((spec, "runtime", True))
        pools[name] = out
    return pools, _tidy(kept), notes


def record_add(state: dict, pool: str, spec: Spec, configured: Spec | None) -> dict:
    """The state after adding ``spec`` to ``pool`` at run time.

    ``configured``: the file's entry for that address, if it lists it (the
    server was removed at run time and comes back: the removal is forgotten,
    and from the next reload on the file's settings apply).
    """
    out = copy.deepcopy(state) if state else empty_state()
    p = _pool(out, pool)
    if configured is not None:
        p["removed"].pop(spec.addr, None)
    else:
        p["added"][spec.addr] = spec.settings()
    return _tidy(out)


def record_remove(state: dict, pool: str, addr: str, configured: Spec | None) -> dict:
    """The state after removing ``addr`` from ``pool`` at run time.

    A server added at run time is forgotten; a configured one (``configured``,
    its file entry) is recorded as removed, with the entry it had.
    """
    out = copy.deepcopy(state) if state else empty_state()
    p = _pool(out, pool)
    p["added"].pop(addr, None)
    if configured is not None:
        p["removed"][addr] = configured.settings()
    return _tidy(out)
