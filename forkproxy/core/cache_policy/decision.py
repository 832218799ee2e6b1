"""Reuse (RFC 9111 4, RFC 5861): what a request does with the stored entry
it may be answered from, and the headers that entry is served with."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, NamedTuple

from .directives import DEFAULT_CDN_HEADER, _NO_DIRECTIVES, Directives, _request_directives
from .freshness import age_value, current_age

if TYPE_CHECKING:
    from .entry import Entry


# Upstream results for which stale-if-error may serve the stored entry (RFC 5861 4).
ERROR_STATUSES = frozenset({500, 502, 503, 504})

# RFC 9110 15.4.5: what a 304 repeats from the 200 it stands for (+ Age, RFC 9111 5.1).
NOT_MODIFIED_FIELDS = frozenset({"cache-control", "content-location", "date", "etag",
                                 "expires", "vary", "age"})


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


def plain_lifetime(entry: Entry, req_headers, *, heuristic_max: float,
                   cdn_header=DEFAULT_CDN_HEADER) -> float | None:
    """The lifetime that alone decides whether ``entry`` is FRESH for GET or
    HEAD requests with ``req_headers``: for every ``now``, ``decide`` answers
    FRESH exactly when ``lifetime > entry.initial_age + (now -
    entry.response_time)`` (``decide``'s own expression).  None when more
    than the time decides: the request carries cache directives, the
    entry's Vary does not select it, or the response says no-cache.

    A cache that answers the same request again and again (a hot URL) keeps
    the lifetime and skips ``decide`` while the entry stays the same."""
    if _request_directives(req_headers) is not _NO_DIRECTIVES or not entry.vary_matches(req_headers):
        return None
    cc, lifetime = entry.policy(heuristic_max, cdn_header)
    return None if cc.no_cache else lifetime


def _revalidate(req: Directives, entry: Entry, age: float, reason: str) -> Decision:
    """``decide``'s answer when ``entry`` may not be served as it is."""
    if req.only_if_cached:
        return Decision(Action.GATEWAY_TIMEOUT, age=age, reason=reason)
    if entry.validators:
        return Decision(Action.REVALIDATE, entry.validators, age=age, reason=reason)
    return Decision(Action.MISS, age=age, reason=reason + ", no validator")


def stale_if_error_ok(entry: Entry, now: float, req_headers, *, heuristic_max: float,
                      cdn_header=DEFAULT_CDN_HEADER, default: float | None = None) -> bool:
    """May ``entry`` be served because the origin failed (5xx in
    ``ERROR_STATUSES`` or no answer)?  RFC 5861 4, bounded by RFC 9111 4.2.4.
    ``default``: the window (seconds) when neither the request nor the
    response names one (the cache's own, e.g. nginx's proxy_cache_use_stale)."""
    if not entry.vary_matches(req_headers):
        return False
    cc, lifetime = entry.policy(heuristic_max, cdn_header)
    if _stale_forbidden(cc):
        return False
    req = _request_directives(req_headers)
    window = req.stale_if_error if req.stale_if_error is not None else cc.stale_if_error
    if window is None:
        window = default
    if window is None:
        return False
    staleness = current_age(entry, now) - lifetime
    return staleness <= window


def serve_headers(entry: Entry, now: float) -> list[tuple[str, str]]:
    """Stored headers with Age set to the current age (RFC 9111 5.1); Date
    is left as stored."""
    out = list(entry.served_headers)
    out.append(("age", age_value(entry, now)))
    return out


def not_modified_headers(entry: Entry, now: float) -> list[tuple[str, str]]:
    """Headers of a 304 answered from ``entry`` (RFC 9110 15.4.5)."""
    return [(n, v) for n, v in serve_headers(entry, now) if n in NOT_MODIFIED_FIELDS]
