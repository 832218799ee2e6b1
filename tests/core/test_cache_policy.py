"""RFC 9111 policy as tables of RFC cases; each row names the section it checks."""

import math
from email.utils import formatdate

import pytest
from hypothesis import given, strategies as st

from forkproxy.core.cache_policy import decision
from forkproxy.core.cache_policy.dates import parse_http_date
from forkproxy.core.cache_policy.decision import (
    Action, not_modified_headers, plain_lifetime, serve_headers, stale_if_error_ok,
)
from forkproxy.core.cache_policy.directives import (
    _NO_DIRECTIVES, DEFAULT_CDN_HEADER, Directives, _request_directives, parse_cache_control,
    parse_cdn_cache_control, response_directives,
)
from forkproxy.core.cache_policy.entry import Entry, conditional_headers, make_entry
from forkproxy.core.cache_policy.freshness import (
    _age_value, age_value, current_age, freshness_lifetime,
)
from forkproxy.core.cache_policy.invalidation import invalidations
from forkproxy.core.cache_policy.keys import primary_key
from forkproxy.core.cache_policy.storability import SET_COOKIE_MODES, not_storable_reason, storable
from forkproxy.core.cache_policy.validation import can_freshen, client_not_modified, merge_304
from forkproxy.core.cache_policy.vary import vary_key

T0 = 1_700_000_000.0                   # a fixed "now" for the origin's clock
HMAX = 86400.0


def d(t):
    return formatdate(t, usegmt=True)


def entry(headers, status=200, request_time=T0, response_time=T0, req_headers=()):
    return make_entry(status, "OK", list(req_headers), list(headers), request_time, response_time)


def decide(e, req=(), now=T0, method="GET", cdn=DEFAULT_CDN_HEADER):
    return decision.decide(e, method, list(req), now, heuristic_max=HMAX, cdn_header=cdn)


# ------------------------------------------------------------------ parsing

@pytest.mark.parametrize("values, expect", [
    # RFC 9111 5.2: names case-insensitive, token or quoted argument
    (["Max-Age=60"], {"max_age": 60}),
    (['max-age="60"'], {"max_age": 60}),
    # RFC 9111 4.2.1: first occurrence wins, across lines too
    (["max-age=60, max-age=5"], {"max_age": 60}),
    (["max-age=60", "max-age=5"], {"max_age": 60}),
    # RFC 9111 4.2.1: invalid delta-seconds -> stale (0)
    (["max-age=abc"], {"max_age": 0}),
    (["max-age"], {"max_age": 0}),
    (["s-maxage=-1"], {"s_maxage": 0}),
    (["max-age=1.5"], {"max_age": 0}),
    # RFC 9111 1.2.2: overflow -> 2^31
    (["max-age=99999999999999999999"], {"max_age": 2 ** 31}),
    # permissive directives dropped when invalid
    (["stale-while-revalidate=x, stale-if-error=-3"], {"stale_while_revalidate": None, "stale_if_error": None}),
    (["max-stale"], {"max_stale": math.inf}),
    (["max-stale=10"], {"max_stale": 10}),
    (["max-stale=ten"], {"max_stale": None}),
    # RFC 9111 5.2.3: unknown directives ignored (kept as extensions), not "do not cache"
    (['community="UCI", max-age=5'], {"max_age": 5, "extensions": (("community", "UCI"),)}),
    (['foo="a,b", no-store'], {"no_store": True, "extensions": (("foo", "a,b"),)}),
    # RFC 9111 5.2.2.4: qualified no-cache treated as unqualified
    (['no-cache="set-cookie"'], {"no_cache": True, "private": False}),
    # RFC 9111 5.2.2.7: qualified private names fields not to store; every one counts
    (['no-cache="set-cookie", private="x"'], {"no_cache": True, "private": False,
                                             "private_fields": ("x",)}),
    (['private="Set-Cookie, X-User"'], {"private": False, "private_fields": ("set-cookie", "x-user")}),
    (['private="a"', 'private="b", private="a"'], {"private": False, "private_fields": ("a", "b")}),
    (['private="a", private'], {"private": True, "private_fields": ("a",)}),
    (['private, private="a"'], {"private": True, "private_fields": ("a",)}),
    # an argument that is not a list of field names: unqualified (do not store)
    (['private=""'], {"private": True, "private_fields": ()}),
    (['private="a b"'], {"private": True, "private_fields": ()}),
    (['private="a,,b"'], {"private": True, "private_fields": ()}),
    (['private="(x)"'], {"private": True, "private_fields": ()}),
    (["public, must-revalidate, proxy-revalidate, only-if-cached, must-understand"],
     {"public": True, "must_revalidate": True, "proxy_revalidate": True,
      "only_if_cached": True, "must_understand": True}),
    ([",,, ,"], {}),
])
def test_parse_cache_control(values, expect):
    got = parse_cache_control(values)
    for attr, value in expect.items():
        assert getattr(got, attr) == value, attr
    if not expect:
        assert got == Directives()


@pytest.mark.parametrize("values, expect", [
    # RFC 9213 2.1 / RFC 8941 4.2.2
    (["max-age=60"], {"max_age": 60}),
    (["max-age=60, no-store"], {"max_age": 60, "no_store": True}),
    (["no-store=?0, max-age=1"], {"no_store": False, "max_age": 1}),
    (['private=("set-cookie")'], {"private": False, "private_fields": ("set-cookie",)}),
    (['private=("set-cookie" x-user)'], {"private": False, "private_fields": ("set-cookie", "x-user")}),
    (["private"], {"private": True, "private_fields": ()}),
    (["private=?1"], {"private": True}),
    (["private=()"], {"private": True, "private_fields": ()}),
    (["private=(1 2)"], {"private": True, "private_fields": ()}),
    (['private=("a b")'], {"private": True, "private_fields": ()}),
    (["max-age=5, max-age=7"], {"max_age": 7}),          # RFC 8941: last wins
    (["max-age=1;foo=bar, s-maxage=2"], {"max_age": 1, "s_maxage": 2}),
    (['max-age="60"'], {"max_age": 0}),                   # wrong type -> stale
    (["max-age=-1"], {"max_age": 0}),
    (["stale-if-error=1.5"], {"stale_if_error": None}),
    (["unknown-thing=tok, max-age=3"], {"max_age": 3, "extensions": (("unknown-thing", "tok"),)}),
])
def test_parse_cdn_cache_control(values, expect):
    got = parse_cdn_cache_control(values)
    assert got is not None
    for attr, value in expect.items():
        assert getattr(got, attr) == value, attr


