"""HTTP/1.1 framing: a corpus of raw requests/responses, decoders, round trips."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from forkproxy.core.http1.connection import wants_keep_alive
from forkproxy.core.http1.decoders import make_decoder
from forkproxy.core.http1.framing import request_body_framing, response_body_framing
from forkproxy.core.http1.heads import find_head_end, parse_request_head, parse_response_head
from forkproxy.core.http1.messages import (
    DEFAULT_LIMITS, Framing, IncompleteBody, Limits, ProtocolError, Response,
)
from forkproxy.core.http1.serialize import (
    encode_chunk, encode_last_chunk, field_lines, reason_phrase, request_head,
    serialize_request_head, serialize_response_head,
)
from forkproxy.core.http1.targets import split_host, split_url


def read_request(raw: bytes, limits: Limits = Limits()):
    """Drive the contract like the session does: head, framing, body; one buffer."""
    end = find_head_end(raw)
    assert end > 0, "head not complete"
    req = parse_request_head(raw[:end], limits)
    dec = make_decoder(request_body_framing(req), 400, limits)
    pieces, leftover = dec.feed(raw[end:])
    if not dec.done:
        dec.eof()  # raises IncompleteBody
    return req, b"".join(pieces), dec.trailers, leftover


def read_response(raw: bytes, method: str = "GET", closed: bool = True):
    end = find_head_end(raw)
    assert end > 0
    resp = parse_response_head(raw[:end], Limits())
    dec = make_decoder(response_body_framing(method, resp), 502)
    pieces, leftover = dec.feed(raw[end:])
    if closed and not dec.done:
        dec.eof()
    return resp, b"".join(pieces), dec, leftover


H = b"Host: example.com\r\n"

# (id, raw request, expected status). Every rule of the contract appears here.
INVALID_REQUESTS = [
    # --- smuggling classics
    ("cl-te", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nX", 400),
    ("te-cl", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n", 400),
    ("te-te-identity", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked , identity\r\n\r\n", 400),
    ("te-te-two-fields", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n", 400),
    ("te-xchunked", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: xchunked\r\n\r\n", 501),
    ("te-space-before-colon", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding : chunked\r\n\r\n", 400),
    ("te-tab-before-colon", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding\t: chunked\r\n\r\n", 400),
    ("te-chunked-twice", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, chunked\r\n\r\n", 400),
    ("te-chunked-twice-fields", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    ("te-chunked-not-final", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, gzip\r\n\r\n", 400),
    ("te-gzip-only", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip\r\n\r\n", 400),
    ("te-unknown-before-chunked", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: foo, chunked\r\n\r\n", 501),
    # only chunked alone: a coding before it desyncs backends that read it otherwise
    ("te-gzip-chunked", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    ("te-identity-chunked", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n", 501),
    ("te-identity-chunked-upper", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: IDENTITY,CHUNKED\r\n\r\n0\r\n\r\n", 501),
    ("te-deflate-chunked", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: deflate, chunked\r\n\r\n0\r\n\r\n", 501),
    ("te-gzip-chunked-two-fields", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501),
    ("te-x-gzip-chunked", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: x-gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    ("te-vtab", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: \x0bchunked\r\n\r\n", 400),
    ("te-obs-fold", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding:\r\n chunked\r\n\r\n", 400),
    ("te-empty", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: \r\n\r\n", 400),
    ("te-with-params", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked;q=1\r\n\r\n", 400),
    ("te-http10", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("te-quoted", b'POST / HTTP/1.1\r\n' + H + b'Transfer-Encoding: "chunked"\r\n\r\n', 400),
    # --- Content-Length
    ("cl-differing", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400),
    ("cl-differing-list", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5, 6\r\n\r\nhello!", 400),
    ("cl-negative", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\n", 400),
    ("cl-plus", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: +5\r\n\r\nhello", 400),
    ("cl-hex", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 0x5\r\n\r\nhello", 400),
    ("cl-empty", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: \r\n\r\n", 400),
    ("cl-space-inside", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 1 0\r\n\r\n", 400),
    ("cl-huge", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 99999999999999999999999\r\n\r\n", 400),
    ("cl-float", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5.0\r\n\r\nhello", 400),
    ("cl-empty-list-item", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5,\r\n\r\nhello", 400),
    # --- line endings and bytes
    ("bare-lf-head", b"GET / HTTP/1.1\n" + b"Host: example.com\n\n", 400),
    ("bare-lf-in-field", b"GET / HTTP/1.1\r\nHost: example.com\nX: y\r\n\r\n", 400),
    ("bare-cr-in-field", b"GET / HTTP/1.1\r\nHost: example.com\rX: y\r\n\r\n", 400),
    ("bare-cr-request-line", b"GET / HTTP/1.1\r" + H + b"\r\n", 400),
    ("nul-in-value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x00b\r\n\r\n", 400),
    ("del-in-value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x7fb\r\n\r\n", 400),
    ("esc-in-value", b"GET / HTTP/1.1\r\n" + H + b"X-A: \x1b[31m\r\n\r\n", 400),
    ("obs-fold", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\r\n b\r\n\r\n", 400),
    ("obs-fold-tab", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\r\n\tb\r\n\r\n", 400),
    ("leading-ws-first-field", b"GET / HTTP/1.1\r\n Host: example.com\r\n\r\n", 400),
    ("no-colon", b"GET / HTTP/1.1\r\n" + H + b"NoColonHere\r\n\r\n", 400),
    ("empty-name", b"GET / HTTP/1.1\r\n" + H + b": value\r\n\r\n", 400),
    ("bad-name-char", b"GET / HTTP/1.1\r\n" + H + b"X(A): b\r\n\r\n", 400),
    ("name-with-slash", b"GET / HTTP/1.1\r\n" + H + b"X/A: b\r\n\r\n", 400),
    ("name-utf8", b"GET / HTTP/1.1\r\n" + H + b"X-\xc3\xa9: b\r\n\r\n", 400),
    # --- request line
    ("space-in-target", b"GET /a b HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("tab-in-target", b"GET /a\tb HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("utf8-in-target", b"GET /\xc3\xa9 HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("nul-in-target", b"GET /\x00 HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("http09", b"GET /\r\n\r\n", 400),
    ("http20", b"GET / HTTP/2.0\r\n" + H + b"\r\n", 505),
    ("http12", b"GET / HTTP/1.2\r\n" + H + b"\r\n", 505),
    ("http30", b"GET / HTTP/3.0\r\n" + H + b"\r\n", 505),
    ("version-lowercase", b"GET / http/1.1\r\n" + H + b"\r\n", 400),
    ("version-two-digits", b"GET / HTTP/1.10\r\n" + H + b"\r\n", 400),
    ("version-no-minor", b"GET / HTTP/1\r\n" + H + b"\r\n", 400),
    ("double-space", b"GET  / HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("trailing-space", b"GET / HTTP/1.1 \r\n" + H + b"\r\n", 400),
    ("leading-space", b" GET / HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("bad-method-char", b"G@T / HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("method-utf8", b"G\xc3\x89T / HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("empty-target", b"GET  HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("relative-target", b"GET index.html HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("asterisk-not-options", b"GET * HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("connect-origin-form", b"CONNECT / HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("connect-no-port", b"CONNECT example.com HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("connect-bad-port", b"CONNECT example.com:99999 HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("target-too-long", b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n" + H + b"\r\n", 414),
    # --- Host
    ("double-host", b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n", 400),
    ("double-host-same", b"GET / HTTP/1.1\r\nHost: a.example\r\nhost: a.example\r\n\r\n", 400),
    ("missing-host-11", b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n", 400),
    ("host-with-space", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    ("host-with-slash", b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
    ("host-with-at", b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n", 400),
    ("host-bad-port", b"GET / HTTP/1.1\r\nHost: a:8x\r\n\r\n", 400),
    ("host-port-range", b"GET / HTTP/1.1\r\nHost: a:70000\r\n\r\n", 400),
    ("host-unclosed-v6", b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", 400),
    # --- limits
    ("too-many-headers", b"GET / HTTP/1.1\r\n" + H + b"".join(b"X-%d: v\r\n" % i for i in range(100)) + b"\r\n", 431),
    # --- chunked bodies
    ("chunk-size-overflow", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n" + b"1" * 17 + b"\r\n", 400),
    ("chunk-size-absurd", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\n", 400),
    ("chunk-size-0x", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-size-minus", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-size-plus", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-size-space", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-size-leading-space", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n 5\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-size-empty", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-size-nonhex", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5g\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-size-bare-lf", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n", 400),
    ("chunk-size-bare-cr", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5\rhello\r\n0\r\n\r\n", 400),
    ("chunk-ext-junk", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5;\x01junk\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-ext-no-semicolon", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5 junk\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-ext-empty-name", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5;=x\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-ext-unclosed-quote", b"POST / HTTP/1.1\r\n" + H + b'Transfer-Encoding: chunked\r\n\r\n5;a="x\r\nhello\r\n0\r\n\r\n', 400),
    ("chunk-ext-trailing-space", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5;a=b \r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-ext-bad-value", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5;a=b/c\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-ext-too-long", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5;a=" + b"b" * 5000 + b"\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-missing-crlf", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n", 400),
    ("chunk-data-too-long", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-data-lf-only", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\n0\r\n\r\n", 400),
    ("chunk-data-cr-only", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r0\r\n\r\n", 400),
    ("trailer-obs-fold", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\nX-T: a\r\n b\r\n\r\n", 400),
    ("trailer-no-colon", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\njunk\r\n\r\n", 400),
    ("trailer-bare-lf", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\nX-T: a\n\r\n", 400),
    ("trailer-too-many", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\n" + b"X: y\r\n" * 101 + b"\r\n", 400),
    ("trailer-too-big", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\n" + (b"X: " + b"y" * 1000 + b"\r\n") * 40 + b"\r\n", 400),
    # --- bodies cut short
    ("chunked-truncated", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhel", "incomplete"),
    ("chunked-no-last-chunk", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", "incomplete"),
    ("chunked-no-final-crlf", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\n", "incomplete"),
    ("length-truncated", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 10\r\n\r\nhello", "incomplete"),
]


def test_corpus_is_big_enough():
    assert len(INVALID_REQUESTS) >= 60
    assert len({case[0] for case in INVALID_REQUESTS}) == len(INVALID_REQUESTS)


@pytest.mark.parametrize("raw,status", [c[1:] for c in INVALID_REQUESTS], ids=[c[0] for c in INVALID_REQUESTS])
def test_invalid_request(raw, status):
    if status == "incomplete":
        with pytest.raises(IncompleteBody):
            read_request(raw)
        return
    with pytest.raises(ProtocolError) as info:
        read_request(raw)
    assert info.value.status == status, info.value.reason
    assert info.value.reason


@pytest.mark.parametrize("raw", [c[1] for c in INVALID_REQUESTS if c[2] != "incomplete"],
                         ids=[c[0] for c in INVALID_REQUESTS if c[2] != "incomplete"])
def test_invalid_request_fed_bytewise_fails_the_same(raw):
    """Splitting the input must never turn a rejection into an acceptance."""
    status = dict((c[1], c[2]) for c in INVALID_REQUESTS)[raw]
    with pytest.raises(ProtocolError) as info:
        feed_request_in_pieces(raw, [1] * len(raw))
    assert info.value.status == status


# (id, raw, method, target, version, body, trailers, leftover)
VALID_REQUESTS = [
    ("simple-get", b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n", "GET", "/", "1.1", b"", [], b""),
    ("http10-no-host", b"GET /x HTTP/1.0\r\n\r\n", "GET", "/x", "1.0", b"", [], b""),
    ("leading-empty-lines", b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", "GET", "/", "1.1", b"", [], b""),
    ("content-length", b"POST /f HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello", "POST", "/f", "1.1", b"hello", [], b""),
    ("cl-identical-list", b"POST /f HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello", "POST", "/f", "1.1", b"hello", [], b""),
    ("cl-identical-repeat", b"POST /f HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", "POST", "/f", "1.1", b"hello", [], b""),
    ("cl-zero", b"POST /f HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", "POST", "/f", "1.1", b"", [], b""),
    ("cl-leading-zeros", b"POST /f HTTP/1.1\r\nHost: a\r\nContent-Length: 005\r\n\r\nhello", "POST", "/f", "1.1", b"hello", [], b""),
    ("chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", "POST", "/", "1.1", b"hello world", [], b""),
    ("chunked-upper-case", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: CHUNKED\r\n\r\nA\r\n0123456789\r\n0\r\n\r\n", "POST", "/", "1.1", b"0123456789", [], b""),
    ("chunked-ext", b'POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5 ; a=b;c ;d="x\\"y z"\r\nhello\r\n0;last\r\n\r\n', "POST", "/", "1.1", b"hello", [], b""),
    ("chunked-trailers", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nX-Sum:  abc \r\nX-Other: 1\r\n\r\n", "POST", "/", "1.1", b"hi", [("x-sum", "abc"), ("x-other", "1")], b""),
    ("chunked-16-hex-zeros", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0000000000000002\r\nhi\r\n0\r\n\r\n", "POST", "/", "1.1", b"hi", [], b""),
    ("te-empty-elements", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: , chunked\r\n\r\n0\r\n\r\n", "POST", "/", "1.1", b"", [], b""),
    ("absolute-form", b"GET http://a.example/x?y HTTP/1.1\r\nHost: a.example\r\n\r\n", "GET", "http://a.example/x?y", "1.1", b"", [], b""),
    ("authority-form", b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n", "CONNECT", "a.example:443", "1.1", b"", [], b""),
    ("connect-v6", b"CONNECT [::1]:443 HTTP/1.1\r\nHost: [::1]:443\r\n\r\n", "CONNECT", "[::1]:443", "1.1", b"", [], b""),
    ("asterisk-form", b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", "OPTIONS", "*", "1.1", b"", [], b""),
    ("obs-text-value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: caf\xe9\r\n\r\n", "GET", "/", "1.1", b"", [], b""),
    ("empty-value", b"GET / HTTP/1.1\r\nHost: a\r\nX-Empty:\r\nX-Blank:   \r\n\r\n", "GET", "/", "1.1", b"", [], b""),
    ("host-empty", b"GET / HTTP/1.1\r\nHost:\r\n\r\n", "GET", "/", "1.1", b"", [], b""),
    ("extension-method", b"PROPFIND /dav HTTP/1.1\r\nHost: a\r\n\r\n", "PROPFIND", "/dav", "1.1", b"", [], b""),
    ("pipelined", b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n", "GET", "/1", "1.1", b"", [], b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("pipelined-after-cl", b"POST /1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET /2 HTTP/1.1\r\nHost: a\r\n\r\n", "POST", "/1", "1.1", b"abc", [], b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("pipelined-after-chunked", b"POST /1 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n", "POST", "/1", "1.1", b"abc", [], b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n"),
]


@pytest.mark.parametrize("raw,method,target,version,body,trailers,leftover",
                         [c[1:] for c in VALID_REQUESTS], ids=[c[0] for c in VALID_REQUESTS])
def test_valid_request(raw, method, target, version, body, trailers, leftover):
    req, got_body, got_trailers, got_leftover = read_request(raw)
    assert (req.method, req.target, req.version) == (method, target, version)
    assert got_body == body
    assert got_trailers == trailers
    assert got_leftover == leftover
    # whatever remains is the next request, and it parses on its own
    if leftover:
        nxt, _, _, rest = read_request(got_leftover)
        assert nxt.target == "/2" and rest == b""


def test_headers_are_lowercase_stripped_ordered_and_latin1():
    req = parse_request_head(
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A:  one \t\r\nx-a: two\r\nX-B: caf\xe9\r\nX-A: thr ee\r\n\r\n")
    assert req.headers == (("host", "a"), ("x-a", "one"), ("x-a", "two"), ("x-b", "caf\xe9"), ("x-a", "thr ee"))
    assert req.get("x-a") == "one"
    assert req.get("missing") is None and req.get("missing", "d") == "d"
    assert req.get_all("x-a") == ["one", "two", "thr ee"]


def test_limits_are_configurable():
    raw = b"GET /abcdef HTTP/1.1\r\nHost: a\r\nX: 1\r\n\r\n"
    assert parse_request_head(raw, Limits(max_uri_length=7, max_headers=2)).target == "/abcdef"
    with pytest.raises(ProtocolError) as e:
        parse_request_head(raw, Limits(max_uri_length=6))
    assert e.value.status == 414
    with pytest.raises(ProtocolError) as e:
        parse_request_head(raw, Limits(max_headers=1))
    assert e.value.status == 431


def test_framing_values():
    def framing(raw):
        return request_body_framing(parse_request_head(raw))
    assert framing(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n") == Framing("none")
    assert framing(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n") == Framing("length", 0)
    assert framing(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n") == Framing("length", 12)
    assert framing(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n").kind == "chunked"
    assert framing(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n") == Framing("chunked")


# ---------------------------------------------------------------------------
# find_head_end

@pytest.mark.parametrize("buf,expected", [
    (b"", -1),
    (b"GET / HTTP/1.1\r\n", -1),
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r", -1),
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 27),
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET", 27),
    (b"\r\n\r\n", -1),
    (b"\r\n\r\nGET / HTTP/1.1\r\n\r\n", 22),
])
def test_find_head_end(buf, expected):
    assert find_head_end(buf) == expected
    assert find_head_end(bytearray(buf)) == expected


@pytest.mark.parametrize("buf", [b"GET / HTTP/1.1\n", b"\n\n", b"GET /\rx", b"GET / HTTP/1.1\r\nHost: a\n\r\n", b"A\r\r\n"])
def test_find_head_end_rejects_bare_cr_lf_early(buf):
    with pytest.raises(ProtocolError) as e:
        find_head_end(buf)
    assert e.value.status == 400


def test_find_head_end_resumes_mid_crlf():
    raw = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    for cut in range(1, len(raw)):
        buf = raw[:cut]
        assert find_head_end(buf) == -1
        assert find_head_end(raw, max(0, cut - 3)) == len(raw)


# ---------------------------------------------------------------------------
# Responses

# (id, raw, request method, status, body, done-before-eof, leftover)
VALID_RESPONSES = [
    ("length", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", "GET", 200, b"hello", True, b""),
    ("chunked", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", "GET", 200, b"hello", True, b""),
    ("close-delimited", b"HTTP/1.1 200 OK\r\n\r\nuntil the end", "GET", 200, b"until the end", False, b""),
    ("close-delimited-10", b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nold", "GET", 200, b"old", False, b""),
    ("gzip-not-chunked-is-close", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nzzz", "GET", 200, b"zzz", False, b""),
    ("head", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", "HEAD", 200, b"", True, b""),
    ("head-chunked", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nHTTP/1.1 200 OK\r\n", "HEAD", 200, b"", True, b"HTTP/1.1 200 OK\r\n"),
    ("100-continue", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", "POST", 100, b"", True, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    ("101", b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x00", "GET", 101, b"", True, b"\x81\x00"),
    ("103", b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n", "GET", 103, b"", True, b""),
    ("204", b"HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\nNEXT", "GET", 204, b"", True, b"NEXT"),
    ("304", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1234\r\nETag: \"x\"\r\n\r\n", "GET", 304, b"", True, b""),
    ("connect-200", b"HTTP/1.1 200 Connection established\r\n\r\nTLS", "CONNECT", 200, b"", True, b"TLS"),
    ("empty-reason", b"HTTP/1.1 404 \r\nContent-Length: 0\r\n\r\n", "GET", 404, b"", True, b""),
    ("no-reason-no-space", b"HTTP/1.1 500\r\nContent-Length: 2\r\n\r\nno", "GET", 500, b"no", True, b""),
    ("keepalive-leftover", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1", "GET", 200, b"ok", True, b"HTTP/1.1"),
    ("trailers", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\nGrpc-Status: 0\r\n\r\n", "GET", 200, b"x", True, b""),
]


@pytest.mark.parametrize("raw,method,status,body,done_early,leftover",
                         [c[1:] for c in VALID_RESPONSES], ids=[c[0] for c in VALID_RESPONSES])
def test_valid_response(raw, method, status, body, done_early, leftover):
    resp, got_body, dec, got_leftover = read_response(raw, method, closed=False)
    assert resp.status == status
    assert got_body == body
    assert dec.done is done_early
    assert got_leftover == leftover
    dec.eof()
    assert dec.done


def test_response_fields():
    resp = parse_response_head(b"HTTP/1.0 503 Service Unavailable\r\nRetry-After: 5\r\n\r\n")
    assert (resp.status, resp.reason, resp.version) == (503, "Service Unavailable", "1.0")
    assert resp.get("retry-after") == "5" and resp.get_all("retry-after") == ["5"]
    dec = make_decoder(response_body_framing("GET", parse_response_head(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")), 502)
    dec.feed(b"0\r\nX-T: v\r\n\r\n")
    assert dec.trailers == [("x-t", "v")]


INVALID_RESPONSES = [
    # A proxy refuses what a client may tolerate (RFC 9112 6.3): both framings.
    ("cl-and-te", b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n"),
    ("http09", b"hello world\r\n\r\n"),
    ("http2", b"HTTP/2.0 200 OK\r\n\r\n"),
    ("lowercase", b"http/1.1 200 OK\r\n\r\n"),
    ("status-2-digits", b"HTTP/1.1 20 OK\r\n\r\n"),
    ("status-4-digits", b"HTTP/1.1 2000 OK\r\n\r\n"),
    ("status-below-100", b"HTTP/1.1 099 Weird\r\n\r\n"),
    ("bad-reason-ctl", b"HTTP/1.1 200 O\x00K\r\n\r\n"),
    ("differing-cl", b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
    ("bad-cl", b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n"),
    ("obs-fold", b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 0\r\n\r\n"),
    ("space-before-colon", b"HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n"),
    ("te-http10", b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ("te-chunked-twice", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"),
    ("te-unknown", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: bogus\r\n\r\n"),
    ("bad-chunk", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
    ("chunk-missing-crlf", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nxy"),
    ("nul-in-value", b"HTTP/1.1 200 OK\r\nX-A: \x00\r\nContent-Length: 0\r\n\r\n"),
]


@pytest.mark.parametrize("raw", [c[1] for c in INVALID_RESPONSES], ids=[c[0] for c in INVALID_RESPONSES])
def test_invalid_response_is_bad_gateway(raw):
    with pytest.raises(ProtocolError) as e:
        read_response(raw, "GET", closed=False)
    assert e.value.status == 502


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
])
def test_truncated_response_is_incomplete(raw):
    with pytest.raises(IncompleteBody):
        read_response(raw, "GET", closed=True)


# ---------------------------------------------------------------------------
# Decoders

def test_length_decoder_passes_whole_buffers_through():
    dec = make_decoder(Framing("length", 10))
    data = b"01234"
    pieces, left = dec.feed(data)
    assert pieces[0] is data and left == b"" and not dec.done
    pieces, left = dec.feed(b"56789extra")
    assert pieces == [b"56789"] and left == b"extra" and dec.done
    assert dec.feed(b"more") == ([], b"more")


def test_large_length_body_in_big_slices():
    body = bytes(range(256)) * 4096  # 1 MiB
    dec = make_decoder(Framing("length", len(body)))
    out = []
    for i in range(0, len(body), 65536):
        pieces, left = dec.feed(body[i:i + 65536])
        out += pieces
        assert left == b""
    assert dec.done and len(out) == 16 and b"".join(out) == body


def test_chunked_decoder_large_chunk_not_copied():
    data = b"x" * 100000
    dec = make_decoder(Framing("chunked"))
    dec.feed(b"186a0\r\n")
    pieces, _ = dec.feed(data)
    assert pieces[0] is data


def test_chunked_state_is_bounded():
    dec = make_decoder(Framing("chunked"))
    with pytest.raises(ProtocolError):
        for _ in range(10000):
            dec.feed(b"0" * 100)  # an endless chunk-size line


def test_eof_semantics():
    assert make_decoder(Framing("none")).done
    dec = make_decoder(Framing("close"), 502)
    assert dec.feed(b"abc") == ([b"abc"], b"")
    dec.eof()
    assert dec.done
    with pytest.raises(IncompleteBody):
        make_decoder(Framing("chunked")).eof()
    with pytest.raises(IncompleteBody):
        make_decoder(Framing("length", 1)).eof()
    make_decoder(Framing("length", 0)).eof()


def test_decoder_status_is_the_callers():
    dec = make_decoder(Framing("chunked"), 502)
    with pytest.raises(ProtocolError) as e:
        dec.feed(b"nothex\r\n")
    assert e.value.status == 502


# ---------------------------------------------------------------------------
# Serialising, keep-alive, Host

def test_serialize():
    assert serialize_request_head("GET", "/", [("host", "a"), ("x", "caf\xe9")]) == \
        b"GET / HTTP/1.1\r\nhost: a\r\nx: caf\xe9\r\n\r\n"
    assert serialize_response_head(200, "OK", []) == b"HTTP/1.1 200 OK\r\n\r\n"
    assert encode_chunk(b"hello") == b"5\r\nhello\r\n"
    assert encode_chunk(b"x" * 26) == b"1a\r\n" + b"x" * 26 + b"\r\n"
    assert encode_chunk(b"") == b""
    assert encode_last_chunk() == b"0\r\n\r\n"
    assert encode_last_chunk([("x-t", "1")]) == b"0\r\nx-t: 1\r\n\r\n"


@pytest.mark.parametrize("version,headers,expected", [
    ("1.1", [], True),
    ("1.1", [("connection", "close")], False),
    ("1.1", [("connection", "Keep-Alive, CLOSE")], False),
    ("1.1", [("connection", "upgrade")], True),
    ("1.0", [], False),
    ("1.0", [("connection", "keep-alive")], True),
    ("1.0", [("connection", "Keep-Alive")], True),
    ("1.0", [("connection", "te"), ("connection", "keep-alive")], True),
    ("1.0", [("keep-alive", "timeout=5")], False),
])
def test_wants_keep_alive(version, headers, expected):
    assert wants_keep_alive(version, headers) is expected


@pytest.mark.parametrize("value,expected", [
    ("Example.COM", ("example.com", None)),
    ("example.com:8080", ("example.com", 8080)),
    ("example.com:", ("example.com", None)),
    ("127.0.0.1:80", ("127.0.0.1", 80)),
    ("[2001:DB8::1]:443", ("[2001:db8::1]", 443)),
    ("[::1]", ("[::1]", None)),
    ("xn--bcher-kva.example", ("xn--bcher-kva.example", None)),
    ("", ("", None)),
])
def test_split_host_valid(value, expected):
    assert split_host(value) == expected


@pytest.mark.parametrize("value", ["a b", "a/b", "u@a", "a:b", "a:65536", "[::1", "::1", "a:1:2", "a\x00", "caf\xe9"])
def test_split_host_invalid(value):
    with pytest.raises(ProtocolError) as e:
        split_host(value)
    assert e.value.status == 400


# ---------------------------------------------------------------------------
# Round trips (hypothesis)

TCHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
tokens = st.text(alphabet=TCHARS, min_size=1, max_size=12)
# field values: visible ASCII / obs-text with inner SP/HTAB, never surrounded by OWS
vchar = st.characters(min_codepoint=0x21, max_codepoint=0xFF).filter(lambda c: c != "\x7f")
values = st.builds(
    lambda a, mid: (a + mid).rstrip(" \t") if mid else a,
    vchar, st.text(alphabet=st.one_of(vchar, st.sampled_from(" \t")), max_size=20),
).map(lambda s: s.rstrip(" \t")) | st.just("")
FRAMING_NAMES = {"host", "content-length", "transfer-encoding"}
extra_headers = st.lists(
    st.tuples(tokens.map(str.lower).filter(lambda n: n not in FRAMING_NAMES), values), max_size=8)
targets = st.builds(lambda p: "/" + p, st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40))
bodies = st.binary(max_size=300)
cut_lists = st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=40)


def split_by(data: bytes, cuts: list[int]):
    pos, i = 0, 0
    while pos < len(data):
        n = cuts[i % len(cuts)]
        yield data[pos:pos + n]
        pos += n
        i += 1


def feed_request_in_pieces(raw: bytes, cuts: list[int]):
    """The session's read loop, in miniature: buffer until head, then decode."""
    buf = bytearray()
    req = dec = None
    body: list[bytes] = []
    leftover = b""
    for piece in split_by(raw, cuts):
        if dec is None:
            start = max(0, len(buf) - 3)
            buf += piece
            end = find_head_end(buf, start)
            if end < 0:
                continue
            req = parse_request_head(bytes(buf[:end]))
            dec = make_decoder(request_body_framing(req))
            piece = bytes(buf[end:])
        if dec.done:
            leftover += piece
            continue
        pieces, rest = dec.feed(piece)
        body += pieces
        leftover += rest
    return req, dec, b"".join(body), leftover


