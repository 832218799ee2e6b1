"""forkproxy.config: loading, validation with FILE:LINE errors, units, dump round trip."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forkproxy import config
from forkproxy.config import (
    SETTINGS,
    Config,
    HealthConfig,
    ListenerConfig,
    PoolConfig,
    RouteConfig,
    ServerConfig,
    ServerEntry,
    dump,
    format_duration,
    format_size,
    load,
    loads,
    parse_duration,
    parse_size,
)
from forkproxy.errors import ConfigError, ConfigErrors

MINIMAL = """\
[[listener]]
name = "web"
bind = "127.0.0.1:8080"

[[route]]
pool = "app"

[pool.app]
servers = [{ addr = "127.0.0.1:9000" }]
"""


def errors_of(text: str, path: str = "t.toml") -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        loads(textwrap.dedent(text), path)
    return [str(e) for e in info.value.errors]


# --- good configurations ----------------------------------------------------


def test_minimal_config_fills_every_default():
    cfg = loads(MINIMAL, "m.toml")
    assert cfg.path == "m.toml"
    assert cfg.server == ServerConfig(workers=os.cpu_count() or 1)
    assert cfg.listeners == (ListenerConfig("web", "127.0.0.1:8080", "127.0.0.1", 8080, "http"),)
    assert cfg.routes == (RouteConfig(index=0, pool="app"),)
    assert cfg.pools == (PoolConfig("app", (ServerEntry("127.0.0.1:9000", "127.0.0.1", 9000),)),)
    assert cfg.pool("app") is cfg.pools[0]
    assert cfg.listener("web") is cfg.listeners[0]
    with pytest.raises(KeyError):
        cfg.pool("nope")
    with pytest.raises(KeyError):
        cfg.listener("nope")


FULL = """\
[server]
workers = 3
worker_connections = 500
graceful_timeout = "1.5s"
keepalive_timeout = "0s"
header_timeout = "500ms"
body_timeout = "1m"
send_timeout = "1h"
max_head_size = "64k"
max_headers = 50
max_uri_length = 4096
max_body_size = 0
trusted_proxies = ["10.0.0.0/8", "192.0.2.1", "2001:db8::/32"]
pidfile = "/tmp/fp.pid"
runtime_dir = "/tmp/fp"
user = "nobody"
group = "nogroup"
error_log = "/var/log/fp/error.log"
access_log = "off"
access_log_format = "json"
log_level = "debug"
initial_health = "down"

[[listener]]
name = "web"
bind = ":80"

[[listener]]
name = "v6"
bind = "[::1]:8443"

[[listener]]
name = "alt"
bind = "8081"

[[route]]
listener = "web"
host = "Shop.Example.COM:8080"
path = "/api/"
pool = "api"
host_header = "backend.internal"
max_body_size = "1g"

[[route]]
listener = ["web", "v6"]
host = "*.example.com"
path_regex = "^/(img|css)/"
pool = "api"

[[route]]
pool = "api"

