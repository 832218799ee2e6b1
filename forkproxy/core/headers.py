"""Hop-by-hop stripping and forwarding headers, sans-IO.

Headers are lists of ``(name, value)`` pairs with lower-case ``str`` names
(as produced by ``forkproxy.core.http1.heads``); every function returns a new
list and keeps the order of the fields it does not touch.

Trust model: a client's own ``X-Forwarded-*`` / ``Forwarded`` / ``X-Real-IP``
values are believed only when the peer is one of ``server.trusted_proxies``
(``trusted=True``); from anyone else they are dropped and rewritten, so a
backend can rely on them.  ``Via`` is end-to-end and always kept, with our
own entry appended.
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from typing import Iterable

from .http1.connection import connection_tokens
from .http1.messages import ProtocolError
from .http1.targets import split_host

__all__ = [
    "HOP_BY_HOP", "FORWARDING", "connection_tokens", "hop_by_hop", "strip_hop_by_hop",
    "forwarded_for_request", "forwarded_node", "real_client_addr",
    "parse_networks", "response_headers_for_client", "split_host", "ProtocolError",
    "allowed_upgrade", "in_networks", "passed_trailers",
]

HOP_BY_HOP: frozenset[str] = frozenset({
    "connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade",
    "proxy-connection", "proxy-authenticate", "proxy-authorization",
})

# What an untrusted client may not assert about itself.
FORWARDING: frozenset[str] = frozenset({
    "forwarded", "x-real-ip", "x-forwarded-for", "x-forwarded-proto",
    "x-forwarded-host", "x-forwarded-port", "x-forwarded-server", "x-forwarded-prefix",
})

_Headers = list[tuple[str, str]]

# Fields a trailer section never carries on to the client (RFC 9110 6.5.1:
# framing, routing, hop-by-hop): a server's trailer of these is dropped.
NOT_TRAILERS: frozenset[str] = HOP_BY_HOP | frozenset({
    "content-length", "host", "content-encoding", "content-type", "content-range",
    "set-cookie", "cache-control", "expires", "location", "www-authenticate"})


def passed_trailers(fields) -> _Headers:
    """The trailer fields (lower-case names) of a server's body that go on to the client."""
    return [(n, v) for n, v in fields if n not in NOT_TRAILERS]


def hop_by_hop(headers, also: frozenset[str] = frozenset(),
               tokens: frozenset[str] | None = None) -> frozenset[str]:
    """The names ``strip_hop_by_hop`` removes: HOP_BY_HOP, those listed in
    Connection (``tokens``, when the caller has them), and ``also``."""
    names = connection_tokens(headers) if tokens is None else tokens
    return _drop_set(names, also) if (names or also) else HOP_BY_HOP


@lru_cache(maxsize=256)
def _drop_set(names: frozenset[str], also: frozenset[str]) -> frozenset[str]:
    # Every request asks with the same few sets (mostly no Connection tokens).
    return HOP_BY_HOP | names | also


def strip_hop_by_hop(headers, also: frozenset[str] = frozenset()) -> _Headers:
    """Remove HOP_BY_HOP, every field named in Connection and the names in ``also``; keep order.

    ``also`` lets a caller drop fields it rewrites itself (Host,
    Content-Length) in the same pass: this runs on every request.
    """
    drop = hop_by_hop(headers, also)
    return [(n, v) for n, v in headers if n not in drop]


def forwarded_node(addr: str) -> str:
    """RFC 7239 node for ``addr``: IPv4 as a token, IPv6 quoted in brackets."""
    if not addr:
        return "unknown"
    if ":" in addr:
        return f'"[{addr.strip("[]")}]"'
    return addr


_TOKEN = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+")


