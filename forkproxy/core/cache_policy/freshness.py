"""Freshness and age of a stored entry (RFC 9111 4.2)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .dates import parse_http_date
from .directives import DEFAULT_CDN_HEADER, DELTA_MAX, response_directives
from .fields import _all, _first

if TYPE_CHECKING:  # the entry imports this module: annotations only
    from .entry import Entry


HEURISTIC_FRACTION = 0.1                 # RFC 9111 4.2.2 suggests 10%

# RFC 9110 15.1: statuses cacheable by default (heuristically cacheable).
HEURISTIC_STATUSES = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})


def _date_value(entry: Entry) -> float:
    d = _first(entry.headers, "date")
    parsed = parse_http_date(d) if d is not None else None
    return entry.response_time if parsed is None else parsed


def freshness_lifetime(entry: Entry, *, heuristic_max: float,
                       cdn_header=DEFAULT_CDN_HEADER) -> float:
    """RFC 9111 4.2.1: s-maxage, then max-age, then Expires - Date (an invalid
    Expires gives 0), then the heuristic (4.2.2), else 0."""
    cc, targeted = response_directives(entry.headers, cdn_header)
    if cc.s_maxage is not None:
        return float(cc.s_maxage)
    if cc.max_age is not None:
        return float(cc.max_age)
    expires = None if targeted else _first(entry.headers, "expires")
    if expires is not None:
        at = parse_http_date(expires)
        return 0.0 if at is None else max(0.0, at - _date_value(entry))
    if entry.status in HEURISTIC_STATUSES or cc.public:
        lm = _first(entry.headers, "last-modified")
        at = parse_http_date(lm) if lm is not None else None
        if at is not None:
            return min(max(0.0, (_date_value(entry) - at) * HEURISTIC_FRACTION), heuristic_max)
    return 0.0


def _age_value(headers) -> int:
    # RFC 9111 5.1: first member only; anything but a non-negative integer is ignored.
    values = _all(headers, "age")
    if not values:
        return 0
    first = values[0].split(",")[0].strip()
    return min(int(first), DELTA_MAX) if first.isascii() and first.isdigit() else 0


def current_age(entry: Entry, now: float) -> float:
    """RFC 9111 4.2.3, with the entry's stored Date, Age and times."""
    resident_time = now - entry.response_time
    return entry.initial_age + resident_time


def age_value(entry: Entry, now: float) -> str:
    """The Age field's value for ``entry`` served at ``now`` (RFC 9111 5.1)."""
    return str(min(max(0, int(current_age(entry, now))), DELTA_MAX))
