"""core.http2: a stream's fields to an HTTP/1.1 head, response fields, flood budgets."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forkproxy.core import http1, http2
from forkproxy.core.http2 import Flood, StreamError, request_head, response_fields

GET = [(":method", "GET"), (":scheme", "https"), (":path", "/a?b=1"), (":authority", "ex.com")]


@pytest.mark.parametrize("fields, end, head", [
    (GET, True, b"GET /a?b=1 HTTP/1.1\r\nhost: ex.com\r\n\r\n"),
    # bytes as h2 gives them; Host stands in for a missing :authority
    ([(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b"host", b"h:81")], True,
     b"GET / HTTP/1.1\r\nhost: h:81\r\n\r\n"),
    # :authority wins over host
    (GET + [("host", "other")], True, b"GET /a?b=1 HTTP/1.1\r\nhost: ex.com\r\n\r\n"),
    # cookie crumbs joined (RFC 9113 8.2.3), after the other fields
    (GET + [("cookie", "a=1"), ("x", "y"), ("cookie", "b=2")], True,
     b"GET /a?b=1 HTTP/1.1\r\nhost: ex.com\r\nx: y\r\ncookie: a=1; b=2\r\n\r\n"),
    # a body without a length is framed chunked; with one, as it is
    ([(":method", "POST")] + GET[1:], False,
     b"POST /a?b=1 HTTP/1.1\r\nhost: ex.com\r\ntransfer-encoding: chunked\r\n\r\n"),
    ([(":method", "POST")] + GET[1:] + [("content-length", "3")], False,
     b"POST /a?b=1 HTTP/1.1\r\nhost: ex.com\r\ncontent-length: 3\r\n\r\n"),
    (GET + [("te", "trailers")], True, b"GET /a?b=1 HTTP/1.1\r\nhost: ex.com\r\nte: trailers\r\n\r\n"),
    # CONNECT: the authority form (answered 501 by the request path)
    ([(":method", "CONNECT"), (":authority", "ex.com:443")], False,
     b"CONNECT ex.com:443 HTTP/1.1\r\nhost: ex.com:443\r\ntransfer-encoding: chunked\r\n\r\n"),
])
def test_request_head(fields, end, head):
    assert request_head(fields, end) == head
    http1.parse_request_head(head)  # what the request path then parses


def test_extended_connect_websocket_becomes_an_http1_upgrade():
    """RFC 8441 4-5: CONNECT with :protocol websocket is a GET with Upgrade
    (RFC 6455) upstream, with a key of forkproxy's; the client's is dropped."""
    fields = [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "https"),
              (":path", "/chat"), (":authority", "ex.com"), ("sec-websocket-version", "13"),
              ("sec-websocket-key", "theirs")]
    head = request_head(fields, False, "k3y==")
    assert head == (b"GET /chat HTTP/1.1\r\nhost: ex.com\r\nsec-websocket-version: 13\r\n"
                    b"connection: upgrade\r\nupgrade: websocket\r\nsec-websocket-key: k3y==\r\n\r\n")
    req = http1.parse_request_head(head)
    assert req.upgrade == "websocket" and not req.framing.carries_body
    with pytest.raises(StreamError, match="other than websocket"):
        request_head(fields, False)  # no key: not taken
    with pytest.raises(StreamError, match="other than websocket"):
        request_head([(n, "h2c" if n == ":protocol" else v) for n, v in fields], False, "k")


@pytest.mark.parametrize("fields, why", [
    (GET[1:], "no :method"),
    ([GET[0], GET[2], GET[3]], "no :scheme"),
    (GET[:2] + GET[3:], "no :path"),
    (GET[:3], "neither :authority nor host"),
    (GET + [(":path", "/x")], "repeated"),
    (GET + [("x", "1"), (":path", "/x")], "after a regular field"),
    ([GET[0], GET[0]] + GET[1:], "repeated"),
    (GET + [(":status", "200")], "unknown pseudo-header"),
    ([("x", "1")] + GET, "after a regular field"),
    (GET + [("X-Up", "1")], "lower case"),
    (GET + [("connection", "keep-alive")], "connection-specific"),
    (GET + [("transfer-encoding", "chunked")], "connection-specific"),
    (GET + [("upgrade", "websocket")], "connection-specific"),
    (GET + [("te", "gzip")], "te other than trailers"),
    (GET + [(":protocol", "websocket")], "extended CONNECT"),
    ([(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "https"), (":path", "/"),
      (":authority", "a")], "extended CONNECT"),
    ([(":method", "CONNECT"), (":authority", "a:1"), (":path", "/")], "CONNECT needs"),
    ([(":method", "GET"), (":scheme", "http"), (":path", "/a b"), (":authority", "a")],
     "space or a control"),
])
def test_malformed_requests(fields, why):
    with pytest.raises(StreamError, match=why):
        request_head(fields, True)


@pytest.mark.parametrize("status, headers, out", [
    (200, [("Content-Type", "text/plain"), ("Connection", "close"), ("Keep-Alive", "timeout=5"),
           ("Transfer-Encoding", "chunked"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")],
     [(":status", "200"), ("content-type", "text/plain"), ("set-cookie", "a=1"),
      ("set-cookie", "b=2")]),
    (103, [("Link", "</s.css>")], [(":status", "103"), ("link", "</s.css>")]),
    (304, [], [(":status", "304")]),
    (101, [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Accept", "x"),
           ("Sec-WebSocket-Protocol", "chat")],
     [(":status", "200"), ("sec-websocket-protocol", "chat")]),
])
def test_response_fields(status, headers, out):
    assert response_fields(status, headers) == out


@pytest.mark.parametrize("limit, period, times, over", [
    # (events at these times) -> which of them are over the budget
    (3, 10.0, [0, 0, 0, 0], [False, False, False, True]),
    (3, 10.0, [0, 0, 0, 5, 5], [False, False, False, False, True]),  # 1.5 tokens back by 5 s
    (2, 1.0, [0, 0, 1, 1, 2, 2], [False] * 6),  # at the rate: never over
    (1, 1.0, [0, 0.1, 0.2, 5], [False, True, True, False]),  # the bucket refills up to its size
])
def test_flood(limit, period, times, over):
    f = Flood(limit, period, 0.0)
    assert [f.hit(t) for t in times] == over


@given(st.lists(st.floats(min_value=0, max_value=0.5), min_size=1, max_size=200))
def test_flood_never_allows_more_than_the_budget_plus_refill(gaps):
    f = Flood(10, 1.0, 0.0)
    now, allowed = 0.0, 0
    for g in gaps:
        now += g
        allowed += not f.hit(now)
    assert allowed <= 10 + now * 10 + 1e-9


@given(st.from_regex(r"/[a-z0-9/._~%-]{0,40}", fullmatch=True),
       st.lists(st.tuples(st.from_regex(r"x-[a-z]{1,8}", fullmatch=True),
                          st.from_regex(r"[a-zA-Z0-9 ;=,]{0,20}", fullmatch=True)), max_size=5))
def test_heads_made_parse_with_the_same_target_and_fields(path, extra):
    extra = [(n, v.strip()) for n, v in extra]
    req = http1.parse_request_head(request_head(GET[:2] + [(":path", path), GET[3]] + extra, True))
    assert req.method == "GET" and req.target == path and req.host == "ex.com"
    assert [f for f in req.headers if f[0] != "host"] == extra


# -- HTTP/2 to the servers: the request head out, the response head in --------

@pytest.mark.parametrize("head,fields,length,chunked", [
    (b"GET /a?b=1 HTTP/1.1\r\nHost: h:8\r\nX-A: 1\r\nConnection: close\r\n\r\n",
     [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"h:8"),
      (b":path", b"/a?b=1"), (b"x-a", b"1"), (b"te", b"trailers")], None, False),
    (b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 12\r\nTE: gzip\r\n\r\n",
     [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"h"), (b":path", b"/p"),
      (b"content-length", b"12"), (b"te", b"trailers")], 12, False),
    (b"POST /s HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nUpgrade: x\r\n"
     b"Keep-Alive: 5\r\ncontent-type: application/grpc\r\n\r\n",
     [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"h"), (b":path", b"/s"),
      (b"content-type", b"application/grpc"), (b"te", b"trailers")], None, True),
])
def test_upstream_request(head, fields, length, chunked):
    assert http2.upstream_request(head, b"http") == (fields, length, chunked)


@pytest.mark.parametrize("fields,end,head_req,want", [
    ([(b":status", b"200"), (b"content-type", b"application/grpc")], False, False,
     (b"HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\n"
      b"transfer-encoding: chunked\r\n\r\n", True)),
    ([(b":status", b"404"), (b"content-length", b"3")], False, False,
     (b"HTTP/1.1 404 Not Found\r\ncontent-length: 3\r\n\r\n", False)),
    ([(b":status", b"200"), (b"grpc-status", b"3")], True, False,  # trailers-only
     (b"HTTP/1.1 200 OK\r\ngrpc-status: 3\r\ncontent-length: 0\r\n\r\n", False)),
    ([(b":status", b"204")], True, False, (b"HTTP/1.1 204 No Content\r\n\r\n", False)),
    ([(b":status", b"304"), (b"etag", b'"x"')], True, False,
     (b'HTTP/1.1 304 Not Modified\r\netag: "x"\r\n\r\n', False)),
    ([(b":status", b"200")], True, True, (b"HTTP/1.1 200 OK\r\n\r\n", False)),  # HEAD
    ([(b":status", b"599")], True, False,
     (b"HTTP/1.1 599 Unknown\r\ncontent-length: 0\r\n\r\n", False)),
    ([(b":status", b"103"), (b"link", b"</a>")], False, False, None),
])
def test_upstream_response_head(fields, end, head_req, want):
    got = http2.upstream_response_head(fields, end, head_req)
    assert got == want
    if got is not None:  # what the request path's strict parser reads
        http1.parse_response_head(got[0], http1.DEFAULT_LIMITS)