[pool.api]
balance = "round_robin"
connect_timeout = "2s"
read_timeout = "30s"
send_timeout = "30s"
keepalive = 0
keepalive_timeout = "10s"
max_fails = 3
fail_timeout = "30s"
fail_status = [502, 503]
slow_start = "20s"
health = { path = "/healthz", expect_status = [200, "204-299"], expect_body = "^ok", interval = "1s", fastinter = "200ms" }
servers = [
  { addr = "10.0.0.11:8080", weight = 2 },
  { addr = "[2001:db8::1]:80", backup = true },
  { addr = "backend.example.com:8080", weight = 1000 },
]
"""


def test_full_config_values():
    cfg = loads(FULL)
    s = cfg.server
    assert (s.workers, s.worker_connections) == (3, 500)
    assert (s.graceful_timeout, s.keepalive_timeout, s.header_timeout) == (1.5, 0.0, 0.5)
    assert (s.body_timeout, s.send_timeout) == (60.0, 3600.0)
    assert (s.max_head_size, s.max_headers, s.max_uri_length, s.max_body_size) == (65536, 50, 4096, 0)
    assert s.trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.0.2.1/32"),
        ipaddress.ip_network("2001:db8::/32"),
    )
    assert (s.user, s.group, s.access_log, s.access_log_format, s.log_level) == (
        "nobody", "nogroup", "off", "json", "debug")
    assert [(lst.name, lst.host, lst.port) for lst in cfg.listeners] == [
        ("web", "0.0.0.0", 80), ("v6", "::1", 8443), ("alt", "0.0.0.0", 8081)]
    r0, r1, r2 = cfg.routes
    assert r0 == RouteConfig(0, "api", ("web",), "shop.example.com", "/api/", None, "backend.internal", 1 << 30)
    assert r1 == RouteConfig(1, "api", ("web", "v6"), "*.example.com", None, "^/(img|css)/")
    assert r2 == RouteConfig(2, "api")
    pool = cfg.pool("api")
    assert (pool.connect_timeout, pool.read_timeout, pool.keepalive, pool.keepalive_timeout) == (2.0, 30.0, 0, 10.0)
    assert (pool.max_fails, pool.fail_timeout, pool.fail_status, pool.slow_start) == (3, 30.0, (502, 503), 20.0)
    assert pool.health == HealthConfig(path="/healthz", expect_status=((200, 200), (204, 299)),
                                       expect_body="^ok", interval=1.0, fastinter=0.2)
    assert s.initial_health == "down"
    assert pool.servers == (
        ServerEntry("10.0.0.11:8080", "10.0.0.11", 8080, 2, False),
        ServerEntry("[2001:db8::1]:80", "2001:db8::1", 80, 1, True),
        ServerEntry("backend.example.com:8080", "backend.example.com", 8080, 1000, False),
    )


def test_workers_auto_resolves_to_cpu_count():
    cfg = loads('[server]\nworkers = "auto"\n' + MINIMAL)
    assert cfg.server.workers == (os.cpu_count() or 1)


def test_config_is_frozen():
    cfg = loads(MINIMAL)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.server.workers = 9  # type: ignore[misc]


def test_each_table_dataclass_is_made_from_its_keys():
    """Every key is declared once: its section's dataclass has one field per
    key, default ``parse(default)`` (none when required), one per sub-table,
    and only the declared derived fields besides."""
    from forkproxy.config.document import CLASSES
    for sec in config.SECTIONS:
        fields = {f.name: f for f in dataclasses.fields(CLASSES[sec.path])}
        keys = [s for s in SETTINGS if s.section == sec.path]
        subs = [c.key for c in config.SECTIONS if c.parent == sec.path]
        derived = [d.name for d in sec.derived]
        assert sorted(fields) == sorted([s.attribute for s in keys] + subs + derived), sec.path
        for s in keys:
            expected = (dataclasses.MISSING if s.required else None if s.default is None
                        else s.parse(s.default))
            assert fields[s.attribute].default == expected, (s.section, s.name)


def test_the_dataclass_maker_orders_fields_for_positional_use():
    """Fields without a default come first, in declaration order, derived
    ones after the key they follow; sections sharing a class share keys."""
    from forkproxy.config.schema import LAST, REQUIRED, Derived, Section, Setting, config_classes
    sec = Section("t", "table", "[t]", "", cls="T", doc="A test table.",
                  derived=(Derived("host", after="addr"), Derived("memo", after=LAST, default=0)))
    keys = (Setting("t", "weight", "integer", 1, "", True, int),
            Setting("t", "addr", "string", REQUIRED, "", True),
            Setting("t", "from", "string", None, "", True, attr="pattern"))
    cls = config_classes((sec,), keys, "here")["t"]
    assert [f.name for f in dataclasses.fields(cls)] == ["addr", "host", "weight", "pattern", "memo"]
    assert cls("a", "h") == cls(addr="a", host="h", weight=1, pattern=None, memo=0)
    assert (cls.__module__, cls.__doc__) == ("here", "A test table.")
    twin = Section("u", "table", "[u]", "", cls="T")
    with pytest.raises(TypeError, match="shares T"):
        config_classes((sec, twin), keys, "here")


# --- bad configurations: exact "FILE:LINE: key: message" -------------------

BAD = [
    # (id, text, expected errors in order)
    ("syntax", "[server\nworkers = 2\n",
     ["t.toml:1: TOML syntax error: Expected ']' at the end of a table declaration"]),
    ("unknown key suggests", "[server]\nwokers = 2\n" + MINIMAL,
     ['t.toml:2: server.wokers: unknown key "wokers" in [server]; did you mean "workers"?']),
    ("unknown section", "[metrics]\nservers = []\n" + MINIMAL,
     ['t.toml:1: metrics: unknown section "metrics"; known sections: server, cache, listener, route, pool']),
    ("cache section typo", "[cahce]\nservers = []\n" + MINIMAL,
     ['t.toml:1: cahce: unknown section "cahce"; did you mean "cache"?']),
    ("bare number duration", "[server]\n\ngraceful_timeout = 30\n" + MINIMAL,
     ['t.toml:3: server.graceful_timeout: expected a duration with a unit, such as "500ms", '
      '"2s", "1m" or "1h"; bare numbers are not accepted: write "30s"']),
    ("bad duration unit", '[server]\nheader_timeout = "2 days"\n' + MINIMAL,
     ['t.toml:2: server.header_timeout: expected a duration with a unit, such as "500ms", '
      '"2s", "1m" or "1h", got "2 days"']),
    ("zero duration", '[server]\nheader_timeout = "0s"\n' + MINIMAL,
     ["t.toml:2: server.header_timeout: must be greater than zero"]),
    ("bad size", '[server]\nmax_body_size = "1x"\n' + MINIMAL,
     ['t.toml:2: server.max_body_size: expected a size such as 65536, "64k", "1m" or "1g", got "1x"']),
    ("wrong type", '[server]\nworkers = "many"\nworker_connections = true\n' + MINIMAL,
     ['t.toml:2: server.workers: expected an integer 1..1024 or "auto", got "many"',
      "t.toml:3: server.worker_connections: expected an integer, got a boolean"]),
    ("enum with suggestion", '[server]\nlog_level = "warn"\n' + MINIMAL,
     ['t.toml:2: server.log_level: unknown value "warn"; expected one of: debug, info, '
      'warning, error, critical (did you mean "warning"?)']),
    ("bad trusted proxy", '[server]\ntrusted_proxies = ["10.0.0.0/33"]\n' + MINIMAL,
     ['t.toml:2: server.trusted_proxies: invalid address or CIDR range "10.0.0.0/33"']),
    ("tcp without pool", '[[listener]]\nname = "db"\nbind = ":6432"\nmode = "tcp"\n' + MINIMAL,
     ['t.toml:4: listener[0].mode: a tcp listener needs pool = "NAME": the pool it relays to']),
    ("bad port", '[[listener]]\nname = "x"\nbind = "127.0.0.1:70000"\n' + MINIMAL,
     ['t.toml:3: listener[0].bind: invalid port "70000": expected 1..65535']),
    ("missing bind", '[[listener]]\nname = "x"\n' + MINIMAL,
     ["t.toml:1: listener[0].bind: required key is missing ([[listener]] needs bind = ...)"]),
    ("duplicate listener", MINIMAL + '\n[[listener]]\nname = "web"\nbind = "127.0.0.1:8081"\n',
     ['t.toml:12: listener[1].name: duplicate listener name "web" (also listener[0])']),
    ("duplicate bind", MINIMAL + '\n[[listener]]\nname = "two"\nbind = "127.0.0.1:8080"\n',
     ['t.toml:13: listener[1].bind: duplicate bind "127.0.0.1:8080" (also listener[0])']),
    ("wildcard binds equal", '[[listener]]\nname = "a"\nbind = ":80"\n'
     '[[listener]]\nname = "b"\nbind = "0.0.0.0:80"\n[[route]]\npool = "p"\n'
     '[pool.p]\nservers = [{ addr = "h:1" }]\n',
     ['t.toml:6: listener[1].bind: duplicate bind "0.0.0.0:80" (also listener[0])']),
    ("no listener", '[[route]]\npool = "p"\n[pool.p]\nservers = [{ addr = "h:1" }]\n',
     ["t.toml: listener: no listener: add at least one [[listener]] table with name and bind"]),
    ("route to unknown pool", MINIMAL.replace('pool = "app"', 'pool = "ap"'),
     ['t.toml:6: route[0].pool: no pool named "ap"; did you mean "app"?']),
    ("route to unknown listener", MINIMAL.replace('pool = "app"', 'listener = ["web",\n  "wbe"]\npool = "app"'),
     ['t.toml:7: route[0].listener[1]: no listener named "wbe"; did you mean "web"?']),
    # issue 24: weighted splits across pools
    ("split to unknown pool", MINIMAL.replace('pool = "app"', 'pools = [{ pool = "app", weight = 9 },\n'
                                              '  { pool = "apq", weight = 1 }]'),
     ['t.toml:7: route[0].pools[1].pool: no pool named "apq"; did you mean "app"?']),
    ("pool and pools", MINIMAL.replace('pool = "app"', 'pool = "app"\npools = [{ pool = "app" }]'),
     ["t.toml:7: route[0].pools: a route has exactly one of pool (one pool) and pools "
      "(a weighted split)"]),
    ("neither pool nor pools", MINIMAL.replace('pool = "app"', 'host = "a.test"'),
     ["t.toml:5: route[0]: a route has exactly one of pool (one pool) and pools "
      "(a weighted split)"]),
    ("split weights sum to 0", MINIMAL.replace('pool = "app"', 'pools = [{ pool = "app", weight = 0 }]'),
     ["t.toml:6: route[0].pools: the split's weights sum to 0: no pool would get a request"]),
    ("split weight too large", MINIMAL.replace('pool = "app"', 'pools = [{ pool = "app", weight = 1001 }]'),
     ["t.toml:6: route[0].pools[0].weight: expected an integer 0..1000, got 1001"]),
    ("split pool twice", MINIMAL.replace('pool = "app"', 'pools = [{ pool = "app" }, { pool = "app" }]'),
     ["t.toml:6: route[0].pools: a pool appears twice in the split"]),
    ("split_by without pools", MINIMAL.replace('pool = "app"', 'pool = "app"\nsplit_by = "ip"'),
     ["t.toml:7: route[0].split_by: split_by needs pools (a weighted split)"]),
    ("split_by unknown", MINIMAL.replace('pool = "app"', 'pools = [{ pool = "app" }]\n'
                                         'split_by = "query:u"'),
     ['t.toml:7: route[0].split_by: expected "cookie:NAME", "header:NAME" or "ip", '
      'got "query:u"']),
    ("route read_timeout", MINIMAL.replace('pool = "app"', 'pool = "app"\nread_timeout = "0s"'),
     ["t.toml:7: route[0].read_timeout: must be greater than zero"]),
    ("retry budget over 100%", MINIMAL + 'retry = { budget = "120%" }\n',
     ['t.toml:10: pool.app.retry.budget: expected a percentage such as "20%" (0% to 100%), '
      'got "120%"']),
    ("retry budget without %", MINIMAL + 'retry = { budget = 20 }\n',
     ["t.toml:10: pool.app.retry.budget: expected a string, got an integer"]),
    ("path and regex", MINIMAL.replace('pool = "app"', 'pool = "app"\npath = "/a"\npath_regex = "^/b"'),
     ["t.toml:8: route[0].path_regex: path and path_regex are exclusive: use one or the other"]),
    ("invalid regex", MINIMAL.replace('pool = "app"', 'pool = "app"\npath_regex = "(["'),
     ['t.toml:7: route[0].path_regex: regular expression "([" refused by RE2: missing ]: [']),
    ("backreference", MINIMAL.replace('pool = "app"', 'pool = "app"\npath_regex = \'(a)\\1\''),
     ['t.toml:7: route[0].path_regex: regular expression "(a)\\\\1" refused by RE2: '
      "invalid escape sequence: \\1 (RE2 has no backreferences)"]),
    ("path without slash", MINIMAL.replace('pool = "app"', 'pool = "app"\npath = "api"'),
     ['t.toml:7: route[0].path: must start with "/", got "api"']),
    # issue 16: request paths are canonical, so a rule's path must be too
    ("path not canonical", MINIMAL.replace('pool = "app"', 'pool = "app"\npath = "/%61pi/./v1/../"'),
     ['t.toml:7: route[0].path: "/%61pi/./v1/../" is not a canonical path, and request paths '
      'are (see server.merge_slashes): write "/api/"']),
    ("deny path never judged", MINIMAL.replace('pool = "app"', 'pool = "app"\n'
                                               'deny = [{ path = "/admin%2f" }]\n'
                                               'strip_prefix = "/a/../b"'),
     ['t.toml:7: route[0].deny[0].path: "/admin%2f" is not a canonical path, and request paths '
      'are (see server.merge_slashes): write "/admin%2F"',
      't.toml:8: route[0].strip_prefix: "/a/../b" is not a canonical path, and request paths '
      'are (see server.merge_slashes): write "/b"']),
    ("encoded_slashes unknown", '[server]\nencoded_slashes = "decode"\n' + MINIMAL,
     ['t.toml:2: server.encoded_slashes: unknown value "decode"; expected one of: reject, pass']),
    ("route cache not a boolean", MINIMAL.replace('pool = "app"', 'pool = "app"\ncache = "yes"'),
     ['t.toml:7: route[0].cache: expected true or false, got a string']),
    ("route cache_set_cookie", MINIMAL.replace('pool = "app"', 'pool = "app"\ncache_set_cookie = "skip"'),
     ['t.toml:7: route[0].cache_set_cookie: unknown value "skip"; expected "no-store" (a response '
      'that sets a cookie is not stored) or "strip" (stored without its Set-Cookie)']),
    ("route cache_key", MINIMAL.replace('pool = "app"', 'pool = "app"\ncache_key = "a b"'),
     ["t.toml:7: route[0].cache_key: invalid name \"a b\": use letters, digits, '_', '-' and '.' "
      "(at most 64)"]),
    ("purge_allowed", "[cache]\npurge_allowed = [\"localhost\"]\n" + MINIMAL,
     ['t.toml:2: cache.purge_allowed: invalid address or CIDR range "localhost"']),
    ("cache header name", "[cache]\nheader = \"X Cache\"\n" + MINIMAL,
     ['t.toml:2: cache.header: invalid header name "X Cache"']),
    ("pool with no servers", MINIMAL + "\n[pool.empty]\nservers = []\n",
     ['t.toml:12: pool.empty.servers: the pool has no servers: add at least one { addr = "HOST:PORT" }']),
    ("pool without servers key", MINIMAL + '\n[pool.empty]\nbalance = "round_robin"\n',
     ['t.toml:11: pool.empty.servers: the pool has no servers: add at least one { addr = "HOST:PORT" }']),
    ("hash_key without hash", MINIMAL + '\n[pool.b]\nbalance = "least_conn"\nhash_key = "uri"\nservers = [{ addr = "h:1" }]\n',
     ['t.toml:13: pool.b.hash_key: hash_key is only valid with balance = "hash", not balance = "least_conn"']),
    ("balance unknown", MINIMAL + '\n[pool.b]\nbalance = "round-robin"\nservers = [{ addr = "h:1" }]\n',
     ['t.toml:12: pool.b.balance: unknown value "round-robin"; expected one of: round_robin, '
      'least_conn, ip_hash, hash, random2 (did you mean "round_robin"?)']),
    ("inline table members on their lines", MINIMAL + """
