"""The whole document: every section and key in file order, their builders,
and ``Config``, the dataclass of a whole file.

The section modules (``server``, ``cache``, ``listener``, ``route``,
``pool``) each declare their tables (``SECTIONS``), their keys
(``SETTINGS``), the dataclasses made from them, and ``BUILDERS`` for the
tables that need more than their dataclass (checks across keys, fields
computed from keys); this module indexes them for the loader, ``dump`` and
the docs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from forkproxy.config import cache, listener, pool, route, server
from forkproxy.config.cache import CacheConfig
from forkproxy.config.listener import ListenerConfig
from forkproxy.config.pool import PoolConfig
from forkproxy.config.route import RouteConfig
from forkproxy.config.schema import Path, Section, Setting
from forkproxy.config.server import ServerConfig

_MODULES = (server, cache, listener, route, pool)

SECTIONS: tuple[Section, ...] = tuple(s for m in _MODULES for s in m.SECTIONS)
SETTINGS: tuple[Setting, ...] = tuple(s for m in _MODULES for s in m.SETTINGS)
CLASSES: dict[str, type] = {p: c for m in _MODULES for p, c in m.CLASSES.items()}


def _default_builder(cls: type) -> Callable[[dict, Path, Any], Any]:
    def build(values: dict, path: Path, err) -> Any:
        return cls(**values)

    return build


#: Section path -> ``build(values, path, err)``: the table's dataclass, or None
#: after ``err(path, message)``; ``values`` are keyed by field name.
BUILDERS: dict[str, Callable[[dict, Path, Any], Any]] = {
    path: getattr(m, "BUILDERS", {}).get(path) or _default_builder(m.CLASSES[path])
    for m in _MODULES for path in m.CLASSES
}

CHILDREN: dict[str | None, list[Section]] = {}
for _sec in SECTIONS:
    CHILDREN.setdefault(_sec.parent, []).append(_sec)
SECTION = {s.path: s for s in SECTIONS}
KEYS: dict[str, list[Setting]] = {}
for _s in SETTINGS:
    KEYS.setdefault(_s.section, []).append(_s)


@dataclass(frozen=True)
class Config:
    """A whole, validated configuration file."""

    path: str
    server: ServerConfig
    listeners: tuple[ListenerConfig, ...]
    routes: tuple[RouteConfig, ...]
    pools: tuple[PoolConfig, ...]
    cache: CacheConfig = field(default_factory=CacheConfig)

    def pool(self, name: str) -> PoolConfig:
        """The pool called ``name``; KeyError if there is none."""
        for p in self.pools:
            if p.name == name:
                return p
        raise KeyError(name)

    def listener(self, name: str) -> ListenerConfig:
        """The listener called ``name``; KeyError if there is none."""
        for lst in self.listeners:
            if lst.name == name:
                return lst
        raise KeyError(name)


#: The attribute of Config that holds each top-level section.
ATTRIBUTE = {"server": "server", "listener": "listeners", "route": "routes", "pool": "pools",
             "cache": "cache"}
