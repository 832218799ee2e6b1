"""May a response be stored (RFC 9111 3)?"""

from __future__ import annotations

from .directives import DEFAULT_CDN_HEADER, _request_directives, response_directives
from .fields import _all, _first
from .freshness import HEURISTIC_STATUSES
from .vary import _vary_fields


# Statuses whose caching rules we implement, for must-understand (RFC 9111 5.2.2.3).
UNDERSTOOD_STATUSES = HEURISTIC_STATUSES - {206} | {302, 303, 307}

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