def chunked_encode(body: bytes, sizes: list[int]) -> bytes:
    return b"".join(encode_chunk(p) for p in split_by(body, sizes))


@settings(max_examples=300, deadline=None)
@given(method=tokens.filter(lambda m: m != "CONNECT"),  # CONNECT takes authority-form only
       target=targets, headers=extra_headers, body=bodies,
       chunked=st.booleans(), chunk_sizes=cut_lists, cuts=cut_lists,
       trailers=st.lists(st.tuples(tokens.map(str.lower), values), max_size=3),
       tail=st.sampled_from([b"", b"GET /next HTTP/1.1\r\nHost: n\r\n\r\n"]))
def test_request_round_trip(method, target, headers, body, chunked, chunk_sizes, cuts, trailers, tail):
    fields = [("host", "example.com")] + headers
    if chunked:
        fields.append(("transfer-encoding", "chunked"))
        payload = chunked_encode(body, chunk_sizes) + encode_last_chunk(trailers)
    else:
        fields.append(("content-length", str(len(body))))
        payload = body
        trailers = []
    raw = serialize_request_head(method, target, fields) + payload + tail
    req, dec, got_body, leftover = feed_request_in_pieces(raw, cuts)
    assert (req.method, req.target, req.version, req.headers) == (method, target, "1.1", tuple(fields))
    assert dec.done
    assert got_body == body
    assert dec.trailers == trailers
    assert leftover == tail


