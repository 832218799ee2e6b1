"""net.http_cache.route_namespace: which routes share cache entries (issue 16).

Table-driven over real configuration text (``config.loads``): a route's
default namespace is a digest of what decides which requests reach it and
what is asked upstream for them; ``cache_key`` names one on purpose.
"""

from __future__ import annotations

import pytest

from forkproxy.config import loads
from forkproxy.net.http_cache import route_namespace

BASE = """
[[listener]]
name = "pub"
bind = "127.0.0.1:8080"

[[listener]]
name = "int"
bind = "127.0.0.1:8081"

[[route]]
{route}
cache = true

[pool.a]
servers = [{{ addr = "127.0.0.1:9000" }}]

[pool.b]
servers = [{{ addr = "127.0.0.1:9001" }}]
"""

ROUTE = 'listener = ["pub", "int"]\npath = "/x/"\npool = "a"'


def ns(route: str) -> str:
    return route_namespace(loads(BASE.format(route=route), "t.toml").routes[0])


@pytest.mark.parametrize("other, same", [
    # rules applied before the lookup or to every response alike: the same route
    (ROUTE + '\naccess = ["allow 127.0.0.1", "deny all"]', True),
    (ROUTE + '\nmethods = ["GET"]', True),
    (ROUTE + '\nhide_headers = ["Server"]', True),
    (ROUTE + '\nresponse_headers = { set = { "X-A" = "1" } }', True),
    (ROUTE + '\ncache_set_cookie = "strip"', True),
    ('listener = ["int", "pub"]\npath = "/x/"\npool = "a"', True),  # order of listeners
    # what a request reaches, and what goes upstream for it: another namespace
    ('listener = ["pub"]\npath = "/x/"\npool = "a"', False),
    ('listener = ["pub", "int"]\npath = "/y/"\npool = "a"', False),
    ('listener = ["pub", "int"]\npath = "/x/"\npool = "b"', False),
    (ROUTE + '\nhost = "shop.example"', False),
    (ROUTE + '\nstrip_prefix = "/x"', False),
    (ROUTE + '\nadd_prefix = "/v2"', False),
    (ROUTE + '\nhost_header = "backend.internal"', False),
    (ROUTE + '\nrequest_headers = { set = { "X-Tenant" = "1" } }', False),
    (ROUTE + '\nrewrite = [{ from = "^/x/(.*)", to = "/$1" }]', False),
])
def test_default_namespace(other, same):
    assert (ns(other) == ns(ROUTE)) is same
    assert ns(ROUTE).startswith("r:") and ns(ROUTE) == ns(ROUTE)  # stable across loads


def test_cache_key_names_the_namespace():
    assert ns(ROUTE + '\ncache_key = "shop"') == "k:shop"
    assert ns('path = "/other/"\npool = "b"\ncache_key = "shop"') == "k:shop"
    assert ns(ROUTE + '\ncache_key = "shop"') != ns(ROUTE)