@pytest.mark.parametrize("values", [
    ["Max-Age=60"], ["max-age=60,"], ["max-age=6 0"], ["max-age=60;"], ['a="unterminated'],
    [""], [], ["max-age=(1 2"], ["=1"],
])
def test_parse_cdn_cache_control_invalid_is_none(values):
    # RFC 9213 2.1: an invalid targeted field is ignored
    assert parse_cdn_cache_control(values) is None


@pytest.mark.parametrize("value, expect", [
    # RFC 9110 5.6.7: the three formats
    ("Sun, 06 Nov 1994 08:49:37 GMT", 784111777.0),
    ("Sunday, 06-Nov-94 08:49:37 GMT", 784111777.0),
    ("Sun Nov  6 08:49:37 1994", 784111777.0),
    ("  Sun, 06 Nov 1994 08:49:37 GMT ", 784111777.0),
    # invalid: wrong case, wrong zone, impossible date, out-of-range time, junk
    ("sun, 06 nov 1994 08:49:37 gmt", None),
    ("Sun, 06 Nov 1994 08:49:37 UTC", None),
    ("Sun, 31 Feb 1994 08:49:37 GMT", None),
    ("Sun, 06 Nov 1994 24:00:00 GMT", None),
    ("Sun, 6 Nov 1994 08:49:37 GMT", None),
    ("Sun, \u0660\u0666 Nov 1994 08:49:37 GMT", None),      # ASCII digits only
    ("0", None), ("-1", None), ("", None), ("Sun, 06 Nov 1994", None),
])
def test_parse_http_date(value, expect):
    assert parse_http_date(value) == expect


def test_rfc850_fifty_year_rule():
    # RFC 9110 5.6.7: a two-digit year > 50 years ahead is the past century
    now = parse_http_date("Sat, 01 Jan 2050 00:00:00 GMT")
    assert parse_http_date("Friday, 01-Jan-99 00:00:00 GMT", now) == parse_http_date(
        "Fri, 01 Jan 2099 00:00:00 GMT")
    assert parse_http_date("Thursday, 01-Jan-01 00:00:00 GMT", now) == parse_http_date(
        "Mon, 01 Jan 2001 00:00:00 GMT")
    now2 = parse_http_date("Mon, 01 Jan 2024 00:00:00 GMT")
    assert parse_http_date("Friday, 01-Jan-99 00:00:00 GMT", now2) == parse_http_date(
        "Fri, 01 Jan 1999 00:00:00 GMT")


@given(st.integers(min_value=0, max_value=253402300799))
def test_http_date_round_trips_formatdate(t):
    assert parse_http_date(formatdate(t, usegmt=True)) == t


@given(st.lists(st.text(), max_size=4))
def test_parse_cache_control_never_raises(values):
    got = parse_cache_control(values)
    assert got.max_age is None or 0 <= got.max_age <= 2 ** 31


@given(st.lists(st.text(), max_size=4))
def test_parse_cdn_cache_control_never_raises(values):
    got = parse_cdn_cache_control(values)
    assert got is None or isinstance(got, Directives)


# --------------------------------------------------------------------- keys

@pytest.mark.parametrize("args, expect", [
    # RFC 9111 2 / RFC 9110 4.2.3: scheme, host, full target with query
    (("http", "example.com", "/a?b=1&c"), "http://example.com/a?b=1&c"),
    (("HTTP", "Example.COM:80", "/a"), "http://example.com/a"),
    (("https", "example.com:443", "/"), "https://example.com/"),
    (("http", "example.com:8080", "/"), "http://example.com:8080/"),
    (("https", "example.com:80", "/"), "https://example.com:80/"),
    (("http", "[::1]:80", "/x"), "http://[::1]/x"),
    (("http", "ignored", "http://Other.com/p?q"), "http://other.com/p?q"),   # RFC 9112 3.2.2
    (("http", "h", "/A?Q"), "http://h/A?Q"),    # path and query are case-sensitive
])
def test_primary_key(args, expect):
    assert primary_key(*args) == expect


def test_primary_key_distinguishes_query_and_scheme():
    keys = {primary_key("http", "h", "/a"), primary_key("http", "h", "/a?x"),
            primary_key("https", "h", "/a"), primary_key("http", "h2", "/a")}
    assert len(keys) == 4


@pytest.mark.parametrize("vary, stored_req, req, matches", [
    # RFC 9111 4.1
    ([], [], [("accept-encoding", "gzip")], True),
    (["Accept-Encoding"], [("accept-encoding", "gzip")], [("accept-encoding", "gzip")], True),
    (["accept-encoding"], [("accept-encoding", "gzip")], [("accept-encoding", "br")], False),
    (["accept-encoding"], [("accept-encoding", "gzip,br")], [("accept-encoding", "gzip, br")], True),
    (["accept-encoding"], [("accept-encoding", "gzip"), ("accept-encoding", "br")],
     [("accept-encoding", "gzip, br")], True),
    # absent in one request, present in the other: no match (either way), even if empty
    (["accept-language"], [], [("accept-language", "en")], False),
    (["accept-language"], [("accept-language", "en")], [], False),
    (["accept-language"], [], [("accept-language", "")], False),
    (["accept-language"], [], [], True),
    (["a, b", "c"], [("a", "1"), ("c", "3")], [("c", "3"), ("a", "1")], True),
    (["a, b"], [("a", "1"), ("b", "2")], [("a", "1"), ("b", "3")], False),
])
def test_vary_matching(vary, stored_req, req, matches):
    stored = vary_key(vary, stored_req)
    assert (vary_key(vary, req) == stored) is matches
    e = entry([("cache-control", "max-age=60")] + [("vary", v) for v in vary], req_headers=stored_req)
    assert e.secondary_key == stored
    assert (decide(e, req).action is Action.FRESH) is matches


def test_vary_star_never_matches():
    # RFC 9111 4.1: "*" always fails to match; such responses are not stored
    assert vary_key(["accept, *"], []) is None
    assert not storable("GET", 200, [], [("cache-control", "max-age=60"), ("vary", "*")])


# -------------------------------------------------------------- storability

