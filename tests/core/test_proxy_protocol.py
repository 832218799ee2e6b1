"""core.proxy_protocol: the PROXY header, v1 and v2, as tables (HAProxy's spec examples)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forkproxy.core import proxy_protocol as pp
from forkproxy.core.proxy_protocol import NEED_MORE, ProxyHeader, ProxyProtocolError

V4 = (("192.0.2.1", 56324), ("198.51.100.7", 443))
V6 = (("2001:db8::1", 1234), ("2001:db8::2", 80))

ENCODED = [
    ("v1 tcp4", "v1", *V4, b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n"),
    ("v1 tcp6", "v1", *V6, b"PROXY TCP6 2001:db8::1 2001:db8::2 1234 80\r\n"),
    ("v1 mixed", "v1", ("192.0.2.1", 1), ("::1", 2), b"PROXY TCP6 ::ffff:c000:201 ::1 1 2\r\n"),
    ("v1 unknown", "v1", None, None, b"PROXY UNKNOWN\r\n"),
    ("v2 tcp4", "v2", *V4, pp.V2_SIG + b"\x21\x11\x00\x0c" + bytes([192, 0, 2, 1, 198, 51, 100, 7])
     + (56324).to_bytes(2, "big") + (443).to_bytes(2, "big")),
    ("v2 local", "v2", None, None, pp.V2_SIG + b"\x20\x00\x00\x00"),
]


@pytest.mark.parametrize("version,src,dst,wire", [e[1:] for e in ENCODED], ids=[e[0] for e in ENCODED])
def test_encode(version, src, dst, wire):
    assert pp.encode(version, src, dst) == wire


PARSED = [
    ("v1 tcp4 + payload", b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\nGET /",
     ProxyHeader(1, V4[0], V4[1], 45)),
    ("v1 tcp6", b"PROXY TCP6 2001:db8::1 2001:db8::2 1234 80\r\n", ProxyHeader(1, V6[0], V6[1], 44)),
    ("v1 unknown with junk", b"PROXY UNKNOWN whatever\r\nx", ProxyHeader(1, None, None, 24)),
    ("v2 tcp6", pp.encode_v2(*V6) + b"\x16\x03", ProxyHeader(2, V6[0], V6[1], 52)),
    ("v2 with tlv", pp.V2_SIG + b"\x21\x11\x00\x0f" + bytes([10, 0, 0, 1, 10, 0, 0, 2, 0, 1, 0, 2])
     + b"\x04\x00\x00", ProxyHeader(2, ("10.0.0.1", 1), ("10.0.0.2", 2), 31)),
    ("v2 local", pp.V2_SIG + b"\x20\x00\x00\x00", ProxyHeader(2, None, None, 16)),
    ("v2 unspec", pp.V2_SIG + b"\x21\x00\x00\x00", ProxyHeader(2, None, None, 16)),
]


@pytest.mark.parametrize("buf,expected", [p[1:] for p in PARSED], ids=[p[0] for p in PARSED])
def test_parse(buf, expected):
    assert pp.parse(buf) == expected


INCOMPLETE = [b"", b"P", b"PROXY", b"PROXY TCP4 192.0.2.1", b"\r\n\r\n", pp.V2_SIG,
              pp.encode_v2(*V4)[:20]]


@pytest.mark.parametrize("buf", INCOMPLETE)
def test_need_more(buf):
    assert pp.parse(buf) is NEED_MORE


BAD = [
    ("plain http", b"GET / HTTP/1.1\r\n"),
    ("tls hello", b"\x16\x03\x01\x02\x00"),
    ("v1 lowercase", b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n"),
    ("v1 bad family", b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n"),
    ("v1 v6 addr as tcp4", b"PROXY TCP4 ::1 ::1 1 2\r\n"),
    ("v1 port too big", b"PROXY TCP4 1.2.3.4 5.6.7.8 70000 2\r\n"),
    ("v1 leading zero", b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n"),
    ("v1 missing field", b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"),
    ("v1 bare LF", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"),
    ("v1 too long", b"PROXY TCP6 " + b"a" * 120),
    ("v2 bad signature", b"\r\n\r\n\x00\r\nQUIX\n\x21\x11\x00\x0c"),
    ("v2 version 1", pp.V2_SIG + b"\x11\x11\x00\x00"),
    ("v2 short addresses", pp.V2_SIG + b"\x21\x11\x00\x04\x01\x02\x03\x04"),
]


@pytest.mark.parametrize("buf", [b[1] for b in BAD], ids=[b[0] for b in BAD])
def test_rejects(buf):
    with pytest.raises(ProxyProtocolError):
        pp.parse(buf)


ports = st.integers(0, 65535)
v4 = st.ip_addresses(v=4).map(str)
v6 = st.ip_addresses(v=6).map(str)


@given(st.sampled_from(["v1", "v2"]), st.one_of(st.tuples(v4, v4), st.tuples(v6, v6)), ports, ports)
def test_round_trip(version, ips, sport, dport):
    wire = pp.encode(version, (ips[0], sport), (ips[1], dport))
    h = pp.parse(wire + b"rest")
    assert (h.src, h.dst, h.length) == ((ips[0], sport), (ips[1], dport), len(wire))
