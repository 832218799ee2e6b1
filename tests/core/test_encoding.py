"""core.encoding: Accept-Encoding negotiation, eligibility, ETag and Vary."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forkproxy.core import encoding as enc

BOTH = ("br", "gzip")
TYPES = ("text/html", "application/json", "text/*")


@pytest.mark.parametrize("values, available, expected", [
    ([], BOTH, None),
    ([""], BOTH, None),
    (["gzip"], BOTH, "gzip"),
    (["gzip, deflate, br"], BOTH, "br"),  # tie: the server's order
    (["gzip, deflate, br"], ("gzip",), "gzip"),  # brotli not installed
    (["br;q=0.5, gzip;q=0.8"], BOTH, "gzip"),
    (["br;q=0.8, gzip;q=0.5"], BOTH, "br"),
    (["GZIP"], BOTH, "gzip"),
    (["x-gzip"], BOTH, "gzip"),
    (["gzip;q=0"], BOTH, None),
    (["identity"], BOTH, None),
    (["deflate"], BOTH, None),
    (["*"], BOTH, "br"),
    (["*;q=0.1, br;q=0"], BOTH, "gzip"),
    (["*;q=0"], BOTH, None),
    (["gzip;q=0.5", "br;q=0.6"], BOTH, "br"),  # several fields
    (["gzip ; q=0.500"], BOTH, "gzip"),
    (["gzip;q=1.5"], BOTH, None),  # invalid q: refused, not guessed
    (["gzip;q=abc"], BOTH, None),
    (["gzip;level=1"], BOTH, "gzip"),  # other parameters ignored
    ([" , gzip , "], BOTH, "gzip"),
    (["gzip, gzip;q=0"], BOTH, "gzip"),  # the first mention wins
])
def test_choose(values, available, expected):
    assert enc.choose(values, available) == expected


@given(st.lists(st.text(max_size=40), max_size=4))
def test_choose_never_raises_and_picks_an_available_coding(values):
    assert enc.choose(values, BOTH) in (None,) + BOTH


def _h(ctype="text/html; charset=utf-8", **more):
    out = [("content-type", ctype)] if ctype else []
    out += [(k.replace("_", "-"), v) for k, v in more.items()]
    return out


@pytest.mark.parametrize("method, status, headers, length, codings, expected", [
    ("GET", 200, _h(), 5000, (), True),
    ("GET", 200, _h(), None, (), True),  # unknown length: compressed
    ("GET", 404, _h(), 5000, (), True),
    ("HEAD", 200, _h(), 5000, (), False),
    ("GET", 206, _h(), 5000, (), False),
    ("GET", 204, _h(), None, (), False),
    ("GET", 304, _h(), None, (), False),
    ("GET", 101, _h(), None, (), False),
    ("GET", 200, _h(), 100, (), False),  # below min_size
    ("GET", 200, _h(), 1024, (), True),  # exactly min_size
    ("GET", 200, _h(content_encoding="gzip"), 5000, (), False),  # never twice
    ("GET", 200, _h(content_encoding="br"), 5000, (), False),
    ("GET", 200, _h(content_encoding="identity"), 5000, (), True),
    ("GET", 200, _h("image/png"), 5000, (), False),
    ("GET", 200, _h("TEXT/CSS"), 5000, (), True),  # text/* listed
    ("GET", 200, _h("application/json"), 5000, (), True),
    ("GET", 200, _h(None), 5000, (), False),  # no Content-Type
    ("GET", 200, _h(cache_control="public, no-transform"), 5000, (), False),
    ("GET", 200, _h(), None, ("gzip",), False),  # transfer-coded already
])
def test_eligible(method, status, headers, length, codings, expected):
    assert enc.eligible(method, status, headers, types=TYPES, min_size=1024, length=length,
                        transfer_codings=codings) is expected


def test_star_type_matches_any_type_but_not_a_missing_one():
    assert enc.eligible("GET", 200, _h("image/x-anything"), types=("*",), min_size=0, length=None)
    assert not enc.eligible("GET", 200, _h(None), types=("*",), min_size=0, length=None)


@pytest.mark.parametrize("value, expected", [
    ('"abc"', 'W/"abc"'),
    ('W/"abc"', 'W/"abc"'),
    (' "x" ', 'W/"x"'),
    ("", ""),
])
def test_weaken_etag(value, expected):
    assert enc.weaken_etag(value) == expected


@pytest.mark.parametrize("headers, expected", [
    ([], [("Vary", "Accept-Encoding")]),
    ([("vary", "Cookie")], [("vary", "Cookie, Accept-Encoding")]),
    ([("vary", "accept-encoding")], [("vary", "accept-encoding")]),
    ([("vary", "*")], [("vary", "*")]),
    ([("a", "1"), ("vary", "Origin, Accept-Encoding"), ("b", "2")],
     [("a", "1"), ("vary", "Origin, Accept-Encoding"), ("b", "2")]),
])
def test_add_vary(headers, expected):
    assert enc.add_vary(headers) == expected


def test_media_type():
    assert enc.media_type("Text/HTML ; charset=utf-8") == "text/html"
    assert enc.media_type(None) == ""


# --- the config keys (route compress = { ... }, tunnel_timeout) ----------------

ROUTE = """\
[[listener]]
name = "web"
bind = "127.0.0.1:8080"

[[route]]
pool = "app"
{extra}

[pool.app]
servers = [{{ addr = "127.0.0.1:9000" }}]
"""


def _load(extra: str):
    from forkproxy.config import loads
    return loads(ROUTE.format(extra=extra), "t.toml")


def test_compress_defaults_and_round_trip():
    from forkproxy.config import DEFAULT_COMPRESS_TYPES, dump, loads
    cfg = _load("compress = {}")
    c = cfg.routes[0].compress
    assert (c.types, c.min_size, c.level) == (DEFAULT_COMPRESS_TYPES, 1024, 6)
    assert _load("").routes[0].compress is None
    out = dump(cfg)
    assert "compress = { types = [" in out and 'min_size = "1k"' in out
    assert loads(out, "t.toml") == cfg


def test_compress_values_and_tunnel_timeout():
    cfg = _load('compress = { types = ["Text/*", "*"], min_size = 0, level = 1 }\n'
                'tunnel_timeout = "10m"')
    r = cfg.routes[0]
    assert r.compress.types == ("text/*", "*") and r.compress.min_size == 0
    assert r.tunnel_timeout == 600.0
    assert cfg.server.tunnel_timeout == 3600.0


@pytest.mark.parametrize("extra, message", [
    ("compress = { level = 0 }", "compress.level"),
    ("compress = { level = 10 }", "compress.level"),
    ('compress = { types = "text/html" }', "expected an array of media types"),
    ('compress = { types = ["text html"] }', "invalid media type"),
    ('compress = { min_size = "-1" }', "compress.min_size"),
    ('compress = { gzip = true }', "unknown key"),
    ("tunnel_timeout = 10", "tunnel_timeout"),
])
def test_compress_errors(extra, message):
    from forkproxy.errors import ConfigErrors
    with pytest.raises(ConfigErrors) as info:
        _load(extra)
    assert message in str(info.value), str(info.value)
