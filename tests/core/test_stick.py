"""Sticky tables, the pure part: a request's key, the stored entry, the refresh, the worker's table."""

import pytest
from hypothesis import given, strategies as st

from forkproxy.core.stick import LocalTable, decode_entry, encode_entry, refresh_due, stick_key

HEADERS = {"x-client": "alice", "x-empty": ""}
COOKIES = ["a=1; JSESSIONID=s42", "b=2"]


@pytest.mark.parametrize("key, expected", [
    ("ip", "ip 192.0.2.7"),
    ("header:x-client", "h alice"),
    ("header:x-missing", None),
    ("header:x-empty", None),  # an empty value is no key
    ("cookie:JSESSIONID", "c s42"),
    ("cookie:jsessionid", None),  # cookie names are case-sensitive
    ("cookie:b", "c 2"),
])
def test_the_key_of_a_request(key, expected):
    assert stick_key(key, HEADERS.get, COOKIES, "192.0.2.7") == expected


def test_a_header_that_names_an_address_is_not_that_client():
    got = stick_key("header:x-client", {"x-client": "192.0.2.7"}.get, [], "192.0.2.7")
    assert got != stick_key("ip", {}.get, [], "192.0.2.7")


@pytest.mark.parametrize("raw", [
    None, b"", b"1", b"1 10.0.0.1:80", b"2 10.0.0.1:80 5", b"1 10.0.0.1:80 x",
    b"1  5", b"1 a b c", b"1 \xff 5", 7, b"1 " + b"a" * 400 + b" 5",
])
def test_anything_but_an_entry_reads_as_none(raw):
    assert decode_entry(raw) is None


@given(addr=st.from_regex(r"[a-z0-9.\[\]:-]{1,60}", fullmatch=True),
       stamp=st.integers(0, 2**40))
def test_an_entry_reads_back_as_written(addr, stamp):
    assert decode_entry(encode_entry(addr, stamp)) == (addr, float(stamp))


@pytest.mark.parametrize("addr", ["", "a b:80", "x" * 301])
def test_what_is_not_an_addr_is_not_written(addr):
    with pytest.raises(ValueError):
        encode_entry(addr, 0)


@pytest.mark.parametrize("stamp, now, due", [
    (1000, 1000, False), (1000, 1179, False), (1000, 1180, True),  # ttl 1800: every 180 s
    (1000, 5000, True), (1000, 998, True),  # a clock that went back
])
def test_an_entry_is_written_again_a_tenth_of_its_ttl_after_its_stamp(stamp, now, due):
    assert refresh_due(stamp, now, 1800) is due


def test_without_a_ttl_entries_never_expire_nor_need_a_refresh():
    t = LocalTable(10, ttl=0)
    t.put("a", "s1:80", 0)
    assert t.get("a", 1e9) == "s1:80"
    assert refresh_due(0, 1e9, 0) is False


def test_the_workers_table_forgets_the_least_recently_used_first():
    t = LocalTable(2, ttl=60)
    t.put("a", "s1:80", 0)
    t.put("b", "s2:80", 1)
    assert t.get("a", 2) == "s1:80"  # a is now the most recent
    t.put("c", "s3:80", 3)
    assert (t.get("b", 4), t.get("a", 4), t.get("c", 4)) == (None, "s1:80", "s3:80")
    assert len(t) == 2


def test_an_entry_lives_its_ttl_after_its_last_use():
    t = LocalTable(10, ttl=60)
    t.put("a", "s1:80", 0)
    assert t.get("a", 59) == "s1:80"  # used: alive until 119
    assert t.get("a", 118) == "s1:80"
    assert t.get("a", 178) is None
    assert len(t) == 0


@given(ops=st.lists(st.tuples(st.sampled_from("abcdef"), st.sampled_from(["s1", "s2", None])),
                    max_size=60))
def test_the_workers_table_is_a_bounded_map(ops):
    t, ref = LocalTable(4, ttl=1e9), {}
    for now, (key, addr) in enumerate(ops):
        if addr is None:
            got = t.get(key, now)
            assert got is None or got == ref[key]
        else:
            t.put(key, addr, now)
            ref[key] = addr
        assert len(t) <= 4