STORE_CASES = [
    # (method, status, req_headers, resp_headers, storable, RFC section)
    ("GET", 200, [], [("cache-control", "max-age=60")], True, "3"),
    ("GET", 500, [], [("cache-control", "max-age=60")], True, "3: any status with explicit freshness"),
    ("GET", 418, [], [("expires", d(T0 + 60)), ("date", d(T0))], True, "3: Expires"),
    ("GET", 200, [], [("expires", "garbage")], True, "3: Expires present (stale but storable)"),
    ("GET", 404, [], [("last-modified", d(T0 - 1000))], True, "4.2.2 heuristic status"),
    ("GET", 200, [], [("etag", '"x"')], True, "3: validator"),
    ("GET", 500, [], [("last-modified", d(T0 - 1000))], False, "4.2.2 not heuristic"),
    ("GET", 500, [], [("last-modified", d(T0 - 1000)), ("cache-control", "public")], True, "4.2.2 public"),
    ("GET", 200, [], [], False, "nothing to reuse it by"),
    ("GET", 200, [], [("content-type", "text/plain")], False, "no freshness, no validator"),
    ("POST", 200, [], [("cache-control", "max-age=60")], False, "only GET stored"),
    ("HEAD", 200, [], [("cache-control", "max-age=60")], False, "HEAD served from GET"),
    ("GET", 100, [], [("cache-control", "max-age=60")], False, "1xx never"),
    ("GET", 206, [], [("cache-control", "max-age=60")], False, "3.3 partial not assembled"),
    ("GET", 304, [], [("cache-control", "max-age=60")], False, "304 only merges"),
    ("GET", 200, [], [("cache-control", "max-age=60, no-store")], False, "5.2.2.5"),
    ("GET", 200, [("cache-control", "no-store")], [("cache-control", "max-age=60")], False, "5.2.1.5"),
    ("GET", 200, [], [("cache-control", "max-age=60, private")], False, "5.2.2.7"),
    ("GET", 200, [], [("cache-control", 'max-age=60, private="set-cookie"')], True, "5.2.2.7 qualified"),
    ("GET", 200, [], [("cache-control", 'max-age=60, private="x-a", private')], False,
     "5.2.2.7 qualified and unqualified"),
    # Set-Cookie: not stored (nginx, Varnish), unless private="Set-Cookie" says to leave it out
    ("GET", 200, [], [("cache-control", "max-age=60"), ("set-cookie", "sid=1")], False, "set-cookie"),
    ("GET", 200, [], [("cache-control", "max-age=60, public"), ("set-cookie", "sid=1")], False,
     "set-cookie public"),
    ("GET", 200, [], [("cache-control", 'max-age=60, private="Set-Cookie"'), ("set-cookie", "sid=1")],
     True, "set-cookie private=Set-Cookie"),
    ("GET", 200, [], [("cache-control", 'max-age=60, private="x-a"'), ("set-cookie", "sid=1")],
     False, "set-cookie private other field"),
    ("GET", 200, [], [("cdn-cache-control", 'max-age=60, private=("set-cookie")'),
                      ("set-cookie", "sid=1")], True, "set-cookie 9213 private"),
    ("GET", 200, [], [("cdn-cache-control", "max-age=60"),
                      ("cache-control", 'private="set-cookie"'), ("set-cookie", "sid=1")], False,
     "set-cookie 9213 replaces cache-control"),
    ("GET", 200, [], [("cache-control", "no-cache"), ("etag", '"a"')], True, "5.2.2.4 store, revalidate"),
    ("GET", 200, [], [("cache-control", "max-age=60, x-unknown=1, frobnicate")], True, "5.2.3 unknown"),
    ("GET", 200, [("cache-control", "frobnicate")], [("cache-control", "max-age=60")], True, "5.2.3 req unknown"),
    # RFC 9111 3.5: Authorization
    ("GET", 200, [("authorization", "Basic x")], [("cache-control", "max-age=60")], False, "3.5"),
    ("GET", 200, [("authorization", "Basic x")], [("cache-control", "max-age=60, public")], True, "3.5 public"),
    ("GET", 200, [("authorization", "Basic x")], [("cache-control", "s-maxage=60")], True, "3.5 s-maxage"),
    ("GET", 200, [("authorization", "Basic x")], [("cache-control", "max-age=60, must-revalidate")], True,
     "3.5 must-revalidate"),
    # RFC 9111 5.2.2.3 must-understand
    ("GET", 200, [], [("cache-control", "max-age=60, no-store, must-understand")], True, "5.2.2.3"),
    ("GET", 299, [], [("cache-control", "max-age=60, no-store, must-understand")], False, "5.2.2.3"),
    # RFC 9213: targeted field overrides Cache-Control (both ways)
    ("GET", 200, [], [("cache-control", "no-store"), ("cdn-cache-control", "max-age=60")], True, "9213 2.1"),
    ("GET", 200, [], [("cache-control", "max-age=60"), ("cdn-cache-control", "no-store")], False, "9213 2.1"),
    ("GET", 200, [], [("cache-control", "max-age=60"), ("cdn-cache-control", "no-store=")], True,
     "9213 2.1 invalid ignored"),
    ("GET", 200, [], [("cdn-cache-control", "private"), ("cache-control", "public, max-age=5")], False, "9213"),
    ("GET", 200, [], [("expires", d(T0 + 60)), ("cdn-cache-control", "public")], False,
     "9213 2.1: Expires ignored with a targeted field"),
]


@pytest.mark.parametrize("method, status, req, resp, expect, section", STORE_CASES,
                         ids=[c[-1] for c in STORE_CASES])
def test_storable(method, status, req, resp, expect, section):
    assert storable(method, status, req, resp) is expect
    assert (not_storable_reason(method, status, req, resp) is None) is expect


def test_storable_private_cache_and_custom_target():
    resp = [("cache-control", "max-age=60, private")]
    assert storable("GET", 200, [], resp, shared=False)
    # a site can target forkproxy alone with its own field name (RFC 9213 2)
    resp = [("cache-control", "no-store"), ("cdn-cache-control", "no-store"),
            ("forkproxy-cache-control", "max-age=60")]
    assert not storable("GET", 200, [], resp)
    assert storable("GET", 200, [], resp, cdn_header="forkproxy-cache-control")
    assert storable("GET", 200, [], resp, cdn_header=("forkproxy-cache-control", "cdn-cache-control"))
    assert not storable("GET", 200, [], resp, cdn_header=())


@pytest.mark.parametrize("resp, mode, expect", [
    # (response fields, the route's cache_set_cookie, storable by a shared cache)
    ([("set-cookie", "sid=1")], "no-store", False),
    ([("set-cookie", "sid=1")], "strip", True),
    ([("set-cookie", "sid=1"), ("cache-control", "private")], "strip", False),
    ([("cache-control", 'private="set-cookie"'), ("set-cookie", "sid=1")], "no-store", True),
    ([], "no-store", True),
    ([], "strip", True),
])
def test_storable_with_set_cookie_modes(resp, mode, expect):
    resp = [("cache-control", "max-age=60")] + resp
    assert storable("GET", 200, [], resp, set_cookie=mode) is expect
    assert not_storable_reason("GET", 200, [], resp, set_cookie=mode) == (
        None if expect else "private" if ("cache-control", "private") in resp else "set-cookie")
    # a private cache keeps its own cookies
    assert storable("GET", 200, [], resp, set_cookie=mode, shared=False)