def _forwarded_value(value: str) -> str:
    # token when possible, quoted-string otherwise (RFC 7239 4)
    if _TOKEN.fullmatch(value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _join(values: list[str], extra: str) -> str:
    if not values:
        return extra
    values = [v for v in values if v]
    values.append(extra)
    return ", ".join(values)


@lru_cache(maxsize=1024)
def _forwarded_element(client_addr: str, proto: str, host: str | None) -> str:
    # The same few (peer, scheme, host) come again and again: made once each.
    element = f"for={forwarded_node(client_addr)};proto={_forwarded_value(proto)}"
    if host is not None:
        element += f";host={_forwarded_value(host)}"
    return element


def forwarded_for_request(
    headers,
    *,
    client_addr: str,
    proto: str,
    host: str | None,
    trusted: bool,
    via: str = "1.1 forkproxy",
    drop: frozenset[str] = frozenset(),
    underscores: bool = False,
) -> _Headers:
    """Return ``headers`` with X-Forwarded-For/-Proto/-Host, Forwarded and Via set.

    ``headers`` are already hop-by-hop stripped by the caller, or the
    caller passes what to strip as ``drop`` (``hop_by_hop(headers, ...)``):
    one pass instead of two, on every request.
    ``trusted=True``: ``client_addr`` is appended to the existing
    X-Forwarded-For and Forwarded chains (several fields are merged into one)
    and the client's X-Forwarded-Proto/-Host/X-Real-IP are kept (ours are
    added only when absent).  ``trusted=False``: every incoming X-Forwarded-*,
    Forwarded and X-Real-IP is dropped and fresh ones are written (X-Real-IP
    is not written).  Via: existing values are kept and ``via`` is appended,
    in one field at the end.  ``host`` None means no X-Forwarded-Host and no
    ``host=`` pair in Forwarded.  ``underscores=False`` (nginx's
    ``underscores_in_headers off``) drops every field whose name contains
    ``_``: CGI and WSGI map ``-`` and ``_`` alike to ``HTTP_X_FORWARDED_FOR``,
    so ``X_Forwarded_For`` would otherwise get past the stripping above.
    """
    xff: list[str] = []
    fwd: list[str] = []
    vias: list[str] = []
    xfp = xfh = None
    out: _Headers = []
    for n, v in headers:
        if n in drop or (not underscores and "_" in n):
            continue
        if n == "via":
            vias.append(v)
        elif n in FORWARDING or n.startswith("x-forwarded-"):
            if not trusted:
                continue
            if n == "x-forwarded-for":
                xff.append(v)
            elif n == "forwarded":
                fwd.append(v)
            else:
                if n == "x-forwarded-proto" and xfp is None:
                    xfp = v
                elif n == "x-forwarded-host" and xfh is None:
                    xfh = v
                out.append((n, v))
        else:
            out.append((n, v))
    out.append(("x-forwarded-for", _join(xff, client_addr or "unknown")))
    if xfp is None:
        out.append(("x-forwarded-proto", proto))
    if xfh is None and host is not None:
        out.append(("x-forwarded-host", host))
    out.append(("forwarded", _join(fwd, _forwarded_element(client_addr, proto, host))))
    out.append(("via", _join(vias, via)))
    return out


def is_grpc(req) -> bool:
    """A gRPC call (Content-Type application/grpc, +proto...): its body is a stream of
    messages, never read whole first (route request_buffering does not apply)."""
    value = req.get("content-type")
    return value is not None and value[:16].lower() == "application/grpc"


def allowed_upgrade(value: str, allowed: frozenset[str]) -> str | None:
    """The protocols of an Upgrade field ``value`` whose names are in ``allowed``.

    ``allowed`` holds lower-case protocol names (a route's ``upgrade``);
    a protocol ``name/version`` is compared by its name, without case. The
    kept items are returned as written, in order, joined by ", "; None when
    none is kept: the request then goes on as a plain one, its Upgrade
    dropped with the other hop-by-hop fields (nginx passes no Upgrade unless
    told to), so ``h2c`` or an unknown protocol never gets a tunnel.
    """
    kept = [item for item in (i.strip(" \t") for i in value.split(","))
            if item and item.partition("/")[0].lower() in allowed]
    return ", ".join(kept) if kept else None


def parse_networks(networks: Iterable) -> tuple:
    """``ip_network`` objects from strings ("10.0.0.0/8", "::1") or networks."""
    return tuple(
        n if isinstance(n, (ipaddress.IPv4Network, ipaddress.IPv6Network))
        else ipaddress.ip_network(n, strict=False)
        for n in networks
    )


def _parse_ip(value: str):
    value = value.strip(" \t")
    if value.startswith("["):  # "[v6]" or "[v6]:port"
        value = value[1:value.find("]")] if "]" in value else value
    elif value.count(":") == 1:  # "v4:port"
        value = value.partition(":")[0]
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def in_networks(addr: str, networks) -> bool:
    """True when the address ``addr`` is in one of ``networks`` (``ip_network``
    objects); an IPv4-mapped IPv6 address is matched as IPv4, and a string
    that is not an address matches none."""
    return _trusted(_parse_ip(addr), networks)


def _trusted(ip, networks) -> bool:
    if ip is None:
        return False
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for net in networks:
        if ip.version == net.version and ip in net:
            return True
    return False


def real_client_addr(headers, peer: str, trusted_networks) -> str:
    """The client's address, nginx ``real_ip_recursive on`` semantics.

    When ``peer`` is not in ``trusted_networks`` it is the answer.  Otherwise
    X-Forwarded-For is walked from the right, skipping trusted addresses;
    the first untrusted one is the client.  If every entry is trusted the
    left-most wins; an entry that is not an IP address stops the walk and
    the last address that was vouched for is returned.
    """
    networks = parse_networks(trusted_networks)
    if not _trusted(_parse_ip(peer), networks):
        return peer
    chain: list[str] = []
    for n, v in headers:
        if n == "x-forwarded-for":
            chain.extend(item.strip(" \t") for item in v.split(","))
    result = peer
    for item in reversed(chain):
        if not item:
            continue
        ip = _parse_ip(item)
        if ip is None:
            return result
        result = str(ip)
        if not _trusted(ip, networks):
            return result
    return result


def response_headers_for_client(headers, *, via: str = "1.1 forkproxy",
                                also: frozenset[str] = frozenset(),
                                tokens: frozenset[str] | None = None) -> _Headers:
    """Upstream response fields for the client: hop-by-hop and ``also`` stripped, Via appended.

    ``tokens``: the response's ``connection_tokens``, when the caller has them.
    """
    drop = hop_by_hop(headers, also, tokens)
    vias = []
    out = []
    for n, v in headers:
        if n == "via":
            vias.append(v)
        elif n not in drop:
            out.append((n, v))
    out.append(("via", _join(vias, via)))
    return out
