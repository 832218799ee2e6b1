"""Byte ranges of stored responses and Accept-Encoding normalisation (issue 23), pure."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from forkproxy.core.cache_policy import (Span, Unsatisfiable, if_range_holds,
                                         normalize_accept_encoding, parse_range, select_range,
                                         vary_key)

U = Unsatisfiable


@pytest.mark.parametrize("value, length, expect", [
    ("bytes=0-9", 100, Span(0, 9, 100)),
    ("bytes=10-", 100, Span(10, 99, 100)),
    ("bytes=-10", 100, Span(90, 99, 100)),
    ("bytes=-1000", 100, Span(0, 99, 100)),          # longer suffix: the whole, as a 206
    ("bytes=90-1000", 100, Span(90, 99, 100)),       # last-pos past the end: clamped
    ("bytes=99-99", 100, Span(99, 99, 100)),
    ("BYTES=0-0", 100, Span(0, 0, 100)),             # the unit is case-insensitive
    ("bytes= 0-9 ", 100, Span(0, 9, 100)),           # OWS around the member
    ("bytes=0-9,", 100, Span(0, 9, 100)),            # empty list members skipped
    ("bytes=,0-9, ,", 100, Span(0, 9, 100)),
    ("bytes=0-" + "9" * 30, 100, Span(0, 99, 100)),  # a huge last-pos
    ("bytes=-" + "9" * 5000, 100, Span(0, 99, 100)),  # more digits than int() takes
    # unsatisfiable: 416 with bytes */length
    ("bytes=100-", 100, U(100)),
    ("bytes=100-200", 100, U(100)),
    ("bytes=-0", 100, U(100)),
    ("bytes=" + "9" * 5000 + "-", 100, U(100)),
    # ignored: the whole representation, 200
    ("bytes=0-9,20-29", 100, None),                  # several ranges: the whole
    ("bytes=9-0", 100, None),                        # last < first: invalid
    ("bytes=0-9", 0, None),                          # an empty representation
    ("bytes=-5", 0, None),
    ("items=0-9", 100, None),
    ("bytes 0-9", 100, None),
    ("bytes=", 100, None),
    ("bytes=-", 100, None),
    ("bytes=a-9", 100, None),
    ("bytes=0-9a", 100, None),
    ("bytes=+1-9", 100, None),
    ("bytes=0x1-9", 100, None),
    ("bytes=\u0661-9", 100, None),                    # a non-ASCII digit
    ("bytes=1", 100, None),
    ("", 100, None),
])
def test_parse_range(value, length, expect):
    assert parse_range(value, length) == expect


def test_content_range_and_sizes():
    assert Span(0, 9, 100).content_range == "bytes 0-9/100" and Span(0, 9, 100).size == 10
    assert Span(0, 9, 100).status == 206
    assert U(100).content_range == "bytes */100" and U(100).status == 416 and U(100).size == 0


@given(st.text(max_size=40), st.integers(min_value=0, max_value=10 ** 12))
def test_parse_range_never_raises_and_stays_inside(value, length):
    got = parse_range(value, length)
    if isinstance(got, Span):
        assert 0 <= got.start <= got.end < length == got.length
    elif got is not None:
        assert got == U(length)


@given(st.integers(min_value=1, max_value=10 ** 9), st.data())
def test_parse_range_int_ranges(length, data):
    a = data.draw(st.integers(min_value=0, max_value=length * 2))
    b = data.draw(st.integers(min_value=a, max_value=length * 2))
    got = parse_range(f"bytes={a}-{b}", length)
    if a >= length:
        assert got == U(length)
    else:
        assert got == Span(a, min(b, length - 1), length)
    n = data.draw(st.integers(min_value=1, max_value=length * 2))
    assert parse_range(f"bytes=-{n}", length) == Span(max(0, length - n), length - 1, length)


STORED = [("date", "Tue, 01 Dec 2026 10:00:10 GMT"), ("etag", '"v1"'),
          ("last-modified", "Tue, 01 Dec 2026 10:00:00 GMT")]


@pytest.mark.parametrize("value, stored, holds", [
    ('"v1"', STORED, True),
    ('"v2"', STORED, False),
    ('W/"v1"', STORED, False),                        # weak: never for If-Range
    ('"v1"', [("etag", 'W/"v1"')], False),
    ('"v1"', [], False),
    ("Tue, 01 Dec 2026 10:00:00 GMT", STORED, True),
    ("Tuesday, 01-Dec-26 10:00:00 GMT", STORED, True),  # the same date, obsolete form
    ("Tue, 01 Dec 2026 10:00:01 GMT", STORED, False),  # not exactly Last-Modified
    # a Last-Modified less than a second before Date is weak
    ("Tue, 01 Dec 2026 10:00:00 GMT", [("date", "Tue, 01 Dec 2026 10:00:00 GMT"),
                                      ("last-modified", "Tue, 01 Dec 2026 10:00:00 GMT")], False),
    ("Tue, 01 Dec 2026 10:00:00 GMT", [("last-modified", "Tue, 01 Dec 2026 10:00:00 GMT")],
     False),
    ("Tue, 01 Dec 2026 10:00:00 GMT", [("etag", '"v1"')], False),
    ("yesterday", STORED, False),
    ("", STORED, False),
])
def test_if_range(value, stored, holds):
    assert if_range_holds(value, stored) is holds


R = [("range", "bytes=0-1")]


@pytest.mark.parametrize("method, req, status, length, expect", [
    ("GET", R, 200, 10, Span(0, 1, 10)),
    ("HEAD", R, 200, 10, None),                       # Range is for GET only
    ("GET", R, 203, 10, None),                        # only a complete 200
    ("GET", R, 200, None, None),                      # length unknown
    ("GET", [], 200, 10, None),
    ("GET", R + [("range", "bytes=2-3")], 200, 10, None),  # two Range fields
    ("GET", R + [("if-range", '"v1"')], 200, 10, Span(0, 1, 10)),
    ("GET", R + [("if-range", '"v0"')], 200, 10, None),    # the whole, 200
    ("GET", R + [("if-range", '"v1"'), ("if-range", '"v1"')], 200, 10, None),
    ("GET", [("range", "bytes=10-")], 200, 10, U(10)),
    ("GET", [("range", "bytes=10-"), ("if-range", '"v0"')], 200, 10, None),
])
def test_select_range(method, req, status, length, expect):
    assert select_range(method, req, status, STORED, length) == expect


@pytest.mark.parametrize("values, expect", [
    (["gzip, deflate"], "gzip"),
    (["deflate, gzip"], "gzip"),
    (["gzip;q=1.0, deflate"], "gzip"),
    (["deflate", "gzip"], "gzip"),                    # repeated fields
    (["GZIP"], "gzip"),
    (["x-gzip"], "gzip"),
    (["gzip, deflate, br"], "br"),
    (["br;q=0.5, gzip"], "gzip"),                     # the higher q
    (["br;q=0.5, gzip;q=0.5"], "br"),                 # a tie: br
    (["*"], "br"),
    (["*;q=0.1, gzip;q=0.5"], "gzip"),
    (["gzip;q=0"], None),
    (["deflate"], None),
    (["identity"], None),
    ([""], None),
    ([], None),
])
def test_normalize_accept_encoding(values, expect):
    assert normalize_accept_encoding(values) == expect


@pytest.mark.parametrize("a, b, same", [
    ("gzip, deflate", "deflate, gzip", True),
    ("gzip, deflate", "gzip;q=1.0, deflate", True),
    ("gzip", "gzip,deflate,identity", True),
    ("deflate", "identity", True),                     # both: no coding asked upstream
    ("gzip", "br, gzip", False),
    ("gzip", "deflate", False),
])
def test_accept_encoding_variants(a, b, same):
    vary = ["Accept-Encoding"]
    ka = vary_key(vary, [("accept-encoding", a)])
    kb = vary_key(vary, [("accept-encoding", b)])
    assert (ka == kb) is same


def test_accept_encoding_absent_shares_the_identity_variant():
    vary = ["accept-encoding, accept-language"]
    assert vary_key(vary, [("accept-language", "en")]) == \
        vary_key(vary, [("accept-encoding", "deflate"), ("accept-language", "en")])
    # other fields are not normalised
    assert vary_key(["accept-language"], [("accept-language", "en, fr")]) != \
        vary_key(["accept-language"], [("accept-language", "fr, en")])