@pytest.mark.parametrize("resp, cdn, gone", [
    # (response fields, cdn_header, fields never stored besides hop-by-hop)
    ([("cache-control", "max-age=60"), ("set-cookie", "a=1")], DEFAULT_CDN_HEADER, {"set-cookie"}),
    ([("cache-control", 'max-age=60, private="Set-Cookie, X-User"'), ("set-cookie", "a=1"),
      ("x-user", "ann")], DEFAULT_CDN_HEADER, {"set-cookie", "x-user"}),
    ([("cache-control", 'max-age=60, private="x-user"'), ("x-user", "ann")], DEFAULT_CDN_HEADER,
     {"x-user"}),
    ([("cdn-cache-control", 'max-age=60, private=("x-user")'), ("x-user", "ann")],
     DEFAULT_CDN_HEADER, {"x-user"}),
    # with no targeted field obeyed, Cache-Control's private counts
    ([("cdn-cache-control", "max-age=60"), ("cache-control", 'private="x-user"'), ("x-user", "a")],
     (), {"x-user"}),
])
def test_make_entry_leaves_out_set_cookie_and_qualified_private_fields(resp, cdn, gone):
    e = make_entry(200, "OK", [], resp, T0, T0, cdn_header=cdn)
    assert {n for n, _ in e.headers} == {n for n, _ in resp} - gone | {"date"}


def test_make_entry_strips_hop_by_hop_and_set_cookie_keeps_date():
    # RFC 9111 3.1: hop-by-hop never stored; nor Set-Cookie (shared); RFC 9110 6.6.1 Date added once
    resp = [("cache-control", "max-age=60"), ("connection", "x-secret, close"), ("x-secret", "1"),
            ("keep-alive", "timeout=5"), ("transfer-encoding", "chunked"), ("proxy-authenticate", "x"),
            ("set-cookie", "a=1"), ("set-cookie", "b=2; Path=/"), ("x-kept", "yes")]
    e = entry(resp, response_time=T0 + 3)
    names = [n for n, _ in e.headers]
    for gone in ("connection", "x-secret", "keep-alive", "transfer-encoding", "proxy-authenticate"):
        assert gone not in names
    assert "set-cookie" not in names
    assert ("x-kept", "yes") in e.headers
    assert ("date", d(T0 + 3)) in e.headers
    e2 = entry([("date", "Sun, 06 Nov 1994 08:49:37 GMT"), ("cache-control", "max-age=60")])
    assert [v for n, v in e2.headers if n == "date"] == ["Sun, 06 Nov 1994 08:49:37 GMT"]


def test_entry_bytes_round_trip():
    e = entry([("cache-control", "max-age=60"), ("vary", "accept-language, x-a"), ("x", "é")],
              request_time=T0 - 0.25, response_time=T0, req_headers=[("accept-language", "fr")])
    back = Entry.from_bytes(e.to_bytes())
    assert back == e
    assert back.vary_headers == (("accept-language", "fr"), ("x-a", None))
    for junk in (b"", b"{}", b"\xff", b'{"v":2}', b"[1]"):
        with pytest.raises(ValueError):
            Entry.from_bytes(junk)


# ---------------------------------------------------------------- freshness

FRESHNESS_CASES = [
    # (headers, status, lifetime, RFC 9111 section)
    ([("cache-control", "s-maxage=10, max-age=20"), ("expires", d(T0 + 30))], 200, 10, "4.2.1 s-maxage first"),
    ([("cache-control", "max-age=20"), ("expires", d(T0 + 30))], 200, 20, "4.2.1 max-age over Expires"),
    ([("expires", d(T0 + 30)), ("date", d(T0))], 200, 30, "4.2.1 Expires - Date"),
    ([("expires", d(T0 - 30)), ("date", d(T0))], 200, 0, "4.2.1 Expires in the past"),
    ([("expires", "0"), ("date", d(T0))], 200, 0, "5.3 invalid Expires: stale"),
    ([("expires", "Sunday, 06-Nov-94 08:49:37 GMT"), ("date", "Sun Nov  6 08:48:37 1994")], 200, 60,
     "5.3 rfc850 and asctime"),
    ([("cache-control", "max-age=bogus"), ("expires", d(T0 + 30))], 200, 0, "4.2.1 invalid max-age: stale"),
    ([("last-modified", d(T0 - 1000)), ("date", d(T0))], 200, 100, "4.2.2 10% heuristic"),
    ([("last-modified", d(T0 - 10 * HMAX * 20)), ("date", d(T0))], 200, HMAX, "4.2.2 capped"),
    ([("last-modified", d(T0 + 1000)), ("date", d(T0))], 200, 0, "4.2.2 future Last-Modified"),
    ([("last-modified", d(T0 - 1000)), ("date", d(T0))], 500, 0, "4.2.2 status not heuristic"),
    ([("last-modified", d(T0 - 1000)), ("date", d(T0)), ("cache-control", "public")], 500, 100, "4.2.2 public"),
    ([("last-modified", d(T0 - 1000)), ("date", d(T0)), ("expires", "junk")], 200, 0,
     "4.2.2 no heuristic when Expires present"),
    ([("etag", '"x"')], 200, 0, "4.2.1 nothing explicit"),
    ([("cache-control", "max-age=20"), ("cdn-cache-control", "max-age=300")], 200, 300, "RFC 9213 targeted"),
    ([("expires", d(T0 + 30)), ("date", d(T0)), ("cdn-cache-control", "public")], 200, 0,
     "RFC 9213 Expires ignored"),
    ([("cache-control", "max-age=20"), ("cdn-cache-control", "max-age=300,")], 200, 20,
     "RFC 9213 invalid field ignored"),
    ([("cache-control", "max-age=20"), ("cdn-cache-control", "max-age=three")], 200, 0,
     "RFC 9213 valid field, wrong type: stale"),
]


@pytest.mark.parametrize("headers, status, lifetime, section", FRESHNESS_CASES,
                         ids=[c[-1] for c in FRESHNESS_CASES])
def test_freshness_lifetime(headers, status, lifetime, section):
    e = entry(headers, status=status)
    assert freshness_lifetime(e, heuristic_max=HMAX) == pytest.approx(lifetime)


# ----------------------------------------------------------------------- age

