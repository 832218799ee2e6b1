"""RFC 9111 shared-cache policy, sans-IO.

CONTRACT (consumed by ``forkproxy.net.http_cache``; keep it):

Everything here is pure.  Times are float epoch seconds passed in by the
caller; headers are lists of ``(lower-case name, value)`` str pairs, in order,
repeats kept, exactly as ``forkproxy.core.http1`` produces them.  Nothing here
raises on what a client or an origin sends: bad input degrades to "do not
store", "stale" or "miss", never to an exception.

Flow for the shell:

1. Request in.  ``primary_key(scheme, host, target)`` names the URL; the store
   keeps, per primary key, the variants (``Entry``) and picks the one whose
   ``entry.secondary_key == vary_key(entry.vary_fields, request_headers)``
   (``decide`` checks it again).  Both keys are readable strings: hash them
   (e.g. sha256) before using them as memcached keys.
2. ``decide(entry_or_None, method, req_headers, now, ...) -> Decision``:
   ``FRESH`` serve it (``client_not_modified`` -> answer 304 with
   ``not_modified_headers``, else ``serve_headers``; no body for HEAD);
   ``STALE_OK`` serve it, and when ``decision.background_refresh`` also
   refresh it with a conditional GET carrying ``decision.conditional_headers``;
   ``REVALIDATE`` forward with ``decision.conditional_headers`` added, then a
   304 (and ``can_freshen``) -> ``merge_304`` + store + serve, a 5xx or a
   connection error -> ``stale_if_error_ok`` decides whether the stale entry
   is served instead; ``MISS`` forward as is; ``GATEWAY_TIMEOUT`` answer 504
   (``only-if-cached`` and nothing usable).
3. Response in.  ``storable(...)`` -> ``make_entry(...)`` -> store the head
   (``entry.to_bytes()``) and the body.  For any method, ``invalidations(...)``
   lists primary keys to delete (all variants).

Choices (RFC 9111 leaves them to the cache):

- Only responses to GET are stored; HEAD is answered from a stored GET.
  206 (no range assembly) and 304 (not a complete response) are not stored.
  A response with neither explicit freshness nor a validator is not stored
  (it could never be reused).  Heuristic freshness (RFC 9111 4.2.2) is 10% of
  ``Date - Last-Modified`` capped by ``heuristic_max``, only for heuristically
  cacheable statuses (or with ``public``).
- Cache-Control parsing is lenient (RFC 9111 5.2): directive names are
  case-insensitive, arguments may be tokens or quoted strings, the first
  occurrence of a directive wins, unknown directives are kept in
  ``Directives.extensions`` and otherwise ignored.  An invalid delta-seconds
  is treated conservatively: ``max-age``/``s-maxage`` (response or request)
  become 0 (stale, RFC 9111 4.2.1); the permissive ``max-stale`` (with a bad
  argument), ``stale-while-revalidate``, ``stale-if-error`` and the
  ``min-fresh`` request directive are dropped.  Values above 2**31 are
  clamped to 2**31 (RFC 9111 1.2.2).  The qualified form of ``no-cache``
  (with field names) is treated as unqualified.  The qualified form of
  ``private`` (``private="Set-Cookie"``, RFC 9111 5.2.2.7) lists fields a
  shared cache must not store: the response is stored without them
  (``Directives.private_fields``); every ``private`` counts, not only the
  first, and an unqualified one, or one whose argument is not a list of
  field names, means "do not store" as before.
- Set-Cookie (nginx's and Varnish's default): a response carrying one is not
  stored, unless the route says ``set_cookie="strip"`` (stored without it) or
  the response itself says ``private="Set-Cookie"``.  A stored entry never
  holds a Set-Cookie (``make_entry``, ``merge_304``): one client's cookie is
  never handed to another.
- Targeted fields (RFC 9213): ``cdn_header`` names the field(s) forkproxy
  obeys, in priority order (a str or a tuple of str; ``()`` disables).  The
  first one present and valid (an RFC 8941 dictionary) replaces
  Cache-Control *and* Expires for every response-side decision.  An invalid
  one is ignored.  A directive with a value of the wrong type is treated as
  above (invalid max-age -> 0, others dropped).
- A request ``Pragma: no-cache`` counts as ``Cache-Control: no-cache`` only
  when the request has no Cache-Control (RFC 9111 5.4, RFC 7234 compat).
- A request ``stale-if-error`` overrides the response's; otherwise the
  response's applies (RFC 5861 4).
- On a 304 without Date, Date is set to the 304's response time; a stored
  Age the 304 does not repeat is dropped (it described the old response).
"""

