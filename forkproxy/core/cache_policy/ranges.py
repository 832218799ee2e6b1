"""Byte ranges served from a stored response (RFC 9110 14, 13.1.5).

A GET with one ``Range: bytes=...`` range, for a stored complete 200 of
known length, is answered 206 with that part (``Span``), or 416 when the
range cannot be satisfied (``Unsatisfiable``); an ``If-Range`` that does not
hold, or a Range this cache does not serve (another unit, bad syntax,
several ranges, an empty representation), gets the whole 200, as RFC 9110
allows (a server MAY ignore Range; nginx answers several ranges of a
response it cannot assemble in one buffer with the whole 200 too).
"""

from __future__ import annotations

from typing import NamedTuple

from .dates import parse_http_date
from .fields import _all, _first

# Digits beyond this are "larger than any representation" (int() refuses
# strings of more than 4300 digits; a length never reaches 10**18).
_MAX_DIGITS = 18
_HUGE = 10 ** _MAX_DIGITS


class Span(NamedTuple):
    """Bytes ``start`` to ``end`` (inclusive) of a representation of ``length`` bytes."""

    start: int
    end: int
    length: int

    status = 206
    reason = "Partial Content"

    @property
    def size(self) -> int:
        return self.end - self.start + 1

    @property
    def content_range(self) -> str:
        return f"bytes {self.start}-{self.end}/{self.length}"


class Unsatisfiable(NamedTuple):
    """A range none of whose bytes exist in a representation of ``length`` bytes: 416."""

    length: int

    status = 416
    reason = "Range Not Satisfiable"
    size = 0

    @property
    def content_range(self) -> str:
        return f"bytes */{self.length}"


def _number(digits: str) -> int | None:
    if not digits or not digits.isascii() or not digits.isdigit():
        return None
    return _HUGE if len(digits) > _MAX_DIGITS else int(digits)


def parse_range(value: str, length: int) -> Span | Unsatisfiable | None:
    """The part of a ``length``-byte representation a ``Range`` value asks for.

    ``None``: ignore the field and send the whole (a unit other than bytes,
    a syntax error, more than one range, ``length`` 0).  Empty list members
    are skipped (RFC 9110 5.6.1).
    """
    unit, eq, spec = value.partition("=")
    if not eq or unit.lower() != "bytes" or length <= 0:
        return None
    members = [m.strip(" \t") for m in spec.split(",")]
    members = [m for m in members if m]
    if len(members) != 1:
        return None
    first, dash, last = members[0].partition("-")
    if not dash:
        return None
    if first == "":  # suffix-range: the last N bytes
        n = _number(last)
        if n is None:
            return None
        if n == 0:
            return Unsatisfiable(length)
        return Span(max(0, length - n), length - 1, length)
    start = _number(first)
    end = _number(last) if last else _HUGE
    if start is None or end is None or end < start:
        return None
    if start >= length:
        return Unsatisfiable(length)
    return Span(start, min(end, length - 1), length)


def _strong_etag(tag: str | None) -> str | None:
    if tag is None:
        return None
    tag = tag.strip(" \t")
    if len(tag) < 2 or tag[0] != '"' or tag[-1] != '"':
        return None  # weak (W/"...") or malformed: never matches strongly
    return tag


def if_range_holds(value: str, stored_headers) -> bool:
    """Does ``If-Range: value`` hold for the stored response (RFC 9110 13.1.5)?

    An entity-tag: a strong match with the stored ETag (a weak one never
    matches).  An HTTP-date: exactly the stored Last-Modified, which must
    be strong (the stored Date at least one second later, RFC 9110 8.8.2.2).
    Anything else does not hold.
    """
    value = value.strip(" \t")
    if value[:1] == '"' or value[:2] == "W/":
        mine = _strong_etag(value)
        return mine is not None and mine == _strong_etag(_first(stored_headers, "etag"))
    when = parse_http_date(value)
    lm_field = _first(stored_headers, "last-modified")
    lm = parse_http_date(lm_field) if lm_field is not None else None
    if when is None or lm is None or when != lm:
        return False
    date_field = _first(stored_headers, "date")
    date = parse_http_date(date_field) if date_field is not None else None
    return date is not None and date - lm >= 1


def select_range(method: str, req_headers, status: int, stored_headers,
                 length: int | None) -> Span | Unsatisfiable | None:
    """What part of a stored response (``status``, ``stored_headers``, a body
    of ``length`` bytes, None when unknown) a request gets: a ``Span`` (206),
    ``Unsatisfiable`` (416), or None (the whole, as without Range).

    Only a GET with exactly one Range field, for a complete 200 of known
    length, whose If-Range (if any) holds.
    """
    if method != "GET" or status != 200 or length is None:
        return None
    values = _all(req_headers, "range")
    if len(values) != 1:
        return None
    conditions = _all(req_headers, "if-range")
    if conditions and (len(conditions) != 1 or not if_range_holds(conditions[0], stored_headers)):
        return None
    return parse_range(values[0], length)