AGE_CASES = [
    # (date, age header, request_time, response_time, now, expected current_age) RFC 9111 4.2.3
    (T0, None, T0, T0, T0, 0),
    (T0, None, T0, T0, T0 + 30, 30),                    # resident_time
    (T0 - 10, None, T0, T0, T0, 10),                    # apparent_age
    (T0 + 10, None, T0, T0, T0, 0),                     # clock skew: apparent_age floored at 0
    (T0, "5", T0, T0, T0, 5),                           # age_value
    (T0, "5", T0 - 2, T0, T0, 7),                       # corrected_age_value = age + response_delay
    (T0 - 20, "5", T0 - 2, T0, T0 + 1, 21),             # max(apparent 20, corrected 7) + resident 1
    (T0, "5, 100", T0, T0, T0, 5),                      # 5.1: first member
    (T0, "-5", T0, T0, T0, 0),                          # 5.1: bogus Age ignored
    (T0, "1.5", T0, T0, T0, 0),
    (T0, "abc", T0 - 1, T0, T0, 1),
    (T0, "99999999999", T0, T0, T0, 2 ** 31),           # 1.2.2 clamp
]


@pytest.mark.parametrize("date, age, req_t, resp_t, now, expect", AGE_CASES)
def test_current_age(date, age, req_t, resp_t, now, expect):
    headers = [("date", d(date))] + ([("age", age)] if age is not None else [])
    e = entry(headers, request_time=req_t, response_time=resp_t)
    assert current_age(e, now) == pytest.approx(expect)


def test_age_first_line_wins_and_serve_headers():
    e = entry([("date", d(T0)), ("age", "10"), ("age", "50"), ("cache-control", "max-age=600")])
    assert current_age(e, T0) == 10
    # RFC 9111 5.1: Age sent on every cached response; Date untouched
    out = serve_headers(e, T0 + 5.9)
    assert [v for n, v in out if n == "age"] == ["15"]
    assert [v for n, v in out if n == "date"] == [d(T0)]
    assert ("age", "0") in serve_headers(entry([("cache-control", "max-age=1")]), T0)


# ---------------------------------------------------------------- decisions

def swr_entry(cc):
    return entry([("date", d(T0)), ("etag", '"v1"'), ("cache-control", cc)])


DECIDE_CASES = [
    # (response cache-control, request headers, now offset, action, background, section)
    ("max-age=60", [], 10, Action.FRESH, False, "4.2 fresh"),
    ("max-age=60", [], 60, Action.REVALIDATE, False, "4.2 fresh iff lifetime > age"),
    ("max-age=60", [], 100, Action.REVALIDATE, False, "4.3.1 stale with validator"),
    ("no-cache", [], 0, Action.REVALIDATE, False, "5.2.2.4 no-cache: always revalidate"),
    ("max-age=60", [("cache-control", "no-cache")], 0, Action.REVALIDATE, False, "5.2.1.4"),
    ("max-age=60", [("pragma", "no-cache")], 0, Action.REVALIDATE, False, "5.4 Pragma"),
    ("max-age=60", [("pragma", "no-cache"), ("cache-control", "max-stale")], 0, Action.FRESH, False,
     "5.4 Pragma ignored with Cache-Control"),
    ("max-age=60", [("cache-control", "max-age=5")], 10, Action.REVALIDATE, False, "5.2.1.1"),
    ("max-age=60", [("cache-control", "max-age=5")], 4, Action.FRESH, False, "5.2.1.1"),
    ("max-age=60", [("cache-control", "min-fresh=30")], 40, Action.REVALIDATE, False, "5.2.1.3"),
    ("max-age=60", [("cache-control", "min-fresh=30")], 20, Action.FRESH, False, "5.2.1.3"),
    ("max-age=60", [("cache-control", "max-stale=50")], 100, Action.STALE_OK, False, "5.2.1.2"),
    ("max-age=60", [("cache-control", "max-stale=30")], 100, Action.REVALIDATE, False, "5.2.1.2 too stale"),
    ("max-age=60", [("cache-control", "max-stale")], 10 ** 6, Action.STALE_OK, False, "5.2.1.2 any"),
    ("max-age=60, must-revalidate", [("cache-control", "max-stale")], 100, Action.REVALIDATE, False,
     "5.2.2.2 must-revalidate forbids stale"),
    ("max-age=60, proxy-revalidate", [("cache-control", "max-stale")], 100, Action.REVALIDATE, False,
     "5.2.2.8"),
    ("s-maxage=60", [("cache-control", "max-stale")], 100, Action.REVALIDATE, False,
     "5.2.2.10 s-maxage implies proxy-revalidate"),
    ("max-age=60, stale-while-revalidate=30", [], 80, Action.STALE_OK, True, "RFC 5861 3"),
    ("max-age=60, stale-while-revalidate=30", [], 91, Action.REVALIDATE, False, "RFC 5861 3 window"),
    ("max-age=60, stale-while-revalidate=30, must-revalidate", [], 80, Action.REVALIDATE, False,
     "4.2.4 forbidden"),
    ("s-maxage=60, stale-while-revalidate=30", [], 80, Action.REVALIDATE, False, "4.2.4 s-maxage"),
    ("max-age=60, stale-while-revalidate=30", [("cache-control", "max-age=10")], 80, Action.REVALIDATE,
     False, "request freshness demand beats swr"),
    ("max-age=60", [("cache-control", "only-if-cached")], 10, Action.FRESH, False, "5.2.1.7"),
    ("max-age=60", [("cache-control", "only-if-cached")], 100, Action.GATEWAY_TIMEOUT, False, "5.2.1.7 504"),
    ("max-age=60", [("cache-control", "only-if-cached, max-stale")], 100, Action.STALE_OK, False, "5.2.1.7"),
    ("max-age=60", [("cache-control", "no-store")], 10, Action.FRESH, False, "5.2.1.5 may still serve"),
    ("max-age=60", [("cache-control", "totally-unknown")], 10, Action.FRESH, False, "5.2.3 ignored"),
    ("max-age=60", [("authorization", "Bearer t")], 10, Action.FRESH, False, "3.5 concerns storing only"),
]


@pytest.mark.parametrize("cc, req, offset, action, background, section", DECIDE_CASES,
                         ids=[c[-1] for c in DECIDE_CASES])
def test_decide(cc, req, offset, action, background, section):
    got = decide(swr_entry(cc), req, now=T0 + offset)
    assert got.action is action, got.reason
    assert got.background_refresh is background
    if action is Action.REVALIDATE or background:
        assert ("if-none-match", '"v1"') in got.conditional_headers


