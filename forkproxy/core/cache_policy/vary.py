"""Vary (RFC 9111 4.1): the request fields a response is selected by, as a
secondary key that tells its variants apart."""

from __future__ import annotations

import json

from .fields import _all, _list_members


def _vary_fields(vary_values) -> tuple[str, ...] | None:
    names = [m.lower() for m in _list_members(vary_values)]
    if "*" in names:
        return None
    return tuple(sorted(set(names)))


def _selected(fields, req_headers) -> tuple[tuple[str, str | None], ...]:
    out = []
    for name in fields:
        values = _all(req_headers, name)
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
