"""URL rewrites, redirects and header rules, sans-IO.

CONTRACT (compiled once at config load; ``ValueError`` names the problem,
the config layer adds the key path):

    ``compile_rewrites(strip_prefix=None, add_prefix=None, rewrite=(), redirect=None)``
        -> ``Rewriter``. ``rewrite`` is a sequence of ``(from_regex, to)``;
        ``redirect`` is ``(to, status)``.
    ``Rewriter.apply(path, query, variables) -> (path, query) | Redirect``
        the steps run in this order, each on the result of the previous one:
        ``strip_prefix``, ``add_prefix``, every ``rewrite`` rule in order,
        then ``redirect``. ``query`` is the part after ``?`` ("" when none).
    ``HeaderRules(set=None, add=None, remove=())``, ``.apply(headers, variables)``
        for ``request_headers`` and ``response_headers``.
    ``Template(text, variables)``: the substitution language of all of them.

Steps:

    strip_prefix  removed when the path starts with it at a segment boundary:
                  ``/api`` strips ``/api`` and ``/api/x`` (-> ``/``, ``/x``),
                  not ``/apix``; a prefix ending in ``/`` strips exactly that.
                  The result always starts with ``/``.
    add_prefix    prepended (``/v2`` + ``/x`` -> ``/v2/x``).
    rewrite       nginx ``rewrite`` semantics: when ``from`` (RE2) is found in the path
                  matches, the WHOLE path is replaced by ``to`` expanded (so
                  anchor ``from`` and capture what you keep:
                  ``{from = "^/old/(.*)", to = "/new/$1"}``). Every rule is
                  tried, in order, each on the previous result. ``to`` must
                  start with ``/``; a literal ``?`` in it starts the new query,
                  which then replaces the request's (``"/x?"`` drops it;
                  ``"/x?a=1&$args"`` appends to it); without one the query is
                  kept.
    redirect      answered by forkproxy itself: ``Redirect(status, location)``
                  with ``to`` expanded; status 301, 302 (default), 303, 307 or
                  308. A location that would start with two slashes or
                  backslashes in any mix (``//evil.example``, ``/\\evil``: a
                  browser reads them as another host) keeps one ``/``, so a
                  redirect built from a template stays on the site.

Templates: ``$1``..``$9`` capture groups of the rule's ``from`` (one digit:
``$10`` is ``$1`` then ``0``), ``${name}`` or ``$name`` a named group or else a
variable, ``$$`` a literal ``$``. Anything else after ``$`` is an error at
load, as are unknown names and group numbers the regex does not have. A group
that did not take part in the match, or a variable the caller does not give,
expands to "". Variables (values given by the caller at request time):

    everywhere    ``$remote_addr`` (real client address), ``$request_id``,
                  ``$route`` (the matched route's name or index), ``$host``
                  (request host, no port), ``$scheme`` (``http``/``https``)
    URL steps     ``$request_uri`` (the target before these steps, given by the
                  caller: its path canonical, ``core.canon``),
                  ``$uri`` and ``$args`` (path and query as rewritten so far,
                  computed here), ``$is_args`` (``?`` when ``$args`` is set)
    header rules  ``$upstream_addr`` (the server chosen; "" before the pick)

Unsafe results. URL results (path, query, ``Location``): control characters,
space and DEL coming from a variable are percent-encoded (they are URI data);
literal text in a template may not contain them (load error). Header values:
a field whose expanded value contains a control character (CR, LF, NUL...,
anything but tab) is DROPPED rather than sanitised, and so is one that
expands to "" (nginx's ``proxy_set_header X ""``): forwarding a mangled
request id or address would mislead the receiver more than its absence.
"""

from __future__ import annotations

import builtins  # HeaderRules takes a ``set`` argument
import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from .patterns import compile_pattern
from .headers import HOP_BY_HOP

__all__ = [
    "Template", "Redirect", "Rewriter", "compile_rewrites", "HeaderRules",
    "COMMON_VARIABLES", "URL_VARIABLES", "HEADER_VARIABLES", "REDIRECT_STATUSES",
]

COMMON_VARIABLES = frozenset({"remote_addr", "request_id", "route", "host", "scheme"})
URL_VARIABLES = COMMON_VARIABLES | {"request_uri", "uri", "args", "is_args"}
HEADER_VARIABLES = COMMON_VARIABLES | {"upstream_addr"}
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})

