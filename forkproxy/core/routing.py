"""Request routing, sans-IO: (listener, host, path) -> the route that serves it.

CONTRACT (consumed by ``forkproxy.net.http_session`` and ``forkproxyctl explain``):

    ``RouteSpec``   what one ``[[route]]`` table of the config says, converted
                    by the config loader.  ``index`` is its position in the
                    file (used in logs and ``explain``).
    ``Router(specs)``
                    compiles the routes once, at config load.  Raises
                    ``ValueError`` for a host pattern it cannot honour or an
                    invalid ``path_regex`` (the config layer reports it with
                    the key path).
    ``Router.match(listener, host, path) -> RouteSpec | None``
                    the first route, in file order, whose every condition
                    holds; ``None`` when none does (the caller answers 404).
    ``shadowed(specs) -> [(later, earlier)]``
                    the routes that can never match because an earlier one
                    takes every request they would (for ``forkproxy -t``).

Conditions of a route (all given ones must hold; a route with none of them is
a default route and matches everything):

    listeners   the request arrived on one of these listener names; empty
                means any listener.
    host        exact (``shop.example.com``) or a leading wildcard
                (``*.example.com``), which like nginx matches every
                sub-domain at any depth but not the bare ``example.com``.
                Compared case-insensitively: the pattern is lower-cased here,
                the caller passes the request host lower-cased and without
                port.  A request with no host matches no host condition.
    path        a prefix of the request path (``/api/`` matches ``/api/x``
                but not ``/apix``; ``/api`` matches both: write the slash when
                you mean a directory, as in nginx ``location``).
    path_regex  searched in the path with RE2 (``forkproxy.core.patterns``;
                anchor with ``^`` yourself).

``path`` is the path part of the request target without the query string,
in canonical form (``core.canon``: the session canonicalises every request
before routing it; nothing is decoded here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .patterns import compile_pattern

__all__ = ["RouteSpec", "Router", "shadowed"]


@dataclass(frozen=True)
class RouteSpec:
    """One route as configured; see the module docstring for the semantics."""

    index: int
    pool: str
    listeners: frozenset[str] = frozenset()
    host: str | None = None
    path: str | None = None
    path_regex: str | None = None


# A compiled route is a flat tuple so match() does attribute-free indexing in
# its hot loop: (listeners|None, exact_host|None, host_suffix|None,
# path_prefix|None, regex_search|None, spec).
_Compiled = tuple[
    "frozenset[str] | None",
    "str | None",
    "str | None",
    "str | None",
    "Callable[[str], object] | None",
    RouteSpec,
]


def _compile_host(pattern: str) -> tuple[str | None, str | None]:
    """Return (exact, suffix) for a host pattern; exactly one is not None."""
    host = pattern.strip().lower()
    if host.endswith("."):
        host = host[:-1]
    if not host:
        raise ValueError("empty host pattern")
    if host.startswith("*."):
        suffix = host[1:]  # ".example.com"
        if "*" in suffix or len(suffix) < 2:
            raise ValueError(f"unsupported host pattern {pattern!r}")
        return None, suffix
    if "*" in host:
        raise ValueError(
            f"unsupported host pattern {pattern!r}: only a leading '*.' wildcard is allowed"
        )
    if ":" in host and not host.startswith("["):
        raise ValueError(f"host pattern {pattern!r} must not contain a port")
    return host, None


class Router:
    """Routes compiled for cheap first-match lookup. Immutable after __init__."""

    __slots__ = ("_routes", "specs")

    def __init__(self, specs: Sequence[RouteSpec]):
        self.specs: tuple[RouteSpec, ...] = tuple(specs)
        compiled: list[_Compiled] = []
        for spec in self.specs:
            exact = suffix = None
            if spec.host is not None:
                exact, suffix = _compile_host(spec.host)
            search = None
            if spec.path_regex is not None:
                search = compile_pattern(spec.path_regex).search
            compiled.append(
                (
                    frozenset(spec.listeners) or None,
                    exact,
                    suffix,
                    spec.path or None,
                    search,
                    spec,
                )
            )
        self._routes: tuple[_Compiled, ...] = tuple(compiled)

    def match(self, listener: str, host: str | None, path: str) -> RouteSpec | None:
        """First route in file order whose conditions all hold, else None.

        ``host`` must already be lower-cased and stripped of its port;
        ``path`` is the target's path without the query.  A fully qualified
        host ("example.com.") is treated like its bare form.
        """
        if host and host[-1] == ".":
            host = host[:-1]
        for listeners, exact, suffix, prefix, search, spec in self._routes:
            if listeners is not None and listener not in listeners:
                continue
            if exact is not None:
                if host != exact:
                    continue
            elif suffix is not None:
                # len check: "*.example.com" must not match ".example.com" itself.
                if host is None or len(host) <= len(suffix) or not host.endswith(suffix):
                    continue
            if prefix is not None and not path.startswith(prefix):
                continue
            if search is not None and search(path) is None:
                continue
            return spec
        return None

    def __len__(self) -> int:
        return len(self._routes)


# Regular expressions that match every string: a route with one of them has no
# path condition in effect.
_ANY_PATH = frozenset({"", "^", ".*", "^.*", "(?s).*"})


def _covers(earlier: RouteSpec, later: RouteSpec) -> bool:
    """True when every request ``later`` matches is matched by ``earlier``.

    Conservative: False whenever it cannot be shown (two different regular
    expressions, a regex against a prefix), so a "never matches" warning is
    never wrong.  Host patterns must be valid (``Router`` checked them).
    """
    if earlier.listeners and not (later.listeners and later.listeners <= earlier.listeners):
        return False
    if earlier.host is not None:
        if later.host is None:
            return False
        e_exact, e_suffix = _compile_host(earlier.host)
        l_exact, l_suffix = _compile_host(later.host)
        if e_exact is not None:
            if l_exact != e_exact:
                return False
        elif l_exact is not None:
            if len(l_exact) <= len(e_suffix) or not l_exact.endswith(e_suffix):
                return False
        elif not l_suffix.endswith(e_suffix):
            return False
    if earlier.path:
        if not (later.path and later.path.startswith(earlier.path)):
            return False
    if earlier.path_regex is not None and earlier.path_regex not in _ANY_PATH:
        if later.path_regex != earlier.path_regex:
            return False
    return True


def shadowed(specs: Sequence[RouteSpec]) -> list[tuple[int, int]]:
    """``(later, earlier)`` positions in ``specs`` for each route that can never
    match: an earlier route's conditions hold for every request it would
    take (same or any listener, same host or a wildcard covering it or any
    host, a prefix of its path or any path, the same regex or none).  Each
    shadowed route is reported once, with the first route that covers it.
    Only what is certain is reported: a regex is compared by its text.
    """
    out = []
    for j, later in enumerate(specs):
        for i in range(j):
            if _covers(specs[i], later):
                out.append((j, i))
                break
    return out
