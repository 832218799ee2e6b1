"""Response compression decisions, sans-IO (a route's ``compress = { ... }``).

Pure functions over header lists (lower-case names, as ``core.http1`` makes
them); the encoders themselves live in ``net.compress``.

- ``parse_accept_encoding(values)``: RFC 9110 12.5.3, q-values included.
- ``choose(values, available)``: the coding to send, or None for identity.
  The highest q wins; on a tie the order of ``available`` decides (the
  server's preference: brotli before gzip).  ``*`` covers codings the client
  did not name; ``q=0`` refuses a coding; ``x-gzip`` is ``gzip``.  With no
  Accept-Encoding at all the answer is identity (RFC 9110 allows any coding
  then, but clients that send none rarely decode one).
- ``eligible(...)``: whether a response may be compressed at all, whatever
  the client accepts.  Such a response gets ``Vary: Accept-Encoding``
  (``add_vary``) even when it goes out uncompressed, so that a cache further
  down never hands a compressed copy to a client that cannot decode it.
- ``weaken_etag(value)``: a compressed body is a different representation
  whose bytes depend on the encoder: its ETag can only be a weak one.
"""

from __future__ import annotations

__all__ = ["parse_accept_encoding", "choose", "eligible", "weaken_etag", "add_vary",
           "media_type"]

_ALIASES = {"x-gzip": "gzip"}
# Statuses without a whole representation to compress: no content (204,
# 205, 304), or a part of one (206: compressing it would break the client's
# byte ranges).
_NOT_COMPRESSIBLE = frozenset({204, 205, 206, 304})


def parse_accept_encoding(values) -> dict[str, float]:
    """{coding: q} from Accept-Encoding field values (lower-cased codings).

    A malformed q counts as 0 (a client that cannot write a q-value gets
    identity rather than a guess); the first mention of a coding wins.
    """
    out: dict[str, float] = {}
    for value in values:
        for item in value.split(","):
            coding, _, params = item.partition(";")
            coding = coding.strip(" \t").lower()
            if not coding:
                continue
            q = 1.0
            for param in params.split(";"):
                name, eq, v = param.partition("=")
                if eq and name.strip(" \t").lower() == "q":
                    q = _qvalue(v.strip(" \t"))
            coding = _ALIASES.get(coding, coding)
            out.setdefault(coding, q)
    return out


def _qvalue(text: str) -> float:
    """RFC 9110 12.4.2: "0" to "1" with at most three decimals; else 0."""
    if not text or len(text) > 5 or text[0] not in "01" or (len(text) > 1 and text[1] != "."):
        return 0.0
    try:
        q = float(text)
    except ValueError:
        return 0.0
    return q if 0.0 <= q <= 1.0 else 0.0


def choose(values, available: tuple[str, ...]) -> str | None:
    """The coding of ``available`` to use for a client sending ``values``; None: identity."""
    if not values:
        return None
    accepted = parse_accept_encoding(values)
    star = accepted.get("*")
    best, best_q = None, 0.0
    for coding in available:
        q = accepted.get(coding, star if star is not None else 0.0)
        if q > best_q:
            best, best_q = coding, q
    return best


def media_type(content_type: str | None) -> str:
    """``text/html; charset=utf-8`` -> ``text/html`` (lower case); "" when absent."""
    if not content_type:
        return ""
    return content_type.partition(";")[0].strip(" \t").lower()


def _type_listed(mtype: str, types) -> bool:
    """Whether ``mtype`` is in ``types``: exact names, ``text/*``, or ``*`` for all."""
    if not mtype:
        return False
    major = mtype.partition("/")[0] + "/*"
    return any(t == mtype or t == major or t == "*" for t in types)


def eligible(method: str, status: int, headers, *, types, min_size: int,
             length: int | None, transfer_codings=()) -> bool:
    """True when this response may be compressed, before asking the client.

    Not eligible: a HEAD, a status without a full representation (1xx, 204,
    206, 304, ...), a body already content-coded (never compressed twice) or
    transfer-coded, a type not in ``types``, a known ``length`` of 0 or below
    ``min_size`` (an unknown one, chunked or close-delimited, is compressed),
    and ``Cache-Control: no-transform`` (RFC 9110 7.7).
    """
    if method == "HEAD" or status < 200 or status in _NOT_COMPRESSIBLE or transfer_codings:
        return False
    if length is not None and (length < min_size or not length):
        return False
    ctype = None
    for n, v in headers:
        if n == "content-encoding":
            if v.strip(" \t").lower() not in ("", "identity"):
                return False
        elif n == "content-type":
            ctype = v
        elif n == "cache-control" and "no-transform" in v.lower():
            return False
    return _type_listed(media_type(ctype), types)


def weaken_etag(value: str) -> str:
    """``"abc"`` -> ``W/"abc"``; a weak one stays as it is."""
    value = value.strip(" \t")
    if value.startswith("W/") or not value:
        return value
    return "W/" + value


def add_vary(headers, name: str = "Accept-Encoding") -> list[tuple[str, str]]:
    """``headers`` with ``name`` in its Vary (appended to an existing one; ``*`` kept).

    Returns a new list; names stay as given (a Vary field keeps its place).
    """
    out = []
    done = False
    low = name.lower()
    for n, v in headers:
        if n.lower() == "vary" and not done:
            tokens = [t.strip(" \t").lower() for t in v.split(",")]
            if low not in tokens and "*" not in tokens:
                v = f"{v}, {name}" if v.strip(" \t") else name
            done = True
        out.append((n, v))
    if not done:
        out.append(("Vary", name))
    return out