[pool.b]
servers = [
  { addr = "10.0.0.1:8080", weight = 2 },
  { addr = "10.0.0.2",
    weight = 0 },
  { addr = "::1:80", bakup = true },
]
""", ['t.toml:14: pool.b.servers[1].addr: expected "HOST:PORT", got "10.0.0.2": the port is required',
      "t.toml:15: pool.b.servers[1].weight: expected an integer 1..1000, got 0",
      't.toml:16: pool.b.servers[2].bakup: unknown key "bakup" in servers = [{ ... }]; did you mean "backup"?',
      't.toml:16: pool.b.servers[2].addr: IPv6 addresses must be in brackets, as "[::1]:8080"; got "::1:80"']),
    ("servers as array of tables", MINIMAL + '\n[pool.b]\n[[pool.b.servers]]\naddr = "h:1"\n'
     '[[pool.b.servers]]\naddr = "h:2"\nweight = 1001\n',
     ["t.toml:16: pool.b.servers[1].weight: expected an integer 1..1000, got 1001"]),
    ("listener as table", '[listener]\nname = "x"\n',
     ["t.toml:1: listener: expected an array of tables, written [[listener]], got a table"]),
    ("route host invalid", MINIMAL.replace('pool = "app"', 'pool = "app"\nhost = "bad host"'),
     ['t.toml:7: route[0].host: invalid host "bad host": expected a name such as '
      '"shop.example.com" or "*.example.com"']),
    ("quoted keys and strings with brackets", MINIMAL + '\n[pool."b"]\n"servers" = [{ addr = "h:1", '
     '"weight" = -1 }]  # [x] { y }\n',
     ["t.toml:12: pool.b.servers[0].weight: expected an integer 1..1000, got -1"]),
]


@pytest.mark.parametrize("text,expected", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_configs(text, expected):
    assert errors_of(text) == expected


def test_every_error_is_collected_in_file_order():
    text = """\
