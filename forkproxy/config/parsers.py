"""Value parsers and renderers of the keys.

A parser takes the TOML value and returns the Python value, or raises
``Invalid(message)``; a renderer (``_r_*``) turns the Python value back into
the TOML value ``dump`` writes (None: the key is left out).  The edge rules
(access lists, methods, regular expressions, rewrites, rates) are checked
here with the very code that runs them (``forkproxy.core``).  The names keep
their underscore: they are the package's, not its API.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from forkproxy.config.units import (
    _HOSTNAME_RE,
    Invalid,
    _quote,
    _tname,
    format_duration,
    format_size,
    parse_duration,
    parse_size,
    split_host_port,
)
from forkproxy.core.access import Methods, compile_acl
from forkproxy.core.canon import PathRefused, canonical_path
from forkproxy.core.patterns import PatternError, compile_pattern
from forkproxy.core.ratelimit import parse_rate
from forkproxy.core.rewrite import compile_rewrites
from forkproxy.net.tls_contexts import check_ciphers


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise Invalid(f"expected a string, got {_tname(value)}")
    return value


def _nonempty_str(value: Any) -> str:
    if not _str(value).strip():
        raise Invalid("must not be empty")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Invalid(f"expected true or false, got {_tname(value)}")
    return value


def _int(lo: int, hi: int | None = None) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"expected an integer, got {_tname(value)}")
        if value < lo or (hi is not None and value > hi):
            bound = f"{lo}..{hi}" if hi is not None else f">= {lo}"
            raise Invalid(f"expected an integer {bound}, got {value}")
        return value

    return parse


def _duration(allow_zero: bool) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        seconds = parse_duration(value)
        if seconds == 0 and not allow_zero:
            raise Invalid("must be greater than zero")
        return seconds

    return parse


def _size(lo: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        n = parse_size(value)
        if n < lo:
            raise Invalid(f"must be at least {lo} bytes, got {n}")
        return n

    return parse


def _enum(key: str, choices: tuple[str, ...], later: tuple[str, ...] = ()) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        value = _str(value)
        if value in choices:
            return value
        if value in later:
            raise Invalid(f"{key} {_quote(value)} is not supported yet")
        return _unknown_value(value, choices)

    return parse


def _unknown_value(value: str, choices: tuple[str, ...]) -> str:
    msg = f"unknown value {_quote(value)}; expected one of: {', '.join(choices)}"
    # Case first: "get" for "GET" and "DOWN" for "down" are the usual slips.
    close = [c for c in choices if c.lower() == value.lower()] or difflib.get_close_matches(value, choices, n=1)
    if close:
        msg += f' (did you mean "{close[0]}"?)'
    raise Invalid(msg)


def _set_cookie_mode(value: Any) -> str:
    # No "did you mean": "skip" is one letter from "strip", which does the opposite.
    value = _str(value)
    if value not in ("no-store", "strip"):
        raise Invalid(f'unknown value {_quote(value)}; expected "no-store" (a response that '
                      'sets a cookie is not stored) or "strip" (stored without its Set-Cookie)')
    return value


def _workers(value: Any) -> int:
    if value == "auto":
        return os.cpu_count() or 1
    if isinstance(value, str):
        raise Invalid(f'expected an integer 1..1024 or "auto", got {_quote(value)}')
    return _int(1, 1024)(value)


def _networks(value: Any) -> tuple:
    if not isinstance(value, list):
        raise Invalid(f'expected an array of addresses or CIDR ranges such as ["10.0.0.0/8"], got {_tname(value)}')
    nets = []
    for item in value:
        try:
            nets.append(ipaddress.ip_network(_str(item).strip(), strict=False))
        except ValueError:
            raise Invalid(f"invalid address or CIDR range {_quote(str(item))}") from None
    return tuple(nets)


def _opt_str(value: Any) -> str | None:
    return _nonempty_str(value)


#: What ``forkproxy -T`` prints in place of a secret (``dump``).
REDACTED = "<redacted>"


def _secret_str(value: Any) -> str:
    """A non-empty string that is not REDACTED: a dump pasted back as a
    configuration must not make the placeholder, which everyone knows, the secret."""
    if _nonempty_str(value) == REDACTED:
        raise Invalid(f"{_quote(REDACTED)} is what forkproxy -T prints in place of a secret: "
                      "write the secret itself")
    return value


_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")


def _name(value: Any) -> str:
    if not _NAME_RE.match(_str(value)):
        raise Invalid(f"invalid name {_quote(value)}: use letters, digits, '_', '-' and '.' (at most 64)")
    return value


def _bind(value: Any) -> str:
    split_host_port(_str(value), default_host="0.0.0.0")
    return value


def _addr(value: Any) -> str:
    split_host_port(_str(value))
    return value


def _listener_names(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Invalid(f"expected a listener name or an array of names, got {_tname(value)}")
    return tuple(value)


_MEDIA_TYPE_RE = re.compile(r"^(\*|[a-z0-9!#$&^_.+-]+/(\*|[a-z0-9!#$&^_.+-]+))$")


def _media_types(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Invalid(f"expected an array of media types, got {_tname(value)}")
    out = []
    for v in value:
        t = v.strip().lower()
        if not _MEDIA_TYPE_RE.match(t):
            raise Invalid(f'invalid media type {_quote(v)}: write "text/html", "text/*" or "*"')
        out.append(t)
    return tuple(out)


def _route_host(value: Any) -> str:
    host = _nonempty_str(value).strip().lower()
    if host.startswith("[") and "]" in host:  # "[::1]:8080" -> "[::1]"
        host = host[: host.index("]") + 1]
    else:
        host = host.rpartition(":")[0] if re.search(r":\d*$", host) else host
    body = host[2:] if host.startswith("*.") else host
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise Invalid(f"invalid host {_quote(value)}") from None
    elif not _HOSTNAME_RE.match(body):
        raise Invalid(f'invalid host {_quote(value)}: expected a name such as "shop.example.com" or "*.example.com"')
    return host


def _host_names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Invalid(f"expected an array of host names, got {_tname(value)}")
    for v in value:
        if not _HOSTNAME_RE.match(v):
            raise Invalid(f'invalid host name {_quote(v)}: expected a name such as "admin.example.com"')
    return tuple(v.lower().rstrip(".") for v in value)


def _route_path(value: Any) -> str:
    if not _str(value).startswith("/"):
        raise Invalid(f'must start with "/", got {_quote(value)}')
    return value


def _rule_path(value: Any) -> str:
    """A path a rule compares with request paths, which are canonical (core.canon):
    one that is not could never match, so it is refused with the form to write."""
    _route_path(value)
    try:
        canon = canonical_path(value, merge_slashes=False, encoded_slashes="pass")
    except PathRefused as e:
        raise Invalid(f"{_quote(value)}: {e.reason}") from None
    if canon != value:
        raise Invalid(f"{_quote(value)} is not a canonical path, and request paths are "
                      f"(see server.merge_slashes): write {_quote(canon)}")
    return value


def _regex(value: Any) -> str:
    try:
        compile_pattern(_str(value))
    except PatternError as e:  # matching must stay linear in time: RE2 only
        raise Invalid(f"regular expression {_quote(value)} refused by RE2: {e.reason}") from None
    return value


# -- edge rules (issue 9): checked here with the very code that runs them --------


def _access_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Invalid(f'expected an array such as ["allow 10.0.0.0/8", "deny all"], got {_tname(value)}')
    out = []
    for v in value:
        action, _, cidr = v.strip().partition(" ")
        out.append((action, cidr.strip()))
    try:
        compile_acl(out)
    except ValueError as e:
        raise Invalid(f'{e} (entries are "allow CIDR" or "deny CIDR", CIDR may be "all")') from None
    return tuple(f"{a} {c}" for a, c in out)


def _methods(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Invalid(f"expected an array of method names, got {_tname(value)}")
    try:
        Methods(value)
    except ValueError as e:
        raise Invalid(str(e)) from None
    return tuple(v.upper() for v in value)


def _methods_or_none(value: Any) -> tuple[str, ...]:
    return _methods(value) if value else ()


def _protocol_names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and _TOKEN_RE.match(v) for v in value):
        raise Invalid(f'expected an array of protocol names such as ["websocket"], got {_tname(value)}')
    return tuple(v.lower() for v in value)


def _header_names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and _TOKEN_RE.match(v) for v in value):
        raise Invalid(f"expected an array of header field names, got {_tname(value)}")
    return tuple(v.lower() for v in value)


def _header_table(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise Invalid(f'expected a table of header values such as {{ X-Env = "prod" }}, got {_tname(value)}')
    return tuple(value.items())


def _r_opt_list(v: tuple | None) -> list | None:
    return None if v is None else list(v)


def _r_table(v: tuple) -> dict:
    return dict(v)


def _prefix(value: Any) -> str:
    try:
        compile_rewrites(strip_prefix=_str(value))
    except ValueError as e:
        raise Invalid(str(e).partition(" ")[2]) from None
    return _rule_path(value)


def _rate(value: Any) -> str:
    try:
        parse_rate(_str(value))
    except ValueError as e:
        raise Invalid(str(e)) from None
    return value


def _rate_key(value: Any) -> str:
    if _str(value) == "ip" or (value.startswith("header:") and _TOKEN_RE.match(value[7:])):
        return value
    raise Invalid(f'expected "ip" or "header:NAME", got {_quote(value)}')


_PAGE_TYPES = {".html": "text/html; charset=utf-8", ".htm": "text/html; charset=utf-8",
               ".json": "application/json", ".txt": "text/plain; charset=utf-8"}
MAX_ERROR_PAGE = 1 << 20


@dataclass(frozen=True)
class ErrorPage:
    """A body for one status, read from ``path`` when the file is loaded."""

    status: int
    path: str
    body: bytes = field(default=b"", compare=False, repr=False)
    content_type: str = field(default="text/html; charset=utf-8", compare=False, repr=False)


def _error_pages(value: Any) -> tuple:
    if not isinstance(value, dict):
        raise Invalid(f'expected a table such as {{ 502 = "/etc/forkproxy/502.html" }}, got {_tname(value)}')
    out = []
    for status, path in value.items():
        if not re.fullmatch(r"[45][0-9][0-9]", status):
            raise Invalid(f"{_quote(status)}: expected a status code 400..599")
        path = _nonempty_str(path)
        try:
            with open(path, "rb") as f:
                body = f.read(MAX_ERROR_PAGE + 1)
        except OSError as e:
            raise Invalid(f"cannot read {_quote(path)}: {e.strerror or e}") from None
        if len(body) > MAX_ERROR_PAGE:
            raise Invalid(f"{_quote(path)}: larger than 1m")
        ctype = _PAGE_TYPES.get(os.path.splitext(path)[1].lower(), "text/html; charset=utf-8")
        out.append(ErrorPage(int(status), path, body, ctype))
    return tuple(sorted(out, key=lambda p: p.status))


def _r_error_pages(v: tuple | None) -> dict | None:
    return None if v is None else {str(p.status): p.path for p in v}


_STATUS_HINT = 'expected a status code 100..599 or a range such as "200-399"'


def _status_code(value: Any, lo: int = 100, hi: int = 599) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(f"expected an integer status code {lo}..{hi}, got {_tname(value)}")
    if not lo <= value <= hi:
        raise Invalid(f"expected a status code {lo}..{hi}, got {value}")
    return value


def _status_ranges(value: Any) -> tuple[tuple[int, int], ...]:
    """``[200, "300-399"]`` (or one such item alone) -> ((200, 200), (300, 399))."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise Invalid(f"must not be empty: {_STATUS_HINT}")
    out = []
    for item in items:
        if isinstance(item, str):
            m = re.fullmatch(r"\s*(\d{3})\s*-\s*(\d{3})\s*", item)
            if not m:
                raise Invalid(f"{_STATUS_HINT}, got {_quote(item)}")
            lo, hi = int(m.group(1)), int(m.group(2))
            if not (100 <= lo <= 599 and 100 <= hi <= 599):
                raise Invalid(f"status codes must be 100..599, got {_quote(item)}")
            if lo > hi:
                raise Invalid(f"empty range {_quote(item)}: write the lower code first")
            out.append((lo, hi))
        elif isinstance(item, int) and not isinstance(item, bool):
            if not 100 <= item <= 599:
                raise Invalid(f"{_STATUS_HINT}, got {item}")
            out.append((item, item))
        else:
            raise Invalid(f"{_STATUS_HINT}, got {_tname(item)}")
    return tuple(out)


