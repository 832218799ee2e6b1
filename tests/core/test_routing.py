"""Router: first match in file order over listener, host and path conditions."""

import re

import pytest
from hypothesis import given, strategies as st

from forkproxy.core.routing import RouteSpec, Router, shadowed

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


# -- shadowed: routes that can never match -----------------------------------------

WEB = frozenset({"web"})
BOTH = frozenset({"web", "tls"})


@pytest.mark.parametrize(
    "earlier, later, covered",
    [
        # a default route takes everything after it
        (R(0, "d"), R(1, "p", path="/api/"), True),
        (R(0, "d"), R(1, "p", host="a.example.com", path_regex=r"\.png$"), True),
        (R(0, "d"), R(1, "p"), True),
        # listeners: any covers some; some covers a subset only
        (R(0, "a", listeners=BOTH), R(1, "b", listeners=WEB), True),
        (R(0, "a", listeners=WEB), R(1, "b", listeners=BOTH), False),
        (R(0, "a", listeners=WEB), R(1, "b"), False),
        # hosts: exact, wildcard over an exact sub-domain or a deeper wildcard
        (R(0, "a", host="shop.example.com"), R(1, "b", host="SHOP.example.com."), True),
        (R(0, "a", host="shop.example.com"), R(1, "b", host="www.example.com"), False),
        (R(0, "a", host="*.example.com"), R(1, "b", host="shop.example.com"), True),
        (R(0, "a", host="*.example.com"), R(1, "b", host="example.com"), False),
        (R(0, "a", host="*.example.com"), R(1, "b", host="*.eu.example.com"), True),
        (R(0, "a", host="*.example.com"), R(1, "b", host="*.example.com"), True),
        (R(0, "a", host="*.eu.example.com"), R(1, "b", host="*.example.com"), False),
        (R(0, "a", host="shop.example.com"), R(1, "b", host="*.example.com"), False),
        (R(0, "a", host="*.example.com"), R(1, "b", host="badexample.com"), False),
        (R(0, "a", host="shop.example.com"), R(1, "b"), False),
        # paths: a prefix covers longer prefixes only
        (R(0, "a", path="/api"), R(1, "b", path="/api/v2/"), True),
        (R(0, "a", path="/api/"), R(1, "b", path="/api"), False),
        (R(0, "a", path="/api/"), R(1, "b"), False),
        (R(0, "a", path="/api/"), R(1, "b", path_regex="^/api/"), False),
        # regexes: only the same text, or one that matches every path
        (R(0, "a", path_regex=r"\.png$"), R(1, "b", path_regex=r"\.png$"), True),
        (R(0, "a", path_regex=r"\.png$"), R(1, "b", path_regex=r"\.(png)$"), False),
        (R(0, "a", path_regex=r"\.png$"), R(1, "b", path="/x.png"), False),
        (R(0, "a", path_regex=r"\.png$"), R(1, "b"), False),
        (R(0, "a", path_regex=".*"), R(1, "b", path_regex=r"\.png$"), True),
        (R(0, "a", path_regex="^/"), R(1, "b", path="/x"), False),
        # every condition must cover
        (R(0, "a", listeners=WEB, host="*.example.com", path="/"),
         R(1, "b", listeners=WEB, host="a.example.com", path="/x"), True),
        (R(0, "a", listeners=WEB, host="*.example.com", path="/"),
         R(1, "b", listeners=BOTH, host="a.example.com", path="/x"), False),
    ],
)
def test_shadowed_table(earlier, later, covered):
    assert shadowed([earlier, later]) == ([(1, 0)] if covered else [])


def test_shadowed_names_the_first_covering_route_once():
    specs = [R(0, "a", host="*.example.com"), R(1, "b", path="/x"), R(2, "c"),
             R(3, "d", host="shop.example.com"), R(4, "e")]
    assert shadowed(specs) == [(3, 0), (4, 2)]


def test_shadowed_of_an_ordinary_config_is_empty():
    assert shadowed(ROUTES) == []


conds = st.fixed_dictionaries({
    "listeners": st.sampled_from([frozenset(), WEB, BOTH]),
    "host": st.sampled_from([None, "a.example.com", "*.example.com", "*.a.example.com",
                             "example.com"]),
    "path": st.sampled_from([None, "/", "/a", "/a/", "/a/b"]),
    "path_regex": st.sampled_from([None, ".*", "^/a", r"b$"]),
})
requests = st.tuples(st.sampled_from(["web", "tls", "other"]),
                     st.sampled_from([None, "a.example.com", "x.a.example.com", "example.com",
                                      "b.example.com", "other.net"]),
                     st.sampled_from(["/", "/a", "/a/", "/a/b", "/ab", "/b", "/a/b/c"]))


@given(a=conds, b=conds, reqs=st.lists(requests, min_size=1, max_size=20))
def test_shadowed_is_never_wrong(a, b, reqs):
    """Whenever a route is reported shadowed, no request reaches it."""
    router = Router([R(0, "a", **a), R(1, "b", **b)])
    if shadowed(router.specs):
        for listener, host, path in reqs:
            got = router.match(listener, host, path)
            assert got is None or got.index == 0
