"""Hop-by-hop stripping, forwarding headers, real client address, Host."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, strategies as st

from forkproxy.core.headers import (
    HOP_BY_HOP, allowed_upgrade, connection_tokens, forwarded_for_request, forwarded_node, is_grpc,
    passed_trailers, real_client_addr, response_headers_for_client, split_host, strip_hop_by_hop,
)
from forkproxy.core.http1.messages import ProtocolError, Request


def test_hop_by_hop_set():
    assert HOP_BY_HOP == {
        "connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade",
        "proxy-connection", "proxy-authenticate", "proxy-authorization",
    }


def test_connection_tokens():
    hs = [("connection", "Keep-Alive, X-Foo"), ("x-foo", "1"), ("connection", " close ,,")]
    assert connection_tokens(hs) == {"keep-alive", "x-foo", "close"}
    assert connection_tokens([]) == frozenset()


@pytest.mark.parametrize("headers,expected", [
    ([("host", "a"), ("connection", "close")], [("host", "a")]),
    ([("te", "trailers"), ("accept", "*/*"), ("trailer", "x"), ("upgrade", "h2c")], [("accept", "*/*")]),
    ([("connection", "x-secret, X-Other"), ("x-secret", "1"), ("x-other", "2"), ("x-keep", "3")], [("x-keep", "3")]),
    ([("proxy-authorization", "Basic x"), ("proxy-connection", "keep-alive"), ("keep-alive", "timeout=5"),
      ("transfer-encoding", "chunked"), ("proxy-authenticate", "Basic"), ("b", "1"), ("a", "2")],
     [("b", "1"), ("a", "2")]),
    ([("x-a", "1"), ("x-b", "2"), ("x-a", "3")], [("x-a", "1"), ("x-b", "2"), ("x-a", "3")]),
])
def test_strip_hop_by_hop(headers, expected):
    assert strip_hop_by_hop(headers) == expected


names = st.sampled_from(["connection", "keep-alive", "te", "x-a", "x-b", "host", "upgrade", "via", "accept"])
header_lists = st.lists(st.tuples(names, st.sampled_from(["x-a", "close", "1", "x-b, keep-alive", ""])), max_size=12)


@given(header_lists)
def test_strip_hop_by_hop_properties(headers):
    out = strip_hop_by_hop(headers)
    listed = connection_tokens(headers)
    assert all(n not in HOP_BY_HOP and n not in listed for n, _ in out)
    # order of survivors is unchanged, and nothing else is dropped
    assert out == [(n, v) for n, v in headers if n not in HOP_BY_HOP and n not in listed]
    assert strip_hop_by_hop(out) == out


def fields(headers, name):
    return [v for n, v in headers if n == name]


def test_untrusted_client_cannot_spoof():
    incoming = [("host", "shop.example"), ("x-forwarded-for", "6.6.6.6"), ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "evil"), ("x-forwarded-port", "1"), ("forwarded", "for=6.6.6.6"),
                ("x-real-ip", "6.6.6.6"), ("accept", "*/*")]
    out = forwarded_for_request(incoming, client_addr="203.0.113.7", proto="http", host="shop.example", trusted=False)
    assert fields(out, "x-forwarded-for") == ["203.0.113.7"]
    assert fields(out, "x-forwarded-proto") == ["http"]
    assert fields(out, "x-forwarded-host") == ["shop.example"]
    assert fields(out, "x-forwarded-port") == []
    assert fields(out, "x-real-ip") == []
    assert fields(out, "forwarded") == ["for=203.0.113.7;proto=http;host=shop.example"]
    assert fields(out, "via") == ["1.1 forkproxy"]
    assert out[:2] == [("host", "shop.example"), ("accept", "*/*")]


def test_trusted_proxy_chain_is_extended():
    incoming = [("host", "a"), ("x-forwarded-for", "198.51.100.1"), ("x-forwarded-for", "10.0.0.9"),
                ("x-forwarded-proto", "https"), ("x-forwarded-host", "public.example"),
                ("forwarded", 'for=198.51.100.1;proto=https'), ("x-real-ip", "198.51.100.1"),
                ("via", "1.1 edge")]
    out = forwarded_for_request(incoming, client_addr="10.0.0.2", proto="http", host="a", trusted=True,
                                via="1.1 lb1")
    assert fields(out, "x-forwarded-for") == ["198.51.100.1, 10.0.0.9, 10.0.0.2"]
    assert fields(out, "x-forwarded-proto") == ["https"]
    assert fields(out, "x-forwarded-host") == ["public.example"]
    assert fields(out, "x-real-ip") == ["198.51.100.1"]
    assert fields(out, "forwarded") == ["for=198.51.100.1;proto=https, for=10.0.0.2;proto=http;host=a"]
    assert fields(out, "via") == ["1.1 edge, 1.1 lb1"]


def test_trusted_without_incoming_values_writes_ours():
    out = forwarded_for_request([("host", "a")], client_addr="10.0.0.2", proto="https", host=None, trusted=True)
    assert fields(out, "x-forwarded-for") == ["10.0.0.2"]
    assert fields(out, "x-forwarded-proto") == ["https"]
    assert fields(out, "x-forwarded-host") == []
    assert fields(out, "forwarded") == ["for=10.0.0.2;proto=https"]


# Names CGI/WSGI read as HTTP_X_FORWARDED_FOR, HTTP_X_REAL_IP...: dropped unless
# underscores are allowed (nginx's underscores_in_headers), whoever the peer is.
UNDERSCORED = [("x_forwarded_for", "6.6.6.6"), ("x_real_ip", "6.6.6.6"), ("x-forwarded_for", "6.6.6.6"),
               ("forwarded_", "for=6.6.6.6"), ("_", "1"), ("my_header", "kept only when allowed")]


@pytest.mark.parametrize("trusted", [False, True])
@pytest.mark.parametrize("field", UNDERSCORED)
def test_underscored_names_are_dropped_by_default(field, trusted):
    incoming = [("host", "a"), field, ("accept", "*/*")]
    out = forwarded_for_request(incoming, client_addr="203.0.113.7", proto="http", host="a", trusted=trusted)
    assert field not in out
    assert out[:2] == [("host", "a"), ("accept", "*/*")]
    assert fields(out, "x-forwarded-for") == ["203.0.113.7"]


@pytest.mark.parametrize("field", UNDERSCORED)
def test_underscored_names_kept_when_allowed(field):
    incoming = [("host", "a"), field, ("accept", "*/*")]
    out = forwarded_for_request(incoming, client_addr="203.0.113.7", proto="http", host="a",
                                trusted=False, underscores=True)
    assert out[:3] == incoming


@pytest.mark.parametrize("addr,node", [
    ("192.0.2.43", "192.0.2.43"),
    ("2001:db8::1", '"[2001:db8::1]"'),
    ("[2001:db8::1]", '"[2001:db8::1]"'),
    ("", "unknown"),
])
def test_forwarded_node(addr, node):
    assert forwarded_node(addr) == node


def test_forwarded_quotes_host_with_port_and_ipv6_for():
    out = forwarded_for_request([], client_addr="2001:db8::1", proto="https", host="a.example:8443", trusted=False)
    assert fields(out, "forwarded") == ['for="[2001:db8::1]";proto=https;host="a.example:8443"']


def test_via_is_end_to_end_on_responses():
    resp = [("content-type", "text/html"), ("connection", "close, x-hop"), ("x-hop", "1"),
            ("transfer-encoding", "chunked"), ("via", "1.0 origin-cache"), ("keep-alive", "timeout=5")]
    assert response_headers_for_client(resp) == [("content-type", "text/html"),
                                                 ("via", "1.0 origin-cache, 1.1 forkproxy")]
    assert response_headers_for_client([], via="1.1 x") == [("via", "1.1 x")]


TRUSTED = ["10.0.0.0/8", "127.0.0.1/32", "fd00::/8"]


@pytest.mark.parametrize("xff,peer,expected", [
    (None, "203.0.113.5", "203.0.113.5"),                         # no header
    ("1.2.3.4", "203.0.113.5", "203.0.113.5"),                    # untrusted peer: ignore XFF
    ("1.2.3.4", "10.0.0.1", "1.2.3.4"),
    ("1.2.3.4, 5.6.7.8", "10.0.0.1", "5.6.7.8"),                  # right-most untrusted
    ("1.2.3.4, 10.0.0.7", "10.0.0.1", "1.2.3.4"),                 # skip trusted hops (recursive)
    ("10.0.0.8, 10.0.0.7", "10.0.0.1", "10.0.0.8"),               # all trusted: left-most
    ("garbage, 10.0.0.7", "10.0.0.1", "10.0.0.7"),                # stop at junk
    ("1.2.3.4, garbage", "10.0.0.1", "10.0.0.1"),
    ("2001:db8::5", "fd00::1", "2001:db8::5"),
    ("[2001:db8::5]:1234", "127.0.0.1", "2001:db8::5"),
    ("1.2.3.4:5678", "127.0.0.1", "1.2.3.4"),
    ("1.2.3.4", "::ffff:10.0.0.1", "1.2.3.4"),                    # v4-mapped peer
    ("", "10.0.0.1", "10.0.0.1"),
])
def test_real_client_addr(xff, peer, expected):
    headers = [("x-forwarded-for", xff)] if xff is not None else []
    assert real_client_addr(headers, peer, TRUSTED) == expected
    nets = [ipaddress.ip_network(n) for n in TRUSTED]
    assert real_client_addr(headers, peer, nets) == expected


def test_real_client_addr_merges_repeated_fields():
    headers = [("x-forwarded-for", "9.9.9.9"), ("x-forwarded-for", "10.1.1.1")]
    assert real_client_addr(headers, "10.0.0.1", TRUSTED) == "9.9.9.9"
    assert real_client_addr(headers, "10.0.0.1", []) == "10.0.0.1"


def test_split_host_is_exported_here():
    assert split_host("A.Example:81") == ("a.example", 81)
    with pytest.raises(ProtocolError) as e:
        split_host("bad host")
    assert e.value.status == 400


# -- one pass instead of two (the request path's drop= and tokens=) --------------

_NAMES = st.sampled_from(["host", "connection", "keep-alive", "te", "via", "x-forwarded-for",
                          "forwarded", "x-forwarded-proto", "x-real-ip", "x-a", "x-b",
                          "content-length", "upgrade", "proxy-connection"])
_VALUES = st.sampled_from(["1", "close", "x-a", "x-a, x-b", "keep-alive", "1.1 other", "10.0.0.1", ""])
_HEADERS = st.lists(st.tuples(_NAMES, _VALUES), max_size=12)


@given(_HEADERS, st.booleans(), st.sampled_from([frozenset(), frozenset({"host", "content-length"})]))
def test_forwarded_for_request_with_drop_equals_strip_then_forward(headers, trusted, also):
    kw = dict(client_addr="192.0.2.7", proto="https", host="example.com", trusted=trusted)
    from forkproxy.core.headers import hop_by_hop

    assert forwarded_for_request(headers, drop=hop_by_hop(headers, also), **kw) == \
        forwarded_for_request(strip_hop_by_hop(headers, also), **kw)


@given(_HEADERS)
def test_known_connection_tokens_change_nothing(headers):
    from forkproxy.core.headers import hop_by_hop

    tokens = connection_tokens(headers)
    assert hop_by_hop(headers, tokens=tokens) == hop_by_hop(headers)
    assert response_headers_for_client(headers, tokens=tokens) == response_headers_for_client(headers)


# -- the Upgrade protocols a route lets through (route.upgrade) ---------------------

WS = frozenset({"websocket"})


@pytest.mark.parametrize("value, allowed, kept", [
    ("websocket", WS, "websocket"),
    ("WebSocket", WS, "WebSocket"),
    ("websocket/13", WS, "websocket/13"),
    ("h2c", WS, None),
    ("H2C", WS, None),
    ("h2c, websocket", WS, "websocket"),
    (" websocket ,, h2c ", WS, "websocket"),
    ("websocketx", WS, None),
    ("", WS, None),
    (",", WS, None),
    ("websocket", frozenset(), None),
    ("h2c, foo/2, bar", frozenset({"h2c", "foo"}), "h2c, foo/2"),
    ("TLS/1.2", frozenset({"tls"}), "TLS/1.2"),
])
def test_allowed_upgrade(value, allowed, kept):
    assert allowed_upgrade(value, allowed) == kept


@given(st.lists(st.sampled_from(["websocket", "WebSocket/13", "h2c", "tls/1.3", "foo", " ", ""]),
                max_size=5),
       st.sets(st.sampled_from(["websocket", "h2c", "tls"])))
def test_allowed_upgrade_keeps_only_allowed_names(items, allowed):
    got = allowed_upgrade(",".join(items), frozenset(allowed))
    expected = [i.strip() for i in items if i.strip() and i.strip().split("/")[0].lower() in allowed]
    assert got == (", ".join(expected) if expected else None)


@pytest.mark.parametrize("addr, inside", [
    ("127.0.0.1", True), ("127.255.0.9", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("10.0.0.1", True), ("10.0.0.2", False), ("192.0.2.1", False), ("::2", False),
    ("", False), ("unix", False), ("not-an-ip", False),
])
def test_in_networks(addr, inside):
    from forkproxy.core.headers import in_networks

    nets = tuple(map(ipaddress.ip_network, ["127.0.0.0/8", "::1/128", "10.0.0.1/32"]))
    assert in_networks(addr, nets) is inside


@pytest.mark.parametrize("fields,grpc", [
    ((("content-type", "application/grpc"),), True),
    ((("content-type", "application/grpc+proto"),), True),
    ((("content-type", "Application/GRPC-web"),), True),
    ((("content-type", "application/json"),), False),
    ((("content-type", "application/gr"),), False),
    ((), False),
])
def test_is_grpc(fields, grpc):
    req = Request("POST", "/t.S/M", "1.1", fields)  # parsed names are lower case
    assert is_grpc(req) is grpc


@pytest.mark.parametrize("fields, passed", [
    ([("grpc-status", "0"), ("grpc-message", "ok")], [("grpc-status", "0"), ("grpc-message", "ok")]),
    ([("content-length", "5"), ("x-sum", "5")], [("x-sum", "5")]),
    ([("transfer-encoding", "chunked"), ("host", "evil"), ("set-cookie", "a=b")], []),
    ([("connection", "close"), ("trailer", "x"), ("content-type", "text/html")], []),
    ([], []),
])
def test_passed_trailers_drop_framing_routing_and_control_fields(fields, passed):
    assert passed_trailers(fields) == passed