@settings(max_examples=200, deadline=None)
@given(status=st.integers(min_value=200, max_value=599).filter(lambda s: s not in (204, 304)),
       reason=st.text(alphabet=TCHARS + " ", max_size=20).map(str.strip),
       headers=extra_headers, body=bodies, mode=st.sampled_from(["length", "chunked", "close"]),
       chunk_sizes=cut_lists, cuts=cut_lists)
def test_response_round_trip(status, reason, headers, body, mode, chunk_sizes, cuts):
    fields = list(headers)
    if mode == "chunked":
        fields.append(("transfer-encoding", "chunked"))
        payload = chunked_encode(body, chunk_sizes) + encode_last_chunk()
    elif mode == "length":
        fields.append(("content-length", str(len(body))))
        payload = body
    else:
        payload = body
    raw = serialize_response_head(status, reason, fields) + payload
    buf = bytearray()
    resp = dec = None
    got = []
    for piece in split_by(raw, cuts):
        if dec is None:
            start = max(0, len(buf) - 3)
            buf += piece
            end = find_head_end(buf, start)
            if end < 0:
                continue
            resp = parse_response_head(bytes(buf[:end]))
            dec = make_decoder(response_body_framing("GET", resp), 502)
            piece = bytes(buf[end:])
        pieces, rest = dec.feed(piece)
        got += pieces
        assert rest == b""
    if dec is None:  # the head came in the very last piece with no body
        end = find_head_end(buf)
        resp = parse_response_head(bytes(buf[:end]))
        dec = make_decoder(response_body_framing("GET", resp), 502)
    dec.eof()
    assert resp == Response(status, reason, "1.1", fields)
    assert b"".join(got) == body


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_parser_never_crashes_on_junk(junk):
    """Arbitrary bytes either parse or raise ProtocolError: nothing else."""
    raw = b"GET / HTTP/1.1\r\nHost: a\r\n" + junk + b"\r\n\r\n"
    try:
        end = find_head_end(raw)
        if end > 0:
            parse_request_head(raw[:end])
    except ProtocolError as e:
        assert e.status in (400, 414, 431, 501, 505)


