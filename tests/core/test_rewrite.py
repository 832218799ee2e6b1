"""URL rewrite pipeline, redirects, templates and header rules."""

import pytest
from hypothesis import given, strategies as st

from forkproxy.core.rewrite import (
    HEADER_VARIABLES, HeaderRules, Redirect, Template, compile_rewrites,
)

V = {"remote_addr": "192.0.2.1", "request_id": "abc123", "route": "api", "host": "ex.com",
     "scheme": "https", "request_uri": "/old/a?x=1"}


@pytest.mark.parametrize("steps, path, query, result", [
    # strip_prefix at a segment boundary only; the result keeps a leading "/"
    ({"strip_prefix": "/api"}, "/api/users", "q=1", ("/users", "q=1")),
    ({"strip_prefix": "/api"}, "/api", "", ("/", "")),
    ({"strip_prefix": "/api"}, "/apix", "", ("/apix", "")),
    ({"strip_prefix": "/api/"}, "/api/users", "", ("/users", "")),
    ({"strip_prefix": "/api/"}, "/api", "", ("/api", "")),
    # add_prefix, trailing slash folded
    ({"add_prefix": "/v2/"}, "/users", "", ("/v2/users", "")),
    ({"strip_prefix": "/api", "add_prefix": "/v2"}, "/api/u", "a", ("/v2/u", "a")),
    # rewrite replaces the whole path; the query is kept unless "to" sets one
    ({"rewrite": [("^/old/(.*)$", "/new/$1")]}, "/old/a/b", "x=1", ("/new/a/b", "x=1")),
    ({"rewrite": [("^/old/(.*)$", "/new/$1?")]}, "/old/a", "x=1", ("/new/a", "")),
    ({"rewrite": [("^/old/(.*)$", "/new?p=$1&$args")]}, "/old/a", "x=1", ("/new", "p=a&x=1")),
    ({"rewrite": [("^/u/(?P<id>\\d+)$", "/users/${id}/$id")]}, "/u/42", "", ("/users/42/42", "")),
    ({"rewrite": [("^/a", "/$$1")]}, "/a", "", ("/$1", "")),
    ({"rewrite": [("^/(a)?b", "/x$1y")]}, "/b", "", ("/xy", "")),     # unset group -> ""
    ({"rewrite": [("^/nomatch", "/x")]}, "/a", "q", ("/a", "q")),
    # rules chain in order, each on the previous result
    ({"rewrite": [("^/a(.*)", "/b$1"), ("^/b(.*)", "/c$1")]}, "/a/1", "", ("/c/1", "")),
    ({"rewrite": [("^/b(.*)", "/c$1"), ("^/a(.*)", "/b$1")]}, "/a/1", "", ("/b/1", "")),
    # $uri is the path so far; variables are percent-encoded in URLs
    ({"strip_prefix": "/p", "rewrite": [("^/", "/x$uri")]}, "/p/q", "", ("/x/q", "")),
    ({"rewrite": [("^/", "/by/$remote_addr")]}, "/", "", ("/by/192.0.2.1", "")),
])
def test_rewrite_table(steps, path, query, result):
    assert compile_rewrites(**steps).apply(path, query, V) == result


@pytest.mark.parametrize("steps, path, query, redirect", [
    ({"redirect": ("https://$host$request_uri", 301)}, "/old/a", "x=1",
     Redirect(301, "https://ex.com/old/a?x=1")),
    ({"rewrite": [("^/old/(.*)", "/new/$1")], "redirect": ("$scheme://$host$uri$is_args$args", 308)},
     "/old/a", "x=1", Redirect(308, "https://ex.com/new/a?x=1")),
    ({"redirect": ("/moved$uri$is_args$args", 302)}, "/a", "", Redirect(302, "/moved/a")),
])
def test_redirects(steps, path, query, redirect):
    assert compile_rewrites(**steps).apply(path, query, V) == redirect


@pytest.mark.parametrize("to, path, query, location", [
    # issue 16: GET //evil.example with redirect to "$uri/" (merge_slashes off,
    # or any path a template puts first) must not send the browser to evil.example
    ("$uri/", "//evil.example", "", "/evil.example/"),
    ("$uri/", "///evil.example", "", "/evil.example/"),
    ("$uri", "/\\evil.example", "", "/evil.example"),
    ("$args", "/", "//evil.example/x", "/evil.example/x"),
    ("$args", "/", "\\\\evil.example", "/evil.example"),
    ("$args", "/", "\\/evil.example", "/evil.example"),
    ("/$args", "/", "/evil.example", "/evil.example"),
    # what stays as it was: one leading slash, absolute URLs, relative references
    ("$uri/", "/a//b", "", "/a//b/"),
    ("https://$host$uri", "//evil.example", "", "https://ex.com//evil.example"),
    ("$args", "/", "x/y", "x/y"),
])
def test_redirect_location_is_never_scheme_relative(to, path, query, location):
    assert compile_rewrites(redirect=(to, 302)).apply(path, query, V).location == location


