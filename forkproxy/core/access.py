"""Access control, sans-IO: address ACLs, method lists, deny rules.

CONTRACT (compiled once at config load; the config layer turns ``ValueError``
into a ``ConfigError`` with the key path, so ``forkproxy -t`` reports it):

    ``compile_acl(entries) -> Acl``
        ``entries`` is an ordered sequence of ``("allow" | "deny", cidr)``;
        ``cidr`` is an IPv4 or IPv6 network (``10.0.0.0/8``, ``2001:db8::/32``),
        a bare address (a /32 or /128), or ``"all"``. Host bits set
        (``10.0.0.1/8``) are an error: it is almost always a typo.
    ``Acl.permits(ip) -> bool``
        nginx semantics: the rules are tried in order and the FIRST match
        decides; when none matches, the address is PERMITTED. An allow-list
        therefore ends with ``("deny", "all")``, exactly as in nginx
        (``allow 10.0.0.0/8; deny all;``). ``ip`` is the real client address
        (after ``trusted_proxies``); an IPv4-mapped IPv6 address
        (``::ffff:10.1.2.3``) is matched as the IPv4 address, and rules written
        as IPv4-mapped networks are turned into IPv4 ones. A string that is not
        an IP address (a Unix socket peer, "") matches only ``all``.
    ``Methods(names)``, ``Methods.check(method) -> str | None``
        ``None`` when the method is allowed, otherwise the value of the
        ``Allow`` header for the 405. Methods are case-sensitive (RFC 9110
        9.1): the configured names are upper-cased, the request's is not.
        As nginx ``limit_except``, allowing GET allows HEAD.
    ``DenyRule(...)`` and ``first_denial(rules, method, path, query, headers)``
        a rule's conditions (path prefix, path regex, query regex, header
        present, header value regex, methods) must ALL hold; the first rule
        in order that holds gives its ``status`` (403 by default). ``None``
        means no rule denies.

Headers are ``(lower-case name, value)`` pairs as produced by
``forkproxy.core.http1``; ``path`` is the path without the query and
``query`` the part after ``?`` ("" when absent): the path canonical
(``core.canon``), the query as received.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from .patterns import compile_pattern

__all__ = [
    "Acl", "compile_acl", "Methods", "DenyRule", "first_denial",
]

# -- address ACLs ---------------------------------------------------------------

_MAPPED = ipaddress.ip_network("::ffff:0:0/96")


def _network(cidr: str):
    text = cidr.strip()
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as e:
        raise ValueError(f"{cidr!r}: not an address or CIDR network ({e})") from None
    if net.version == 6 and net.prefixlen >= 96 and net.subnet_of(_MAPPED):
        net = ipaddress.ip_network((net.network_address.ipv4_mapped, net.prefixlen - 96))
    return net


class Acl:
    """An ordered allow/deny list; see the module docstring for the semantics."""

    __slots__ = ("_v4", "_v6", "_first_all", "_allow", "entries")

    def __init__(self, entries: Sequence[tuple[str, str]]):
        self.entries = tuple(entries)
        # Per family, (network int, mask int, entry index) in file order;
        # "all" appears in both. _first_all is the first "all" rule, the one
        # that decides for peers that are not IP addresses.
        self._v4: list[tuple[int, int, int]] = []
        self._v6: list[tuple[int, int, int]] = []
        self._first_all: int | None = None
        self._allow: list[bool] = []
        for i, (action, cidr) in enumerate(self.entries):
            if action not in ("allow", "deny"):
                raise ValueError(f"{action!r}: expected \"allow\" or \"deny\"")
            self._allow.append(action == "allow")
            if cidr.strip().lower() == "all":
                self._v4.append((0, 0, i))
                self._v6.append((0, 0, i))
                if self._first_all is None:
                    self._first_all = i
                continue
            net = _network(cidr)
            dest = self._v4 if net.version == 4 else self._v6
            dest.append((int(net.network_address), int(net.netmask), i))

    def deciding(self, ip: str) -> int | None:
        """The index in ``entries`` of the first rule that matches ``ip``; None when none does."""
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return self._first_all
        if addr.version == 6 and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        n = int(addr)
        for net, mask, i in (self._v4 if addr.version == 4 else self._v6):
            if n & mask == net:
                return i
        return None

    def permits(self, ip: str) -> bool:
        """True when the first matching rule allows ``ip``, or none matches."""
        i = self.deciding(ip)
        return i is None or self._allow[i]

    def __repr__(self) -> str:
        return f"Acl({list(self.entries)!r})"


def compile_acl(entries: Iterable[tuple[str, str]]) -> Acl:
    """Compile ordered ``("allow"|"deny", cidr)`` entries; ``ValueError`` on a bad one."""
    return Acl(list(entries))


# -- methods --------------------------------------------------------------------

_TOKEN = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+")


class Methods:
    """The methods a route accepts; ``check`` gives the 405's ``Allow`` value."""

    __slots__ = ("allowed", "allow_header")

    def __init__(self, names: Iterable[str]):
        allowed: list[str] = []
        for name in names:
            if not _TOKEN.fullmatch(name):
                raise ValueError(f"{name!r}: not an HTTP method name")
            up = name.upper()
            if up not in allowed:
                allowed.append(up)
        if not allowed:
            raise ValueError("an empty method list would refuse every request")
        if "GET" in allowed and "HEAD" not in allowed:
            allowed.insert(allowed.index("GET") + 1, "HEAD")
        self.allowed = frozenset(allowed)
        self.allow_header = ", ".join(allowed)

    def check(self, method: str) -> str | None:
        """None when ``method`` is allowed; else the ``Allow`` header value."""
        return None if method in self.allowed else self.allow_header


