"""The primary cache key: the URL a response is stored under (RFC 9111 2)."""

import re
from functools import lru_cache


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