from __future__ import annotations

import base64
import calendar
import datetime
import enum
import json
import math
import re
from dataclasses import dataclass
from operator import itemgetter
from email.utils import formatdate
from functools import cached_property, lru_cache
from typing import NamedTuple
from urllib.parse import urljoin, urlsplit

__all__ = [
    "Directives", "parse_cache_control", "parse_cdn_cache_control",
    "parse_http_date", "format_http_date", "primary_key", "vary_key",
    "response_directives", "storable", "not_storable_reason", "Entry",
    "make_entry", "freshness_lifetime", "current_age", "Action", "Decision",
    "decide", "conditional_headers", "can_freshen", "merge_304",
    "client_not_modified", "CLIENT_CONDITIONS", "serve_headers", "age_value", "not_modified_headers",
    "invalidations", "stale_if_error_ok", "ERROR_STATUSES",
    "DEFAULT_CDN_HEADER", "HEURISTIC_STATUSES", "DELTA_MAX", "SET_COOKIE_MODES",
]

DEFAULT_CDN_HEADER = "cdn-cache-control"
DELTA_MAX = 2 ** 31                      # RFC 9111 1.2.2
HEURISTIC_FRACTION = 0.1                 # RFC 9111 4.2.2 suggests 10%

# RFC 9110 15.1: statuses cacheable by default (heuristically cacheable).
HEURISTIC_STATUSES = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})
# Statuses whose caching rules we implement, for must-understand (RFC 9111 5.2.2.3).
UNDERSTOOD_STATUSES = HEURISTIC_STATUSES - {206} | {302, 303, 307}
# Upstream results for which stale-if-error may serve the stored entry (RFC 5861 4).
ERROR_STATUSES = frozenset({500, 502, 503, 504})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
# RFC 9111 3.1 / DESIGN section 4: never stored, never forwarded.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade"})
# RFC 9111 3.2: fields a 304 may not overwrite in the stored response.
NOT_UPDATED_BY_304 = frozenset({"content-length"})
# RFC 9110 15.4.5: what a 304 repeats from the 200 it stands for (+ Age, RFC 9111 5.1).
NOT_MODIFIED_FIELDS = frozenset({"cache-control", "content-location", "date", "etag",
                                 "expires", "vary", "age"})


# ---------------------------------------------------------------- directives

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