@pytest.mark.parametrize("status,phrase", [(200, "OK"), (413, "Content Too Large"),
                                           (431, "Request Header Fields Too Large"),
                                           (503, "Service Unavailable"), (599, "Error")])
def test_reason_phrase(status, phrase):
    assert reason_phrase(status) == phrase


@pytest.mark.parametrize("url,want", [
    ("http://example.com", ("http", "example.com", "/", 80)),
    ("https://a.example:8443/p?q=1", ("https", "a.example:8443", "/p?q=1", 8443)),
    ("http://[::1]:81/x", ("http", "[::1]:81", "/x", 81)),
])
def test_split_url(url, want):
    assert split_url(url) == want


@pytest.mark.parametrize("url", ["example.com/x", "ftp://example.com/", "http:///x",
                                 "http://example.com:99999/"])
def test_split_url_refuses(url):
    with pytest.raises(ValueError):
        split_url(url)


def test_a_complete_head_is_left_to_the_parser_which_refuses_bare_lf():
    raw = b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n"
    assert find_head_end(raw) == len(raw)
    with pytest.raises(ProtocolError) as e:
        parse_request_head(raw)
    assert e.value.status == 400
    resp = b"HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n"
    assert find_head_end(resp) == len(resp)
    with pytest.raises(ProtocolError) as e:
        parse_response_head(resp)
    assert e.value.status == 502


