"""Access control, sans-IO: address ACLs, method lists, deny rules, regex safety.

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
    ``check_regex(pattern) -> str | None`` / ``compile_regex(pattern)``
        see ``check_regex``. Every regex of this module and of
        ``forkproxy.core.rewrite`` goes through ``compile_regex``.

Headers are ``(lower-case name, value)`` pairs as produced by
``forkproxy.core.http1``; ``path`` is the path without the query and
``query`` the part after ``?`` ("" when absent): the path canonical
(``core.canon``), the query as received.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from re import _constants as _c  # noqa: PLC2701 (the parser's node names)
from re import _parser as _p  # noqa: PLC2701
from typing import Iterable, Sequence

__all__ = [
    "Acl", "compile_acl", "Methods", "DenyRule", "first_denial",
    "check_regex", "compile_regex", "MAX_REGEX_LENGTH",
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
    ``path_regex``    ``re.search`` on the path
    ``query_regex``   ``re.search`` on the query ("" when there is none)
    ``header``        a field name: the rule needs the field present...
    ``header_regex``  ...and, when given, one of its values to match (search)
    ``methods``       the request method is one of these (case-sensitive)
    ``status``        the answer, 400..599; 403 by default

    Raises ``ValueError`` for a rule without conditions, an unsafe or invalid
    regex (see ``check_regex``), ``header_regex`` without ``header``, or a
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
            search = compile_regex(self.path_regex).search
            checks.append(lambda m, p, q, h: search(p) is not None)
        if self.query_regex is not None:
            qsearch = compile_regex(self.query_regex).search
            checks.append(lambda m, p, q, h: qsearch(q) is not None)
        if self.header is not None:
            name = self.header.lower()
            if self.header_regex is None:
                checks.append(lambda m, p, q, h: any(n == name for n, _ in h))
            else:
                hsearch = compile_regex(self.header_regex).search
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


# -- regex safety -----------------------------------------------------------------

#: Longest pattern accepted, in characters.
MAX_REGEX_LENGTH = 1024

_REPEATS = {_c.MAX_REPEAT, _c.MIN_REPEAT, _c.POSSESSIVE_REPEAT}
_BIG_CLASS = 512  # a character class wider than this counts as "any character"


def _fold(c: int) -> set[int]:
    ch = chr(c)
    return {c, ord(ch.lower()[0]), ord(ch.upper()[0])}


def _first_class(items) -> set[int] | None:
    out: set[int] = set()
    for op, av in items:
        if op is _c.LITERAL:
            out |= _fold(av)
        elif op is _c.RANGE and av[1] - av[0] <= _BIG_CLASS:
            for c in range(av[0], av[1] + 1):
                out |= _fold(c)
        else:  # NEGATE, CATEGORY, wide ranges: could be anything
            return None
    return out


def _first(seq) -> tuple[set[int] | None, bool]:
    """(characters a match of ``seq`` can start with, None = any; can it match empty?)"""
    acc: set[int] | None = set()
    for op, av in seq:
        first, nullable = _first_item(op, av)
        acc = None if acc is None or first is None else acc | first
        if not nullable:
            return acc, False
    return acc, True


def _first_item(op, av) -> tuple[set[int] | None, bool]:
    if op is _c.LITERAL:
        return _fold(av), False
    if op is _c.IN:
        return _first_class(av), False
    if op in (_c.NOT_LITERAL, _c.ANY):
        return None, False
    if op is _c.SUBPATTERN:
        return _first(av[3])
    if op is _c.ATOMIC_GROUP:
        return _first(av)
    if op in _REPEATS:
        first, nullable = _first(av[2])
        return first, nullable or av[0] == 0
    if op is _c.BRANCH:
        acc: set[int] | None = set()
        any_null = False
        for branch in av[1]:
            first, nullable = _first(branch)
            acc = None if acc is None or first is None else acc | first
            any_null = any_null or nullable
        return acc, any_null
    if op is _c.AT:
        return set(), True
    return None, True  # unknown: assume the worst


def _ambiguous_branch(branches) -> bool:
    """Can two branches start the same way, or one match the empty string?"""
    seen: set[int] = set()
    for branch in branches:
        first, nullable = _first(branch)
        if nullable or first is None or first & seen:
            return True
        seen |= first
    return False


def _walk(seq, in_repeat: bool) -> str | None:
    for op, av in seq:
        if op in (_c.GROUPREF, _c.GROUPREF_EXISTS):
            return "backreferences are not allowed"
        if op in (_c.ASSERT, _c.ASSERT_NOT):
            return "lookahead and lookbehind assertions are not allowed"
        if op in _REPEATS:
            lo, hi, body = av
            if in_repeat and lo != hi:
                return "nested quantifier (a repeated group contains a variable repetition)"
            repeats = hi > 1
            if repeats and _first(body)[1]:
                return "a repeated group that can match the empty string"
            reason = _walk(body, in_repeat or repeats)
        elif op is _c.BRANCH:
            if in_repeat and _ambiguous_branch(av[1]):
                return "a repeated alternation whose branches overlap"
            reason = next(filter(None, (_walk(b, in_repeat) for b in av[1])), None)
        elif op is _c.SUBPATTERN:
            reason = _walk(av[3], in_repeat)
        elif op is _c.ATOMIC_GROUP:
            reason = _walk(av, in_repeat)
        else:
            reason = None
        if reason:
            return reason
    return None


def check_regex(pattern: str) -> str | None:
    """None when ``pattern`` is accepted; otherwise why it is refused.

    Python's ``re`` is a backtracking engine, so a pattern from the config
    is refused when its shape can make matching take exponential time on a
    crafted request. The check walks the parsed pattern (``re._parser``),
    not its text. Refused:

    * invalid patterns, and patterns longer than ``MAX_REGEX_LENGTH``;
    * backreferences (``\\1``, ``(?P=n)``, ``(?(1)..)``) and lookaround
      (``(?=``, ``(?!``, ``(?<=``, ``(?<!``): not needed to match URLs and
      headers, and they defeat this analysis;
    * a variable repetition inside a repeated group: ``(a+)+``, ``(a*)*``,
      ``(\\w+\\s?)*``, ``(.*,){10}``;
    * a repeated group that can match the empty string: ``(a?)*``, ``(a|)*``,
      and ``(a|a)*`` (which Python parses as ``a(?:|)``);
    * inside a repeated group, an alternation whose branches can start with
      the same character (case folded), or any branch that starts with a
      class such as ``\\w``, ``.`` or ``[^/]``: ``(a|ab)*``, ``(\\wx|\\dy)+``
      (single-character branches are one class to ``re`` and are fine:
      ``(\\w|\\d)+`` is ``[\\w\\d]+``).

    Accepted: everything else, including fixed repetitions inside repeats
    (``(ab{2})+``), alternation outside repeats (``\\.(png|jpe?g)$``),
    alternation with distinct first characters inside repeats
    (``(?:foo|bar)+``), atomic groups and possessive quantifiers (checked as
    plain ones). Polynomial cases such as ``.*a.*b`` pass: request targets
    and header values are bounded by the parser's limits (8 KiB, 32 KiB), so
    they cost milliseconds, not hours.
    """
    if len(pattern) > MAX_REGEX_LENGTH:
        return f"longer than {MAX_REGEX_LENGTH} characters"
    try:
        parsed = _p.parse(pattern)
    except re.error as e:
        return f"invalid regular expression: {e}"
    except RecursionError:
        return "nested too deeply"
    try:
        return _walk(parsed.data, False)
    except RecursionError:
        return "nested too deeply"


def compile_regex(pattern: str) -> re.Pattern:
    """``re.compile(pattern)`` after ``check_regex``; ``ValueError`` with the reason."""
    reason = check_regex(pattern)
    if reason:
        raise ValueError(f"regex {pattern!r}: {reason}")
    return re.compile(pattern)