def test_decide_without_entry_method_and_validators():
    assert decide(None).action is Action.MISS
    assert decide(None, [("cache-control", "only-if-cached")]).action is Action.GATEWAY_TIMEOUT
    e = swr_entry("max-age=60")
    assert decide(e, method="HEAD").action is Action.FRESH          # HEAD from a stored GET
    assert decide(e, method="POST").action is Action.MISS
    stale_no_validator = entry([("date", d(T0)), ("cache-control", "max-age=1")])
    assert decide(stale_no_validator, now=T0 + 5).action is Action.MISS
    assert decide(stale_no_validator, [("cache-control", "only-if-cached")],
                  now=T0 + 5).action is Action.GATEWAY_TIMEOUT


def test_decide_vary_mismatch_is_miss():
    e = entry([("cache-control", "max-age=60"), ("vary", "accept-encoding")],
              req_headers=[("accept-encoding", "gzip")])
    assert decide(e, [("accept-encoding", "gzip")]).action is Action.FRESH
    assert decide(e, []).action is Action.MISS
    assert decide(e, [("accept-encoding", "br")]).action is Action.MISS


STALE_IF_ERROR_CASES = [
    # (response cache-control, request headers, now offset, ok, section)
    ("max-age=60, stale-if-error=100", [], 150, True, "RFC 5861 4"),
    ("max-age=60, stale-if-error=100", [], 161, False, "RFC 5861 4 window"),
    ("max-age=60", [], 61, False, "no permission"),
    ("max-age=60", [("cache-control", "stale-if-error=50")], 100, True, "RFC 5861 4 request"),
    ("max-age=60, stale-if-error=100", [("cache-control", "stale-if-error=5")], 100, False, "request wins"),
    ("max-age=60, stale-if-error=100, must-revalidate", [], 100, False, "RFC 9111 4.2.4"),
    ("max-age=60, stale-if-error=100, proxy-revalidate", [], 100, False, "RFC 9111 4.2.4"),
    ("s-maxage=60, stale-if-error=100", [], 100, False, "RFC 9111 5.2.2.10"),
    ("no-cache, stale-if-error=100", [], 100, False, "RFC 9111 4.2.4 no-cache"),
]


@pytest.mark.parametrize("cc, req, offset, ok, section", STALE_IF_ERROR_CASES,
                         ids=[c[-1] for c in STALE_IF_ERROR_CASES])
def test_stale_if_error(cc, req, offset, ok, section):
    e = swr_entry(cc)
    assert stale_if_error_ok(e, T0 + offset, req, heuristic_max=HMAX) is ok


@pytest.mark.parametrize("cc, req, offset, ok", [
    ("max-age=60", [], 100, True),                             # the cache's default
    ("max-age=60", [], 161, False),                            # past it
    ("max-age=60, stale-if-error=10", [], 100, False),         # the response's wins
    ("max-age=60", [("cache-control", "stale-if-error=5")], 100, False),  # the request's wins
    ("max-age=60, must-revalidate", [], 100, False),           # never past these
    ("s-maxage=60", [], 100, False),
])
def test_stale_if_error_default(cc, req, offset, ok):
    e = swr_entry(cc)
    assert stale_if_error_ok(e, T0 + offset, req, heuristic_max=HMAX, default=100) is ok


# -------------------------------------------------------------- revalidation

def test_conditional_headers():
    # RFC 9111 4.3.1
    e = entry([("etag", 'W/"a"'), ("last-modified", d(T0 - 5)), ("cache-control", "max-age=0")])
    assert conditional_headers(e) == [("if-none-match", 'W/"a"'), ("if-modified-since", d(T0 - 5))]
    assert conditional_headers(entry([("cache-control", "max-age=0")])) == []
    assert conditional_headers(entry([("last-modified", "junk"), ("expires", "0")])) == []


def test_merge_304_updates_keeps_and_protects_content_length():
    # RFC 9111 3.2 and 4.3.4
    e = entry([("date", d(T0)), ("age", "30"), ("etag", '"v1"'), ("cache-control", "max-age=10"),
               ("content-length", "5"), ("content-type", "text/plain"), ("x-old", "kept")])
    resp_304 = [("date", d(T0 + 100)), ("etag", '"v1"'), ("cache-control", "max-age=600"),
                ("content-length", "0"), ("set-cookie", "c=3"), ("connection", "close"), ("x-new", "1")]
    assert can_freshen(e, resp_304)
    m = merge_304(e, resp_304, T0 + 99, T0 + 100)
    h = m.headers
    assert [v for n, v in h if n == "content-length"] == ["5"]
    assert [v for n, v in h if n == "cache-control"] == ["max-age=600"]
    assert "set-cookie" not in dict(h)  # a revalidation's cookie is nobody's to share
    assert ("x-old", "kept") in h and ("x-new", "1") in h and ("content-type", "text/plain") in h
    assert "connection" not in dict(h) and "age" not in dict(h)
    assert (m.request_time, m.response_time, m.status) == (T0 + 99, T0 + 100, 200)
    assert decide(m, now=T0 + 150).action is Action.FRESH
    assert current_age(m, T0 + 100) == pytest.approx(1)


def test_merge_304_leaves_out_what_its_qualified_private_names():
    e = entry([("date", d(T0)), ("etag", '"v1"'), ("cache-control", "max-age=10"), ("x-user", "ann")])
    m = merge_304(e, [("etag", '"v1"'), ("cache-control", 'max-age=60, private="X-User"'),
                         ("x-user", "bob"), ("set-cookie", "s=2")], T0 + 1, T0 + 1)
    assert "x-user" not in dict(m.headers) and "set-cookie" not in dict(m.headers)
    assert dict(m.headers)["cache-control"] == 'max-age=60, private="X-User"'


def test_merge_304_without_date_uses_its_response_time():
    e = entry([("date", d(T0)), ("etag", '"v1"'), ("cache-control", "max-age=10")])
    m = merge_304(e, [("etag", '"v1"')], T0 + 500, T0 + 500)
    assert [v for n, v in m.headers if n == "date"] == [d(T0 + 500)]
    assert decide(m, now=T0 + 505).action is Action.FRESH


@pytest.mark.parametrize("stored, resp_304, ok", [
    # RFC 9111 4.3.4 selection
    ([("etag", '"a"')], [("etag", '"a"')], True),
    ([("etag", '"a"')], [("etag", '"b"')], False),
    ([("last-modified", d(T0))], [("last-modified", d(T0 - 1))], False),
    ([("etag", '"a"')], [], True),
])
def test_can_freshen(stored, resp_304, ok):
    assert can_freshen(entry(stored), resp_304) is ok


