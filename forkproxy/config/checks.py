"""Warnings: what ``forkproxy -t`` reports of a valid file without refusing it."""

from __future__ import annotations

import dataclasses
import time

from forkproxy.config.document import Config
from forkproxy.config.loader import _Loader, _sort_key
from forkproxy.config.schema import Path
from forkproxy.config.units import Invalid, _is_ip, _quote, split_host_port
from forkproxy.core.routing import RouteSpec, shadowed
from forkproxy.errors import ConfigError

#: How long ``warnings`` waits, in all, for the server names to resolve.
RESOLVE_TIMEOUT = 2.0


def warnings(cfg: Config, text: str | None = None,
             resolve_timeout: float = RESOLVE_TIMEOUT) -> list[ConfigError]:
    """Problems of a valid configuration that do not stop it from serving,
    each ``FILE:LINE: key: warning: ...``, in file order: a route no request
    can reach (an earlier one takes them all), a server name that does not
    resolve now (DNS may be down at check time: only a warning), something
    shared by a fleet (``scope = "fleet"``) with no memcached to share it, a
    route's cache setting on a route that does not cache.

    ``text`` is the file's text, for line numbers (read from ``cfg.path``
    when None; no line numbers when it cannot be read).  Resolving takes at
    most ``resolve_timeout`` seconds in all, whatever the resolver does.
    """
    if text is None:
        try:
            with open(cfg.path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError):
            text = ""
    out = _Loader(text, cfg.path)
    _warn_shadowed(cfg, out.err)
    _warn_fleet_alone(cfg, out.err)
    _warn_cache_off(cfg, out.err)
    _warn_unresolved(cfg, out.err, resolve_timeout)
    return sorted(out.errors, key=_sort_key)


def _warn_shadowed(cfg: Config, warn) -> None:
    specs = [RouteSpec(r.index, r.pool, frozenset(r.listener), r.host, r.path, r.path_regex)
             for r in cfg.routes]
    for later, earlier in shadowed(specs):
        warn(("route", specs[later].index), f"warning: this route never matches: "
             f"route[{specs[earlier].index}] before it takes every request it would")


def _warn_fleet_alone(cfg: Config, warn) -> None:
    """A fleet rate limit or sticky table without cache.servers: it works,
    but each node (each worker, for a table) holds its own."""
    if cfg.cache.servers:
        return
    for r in cfg.routes:
        if r.rate_limit is not None and r.rate_limit.scope == "fleet":
            warn(("route", r.index, "rate_limit", "scope"), 'warning: scope = "fleet" without '
                 "cache.servers: nothing is shared, each node applies the limit on its own")
    for p in cfg.pools:
        if p.sticky is not None and p.sticky.key is not None and p.sticky.scope == "fleet":
            warn(("pool", p.name, "sticky", "scope"), 'warning: scope = "fleet" without '
                 "cache.servers: nothing is shared, each worker keeps its own sticky table")


#: The route keys that only mean something with ``cache = true``.
_CACHE_KEYS = ("cache_key", "cache_set_cookie")


def _warn_cache_off(cfg: Config, warn) -> None:
    """A cache setting on a route without ``cache = true``: most likely the
    operator believes the route caches (or is namespaced) when it is not."""
    for r in cfg.routes:
        if r.cache:
            continue
        defaults = {f.name: f.default for f in dataclasses.fields(r)}
        for key in _CACHE_KEYS:
            if getattr(r, key) != defaults[key]:
                warn(("route", r.index, key), "warning: this route does not cache "
                     "(no cache = true): the key has no effect")


def _warn_unresolved(cfg: Config, warn, timeout: float) -> None:
    """Resolve every server name at once in daemon threads and wait at most
    ``timeout``: getaddrinfo has no timeout of its own."""
    import socket
    import threading

    names: dict[tuple[str, int], list[Path]] = {}
    for pool in cfg.pools:
        for i, s in enumerate(pool.servers):
            if not _is_ip(s.host):
                where = ("pool", pool.name, "servers", i, "addr")
                names.setdefault((s.host, s.port), []).append(where)
    for i, addr in enumerate(cfg.cache.servers):
        try:
            host, port = split_host_port(addr)
        except Invalid:
            continue
        if not _is_ip(host):
            names.setdefault((host, port), []).append(("cache", "servers", i))
    failed: dict[tuple[str, int], str] = {}

    def resolve(key):
        try:
            socket.getaddrinfo(key[0], key[1], type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            failed[key] = getattr(exc, "strerror", None) or str(exc)

    threads = {key: threading.Thread(target=resolve, args=(key,), daemon=True) for key in names}
    for t in threads.values():
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads.values():
        t.join(max(0.0, deadline - time.monotonic()))
    for key, paths in names.items():
        if threads[key].is_alive():
            why = f"no answer within {timeout:g}s"
        elif key in failed:
            why = failed[key]
        else:
            continue
        for path in paths:
            warn(path, f"warning: {_quote(key[0])} does not resolve now ({why}); "
                 "forkproxy resolves it again when it connects")