# RFC 8941 section 4.2 dictionary parser (only what a dictionary needs).
_SF_KEY = re.compile(r"[a-z*][a-z0-9_\-.*]*")
_SF_NUMBER = re.compile(r"-?[0-9]{1,15}(\.[0-9]{1,3})?")
_SF_TOKEN = re.compile(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*")
_SF_BINARY = re.compile(r":([A-Za-z0-9+/=]*):")


class _SFError(ValueError):
    pass


class _SF:
    def __init__(self, text: str):
        self.s, self.i = text, 0

    def peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def skip(self, chars: str) -> None:
        while self.peek() and self.peek() in chars:
            self.i += 1

    def match(self, regex: re.Pattern) -> re.Match:
        m = regex.match(self.s, self.i)
        if not m:
            raise _SFError(self.i)
        self.i = m.end()
        return m

    def bare_item(self):
        c = self.peek()
        if c == "-" or c.isdigit():
            m = self.match(_SF_NUMBER)
            if m.group(1) is None:
                return int(m.group(0))
            if len(m.group(0).lstrip("-").split(".")[0]) > 12:
                raise _SFError(self.i)
            return float(m.group(0))
        if c == '"':
            self.i += 1
            out = []
            while True:
                c = self.peek()
                if not c:
                    raise _SFError(self.i)
                self.i += 1
                if c == "\\":
                    c = self.peek()
                    if c not in ('"', "\\"):
                        raise _SFError(self.i)
                    self.i += 1
                elif c == '"':
                    return "".join(out)
                elif not (" " <= c <= "~"):
                    raise _SFError(self.i)
                out.append(c)
        if c == ":":
            m = self.match(_SF_BINARY)
            try:
                return base64.b64decode(m.group(1), validate=True)
            except ValueError:
                raise _SFError(self.i) from None
        if c == "?":
            m = self.match(re.compile(r"\?([01])"))
            return m.group(1) == "1"
        return _Token(self.match(_SF_TOKEN).group(0))

    def params(self) -> None:
        # Parameters on directives carry no meaning for caching: parse, drop.
        while self.peek() == ";":
            self.i += 1
            self.skip(" ")
            self.match(_SF_KEY)
            if self.peek() == "=":
                self.i += 1
                self.bare_item()

    def item_or_inner_list(self):
        if self.peek() == "(":
            self.i += 1
            items = []
            while True:
                self.skip(" ")
                if self.peek() == ")":
                    self.i += 1
                    self.params()
                    return tuple(items)
                items.append(self.bare_item())
                self.params()
                if self.peek() not in (" ", ")"):
                    raise _SFError(self.i)
        value = self.bare_item()
        self.params()
        return value

    def dictionary(self) -> dict:
        out: dict = {}
        self.skip(" ")
        while self.peek():
            key = self.match(_SF_KEY).group(0)
            if self.peek() == "=":
                self.i += 1
                out[key] = self.item_or_inner_list()
            else:
                self.params()
                out[key] = True
            self.skip(" \t")
            if not self.peek():
                return out
            if self.peek() != ",":
                raise _SFError(self.i)
            self.i += 1
            self.skip(" \t")
            if not self.peek():
                raise _SFError(self.i)
        return out


class _Token(str):
    """An RFC 8941 token (distinct from a string only for type checks)."""


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


# --------------------------------------------------------------------- dates

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_LONG_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_M = "|".join(_MONTHS)
_IMF = re.compile(r"(?:%s), (\d\d) (%s) (\d{4}) (\d\d):(\d\d):(\d\d) GMT" % ("|".join(_DAYS), _M), re.ASCII)
_RFC850 = re.compile(r"(?:%s), (\d\d)-(%s)-(\d\d) (\d\d):(\d\d):(\d\d) GMT" % ("|".join(_LONG_DAYS), _M), re.ASCII)
_ASCTIME = re.compile(r"(?:%s) (%s) ( \d|\d\d) (\d\d):(\d\d):(\d\d) (\d{4})" % ("|".join(_DAYS), _M), re.ASCII)


def parse_http_date(value: str, now: float | None = None) -> float | None:
    """Parse an HTTP-date (RFC 9110 5.6.7): IMF-fixdate, rfc850 or asctime.

    Case-sensitive, surrounding whitespace ignored; ``None`` when invalid
    (including impossible dates such as 31 Feb).  An rfc850 two-digit year
    more than 50 years after ``now`` is moved back a century; without
    ``now``, 70-99 mean 19xx and 00-69 mean 20xx.
    """
    value = value.strip(" \t")
    if _IMF.fullmatch(value):  # the usual form, and its value does not depend on now
        return _parse_imf(value)
    return _parse_date(value, now)


@lru_cache(maxsize=1024)
def _parse_imf(value: str) -> float | None:
    return _parse_date(value, None)


def _parse_date(value: str, now: float | None) -> float | None:
    if m := _IMF.fullmatch(value):
        day, mon, year, hh, mm, ss = m.groups()
        year = int(year)
    elif m := _RFC850.fullmatch(value):
        day, mon, yy, hh, mm, ss = m.groups()
        if now is None:
            year = int(yy) + (1900 if int(yy) >= 70 else 2000)
        else:
            this_year = datetime.datetime.fromtimestamp(now, datetime.timezone.utc).year
            year = this_year - this_year % 100 + int(yy)
            if year > this_year + 50:
                year -= 100
    elif m := _ASCTIME.fullmatch(value):
        mon, day, hh, mm, ss, year = m.groups()
        year = int(year)
    else:
        return None
    hh, mm, ss = int(hh), int(mm), int(ss)
    if hh > 23 or mm > 59 or ss > 60:
        return None
    try:
        datetime.date(year, _MONTHS.index(mon) + 1, int(day))
    except ValueError:
        return None
    return float(calendar.timegm((year, _MONTHS.index(mon) + 1, int(day), hh, mm, ss)))


def format_http_date(t: float) -> str:
    """IMF-fixdate for epoch seconds ``t``."""
    return formatdate(t, usegmt=True)


# ------------------------------------------------------------------- headers

def _all(headers, name: str) -> list[str]:
    return [v for n, v in headers if n == name]


def _first(headers, name: str) -> str | None:
    for n, v in headers:
        if n == name:
            return v
    return None


def _list_members(values) -> list[str]:
    return [m.strip() for v in values for m in v.split(",") if m.strip()]


def _hop_by_hop(headers) -> set[str]:
    names = set(HOP_BY_HOP)
    names.update(m.lower() for m in _list_members(_all(headers, "connection")))
    names.update(n for n, _ in headers if n.startswith("proxy-"))
    return names


_NO_DIRECTIVES = Directives()
_PRAGMA_NO_CACHE = Directives(no_cache=True)


_DIRECTIVE_FIELDS = frozenset({"cache-control", "pragma"})
_NAME = itemgetter(0)


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


# ---------------------------------------------------------------------- keys

_DEFAULT_PORTS = {"http": "80", "https": "443"}


def _norm_authority(scheme: str, host: str) -> str:
    host = host.lower()
    name, colon, port = host.rpartition(":")
    if colon and "]" not in port and port == _DEFAULT_PORTS.get(scheme):
        return name
    if colon and "]" not in port and port == "":
        return name
    return host


_ABSOLUTE = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://([^/?#]*)(.*)")


@lru_cache(maxsize=1024)
def primary_key(scheme: str, host: str, target: str) -> str:
    """Cache key of a URL: ``scheme://host[:port]/path?query``.

    Scheme and host are lower-cased and a default port dropped (RFC 9110
    4.2.3); the target is kept byte for byte, query string included.  An
    absolute-form target overrides ``host`` (RFC 9112 3.2.2).
    """
    scheme = scheme.lower()
    # An origin-form target (the usual one) cannot be absolute: no match to try.
    m = None if target[:1] == "/" else _ABSOLUTE.match(target)
    if m:
        scheme, host, target = m.group(1).lower(), m.group(2), m.group(3)
        target = target.split("#", 1)[0]
        if not target.startswith("/") and target != "*":
            target = "/" + target
    return "%s://%s%s" % (scheme, _norm_authority(scheme, host), target)


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


# ---------------------------------------------------------------- storability

# What a cached route does with a response that sets a cookie (its cache_set_cookie).
SET_COOKIE_MODES = ("no-store", "strip")


def not_storable_reason(method, status, req_headers, resp_headers, *,
                        cdn_header=DEFAULT_CDN_HEADER, shared=True,
                        set_cookie="no-store") -> str | None:
    """Why a response may not be stored (RFC 9111 3), or ``None`` if it may.

    ``set_cookie`` (a shared cache only): "no-store" refuses a response with
    a Set-Cookie, unless it says ``private="Set-Cookie"``; "strip" stores it
    (``make_entry`` leaves the cookie out either way).
    """
    if method != "GET":
        return "method"
    if status < 200 or status in (206, 304):
        return "status"
    req = _request_directives(req_headers)
    if req.no_store:
        return "request no-store"
    cc, targeted = response_directives(resp_headers, cdn_header)
    if cc.must_understand:
        if status not in UNDERSTOOD_STATUSES:
            return "must-understand"
    elif cc.no_store:
        return "no-store"
    if shared and cc.private:
        return "private"
    if shared and _first(req_headers, "authorization") is not None and not (
            cc.public or cc.s_maxage is not None or cc.must_revalidate):
        return "authorization"
    if shared and set_cookie != "strip" and "set-cookie" not in cc.private_fields \
            and _first(resp_headers, "set-cookie") is not None:
        return "set-cookie"
    if _vary_fields(_all(resp_headers, "vary")) is None:
        return "vary *"
    explicit = (cc.max_age is not None or (shared and cc.s_maxage is not None)
                or (not targeted and _first(resp_headers, "expires") is not None))
    validator = (_first(resp_headers, "etag") is not None
                 or _first(resp_headers, "last-modified") is not None)
    if explicit:
        return None
    if not validator:
        return "no freshness and no validator"
    if status not in HEURISTIC_STATUSES and not cc.public:
        return "status not heuristically cacheable"
    return None


def storable(method, status, req_headers, resp_headers, *,
             cdn_header=DEFAULT_CDN_HEADER, shared=True, set_cookie="no-store") -> bool:
    """May this response be stored by a (shared) cache?  RFC 9111 3."""
    return not_storable_reason(method, status, req_headers, resp_headers,
                               cdn_header=cdn_header, shared=shared,
                               set_cookie=set_cookie) is None


# --------------------------------------------------------------------- entry

@dataclass(frozen=True)
class Entry:
    """The head of a stored response, with what the age calculation needs.

    ``headers`` are as stored (hop-by-hop removed, Date added if missing,
    the received Age kept); ``vary_headers`` are the request values selected
    by the response's Vary, as ``(name, value | None)`` sorted by name.
    """
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    request_time: float
    response_time: float
    vary_headers: tuple[tuple[str, str | None], ...] = ()

    # What the entry says of itself is worked out once per Entry object (they
    # are immutable, and a hit on a key brings the same object back while the
    # stored bytes do not change: ``from_bytes``), not once per hit.

    @cached_property
    def vary_fields(self) -> list[str]:
        return _all(self.headers, "vary")

    @cached_property
    def secondary_key(self) -> str:
        return _secondary(self.vary_headers)

    @cached_property
    def initial_age(self) -> float:
        """The corrected initial age (RFC 9111 4.2.3): the age at ``response_time``."""
        apparent_age = max(0.0, self.response_time - _date_value(self))
        response_delay = self.response_time - self.request_time
        return max(apparent_age, _age_value(self.headers) + response_delay)

    @cached_property
    def validators(self) -> tuple[tuple[str, str], ...]:
        """``conditional_headers``, as a tuple."""
        return tuple(conditional_headers(self))

    @cached_property
    def served_headers(self) -> tuple[tuple[str, str], ...]:
        """The stored fields without Age (``serve_headers`` adds the current one)."""
        return tuple((n, v) for n, v in self.headers if n != "age")

    def policy(self, heuristic_max: float, cdn_header) -> tuple[Directives, float]:
        """(``response_directives``, ``freshness_lifetime``) under one cache's
        settings; remembered for the last settings asked (one cache asks)."""
        memo = self.__dict__.get("_policy")
        if memo is not None and memo[0] == heuristic_max and memo[1] == cdn_header:
            return memo[2]
        got = (response_directives(self.headers, cdn_header)[0],
               freshness_lifetime(self, heuristic_max=heuristic_max, cdn_header=cdn_header))
        self.__dict__["_policy"] = (heuristic_max, cdn_header, got)  # frozen: not via setattr
        return got

    def vary_matches(self, req_headers) -> bool:
        """Does the request select this variant (RFC 9111 4.1)?"""
        fields = self.vary_fields
        if not fields:
            return not self.vary_headers
        return vary_key(fields, req_headers) == self.secondary_key

    def to_bytes(self) -> bytes:
        return json.dumps({
            "v": 1, "status": self.status, "reason": self.reason,
            "headers": self.headers, "request_time": self.request_time,
            "response_time": self.response_time, "vary": self.vary_headers,
        }, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> "Entry":
        """Inverse of ``to_bytes``; ``ValueError`` on anything else (a miss).

        Every hit on a key brings the same bytes back until the entry is
        stored again: the decoded (immutable) entry is remembered by them.
        """
        return _decode_entry(bytes(data))


@lru_cache(maxsize=512)
def _decode_entry(data: bytes) -> Entry:
    try:
        d = json.loads(data.decode("utf-8"))
        if d["v"] != 1:
            raise ValueError("version")
        entry = Entry(
            status=int(d["status"]), reason=str(d["reason"]),
            headers=tuple((str(n), str(v)) for n, v in d["headers"]),
            request_time=float(d["request_time"]),
            response_time=float(d["response_time"]),
            vary_headers=tuple((str(n), None if v is None else str(v)) for n, v in d["vary"]),
        )
    except (KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        raise ValueError("not a cache entry: %r" % exc) from None
    return entry


def make_entry(status: int, reason: str, req_headers, resp_headers,
               request_time: float, response_time: float, *,
               cdn_header=DEFAULT_CDN_HEADER) -> Entry:
    """Build the entry to store for a response ``storable`` accepted.

    Hop-by-hop fields, Set-Cookie and the fields a qualified ``private``
    names (RFC 9111 5.2.2.7, under ``cdn_header`` as every other decision)
    are dropped, the rest kept as sent, Date added (never replaced) when
    missing (RFC 9110 6.6.1).
    """
    drop = _not_stored(resp_headers, cdn_header)
    headers = [(n, v) for n, v in resp_headers if n not in drop]
    if _first(headers, "date") is None:
        headers.append(("date", format_http_date(response_time)))
    fields = _vary_fields(_all(headers, "vary")) or ()
    return Entry(status, reason, tuple(headers), request_time, response_time,
                 _selected(fields, req_headers))


def _not_stored(resp_headers, cdn_header) -> set[str]:
    """Names of the fields of a response that a shared cache never stores."""
    drop = _hop_by_hop(resp_headers)
    drop.add("set-cookie")
    drop.update(response_directives(resp_headers, cdn_header)[0].private_fields)
    return drop


# ------------------------------------------------------------ freshness, age

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


# ------------------------------------------------------------------ decision

class Action(str, enum.Enum):
    FRESH = "FRESH"                      # serve the entry
    STALE_OK = "STALE_OK"                # serve it stale (maybe refresh in background)
    REVALIDATE = "REVALIDATE"            # forward with the conditional headers
    MISS = "MISS"                        # forward unchanged
    GATEWAY_TIMEOUT = "GATEWAY_TIMEOUT"  # only-if-cached and nothing usable: 504


class Decision(NamedTuple):
    # A tuple, not a frozen dataclass: one is made for every request of a
    # cached route, and a frozen dataclass sets each field through
    # object.__setattr__.
    action: Action
    conditional_headers: tuple[tuple[str, str], ...] = ()
    background_refresh: bool = False
    age: float = 0.0                     # current age of the entry, when there is one
    reason: str = ""                     # short, for logs and `forkproxyctl explain`


# Hot spots read these instead of Action.X and Decision(...): an Enum
# member read from its class costs a Python-level lookup in 3.11, and a
# NamedTuple's own constructor is a Python function.
_FRESH, _MISS, _GATEWAY_TIMEOUT = Action.FRESH, Action.MISS, Action.GATEWAY_TIMEOUT
_tuple_new = tuple.__new__


def _stale_forbidden(cc: Directives) -> bool:
    # RFC 9111 4.2.4; s-maxage implies proxy-revalidate (5.2.2.10).
    return cc.no_cache or cc.must_revalidate or cc.proxy_revalidate or cc.s_maxage is not None


def decide(entry: Entry | None, req_method: str, req_headers, now: float, *,
           heuristic_max: float, cdn_header=DEFAULT_CDN_HEADER) -> Decision:
    """What to do with a request given the candidate stored entry (or None).

    RFC 9111 4 (reuse), 4.2.4 (stale), 5.2.1 (request directives), RFC 5861
    (stale-while-revalidate).  Only GET and HEAD are answered from cache.
    """
    req = _request_directives(req_headers)
    give_up = _GATEWAY_TIMEOUT if req.only_if_cached else _MISS
    if req_method not in ("GET", "HEAD"):
        return Decision(_MISS, reason="method")
    if entry is None:
        return Decision(give_up, reason="no entry")
    if not entry.vary_matches(req_headers):
        return Decision(give_up, reason="vary mismatch")
    cc, lifetime = entry.policy(heuristic_max, cdn_header)
    age = entry.initial_age + (now - entry.response_time)  # current_age, inline: every hit
    if cc.no_cache:
        return _revalidate(req, entry, age, "response no-cache")
    if req is _NO_DIRECTIVES and lifetime > age:  # a plain request for a fresh entry
        return _tuple_new(Decision, (_FRESH, (), False, age, "fresh"))
    if req.no_cache:
        return _revalidate(req, entry, age, "request no-cache")
    fresh = lifetime > age
    age_ok = req.max_age is None or age <= req.max_age
    fresh_ok = req.min_fresh is None or lifetime - age >= req.min_fresh
    if fresh and age_ok and fresh_ok:
        return Decision(Action.FRESH, age=age, reason="fresh")
    if not fresh and not _stale_forbidden(cc):
        staleness = age - lifetime
        if req.max_stale is not None and staleness <= req.max_stale and age_ok:
            return Decision(Action.STALE_OK, age=age, reason="max-stale")
        swr = cc.stale_while_revalidate
        if (swr is not None and staleness <= swr and not req.only_if_cached
                and req.max_age is None and req.min_fresh is None):
            return Decision(Action.STALE_OK, entry.validators, background_refresh=True,
                            age=age, reason="stale-while-revalidate")
    return _revalidate(req, entry, age, "stale" if not fresh else "too old for request")


def _revalidate(req: Directives, entry: Entry, age: float, reason: str) -> Decision:
    """``decide``'s answer when ``entry`` may not be served as it is."""
    if req.only_if_cached:
        return Decision(Action.GATEWAY_TIMEOUT, age=age, reason=reason)
    if entry.validators:
        return Decision(Action.REVALIDATE, entry.validators, age=age, reason=reason)
    return Decision(Action.MISS, age=age, reason=reason + ", no validator")


def stale_if_error_ok(entry: Entry, now: float, req_headers, *, heuristic_max: float,
                      cdn_header=DEFAULT_CDN_HEADER) -> bool:
    """May ``entry`` be served because the origin failed (5xx in
    ``ERROR_STATUSES`` or no answer)?  RFC 5861 4, bounded by RFC 9111 4.2.4."""
    if not entry.vary_matches(req_headers):
        return False
    cc, lifetime = entry.policy(heuristic_max, cdn_header)
    if _stale_forbidden(cc):
        return False
    req = _request_directives(req_headers)
    window = req.stale_if_error if req.stale_if_error is not None else cc.stale_if_error
    if window is None:
        return False
    staleness = current_age(entry, now) - lifetime
    return staleness <= window


# -------------------------------------------------------------- revalidation

def conditional_headers(entry: Entry) -> list[tuple[str, str]]:
    """Validators to add when revalidating ``entry`` (RFC 9111 4.3.1)."""
    out = []
    etag = _first(entry.headers, "etag")
    if etag is not None:
        out.append(("if-none-match", etag))
    lm = _first(entry.headers, "last-modified")
    if lm is not None and parse_http_date(lm) is not None:
        out.append(("if-modified-since", lm))
    return out


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


# ------------------------------------------------------------------- serving

def serve_headers(entry: Entry, now: float) -> list[tuple[str, str]]:
    """Stored headers with Age set to the current age (RFC 9111 5.1); Date
    is left as stored."""
    out = list(entry.served_headers)
    out.append(("age", age_value(entry, now)))
    return out


def age_value(entry: Entry, now: float) -> str:
    """The Age field's value for ``entry`` served at ``now`` (RFC 9111 5.1)."""
    return str(min(max(0, int(current_age(entry, now))), DELTA_MAX))


def not_modified_headers(entry: Entry, now: float) -> list[tuple[str, str]]:
    """Headers of a 304 answered from ``entry`` (RFC 9110 15.4.5)."""
    return [(n, v) for n, v in serve_headers(entry, now) if n in NOT_MODIFIED_FIELDS]


# -------------------------------------------------------------- invalidation

def invalidations(method: str, status: int, req_scheme: str, req_host: str,
                  req_target: str, resp_headers) -> list[str]:
    """Primary keys an unsafe request invalidates (RFC 9111 4.4).

    Only for a method not known to be safe and a 2xx/3xx answer: the
    target URI, plus Location and Content-Location (resolved against it)
    when they share its origin.
    """
    if method in SAFE_METHODS or not 200 <= status < 400:
        return []
    own = primary_key(req_scheme, req_host, req_target)
    keys = [own]
    origin = _origin(own)
    for name in ("location", "content-location"):
        ref = _first(resp_headers, name)
        if not ref:
            continue
        url = urljoin(own, ref.strip())
        try:
            parts = urlsplit(url)
        except ValueError:
            continue
        if not parts.scheme or not parts.netloc:
            continue
        rest = url.split("#", 1)[0][len(parts.scheme) + 3 + len(parts.netloc):] or "/"
        key = primary_key(parts.scheme, parts.netloc, rest)
        if _origin(key) == origin and key not in keys:
            keys.append(key)
    return keys


def _origin(key: str) -> str:
    scheme, _, rest = key.partition("://")
    return scheme + "://" + re.split(r"[/?*]", rest, maxsplit=1)[0]
