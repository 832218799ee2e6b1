"""Cache-Control and targeted fields (RFC 9111 5.2, RFC 9213) as ``Directives``,
and which directives apply to a request and to a response."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache

from .fields import _NAME, _all, _list_members
from .structured_fields import _SF, _SFError


DEFAULT_CDN_HEADER = "cdn-cache-control"
DELTA_MAX = 2 ** 31                      # RFC 9111 1.2.2


@dataclass(frozen=True)
class Directives:
    """Parsed Cache-Control (request or response) or a targeted field.

    Flags are booleans, delta-seconds are ints (``None`` when absent);
    ``max_stale`` is ``math.inf`` when given without a value.  Unknown
    directives are kept, in order, in ``extensions`` as ``(name, arg|None)``.
    """
    no_store: bool = False
    no_cache: bool = False
    private: bool = False
    public: bool = False
    must_revalidate: bool = False
    proxy_revalidate: bool = False
    must_understand: bool = False
    no_transform: bool = False
    immutable: bool = False
    only_if_cached: bool = False
    max_age: int | None = None
    s_maxage: int | None = None
    max_stale: float | None = None
    min_fresh: int | None = None
    stale_while_revalidate: int | None = None
    stale_if_error: int | None = None
    extensions: tuple[tuple[str, str | None], ...] = ()
    # The qualified private's field names, lower case (never stored by a shared cache).
    private_fields: tuple[str, ...] = ()


_FLAGS = {
    "no-store": "no_store", "no-cache": "no_cache", "private": "private",
    "public": "public", "must-revalidate": "must_revalidate",
    "proxy-revalidate": "proxy_revalidate", "must-understand": "must_understand",
    "no-transform": "no_transform", "immutable": "immutable",
    "only-if-cached": "only_if_cached",
}
# name -> (attribute, value when the argument is missing or invalid).
# 0 makes the response stale (restrictive); None drops the directive (permissive).
_DELTAS = {
    "max-age": ("max_age", 0),
    "s-maxage": ("s_maxage", 0),
    "min-fresh": ("min_fresh", None),
    "stale-while-revalidate": ("stale_while_revalidate", None),
    "stale-if-error": ("stale_if_error", None),
}


def _delta(arg: str | None) -> int | None:
    if arg is None or not arg.isascii() or not arg.isdigit():
        return None
    return min(int(arg), DELTA_MAX)


_FIELD_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _field_names(arg) -> tuple[str, ...] | None:
    """The field names of a qualified directive's argument (``"a, B"``), lower
    case; None when it is not a non-empty list of field names."""
    if not isinstance(arg, str):
        return None
    names = [m.strip() for m in arg.split(",")]
    if not names or not all(_FIELD_NAME.fullmatch(n) for n in names):
        return None
    return tuple(n.lower() for n in names)


def _build(pairs) -> Directives:
    """Directives from ``(name, arg)`` pairs; arg is a str, None or an int."""
    values: dict = {}
    extensions = []
    private_fields: list[str] = []
    for name, arg in pairs:
        if name == "private":
            # Every occurrence counts: a qualified one only adds fields to
            # leave out, an unqualified (or unreadable) one forbids storing.
            fields = _field_names(arg)
            if fields is None:
                values["private"] = True
            else:
                private_fields.extend(f for f in fields if f not in private_fields)
        elif name in _FLAGS:
            values.setdefault(_FLAGS[name], True)
        elif name in _DELTAS:
            attr, fallback = _DELTAS[name]
            if attr not in values:
                d = _delta(arg) if isinstance(arg, str) or arg is None else arg
                values[attr] = fallback if d is None else d
        elif name == "max-stale":
            if "max_stale" not in values:
                values["max_stale"] = math.inf if arg is None else _delta(arg) if isinstance(arg, str) else arg
        else:
            extensions.append((name, arg if isinstance(arg, str) or arg is None else str(arg)))
    values = {k: v for k, v in values.items() if v is not None}
    return Directives(extensions=tuple(extensions), private_fields=tuple(private_fields), **values)


def _split_items(text: str):
    """Split a comma list, keeping commas inside quoted strings."""
    item, quoted, escaped = [], False, False
    for ch in text:
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            yield "".join(item)
            item = []
            continue
        item.append(ch)
    yield "".join(item)


def _unquote(arg: str) -> str:
    if len(arg) >= 2 and arg[0] == '"' and arg[-1] == '"':
        return re.sub(r"\\(.)", r"\1", arg[1:-1])
    return arg


def parse_cache_control(values: list[str]) -> Directives:
    """Parse the values of every Cache-Control line (RFC 9111 5.2), leniently.

    Never raises.  First occurrence wins; invalid arguments as described in
    the module docstring; garbage items become extensions (ignored).
    """
    return _parse_cache_control(tuple(values))


# Parsing is a pure function of the values, and a cache hit parses the same
# few stored values again and again: remembered (Directives are frozen).
@lru_cache(maxsize=1024)
def _parse_cache_control(values: tuple[str, ...]) -> Directives:
    pairs = []
    for value in values:
        for item in _split_items(value):
            name, eq, arg = item.partition("=")
            name = name.strip().lower()
            if not name:
                continue
            pairs.append((name, _unquote(arg.strip()) if eq else None))
    return _build(pairs)


def parse_cdn_cache_control(values: list[str]) -> Directives | None:
    """Parse a targeted field (RFC 9213) as an RFC 8941 dictionary.

    Returns ``None`` when the field is absent, empty or not a valid
    dictionary (the caller then falls back to Cache-Control).  Later
    duplicates win, as RFC 8941 says.  Flags count when their value is
    ``?1`` (the bare form) or a list of field names (qualified form);
    ``?0`` means absent; ``private`` with a list of strings or tokens is the
    qualified form (its field names).  Delta directives need a non-negative integer;
    anything else is invalid and treated as in ``parse_cache_control``.
    """
    return _parse_cdn_cache_control(tuple(values))


@lru_cache(maxsize=256)
def _parse_cdn_cache_control(values: tuple[str, ...]) -> Directives | None:
    text = ", ".join(v for v in values if v.strip()).strip(" \t")
    if not text:
        return None
    try:
        members = _SF(text).dictionary()
    except _SFError:
        return None
    pairs = []
    for name, value in members.items():
        if name in _FLAGS:
            if value is False:
                continue
            if name == "private" and type(value) is tuple and value and \
                    all(isinstance(v, str) for v in value):
                pairs.append((name, ",".join(value)))
                continue
            pairs.append((name, None))
        elif name in _DELTAS or name == "max-stale":
            ok = type(value) is int and value >= 0
            pairs.append((name, min(value, DELTA_MAX) if ok else "invalid"))
        else:
            pairs.append((name, None if value is True else str(value)))
    return _build(pairs)


_NO_DIRECTIVES = Directives()
_PRAGMA_NO_CACHE = Directives(no_cache=True)

_DIRECTIVE_FIELDS = frozenset({"cache-control", "pragma"})


def _request_directives(req_headers) -> Directives:
    if _DIRECTIVE_FIELDS.isdisjoint(map(_NAME, req_headers)):
        return _NO_DIRECTIVES  # most requests: one pass in C, no Python loop
    cc = pragma = None
    for n, v in req_headers:  # one pass; most requests carry neither field
        if n == "cache-control":
            cc = [v] if cc is None else cc + [v]
        elif n == "pragma":
            pragma = [v] if pragma is None else pragma + [v]
    if cc is not None:
        return parse_cache_control(cc)
    if pragma is not None and any("no-cache" in m.lower() for m in _list_members(pragma)):
        return _PRAGMA_NO_CACHE
    return _NO_DIRECTIVES


def _targets(cdn_header) -> tuple[str, ...]:
    if not cdn_header:
        return ()
    return (cdn_header.lower(),) if isinstance(cdn_header, str) else tuple(h.lower() for h in cdn_header)


def response_directives(resp_headers, cdn_header=DEFAULT_CDN_HEADER) -> tuple[Directives, bool]:
    """The directives forkproxy obeys for a response, and whether they came
    from a targeted field (in which case Expires is ignored too)."""
    for name in _targets(cdn_header):
        values = _all(resp_headers, name)
        if values:
            parsed = parse_cdn_cache_control(values)
            if parsed is not None:
                return parsed, True
    return parse_cache_control(_all(resp_headers, "cache-control")), False