def _fail_status(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise Invalid(f"expected an array of status codes 500..599 such as [502, 503, 504], got {_tname(value)}")
    return tuple(_status_code(v, 500, 599) for v in value)


def _probe_path(value: Any) -> str:
    # It is sent verbatim as the request target: a space or control
    # character would make the probe itself malformed.
    _route_path(value)
    if re.search(r"[\x00-\x20\x7f]", value):
        raise Invalid(f"must not contain spaces or control characters, got {_quote(value)}")
    return value


def _header_value(value: Any) -> str:
    if re.search(r"[\x00-\x20\x7f]", _nonempty_str(value)):
        raise Invalid(f"must not contain spaces or control characters, got {_quote(value)}")
    return value


_TOKEN_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 token


def _opt_header_name(value: Any) -> str:
    """A header field name, or "" (the feature is off)."""
    if _str(value) and not _TOKEN_RE.match(value):
        raise Invalid(f"invalid header name {_quote(value)}")
    return value


def _addrs(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise Invalid(f'expected an array of "HOST:PORT" strings, got {_tname(value)}')
    return tuple(_addr(v) for v in value)


def _hash_key(value: Any) -> str:
    """"uri", or "header:NAME", "cookie:NAME", "query:NAME"."""
    value = _str(value).strip()
    if value == "uri":
        return value
    kind, sep, name = value.partition(":")
    if not sep or kind not in ("header", "cookie", "query") or not name:
        raise Invalid(f'expected "uri", "header:NAME", "cookie:NAME" or "query:NAME", got {_quote(value)}')
    if kind != "query" and not _TOKEN_RE.match(name):
        raise Invalid(f"invalid {kind} name {_quote(name)}")
    return f"{kind}:{name.lower() if kind == 'header' else name}"


def _stick_key(value: Any) -> str:
    """A sticky table's key: "ip", "header:NAME" (lower-cased) or "cookie:NAME"."""
    value = _str(value).strip()
    if value == "ip":
        return value
    kind, sep, name = value.partition(":")
    if not sep or kind not in ("header", "cookie") or not _TOKEN_RE.match(name):
        raise Invalid(f'expected "ip", "header:NAME" or "cookie:NAME", got {_quote(value)}')
    return f"{kind}:{name.lower() if kind == 'header' else name}"


def _split_by(value: Any) -> str:
    """A route's split_by: "cookie:NAME", "header:NAME" (kept in lower case) or "ip"."""
    if value == "ip":
        return value
    try:
        got = _hash_key(value)
    except Invalid:
        got = None
    if got is None or got.startswith(("uri", "query:")):
        raise Invalid(f'expected "cookie:NAME", "header:NAME" or "ip", got {_quote(value)}')
    return got


def _cookie_name(value: Any) -> str:
    if not _TOKEN_RE.match(_str(value)):
        raise Invalid(f"invalid cookie name {_quote(value)}: use letters, digits and !#$%&'*+-.^_`|~")
    return value


_RETRY_HINT = 'expected an array of "error", "timeout" and status codes 500..599 such as ["error", "timeout", "502"]'


def _retry_on(value: Any) -> tuple:
    if not isinstance(value, list):
        raise Invalid(f"{_RETRY_HINT}, got {_tname(value)}")
    out: list = []
    for item in value:
        if item in ("error", "timeout"):
            code: Any = item
        elif isinstance(item, str) and re.fullmatch(r"5\d\d", item.strip()):
            code = int(item)
        elif isinstance(item, int) and not isinstance(item, bool) and 500 <= item <= 599:
            code = item
        else:
            raise Invalid(f"{_RETRY_HINT}, got {_quote(item) if isinstance(item, str) else item!r}")
        if code not in out:
            out.append(code)
    return tuple(out)


def _number(lo: float, hi: float) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Invalid(f"expected a number, got {_tname(value)}")
        if not lo <= value <= hi:
            raise Invalid(f"expected a number {lo:g}..{hi:g}, got {value!r}")
        return float(value)

    return parse


def _percent(value: Any) -> float:
    """"20%", "12.5%": a share of 0..100 percent."""
    m = re.fullmatch(r"(\d{1,3}(?:\.\d{1,3})?)%", _str(value).strip())
    if m is None or float(m.group(1)) > 100:
        raise Invalid(f'expected a percentage such as "20%" (0% to 100%), got {_quote(value)}')
    return float(m.group(1))


def _r_percent(v: float | None) -> str | None:
    return None if v is None else f"{v:g}%"


def _r_retry_on(v: tuple) -> list:
    return [x if isinstance(x, str) else str(x) for x in v]


def _ciphers(value: Any) -> str:
    if not check_ciphers(_nonempty_str(value)):
        raise Invalid(f"OpenSSL accepts no cipher of {_quote(value)}")
    return value


def _hsts(value: Any) -> str:
    if not re.fullmatch(r"[\x20-\x7e]+", _nonempty_str(value)) or "max-age=" not in value.lower():
        raise Invalid(f'expected a value such as "max-age=31536000; includeSubDomains", got {_quote(value)}')
    return value


# Renderers: Python value -> TOML value for dump() (None means "omit").
def _r_duration(v: float) -> str:
    return format_duration(v)


def _r_size(v: int | None) -> Any:
    return None if v is None else format_size(v)


def _r_networks(v: tuple) -> list:
    return [str(n) for n in v]


def _r_list(v: tuple) -> list:
    return list(v)


def _r_opt_duration(v: float | None) -> str | None:
    return None if v is None else format_duration(v)


def _r_status(v: tuple[tuple[int, int], ...]) -> list:
    return [lo if lo == hi else f"{lo}-{hi}" for lo, hi in v]


# ---------------------------------------------------------------------------
