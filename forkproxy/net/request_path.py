"""The request path's decisions that ``explain`` shares with the connection loop.

Canonical target (``canonical_request``), the target's forms
(``request_target``), the reasons of a 404 and a 503, the body limit and a
``redirect_https`` route's location: pure functions of the request and the
runtime, called by ``net.http_session`` and ``net.explain`` alike.
"""

from __future__ import annotations

from forkproxy.core import headers as hdr
from forkproxy.core import http1
from forkproxy.core.canon import PathRefused, canonical_path


def no_route_why(listener: str, host: str | None, path: str) -> str:
    """The 404's reason when no route matches (the error log, ``explain``)."""
    return f'no route for host "{host or ""}" path "{path}" on listener "{listener}"'


def no_server_why(pool: str) -> str:
    """The 503's reason when no server of ``pool`` is a candidate (the error log, ``explain``)."""
    return f'no server up in pool "{pool}"'


def canonical_request(req, merge_slashes: bool = True, encoded_slashes: str = "reject"):
    """``req`` with the path of its target canonical (``core.canon``), query as received.

    ``req`` itself when its path already is (the common case: no copy).
    Absolute-form targets keep their scheme and authority.  A path no rule
    can judge raises ``ProtocolError(400)`` with canon's reason.  The
    request path and ``forkproxyctl explain`` both call it, first thing.
    """
    target = req.target
    if "%" not in target and "/." not in target and "//" not in target and "\\" not in target:
        return req  # the hot path: nothing canon could change, in the path or the query
    if target[0] == "/":
        start = 0
    elif target[:7].lower() == "http://" or target[:8].lower() == "https://":
        i = target.index("://") + 3
        start, q = target.find("/", i), target.find("?", i)
        if start < 0 or 0 <= q < start:  # no path: request_target sends "/"
            return req
    else:  # asterisk-form, authority-form
        return req
    q = target.find("?", start)
    path = target[start:] if q < 0 else target[start:q]
    try:
        canon = canonical_path(path, merge_slashes, encoded_slashes)
    except PathRefused as exc:
        raise http1.ProtocolError(exc.status, exc.reason) from None
    if canon is path:
        return req
    return req._replace(target=target[:start] + canon + ("" if q < 0 else target[q:]))


def request_target(req) -> tuple[str | None, str | None, str, str]:
    """(Host value, host, path, target to send upstream) of a request, by its target's form.

    origin-form as it is; absolute-form gives its authority as the host
    (RFC 9112 3.2.2) and its path; ``OPTIONS *`` passes.  Raises
    ``ProtocolError``: 501 for CONNECT, 400 for any other target.  The
    request path and ``forkproxyctl explain`` both call it.
    """
    target = req.target
    if target.startswith("/"):
        return req.host_value, req.host, target.partition("?")[0], target
    if target[:7].lower() == "http://" or target[:8].lower() == "https://":
        rest = target.split("://", 1)[1]
        # The authority ends at the first "/" or "?" (RFC 3986 3.2): in
        # "http://h?a=/b" the query holds the slash, the path is empty ("/").
        end = len(rest)
        for c in "/?":
            i = rest.find(c)
            if 0 <= i < end:
                end = i
        authority, upstream_target = rest[:end], rest[end:]
        if not upstream_target.startswith("/"):
            upstream_target = "/" + upstream_target
        return (authority, hdr.split_host(authority)[0], upstream_target.partition("?")[0],
                upstream_target)
    if target == "*" and req.method == "OPTIONS":
        return req.host_value, req.host, "*", "*"
    if req.method == "CONNECT":
        raise http1.ProtocolError(501, "CONNECT is not supported by a reverse proxy")
    raise http1.ProtocolError(400, "invalid request target")


def body_limit(rt, rc, framing) -> int:
    """The route's max_body_size (else the server's; 0: none); raises a 413
    ``ProtocolError`` when a declared Content-Length is over it."""
    max_body = rc.max_body_size if rc.max_body_size is not None else rt.cfg.server.max_body_size
    if framing.kind == "length" and max_body and framing.length > max_body:
        raise http1.ProtocolError(413, f"body of {framing.length} bytes over the limit {max_body}")
    return max_body


def https_location(rt, route: int, host: str, target: str) -> str:
    """Where a ``redirect_https`` route sends a request for ``host`` + ``target``."""
    port = rt.https_port.get(route, 443)
    if ":" in host:  # an IPv6 literal
        host = f"[{host.strip('[]')}]"
    return f"https://{host}{'' if port == 443 else f':{port}'}{target if target != '*' else '/'}"