_DOLLAR = re.compile(r"\$(?:(\$)|([0-9])|\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
_CTL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_URI_UNSAFE = re.compile(r"[\x00-\x20\x7f]")
_URI_LITERAL_BAD = re.compile(r"[\x00-\x20\x7f#]")
_TOKEN = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+")


def _pct(m: re.Match) -> str:
    return "".join(f"%{b:02X}" for b in m.group().encode())


def _uri_safe(text: str) -> str:
    return _URI_UNSAFE.sub(_pct, text) if _URI_UNSAFE.search(text) else text


class Template:
    """A string with ``$`` substitutions (see the module docstring).

    ``variables`` are the names allowed; ``regex`` (compiled) gives the
    groups ``$N`` and ``${name}`` may use. Parts are kept as a tuple of
    ``str`` (literal), ``int`` (group number) and ``("v", name)``.
    """

    __slots__ = ("text", "parts")

    def __init__(self, text: str, variables: frozenset[str], regex: re.Pattern | None = None):
        self.text = text
        groups = regex.groupindex if regex is not None else {}
        n_groups = regex.groups if regex is not None else 0
        parts: list = []
        pos = 0
        for m in _DOLLAR.finditer(text):
            if "$" in text[pos:m.start()]:
                break
            parts.append(text[pos:m.start()])
            dollar, digit, braced, bare = m.groups()
            name = braced or bare
            if dollar:
                parts.append("$")
            elif digit is not None:
                if int(digit) > n_groups:
                    raise ValueError(f"{text!r}: ${digit} but the regex has {n_groups} group(s)")
                parts.append(int(digit))
            elif name in groups:
                parts.append(groups[name])
            elif name in variables:
                parts.append(("v", name))
            else:
                known = ", ".join("$" + v for v in sorted(variables))
                raise ValueError(f"{text!r}: unknown variable ${name} (known here: {known})")
            pos = m.end()
        if "$" in text[pos:]:
            raise ValueError(f"{text!r}: a lone $ (write $$ for a literal one)")
        parts.append(text[pos:])
        self.parts = tuple(p for p in parts if p != "")

    def literal_text(self) -> str:
        """The literal parts joined (what load-time validation looks at)."""
        return "".join(p for p in self.parts if isinstance(p, str))

    def expand(self, variables: Mapping[str, str], match: re.Match | None = None,
               uri_safe: bool = False) -> str:
        out = []
        for p in self.parts:
            if isinstance(p, str):
                out.append(p)
                continue
            if isinstance(p, int):
                v = (match.group(p) if match is not None else None) or ""
            else:
                v = variables.get(p[1]) or ""
            out.append(_uri_safe(v) if uri_safe else v)
        return "".join(out)

    def __repr__(self) -> str:
        return f"Template({self.text!r})"


@dataclass(frozen=True)
class Redirect:
    """Answer the client with ``status`` and ``Location: location``; nothing goes upstream."""

    status: int
    location: str


def _url_template(text: str, regex: re.Pattern | None, what: str) -> Template:
    t = Template(text, URL_VARIABLES, regex)
    if _URI_LITERAL_BAD.search(t.literal_text()):
        raise ValueError(f"{what} {text!r}: spaces, control characters and '#' are not allowed")
    return t


class _Rule:
    __slots__ = ("search", "path", "query")

    def __init__(self, from_: str, to: str):
        regex = compile_pattern(from_)
        path_text, sep, query_text = to.partition("?")
        if not path_text.startswith("/"):
            raise ValueError(f"rewrite to {to!r}: must start with '/'")
        self.search = regex.search
        self.path = _url_template(path_text, regex, "rewrite to")
        self.query = _url_template(query_text, regex, "rewrite to") if sep else None


class Rewriter:
    """The compiled URL steps of one route; see the module docstring."""

    __slots__ = ("strip_prefix", "add_prefix", "rules", "redirect", "_redirect_status")

    def __init__(self, strip_prefix: str | None = None, add_prefix: str | None = None,
                 rewrite: Sequence[tuple[str, str]] = (), redirect: tuple[str, int] | None = None):
        for name, prefix in (("strip_prefix", strip_prefix), ("add_prefix", add_prefix)):
            if prefix is not None and (not prefix.startswith("/") or _URI_LITERAL_BAD.search(prefix)
                                       or "?" in prefix):
                raise ValueError(f"{name} {prefix!r}: must start with '/' and be a plain path")
        self.strip_prefix = strip_prefix
        self.add_prefix = add_prefix.rstrip("/") if add_prefix else None
        self.rules = tuple(_Rule(f, t) for f, t in rewrite)
        self.redirect = None
        self._redirect_status = 0
        if redirect is not None:
            to, status = redirect
            if status not in REDIRECT_STATUSES:
                raise ValueError(f"redirect status {status}: one of {sorted(REDIRECT_STATUSES)}")
            if not to:
                raise ValueError("redirect to: empty")
            self.redirect = _url_template(to, None, "redirect to")
            self._redirect_status = status

    def _strip(self, path: str) -> str:
        p = self.strip_prefix
        if p.endswith("/"):
            if not path.startswith(p):
                return path
        elif not (path == p or path.startswith(p + "/")):
            return path
        rest = path[len(p):]
        return rest if rest.startswith("/") else "/" + rest

    def apply(self, path: str, query: str, variables: Mapping[str, str]) -> tuple[str, str] | Redirect:
        """(path, query) after the rewrite steps, or the ``Redirect`` to answer."""
        if self.strip_prefix is not None:
            path = self._strip(path)
        if self.add_prefix:
            path = self.add_prefix + path
        if self.rules or self.redirect is not None:
            local = dict(variables)
            for rule in self.rules:
                m = rule.search(path)
                if m is None:
                    continue
                local.update(uri=path, args=query, is_args="?" if query else "")
                new_path = rule.path.expand(local, m, uri_safe=True)
                if rule.query is not None:
                    query = rule.query.expand(local, m, uri_safe=True)
                path = new_path
            if self.redirect is not None:
                local.update(uri=path, args=query, is_args="?" if query else "")
                return Redirect(self._redirect_status,
                                _same_site(self.redirect.expand(local, uri_safe=True)))
        return path, query


def _same_site(location: str) -> str:
    """``location`` without the second leading slash or backslash that would make it
    scheme-relative (``//host``; browsers take ``\\`` for ``/``): an open redirect."""
    if location[:1] in ("/", "\\") and location[1:2] in ("/", "\\"):
        return "/" + location.lstrip("/\\")
    return location


def compile_rewrites(strip_prefix: str | None = None, add_prefix: str | None = None,
                     rewrite: Sequence[tuple[str, str]] = (),
                     redirect: tuple[str, int] | None = None) -> Rewriter:
    """Compile one route's URL steps; ``ValueError`` on any invalid part."""
    return Rewriter(strip_prefix, add_prefix, rewrite, redirect)


# -- header rules -----------------------------------------------------------------

# Framing and hop-by-hop fields are the proxy's own business.
_FORBIDDEN = HOP_BY_HOP | {"content-length"}


def _field_name(name: str, what: str) -> str:
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"{what} {name!r}: not a header field name")
    low = name.lower()
    if low in _FORBIDDEN:
        raise ValueError(f"{what} {name!r}: framing and hop-by-hop fields cannot be changed")
    return low


