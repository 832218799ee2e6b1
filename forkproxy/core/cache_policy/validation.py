"""Conditional requests: a 304 from the origin freshens a stored entry
(RFC 9111 4.3.4), and a client's conditions may be answered 304 from one
(RFC 9110 13.2.2)."""

from __future__ import annotations

import re

from .dates import format_http_date, parse_http_date
from .directives import DEFAULT_CDN_HEADER, response_directives
from .entry import Entry, _not_stored
from .fields import _NAME, _all, _first
from .freshness import _date_value


# RFC 9111 3.2: fields a 304 may not overwrite in the stored response.
NOT_UPDATED_BY_304 = frozenset({"content-length"})


def can_freshen(entry: Entry, resp_304_headers) -> bool:
    """Does a 304 describe ``entry`` (RFC 9111 4.3.4)?  If not, the shell
    must not merge it (retry unconditionally instead)."""
    etag = _first(resp_304_headers, "etag")
    if etag is not None:
        return etag == _first(entry.headers, "etag")
    lm = _first(resp_304_headers, "last-modified")
    if lm is not None:
        return lm == _first(entry.headers, "last-modified")
    return True


def merge_304(entry: Entry, resp_304_headers, request_time: float,
              response_time: float, *, cdn_header=DEFAULT_CDN_HEADER) -> Entry:
    """Update a stored entry from a 304 (RFC 9111 3.2, 4.3.4).

    Every field the 304 carries replaces all stored lines of that name;
    fields it omits are kept; Content-Length, hop-by-hop fields, Set-Cookie
    and the fields a qualified ``private`` of the 304 names are never taken
    from it (as ``make_entry``).  The times become the 304's.
    """
    drop = _not_stored(resp_304_headers, cdn_header) | NOT_UPDATED_BY_304
    new = [(n, v) for n, v in resp_304_headers if n not in drop]
    replaced = {n for n, _ in new}
    if "age" not in replaced:
        replaced.add("age")
    headers = [(n, v) for n, v in entry.headers if n not in replaced] + new
    private = response_directives(headers, cdn_header)[0].private_fields
    if private:  # the new directives may name fields the stored response has
        headers = [(n, v) for n, v in headers if n not in private]
    if "date" not in replaced:
        headers = [(n, v) for n, v in headers if n != "date"]
        headers.append(("date", format_http_date(response_time)))
    return Entry(entry.status, entry.reason, tuple(headers), request_time,
                 response_time, entry.vary_headers)


_ETAG = re.compile(r'\s*(W/)?("[^"]*")\s*')


def _etags(value: str) -> list[str] | None:
    """Opaque tags of an entity-tag list; None when unparseable."""
    tags, pos = [], 0
    while pos < len(value):
        m = _ETAG.match(value, pos)
        if not m:
            return None
        tags.append(m.group(2))
        pos = m.end()
        if pos < len(value):
            if value[pos] != ",":
                return None
            pos += 1
    return tags


# The fields that can make a client's request a 304 from a stored entry.
CLIENT_CONDITIONS = frozenset({"if-none-match", "if-modified-since"})


def client_not_modified(entry: Entry, req_headers, method: str = "GET") -> bool:
    """Should the client's conditional request get a 304 from ``entry``?

    RFC 9110 13.2.2: If-None-Match (weak comparison, ``*`` matches) takes
    precedence and If-Modified-Since is then ignored; If-Modified-Since
    (GET/HEAD only, a single valid date) compares with Last-Modified, else
    Date.  Only a 200 entry can stand behind a 304.
    """
    if entry.status != 200 or CLIENT_CONDITIONS.isdisjoint(map(_NAME, req_headers)):
        return False
    inm = _all(req_headers, "if-none-match")
    if inm:
        joined = ",".join(inm)
        if joined.strip() == "*":
            return True
        tags = _etags(joined)
        etag = _first(entry.headers, "etag")
        if tags is None or etag is None:
            return False
        mine = _etags(etag)
        return bool(mine) and mine[0] in tags
    if method not in ("GET", "HEAD"):
        return False
    ims = _all(req_headers, "if-modified-since")
    if len(ims) != 1:
        return False
    since = parse_http_date(ims[0])
    if since is None:
        return False
    lm = _first(entry.headers, "last-modified")
    last = parse_http_date(lm) if lm is not None else None
    if last is None:
        last = _date_value(entry)
    return last <= since
