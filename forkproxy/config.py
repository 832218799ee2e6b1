"""TOML configuration -> frozen dataclasses, driven by one declaration per key.

``SETTINGS`` declares every key once (section, name, type, default, help,
reload-or-restart, parser, renderer); ``SECTIONS`` declares the shape of the
tables that hold them.  Those two tables feed:

    validation      ``load(path)`` / ``loads(text, path)``: every error of a
                    file is collected and raised together as ``ConfigErrors``,
                    each one ``FILE:LINE: key.path: message``.
    -T              ``dump(cfg)``: the effective configuration as TOML with
                    every default filled in; ``loads(dump(cfg)) == cfg``.
    forkproxy.toml(5)  ``man_keys()``: the mdoc key reference, spliced into
                    ``man/forkproxy.toml.5`` between the GENERATED markers.
    the sample      ``sample()``: ``conf/forkproxy.toml``, every key with its
                    default and its help as comments.

To add a key: add one ``Setting`` (and the dataclass field it fills), then
run ``python -m forkproxy.config --write-docs .`` to regenerate the docs.
To add a sub-table (as the per-pool ``health = { ... }``): add a
``Section("pool.health", "table", ..., optional=True)``, its
``Setting("pool.health", ...)`` rows, and a builder in ``_BUILDERS``; the
walker, the line finder, ``dump`` and the docs pick it up.  An optional
sub-table that is absent is None in its parent's dataclass.  A key that only
makes sense for one value of a sibling key declares ``when=("type", "http")``:
the walker rejects it when given otherwise, ``dump`` omits it, and the docs
say so.

Units.  Durations are strings with a unit: ``"500ms"``, ``"2s"``, ``"1.5s"``,
``"1m"``, ``"1h"``; a bare number is rejected because ``timeout = 30`` is
ambiguous (seconds? milliseconds?).  Sizes are a plain integer of bytes or a
string ``"64k"``, ``"1m"``, ``"1g"`` (powers of 1024, case-insensitive).

tomli gives no line numbers, so ``_LineFinder`` re-scans the source text to
map each key path to the line where it is written.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import ssl
import sys
import textwrap
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Callable

import tomli

from forkproxy.core.access import DenyRule, Methods, compile_acl
from forkproxy.core.canon import PathRefused, canonical_path
from forkproxy.core.patterns import PatternError, compile_pattern
from forkproxy.core.ratelimit import parse_rate
from forkproxy.core.rewrite import HeaderRules, compile_rewrites
from forkproxy.core.routing import RouteSpec, shadowed
from forkproxy.errors import EX_CONFIG, EX_OK, EX_USAGE, ConfigError, ConfigErrors

__all__ = [
    "Config",
    "ServerConfig",
    "ListenerConfig",
    "RouteConfig",
    "ServerEntry",
    "PoolConfig",
    "HealthConfig",
    "StickyConfig",
    "RetryConfig",
    "QueueConfig",
    "CompressConfig",
    "Setting",
    "Section",
    "SETTINGS",
    "SECTIONS",
    "load",
    "loads",
    "warnings",
    "dump",
    "parse_duration",
    "format_duration",
    "parse_size",
    "format_size",
    "split_host_port",
    "man_keys",
    "sample",
]


# ---------------------------------------------------------------------------
# The dataclasses (field defaults must equal the parsed SETTINGS defaults:
# tests/test_config.py checks it).


@dataclass(frozen=True)
class ServerConfig:
    """The ``[server]`` table: process-wide settings."""

    workers: int
    worker_connections: int = 10000
    graceful_timeout: float = 30.0
    keepalive_timeout: float = 75.0
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    send_timeout: float = 60.0
    max_head_size: int = 32768
    max_headers: int = 100
    max_uri_length: int = 8192
    merge_slashes: bool = True
    encoded_slashes: str = "reject"
    max_body_size: int = 104857600
    trusted_proxies: tuple = ()
    underscores_in_headers: bool = False
    access: tuple[str, ...] = ()
    hide_headers: tuple[str, ...] = ("server", "x-powered-by")
    error_pages: tuple = ()
    pidfile: str = "/run/forkproxy/forkproxy.pid"
    runtime_dir: str = "/run/forkproxy"
    user: str | None = None
    group: str | None = None
    error_log: str = "-"
    access_log: str = "-"
    access_log_format: str = "combined"
    log_level: str = "info"
    initial_health: str = "up"
    tunnel_timeout: float = 3600.0
    admin: str | None = None
    admin_token: str | None = None
    admin_names: tuple[str, ...] = ()


# Mozilla's "intermediate" TLS 1.2 suites (TLS 1.3 suites are OpenSSL's own
# and not set by this list): forward secrecy and AEAD only.
DEFAULT_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20"

# Whom a listener with accept_proxy takes PROXY headers from, unless told.
LOOPBACK_NETWORKS = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


@dataclass(frozen=True)
class TlsCert:
    """One certificate of a TLS listener (``tls = {...}`` or an item of ``certs``).

    ``names`` are the DNS names the certificate holds (subjectAltName, else
    the subject's CN), read when the file is loaded; SNI chooses by them.
    """

    cert: str
    key: str
    names: tuple[str, ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class ListenerConfig:
    """One ``[[listener]]``; ``host``/``port`` are parsed from ``bind``.

    ``certs`` holds every certificate (``tls`` alone is one item; the first
    is the default for clients without SNI); empty: no TLS.  ``contexts``
    are the server ``ssl.SSLContext`` objects, one per certificate, built
    (certificate and key read) when the file is loaded: the master builds
    them before forking, so every worker shares the session ticket keys and
    reads keys with the master's privileges.  ``pool`` and
    ``idle_timeout`` apply to ``mode = "tcp"`` only.
    """

    name: str
    bind: str
    host: str
    port: int
    mode: str = "http"
    tls: TlsCert | None = None
    certs: tuple[TlsCert, ...] = ()
    tls_min_version: str = "1.2"
    ciphers: str = DEFAULT_CIPHERS
    accept_proxy: bool = False
    proxy_protocol_from: tuple = LOOPBACK_NETWORKS
    pool: str | None = None
    idle_timeout: float = 600.0
    max_conns_per_ip: int = 0
    contexts: tuple = field(default=(), compare=False, repr=False)


DEFAULT_COMPRESS_TYPES = (
    "text/html", "text/css", "text/plain", "text/xml", "text/javascript",
    "application/javascript", "application/json", "application/xml", "image/svg+xml",
)


@dataclass(frozen=True)
class RouteConfig:
    """One ``[[route]]``; ``index`` is its position in the file (0-based)."""

    index: int
    pool: str
    listener: tuple[str, ...] = ()
    host: str | None = None
    path: str | None = None
    path_regex: str | None = None
    host_header: str | None = None
    max_body_size: int | None = None
    # Edge rules (issue 9); compiled by forkproxy.net.edge. None: server's.
    access: tuple[str, ...] | None = None
    methods: tuple[str, ...] | None = None
    deny: tuple = ()
    rate_limit: "RateLimitConfig | None" = None
    strip_prefix: str | None = None
    add_prefix: str | None = None
    rewrite: tuple = ()
    redirect: "RedirectConfig | None" = None
    request_headers: "HeaderRulesConfig | None" = None
    response_headers: "HeaderRulesConfig | None" = None
    hide_headers: tuple[str, ...] | None = None
    error_pages: tuple | None = None
    rewrite_location: bool = True
    body_timeout: float | None = None
    max_uri_length: int | None = None
    max_headers: int | None = None
    redirect_https: bool = False
    hsts: str | None = None
    cache: bool = False
    cache_key: str | None = None
    cache_set_cookie: str = "no-store"
    compress: CompressConfig | None = None
    tunnel_timeout: float | None = None
    upgrade: tuple[str, ...] = ("websocket",)
    request_buffering: bool = True
    request_buffer_memory: int = 65536
    request_buffer_timeout: float = 300.0


@dataclass(frozen=True)
class CompressConfig:
    """A route's ``compress = { ... }``: on-the-fly response compression.

    ``types``: media types (``text/*`` and ``*`` allowed), lower case;
    ``min_size`` in bytes (a known Content-Length below it is sent as it is);
    ``level`` 1..9 (gzip's scale; mapped for brotli by ``net.compress``).
    """

    types: tuple[str, ...] = DEFAULT_COMPRESS_TYPES
    min_size: int = 1024
    level: int = 6


@dataclass(frozen=True)
class DenyConfig:
    """One ``deny = [{ ... }]`` rule of a route (see ``core.access.DenyRule``)."""

    path: str | None = None
    path_regex: str | None = None
    query_regex: str | None = None
    header: str | None = None
    header_regex: str | None = None
    methods: tuple[str, ...] = ()
    status: int = 403


@dataclass(frozen=True)
class RewriteRule:
    """One ``rewrite = [{ from, to }]`` rule; ``pattern`` is the TOML key ``from``."""

    pattern: str
    to: str


setattr(RewriteRule, "from", property(lambda self: self.pattern))  # the TOML name, for dump()


@dataclass(frozen=True)
class RedirectConfig:
    to: str
    status: int = 302


@dataclass(frozen=True)
class RateLimitConfig:
    """``rate_limit = { ... }``: ``rate`` as written ("100r/s"); ``key`` "ip" or "header:NAME"."""

    rate: str
    key: str = "ip"
    burst: int = 1
    keys: int = 10000


@dataclass(frozen=True)
class HeaderRulesConfig:
    """``request_headers`` / ``response_headers``: ``set`` and ``add`` as (name, template) pairs."""

    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True)
class ErrorPage:
    """A body for one status, read from ``path`` when the file is loaded."""

    status: int
    path: str
    body: bytes = field(default=b"", compare=False, repr=False)
    content_type: str = field(default="text/html; charset=utf-8", compare=False, repr=False)


@dataclass(frozen=True)
class ServerEntry:
    """One member of a pool's ``servers`` array."""

    addr: str
    host: str
    port: int
    weight: int = 1
    backup: bool = False
    max_conns: int = 0


@dataclass(frozen=True)
class StickyConfig:
    """A pool's ``sticky = { ... }``: cookie-based session persistence.

    ``ttl`` 0 makes a session cookie (no Max-Age).  ``secret`` None: the
    tokens are keyed by the pool name alone (see the key's help).
    """

    cookie: str = "fp_srv"
    ttl: float = 0.0
    secret: str | None = None


@dataclass(frozen=True)
class RetryConfig:
    """A pool's ``retry = { ... }`` (nginx's proxy_next_upstream family).

    ``tries`` 0: each server of the pool at most once; ``timeout`` 0: no
    time limit; ``on``: "error", "timeout" and status codes as ints.
    """

    tries: int = 0
    timeout: float = 0.0
    on: tuple = ("error", "timeout")


@dataclass(frozen=True)
class QueueConfig:
    """A pool's ``queue = { ... }``: where requests wait when every server is at max_conns."""

    size: int = 100
    timeout: float = 10.0


@dataclass(frozen=True)
class HealthConfig:
    """A pool's ``health = { ... }``: its active checks (HAProxy semantics).

    ``type`` "http" probes ``method path`` and succeeds when the status is in
    one of the inclusive ``expect_status`` ranges and, if ``expect_body`` is
    set, that regex is found in the first 64 KiB of the body; "tcp" only
    connects (the http-only fields then keep their defaults and mean
    nothing).  ``host`` None means the server's addr as written.
    ``fastinter``/``downinter`` None mean ``interval``.  Times in seconds.
    """

    type: str = "http"
    path: str = "/"
    method: str = "GET"
    expect_status: tuple[tuple[int, int], ...] = ((200, 399),)
    expect_body: str | None = None
    host: str | None = None
    interval: float = 2.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 3
    fastinter: float | None = None
    downinter: float | None = None


@dataclass(frozen=True)
class PoolTlsConfig:
    """A pool's ``tls = { ... }``: connect to its servers over TLS.

    ``ca`` None: the system's trusted CAs.  ``sni`` None: the server's host
    as written in its addr (sent unless it is an IP address, and checked
    against the certificate when ``verify``).
    """

    verify: bool = True
    ca: str | None = None
    sni: str | None = None


@dataclass(frozen=True)
class PoolConfig:
    """One ``[pool.NAME]`` table.

    ``health`` None: no active checks.  Passive checks (nginx semantics):
    ``max_fails`` failures (connect errors, timeouts, and responses whose
    status is in ``fail_status``) within ``fail_timeout`` seconds take a
    server out of rotation for ``fail_timeout``; ``max_fails`` 0 disables
    them.  ``slow_start`` seconds (0: off) ramp a returning server's weight.
    """

    name: str
    servers: tuple[ServerEntry, ...]
    proxy_protocol: str | None = None
    tls: PoolTlsConfig | None = None
    balance: str = "round_robin"
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    send_timeout: float = 60.0
    keepalive: int = 32
    keepalive_timeout: float = 60.0
    health: HealthConfig | None = None
    max_fails: int = 1
    max_ejection_percent: int = 50
    fail_timeout: float = 10.0
    fail_status: tuple[int, ...] = ()
    slow_start: float = 0.0
    hash_key: str = "uri"
    hash_method: str = "ketama"
    sticky: StickyConfig | None = None
    retry: RetryConfig | None = None
    queue: QueueConfig | None = None


@dataclass(frozen=True)
class CacheConfig:
    """The ``[cache]`` table: the shared HTTP cache of routes with ``cache = true``.

    ``servers`` empty: a per-worker in-process cache of ``memory_size`` bytes.
    ``header`` "" sends no cache-status header; ``cdn_cache_control`` "" obeys
    Cache-Control only.  Times in seconds.
    """

    servers: tuple[str, ...] = ()
    max_object_size: int = 8 << 20
    memory_size: int = 64 << 20
    mode: str = "direct"
    timeout: float = 0.03
    breaker_failures: int = 3
    breaker_window: float = 10.0
    breaker_cooldown: float = 2.0
    lock_timeout: float = 5.0
    heuristic_max: float = 3600.0
    cdn_cache_control: str = "CDN-Cache-Control"
    header: str = "X-Cache"
    purge_allowed: tuple = ()


@dataclass(frozen=True)
class Config:
    """A whole, validated configuration file."""

    path: str
    server: ServerConfig
    listeners: tuple[ListenerConfig, ...]
    routes: tuple[RouteConfig, ...]
    pools: tuple[PoolConfig, ...]
    cache: CacheConfig = field(default_factory=CacheConfig)

    def pool(self, name: str) -> PoolConfig:
        """The pool called ``name``; KeyError if there is none."""
        for p in self.pools:
            if p.name == name:
                return p
        raise KeyError(name)

    def listener(self, name: str) -> ListenerConfig:
        """The listener called ``name``; KeyError if there is none."""
        for lst in self.listeners:
            if lst.name == name:
                return lst
        raise KeyError(name)


# ---------------------------------------------------------------------------
# Units and value parsers.  A parser takes the TOML value and returns the
# Python value or raises Invalid(message).


class Invalid(ValueError):
    """A value a parser rejects; the message is shown after the key path."""


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_DURATION_UNITS = {"ms": Decimal("0.001"), "s": Decimal(1), "m": Decimal(60), "h": Decimal(3600)}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmg]?)\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_DURATION_HINT = 'expected a duration with a unit, such as "500ms", "2s", "1m" or "1h"'


def _tname(value: Any) -> str:
    """The TOML name of a value's type, for messages."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date/time"


def parse_duration(value: Any) -> float:
    """Seconds from "500ms", "2s", "1.5s", "1m" or "1h"; Invalid otherwise.

    Bare numbers (TOML ``30`` or ``"30"``) are rejected on purpose: the unit
    is what makes ``timeout = 30`` unambiguous.
    """
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise Invalid(f"{_DURATION_HINT}, got {_tname(value)}")
    if not isinstance(value, str) or re.fullmatch(r"\s*\d+(\.\d+)?\s*", value):
        raise Invalid(f'{_DURATION_HINT}; bare numbers are not accepted: write "{value}s"')
    m = _DURATION_RE.match(value)
    if not m:
        raise Invalid(f"{_DURATION_HINT}, got {_quote(value)}")
    # Decimal then one rounding, so "0.1s" and "100ms" give the same float.
    return float(Decimal(m.group(1)) * _DURATION_UNITS[m.group(2)])


def format_duration(seconds: float) -> str:
    """The shortest duration string that parse_duration maps back to ``seconds``."""
    if seconds < 0:
        raise ValueError("negative duration")
    candidates = []
    if float(seconds).is_integer():
        n = int(seconds)
        if n and n % 3600 == 0:
            candidates.append(f"{n // 3600}h")
        if n and n % 60 == 0:
            candidates.append(f"{n // 60}m")
        candidates.append(f"{n}s")
    ms = Decimal(repr(float(seconds))) * 1000
    if ms == ms.to_integral_value() and seconds < 1:
        candidates.append(f"{int(ms)}ms")
    candidates.append(f"{Decimal(repr(float(seconds))):f}s")
    for text in candidates:
        if parse_duration(text) == seconds:
            return text
    raise ValueError(f"cannot format {seconds!r} as a duration")  # pragma: no cover


def parse_size(value: Any) -> int:
    """Bytes from a plain integer or "64k", "1m", "1g" (powers of 1024)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise Invalid(f'expected a size such as 65536, "64k", "1m" or "1g", got {_tname(value)}')
    if isinstance(value, int):
        if value < 0:
            raise Invalid(f"a size cannot be negative, got {value}")
        return value
    m = _SIZE_RE.match(value)
    if not m:
        raise Invalid(f'expected a size such as 65536, "64k", "1m" or "1g", got {_quote(value)}')
    return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]


def format_size(n: int) -> str | int:
    """"64k"/"1m"/"1g" when ``n`` is a whole multiple, else the int itself."""
    for unit in ("g", "m", "k"):
        if n and n % _SIZE_UNITS[unit] == 0:
            return f"{n // _SIZE_UNITS[unit]}{unit}"
    return n


_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)


def split_host_port(text: str, *, default_host: str | None = None) -> tuple[str, int]:
    """(host, port) from "HOST:PORT", "[v6]:PORT", and, when ``default_host``
    is given, ":PORT" or "PORT".  HOST is an IPv4 address, a bracketed IPv6
    address (returned without brackets) or a hostname.  Invalid otherwise."""
    text = text.strip()
    if default_host is not None and text.isdigit():
        host, port_s = default_host, text
    elif text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            raise Invalid(f'expected "[IPv6]:PORT", got {_quote(text)}')
        host, port_s = text[1:end], text[end + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise Invalid(f"invalid IPv6 address {_quote(host)}") from None
    else:
        if text.count(":") > 1:
            raise Invalid(f'IPv6 addresses must be in brackets, as "[::1]:8080"; got {_quote(text)}')
        host, sep, port_s = text.rpartition(":")
        if not sep:
            raise Invalid(f'expected "HOST:PORT", got {_quote(text)}: the port is required')
        if not host:
            if default_host is None:
                raise Invalid(f'expected "HOST:PORT", got {_quote(text)}: the host is required')
            host = default_host
        elif not _HOSTNAME_RE.match(host):
            raise Invalid(f"invalid host {_quote(host)}")
        elif re.fullmatch(r"[\d.]+", host):
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise Invalid(f"invalid IPv4 address {_quote(host)}") from None
    if not port_s.isdigit() or not 1 <= int(port_s) <= 65535:
        raise Invalid(f"invalid port {_quote(port_s)}: expected 1..65535")
    return host, int(port_s)


def _quote(s: str) -> str:
    """A TOML basic string for ``s`` (also used to quote values in messages)."""
    out = ['"']
    for ch in s:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch in "\n\t\r":
            out.append({"\n": "\\n", "\t": "\\t", "\r": "\\r"}[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


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


def _r_retry_on(v: tuple) -> list:
    return [x if isinstance(x, str) else str(x) for x in v]


def _ciphers(value: Any) -> str:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(_nonempty_str(value))
    except ssl.SSLError:
        raise Invalid(f"OpenSSL accepts no cipher of {_quote(value)}") from None
    return value


def _hsts(value: Any) -> str:
    if not re.fullmatch(r"[\x20-\x7e]+", _nonempty_str(value)) or "max-age=" not in value.lower():
        raise Invalid(f'expected a value such as "max-age=31536000; includeSubDomains", got {_quote(value)}')
    return value


# Renderers: Python value -> TOML value for dump() (None means "omit").
def _r_same(v: Any) -> Any:
    return v


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
# The declarations.

REQUIRED: Any = type("Required", (), {"__repr__": lambda self: "REQUIRED"})()


@dataclass(frozen=True)
class Setting:
    """One key.  ``section`` is a SECTIONS path ("server", "pool.servers");
    ``default`` is written as TOML would ("30s", "auto"), REQUIRED, or None
    for "unset"; ``type`` describes the accepted values for the docs;
    ``reload`` is True when SIGHUP applies a change, False when it needs a
    restart; ``example`` is shown in the docs for REQUIRED/None keys;
    ``when`` = (sibling, value) makes the key valid only when the sibling
    key of the same table has that value (``("type", "http")``)."""

    section: str
    name: str
    type: str
    default: Any
    help: str
    reload: bool
    parse: Callable[[Any], Any] = field(default=_r_same, repr=False, compare=False)
    render: Callable[[Any], Any] = field(default=_r_same, repr=False, compare=False)
    example: Any = None
    when: tuple[str, str] | None = None
    secret: bool = False  # printed as REDACTED by dump (forkproxy -T) unless asked

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


@dataclass(frozen=True)
class Section:
    """The shape of a table of settings.  ``kind``: "table" (one table),
    "array" (array of tables), "named" (table of tables keyed by a name, as
    ``[pool.NAME]``).  A dotted ``path`` is a sub-table under its parent
    section (``pool.servers`` is the ``servers`` key of each pool).  An
    ``optional`` "table" that is absent is None instead of all defaults."""

    path: str
    kind: str
    title: str
    help: str
    required: bool = False
    need: str = ""  # the error when a required section is missing or empty
    optional: bool = False

    @property
    def key(self) -> str:
        return self.path.rpartition(".")[2]

    @property
    def parent(self) -> str | None:
        return self.path.rpartition(".")[0] or None


SECTIONS: tuple[Section, ...] = (
    Section(
        "server",
        "table",
        "[server]",
        "Process-wide settings: workers, client timeouts and limits, logs, files and privileges.",
    ),
    Section(
        "cache",
        "table",
        "[cache]",
        "The shared HTTP cache (RFC 9111, with RFC 9213's CDN-Cache-Control) used by the routes "
        "that set cache = true. "
        "Entries live in memcached, shared by every worker of every forkproxy that names the "
        "same servers, or, with servers = [], in each worker's memory. "
        "The cache fails open: a memcached that is down, slow or frozen makes requests misses "
        "(sent upstream), never errors. "
        "Only responses to GET are stored, and only when the response allows it "
        "(no no-store, no private, explicit freshness or a validator); "
        "HEAD is answered from a stored GET. "
        "The key is the route's cache namespace (see the route's cache_key), the scheme, "
        "the Host and the request target as the client sent it, with its query, before "
        "strip_prefix, add_prefix and rewrite: a response is only ever served by the route "
        "that stored it (or one sharing its cache_key), whatever the rewrites make of the "
        "target; Vary selects a variant. "
        "A response that sets a cookie is not stored (see cache_set_cookie). "
        "Stale entries are revalidated with If-None-Match and If-Modified-Since; "
        "stale-while-revalidate and stale-if-error are honoured. "
        "A successful POST, PUT, DELETE or other unsafe method invalidates the URL and its "
        "Location and Content-Location on the same host. "
        "Concurrent misses for one URL send one request upstream; the others wait for it "
        "(up to lock_timeout). "
        "A PURGE request from an address in purge_allowed deletes a URL in every route that "
        "serves it (PURGE /* every URL of the Host, in every route); forkproxyctl purge does "
        "the same through the admin endpoint.",
    ),
    Section(
        "listener",
        "array",
        "[[listener]]",
        "One table per listening socket. At least one is required.",
        required=True,
        need="no listener: add at least one [[listener]] table with name and bind",
    ),
    Section(
        "listener.tls",
        "table",
        "tls = { ... }",
        "TLS termination with one certificate, as an inline table such as "
        '{ cert = "/etc/forkproxy/tls/site.pem", key = "/etc/forkproxy/tls/site.key" }. '
        "With several certificates use certs instead (not both). "
        "The certificate and key are read when the file is loaded, by the master "
        "(so with its privileges), at start, at forkproxy -t and at every reload: "
        "one that cannot be read or does not match its key is a configuration error, "
        "and a reload with such an error keeps the running certificates. "
        "Clients get ALPN http/1.1 on HTTP listeners, session resumption (tickets and a "
        "session cache, shared by all workers of a generation), and the listener's "
        "tls_min_version and ciphers. "
        "Requests that arrive over TLS are forwarded with X-Forwarded-Proto: https and "
        "Forwarded: proto=https. "
        "A handshake failure, or a client speaking plain HTTP to the port, costs one log "
        "line and the connection. "
        "On a tcp listener the decrypted stream is relayed to the pool.",
        optional=True,
    ),
    Section(
        "listener.certs",
        "array",
        "certs = [{ ... }]",
        "TLS termination with several certificates, as an array of inline tables such as "
        '[{ cert = "a.pem", key = "a.key" }, { cert = "b.pem", key = "b.key" }]. '
        "Each handshake gets the certificate whose names (subjectAltName DNS names, or the "
        "subject's CN when it has none) match the client's SNI name: an exact name first, "
        'then a wildcard "*.example.com" matching one label. '
        "Clients without SNI, or with a name no certificate holds, get the first one. "
        "Everything said of tls applies.",
    ),
    Section(
        "route",
        "array",
        "[[route]]",
        "Routes send each request to a pool. "
        "They are tried in file order and the first whose every condition holds wins. "
        "A route without host, path or listener conditions matches every request. "
        "A request that no route matches is answered 404.",
    ),
    Section(
        "route.deny",
        "array",
        "deny = [{ ... }]",
        "Requests the route refuses, as an array of inline tables such as "
        '[{ path = "/admin/" }, { header = "X-Debug", status = 404 }, '
        '{ query_regex = "(^|&)debug=", methods = ["GET"] }]. '
        "Every condition a rule gives must hold; the first rule that holds answers its "
        "status (403 by default) and nothing goes upstream. "
        "They run after access and methods, and before rate_limit. "
        "Path and query are matched as received, before any rewrite. "
        "Regular expressions are searched (anchor them yourself) with RE2, which matches in "
        "time linear in the input whatever the pattern, and are compiled when the file is "
        "loaded. RE2's syntax is Python's without backreferences, lookaround, conditionals, "
        "atomic groups, possessive quantifiers and (?x); write \\z for \\Z; repetition "
        "counts go up to 1000; \\d, \\w, \\s and \\b are ASCII-only; {,n} is literal "
        "(write {0,n}). forkproxy -t refuses what RE2 cannot compile and says why.",
    ),
    Section(
        "route.rate_limit",
        "table",
        "rate_limit = { ... }",
        "A token bucket per key, as an inline table such as "
        '{ key = "ip", rate = "100r/s", burst = 50 } (nginx\'s limit_req with burst and '
        "nodelay). "
        "A full bucket admits burst requests at once, then one every 1/rate seconds; a "
        "request over the limit is answered 429 with Retry-After (whole seconds, rounded "
        "up) and nothing goes upstream. "
        "The buckets live in shared memory, so the limit holds whichever worker serves "
        "the request (up to one request per worker above it when several workers admit "
        "the same key in the same instant). "
        "Memory is bounded: each worker tracks up to keys keys and forgets the least "
        "recently seen one first. "
        "A reload starts every bucket full again.",
        optional=True,
    ),
    Section(
        "route.rewrite",
        "array",
        "rewrite = [{ ... }]",
        "URL rewrites, as an array of inline tables such as "
        '[{ from = "^/old/(.*)", to = "/new/$1" }], with nginx\'s rewrite semantics: '
        "when the regular expression from is found in the path, the whole path becomes to, "
        "expanded. "
        "Every rule is tried, in order, after strip_prefix and add_prefix, each on the "
        "result of the previous one. "
        'In to, $1..$9 are the groups of from, ${name} or $name a named group or a variable '
        "($remote_addr, $request_id, $route, $host, $scheme, $request_uri, $uri, $args, "
        "$is_args), and $$ a dollar sign; $request_uri and $uri carry the canonical path "
        "(see server.merge_slashes), and a rewritten path is made canonical again. "
        'to must start with "/"; a "?" in it starts a new query that replaces the '
        'request\'s ("/x?" drops it, "/x?a=1&$args" keeps it after a=1); without one the '
        "query is kept. "
        "Regular expressions are checked as in deny.",
    ),
    Section(
        "route.redirect",
        "table",
        "redirect = { ... }",
        "Answer every request of the route with a redirect, as an inline table such as "
        '{ to = "https://www.example.com$request_uri", status = 301 }. '
        "forkproxy answers itself; nothing goes upstream. "
        "to is expanded as in rewrite, after the rewrite steps ($uri and $args are the "
        "rewritten path and query). "
        "A Location that would start with // or /\\ (another host, to a browser) keeps one "
        "slash: GET //evil.example with to = \"$uri/\" is sent to /evil.example/.",
        optional=True,
    ),
    Section(
        "route.request_headers",
        "table",
        "request_headers = { ... }",
        "Header rules for the request sent upstream, as an inline table such as "
        '{ set = { X-Env = "prod" }, add = { X-Client = "$remote_addr" }, remove = ["Cookie"] }. '
        "Fields named in remove or set are removed, then the set fields are added, then "
        "the add fields (a second value even when the field exists). "
        "Values may use $remote_addr (the real client address), $request_id, $route (the "
        "route's index), $host, $scheme and $upstream_addr (the server chosen; empty in "
        "requests). "
        "A field whose value expands to nothing, or to control characters, is left out. "
        "Framing and hop-by-hop fields cannot be changed; Host can only be set (as "
        "host_header does).",
        optional=True,
    ),
    Section(
        "route.response_headers",
        "table",
        "response_headers = { ... }",
        "Header rules for the response sent to the client, as request_headers. "
        "They run after hide_headers and rewrite_location.",
        optional=True,
    ),
    Section(
        "route.compress",
        "table",
        "compress = { ... }",
        "Compress responses of the route on the fly, as an inline table such as "
        '{ types = ["text/html", "application/json"], min_size = "1k", level = 6 } '
        "(an empty table { } takes the defaults). "
        "The coding is chosen from the client's Accept-Encoding, q-values included: "
        "br (brotli, when the Python brotli package is installed) or gzip, brotli first "
        "on a tie. "
        "Bodies are compressed as they stream (never buffered whole) and sent chunked "
        "(to HTTP/1.0 clients: until the connection closes), with Content-Encoding, "
        "a weakened ETag (W/) and without Accept-Ranges. "
        "Every response that could be compressed gets Vary: Accept-Encoding, also when "
        "this client gets it uncompressed. "
        "Left as they are: responses that already have a Content-Encoding, whose type is "
        "not in types, whose Content-Length is below min_size, with "
        "Cache-Control: no-transform, 204, 206 and 304 responses, and answers to HEAD. "
        "Compression is the last step before the client: on a route with cache the cache "
        "stores the representation the server sent, never a compressed copy of ours.",
        optional=True,
    ),
    Section(
        "pool",
        "named",
        "[pool.NAME]",
        "One table per pool of upstream servers, named by NAME. "
        "Routes refer to pools by name.",
    ),
    Section(
        "pool.servers",
        "array",
        "servers = [{ ... }]",
        "The servers of the pool, as an array of inline tables "
        'such as { addr = "10.0.0.11:8080", weight = 2 }. '
        "At least one is required.",
        required=True,
        need='the pool has no servers: add at least one { addr = "HOST:PORT" }',
    ),
    Section(
        "pool.tls",
        "table",
        "tls = { ... } (upstream)",
        "Connect to the servers of the pool over TLS (HTTPS backends), as an inline table "
        'such as { verify = true, ca = "/etc/forkproxy/tls/internal-ca.pem" }. '
        "Without it connections to the servers are plain TCP. "
        'Active checks of such a pool should be { type = "tcp" }: HTTP probes are sent '
        "without TLS.",
        optional=True,
    ),
    Section(
        "pool.health",
        "table",
        "health = { ... }",
        "The active health checks of the pool, as an inline table such as "
        '{ path = "/healthz", interval = "2s", rise = 2, fall = 3 } '
        '(HTTP probes) or { type = "tcp" } (connect only). '
        "Without it the pool has no active checks and only passive checks "
        "(max_fails) take servers out of rotation. "
        "The semantics are HAProxy's: a server goes DOWN after fall consecutive failed "
        "checks and comes back UP after rise consecutive successful ones. "
        "One worker at a time runs the checks of every pool, all servers concurrently, "
        "and shares the results with the others through the health table in "
        "server.runtime_dir, which forkproxyctl status reads.",
        optional=True,
    ),
    Section(
        "pool.sticky",
        "table",
        "sticky = { ... }",
        "Session persistence by cookie, as an inline table such as "
        '{ cookie = "srv", ttl = "1h" }. '
        "The first response to a client carries a Set-Cookie that names the chosen server "
        "by an opaque token (an HMAC of its address, never the address itself). "
        "Later requests that send the cookie go to that server while it is usable, "
        "even while it is in drain; when it is not (down, in maint, out after passive "
        "failures, gone from the pool) the request goes to a fresh choice and the response "
        "carries a new cookie. "
        "Tokens depend only on the server's addr and the key, so they stay valid "
        "across reloads and restarts for servers that stay. "
        "Over a TLS listener the cookie is also Secure and SameSite=Lax. "
        "Stickiness comes before the balance algorithm.",
        optional=True,
    ),
    Section(
        "pool.retry",
        "table",
        "retry = { ... }",
        "Failover of a failed attempt to another server, as an inline table such as "
        '{ tries = 3, timeout = "10s", on = ["error", "timeout", "502", "503", "504"] } '
        "(nginx's proxy_next_upstream, proxy_next_upstream_tries and "
        "proxy_next_upstream_timeout). "
        "A request none of whose bytes reached a server (connection refused, a pooled "
        "connection found closed) is always retried. "
        "Otherwise a request is retried only when its method is idempotent and it has no "
        "body, and only before any byte of the response went to the client: a POST is "
        "never sent twice. "
        "Each server is tried at most once per request (a pooled connection found closed "
        "is retried once on a new connection to the same server). "
        "Every failed attempt also counts as a passive failure (max_fails) of the server it "
        "was made on, but for a pooled connection the server had closed. "
        "The error log says \"(retrying)\" for a failed attempt only when another one follows; "
        "the last one is reported with the answer sent to the client. "
        "Without this table the defaults below apply.",
        optional=True,
    ),
    Section(
        "pool.queue",
        "table",
        "queue = { ... }",
        "Where requests wait when every usable server is at its max_conns, as an inline "
        'table such as { size = 100, timeout = "5s" }. '
        "The queue is per worker: each worker holds up to size waiting requests, served "
        "first come, first served as connections free up in any worker. "
        "A request that finds the queue full, or waits longer than timeout, is answered 503. "
        "Without this table a request that finds every server full is answered 503 at once.",
        optional=True,
    ),
)

_RESTART = False
_RELOAD = True

SETTINGS: tuple[Setting, ...] = (
    # [server]
    Setting("server", "workers", 'integer 1..1024 or "auto"', "auto",
            'Number of worker processes. "auto" uses one per CPU. '
            "The bound keeps a typo from forking a million processes.",
            _RELOAD, _workers),
    Setting("server", "worker_connections", "integer >= 1", 10000,
            "Maximum number of concurrent client connections per worker.",
            _RELOAD, _int(1)),
    Setting("server", "graceful_timeout", "duration", "30s",
            "On reload or graceful stop, how long old workers may take to finish "
            "the requests in flight before they are killed.",
            _RELOAD, _duration(False), _r_duration),
    Setting("server", "keepalive_timeout", "duration", "75s",
            "How long an idle client keep-alive connection is kept open, counted from "
            "its last response. Responses on a kept connection say "
            '"Keep-Alive: timeout=N", N a second less than this (at least 1), so that '
            "clients stop reusing it before forkproxy closes it; a request that arrives as "
            "it runs out is still answered, and the close lingers (forkproxy(8)). "
            '"0s" disables client keep-alive.',
            _RELOAD, _duration(True), _r_duration),
    Setting("server", "header_timeout", "duration", "10s",
            "Total time allowed to receive a request head (request line and headers).",
            _RELOAD, _duration(False), _r_duration),
    Setting("server", "body_timeout", "duration", "60s",
            "Maximum idle time between two reads of a request body.",
            _RELOAD, _duration(False), _r_duration),
    Setting("server", "send_timeout", "duration", "60s",
            "Maximum idle time between two writes to the client.",
            _RELOAD, _duration(False), _r_duration),
    Setting("server", "max_head_size", "size", "32k",
            "Largest request head accepted (request line and headers). "
            "A larger one is answered 431.",
            _RELOAD, _size(1), _r_size),
    Setting("server", "max_headers", "integer >= 1", 100,
            "Largest number of request header fields accepted. "
            "More are answered 431.",
            _RELOAD, _int(1)),
    Setting("server", "max_uri_length", "integer >= 1", 8192,
            "Longest request target accepted, in bytes. "
            "A longer one is answered 414.",
            _RELOAD, _int(1)),
    Setting("server", "merge_slashes", "boolean", True,
            "Merge runs of slashes in request paths into one (//admin/x is /admin/x), as nginx. "
            "Every request path is canonicalised once, before anything looks at it: escapes of "
            "unreserved characters decoded (%61 is a) and other escapes written in uppercase "
            "hex, slashes merged (with this key), dot segments removed (/a/../b and /a/%2e%2e/b "
            "are /b). Routes, access, deny rules, strip_prefix, add_prefix, rewrite, redirect, "
            "explain and the cache all judge that path, and it is the path sent upstream (the "
            "query goes as received; the access log shows the target as received). A path with "
            "malformed percent-encoding (%zz, %2), %00, or a dot segment with parameters "
            "(/..;/) is answered 400. "
            "Other ;parameters are kept as sent: a server that drops them (Tomcat reads "
            "/admin;x/y as /admin/y) needs rules such as path_regex = \"^/admin[/;]\". "
            "With false, //admin/x stays another path than /admin/x, for rules and servers "
            "alike: only for servers that tell them apart.",
            _RELOAD, _bool),
    Setting("server", "encoded_slashes", '"reject" or "pass"', "reject",
            "What an encoded slash or backslash (%2F, %5C) or a raw backslash in a request path "
            'gets. "reject": 400, since no rule can know whether the server behind reads it as '
            'a separator. "pass": kept encoded (%2F, %5C, a raw backslash sent as %5C), never a '
            "separator for a rule: use it only for servers that do not decode them into "
            "separators either.",
            _RELOAD, _enum("encoded_slashes", ("reject", "pass"))),
    Setting("server", "max_body_size", "size", "100m",
            "Largest request body accepted. "
            "A larger one is answered 413. "
            "0 means unlimited. "
            "A route may override it.",
            _RELOAD, _size(0), _r_size),
    Setting("server", "trusted_proxies", "array of addresses or CIDR ranges", [],
            "Peers whose X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host and Forwarded "
            "headers are trusted and extended. "
            "Those headers from any other peer are replaced.",
            _RELOAD, _networks, _r_networks, example=["10.0.0.0/8", "192.0.2.1"]),
    Setting("server", "underscores_in_headers", "boolean", False,
            "Forward request header fields whose names contain an underscore. "
            "Off (as nginx's underscores_in_headers): such fields are dropped before the "
            "request goes upstream, the request itself is served, because CGI, WSGI and "
            "PHP backends read X_Forwarded_For and X-Forwarded-For as the same "
            "HTTP_X_FORWARDED_FOR and a client could pass off its own forwarding headers.",
            _RELOAD, _bool),
    Setting("server", "access", 'array of "allow CIDR" and "deny CIDR"', [],
            "Address access list of every route that sets none, tried in order as nginx's "
            "allow and deny: the first entry that matches the client address decides, and an "
            "address no entry matches is allowed, so an allow list ends with \"deny all\". "
            "CIDR is an IPv4 or IPv6 network, an address, or all. "
            "The client address is the real one (after trusted_proxies). "
            "A refused request is answered 403.",
            _RELOAD, _access_list, _r_list, example=["allow 10.0.0.0/8", "deny all"]),
    Setting("server", "hide_headers", "array of header names", ["Server", "X-Powered-By"],
            "Response header fields of the servers that clients never see, for every route "
            "that sets none, so the software behind forkproxy is not advertised.",
            _RELOAD, _header_names, _r_list),
    Setting("server", "error_pages", 'table of status = "path"', {},
            "Bodies of forkproxy's own error responses (no route, refused, rate limited, "
            "no server, a server that failed) per status, for every route that sets none, "
            'such as { 502 = "/etc/forkproxy/502.html", 503 = "/etc/forkproxy/503.html" }. '
            "The files are read when the configuration is loaded (at most 1m each); their "
            "Content-Type follows the extension (.html, .json, .txt). "
            "Without a page the body is the status line's text: forkproxy's error responses "
            "never name a server or carry a trace.",
            _RELOAD, _error_pages, _r_error_pages, example={"502": "/etc/forkproxy/502.html"}),
    Setting("server", "pidfile", "path", "/run/forkproxy/forkproxy.pid",
            "File where the master writes its process id.",
            _RESTART, _nonempty_str),
    Setting("server", "runtime_dir", "path", "/run/forkproxy",
            "Directory for the shared health table, lock files, the reload status, "
            "sticky.key (the random key of sticky cookies of pools without sticky.secret) "
            "and (in body/, private to the workers) request bodies larger than a route's "
            "request_buffer_memory.",
            _RESTART, _nonempty_str),
    Setting("server", "user", "user name", None,
            "User the workers switch to after the master has bound the listeners, with "
            "its supplementary groups and, unless group is set, its primary group. "
            "Workers import everything they need before the switch; forkproxy -t and "
            "the start check that the user exists, can read Python's library and "
            "forkproxy's modules, can reach the log directories and, with admin, "
            "runtime_dir. "
            "The master hands it the logs, the health table and its admin lock. "
            "Unset: workers keep the master's user.",
            _RESTART, _opt_str, example="forkproxy"),
    Setting("server", "group", "group name", None,
            "Group the workers switch to. "
            "Unset: the primary group of user, or the master's group.",
            _RESTART, _opt_str, example="forkproxy"),
    Setting("server", "error_log", 'path or "-"', "-",
            'Where the error log goes. "-" is standard error. '
            "Besides the daemon's own messages, every request that forkproxy refused "
            "(a malformed request, no route, an access rule, a deny rule, a method, a limit, "
            "the rate limit) or that ended in a 5xx (no server up, a server that failed, "
            "timed out or answered 5xx itself) leaves one line saying why, such as "
            'request ID 192.0.2.7 "GET /api" -> 503: no server up in pool "api", where ID '
            'is the access log\'s request_id ("-" when the head could not be parsed); '
            'a 5xx line ends with where it failed, as [route 2, pool "api", server '
            "10.0.0.11:8080]. These lines are warnings; 500 (a bug in forkproxy) is an error and 408 "
            "(a client too slow to send its head) is info.",
            _RELOAD, _nonempty_str),
    Setting("server", "access_log", 'path, "-" or "off"', "-",
            'Where the access log goes. "-" is standard error and "off" disables it.',
            _RELOAD, _nonempty_str),
    Setting("server", "access_log_format", '"combined" or "json"', "combined",
            "Access log format: the combined format of Apache and nginx, "
            "or one JSON object per line. "
            "The size field of the combined format is bytes_sent, and forkproxy's fields "
            "follow it as name=value (upstream, upstream_status, request_time, upstream_time, "
            "route, pool, cache, request_id, peer). "
            "A JSON line always has the same keys, in this order, null when absent: "
            "time (RFC 3339, local time, such as 2026-11-29T03:13:27+00:00), client (the real "
            "client: the peer, or behind a peer in trusted_proxies the address its "
            "X-Forwarded-For vouches for), request (the request line), method, target, "
            "host (the host the request named, by its Host field or absolute target, "
            "without the port), version, status, bytes_received (the request head and the body "
            "bytes read from the client), bytes_sent (the response head and body written to "
            "it), referer, user_agent, route (its index), pool, upstream (the server that "
            "answered), upstream_status, request_time and upstream_time (seconds), cache "
            "(HIT, MISS, STALE, REVALIDATED, BYPASS or PURGE on cached routes), request_id, "
            "tls_version (such as TLSv1.3), sni (the server name the TLS client sent) and "
            "peer (the address the connection came from, or the one its PROXY header "
            "carried).",
            _RELOAD, _enum("access_log_format", ("combined", "json"))),
    Setting("server", "log_level", '"debug", "info", "warning", "error" or "critical"', "info",
            "Least severe message written to the error log.",
            _RELOAD, _enum("log_level", ("debug", "info", "warning", "error", "critical"))),
    Setting("server", "initial_health", '"up" or "down"', "up",
            "Health state of a server when forkproxy starts, or when a reload adds it. "
            '"up" sends it traffic at once (and active checks take it out if it fails fall of them); '
            '"down" keeps it out of rotation until rise active checks have succeeded, '
            "as HAProxy's init-state down. "
            'A server of a pool without active checks is always "up". '
            "Servers that stay across a reload keep their state.",
            _RELOAD, _enum("initial_health", ("up", "down"))),
    Setting("server", "tunnel_timeout", "duration", "1h",
            "How long a connection switched to another protocol (an HTTP Upgrade such as "
            "WebSocket, answered 101 by the server) may stay without a byte either way "
            "before both sides are closed. "
            "Routes may override it.",
            _RELOAD, _duration(False), _r_duration),
    Setting("server", "admin", '"HOST:PORT"', None,
            "Address of the admin endpoint: GET /status (JSON), GET /metrics (Prometheus "
            "text, summed over every worker) and POST commands (drain, maint, ready, "
            "weight, reload). It has its own listening socket, served by the workers, "
            "and never answers on a listener. Bind it to loopback: on another address "
            "every request needs server.admin_token. Unset: no admin endpoint, and no "
            "request counting (the counters exist for /metrics). "
            "See forkproxy(8).",
            _RESTART, _addr, example="127.0.0.1:9901"),
    Setting("server", "admin_token", "string", None,
            "Secret the admin endpoint requires, as Authorization: Bearer TOKEN, for "
            "every request that changes state (and for every request when server.admin "
            "is not a loopback address). Unset: commands are refused. forkproxyctl "
            "reads it from here or from $FORKPROXY_ADMIN_TOKEN.",
            _RELOAD, _secret_str, example="change-me", secret=True),
    Setting("server", "admin_names", "array of host names", [],
            "Host names the admin endpoint answers to, besides localhost, the name in "
            "server.admin and any IP address. A request with another Host is answered 421, "
            "so a web page that rebinds its own DNS name to the admin address (DNS "
            "rebinding) cannot read /status, /metrics or /explain from a browser. "
            "The port of the Host is not compared (an SSH tunnel changes it).",
            _RELOAD, _host_names, _r_list, example=["forkproxy-admin.internal"]),
    # [cache]
    Setting("cache", "servers", 'array of "HOST:PORT"', [],
            "memcached servers (keys spread by consistent hashing). "
            "Empty: an in-process cache per worker, bounded by memory_size, with the same "
            "semantics (hits, coalescing and purges are then per worker).",
            _RELOAD, _addrs, _r_list, example=["127.0.0.1:11211"]),
    Setting("cache", "max_object_size", "size", "8m",
            "Largest response body stored. "
            "Bodies larger than one memcached item are stored in chunks. "
            "A larger response is passed through uncached, without being buffered.",
            _RELOAD, _size(1), _r_size),
    Setting("cache", "memory_size", "size", "64m",
            "Bytes of each worker's in-process cache. With servers = [], it is the whole cache. "
            "With memcached, it holds near copies of entries read from memcached, so a hot URL "
            "costs each worker two memcached round trips a second, not one per hit: a copy is "
            "used for at most 0.5 s, and never after any worker of this forkproxy stored, "
            "deleted or purged its URL (a change made by another forkproxy sharing the servers "
            "is seen within 0.5 s; a host purge within 1 s).",
            _RELOAD, _size(1024), _r_size),
    Setting("cache", "mode", '"direct" or "threadpool"', "direct",
            "How memcached is called: on the worker's event loop, bounded by timeout "
            "(the cheapest hits; a frozen memcached stalls a worker for at most timeout before "
            "the breaker opens), or in a thread pool (the loop never stalls, every call costs "
            "a thread hand-off; for memcached across a slow network).",
            _RELOAD, _enum("mode", ("direct", "threadpool"))),
    Setting("cache", "timeout", "duration", "30ms",
            "Connect, send, receive and poll timeout of every memcached call.",
            _RELOAD, _duration(False), _r_duration),
    Setting("cache", "breaker_failures", "integer 1..1000", 3,
            "memcached errors, timeouts or slow calls (longer than timeout, and than 100ms) "
            "within breaker_window that open the circuit breaker: "
            "the cache is then bypassed (every request a miss, no memcached call) for "
            "breaker_cooldown, after which one probe call decides whether to close it. "
            "One call longer than three timeouts (and than 250ms) opens it at once. "
            "Each opening and closing is logged to server.error_log "
            '("memcached ... breaker open", "... breaker closed").',
            _RELOAD, _int(1, 1000)),
    Setting("cache", "breaker_window", "duration", "10s",
            "Window in which breaker_failures are counted.",
            _RELOAD, _duration(False), _r_duration),
    Setting("cache", "breaker_cooldown", "duration", "2s",
            "How long an open breaker bypasses memcached before probing it again.",
            _RELOAD, _duration(False), _r_duration),
    Setting("cache", "lock_timeout", "duration", "5s",
            "Request coalescing: concurrent misses for one URL, in any worker of any forkproxy "
            "sharing the memcached servers, send one request upstream; the others wait up to "
            "this long for its response to be stored, then go upstream themselves. "
            "Also the lifetime of the lock, should its holder die.",
            _RELOAD, _duration(False), _r_duration),
    Setting("cache", "heuristic_max", "duration", "1h",
            "Upper bound of the heuristic freshness (10% of the time since Last-Modified) "
            "given to responses without explicit freshness. "
            '"0s" disables heuristic freshness.',
            _RELOAD, _duration(True), _r_duration),
    Setting("cache", "cdn_cache_control", "header name", "CDN-Cache-Control",
            "Targeted cache-control field (RFC 9213) that overrides Cache-Control and Expires "
            'for forkproxy when present and valid. "" obeys Cache-Control only.',
            _RELOAD, _opt_header_name),
    Setting("cache", "header", "header name", "X-Cache",
            "Response header telling the client how the cache served it: HIT, MISS, STALE, "
            'REVALIDATED or BYPASS. "" sends none. '
            "The access log records the same status.",
            _RELOAD, _opt_header_name),
    Setting("cache", "purge_allowed", "array of addresses or CIDR ranges", [],
            "Clients allowed to send PURGE requests: the client's address as the access "
            "rules see it, the one X-Forwarded-For gives when the connection comes from "
            "server.trusted_proxies, never a trusted proxy's own. "
            "A PURGE from any other address is answered 403; "
            "empty (the default): every PURGE is refused, and purges go through the admin "
            "endpoint (forkproxyctl purge with server.admin and admin_token). "
            "Without the admin endpoint, forkproxyctl purge sends PURGE from 127.0.0.1, which "
            'then needs "127.0.0.1" here. '
            "A PURGE of a URL deletes it in every route that serves it, on any listener. "
            "A purge takes effect at once in every worker of the forkproxy that took it. "
            "In a forkproxy sharing the memcached servers, a purge of a URL takes effect "
            "within 0.5 s (its workers' near copies, see memory_size), and a purge of a whole "
            "host (PURGE /*, forkproxyctl purge --host) within 1 s (each worker keeps the "
            "host's key token for 1 s, to save a memcached round trip per hit).",
            _RELOAD, _networks, _r_networks),
    # [[listener]]
    Setting("listener", "name", "name", REQUIRED,
            "Unique name of the listener, used by routes and in logs.",
            _RESTART, _name, example="web"),
    Setting("listener", "bind", '"HOST:PORT", "[IPv6]:PORT" or ":PORT"', REQUIRED,
            'Address to listen on. ":PORT" listens on every IPv4 address. '
            "Each bind must be unique.",
            _RESTART, _bind, example="0.0.0.0:80"),
    Setting("listener", "mode", '"http" or "tcp"', "http",
            '"http" proxies HTTP/1.1 requests along the routes. '
            '"tcp" (Layer 4) relays every connection byte for byte to a server of the '
            "listener's pool, chosen by the pool's balance, with its active checks, passive "
            "failures on connect errors and a connect retry to another server; "
            "a half-close is passed on in both directions. "
            "Routes do not apply to tcp listeners.",
            _RELOAD, _enum("mode", ("http", "tcp"))),
    Setting("listener", "pool", "pool name", None,
            "The pool a tcp listener relays its connections to. Required with mode = \"tcp\".",
            _RELOAD, _name, example="db", when=("mode", "tcp")),
    Setting("listener", "idle_timeout", "duration", "10m",
            "A tcp listener's connection is closed after this long without a byte in "
            "either direction, as nginx's proxy_timeout and HAProxy's timeout tunnel.",
            _RELOAD, _duration(False), _r_duration, when=("mode", "tcp")),
    Setting("listener", "max_conns_per_ip", "integer 0..1000000", 0,
            "Most connections open at once from one client address on this listener, "
            "counted over every worker; an extra one is closed as soon as it is accepted. "
            "The address is the peer's (behind accept_proxy, the load balancer's). "
            "0: no limit.",
            _RELOAD, _int(0, 1000000)),
    Setting("listener", "accept_proxy", "boolean", False,
            "Every connection starts with a PROXY protocol header (v1 or v2, as HAProxy's "
            "accept-proxy) from a trusted load balancer in front: the client address it "
            "carries replaces the peer's in logs, forwarding headers and PROXY headers sent "
            "on. A connection without a valid header is closed. "
            "Only peers in proxy_protocol_from may connect (loopback unless told): "
            "give the load balancers' addresses there.",
            _RELOAD, _bool),
    Setting("listener", "proxy_protocol_from", "array of addresses or CIDR ranges",
            ["127.0.0.0/8", "::1/128"],
            "With accept_proxy, the peers whose PROXY headers are believed, as nginx's "
            "set_real_ip_from: a connection from any other address is closed before a "
            "byte is read, with a warning in the error log, so a client that reaches the "
            "listener directly cannot choose its own address. "
            "HAProxy's accept-proxy believes every peer; [\"0.0.0.0/0\", \"::/0\"] does the same.",
            _RELOAD, _networks, _r_networks, example=["10.0.0.0/24"]),
    Setting("listener", "tls_min_version", '"1.0", "1.1", "1.2" or "1.3"', "1.2",
            "Oldest TLS version accepted from clients on a TLS listener. "
            "OpenSSL's security level may refuse 1.0 and 1.1 even when allowed here.",
            _RELOAD, _enum("tls_min_version", ("1.0", "1.1", "1.2", "1.3"))),
    Setting("listener", "ciphers", "OpenSSL cipher list", DEFAULT_CIPHERS,
            "TLS 1.2 and older cipher suites offered on a TLS listener, in OpenSSL's "
            "syntax, server preference first. "
            "The default is Mozilla's intermediate list (forward secrecy and AEAD only). "
            "TLS 1.3 suites are OpenSSL's defaults.",
            _RELOAD, _ciphers),
    # tls = { ... } and certs = [{ ... }]
    Setting("listener.tls", "cert", "path", REQUIRED,
            "PEM file with the certificate, followed by its intermediates.",
            _RELOAD, _nonempty_str, example="/etc/forkproxy/tls/site.pem"),
    Setting("listener.tls", "key", "path", REQUIRED,
            "PEM file with the private key of cert (unencrypted).",
            _RELOAD, _nonempty_str, example="/etc/forkproxy/tls/site.key"),
    Setting("listener.certs", "cert", "path", REQUIRED,
            "PEM file with the certificate, followed by its intermediates.",
            _RELOAD, _nonempty_str, example="/etc/forkproxy/tls/site.pem"),
    Setting("listener.certs", "key", "path", REQUIRED,
            "PEM file with the private key of cert (unencrypted).",
            _RELOAD, _nonempty_str, example="/etc/forkproxy/tls/site.key"),
    # [[route]]
    Setting("route", "pool", "pool name", REQUIRED,
            "The pool that serves the requests this route matches. It must exist.",
            _RELOAD, _str, example="web"),
    Setting("route", "listener", "listener name or array of names", [],
            "Match only requests that arrived on one of these listeners. "
            "Empty: any listener.",
            _RELOAD, _listener_names, _r_list, example=["web"]),
    Setting("route", "host", "host name", None,
            'Match only this Host, exactly, or any subdomain with "*.example.com" '
            "(not example.com itself). "
            "Compared without case and without port.",
            _RELOAD, _route_host, example="shop.example.com"),
    Setting("route", "path", "path prefix", None,
            'Match only paths starting with this prefix, which must start with "/". '
            'Write "/api/" to match /api/x but not /apix. '
            "Exclusive with path_regex. "
            "Compared with the canonical path (see server.merge_slashes).",
            _RELOAD, _rule_path, example="/api/"),
    Setting("route", "path_regex", "regular expression", None,
            "Match only paths where this regular expression (RE2, as in route.deny) is found. "
            'Anchor it with "^" yourself. '
            "Exclusive with path. "
            "The path is the canonical one (see server.merge_slashes): no dot segments, "
            "escapes of other than unreserved characters in uppercase hex.",
            _RELOAD, _regex, example="^/(img|css)/"),
    Setting("route", "host_header", "host name", None,
            "Host header sent upstream instead of the client's.",
            _RELOAD, _header_value, example="backend.internal"),
    Setting("route", "max_body_size", "size", None,
            "Overrides server.max_body_size for this route.",
            _RELOAD, _size(0), _r_size, example="1g"),
    Setting("route", "access", 'array of "allow CIDR" and "deny CIDR"', None,
            "Overrides server.access for this route ([] allows every address).",
            _RELOAD, _access_list, _r_opt_list, example=["allow 192.0.2.0/24", "deny all"]),
    Setting("route", "methods", "array of method names", None,
            "The only methods the route accepts; any other is answered 405 with an Allow "
            "header. Allowing GET allows HEAD. Unset: every method.",
            _RELOAD, _methods, _r_opt_list, example=["GET", "POST"]),
    Setting("route", "strip_prefix", "path prefix", None,
            "Removed from the start of the path before the request goes upstream, at a "
            'segment boundary: "/api" turns /api/x into /x and /api into /, not /apix.',
            _RELOAD, _prefix, example="/api"),
    Setting("route", "add_prefix", "path prefix", None,
            "Put in front of the path (after strip_prefix): \"/v2\" turns /x into /v2/x.",
            _RELOAD, _prefix, example="/v2"),
    Setting("route", "hide_headers", "array of header names", None,
            "Overrides server.hide_headers for this route.",
            _RELOAD, _header_names, _r_opt_list, example=["Server", "X-Powered-By", "X-Runtime"]),
    Setting("route", "error_pages", 'table of status = "path"', None,
            "Overrides server.error_pages for this route.",
            _RELOAD, _error_pages, _r_error_pages, example={"503": "/etc/forkproxy/maint.html"}),
    Setting("route", "rewrite_location", "boolean", True,
            "Rewrite Location and Refresh response headers that point at the server's "
            "address (or at host_header) to the host the client asked for, and drop the "
            "Domain attribute of Set-Cookie headers that name the server's address, as "
            "nginx's proxy_redirect default and proxy_cookie_domain.",
            _RELOAD, _bool),
    Setting("route", "body_timeout", "duration", None,
            "Overrides server.body_timeout for this route.",
            _RELOAD, _duration(False), _r_opt_duration, example="10s"),
    Setting("route", "max_uri_length", "integer >= 1", None,
            "Lower limit than server.max_uri_length for this route (answered 414); the "
            "request head is read before routing, so the server's limit applies first.",
            _RELOAD, _int(1), example=1024),
    Setting("route", "max_headers", "integer >= 1", None,
            "Lower limit than server.max_headers for this route (answered 431).",
            _RELOAD, _int(1), example=50),
    # deny = [{ ... }]
    Setting("route.deny", "path", "path prefix", None,
            "The path starts with this prefix (the canonical path: see server.merge_slashes).",
            _RELOAD, _rule_path, example="/admin/"),
    Setting("route.deny", "path_regex", "regular expression", None,
            "The regular expression is found in the path.",
            _RELOAD, _regex, example="\\.(git|env)(/|$)"),
    Setting("route.deny", "query_regex", "regular expression", None,
            "The regular expression is found in the query (the part after ?, empty when none).",
            _RELOAD, _regex, example="(^|&)debug="),
    Setting("route.deny", "header", "header name", None,
            "The request has this header field.",
            _RELOAD, _cookie_name, example="X-Debug"),
    Setting("route.deny", "header_regex", "regular expression", None,
            "With header: one of its values matches this regular expression.",
            _RELOAD, _regex, example="(?i)sqlmap"),
    Setting("route.deny", "methods", "array of method names", [],
            "The request method is one of these. Empty: any method.",
            _RELOAD, _methods_or_none, _r_list, example=["POST"]),
    Setting("route.deny", "status", "integer 400..599", 403,
            "The status of the answer.",
            _RELOAD, _int(400, 599)),
    # rate_limit = { ... }
    Setting("route.rate_limit", "rate", '"Nr/s", "Nr/m" or "Nr/h"', REQUIRED,
            "Sustained rate allowed per key.",
            _RELOAD, _rate, example="100r/s"),
    Setting("route.rate_limit", "key", '"ip" or "header:NAME"', "ip",
            "What a bucket belongs to: the real client address, or the value of a request "
            "header (requests without it are keyed by the client address).",
            _RELOAD, _rate_key),
    Setting("route.rate_limit", "burst", "integer 1..1000000", 1,
            "Requests a full bucket admits at once.",
            _RELOAD, _int(1, 1000000)),
    Setting("route.rate_limit", "keys", "integer 16..10000000", 10000,
            "Keys each worker tracks (32 bytes per key and worker slot).",
            _RELOAD, _int(16, 10000000)),
    # rewrite = [{ ... }]
    Setting("route.rewrite", "from", "regular expression", REQUIRED,
            "Searched in the path.",
            _RELOAD, _regex, example="^/old/(.*)"),
    Setting("route.rewrite", "to", "path template", REQUIRED,
            "The new path (and optionally query).",
            _RELOAD, _str, example="/new/$1"),
    # redirect = { ... }
    Setting("route.redirect", "to", "URL template", REQUIRED,
            "The Location of the answer.",
            _RELOAD, _nonempty_str, example="https://example.com$request_uri"),
    Setting("route.redirect", "status", "301, 302, 303, 307 or 308", 302,
            "The status of the answer.",
            _RELOAD, _int(301, 308)),
    # request_headers and response_headers = { ... }
    Setting("route.request_headers", "set", "table of name = value", {},
            "Fields replaced (or added when absent).",
            _RELOAD, _header_table, _r_table),
    Setting("route.request_headers", "add", "table of name = value", {},
            "Fields added.",
            _RELOAD, _header_table, _r_table),
    Setting("route.request_headers", "remove", "array of header names", [],
            "Fields removed.",
            _RELOAD, _header_names, _r_list),
    Setting("route.response_headers", "set", "table of name = value", {},
            "Fields replaced (or added when absent).",
            _RELOAD, _header_table, _r_table),
    Setting("route.response_headers", "add", "table of name = value", {},
            "Fields added.",
            _RELOAD, _header_table, _r_table),
    Setting("route.response_headers", "remove", "array of header names", [],
            "Fields removed.",
            _RELOAD, _header_names, _r_list),
    Setting("route", "redirect_https", "boolean", False,
            "Answer requests that arrived without TLS with a 308 redirect to the same URL "
            "over https, as nginx's return 308 https://$host$request_uri. "
            "The port is that of the first TLS listener the route accepts, left out when it "
            "is 443.",
            _RELOAD, _bool),
    Setting("route", "hsts", "Strict-Transport-Security value", None,
            "Add a Strict-Transport-Security header with this value to responses sent over "
            "TLS (never over plain HTTP, as RFC 6797 says).",
            _RELOAD, _hsts, example="max-age=31536000; includeSubDomains"),
    Setting("route", "cache", "boolean", False,
            "Serve this route's GET and HEAD requests through the shared cache ([cache]). "
            "Unsafe methods (POST, PUT, DELETE...) on the route still invalidate what the "
            "cache holds for their URL. "
            "The cache stores the origin's response; hits go out through the route's "
            "hide_headers, response_headers, rewrite_location and compress like any "
            "other response.",
            _RELOAD, _bool),
    Setting("route", "cache_key", "name", None,
            "The route's cache namespace: responses are stored and found under it, so no "
            "other route ever serves them. "
            "Routes that set the same name share their entries, on purpose (two listeners' "
            "routes to one pool, say). "
            "Unset: a digest of what makes the route (its listener list, host, path or "
            "path_regex, pool, strip_prefix, add_prefix, rewrite, host_header and "
            "request_headers), which stays the same across reloads as long as those do, so a "
            "reload keeps the route's entries; changing one of them starts the route on an "
            "empty cache. "
            "Two routes never share by default: routes with the same listeners, host and "
            "path could not both be reached. "
            "A purge of a URL (PURGE, forkproxyctl purge) deletes it in every route that a "
            "request for it reaches on any listener; a purge of a host, in every route.",
            _RELOAD, _name, example="shop"),
    Setting("route", "cache_set_cookie", '"no-store" or "strip"', "no-store",
            "What the cache does with a response that sets a cookie (Set-Cookie), which "
            "would hand one client's cookie to the next: not store it "
            "(nginx's and Varnish's default), or store it without its Set-Cookie (as "
            "Varnish's unset beresp.http.Set-Cookie); the client whose request fetched it "
            "still gets its cookie. "
            'A response with Cache-Control: private="Set-Cookie" (RFC 9111 5.2.2.7) is '
            "stored without it either way; any other field a qualified private names is "
            "never stored either.",
            _RELOAD, _set_cookie_mode),
    Setting("route", "request_buffering", "boolean", True,
            "Read a request's whole body before choosing a server, as nginx's "
            "proxy_request_buffering (on by default there too): a client that sends its body "
            "slowly then holds no server, a body that does not come in time never reaches "
            "one, and an idempotent request with a body (PUT, DELETE) may be retried on "
            "another server. The body goes upstream with a Content-Length, a chunked one "
            "too. When buffering, an Expect: 100-continue is answered by forkproxy. false "
            "streams the body to the server as it comes (uploads larger than a server "
            "should wait for, or that it answers before their end).",
            _RELOAD, _bool),
    Setting("route", "request_buffer_memory", "size", "64k",
            "How much of a buffered request body is kept in memory; the rest of a larger "
            "one goes to a file in server.runtime_dir, removed from the directory as soon "
            "as it is opened (nginx's client_body_buffer_size).",
            _RELOAD, _size(0), _r_size),
    Setting("route", "request_buffer_timeout", "duration", "5m",
            "Total time allowed to receive a buffered request body, from the end of its "
            "head; past it the request is answered 408 and reaches no server. "
            "body_timeout still bounds each wait between two reads.",
            _RELOAD, _duration(False), _r_duration),
    Setting("route", "tunnel_timeout", "duration", None,
            "Overrides server.tunnel_timeout for this route.",
            _RELOAD, _duration(False), _r_opt_duration, example="10m"),
    Setting("route", "upgrade", "array of protocol names", ["websocket"],
            "Protocols a request may switch to with Upgrade (a tunnel once the server "
            "answers 101), compared by name without case or version. A request asking for "
            "another one (such as h2c) goes upstream as a plain request without its "
            "Upgrade, as nginx does for every Upgrade unless told to pass it; [] allows "
            "none.",
            _RELOAD, _protocol_names, _r_list),
    Setting("route.compress", "types", "array of media types", list(DEFAULT_COMPRESS_TYPES),
            'Media types to compress (the Content-Type without parameters): "text/html", '
            '"text/*" for a whole family, or "*" for every type. '
            "Responses without a Content-Type are never compressed.",
            _RELOAD, _media_types, _r_list),
    Setting("route.compress", "min_size", "size", "1k",
            "Responses whose Content-Length is below this are sent uncompressed "
            "(gzip would save little and cost a header). "
            "Responses of unknown length (chunked) are compressed.",
            _RELOAD, _size(0), _r_size),
    Setting("route.compress", "level", "integer 1..9", 6,
            "Compression level, gzip's scale: 1 is fastest, 9 smallest. "
            "Brotli uses a quality of similar cost.",
            _RELOAD, _int(1, 9)),
    # [pool.NAME]
    Setting("pool", "balance", '"round_robin", "least_conn", "ip_hash", "hash" or "random2"',
            "round_robin",
            "How requests are spread over the servers. "
            "Every algorithm honours weight, skips servers that are down, in drain or maint, "
            "out after passive failures or at max_conns, and uses backup servers only when "
            "no other server is usable. "
            "round_robin: nginx's smooth weighted round robin. "
            "least_conn: the fewest requests in flight divided by weight, counted over all "
            "workers through the health table; ties are broken by round robin. "
            "ip_hash: the client's IPv4 /24 or IPv6 /64 picks the server, as nginx's ip_hash; "
            "stable while the pool is unchanged. "
            "hash: consistent hashing of hash_key with hash_method; adding or removing one "
            "of N servers moves about 1/N of the keys, and the keys of a server that is not "
            "usable go to the next choice only; a request without the key is balanced round "
            "robin. "
            "random2: power of two random choices, the one with fewer requests in flight "
            "per weight.",
            _RELOAD, _enum("balance", ("round_robin", "least_conn", "ip_hash", "hash", "random2"))),
    Setting("pool", "hash_key", '"uri", "header:NAME", "cookie:NAME" or "query:NAME"', "uri",
            "What balance = \"hash\" hashes: the request target with its query (uri), "
            "a request header, a cookie, or a query parameter.",
            _RELOAD, _hash_key, when=("balance", "hash")),
    Setting("pool", "hash_method", '"ketama" or "maglev"', "ketama",
            "The consistent hash of balance = \"hash\": a ketama ring (libketama's: md5, "
            "160 points per weight unit) or a Maglev lookup table (even spread, faster "
            "lookups, slightly more keys move when the pool changes).",
            _RELOAD, _enum("hash_method", ("ketama", "maglev")), when=("balance", "hash")),
    Setting("pool", "proxy_protocol", '"v1" or "v2"', None,
            "Start every connection to a server with a PROXY protocol header of this "
            "version (HAProxy's send-proxy and send-proxy-v2), so the server sees the "
            "client's address. Only for pools of tcp listeners: a route cannot use such a "
            "pool. Unset: no header.",
            _RELOAD, _enum("proxy_protocol", ("v1", "v2")), example="v2"),
    Setting("pool", "connect_timeout", "duration", "5s",
            "Time allowed to connect to a server.",
            _RELOAD, _duration(False), _r_duration),
    Setting("pool", "read_timeout", "duration", "60s",
            "Time allowed for a server's response head, from the request sent (each attempt "
            "has its own: a retry starts with the whole of it), then the maximum idle time "
            "between two reads of the response body. "
            "An idempotent request without a body that times out before the response head "
            "moves to another server (retry.on).",
            _RELOAD, _duration(False), _r_duration),
    Setting("pool", "send_timeout", "duration", "60s",
            "Maximum idle time between two writes to a server.",
            _RELOAD, _duration(False), _r_duration),
    Setting("pool", "keepalive", "integer >= 0", 32,
            "Idle connections kept open per server and per worker for reuse. "
            "0 disables reuse.",
            _RELOAD, _int(0)),
    Setting("pool", "keepalive_timeout", "duration", "60s",
            "How long an idle upstream connection is kept for reuse.",
            _RELOAD, _duration(True), _r_duration),
    Setting("pool", "max_fails", "integer 0..1000", 1,
            "Passive checks, as nginx's max_fails: this many failures of a server within "
            "fail_timeout, counted over all workers, take it out of rotation for fail_timeout. "
            "A failure is a connect error, a timeout, or a response whose status is in fail_status. "
            "When the pool has active checks, one successful check brings the server back earlier. "
            "A failure is charged only to the server that failed, never to the one a request "
            "is then retried on. "
            "max_ejection_percent caps how many servers this takes out: a pool of one server is "
            "never taken out (nginx's rule), but its failures are counted and shown "
            "(forkproxyctl status, the admin status page). "
            "0 disables passive checks.",
            _RELOAD, _int(0, 1000)),
    Setting("pool", "max_ejection_percent", "integer 0..100", 50,
            "At most this share of the pool's servers (counted among those its active checks "
            "and admin state let take requests, rounded down) is out of rotation by max_fails "
            "at a time, as Envoy's max_ejection_percent; the servers with the most failures go "
            "first, the others keep taking requests, as nginx keeps using its servers when "
            "every one of them failed. "
            "Below 100 a pool therefore always keeps a server in rotation whatever its "
            "passive failures (with 3 servers and 50, at most one is out); 100 lets max_fails "
            "take out every server (then requests get 503 until fail_timeout passes); "
            "0 counts and shows failures but takes no server out. "
            "Active checks are not capped: a server they mark DOWN is out.",
            _RELOAD, _int(0, 100)),
    Setting("pool", "fail_timeout", "duration", "10s",
            "As nginx's fail_timeout: both the window in which max_fails failures are counted "
            "and how long the server then stays out of rotation.",
            _RELOAD, _duration(False), _r_duration),
    Setting("pool", "fail_status", "array of status codes 500..599", [],
            "Response statuses that count as passive failures, as nginx's proxy_next_upstream "
            "http_500, http_502, http_503, http_504. "
            "The response is still relayed to the client. "
            "Empty: only connect errors and timeouts count.",
            _RELOAD, _fail_status, _r_list, example=[502, 503, 504]),
    Setting("pool", "slow_start", "duration", "0s",
            "As HAProxy's slowstart: when a server comes back UP or ready, its weight ramps "
            "linearly from almost nothing to its full value over this time. "
            '"0s" disables it.',
            _RELOAD, _duration(True), _r_duration),
    # servers = [{ ... }]
    Setting("pool.servers", "addr", '"HOST:PORT" or "[IPv6]:PORT"', REQUIRED,
            "Address of the server. The port is required. Each address once per pool "
            "(a name that does not resolve is only a warning of forkproxy -t).",
            _RELOAD, _addr, example="127.0.0.1:8080"),
    Setting("pool.servers", "weight", "integer 1..1000", 1,
            "Relative share of requests the server receives.",
            _RELOAD, _int(1, 1000)),
    Setting("pool.servers", "backup", "boolean", False,
            "A backup server receives requests only when no other server of the pool is available.",
            _RELOAD, _bool),
    Setting("pool.servers", "max_conns", "integer 0..100000", 0,
            "Most requests in flight to the server, counted over all workers through the "
            "health table; beyond it the server is skipped (see queue). "
            "Workers read each other's counts, so under a burst the limit can be exceeded by "
            "a few requests. "
            "0: no limit.",
            _RELOAD, _int(0, 100000)),
    # tls = { ... } of a pool
    Setting("pool.tls", "verify", "boolean", True,
            "Check the server's certificate against ca and the name sni. "
            "false accepts any certificate (encryption without authentication).",
            _RELOAD, _bool),
    Setting("pool.tls", "ca", "path", None,
            "PEM file of the CA certificates that sign the servers' certificates. "
            "Unset: the system's trusted CAs. It is read when the file is loaded.",
            _RELOAD, _nonempty_str, example="/etc/forkproxy/tls/internal-ca.pem"),
    Setting("pool.tls", "sni", "host name", None,
            "Server name sent in the TLS handshake and checked against the certificate. "
            "Unset: the host of the server's addr.",
            _RELOAD, _header_value, example="backend.internal"),
    # health = { ... }
    Setting("pool.health", "type", '"http" or "tcp"', "http",
            '"http" sends an HTTP/1.1 request and checks the response, as HAProxy\'s option httpchk. '
            '"tcp" only opens a connection, as HAProxy\'s plain check.',
            _RELOAD, _enum("type", ("http", "tcp"))),
    Setting("pool.health", "path", "path", "/",
            'Request target of the probe, as in HAProxy\'s option httpchk GET /healthz. '
            'It must start with "/" and may carry a query.',
            _RELOAD, _probe_path, when=("type", "http")),
    Setting("pool.health", "method", '"GET", "HEAD" or "OPTIONS"', "GET",
            "Method of the probe.",
            _RELOAD, _enum("method", ("GET", "HEAD", "OPTIONS")), when=("type", "http")),
    Setting("pool.health", "expect_status", 'array of status codes and "LO-HI" ranges', ["200-399"],
            "Statuses that make a probe succeed, as HAProxy's http-check expect status: "
            'codes 100..599 and inclusive ranges such as [200, "300-399"]. '
            "Any other status is a failure.",
            _RELOAD, _status_ranges, _r_status, when=("type", "http")),
    Setting("pool.health", "expect_body", "regular expression", None,
            "When set, a probe also needs this regular expression (RE2, as in route.deny) "
            "to be found in the "
            "first 64 KiB of the response body, as HAProxy's http-check expect rstring. "
            "It is compiled when the file is loaded.",
            _RELOAD, _regex, example="\"status\":\\s*\"ok\"", when=("type", "http")),
    Setting("pool.health", "host", "Host header value", None,
            "Host header of the probes. "
            "Unset: the server's addr as written in servers.",
            _RELOAD, _header_value, example="health.internal", when=("type", "http")),
    Setting("pool.health", "interval", "duration", "2s",
            "Time between the starts of two checks of a server, as HAProxy's inter: "
            "a check that takes long does not delay the next one (it starts at once when "
            "the last one took longer than this). "
            "So a server that accepts connections and never answers is DOWN within "
            "about (fall - 1) x interval + timeout.",
            _RELOAD, _duration(False), _r_duration),
    Setting("pool.health", "timeout", "duration", "1s",
            "Time allowed for one check (connect, and for HTTP the whole response), "
            "as HAProxy's timeout check. "
            "A check that takes longer fails.",
            _RELOAD, _duration(False), _r_duration),
    Setting("pool.health", "rise", "integer 1..100", 2,
            "Consecutive successful checks that bring a DOWN server UP, as HAProxy's rise.",
            _RELOAD, _int(1, 100)),
    Setting("pool.health", "fall", "integer 1..100", 3,
            "Consecutive failed checks that take an UP server DOWN, as HAProxy's fall.",
            _RELOAD, _int(1, 100)),
    Setting("pool.health", "fastinter", "duration", None,
            "Interval while a server is changing state (some but not yet rise or fall checks "
            "in a row), as HAProxy's fastinter. "
            "Unset: interval.",
            _RELOAD, _duration(False), _r_opt_duration, example="500ms"),
    Setting("pool.health", "downinter", "duration", None,
            "Interval while a server is DOWN, as HAProxy's downinter. "
            "Unset: interval.",
            _RELOAD, _duration(False), _r_opt_duration, example="5s"),
    # sticky = { ... }
    Setting("pool.sticky", "cookie", "cookie name", "fp_srv",
            "Name of the cookie.",
            _RELOAD, _cookie_name),
    Setting("pool.sticky", "ttl", "duration", "0s",
            "Max-Age of the cookie. "
            '"0s" makes a session cookie, dropped when the browser closes.',
            _RELOAD, _duration(True), _r_duration),
    Setting("pool.sticky", "secret", "string", None,
            "Key of the HMAC that turns a server's addr into its token. "
            "Give every forkproxy that must honour the same cookies the same secret. "
            "Unset: the key is derived from the pool name and a random key the master makes "
            "at its first start and keeps in server.runtime_dir/sticky.key (mode 0600), so "
            "tokens stay valid across reloads, restarts and upgrades of this forkproxy, but "
            "not on other machines, nor after that file is lost (as /run is at boot). "
            "Changing it invalidates every cookie once (clients get a fresh choice).",
            _RELOAD, _secret_str, example="a long random string", secret=True),
    # retry = { ... }
    Setting("pool.retry", "tries", "integer 0..100", 0,
            "Most attempts per request, the first included, as nginx's "
            "proxy_next_upstream_tries. "
            "0: each usable server of the pool at most once.",
            _RELOAD, _int(0, 100)),
    Setting("pool.retry", "timeout", "duration", "0s",
            "No new attempt starts once this much time has passed since the first one, as "
            "nginx's proxy_next_upstream_timeout: the request's overall limit on failing over. "
            "An attempt that starts gets its whole connect_timeout, send_timeout and "
            "read_timeout. "
            '"0s": no limit.',
            _RELOAD, _duration(True), _r_duration),
    Setting("pool.retry", "on", 'array of "error", "timeout" and status codes', ["error", "timeout"],
            "Which failures of an idempotent request without a body move it to another server: "
            '"error" (connection reset or closed, or an invalid response, before the response '
            'head), "timeout" (connect or read timeout before the response head), and response '
            'statuses 500..599 such as "502", "503", "504" (the response is discarded only when '
            "another server is left to try; otherwise it is relayed). "
            "Failures before any byte was sent are retried whatever this says.",
            _RELOAD, _retry_on, _r_retry_on),
    # queue = { ... }
    Setting("pool.queue", "size", "integer 1..100000", 100,
            "Most requests waiting in the queue of one worker.",
            _RELOAD, _int(1, 100000)),
    Setting("pool.queue", "timeout", "duration", "10s",
            "Longest wait in the queue before the request is answered 503.",
            _RELOAD, _duration(False), _r_duration),
)


# ---------------------------------------------------------------------------
# Builders: the values of one table (parsed, keyed by setting name) -> its
# dataclass.  They also run the checks that involve several keys of one table.
# ``err(path, message)`` records an error.

Path = tuple  # of str and int segments, e.g. ("pool", "api", "servers", 1, "weight")


def _build_server(values: dict, path: Path, err) -> ServerConfig:
    return ServerConfig(**values)


def _build_cache(values: dict, path: Path, err) -> CacheConfig:
    return CacheConfig(**values)


def _build_listener(values: dict, path: Path, err) -> ListenerConfig | None:
    host, port = split_host_port(values["bind"], default_host="0.0.0.0")
    if values["mode"] == "tcp" and values["pool"] is None:
        err(path + ("mode",), 'a tcp listener needs pool = "NAME": the pool it relays to')
        return None
    if values["tls"] is not None and values["certs"]:
        err(path + ("certs",), "tls and certs are exclusive: list every certificate in certs")
        return None
    certs = (values["tls"],) if values["tls"] is not None else values["certs"]
    contexts, named = [], []
    for n, c in enumerate(certs):
        where = path + (("tls",) if values["tls"] is not None else ("certs", n))
        ctx = _server_context(values, c, where, err)
        if ctx is None:
            return None
        contexts.append(ctx)
        named.append(TlsCert(c.cert, c.key, _cert_names(c.cert)))
    if values["tls"] is not None:
        values["tls"] = named[0]
    else:
        values["certs"] = tuple(named)
    return ListenerConfig(host=host, port=port, contexts=tuple(contexts), **values)


_TLS_VERSIONS = {"1.0": ssl.TLSVersion.TLSv1, "1.1": ssl.TLSVersion.TLSv1_1,
                 "1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def _server_context(values: dict, c: TlsCert, where: Path, err) -> ssl.SSLContext | None:
    """A server context for one certificate; None (and an error) when it cannot be loaded."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _TLS_VERSIONS[values["tls_min_version"]]
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    ctx.set_ciphers(values["ciphers"])
    if values["mode"] == "http":
        ctx.set_alpn_protocols(["http/1.1"])
    for name in (c.cert, c.key):
        if not os.path.isfile(name):
            which = "cert" if name == c.cert else "key"
            err(where + (which,), f"cannot read {_quote(name)}: no such file")
            return None
    try:
        ctx.load_cert_chain(c.cert, c.key)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
        err(where + ("cert",), f"cannot load certificate {_quote(c.cert)} with key "
            f"{_quote(c.key)}: {reason}")
        return None
    return ctx


def _cert_names(path: str) -> tuple[str, ...]:
    """The DNS names of a PEM certificate: subjectAltName DNS entries, else the CN."""
    try:
        info = ssl._ssl._test_decode_cert(path)  # stdlib, the decoder behind getpeercert()
    except (AttributeError, OSError, ssl.SSLError, ValueError):
        return ()
    names = tuple(v.lower() for k, v in info.get("subjectAltName", ()) if k == "DNS")
    if not names:
        names = tuple(v.lower() for rdn in info.get("subject", ()) for k, v in rdn
                      if k == "commonName")
    return names


def _build_tls_cert(values: dict, path: Path, err) -> TlsCert:
    return TlsCert(**values)


def _build_pool_tls(values: dict, path: Path, err) -> PoolTlsConfig | None:
    if values["ca"] is not None:
        try:
            ssl.create_default_context(cafile=values["ca"])
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
            err(path + ("ca",), f"cannot load CA certificates from {_quote(values['ca'])}: {reason}")
            return None
    return PoolTlsConfig(**values)


def _build_route(values: dict, path: Path, err) -> RouteConfig | None:
    if values["path"] is not None and values["path_regex"] is not None:
        err(path + ("path_regex",), "path and path_regex are exclusive: use one or the other")
        return None
    return RouteConfig(index=path[-1], **values)


def _build_server_entry(values: dict, path: Path, err) -> ServerEntry:
    host, port = split_host_port(values["addr"])
    return ServerEntry(host=host, port=port, **values)


def _build_pool(values: dict, path: Path, err) -> PoolConfig | None:
    if values.get("tls") is not None and values.get("health") is not None \
            and values["health"].type == "http":
        # The probes are plain HTTP: they would fail against every HTTPS server.
        err(path + ("health",), 'HTTP checks are sent without TLS: a pool with tls needs '
            'health = { type = "tcp", ... }')
        return None
    if _duplicate_servers(values["servers"], path, err):
        return None
    return PoolConfig(name=path[-1], **values)


def _duplicate_servers(servers: tuple, path: Path, err) -> bool:
    """Report each server of a pool whose address an earlier one has; True if any.

    The same address twice would be one server counted twice (twice the
    weight, one health row for two labels): never what was meant.  Names
    compare case-insensitively, addresses by value ("[::1]" and "[0::1]").
    """
    seen: dict[tuple, int] = {}
    found = False
    for i, s in enumerate(servers):
        host = s.host.lower().rstrip(".")
        key = (ipaddress.ip_address(host) if _is_ip(host) else host, s.port)
        if key in seen:
            err(path + ("servers", i, "addr"), f"duplicate server {_quote(s.addr)} "
                f"(also servers[{seen[key]}])")
            found = True
        seen.setdefault(key, i)
    return found


def _build_health(values: dict, path: Path, err) -> HealthConfig:
    return HealthConfig(**values)


def _build_sticky(values: dict, path: Path, err) -> StickyConfig:
    return StickyConfig(**values)


def _build_retry(values: dict, path: Path, err) -> RetryConfig:
    return RetryConfig(**values)


def _build_queue(values: dict, path: Path, err) -> QueueConfig:
    return QueueConfig(**values)


def _build_deny(values: dict, path: Path, err) -> DenyConfig | None:
    try:
        DenyRule(**{k: v for k, v in values.items() if k != "methods"},
                 methods=frozenset(values["methods"]))
    except ValueError as e:
        err(path, str(e))
        return None
    return DenyConfig(**values)


def _build_rate_limit(values: dict, path: Path, err) -> RateLimitConfig:
    return RateLimitConfig(**values)


def _build_rewrite(values: dict, path: Path, err) -> RewriteRule | None:
    try:
        compile_rewrites(rewrite=[(values["from"], values["to"])])
    except ValueError as e:
        err(path + ("to",), str(e))
        return None
    return RewriteRule(values["from"], values["to"])


def _build_redirect(values: dict, path: Path, err) -> RedirectConfig | None:
    try:
        compile_rewrites(redirect=(values["to"], values["status"]))
    except ValueError as e:
        err(path + ("to" if "status" not in str(e) else "status",), str(e))
        return None
    return RedirectConfig(**values)


def _build_header_rules(values: dict, path: Path, err) -> HeaderRulesConfig | None:
    try:
        HeaderRules(dict(values["set"]), dict(values["add"]), values["remove"])
    except ValueError as e:
        err(path, str(e))
        return None
    return HeaderRulesConfig(**values)


def _build_compress(values: dict, path: Path, err) -> CompressConfig:
    return CompressConfig(**values)


_BUILDERS: dict[str, Callable[[dict, Path, Any], Any]] = {
    "server": _build_server,
    "cache": _build_cache,
    "listener": _build_listener,
    "route": _build_route,
    "pool": _build_pool,
    "pool.servers": _build_server_entry,
    "pool.health": _build_health,
    "pool.sticky": _build_sticky,
    "pool.retry": _build_retry,
    "pool.queue": _build_queue,
    "route.deny": _build_deny,
    "route.rate_limit": _build_rate_limit,
    "route.rewrite": _build_rewrite,
    "route.redirect": _build_redirect,
    "route.request_headers": _build_header_rules,
    "route.response_headers": _build_header_rules,
    "route.compress": _build_compress,
    "pool.tls": _build_pool_tls,
    "listener.tls": _build_tls_cert,
    "listener.certs": _build_tls_cert,
}

_CHILDREN: dict[str | None, list[Section]] = {}
for _sec in SECTIONS:
    _CHILDREN.setdefault(_sec.parent, []).append(_sec)
_SECTION = {s.path: s for s in SECTIONS}
_KEYS: dict[str, list[Setting]] = {}
for _s in SETTINGS:
    _KEYS.setdefault(_s.section, []).append(_s)


def _fmt_path(path: Path) -> str:
    out = ""
    for seg in path:
        if isinstance(seg, int):
            out += f"[{seg}]"
        else:
            out += ("." if out else "") + (seg if re.fullmatch(r"[A-Za-z0-9_-]+", seg) else _quote(seg))
    return out


# ---------------------------------------------------------------------------
# The walker: generic over SECTIONS/SETTINGS.


class _Loader:
    def __init__(self, text: str, path: str):
        self.file = path
        self.errors: list[ConfigError] = []
        self.lines = _LineFinder(text).lines

    def err(self, path: Path, message: str) -> None:
        line = None
        p = tuple(path)
        while p and line is None:
            line = self.lines.get(p)
            p = p[:-1]
        self.errors.append(ConfigError(self.file, line, _fmt_path(path), message))

    def table(self, sec: Section, raw: Any, path: Path) -> Any:
        """Parse one table of section ``sec``; its dataclass, or None on error."""
        if not isinstance(raw, dict):
            self.err(path, f"expected a table, got {_tname(raw)}")
            return None
        before = len(self.errors)
        settings = _KEYS.get(sec.path, [])
        children = _CHILDREN.get(sec.path, [])
        known = [s.name for s in settings] + [c.key for c in children]
        for key in raw:
            if key not in known:
                msg = f"unknown key {_quote(key)} in {sec.title}"
                close = difflib.get_close_matches(key, known, n=1)
                msg += f'; did you mean "{close[0]}"?' if close else f"; known keys: {', '.join(known)}"
                self.err(path + (key,), msg)
        values: dict[str, Any] = {}
        for s in settings:
            if s.name in raw:
                try:
                    values[s.name] = s.parse(raw[s.name])
                except Invalid as e:
                    self.err(path + (s.name,), str(e))
            elif s.required:
                self.err(path + (s.name,), f"required key is missing ({sec.title} needs {s.name} = ...)")
            else:
                values[s.name] = None if s.default is None else s.parse(s.default)
        for s in settings:
            if s.when and s.name in raw:
                other, wanted = s.when
                actual = values.get(other)
                # An invalid sibling was reported already: no second guess.
                if actual is not None and actual != wanted:
                    self.err(path + (s.name,), f"{s.name} is only valid with {other} = {_quote(wanted)}, "
                             f"not {other} = {_quote(actual)}")
        for child in children:
            sub = self.section(child, raw.get(child.key), path + (child.key,), present=child.key in raw)
            values[child.key] = sub
        if len(self.errors) != before:
            return None
        return _BUILDERS[sec.path](values, path, self.err)

    def section(self, sec: Section, raw: Any, path: Path, present: bool) -> Any:
        """Parse a whole section of any kind: a dataclass, or a tuple of them."""
        if sec.kind == "table":
            if not present:
                if sec.optional:
                    return None
                raw = {}
            return self.table(sec, raw, path)
        if not present:
            if sec.required:
                self.err(path, sec.need)
            return ()
        if sec.kind == "array":
            if not isinstance(raw, list) or not all(isinstance(x, dict) for x in raw):
                self.err(path, f"expected an array of tables, written {sec.title}, got {_tname(raw)}")
                return ()
            if not raw and sec.required:
                self.err(path, sec.need)
                return ()
            items = [self.table(sec, item, path + (i,)) for i, item in enumerate(raw)]
            return tuple(items)
        # named: table of tables
        if not isinstance(raw, dict) or not all(isinstance(x, dict) for x in raw.values()):
            self.err(path, f"expected tables written as {sec.title}")
            return ()
        items = []
        for name, item in raw.items():
            try:
                _name(name)
            except Invalid as e:
                self.err(path + (name,), str(e))
                continue
            items.append(self.table(sec, item, path + (name,)))
        return tuple(items)

    def config(self, doc: dict) -> Config | None:
        top = _CHILDREN[None]
        known = [s.key for s in top]
        for key in doc:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f'; did you mean "{close[0]}"?' if close else f"; known sections: {', '.join(known)}"
                self.err((key,), f"unknown section {_quote(key)}{hint}")
        parts = {s.key: self.section(s, doc.get(s.key), (s.key,), s.key in doc) for s in top}
        self._cross_check(doc, parts["route"])
        if self.errors:
            return None
        return Config(self.file, parts["server"], parts["listener"], parts["route"], parts["pool"],
                      parts["cache"])

    def _cross_check(self, doc: dict, routes: tuple) -> None:
        """Checks across tables.  They read the raw document, so a listener or
        pool that failed its own checks still counts as defined (no second,
        misleading "no pool named" error)."""
        raw_listeners = doc.get("listener") if isinstance(doc.get("listener"), list) else []
        names: dict[str, int] = {}
        binds: dict[tuple, int] = {}
        for i, item in enumerate(raw_listeners):
            if not isinstance(item, dict):
                continue
            name = item.get("name")
            if isinstance(name, str):
                if name in names:
                    self.err(("listener", i, "name"), f"duplicate listener name {_quote(name)} (also listener[{names[name]}])")
                names.setdefault(name, i)
            try:
                host, port = split_host_port(item.get("bind"), default_host="0.0.0.0")
            except (Invalid, AttributeError):
                continue
            key = (ipaddress.ip_address(host) if _is_ip(host) else host.lower(), port)
            if key in binds:
                self.err(("listener", i, "bind"), f"duplicate bind {_quote(item['bind'])} (also listener[{binds[key]}])")
            binds.setdefault(key, i)
        pools = sorted(doc["pool"]) if isinstance(doc.get("pool"), dict) else []
        for r in routes:
            if r is None:
                continue
            if r.pool not in pools:
                self.err(("route", r.index, "pool"), f"no pool named {_quote(r.pool)}{_did_you_mean(r.pool, pools)}")
            for j, name in enumerate(r.listener):
                if name not in names:
                    p = ("route", r.index, "listener")
                    if (p + (j,)) in self.lines:
                        p += (j,)
                    self.err(p, f"no listener named {_quote(name)}{_did_you_mean(name, sorted(names))}")
        self._check_tcp(doc, raw_listeners, routes, pools)

    def _check_tcp(self, doc: dict, raw_listeners: list, routes: tuple, pools: list) -> None:
        """tcp listeners name an existing pool; routes name no tcp listener and no
        pool that sends PROXY headers (an HTTP keep-alive connection to a server
        carries requests of many clients: one header cannot speak for them)."""
        tcp = set()
        for i, item in enumerate(raw_listeners):
            if isinstance(item, dict) and item.get("mode") == "tcp":
                tcp.add(item.get("name"))
                pool = item.get("pool")
                if isinstance(pool, str) and pool not in pools:
                    self.err(("listener", i, "pool"), f"no pool named {_quote(pool)}{_did_you_mean(pool, pools)}")
        raw_pools = doc.get("pool") if isinstance(doc.get("pool"), dict) else {}
        for r in routes:
            if r is None:
                continue
            for j, name in enumerate(r.listener):
                if name in tcp:
                    p = ("route", r.index, "listener")
                    if (p + (j,)) in self.lines:
                        p += (j,)
                    self.err(p, f"listener {_quote(name)} is a tcp listener: routes apply to "
                             "http listeners only")
            raw = raw_pools.get(r.pool)
            if isinstance(raw, dict) and raw.get("proxy_protocol") is not None:
                self.err(("route", r.index, "pool"), f"pool {_quote(r.pool)} sends PROXY "
                         "protocol headers: only tcp listeners may use it")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _did_you_mean(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1)
    if close:
        return f'; did you mean "{close[0]}"?'
    return f"; defined: {', '.join(choices)}" if choices else ""


def _sort_key(e: ConfigError) -> tuple:
    return (e.line is None, e.line or 0)


def loads(text: str, path: str = "<string>") -> Config:
    """Parse and validate TOML ``text``; ``path`` names it in errors.

    Raises ConfigErrors listing every problem found, in file order.
    """
    try:
        doc = tomli.loads(text)
    except tomli.TOMLDecodeError as e:
        msg = getattr(e, "msg", None) or re.sub(r"\s*\(at line \d+, column \d+\)$", "", str(e))
        line = getattr(e, "lineno", None)
        raise ConfigErrors([ConfigError(path, line, "", f"TOML syntax error: {msg}")]) from None
    loader = _Loader(text, path)
    cfg = loader.config(doc)
    if loader.errors or cfg is None:
        raise ConfigErrors(sorted(loader.errors, key=_sort_key))
    return cfg


def load(path: str) -> Config:
    """Read, parse and validate the file at ``path``; ConfigErrors on any problem
    (an unreadable file is one ConfigError without a key)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigErrors([ConfigError(path, None, "", f"cannot read: {e.strerror or e}")]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ConfigErrors([ConfigError(path, line, "", "not valid UTF-8")]) from None
    return loads(text, path)


# ---------------------------------------------------------------------------
# Warnings: what ``-t`` reports without refusing the file.

#: How long ``warnings`` waits, in all, for the server names to resolve.
RESOLVE_TIMEOUT = 2.0


def warnings(cfg: Config, text: str | None = None,
             resolve_timeout: float = RESOLVE_TIMEOUT) -> list[ConfigError]:
    """Problems of a valid configuration that do not stop it from serving,
    each ``FILE:LINE: key: warning: ...``, in file order: a route no request
    can reach (an earlier one takes them all), a server name that does not
    resolve now (DNS may be down at check time: only a warning).

    ``text`` is the file's text, for line numbers (read from ``cfg.path``
    when None; no line numbers when it cannot be read).  Resolving takes at
    most ``resolve_timeout`` seconds in all, whatever the resolver does.
    """
    if text is None:
        try:
            with open(cfg.path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError):
            text = ""
    out = _Loader(text, cfg.path)
    _warn_shadowed(cfg, out.err)
    _warn_unresolved(cfg, out.err, resolve_timeout)
    return sorted(out.errors, key=_sort_key)


def _warn_shadowed(cfg: Config, warn) -> None:
    specs = [RouteSpec(r.index, r.pool, frozenset(r.listener), r.host, r.path, r.path_regex)
             for r in cfg.routes]
    for later, earlier in shadowed(specs):
        warn(("route", specs[later].index), f"warning: this route never matches: "
             f"route[{specs[earlier].index}] before it takes every request it would")


def _warn_unresolved(cfg: Config, warn, timeout: float) -> None:
    """Resolve every server name at once in daemon threads and wait at most
    ``timeout``: getaddrinfo has no timeout of its own."""
    import socket
    import threading

    names: dict[tuple[str, int], list[Path]] = {}
    for pool in cfg.pools:
        for i, s in enumerate(pool.servers):
            if not _is_ip(s.host):
                where = ("pool", pool.name, "servers", i, "addr")
                names.setdefault((s.host, s.port), []).append(where)
    for i, addr in enumerate(cfg.cache.servers):
        try:
            host, port = split_host_port(addr)
        except Invalid:
            continue
        if not _is_ip(host):
            names.setdefault((host, port), []).append(("cache", "servers", i))
    failed: dict[tuple[str, int], str] = {}

    def resolve(key):
        try:
            socket.getaddrinfo(key[0], key[1], type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            failed[key] = getattr(exc, "strerror", None) or str(exc)

    threads = {key: threading.Thread(target=resolve, args=(key,), daemon=True) for key in names}
    for t in threads.values():
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads.values():
        t.join(max(0.0, deadline - time.monotonic()))
    for key, paths in names.items():
        if threads[key].is_alive():
            why = f"no answer within {timeout:g}s"
        elif key in failed:
            why = failed[key]
        else:
            continue
        for path in paths:
            warn(path, f"warning: {_quote(key[0])} does not resolve now ({why}); "
                 "forkproxy resolves it again when it connects")


# ---------------------------------------------------------------------------
# Line numbers: a lenient structural scan of text tomli has already accepted.


class _LineFinder:
    """Map key paths to the first line where they appear.

    Records table headers (``[a.b]``, ``[[a]]`` with its array index), keys
    (dotted keys included), array elements (``servers[1]``) and inline-table
    members, whatever line they sit on.
    """

    _BARE = re.compile(r"[A-Za-z0-9_-]+")

    def __init__(self, text: str):
        self.s = text
        self.i = 0
        self.line = 1
        self.lines: dict[Path, int] = {}
        self.arrays: dict[Path, int] = {}
        try:
            self._document()
        except (IndexError, ValueError):  # best effort: keep what was found
            pass

    def _peek(self, k: int = 0) -> str:
        j = self.i + k
        return self.s[j] if j < len(self.s) else ""

    def _adv(self, k: int = 1) -> None:
        self.line += self.s.count("\n", self.i, self.i + k)
        self.i += k

    def _skip(self, newlines: bool) -> None:
        while self.i < len(self.s):
            c = self.s[self.i]
            if c in " \t\r" or (newlines and c == "\n"):
                self._adv()
            elif c == "#":
                end = self.s.find("\n", self.i)
                self._adv((end if end >= 0 else len(self.s)) - self.i)
            else:
                return

    def _record(self, path: Path) -> None:
        self.lines.setdefault(path, self.line)

    def _document(self) -> None:
        prefix: Path = ()
        while True:
            self._skip(True)
            if self.i >= len(self.s):
                return
            if self.s.startswith("[[", self.i):
                self._adv(2)
                parts = self._key()
                self._skip(False)
                self._adv(2)
                prefix = self._resolve(parts, array=True)
            elif self._peek() == "[":
                self._adv()
                parts = self._key()
                self._skip(False)
                self._adv()
                prefix = self._resolve(parts, array=False)
            else:
                self._keyval(prefix)

    def _resolve(self, parts: list[str], array: bool) -> Path:
        # An array named before the last part means its current (last) element.
        cur = ()
        for n, part in enumerate(parts):
            cur += (part,)
            last = n == len(parts) - 1
            if last and array:
                idx = self.arrays.get(cur, -1) + 1
                self.arrays[cur] = idx
                cur += (idx,)
            elif cur in self.arrays:
                cur += (self.arrays[cur],)
            self._record(cur)
        return cur

    def _key(self) -> list[str]:
        parts = []
        while True:
            self._skip(False)
            c = self._peek()
            if c in "\"'":
                start = self.i
                self._string()
                raw = self.s[start : self.i]
                try:
                    parts.append(tomli.loads(f"k = {raw}")["k"])
                except tomli.TOMLDecodeError:
                    parts.append(raw[1:-1])
            else:
                m = self._BARE.match(self.s, self.i)
                if not m:
                    raise ValueError("bad key")
                parts.append(m.group())
                self._adv(m.end() - self.i)
            self._skip(False)
            if self._peek() == ".":
                self._adv()
                continue
            return parts

    def _keyval(self, prefix: Path) -> None:
        line = self.line
        path = prefix + tuple(self._key())
        self.lines.setdefault(path, line)
        self._skip(False)
        if self._peek() != "=":
            raise ValueError("expected =")
        self._adv()
        self._value(path)

    def _value(self, path: Path) -> None:
        self._skip(False)
        c = self._peek()
        if c == "[":
            self._adv()
            idx = 0
            while True:
                self._skip(True)
                if self._peek() == "]":
                    self._adv()
                    return
                self._record(path + (idx,))
                self._value(path + (idx,))
                self._skip(True)
                if self._peek() == ",":
                    self._adv()
                    idx += 1
        elif c == "{":
            self._adv()
            while True:
                self._skip(True)
                if self._peek() == "}":
                    self._adv()
                    return
                if self._peek() == ",":
                    self._adv()
                    continue
                self._keyval(path)
        elif c in "\"'":
            self._string()
        else:
            m = re.compile(r"[^,\]}\n#]*").match(self.s, self.i)
            self._adv(m.end() - self.i)

    def _string(self) -> None:
        q = self._peek()
        if self.s.startswith(q * 3, self.i):
            self._adv(3)
            while True:
                j = self.s.index(q * 3, self.i)
                if q == '"':
                    k = j
                    while k > self.i and self.s[k - 1] == "\\":
                        k -= 1
                    if (j - k) % 2:  # escaped quote
                        self._adv(j + 1 - self.i)
                        continue
                self._adv(j + 3 - self.i)
                while self._peek() == q:  # up to two quotes may close the content
                    self._adv()
                return
        self._adv()
        while True:
            c = self._peek()
            if c == "":
                raise ValueError("unterminated string")
            if c == "\\" and q == '"':
                self._adv(2)
            elif c == q:
                self._adv()
                return
            else:
                self._adv()


# ---------------------------------------------------------------------------
# dump(): the effective configuration as TOML.


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f"{_bare(k)} = {_toml(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    raise TypeError(f"cannot render {value!r}")  # pragma: no cover


def _bare(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else _quote(name)


def _applies(s: Setting, obj: Any) -> bool:
    """False when ``s`` has a ``when`` condition that ``obj`` does not meet."""
    return s.when is None or getattr(obj, s.when[0]) == s.when[1]


def _value(s: Setting, obj: Any, secrets: bool) -> Any:
    """What ``dump`` writes for key ``s`` of ``obj``: its rendered value, REDACTED
    for a set secret unless ``secrets``."""
    v = s.render(getattr(obj, s.name))
    return REDACTED if s.secret and v is not None and not secrets else v


def _inline(sec: Section, obj: Any, secrets: bool) -> str:
    parts = []
    for s in _KEYS.get(sec.path, []):
        if not _applies(s, obj):
            continue
        v = _value(s, obj, secrets)
        if v is not None:
            parts.append(f"{s.name} = {_toml(v)}")
    return "{ " + ", ".join(parts) + " }"


def _dump_table(sec: Section, obj: Any, secrets: bool) -> list[str]:
    out = []
    for s in _KEYS.get(sec.path, []):
        if not _applies(s, obj):
            continue
        v = _value(s, obj, secrets)
        if v is None:
            out.append(f"# {s.name} is not set")
        else:
            out.append(f"{s.name} = {_toml(v)}")
    for child in _CHILDREN.get(sec.path, []):
        v = getattr(obj, child.key)
        if child.kind == "array":
            out.append(f"{child.key} = [")
            out.extend(f"  {_inline(child, item, secrets)}," for item in v)
            out.append("]")
        elif v is None:
            out.append(f"# {child.key} is not set")
        else:
            out.append(f"{child.key} = {_inline(child, v, secrets)}")
    return out


def dump(cfg: Config, secrets: bool = False) -> str:
    """The effective configuration as TOML, every default filled in (what
    ``forkproxy -T`` prints).  Secrets (server.admin_token, sticky.secret)
    read REDACTED, which the loader refuses, unless ``secrets``
    (``-T --show-secrets``).  ``loads(dump(cfg, True), cfg.path) == cfg``."""
    out = [f"# effective configuration of {cfg.path}"]
    attr = {"server": "server", "listener": "listeners", "route": "routes", "pool": "pools",
            "cache": "cache"}
    for sec in _CHILDREN[None]:
        value = getattr(cfg, attr[sec.key])
        if sec.kind == "table":
            out += ["", f"[{sec.key}]"] + _dump_table(sec, value, secrets)
        elif sec.kind == "array":
            for item in value:
                out += ["", f"[[{sec.key}]]"] + _dump_table(sec, item, secrets)
        else:
            for item in value:
                out += ["", f"[{sec.key}.{_bare(item.name)}]"] + _dump_table(sec, item,
                                                                               secrets)
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------
# Documentation generators.


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+(?=[A-Z\"(0-9])", text.strip()) if s]


def _roff(line: str) -> str:
    line = line.replace("\\", "\\e")
    return "\\&" + line if line[:1] in (".", "'") else line


def _roff_text(text: str) -> list[str]:
    """mdoc text lines: one sentence per line, wrapped under 80 bytes."""
    out = []
    for sentence in _sentences(text):
        out += [_roff(x) for x in textwrap.wrap(sentence, 78, break_on_hyphens=False)]
    return out


def _default_text(s: Setting) -> str:
    if s.required:
        return "required"
    if s.default is None:
        return "unset"
    v = s.default
    return _toml(v)


def man_keys() -> str:
    """The mdoc key reference of forkproxy.toml(5) (the ``.Sh KEYS`` section)."""
    out = [".Sh KEYS"]
    for sec in SECTIONS:
        # "\\&" stops mdoc from reading the closing bracket as punctuation.
        out.append(f".Ss {_roff(sec.title)}\\&")
        out += _roff_text(sec.help)
        if sec.parent:
            out.append(f"It is the {sec.key} key of each {_SECTION[sec.parent].title} table.")
        keys = _KEYS.get(sec.path, [])
        subs = [c for c in _CHILDREN.get(sec.path, [])]
        if not keys and not subs:
            continue
        out.append(".Bl -tag -width Ds")
        for s in keys:
            out.append(f".It Ic {s.name}")
            out += _roff_text(s.help)
            if s.when:
                out.append(_roff(f"Only with {s.when[0]} = {_toml(s.when[1])}."))
            out.append(".Pp")
            out.append(_roff(f"Type: {s.type}."))
            out.append(_roff(f"Default: {_default_text(s)}."))
            out.append("Applies on reload." if s.reload else "Needs a restart.")
        for c in subs:
            out.append(f".It Ic {c.key}")
            out.append(_roff(f"See {c.title} below."))
        out.append(".El")
    return "\n".join(out) + "\n"


_MAN_BEGIN = '.\\" BEGIN GENERATED KEYS: python -m forkproxy.config --write-docs .'
_MAN_END = '.\\" END GENERATED KEYS'


def splice_man(page: str) -> str:
    """``page`` with the text between the GENERATED markers replaced by man_keys()."""
    head, sep, rest = page.partition(_MAN_BEGIN + "\n")
    _, sep2, tail = rest.partition(_MAN_END + "\n")
    if not sep or not sep2:
        raise ValueError("the man page lacks the GENERATED KEYS markers")
    return head + _MAN_BEGIN + "\n" + man_keys() + _MAN_END + "\n" + tail


def _comment(text: str, indent: str = "") -> list[str]:
    return textwrap.wrap(text, 76, initial_indent="# " + indent, subsequent_indent="# " + indent,
                         break_on_hyphens=False)


def _doc_value(s: Setting) -> Any:
    return s.example if s.required or s.default is None else s.default


def sample() -> str:
    """conf/forkproxy.toml: every key with its default (or an example) and its help."""
    out = [
        "# forkproxy.toml: every key of forkproxy, with its default and its help.",
        "# Generated from forkproxy/config.py by `python -m forkproxy.config --write-docs .`:",
        "# do not edit by hand.  Reference: forkproxy.toml(5).",
        "#",
        '# Durations take a unit: "500ms", "2s", "1.5s", "1m", "1h".  Sizes are bytes',
        '# or "64k", "1m", "1g" (powers of 1024).  A commented key shows its default;',
        '# uncomment it to change it.  A key noted "restart" needs a restart: a',
        "# reload (SIGHUP) does not apply it.",
    ]
    for sec in SECTIONS:
        if sec.parent:
            continue
        out.append("")
        out += _comment(f"{sec.title}: {sec.help}")
        example_name = {"pool": "web"}.get(sec.key)
        header = f"[{sec.key}]" if sec.kind == "table" else f"[[{sec.key}]]" if sec.kind == "array" else f"[{sec.key}.{example_name}]"
        out.append(header)
        out += _sample_keys(sec)
    return "\n".join(out) + "\n"


def _sample_keys(sec: Section) -> list[str]:
    out = []
    for s in _KEYS.get(sec.path, []):
        note = "required" if s.required else ("unset by default" if s.default is None else "")
        flags = ", ".join(x for x in (s.type, note, "" if s.reload else "restart") if x)
        out.append("")
        out += _comment(f"{s.name} ({flags}): {s.help}")
        line = f"{s.name} = {_toml(_doc_value(s))}"
        out.append(line if s.required else "#" + line)
    for child in _CHILDREN.get(sec.path, []):
        out.append("")
        if child.kind == "table":
            out += _sample_table(child)
            continue
        out += _comment(f"{child.key}: {child.help} Keys of each entry:")
        for s in _KEYS.get(child.path, []):
            default = ("required" if s.required else "unset by default" if s.default is None
                       else f"default {_toml(s.default)}")
            flags = ", ".join(x for x in (s.type, default) if x)
            out += _comment(f"{s.name} ({flags}): {s.help}", indent="  ")
        required = [s for s in _KEYS.get(child.path, []) if s.required]
        full = [(s, _doc_value(s)) for s in _KEYS.get(child.path, [])]
        if not child.required:  # an optional array: the whole example commented out
            out.append(f"#{child.key} = [{{ " + ", ".join(f"{s.name} = {_toml(v)}" for s, v in full)
                       + " }]")
            continue
        out.append(f"{child.key} = [")
        out.append("  { " + ", ".join(f"{s.name} = {_toml(s.example)}" for s in required) + " },")
        out.append("  #{ " + ", ".join(f"{s.name} = {_toml(v)}" for s, v in full) + " },")
        out.append("]")
    return out


def _sample_table(child: Section) -> list[str]:
    """An optional inline sub-table: its keys, then a commented example line."""
    out = _comment(f"{child.key}: {child.help} Keys:")
    for s in _KEYS.get(child.path, []):
        default = ("required" if s.required else "unset by default" if s.default is None
                   else f"default {_toml(s.default)}")
        only = f"only with {s.when[0]} = {_toml(s.when[1])}" if s.when else ""
        flags = ", ".join(x for x in (s.type, default, only) if x)
        out += _comment(f"{s.name} ({flags}): {s.help}", indent="  ")
    full = ", ".join(f"{s.name} = {_toml(_doc_value(s))}" for s in _KEYS.get(child.path, []))
    out.append(f"#{child.key} = {{ {full} }}")
    return out


# ---------------------------------------------------------------------------


def _main(argv: list[str]) -> int:
    usage = "usage: python -m forkproxy.config (--man | --sample | --write-docs ROOT | FILE)"
    if len(argv) == 1 and argv[0] == "--man":
        sys.stdout.write(man_keys())
        return EX_OK
    if len(argv) == 1 and argv[0] == "--sample":
        sys.stdout.write(sample())
        return EX_OK
    if len(argv) == 2 and argv[0] == "--write-docs":
        man = os.path.join(argv[1], "man", "forkproxy.toml.5")
        with open(man, encoding="utf-8") as f:
            page = splice_man(f.read())
        with open(man, "w", encoding="utf-8") as f:
            f.write(page)
        with open(os.path.join(argv[1], "conf", "forkproxy.toml"), "w", encoding="utf-8") as f:
            f.write(sample())
        return EX_OK
    if len(argv) == 1 and not argv[0].startswith("-"):
        try:
            cfg = load(argv[0])
        except ConfigErrors as e:
            print(e, file=sys.stderr)
            return EX_CONFIG
        sys.stdout.write(dump(cfg))
        return EX_OK
    print(usage, file=sys.stderr)
    return EX_USAGE


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
