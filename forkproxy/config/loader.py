"""The loader: TOML text -> ``Config``, every error of a file at once.

``load(path)`` / ``loads(text, path)`` walk the document generically over
the declarations (``document``): each table's keys are parsed by their
``Setting``, unknown keys and sections are refused with a suggestion, then
the section's builder makes its dataclass; checks across tables run last.
Every error is collected and raised together as ``ConfigErrors``, each one
``FILE:LINE: key.path: message`` (lines from ``lines.LineFinder``).
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from typing import Any

import tomli

from forkproxy.config.document import BUILDERS, CHILDREN, KEYS, Config
from forkproxy.config.lines import LineFinder
from forkproxy.config.parsers import _name
from forkproxy.config.schema import Path, Section, _fmt_path
from forkproxy.config.units import Invalid, _is_ip, _quote, _tname, split_host_port
from forkproxy.errors import ConfigError, ConfigErrors


class _Loader:
    """One pass over a parsed document: every table through its section's
    keys and builder, every error recorded with its line (``err``)."""

    def __init__(self, text: str, path: str):
        self.file = path
        self.errors: list[ConfigError] = []
        self.lines = LineFinder(text).lines

    def err(self, path: Path, message: str) -> None:
        line = None
        p = tuple(path)
        while p and line is None:
            line = self.lines.get(p)
            p = p[:-1]
        self.errors.append(ConfigError(self.file, line, _fmt_path(path), message))

    def table(self, sec: Section, raw: Any, path: Path) -> Any:
        """Parse one table of section ``sec``; its dataclass, or None on error."""
        if not isinstance(raw, dict):
            self.err(path, f"expected a table, got {_tname(raw)}")
            return None
        before = len(self.errors)
        settings = KEYS.get(sec.path, [])
        children = CHILDREN.get(sec.path, [])
        known = [s.name for s in settings] + [c.key for c in children]
        for key in raw:
            if key not in known:
                msg = f"unknown key {_quote(key)} in {sec.title}"
                close = difflib.get_close_matches(key, known, n=1)
                msg += f'; did you mean "{close[0]}"?' if close else f"; known keys: {', '.join(known)}"
                self.err(path + (key,), msg)
        values: dict[str, Any] = {}
        for s in settings:
            if s.name in raw:
                try:
                    values[s.attribute] = s.parse(raw[s.name])
                except Invalid as e:
                    self.err(path + (s.name,), str(e))
            elif s.required:
                self.err(path + (s.name,), f"required key is missing ({sec.title} needs {s.name} = ...)")
            else:
                values[s.attribute] = None if s.default is None else s.parse(s.default)
        for s in settings:
            if s.when and s.name in raw:
                other, wanted = s.when
                actual = values.get(other)
                # An invalid sibling was reported already: no second guess.
                if actual is not None and actual != wanted:
                    self.err(path + (s.name,), f"{s.name} is only valid with {other} = {_quote(wanted)}, "
                             f"not {other} = {_quote(actual)}")
        for child in children:
            sub = self.section(child, raw.get(child.key), path + (child.key,), present=child.key in raw)
            values[child.key] = sub
        if len(self.errors) != before:
            return None
        return BUILDERS[sec.path](values, path, self.err)

    def section(self, sec: Section, raw: Any, path: Path, present: bool) -> Any:
        """Parse a whole section of any kind: a dataclass, or a tuple of them."""
        if sec.kind == "table":
            if not present:
                if sec.optional:
                    return None
                raw = {}
            return self.table(sec, raw, path)
        if not present:
            if sec.required:
                self.err(path, sec.need)
            return ()
        if sec.kind == "array":
            if not isinstance(raw, list) or not all(isinstance(x, dict) for x in raw):
                self.err(path, f"expected an array of tables, written {sec.title}, got {_tname(raw)}")
                return ()
            if not raw and sec.required:
                self.err(path, sec.need)
                return ()
            items = [self.table(sec, item, path + (i,)) for i, item in enumerate(raw)]
            return tuple(items)
        # named: table of tables
        if not isinstance(raw, dict) or not all(isinstance(x, dict) for x in raw.values()):
            self.err(path, f"expected tables written as {sec.title}")
            return ()
        items = []
        for name, item in raw.items():
            try:
                _name(name)
            except Invalid as e:
                self.err(path + (name,), str(e))
                continue
            items.append(self.table(sec, item, path + (name,)))
        return tuple(items)

    def config(self, doc: dict) -> Config | None:
        top = CHILDREN[None]
        known = [s.key for s in top]
        for key in doc:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f'; did you mean "{close[0]}"?' if close else f"; known sections: {', '.join(known)}"
                self.err((key,), f"unknown section {_quote(key)}{hint}")
        parts = {s.key: self.section(s, doc.get(s.key), (s.key,), s.key in doc) for s in top}
        self._cross_check(doc, parts["route"])
        if self.errors:
            return None
        return Config(self.file, parts["server"], parts["listener"], parts["route"], parts["pool"],
                      parts["cache"])

    def _cross_check(self, doc: dict, routes: tuple) -> None:
        """Checks across tables.  They read the raw document, so a listener or
        pool that failed its own checks still counts as defined (no second,
        misleading "no pool named" error)."""
        raw_listeners = doc.get("listener") if isinstance(doc.get("listener"), list) else []
        names: dict[str, int] = {}
        binds: dict[tuple, int] = {}
        for i, item in enumerate(raw_listeners):
            if not isinstance(item, dict):
                continue
            name = item.get("name")
            if isinstance(name, str):
                if name in names:
                    self.err(("listener", i, "name"), f"duplicate listener name {_quote(name)} (also listener[{names[name]}])")
                names.setdefault(name, i)
            try:
                host, port = split_host_port(item.get("bind"), default_host="0.0.0.0")
            except (Invalid, AttributeError):
                continue
            key = (ipaddress.ip_address(host) if _is_ip(host) else host.lower(), port)
            if key in binds:
                self.err(("listener", i, "bind"), f"duplicate bind {_quote(item['bind'])} (also listener[{binds[key]}])")
            binds.setdefault(key, i)
        pools = sorted(doc["pool"]) if isinstance(doc.get("pool"), dict) else []
        for r in routes:
            if r is None:
                continue
            for where, name in _route_pools(r) + _mirror_pool(r):
                if name not in pools:
                    self.err(where, f"no pool named {_quote(name)}{_did_you_mean(name, pools)}")
            for j, name in enumerate(r.listener):
                if name not in names:
                    p = ("route", r.index, "listener")
                    if (p + (j,)) in self.lines:
                        p += (j,)
                    self.err(p, f"no listener named {_quote(name)}{_did_you_mean(name, sorted(names))}")
        self._check_tcp(doc, raw_listeners, routes, pools)

    def _check_tcp(self, doc: dict, raw_listeners: list, routes: tuple, pools: list) -> None:
        """tcp listeners name an existing pool; routes name no tcp listener and no
        pool that sends PROXY headers (an HTTP keep-alive connection to a server
        carries requests of many clients: one header cannot speak for them)."""
        tcp = set()
        for i, item in enumerate(raw_listeners):
            if isinstance(item, dict) and item.get("mode") == "tcp":
                tcp.add(item.get("name"))
                pool = item.get("pool")
                if isinstance(pool, str) and pool not in pools:
                    self.err(("listener", i, "pool"), f"no pool named {_quote(pool)}{_did_you_mean(pool, pools)}")
        raw_pools = doc.get("pool") if isinstance(doc.get("pool"), dict) else {}
        for r in routes:
            if r is None:
                continue
            for j, name in enumerate(r.listener):
                if name in tcp:
                    p = ("route", r.index, "listener")
                    if (p + (j,)) in self.lines:
                        p += (j,)
                    self.err(p, f"listener {_quote(name)} is a tcp listener: routes apply to "
                             "http listeners only")
            for where, name in _route_pools(r) + _mirror_pool(r):
                raw = raw_pools.get(name)
                if isinstance(raw, dict) and raw.get("proxy_protocol") is not None:
                    self.err(where, f"pool {_quote(name)} sends PROXY "
                             "protocol headers: only tcp listeners may use it")


def _route_pools(r) -> list[tuple[tuple, str]]:
    """(key path, pool name) of each pool a route names (its pool, or each of its split)."""
    if r.split is None:
        return [(("route", r.index, "pool"), r.pool)]
    return [(("route", r.index, "pools", j, "pool"), name) for j, name in enumerate(r.split.pools)]


def _mirror_pool(r) -> list[tuple[tuple, str]]:
    """(key path, pool name) of the pool a route mirrors to, if it does."""
    return [] if r.mirror is None else [(("route", r.index, "mirror", "pool"), r.mirror.pool)]


def _did_you_mean(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1)
    if close:
        return f'; did you mean "{close[0]}"?'
    return f"; defined: {', '.join(choices)}" if choices else ""


def _sort_key(e: ConfigError) -> tuple:
    return (e.line is None, e.line or 0)


def loads(text: str, path: str = "<string>") -> Config:
    """Parse and validate TOML ``text``; ``path`` names it in errors.

    Raises ConfigErrors listing every problem found, in file order.
    """
    try:
        doc = tomli.loads(text)
    except tomli.TOMLDecodeError as e:
        msg = getattr(e, "msg", None) or re.sub(r"\s*\(at line \d+, column \d+\)$", "", str(e))
        line = getattr(e, "lineno", None)
        raise ConfigErrors([ConfigError(path, line, "", f"TOML syntax error: {msg}")]) from None
    loader = _Loader(text, path)
    cfg = loader.config(doc)
    if loader.errors or cfg is None:
        raise ConfigErrors(sorted(loader.errors, key=_sort_key))
    return cfg


def load(path: str) -> Config:
    """Read, parse and validate the file at ``path``; ConfigErrors on any problem
    (an unreadable file is one ConfigError without a key)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigErrors([ConfigError(path, None, "", f"cannot read: {e.strerror or e}")]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ConfigErrors([ConfigError(path, line, "", "not valid UTF-8")]) from None
    return loads(text, path)


# ---------------------------------------------------------------------------
# Warnings: what ``-t`` reports without refusing the file.