# -- deny rules -----------------------------------------------------------------


@dataclass(frozen=True)
class DenyRule:
    """One deny rule; every condition given must hold. Compiled on construction.

    ``path``          prefix of the path (plain ``startswith``, as ``location``)
    ``path_regex``    searched in the path (RE2, see ``forkproxy.core.patterns``)
    ``query_regex``   searched in the query ("" when there is none)
    ``header``        a field name: the rule needs the field present...
    ``header_regex``  ...and, when given, one of its values to match (search)
    ``methods``       the request method is one of these (case-sensitive)
    ``status``        the answer, 400..599; 403 by default

    Raises ``ValueError`` for a rule without conditions, a regex RE2 refuses
    (see ``compile_pattern``), ``header_regex`` without ``header``, or a
    status out of range.
    """

    path: str | None = None
    path_regex: str | None = None
    query_regex: str | None = None
    header: str | None = None
    header_regex: str | None = None
    methods: frozenset[str] = frozenset()
    status: int = 403
    _checks: tuple = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self):
        if not 400 <= self.status <= 599:
            raise ValueError(f"status {self.status}: a deny rule answers 400..599")
        if self.header_regex is not None and self.header is None:
            raise ValueError("header_regex needs header")
        if self.header is not None and not _TOKEN.fullmatch(self.header):
            raise ValueError(f"{self.header!r}: not a header field name")
        checks: list = []
        if self.methods:
            ms = frozenset(self.methods)
            checks.append(lambda m, p, q, h: m in ms)
        if self.path is not None:
            prefix = self.path
            checks.append(lambda m, p, q, h: p.startswith(prefix))
        if self.path_regex is not None:
            search = compile_pattern(self.path_regex).search
            checks.append(lambda m, p, q, h: search(p) is not None)
        if self.query_regex is not None:
            qsearch = compile_pattern(self.query_regex).search
            checks.append(lambda m, p, q, h: qsearch(q) is not None)
        if self.header is not None:
            name = self.header.lower()
            if self.header_regex is None:
                checks.append(lambda m, p, q, h: any(n == name for n, _ in h))
            else:
                hsearch = compile_pattern(self.header_regex).search
                checks.append(lambda m, p, q, h: any(n == name and hsearch(v) is not None
                                                     for n, v in h))
        if not checks:
            raise ValueError("a deny rule needs at least one condition")
        object.__setattr__(self, "_checks", tuple(checks))

    def matches(self, method: str, path: str, query: str, headers) -> bool:
        return all(c(method, path, query, headers) for c in self._checks)


def first_denial(rules: Sequence[DenyRule], method: str, path: str, query: str,
                 headers) -> int | None:
    """The index in ``rules`` of the first rule that matches, in order; None if none does."""
    for n, rule in enumerate(rules):
        if rule.matches(method, path, query or "", headers):
            return n
    return None
