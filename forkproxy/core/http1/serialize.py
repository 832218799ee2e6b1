"""Heads and chunks written to the wire.

``serialize_request_head(method, target, headers) -> bytes`` (always
``HTTP/1.1``; ``request_head`` of its ``field_lines``),
``serialize_response_head(status, reason, headers) -> bytes``,
``encode_chunk(data) -> bytes``, ``encode_last_chunk(trailers=()) -> bytes``.
Headers are a list of ``(name, value)`` str pairs, written in order as
``Name: value``; names and values must already be valid.  ``reason_phrase``
is the reason forkproxy writes in its own responses.
"""

from __future__ import annotations

import http


def field_lines(headers) -> str:
    """``Name: value\\r\\n`` for each field, in order: the lines of a
    field list are the lines of its parts, one after the other, so a head
    can be put together from parts serialized once (``request_head``)."""
    if not headers:
        return ""
    return "\r\n".join(map(": ".join, headers)) + "\r\n"


_fields = field_lines


def request_head(method: str, target: str, lines: str) -> bytes:
    """A request head whose field lines (``field_lines``) are ``lines``."""
    return f"{method} {target} HTTP/1.1\r\n{lines}\r\n".encode("latin-1")


def serialize_request_head(method: str, target: str, headers) -> bytes:
    return request_head(method, target, field_lines(headers))


def reason_phrase(status: int) -> str:
    """The reason phrase forkproxy writes for its own responses of ``status``
    (RFC 9110's names, e.g. 413 Content Too Large); "Error" when it has none."""
    try:
        return "Content Too Large" if status == 413 else http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def serialize_response_head(status: int, reason: str, headers) -> bytes:
    return f"HTTP/1.1 {status} {reason}\r\n{_fields(headers)}\r\n".encode("latin-1")


def encode_chunk(data) -> bytes:
    """One chunk; empty data encodes to b"" (an empty chunk would end the body)."""
    if not data:
        return b""
    return b"%x\r\n%s\r\n" % (len(data), data)


def encode_last_chunk(trailers=()) -> bytes:
    return b"0\r\n" + _fields(trailers).encode("latin-1") + b"\r\n"
