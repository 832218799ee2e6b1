"""TOML configuration -> frozen dataclasses, driven by one declaration per key.

Each key is declared once, as a ``Setting`` (section, name, type, default,
help, reload-or-restart, parser, renderer) in the module of its section;
``Section`` declares the shape of the tables that hold them, and the frozen
dataclass of each table (``ServerConfig``, ``RouteConfig``...) is made from
those declarations (``schema.config_classes``).  The declarations feed:

    validation      ``load(path)`` / ``loads(text, path)``: every error of a
                    file is collected and raised together as ``ConfigErrors``,
                    each one ``FILE:LINE: key.path: message``.
    -T              ``dump(cfg)``: the effective configuration as TOML with
                    every default filled in; ``loads(dump(cfg)) == cfg``.
    forkproxy.toml(5)  ``man_keys()``: the mdoc key reference, spliced into
                    ``man/forkproxy.toml.5`` between the GENERATED markers.
    the sample      ``sample()``: ``conf/forkproxy.toml``, every key with its
                    default and its help as comments.

The modules:

    units           durations, sizes, HOST:PORT; ``Invalid``
    parsers         the value parsers and renderers of the keys
    schema          ``Setting``, ``Section``, ``Derived``; the dataclass maker
    server, cache, listener, route, pool
                    one per top-level section: its tables' declarations,
                    dataclasses and builders (listener builds the TLS server
                    contexts through ``forkproxy.net.tls_contexts``)
    document        every section in file order, ``Config``
    loader          ``load``, ``loads``; lines: the line finder
    checks          ``warnings`` (what ``-t`` reports without refusing)
    render          ``dump``; docs: ``man_keys``, ``sample``
    __main__        ``python -m forkproxy.config --write-docs .``

To add a key: add one ``Setting`` to its section's module, then run
``python -m forkproxy.config --write-docs .`` to regenerate the docs.
To add a sub-table (as the per-pool ``health = { ... }``): add a
``Section("pool.health", "table", ..., optional=True, cls="HealthConfig")``
and its ``Setting("pool.health", ...)`` rows (and a builder in the module's
``BUILDERS`` when its dataclass alone is not enough); the walker, the line
finder, ``dump`` and the docs pick it up.  An optional sub-table that is
absent is None in its parent's dataclass.  A key that only makes sense for
one value of a sibling key declares ``when=("type", "http")``: the walker
rejects it when given otherwise, ``dump`` omits it, and the docs say so.
"""

from __future__ import annotations

from forkproxy.config.cache import CacheConfig
from forkproxy.config.checks import RESOLVE_TIMEOUT, warnings
from forkproxy.config.docs import man_keys, sample, splice_man
from forkproxy.config.document import SECTIONS, SETTINGS, Config
from forkproxy.config.listener import DEFAULT_CIPHERS, LOOPBACK_NETWORKS, ListenerConfig, TlsCert
from forkproxy.config.loader import load, loads
from forkproxy.config.parsers import MAX_ERROR_PAGE, REDACTED, ErrorPage
from forkproxy.config.pool import (
    HealthConfig,
    PoolConfig,
    PoolTlsConfig,
    OutlierConfig,
    QueueConfig,
    RetryConfig,
    ServerEntry,
    StickyConfig,
)
from forkproxy.config.render import _toml, dump  # noqa: F401 (_toml: the tests render values with it)
from forkproxy.config.route import (
    DEFAULT_COMPRESS_TYPES,
    CompressConfig,
    DenyConfig,
    HeaderRulesConfig,
    RateLimitConfig,
    RedirectConfig,
    RewriteRule,
    RouteConfig,
)
from forkproxy.config.schema import REQUIRED, Derived, Section, Setting
from forkproxy.config.server import ServerConfig
from forkproxy.config.units import (
    Invalid,
    format_duration,
    format_size,
    parse_duration,
    parse_size,
    split_host_port,
)
from forkproxy.errors import ConfigError, ConfigErrors

__all__ = [
    "Config",
    "ServerConfig",
    "ListenerConfig",
    "TlsCert",
    "RouteConfig",
    "ServerEntry",
    "PoolConfig",
    "PoolTlsConfig",
    "HealthConfig",
    "StickyConfig",
    "RetryConfig",
    "OutlierConfig",
    "QueueConfig",
    "CompressConfig",
    "CacheConfig",
    "DenyConfig",
    "RateLimitConfig",
    "RewriteRule",
    "RedirectConfig",
    "HeaderRulesConfig",
    "ErrorPage",
    "Setting",
    "Section",
    "Derived",
    "SETTINGS",
    "SECTIONS",
    "REQUIRED",
    "REDACTED",
    "Invalid",
    "ConfigError",
    "ConfigErrors",
    "load",
    "loads",
    "warnings",
    "RESOLVE_TIMEOUT",
    "dump",
    "parse_duration",
    "format_duration",
    "parse_size",
    "format_size",
    "split_host_port",
    "man_keys",
    "sample",
    "splice_man",
    "DEFAULT_CIPHERS",
    "DEFAULT_COMPRESS_TYPES",
    "LOOPBACK_NETWORKS",
    "MAX_ERROR_PAGE",
]