def test_unsafe_variable_values_are_percent_encoded_in_urls():
    r = compile_rewrites(redirect=("https://$host/x", 302))
    loc = r.apply("/", "", {"host": "a\r\nSet-Cookie: x"}).location
    assert loc == "https://a%0D%0ASet-Cookie:%20x/x"


@pytest.mark.parametrize("steps", [
    {"strip_prefix": "api"},
    {"add_prefix": "/a b"},
    {"rewrite": [("^/(.*)", "new/$1")]},          # must start with /
    {"rewrite": [("^/(.*)", "/$2")]},             # no such group
    {"rewrite": [("^/(.*)", "/$nope")]},          # unknown variable
    {"rewrite": [("^/(.*)", "/$")]},              # lone $
    {"rewrite": [("^/(.*)", "/a b")]},            # space in a literal
    {"rewrite": [("^/(.*)", "/a#b")]},
    {"rewrite": [("(?=a)", "/x")]},               # RE2 has no lookahead
    {"rewrite": [("^/", "/$upstream_addr")]},     # not known before the pick
    {"redirect": ("/x", 200)},
    {"redirect": ("", 301)},
])
def test_load_errors(steps):
    with pytest.raises(ValueError):
        compile_rewrites(**steps)


def test_template_parts():
    assert Template("a$$b${host}$x1", frozenset({"host", "x1"})).parts == (
        "a", "$", "b", ("v", "host"), ("v", "x1"))


@given(st.text(alphabet="/abc-._~%", max_size=20), st.text(alphabet="=&ab", max_size=10))
def test_empty_pipeline_is_identity(path, query):
    path = "/" + path
    assert compile_rewrites().apply(path, query, {}) == (path, query)


@given(st.text(alphabet="/abc", max_size=20))
def test_strip_then_add_same_prefix_round_trips(rest):
    path = "/api/" + rest
    r = compile_rewrites(strip_prefix="/api", add_prefix="/api")
    assert r.apply(path, "", {}) == (path, "")


# -- header rules ----------------------------------------------------------------------

H = [("host", "ex.com"), ("cookie", "a=1"), ("x-real-ip", "6.6.6.6"), ("accept", "*/*")]


def test_header_rules_remove_set_add():
    rules = HeaderRules(set={"X-Real-IP": "$remote_addr", "Host": "$upstream_addr"},
                        add={"X-Via-Route": "route=$route", "Accept": "text/html"},
                        remove=["Cookie"])
    out = rules.apply(H, dict(V, upstream_addr="10.0.0.1:8080"))
    assert out == [("accept", "*/*"), ("x-real-ip", "192.0.2.1"), ("host", "10.0.0.1:8080"),
                   ("x-via-route", "route=api"), ("accept", "text/html")]
    assert H[1] == ("cookie", "a=1")  # input untouched


@pytest.mark.parametrize("value, variables, kept", [
    ("$request_id", {"request_id": "ok-1"}, "ok-1"),
    ("$request_id", {"request_id": "a\r\nX-Evil: 1"}, None),   # CR/LF: dropped
    ("$request_id", {"request_id": "a\x00b"}, None),
    ("$request_id", {"request_id": "a\tb"}, "a\tb"),           # tab is legal
    ("$request_id", {}, None),                                 # empty: dropped
    ("id $request_id ", {"request_id": ""}, "id"),             # trimmed
])
def test_unsafe_or_empty_values_drop_the_field(value, variables, kept):
    out = HeaderRules(set={"X-Id": value}).apply([("x-id", "old")], variables)
    assert out == ([("x-id", kept)] if kept is not None else [])


@pytest.mark.parametrize("kwargs", [
    {"set": {"Content-Length": "1"}},
    {"add": {"Transfer-Encoding": "chunked"}},
    {"remove": ["Connection"]},
    {"add": {"Host": "x"}},
    {"remove": ["host"]},
    {"set": {"bad name": "x"}},
    {"set": {"X": "a\r\nb"}},
    {"set": {"X": "$request_uri"}},      # a URL variable, not a header one
    {"set": {"X": "$1"}},                # no regex, no groups
])
def test_header_rule_load_errors(kwargs):
    with pytest.raises(ValueError):
        HeaderRules(**kwargs)


def test_every_header_variable_expands():
    names = sorted(HEADER_VARIABLES)
    rules = HeaderRules(add={f"X-{n}": f"${n}" for n in names})
    out = rules.apply([], {n: n.upper() for n in names})
    assert out == [(f"x-{n}", n.upper()) for n in names]
    assert not HeaderRules() and rules