[server]
wokers = 2
graceful_timeout = 30

[[listener]]
name = "web"
bind = "0.0.0.0:80"
mode = "tcp"

[[route]]
pool = "nope"

[pool.api]
servers = [{ addr = "h:1", weight = 0 }]
"""
    errs = errors_of(text)
    assert [e.split(":")[1] for e in errs] == ["2", "3", "8", "11", "14"]


def test_error_attributes_and_str():
    with pytest.raises(ConfigErrors) as info:
        loads("[server]\nworkers = 0\n" + MINIMAL, "x.toml")
    (e,) = info.value.errors
    assert (e.file, e.line, e.key) == ("x.toml", 2, "server.workers")
    assert e.message == "expected an integer 1..1024, got 0"
    assert str(info.value) == "x.toml:2: server.workers: expected an integer 1..1024, got 0"
    assert str(ConfigError("f", None, "k", "m")) == "f: k: m"
    assert str(ConfigError("f", 3, "", "m")) == "f:3: m"


def test_load_reads_files(tmp_path):
    p = tmp_path / "fp.toml"
    p.write_text(MINIMAL)
    assert load(str(p)) == loads(MINIMAL, str(p))
    with pytest.raises(ConfigErrors) as info:
        load(str(tmp_path / "missing.toml"))
    (e,) = info.value.errors
    assert e.line is None and e.key == "" and e.file.endswith("missing.toml")
    assert "cannot read" in e.message
    p.write_bytes(b'[server]\nuser = "\xff"\n')
    with pytest.raises(ConfigErrors) as info:
        load(str(p))
    assert str(info.value) == f"{p}:2: not valid UTF-8"


# --- health checks, passive checks, initial health (issue 3) -----------------


def pool_with(lines: str) -> str:
    """MINIMAL with ``lines`` appended to [pool.app] (they start on line 10)."""
    return MINIMAL + lines + "\n"


HEALTH_GOOD = [
    # (id, the health value as written, the HealthConfig it gives)
    ("empty table is every default", "{}", HealthConfig()),
    ("http, every key", '{ path = "/healthz?full=1", method = "HEAD", expect_status = [200, "300-399"], '
     'expect_body = "ok|OK", host = "health.internal", interval = "1s", timeout = "500ms", rise = 1, '
     'fall = 100, fastinter = "250ms", downinter = "10s" }',
     HealthConfig("http", "/healthz?full=1", "HEAD", ((200, 200), (300, 399)), "ok|OK",
                  "health.internal", 1.0, 0.5, 1, 100, 0.25, 10.0)),
    ("one status alone", "{ expect_status = 204 }", HealthConfig(expect_status=((204, 204),))),
    ("one range alone", '{ expect_status = " 200 - 299 " }', HealthConfig(expect_status=((200, 299),))),
    ("range of one code", '{ expect_status = ["503-503", 100, "599-599"] }',
     HealthConfig(expect_status=((503, 503), (100, 100), (599, 599)))),
    ("options", '{ method = "OPTIONS" }', HealthConfig(method="OPTIONS")),
    ("tcp", '{ type = "tcp", interval = "1s", timeout = "100ms" }',
     HealthConfig(type="tcp", interval=1.0, timeout=0.1)),
    ("explicit http type", '{ type = "http", path = "/up" }', HealthConfig(path="/up")),
    ("timeout longer than interval is allowed", '{ interval = "1s", timeout = "5s" }',
     HealthConfig(interval=1.0, timeout=5.0)),
]


@pytest.mark.parametrize("value,expected", [h[1:] for h in HEALTH_GOOD], ids=[h[0] for h in HEALTH_GOOD])
def test_health_good(value, expected):
    cfg = loads(pool_with(f"health = {value}"))
    assert cfg.pool("app").health == expected
    assert loads(dump(cfg)) == cfg


def test_health_as_a_sub_table_header():
    cfg = loads(pool_with('\n[pool.app.health]\ntype = "tcp"\nrise = 5'))
    assert cfg.pool("app").health == HealthConfig(type="tcp", rise=5)


def test_health_absent_means_no_active_checks_and_passive_defaults():
    cfg = loads(MINIMAL)
    pool = cfg.pool("app")
    assert pool.health is None
    assert (pool.max_fails, pool.fail_timeout, pool.fail_status, pool.slow_start) == (1, 10.0, (), 0.0)
    assert cfg.server.initial_health == "up"
    assert "# health is not set" in dump(cfg)


def test_passive_keys_and_initial_health():
    cfg = loads('[server]\ninitial_health = "down"\n'
                + pool_with('max_fails = 0\nfail_timeout = "30s"\nfail_status = [500, 502, 599]\nslow_start = "1m"'))
    pool = cfg.pool("app")
    assert (pool.max_fails, pool.fail_timeout, pool.fail_status, pool.slow_start) == (0, 30.0, (500, 502, 599), 60.0)
    assert cfg.server.initial_health == "down"
    assert loads(dump(cfg)) == cfg


def test_dump_of_a_tcp_check_omits_the_http_only_keys():
    out = dump(loads(pool_with('health = { type = "tcp" }')))
    assert 'health = { type = "tcp", interval = "2s", timeout = "1s", rise = 2, fall = 3 }' in out


DURATION_HINT = 'expected a duration with a unit, such as "500ms", "2s", "1m" or "1h"'
STATUS_HINT = 'expected a status code 100..599 or a range such as "200-399"'
H = "t.toml:10: pool.app.health"
P = "t.toml:10: pool.app"

HEALTH_BAD = [
    # (id, lines appended to [pool.app], expected errors in order)
    ("type unknown", 'health = { type = "udp" }',
     [f'{H}.type: unknown value "udp"; expected one of: http, tcp']),
    ("tcp with http-only keys", 'health = { type = "tcp", path = "/x", method = "HEAD", expect_status = [200], '
     'expect_body = "ok", host = "h", interval = "1s" }',
     [f'{H}.{k}: {k} is only valid with type = "http", not type = "tcp"'
      for k in ("path", "method", "expect_status", "expect_body", "host")]),
    ("bad type hides the http-only check", 'health = { type = "udp", path = "/x" }',
     [f'{H}.type: unknown value "udp"; expected one of: http, tcp']),
    ("zero interval, bare timeout", 'health = { interval = "0s", timeout = 1 }',
     [f"{H}.interval: must be greater than zero",
      f'{H}.timeout: {DURATION_HINT}; bare numbers are not accepted: write "1s"']),
    ("zero timeout", 'health = { timeout = "0ms" }', [f"{H}.timeout: must be greater than zero"]),
    ("fastinter and downinter", 'health = { fastinter = "0s", downinter = "5d" }',
     [f"{H}.fastinter: must be greater than zero", f'{H}.downinter: {DURATION_HINT}, got "5d"']),
    ("rise and fall bounds", "health = { rise = 0, fall = 101 }",
     [f"{H}.rise: expected an integer 1..100, got 0", f"{H}.fall: expected an integer 1..100, got 101"]),
    ("rise as string", 'health = { rise = "2" }', [f"{H}.rise: expected an integer, got a string"]),
    ("method unknown", 'health = { method = "POST" }',
     [f'{H}.method: unknown value "POST"; expected one of: GET, HEAD, OPTIONS']),
    ("method case", 'health = { method = "get" }',
     [f'{H}.method: unknown value "get"; expected one of: GET, HEAD, OPTIONS (did you mean "GET"?)']),
    ("status too low", "health = { expect_status = 99 }", [f"{H}.expect_status: {STATUS_HINT}, got 99"]),
    ("status too high", "health = { expect_status = [200, 600] }", [f"{H}.expect_status: {STATUS_HINT}, got 600"]),
    ("range reversed", 'health = { expect_status = "400-300" }',
     [f'{H}.expect_status: empty range "400-300": write the lower code first']),
    ("range out of bounds", 'health = { expect_status = ["100-600"] }',
     [f'{H}.expect_status: status codes must be 100..599, got "100-600"']),
    ("status class", 'health = { expect_status = "2xx" }', [f'{H}.expect_status: {STATUS_HINT}, got "2xx"']),
    ("status as digits string", 'health = { expect_status = "200" }',
     [f'{H}.expect_status: {STATUS_HINT}, got "200"']),
    ("status empty", "health = { expect_status = [] }", [f"{H}.expect_status: must not be empty: {STATUS_HINT}"]),
    ("status boolean", "health = { expect_status = [200, true] }", [f"{H}.expect_status: {STATUS_HINT}, got a boolean"]),
    ("body regex invalid", 'health = { expect_body = "([" }',
     [f'{H}.expect_body: regular expression "([" refused by RE2: missing ]: [']),
    ("path without slash", 'health = { path = "healthz" }', [f'{H}.path: must start with "/", got "healthz"']),
    ("path with space", 'health = { path = "/a b" }',
     [f'{H}.path: must not contain spaces or control characters, got "/a b"']),
    ("host with space", 'health = { host = "a b" }',
     [f'{H}.host: must not contain spaces or control characters, got "a b"']),
    ("host empty", 'health = { host = "" }', [f"{H}.host: must not be empty"]),
    ("unknown health key", 'health = { intervl = "1s" }',
     [f'{H}.intervl: unknown key "intervl" in health = {{ ... }}; did you mean "interval"?']),
    ("health not a table", 'health = "yes"', [f"{H}: expected a table, got a string"]),
    ("health as sub-table, errors on their lines", '\n[pool.app.health]\ntype = "tcp"\n\npath = "/x"\nrise = 0',
     ['t.toml:14: pool.app.health.path: path is only valid with type = "http", not type = "tcp"',
      "t.toml:15: pool.app.health.rise: expected an integer 1..100, got 0"]),
    ("max_fails negative, fail_timeout zero", 'max_fails = -1\nfail_timeout = "0s"',
     [f"{P}.max_fails: expected an integer 0..1000, got -1", "t.toml:11: pool.app.fail_timeout: must be greater than zero"]),
    ("max_fails too high", "max_fails = 1001", [f"{P}.max_fails: expected an integer 0..1000, got 1001"]),
    ("fail_status not 5xx", "fail_status = [502, 404]", [f"{P}.fail_status: expected a status code 500..599, got 404"]),
    ("fail_status not an array", "fail_status = 502",
     [f"{P}.fail_status: expected an array of status codes 500..599 such as [502, 503, 504], got an integer"]),
    ("fail_status strings", 'fail_status = ["502"]',
     [f"{P}.fail_status: expected an integer status code 500..599, got a string"]),
    ("slow_start negative", 'slow_start = "-1s"', [f'{P}.slow_start: {DURATION_HINT}, got "-1s"']),
    ("slow_start bare", "slow_start = 30",
     [f'{P}.slow_start: {DURATION_HINT}; bare numbers are not accepted: write "30s"']),
]


@pytest.mark.parametrize("lines,expected", [b[1:] for b in HEALTH_BAD], ids=[b[0] for b in HEALTH_BAD])
def test_health_bad(lines, expected):
    assert errors_of(pool_with(lines)) == expected


@pytest.mark.parametrize("value,expected", [
    ('"up"', []), ('"down"', []),
    ('"DOWN"', ['t.toml:2: server.initial_health: unknown value "DOWN"; expected one of: up, down '
                '(did you mean "down"?)']),
    ("false", ["t.toml:2: server.initial_health: expected a string, got a boolean"]),
])
def test_initial_health(value, expected):
    text = f"[server]\ninitial_health = {value}\n" + MINIMAL
    if expected:
        assert errors_of(text) == expected
    else:
        assert loads(text).server.initial_health == value.strip('"')


# --- units --------------------------------------------------------------------

DURATIONS = [("500ms", 0.5), ("2s", 2.0), ("1.5s", 1.5), ("1m", 60.0), ("1h", 3600.0),
             ("0s", 0.0), ("100ms", 0.1), ("0.1s", 0.1), ("90m", 5400.0), ("1.5h", 5400.0)]
BAD_DURATIONS = [30, 1.5, "30", "2d", "-1s", "s", "1.s", "", True, [], "1e3s"]
SIZES = [(0, 0), (123, 123), ("64k", 65536), ("64K", 65536), ("1m", 1 << 20), ("1g", 1 << 30), ("77", 77)]
BAD_SIZES = [-1, "1.5m", "1t", "k", "", 1.0, True, "64kb"]


@pytest.mark.parametrize("text,seconds", DURATIONS)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("value", BAD_DURATIONS)
def test_parse_duration_rejects(value):
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize("value,n", SIZES)
def test_parse_size(value, n):
    assert parse_size(value) == n


@pytest.mark.parametrize("value", BAD_SIZES)
def test_parse_size_rejects(value):
    with pytest.raises(ValueError):
        parse_size(value)


@pytest.mark.parametrize("seconds,text", [(0.5, "500ms"), (30.0, "30s"), (60.0, "1m"), (5400.0, "90m"),
                                          (7200.0, "2h"), (1.5, "1.5s"), (0.0, "0s"), (0.0005, "0.0005s")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


@given(st.integers(0, 10**6), st.sampled_from(["ms", "s", "m", "h"]))
def test_duration_text_round_trip(n, unit):
    seconds = parse_duration(f"{n}{unit}")
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.floats(min_value=0, max_value=1e7, allow_nan=False, allow_infinity=False))
def test_format_duration_is_exact(seconds):
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.integers(0, 1 << 40))
def test_size_round_trip(n):
    assert parse_size(format_size(n)) == n


# --- dump round trip ----------------------------------------------------------


@pytest.mark.parametrize("text", [MINIMAL, FULL], ids=["minimal", "full"])
def test_dump_round_trip(text):
    cfg = loads(text, "a.toml")
    out = dump(cfg)
    assert loads(out, "a.toml") == cfg
    assert dump(loads(out, "a.toml")) == out


def test_a_split_route_round_trips():
    text = MINIMAL.replace('pool = "app"', 'pools = [{ pool = "app", weight = 95 }, '
                           '{ pool = "v2", weight = 5 }]\nsplit_by = "header:X-User"\n'
                           'read_timeout = "2s"\nconnect_timeout = "500ms"') \
        + '[pool.v2]\nservers = [{ addr = "127.0.0.1:9001" }]\n'
    cfg = loads(text, "a.toml")
    r = cfg.routes[0]
    assert r.pool is None and r.split_by == "header:x-user"
    assert (r.split.pools, r.split.weights, r.split.by) == (("app", "v2"), (95, 5), "header:x-user")
    assert r.timeouts == (0.5, None, 2.0)
    assert cfg.routes[0].split is not None and loads(MINIMAL, "a.toml").routes[0].timeouts is None
    out = dump(cfg)
    assert "# pool is not set" in out
    assert 'pools = [\n  { pool = "app", weight = 95 },\n  { pool = "v2", weight = 5 },\n]' in out
    assert loads(out, "a.toml") == cfg


def test_a_retry_budget_round_trips():
    cfg = loads(MINIMAL + 'retry = { budget = "12.5%", budget_min = 0 }\n', "a.toml")
    retry = cfg.pools[0].retry
    assert (retry.budget, retry.budget_min) == (12.5, 0)
    assert 'budget = "12.5%", budget_min = 0' in dump(cfg)
    assert loads(dump(cfg), "a.toml") == cfg
    assert loads(MINIMAL + "retry = {}\n", "a.toml").pools[0].retry.budget is None


def test_an_outlier_table_round_trips():
    cfg = loads(MINIMAL + 'outlier = { consecutive_5xx = 3, interval = "500ms", '
                'success_rate_stdev_factor = 1 }\n', "a.toml")
    o = cfg.pools[0].outlier
    assert (o.consecutive_5xx, o.interval, o.success_rate_stdev_factor) == (3, 0.5, 1.0)
    assert (o.base_ejection_time, o.max_ejection_time, o.success_rate) == (30.0, 300.0, True)
    assert "success_rate_stdev_factor = 1.0" in dump(cfg)
    assert loads(dump(cfg), "a.toml") == cfg
    assert loads(MINIMAL, "a.toml").pools[0].outlier is None


@pytest.mark.parametrize("table, message", [
    ('{ success_rate_stdev_factor = "1.9" }', "expected a number"),
    ("{ success_rate_stdev_factor = -1 }", "0..100"),
    ('{ interval = "0s" }', "greater than zero"),
    ("{ consecutive_5xx = 1001 }", "0..1000"),
    ("{ ejection = 1 }", "ejection"),
])
def test_outlier_values_are_checked(table, message):
    with pytest.raises(ConfigErrors) as e:
        loads(MINIMAL + f"outlier = {table}\n", "a.toml")
    assert message in str(e.value)


_EDGE_SECTIONS = ("route.deny", "route.rate_limit", "route.rewrite", "route.redirect",
                  "route.request_headers", "route.response_headers")


def test_a_mirror_round_trips():
    text = MINIMAL.replace('pool = "app"\n', 'pool = "app"\nmirror = { pool = "app" }\n', 1)
    cfg = loads(text, "a.toml")
    m = cfg.routes[0].mirror
    assert (m.pool, m.percent, m.queue, m.max_body, m.timeout) == ("app", 100, 64, 65536, 2.0)
    out = dump(cfg)
    assert 'mirror = { pool = "app", percent = 100, queue = 64, max_body = "64k", timeout = "2s" }' \
        in out
    assert loads(out, "a.toml") == cfg
    assert loads(MINIMAL, "a.toml").routes[0].mirror is None
    for bad, why in (('{ pool = "ap" }', 'mirror.pool: no pool named "ap"; did you mean "app"?'),
                     ('{ pool = "app", percent = 101 }',
                      "mirror.percent: expected an integer 0..100, got 101"),
                     ('{ percent = 10 }', "mirror.pool"),
                     ('{ pool = "app", queue = 0 }', "mirror.queue")):
        with pytest.raises(ConfigErrors) as e:
            loads(text.replace('{ pool = "app" }', bad), "a.toml")
        assert f"a.toml:7: route[0].{why}" in str(e.value)


def test_dump_fills_every_default():
    out = dump(loads(pool_with('health = {}\nbalance = "hash"\nsticky = {}\nretry = {}\nqueue = {}'
                               '\noutlier = {}')))
    for s in SETTINGS:
        if s.section in _EDGE_SECTIONS:
            continue  # not in this config; tests/e2e/test_edge_rules.py
        if s.section == "pool.servers" and s.name in ("addr", "dns", "srv"):
            continue  # one of them per entry: pool_with's servers have addr
        if s.section == "route.pools" or (s.section, s.name) == ("route", "pool"):
            continue  # a route has pool or pools: test_a_split_route_round_trips
        if s.default is None and "." in s.section:
            # An inline table leaves unset keys out: no comment fits inside { }.
            assert f" {s.name} = " not in out, s.name
        elif s.when or s.section in ("listener.tls", "listener.certs", "pool.tls",
                                     "route.compress", "route.mirror"):
            continue  # mode = "tcp" only; TLS: tests/e2e/test_tls.py; compress:
            # test_encoding.py; mirror: test_a_mirror_round_trips
        elif s.default is None:
            assert f"# {s.name} is not set" in out
        else:
            assert f"\n{s.name} = " in out or f" {s.name} = " in out, s.name


durations = st.integers(1, 10**5).map(lambda n: n / 10)
names = st.from_regex(r"[a-z][a-z0-9_.-]{0,10}", fullmatch=True)
addrs = st.one_of(
    st.tuples(st.ip_addresses(v=4).map(str), st.integers(1, 65535)).map(lambda t: f"{t[0]}:{t[1]}"),
    st.tuples(st.ip_addresses(v=6).map(str), st.integers(1, 65535)).map(lambda t: f"[{t[0]}]:{t[1]}"),
)
servers = st.builds(
    lambda addr, w, b: ServerEntry(addr, *config.split_host_port(addr), w, b),
    addrs, st.integers(1, 1000), st.booleans())


status_ranges = st.lists(
    st.tuples(st.integers(100, 599), st.integers(0, 100)).map(lambda t: (t[0], min(599, t[0] + t[1]))),
    min_size=1, max_size=3).map(tuple)
http_health = st.builds(
    HealthConfig, st.just("http"), st.sampled_from(["/", "/healthz?x=1", "/q\"uote"]),
    st.sampled_from(["GET", "HEAD", "OPTIONS"]), status_ranges,
    st.one_of(st.none(), st.sampled_from(["ok", "^\\s*\\{", '"up"'])),
    st.one_of(st.none(), st.just("health.internal")),
    durations, durations, st.integers(1, 100), st.integers(1, 100),
    st.one_of(st.none(), durations), st.one_of(st.none(), durations))
tcp_health = st.builds(HealthConfig, st.just("tcp"), interval=durations, timeout=durations,
                       rise=st.integers(1, 100), fall=st.integers(1, 100),
                       fastinter=st.one_of(st.none(), durations), downinter=st.one_of(st.none(), durations))


@st.composite
def configs(draw):
    pool_names = draw(st.lists(names, min_size=1, max_size=3, unique=True))
    pools = tuple(
        PoolConfig(n, tuple(draw(st.lists(servers, min_size=1, max_size=4,  # no duplicates
                                             unique_by=lambda s: (ipaddress.ip_address(s.host),
                                                                  s.port)))),
                   connect_timeout=draw(durations), keepalive=draw(st.integers(0, 100)),
                   keepalive_timeout=draw(st.sampled_from([0.0, 0.25, 90.0])),
                   health=draw(st.one_of(st.none(), http_health, tcp_health)),
                   max_fails=draw(st.integers(0, 1000)), fail_timeout=draw(durations),
                   fail_status=tuple(draw(st.lists(st.integers(500, 599), max_size=3))),
                   slow_start=draw(st.sampled_from([0.0, 0.5, 30.0])))
        for n in pool_names)
    ports = draw(st.lists(st.integers(1, 65535), min_size=1, max_size=3, unique=True))
    listeners = tuple(ListenerConfig(f"l{i}", f"127.0.0.1:{p}", "127.0.0.1", p) for i, p in enumerate(ports))
    routes = tuple(
        RouteConfig(i, draw(st.sampled_from(pool_names)),
                    tuple(draw(st.lists(st.sampled_from([lst.name for lst in listeners]), max_size=2))),
                    draw(st.one_of(st.none(), st.sampled_from(["a.example", "*.example.com"]))),
                    draw(st.one_of(st.none(), st.sampled_from(["/", "/api/", '/q"uote'])) ),
                    None,
                    draw(st.one_of(st.none(), st.just("up.internal"))),
                    draw(st.one_of(st.none(), st.integers(0, 1 << 33))))
        for i in range(draw(st.integers(0, 3))))
    server = ServerConfig(
        workers=draw(st.integers(1, 64)),
        graceful_timeout=draw(durations),
        header_timeout=draw(durations),
        max_body_size=draw(st.integers(0, 1 << 34)),
        max_head_size=draw(st.integers(1, 1 << 20)),
        trusted_proxies=tuple(draw(st.lists(st.ip_addresses().map(ipaddress.ip_network), max_size=3))),
        user=draw(st.one_of(st.none(), st.just("nobody"))),
        error_log=draw(st.sampled_from(["-", "/var/log/é.log", "a\tb", "back\\slash"])),
        access_log_format=draw(st.sampled_from(["combined", "json"])),
        initial_health=draw(st.sampled_from(["up", "down"])),
    )
    return Config("h.toml", server, listeners, routes, pools)


@settings(max_examples=200, deadline=None)
@given(configs())
def test_dump_round_trip_property(cfg):
    assert loads(dump(cfg), "h.toml") == cfg


# --- duplicate servers (an error at every load) --------------------------------


@pytest.mark.parametrize("servers, expected", [
    ('servers = [{ addr = "127.0.0.1:9000" }, { addr = "127.0.0.1:9000", backup = true }]',
     ['t.toml:2: pool.app.servers[1].addr: duplicate server "127.0.0.1:9000" (also servers[0])']),
    ('servers = [\n  { addr = "[::1]:80" },\n  { addr = "10.0.0.1:80" },\n  { addr = "[0::1]:80" },\n]',
     ['t.toml:5: pool.app.servers[2].addr: duplicate server "[0::1]:80" (also servers[0])']),
    ('servers = [{ addr = "App.Internal:80" }, { addr = "app.internal.:80" }, '
     '{ addr = "app.internal:80" }]',
     ['t.toml:2: pool.app.servers[1].addr: duplicate server "app.internal.:80" (also servers[0])',
      't.toml:2: pool.app.servers[2].addr: duplicate server "app.internal:80" (also servers[0])']),
    ('[[pool.app.servers]]\naddr = "h:1"\n[[pool.app.servers]]\naddr = "h:1"',
     ['t.toml:5: pool.app.servers[1].addr: duplicate server "h:1" (also servers[0])']),
], ids=["backup", "ipv6", "names", "array-of-tables"])
def test_duplicate_server_addresses_are_errors(servers, expected):
    text = "[pool.app]\n" + servers + "\n" + MINIMAL.split("[pool.app]")[0]
    assert errors_of(text) == expected


def test_same_address_in_two_pools_is_fine():
    loads(MINIMAL + '\n[pool.other]\nservers = [{ addr = "127.0.0.1:9000" }]\n', "t.toml")
    loads(MINIMAL.replace('"127.0.0.1:9000" }]', '"127.0.0.1:9000" }, { addr = "127.0.0.1:9001" }]'))


# --- warnings: what -t reports and still accepts ----------------------------------


SHADOWED = """\
[[listener]]
name = "web"
bind = "127.0.0.1:8080"