NOT_MODIFIED_CASES = [
    # (request headers, not modified?, RFC 9110 section)
    ([("if-none-match", '"v1"')], True, "13.1.2"),
    ([("if-none-match", 'W/"v1"')], True, "13.1.2 weak comparison"),
    ([("if-none-match", '"x", "v1"')], True, "13.1.2 list"),
    ([("if-none-match", '"x"'), ("if-none-match", '"v1"')], True, "13.1.2 lines"),
    ([("if-none-match", "*")], True, "13.1.2 *"),
    ([("if-none-match", '"nope"')], False, "13.1.2"),
    ([("if-none-match", "garbage")], False, "13.1.2 unparseable"),
    ([("if-none-match", '"nope"'), ("if-modified-since", d(T0))], False, "13.2.2 INM before IMS"),
    ([("if-none-match", '"v1"'), ("if-modified-since", d(T0 - 10 ** 6))], True, "13.2.2 IMS ignored"),
    ([("if-modified-since", d(T0 - 100))], True, "13.1.3 Last-Modified <= IMS"),
    ([("if-modified-since", d(T0 - 101))], False, "13.1.3 modified since"),
    ([("if-modified-since", "yesterday")], False, "13.1.3 invalid date ignored"),
    ([("if-modified-since", d(T0)), ("if-modified-since", d(T0))], False, "13.1.3 several members"),
    ([], False, "not conditional"),
]


@pytest.mark.parametrize("req, expect, section", NOT_MODIFIED_CASES,
                         ids=[c[-1] for c in NOT_MODIFIED_CASES])
def test_client_not_modified(req, expect, section):
    e = entry([("date", d(T0)), ("etag", 'W/"v1"'), ("last-modified", d(T0 - 100)),
               ("cache-control", "max-age=60")])
    assert client_not_modified(e, req) is expect


def test_client_not_modified_edges():
    no_lm = entry([("date", d(T0)), ("cache-control", "max-age=60")])
    assert client_not_modified(no_lm, [("if-modified-since", d(T0))])       # falls back to Date
    assert not client_not_modified(no_lm, [("if-modified-since", d(T0 - 1))])
    assert not client_not_modified(no_lm, [("if-modified-since", d(T0))], method="POST")
    redirect = entry([("etag", '"v1"'), ("cache-control", "max-age=60")], status=301)
    assert not client_not_modified(redirect, [("if-none-match", '"v1"')])
    e = entry([("date", d(T0)), ("etag", '"v1"'), ("content-type", "text/html"),
               ("content-length", "3"), ("cache-control", "max-age=60"), ("vary", "accept")],
              req_headers=[("accept", "*/*")])
    names = {n for n, _ in not_modified_headers(e, T0 + 2)}
    assert names == {"date", "etag", "cache-control", "vary", "age"}


# -------------------------------------------------------------- invalidation

INVALIDATION_CASES = [
    # (method, status, response headers, expected keys) RFC 9111 4.4
    ("POST", 200, [], ["http://ex.com/a?x=1"]),
    ("PUT", 204, [], ["http://ex.com/a?x=1"]),
    ("DELETE", 302, [], ["http://ex.com/a?x=1"]),
    ("PURGEISH", 200, [], ["http://ex.com/a?x=1"]),                 # unknown method is unsafe
    ("POST", 500, [], []),                                           # failed: nothing
    ("POST", 404, [], []),
    ("GET", 200, [], []), ("HEAD", 200, [], []), ("OPTIONS", 200, [], []),
    ("POST", 201, [("location", "/b"), ("content-location", "http://ex.com:80/c?q")],
     ["http://ex.com/a?x=1", "http://ex.com/b", "http://ex.com/c?q"]),
    ("POST", 201, [("location", "b/c")], ["http://ex.com/a?x=1", "http://ex.com/b/c"]),
    ("POST", 201, [("location", "http://other.com/b")], ["http://ex.com/a?x=1"]),
    ("POST", 201, [("location", "https://ex.com/b")], ["http://ex.com/a?x=1"]),
    ("POST", 201, [("location", "http://ex.com:8080/b")], ["http://ex.com/a?x=1"]),
    ("POST", 201, [("location", "//evil.com/b")], ["http://ex.com/a?x=1"]),
    ("POST", 201, [("location", "/a?x=1")], ["http://ex.com/a?x=1"]),
]


@pytest.mark.parametrize("method, status, resp, keys", INVALIDATION_CASES)
def test_invalidations(method, status, resp, keys):
    assert invalidations(method, status, "http", "EX.com", "/a?x=1", resp) == keys


# ---------------------------------------------------------------- end to end

def test_store_serve_revalidate_cycle():
    req = [("accept-encoding", "gzip")]
    resp = [("date", d(T0)), ("cache-control", "max-age=60"), ("etag", '"v1"'),
            ("vary", "Accept-Encoding"), ("content-encoding", "gzip"), ("content-length", "20")]
    assert storable("GET", 200, req, resp)
    e = Entry.from_bytes(entry(resp, req_headers=req).to_bytes())
    assert decide(e, req, now=T0 + 30).action is Action.FRESH
    assert client_not_modified(e, req + [("if-none-match", '"v1"')])
    stale = decide(e, req, now=T0 + 90)
    assert stale.action is Action.REVALIDATE
    assert dict(stale.conditional_headers) == {"if-none-match": '"v1"'}
    m = merge_304(e, [("date", d(T0 + 90)), ("etag", '"v1"')], T0 + 90, T0 + 90)
    assert decide(m, req, now=T0 + 100).action is Action.FRESH
    assert dict(serve_headers(m, T0 + 100))["age"] == "10"


# -- remembered parses (pure functions of their text; results are immutable) -----

def test_remembered_parses_give_the_same_answers():
    values = ["max-age=60, s-maxage=30", 'private="set-cookie"']
    assert parse_cache_control(values) == parse_cache_control(list(values))
    assert parse_cache_control([]) == Directives()
    imf = "Sun, 06 Nov 1994 08:49:37 GMT"
    assert parse_http_date(imf) == parse_http_date(imf, 0.0) == 784111777.0
    # rfc850 depends on now: the same text, two answers (nothing remembered).
    rfc850 = "Friday, 01-Jan-99 00:00:00 GMT"
    assert parse_http_date(rfc850, parse_http_date("Sat, 01 Jan 2050 00:00:00 GMT")) == \
        parse_http_date("Fri, 01 Jan 2099 00:00:00 GMT")
    assert parse_http_date(rfc850, parse_http_date("Mon, 01 Jan 2024 00:00:00 GMT")) == \
        parse_http_date("Fri, 01 Jan 1999 00:00:00 GMT")


def test_a_decoded_entry_is_remembered_by_its_bytes_and_junk_always_refused():
    e = Entry(200, "OK", (("date", "Sun, 06 Nov 1994 08:49:37 GMT"),), T0, T0 + 1)
    blob = e.to_bytes()
    assert Entry.from_bytes(blob) == e
    assert Entry.from_bytes(bytearray(blob)) == e
    for _ in range(2):
        with pytest.raises(ValueError):
            Entry.from_bytes(b'{"v": 1}')