class HeaderRules:
    """``set``/``add``/``remove`` for one direction of one route.

    ``apply`` removes every field named in ``remove`` or ``set``, then
    appends the ``set`` fields, then the ``add`` fields (a second value,
    even if the field exists), in the configured order. ``Host`` may be
    set (``host_header`` is ``set = { Host = ... }``) but not added or
    removed; framing and hop-by-hop fields may not be touched at all.
    Values are ``Template`` s over ``HEADER_VARIABLES``; see the module
    docstring for fields that expand to "" or to unsafe text (dropped).
    """

    __slots__ = ("_drop", "_append")

    def __init__(self, set: Mapping[str, str] | None = None, add: Mapping[str, str] | None = None,
                 remove: Iterable[str] = ()):
        drop: builtins.set[str] = builtins.set()
        append: list[tuple[str, Template]] = []
        for what, table in (("set", set or {}), ("add", add or {})):
            for name, value in table.items():
                low = _field_name(name, f"{what}")
                if low == "host" and what != "set":
                    raise ValueError(f"{what} Host: Host can only be set")
                t = Template(value, HEADER_VARIABLES)
                if _CTL.search(t.literal_text()):
                    raise ValueError(f"{what} {name}: control characters in the value")
                if what == "set":
                    drop.add(low)
                append.append((low, t))
        for name in remove:
            low = _field_name(name, "remove")
            if low == "host":
                raise ValueError("remove Host: a request needs one")
            drop.add(low)
        self._drop = frozenset(drop)
        self._append = tuple(append)

    def __bool__(self) -> bool:
        return bool(self._drop or self._append)

    def apply(self, headers, variables: Mapping[str, str]) -> list[tuple[str, str]]:
        """A new header list with the rules applied; ``headers`` is not changed."""
        drop = self._drop
        out = [(n, v) for n, v in headers if n not in drop] if drop else list(headers)
        for name, t in self._append:
            value = t.expand(variables).strip(" \t")
            if value and not _CTL.search(value):
                out.append((name, value))
        return out

