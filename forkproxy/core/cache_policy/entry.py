"""The stored entry: what a shared cache keeps of a response, its byte
format, and the facts it offers about itself (validators, age, variant)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property, lru_cache

from .dates import format_http_date, parse_http_date
from .directives import DEFAULT_CDN_HEADER, Directives, response_directives
from .fields import _all, _first, _list_members
from .freshness import _age_value, _date_value, freshness_lifetime
from .vary import _secondary, _selected, _vary_fields, vary_key


# RFC 9111 3.1 / DESIGN section 4: never stored, never forwarded.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade"})


def _hop_by_hop(headers) -> set[str]:
    names = set(HOP_BY_HOP)
    names.update(m.lower() for m in _list_members(_all(headers, "connection")))
    names.update(n for n, _ in headers if n.startswith("proxy-"))
    return names


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