@pytest.mark.parametrize("version,connection", [
    ("1.1", None), ("1.1", "close"), ("1.1", "keep-alive"), ("1.0", None),
    ("1.0", "keep-alive"), ("1.0", "Keep-Alive, close"), ("1.1", "upgrade, Close"),
])
def test_keep_alive_from_tokens_is_wants_keep_alive(version, connection):
    from forkproxy.core.http1.connection import connection_tokens, keep_alive

    headers = [("host", "a")] + ([("connection", connection)] if connection else [])
    assert keep_alive(version, connection_tokens(headers)) == wants_keep_alive(version, headers)


@pytest.mark.parametrize("value,length", [
    ("0", 0), ("007", 7), ("1024", 1024), ("123456789012345678", 123456789012345678),
    ("9223372036854775807", 9223372036854775807),  # 19 digits: the general path
    ("5, 5", 5), (" 12 ", 12),
])
def test_content_length_common_and_general_paths(value, length):
    req = parse_request_head(f"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {value}\r\n\r\n".encode())
    assert (req.framing.kind, req.framing.length) == ("length", length)


@pytest.mark.parametrize("value", ["9223372036854775808", "١٢", "1_0", "+1", "5, 6"])
def test_content_length_refusals_survive_the_fast_path(value):
    with pytest.raises(ProtocolError):
        parse_request_head(f"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {value}\r\n\r\n"
                           .encode("utf-8"))