# -- an entry's own facts, remembered per Entry object ----------------------------

_FIELD_VALUES = {
    "cache-control": st.sampled_from(["max-age=60", "s-maxage=5, max-age=60", "no-cache",
                                      "max-age=0, stale-while-revalidate=30", "public", "x"]),
    "cdn-cache-control": st.sampled_from(["max-age=600", "no-store", "bad value (", ""]),
    "expires": st.sampled_from([d(T0 + 90), "0", d(T0 - 10)]),
    "date": st.sampled_from([d(T0 - 5), d(T0), "junk"]),
    "age": st.sampled_from(["7", "-1", "3, 9", "x"]),
    "last-modified": st.sampled_from([d(T0 - 86400), "junk"]),
    "etag": st.sampled_from(['"a"', 'W/"b"']),
    "vary": st.sampled_from(["accept-encoding", "a, b", "*"]),
}
_FIELDS = st.lists(st.sampled_from(sorted(_FIELD_VALUES)), max_size=6).flatmap(
    lambda names: st.tuples(*[st.tuples(st.just(n), _FIELD_VALUES[n]) for n in names]))
_REQ = st.lists(st.tuples(st.sampled_from(["accept-encoding", "a", "b", "cache-control", "pragma"]),
                          st.sampled_from(["gzip", "1", "", "no-cache", "max-age=5"])), max_size=3)


@given(_FIELDS, _REQ, _REQ, st.sampled_from([200, 404, 302]), st.floats(0, 5000),
       st.sampled_from([DEFAULT_CDN_HEADER, ()]))
def test_remembered_entry_facts_equal_the_definitions(fields, stored_req, req, status, later, cdn):
    e = entry(list(fields), status=status, request_time=T0 - 1, response_time=T0, req_headers=stored_req)
    for _ in range(2):  # computed, then remembered: the same answers
        assert e.policy(HMAX, cdn) == (response_directives(e.headers, cdn)[0],
                                       freshness_lifetime(e, heuristic_max=HMAX, cdn_header=cdn))
        assert e.validators == tuple(conditional_headers(e))
        assert e.vary_matches(req) == (vary_key(e.vary_fields, req) == e.secondary_key)
        # RFC 9111 4.2.3, written out
        first_date = next(v for n, v in e.headers if n == "date")  # the first one counts
        date = parse_http_date(first_date) or e.response_time
        apparent = max(0.0, e.response_time - date)
        corrected = max(apparent, _age_value(e.headers) + e.response_time - e.request_time)
        assert current_age(e, T0 + later) == pytest.approx(corrected + later)
        served = serve_headers(e, T0 + later)
        assert served[:-1] == [(n, v) for n, v in e.headers if n != "age"]
        assert served[-1] == ("age", age_value(e, T0 + later))
    # Another cache's settings are answered for those settings, not from the memo.
    assert e.policy(1.0, cdn)[1] == freshness_lifetime(e, heuristic_max=1.0, cdn_header=cdn)


@given(_FIELDS, _REQ, _REQ, st.floats(-100, 5000), st.sampled_from(["GET", "HEAD"]),
       st.sampled_from([DEFAULT_CDN_HEADER, ()]))
def test_a_plain_lifetime_decides_alone_whenever_one_is_given(fields, stored_req, req, later,
                                                              method, cdn):
    # The hot-hit memo (net.http_cache) skips decide() on this promise.
    e = entry(list(fields), request_time=T0 - 1, response_time=T0, req_headers=stored_req)
    life = plain_lifetime(e, req, heuristic_max=HMAX, cdn_header=cdn)
    got = decide(e, req, now=T0 + later, method=method, cdn=cdn).action
    if life is not None:
        assert (got is Action.FRESH) == (life > e.initial_age + (T0 + later - e.response_time))
    elif _request_directives(req) is _NO_DIRECTIVES:  # None only for what the time cannot decide
        assert got is not Action.FRESH


def test_a_plain_lifetime_is_refused_to_what_the_time_alone_does_not_decide():
    fresh = entry([("cache-control", "max-age=60")])
    assert plain_lifetime(fresh, [], heuristic_max=HMAX) == 60
    assert plain_lifetime(fresh, [("cache-control", "max-age=5")], heuristic_max=HMAX) is None
    assert plain_lifetime(fresh, [("pragma", "no-cache")], heuristic_max=HMAX) is None
    assert plain_lifetime(entry([("cache-control", "no-cache")]), [], heuristic_max=HMAX) is None
    varied = entry([("cache-control", "max-age=60"), ("vary", "accept-encoding")],
                   req_headers=[("accept-encoding", "gzip")])
    assert plain_lifetime(varied, [("accept-encoding", "gzip")], heuristic_max=HMAX) == 60
    assert plain_lifetime(varied, [("accept-encoding", "br")], heuristic_max=HMAX) is None


def test_a_request_without_directives_gets_the_empty_ones():
    assert _request_directives([("accept", "*/*")]) == parse_cache_control([])
    assert _request_directives([("pragma", "no-cache")]) == Directives(no_cache=True)
    assert _request_directives([("pragma", "no-cache"), ("cache-control", "max-age=1")]) == \
        parse_cache_control(["max-age=1"])


_PRIVATE_CC = st.sampled_from(['private="set-cookie"', 'private="x-user", max-age=5', "private",
                               'private="x-user, set-cookie"', "max-age=60", 'private="bad name"'])


@given(st.lists(st.tuples(st.sampled_from(["set-cookie", "x-user", "cache-control", "etag"]),
                          st.sampled_from(["a=1", "ann", '"t"'])), max_size=5),
       _PRIVATE_CC, st.sampled_from(SET_COOKIE_MODES))
def test_a_stored_entry_never_holds_a_cookie_nor_a_private_field(fields, cc, mode):
    resp = [("cache-control", cc)] + [(n, v) for n, v in fields if n != "cache-control"]
    directives = parse_cache_control([cc])
    stored = storable("GET", 200, [], resp, set_cookie=mode)
    has_cookie = any(n == "set-cookie" for n, _ in resp)
    if directives.private or (has_cookie and mode == "no-store"
                              and "set-cookie" not in directives.private_fields):
        assert not stored
    e = make_entry(200, "OK", [], resp, T0, T0)
    names = {n for n, _ in e.headers}
    assert "set-cookie" not in names and names.isdisjoint(directives.private_fields)
    m = merge_304(e, resp, T0 + 1, T0 + 1)
    assert "set-cookie" not in dict(m.headers)
