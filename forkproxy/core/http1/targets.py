"""Where a request is addressed: its target's form, its Host, an operator's URL.

``split_host(value) -> (host, port | None)`` validates a Host value (RFC 9110
7.2); ``split_url(url)`` reads an absolute http(s) URL as an operator types
it.  ``_check_target`` and ``_validate_host`` serve ``heads``: they raise
``ProtocolError`` with the status they are given.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from .grammar import _HOST_RE, _SCHEME_RE
from .messages import ProtocolError


def _check_target(method: str, target: str) -> None:
    c = target[0]
    if c == "/":
        if method == "CONNECT":
            raise ProtocolError(400, "CONNECT needs authority-form")
        return
    if target == "*":
        if method != "OPTIONS":
            raise ProtocolError(400, "asterisk-form only for OPTIONS")
        return
    if method == "CONNECT":
        host = target.rpartition(":")
        if not host[1] or not host[2].isdigit() or not host[2].isascii():
            raise ProtocolError(400, "CONNECT target must be host:port")
        h, port = _validate_host(target, 400)
        if not h or port is None:
            raise ProtocolError(400, "CONNECT target must be host:port")
        return
    if _SCHEME_RE.match(target):
        return
    raise ProtocolError(400, "invalid request target form")


_VALID_HOSTS: dict[str, tuple[str, int | None]] = {}  # value -> result, for values seen valid


def _validate_host(value: str, status: int) -> tuple[str, int | None]:
    known = _VALID_HOSTS.get(value)
    if known is not None:
        return known
    result = _check_host(value, status)
    if len(_VALID_HOSTS) >= 4096:  # a bound, not an LRU: the common hosts come back at once
        _VALID_HOSTS.clear()
    _VALID_HOSTS[value] = result
    return result


def _check_host(value: str, status: int) -> tuple[str, int | None]:
    m = _HOST_RE.fullmatch(value)
    if m is None:
        raise ProtocolError(status, "invalid Host")
    host, port = m.groups()
    if port:
        p = int(port)
        if p > 65535:
            raise ProtocolError(status, "invalid port in Host")
        return host.lower(), p
    return host.lower(), None


def split_host(value: str) -> tuple[str, int | None]:
    """Validate a Host value; return (lower-cased host, port or None).

    IPv6 literals keep their brackets (``"[::1]"``).  An empty value gives
    ``("", None)`` (RFC 9112 3.2).  Invalid: ``ProtocolError(400)``.
    """
    return _validate_host(value, 400)


def split_url(url: str) -> tuple[str, str, str, int]:
    """(scheme, authority, origin-form target, port) of an absolute http(s) URL,
    as an operator types it (``forkproxyctl purge`` and ``explain``); the port
    defaults to the scheme's.  ``ValueError`` saying why when it is not one."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"expected a URL such as http://example.com/path, got {url!r}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ValueError(f"invalid port in {url!r}") from None
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, parts.netloc, target, port
