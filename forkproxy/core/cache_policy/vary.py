"""Vary (RFC 9111 4.1): the request fields a response is selected by, as a
secondary key that tells its variants apart.

Accept-Encoding is normalised (as Varnish does): its value in the key is
the one coding the cache asks the origin for on a miss (``br``, ``gzip``,
or none), so ``gzip, deflate``, ``deflate, gzip`` and ``gzip;q=1.0,
deflate`` share one variant; the head sent upstream on a miss carries that
same normalised value (``net.cache_filter``), so what is stored under the
key is what any request with that key may get.
"""

from __future__ import annotations

import json

from forkproxy.core.encoding import choose

from .fields import _all, _list_members

# The codings a normalised Accept-Encoding may name, preferred first on equal q.
NORMAL_CODINGS = ("br", "gzip")


def normalize_accept_encoding(values) -> str | None:
    """The Accept-Encoding a cache miss sends upstream for a request with these
    field ``values``: "br" or "gzip" (the acceptable one with the higher q,
    br on a tie; ``*`` counts for both), or None: none at all (identity;
    also when the request has none)."""
    return choose(values, NORMAL_CODINGS)


def _vary_fields(vary_values) -> tuple[str, ...] | None:
    names = [m.lower() for m in _list_members(vary_values)]
    if "*" in names:
        return None
    return tuple(sorted(set(names)))


def _selected(fields, req_headers) -> tuple[tuple[str, str | None], ...]:
    out = []
    for name in fields:
        values = _all(req_headers, name)
        if name == "accept-encoding":
            out.append((name, normalize_accept_encoding(values)))
            continue
        # Whitespace around commas carries no meaning (RFC 9111 4.1).
        out.append((name, ",".join(_list_members(values)) if values else None))
    return tuple(out)


def _secondary(selected) -> str:
    return json.dumps(selected, separators=(",", ":")) if selected else ""


def vary_key(vary_header_values: list[str], request_headers) -> str | None:
    """Secondary key of a request for a response's Vary (RFC 9111 4.1).

    ``""`` when the response does not vary; ``None`` for ``Vary: *`` (never
    matches).  A header absent from the request is distinct from every
    value, the empty one included.
    """
    fields = _vary_fields(vary_header_values)
    if fields is None:
        return None
    return _secondary(_selected(fields, request_headers))