[[route]]
pool = "app"
host = "*.example.com"

[[route]]
pool = "app"
path = "/static/"

[[route]]
pool = "app"
host = "shop.example.com"
path = "/api/"

[[route]]
pool = "app"
path_regex = "[.]png$"

[[route]]
pool = "app"

[[route]]
pool = "app"
path_regex = "[.]png$"

[pool.app]
servers = [{ addr = "127.0.0.1:9000" }]
"""


def test_warnings_name_routes_that_can_never_match():
    ws = config.warnings(loads(SHADOWED, "s.toml"), SHADOWED, resolve_timeout=0)
    assert [str(w) for w in ws] == [
        "s.toml:13: route[2]: warning: this route never matches: route[0] before it takes "
        "every request it would",
        "s.toml:25: route[5]: warning: this route never matches: route[3] before it takes "
        "every request it would"]


def test_warnings_name_servers_that_do_not_resolve():
    # RFC 6761: no name under .invalid resolves, with or without a resolver.
    text = MINIMAL.replace('{ addr = "127.0.0.1:9000" }]',
                           '{ addr = "127.0.0.1:9000" },\n  { addr = "nonexistent.invalid:80" },\n'
                           '  { addr = "localhost:9001" }]')
    text += '\n[cache]\nservers = ["memcached.invalid:11211"]\n'
    ws = config.warnings(loads(text, "r.toml"), text)
    assert [(w.line, w.key) for w in ws] == [(10, "pool.app.servers[1].addr"),
                                              (14, "cache.servers[0]")]
    assert ws[0].message.startswith('warning: "nonexistent.invalid" does not resolve now (')
    assert ws[0].message.endswith("); forkproxy resolves it again when it connects")


def test_warnings_name_what_a_fleet_shares_without_memcached():
    text = MINIMAL.replace('{ addr = "127.0.0.1:9000" }]',
                           '{ addr = "127.0.0.1:9000" }]\n'
                           'sticky = { key = "ip", scope = "fleet" }\n')
    text = text.replace('pool = "app"\n', 'pool = "app"\nrate_limit = { rate = "5r/s", '
                        'scope = "fleet" }\n', 1)
    ws = config.warnings(loads(text, "f.toml"), text, resolve_timeout=0)
    assert [(w.key, w.message) for w in ws] == [
        ("route[0].rate_limit.scope", 'warning: scope = "fleet" without cache.servers: nothing '
         "is shared, each node applies the limit on its own"),
        ("pool.app.sticky.scope", 'warning: scope = "fleet" without cache.servers: nothing '
         "is shared, each worker keeps its own sticky table")]
    assert all(w.line is not None for w in ws)
    shared = text + '\n[cache]\nservers = ["127.0.0.1:11211"]\n'
    assert config.warnings(loads(shared, "f.toml"), shared, resolve_timeout=0) == []


def test_warnings_name_cache_keys_on_a_route_that_does_not_cache():
    text = MINIMAL.replace('pool = "app"\n', 'pool = "app"\ncache_key = "shop"\n'
                           'cache_set_cookie = "strip"\n', 1)
    ws = config.warnings(loads(text, "c.toml"), text, resolve_timeout=0)
    assert [(w.key, w.message) for w in ws] == [
        (f"route[0].{key}", "warning: this route does not cache (no cache = true): the key "
         "has no effect") for key in ("cache_key", "cache_set_cookie")]
    assert all(w.line is not None for w in ws)
    caching = text.replace('cache_key = "shop"\n', 'cache_key = "shop"\ncache = true\n')
    assert config.warnings(loads(caching, "c.toml"), caching, resolve_timeout=0) == []


def test_no_warnings_for_a_plain_config():
    assert config.warnings(loads(MINIMAL, "m.toml"), MINIMAL) == []


def test_config_test_prints_warnings_and_succeeds(tmp_path):
    import subprocess
    import sys

    conf = tmp_path / "w.toml"
    conf.write_text(SHADOWED.replace('"127.0.0.1:9000"', '"nonexistent.invalid:9000"'))
    out = subprocess.run([sys.executable, "-m", "forkproxy", "-t", "-c", str(conf)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stderr.splitlines()
    assert [line.split(": ")[:3] for line in lines[:3]] == [
        [f"{conf}:13", "route[2]", "warning"], [f"{conf}:25", "route[5]", "warning"],
        [f"{conf}:30", "pool.app.servers[0].addr", "warning"]]
    assert lines[3:] == [f"forkproxy: configuration file {conf} test is successful"]


# --- pool protocol (HTTP/2 to the servers) ----------------------------------

@pytest.mark.parametrize("extra,error", [
    ('protocol = "h2"', 'protocol = "h2" is HTTP/2 over TLS: it needs tls'),
    ('protocol = "h2c"\ntls = { verify = false }', 'protocol = "h2c" is HTTP/2 over plain TCP'),
    ('protocol = "h2c"\nproxy_protocol = "v2"', "a pool with proxy_protocol serves tcp"),
    ('protocol = "h3"', "protocol"),
    ('tls = { verify = false }\nhealth = { path = "/" }', "HTTP/1.1 checks are sent without TLS"),
])
def test_pool_protocol_refuses_what_cannot_work(extra, error):
    errs = errors_of(MINIMAL + extra + "\n")
    assert any(error in e for e in errs), errs


@pytest.mark.parametrize("extra,protocol", [
    ("", "http1"), ('protocol = "h2c"', "h2c"),
    ('protocol = "h2"\ntls = { verify = false }\nhealth = { path = "/healthz" }', "h2"),
])
def test_pool_protocol_good(extra, protocol):
    assert loads(MINIMAL + extra + "\n").pools[0].protocol == protocol
