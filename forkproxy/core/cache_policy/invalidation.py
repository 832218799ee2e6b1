"""Invalidation (RFC 9111 4.4): the keys an unsafe request makes stale."""

from __future__ import annotations

import re
from urllib.parse import urljoin, urlsplit

from .fields import _first
from .keys import primary_key


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


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
