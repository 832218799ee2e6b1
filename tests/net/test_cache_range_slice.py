"""``net.cache_ranges``: the part of a body a Range gets, however the body is cut."""

from __future__ import annotations

from hypothesis import given, strategies as st

from forkproxy.core.cache_policy import Span, Unsatisfiable, parse_range
from forkproxy.net.cache_ranges import RangeSlice, upstream_fields


@given(st.binary(min_size=1, max_size=300), st.data())
def test_slice_of_any_chunking_is_the_part(body, data):
    start = data.draw(st.integers(min_value=0, max_value=len(body) - 1))
    end = data.draw(st.integers(min_value=start, max_value=len(body) - 1))
    cuts = sorted(data.draw(st.lists(st.integers(min_value=0, max_value=len(body)), max_size=8)))
    pieces = [body[a:b] for a, b in zip([0] + cuts, cuts + [len(body)])]
    f = RangeSlice(Span(start, end, len(body)))
    out = b"".join(f.on_data(p) for p in pieces) + f.on_flush() + f.on_end()
    assert out == body[start:end + 1]


def test_unsatisfiable_lets_nothing_through():
    f = RangeSlice(Unsatisfiable(10))
    assert f.on_data(b"0123456789") == b"" and f.on_end() == b""
    assert parse_range("bytes=10-", 10) == Unsatisfiable(10)


def test_upstream_fields_of_a_cacheable_miss():
    head = [("Range", "bytes=0-1"), ("If-Range", '"a"'), ("Accept-Encoding", "deflate"),
            ("accept-encoding", "gzip;q=0.5"), ("X-A", "1"), ("If-None-Match", '"a"')]
    assert upstream_fields(head) == [("X-A", "1"), ("If-None-Match", '"a"'),
                                     ("Accept-Encoding", "gzip")]
    assert upstream_fields(head, whole=False) == [
        ("Range", "bytes=0-1"), ("If-Range", '"a"'), ("X-A", "1"), ("If-None-Match", '"a"'),
        ("Accept-Encoding", "gzip")]
    assert upstream_fields([("Accept-Encoding", "identity")]) == []
