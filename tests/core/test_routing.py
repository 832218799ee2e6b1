"""Router: first match in file order over listener, host and path conditions."""

import re

import pytest
from hypothesis import given, strategies as st

from forkproxy.core.routing import RouteSpec, Router

R = RouteSpec

ROUTES = [
    R(0, "api", listeners=frozenset({"web", "websecure"}), host="shop.example.com", path="/api/"),
    R(1, "shop", host="shop.example.com"),
    R(2, "wild", host="*.example.com"),
    R(3, "images", path_regex=r"\.(png|jpe?g)$"),
    R(4, "admin", listeners=frozenset({"internal"}), path="/admin"),
    R(5, "exact-www", host="WWW.Other.ORG", path="/"),
    R(6, "default"),
]


@pytest.mark.parametrize(
    "listener, host, path, pool",
    [
        # order: the /api/ route shadows the plain host route
        ("web", "shop.example.com", "/api/items", "api"),
        ("websecure", "shop.example.com", "/api/", "api"),
        ("web", "shop.example.com", "/apix", "shop"),
        ("web", "shop.example.com", "/api", "shop"),  # prefix "/api/" needs the slash
        # listener filter: another listener skips route 0
        ("internal", "shop.example.com", "/api/items", "shop"),
        # wildcard matches sub-domains at any depth, not the bare domain
        ("web", "a.example.com", "/", "wild"),
        ("web", "a.b.example.com", "/x", "wild"),
        ("web", "example.com", "/", "default"),
        ("web", "badexample.com", "/", "default"),
        ("web", ".example.com", "/", "default"),
        # a route earlier in the file wins over the wildcard
        ("web", "shop.example.com", "/pic.png", "shop"),
        # regex is re.search on the path
        ("web", "other.net", "/img/pic.png", "images"),
        ("web", "other.net", "/img/pic.jpeg", "images"),
        ("web", "other.net", "/img/pic.png.txt", "default"),
        # listener-only + prefix
        ("internal", None, "/admin/users", "admin"),
        ("internal", None, "/administrator", "admin"),
        ("web", None, "/admin/users", "default"),
        # spec host is lower-cased at compile time
        ("web", "www.other.org", "/anything", "exact-www"),
        # fully qualified host is the same host
        ("web", "www.other.org.", "/anything", "exact-www"),
        ("web", "a.example.com.", "/", "wild"),
        # no host: host conditions fail, default wins
        ("web", None, "/api/items", "default"),
        ("web", "", "/", "default"),
    ],
)
def test_match_table(listener, host, path, pool):
    assert Router(ROUTES).match(listener, host, path).pool == pool


def test_no_match_without_default_route():
    router = Router(ROUTES[:-1])
    assert router.match("web", "nowhere.net", "/") is None
    assert router.match("web", None, "/") is None


def test_empty_router_matches_nothing():
    assert Router([]).match("web", "x", "/") is None


def test_first_match_wins_among_identical_routes():
    router = Router([R(0, "first", path="/"), R(1, "second", path="/")])
    assert router.match("web", None, "/x").index == 0


def test_path_and_regex_both_required():
    router = Router([R(0, "both", path="/static/", path_regex=r"\.css$"), R(1, "d")])
    assert router.match("l", None, "/static/a.css").pool == "both"
    assert router.match("l", None, "/static/a.js").pool == "d"
    assert router.match("l", None, "/other/a.css").pool == "d"


def test_returns_the_spec_object():
    spec = R(0, "p", host="a.b")
    assert Router([spec]).match("l", "a.b", "/") is spec


@pytest.mark.parametrize(
    "bad",
    [
        R(0, "p", host="www.*.com"),
        R(0, "p", host="example.*"),
        R(0, "p", host="*"),
        R(0, "p", host="**.x.com"),
        R(0, "p", host=""),
        R(0, "p", host="example.com:80"),
        R(0, "p", path_regex="("),
    ],
)
def test_invalid_specs_raise_value_error(bad):
    with pytest.raises(ValueError):
        Router([bad])


labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
hosts = st.lists(labels, min_size=1, max_size=4).map(".".join)


@given(sub=hosts, domain=hosts)
def test_wildcard_property(sub, domain):
    router = Router([R(0, "w", host="*." + domain)])
    assert router.match("l", f"{sub}.{domain}", "/") is not None
    assert router.match("l", domain, "/") is None


@given(host=hosts, path=st.from_regex(r"/[a-z/]{0,20}", fullmatch=True), prefix=st.from_regex(r"/[a-z/]{0,5}", fullmatch=True))
def test_matches_reference_implementation(host, path, prefix):
    specs = [
        R(0, "a", host=host, path=prefix),
        R(1, "b", path_regex=re.escape(prefix) + "$"),
        R(2, "c", host="*." + host.split(".", 1)[-1]),
    ]

    def reference(h, p):
        for s in specs:
            if s.host is not None:
                if s.host.startswith("*."):
                    if not (h.endswith(s.host[1:]) and len(h) > len(s.host) - 1):
                        continue
                elif h != s.host:
                    continue
            if s.path is not None and not p.startswith(s.path):
                continue
            if s.path_regex is not None and not re.search(s.path_regex, p):
                continue
            return s
        return None

    router = Router(specs)
    for h in (host, "x." + host, "other.test"):
        assert router.match("l", h, path) is reference(h, path)