def test_a_remembered_host_is_still_checked_when_invalid_each_time():
    for _ in range(2):
        assert parse_request_head(b"GET / HTTP/1.1\r\nHost: Example.COM:8080\r\n\r\n").host == \
            "example.com"
        with pytest.raises(ProtocolError):
            parse_request_head(b"GET / HTTP/1.1\r\nHost: bad host\r\n\r\n")


# -- remembered heads: the same bytes, the same answer, never a shared object -------

_HEAD_FIELDS = st.lists(st.tuples(st.sampled_from(["X-A", "accept", "Content-Length", "Expect",
                                                    "Upgrade", "Connection", "Host"]),
                                  st.sampled_from(["1", "0", "a b", "", "100-continue", "close"])),
                        max_size=5)


@given(st.sampled_from(["GET", "POST", "HEAD"]), st.sampled_from(["1.0", "1.1"]), _HEAD_FIELDS,
       st.integers(0, 3000))
def test_a_remembered_head_parses_as_a_fresh_one(method, version, fields, pad):
    from forkproxy.core.http1.heads import _parse_request_head, _parse_response_head

    lines = "".join(f"{n}: {v}\r\n" for n, v in fields) + f"X-Pad: {'p' * pad}\r\n"
    for head, parse, fresh in (
            (f"{method} /x HTTP/{version}\r\nHost: h\r\n{lines}\r\n".encode(),
             parse_request_head, _parse_request_head),
            (f"HTTP/{version} 200 OK\r\n{lines}\r\n".encode(), parse_response_head,
             _parse_response_head)):
        try:
            want = fresh(head, DEFAULT_LIMITS)
        except ProtocolError as exc:
            for _ in range(2):  # refused every time, with the same answer
                with pytest.raises(ProtocolError) as got:
                    parse(head)
                assert (got.value.status, got.value.reason) == (exc.status, exc.reason)
            continue
        first = parse(head)
        second = parse(bytearray(head))
        assert first == second == want
        if parse is parse_request_head:  # immutable, so handed out as remembered
            with pytest.raises(AttributeError):
                first.method = "POST"
            assert isinstance(first.headers, tuple)
        else:  # a copy each time: a caller's change reaches no other response
            assert first is not second and first.headers is not second.headers
            first.headers.append(("x-mine", "1"))
        assert parse(head) == want


_FIELD = st.tuples(st.sampled_from(["Host", "x-a", "Accept", "x-request-id"]),
                   st.text(alphabet="abc 1/;=", max_size=8))


@given(st.lists(_FIELD, max_size=5), st.lists(_FIELD, max_size=5), st.lists(_FIELD, max_size=5))
def test_a_head_put_together_from_field_line_parts_is_the_serialized_head(a, b, c):
    # net.upstream_http.upstream_head joins parts serialized once, around X-Request-Id.
    whole = serialize_request_head("GET", "/x?y", a + b + c)
    assert field_lines(a + b + c) == field_lines(a) + field_lines(b) + field_lines(c)
    assert whole == request_head("GET", "/x?y", field_lines(a) + field_lines(b) + field_lines(c))
