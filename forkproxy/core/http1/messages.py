"""HTTP/1.1 messages as the parsers give them: errors, limits, heads, framing.

Header names in ``Request.headers`` / ``Response.headers`` are lower-case
``str``; values are ``str`` decoded as latin-1 with surrounding OWS removed;
order and repeats are kept (a tuple in the immutable ``Request``, a list in
``Response``).  ``Request.target`` is the raw request target (``str``,
ASCII).  ``Request.version`` and ``Response.version`` are ``"1.0"`` or
``"1.1"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


class ProtocolError(Exception):
    """The peer broke HTTP/1.1 framing rules.

    ``status`` is the response the proxy should send (400/413/414/431/501/505
    to a client, 502 when the peer was an upstream); ``reason`` is a short
    human text for the error log (never sent verbatim as a status reason).
    """

    def __init__(self, status: int, reason: str = "") -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.status} {self.reason}"


class IncompleteBody(Exception):
    """The peer closed before the body's declared end (length or last chunk)."""


class Limits(NamedTuple):
    # A tuple: every remembered head is looked up by (bytes, limits), and a
    # tuple hashes in C where a frozen dataclass runs a Python __hash__.
    max_uri_length: int = 8192
    max_headers: int = 100
    max_head_size: int = 32768


DEFAULT_LIMITS = Limits()


class Request(NamedTuple):
    """A parsed request head, immutable (``headers`` is a tuple): one parse of
    a remembered head is handed to every request that sends those bytes.

    ``host`` is the Host header's host, lower-cased, without its port (None
    when absent); ``framing`` is ``request_body_framing(self)``; ``host_value``,
    ``expect`` and ``upgrade`` are the Host, Expect and Upgrade fields' first
    values (None when absent), ``connection`` the Connection fields' tokens
    (``connection.connection_tokens``): all are found by ``parse_request_head`` in its
    one pass over the fields, so the proxy does not search for them again.
    """

    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]
    host: str | None = None
    framing: "Framing | None" = None
    host_value: str | None = None
    expect: str | None = None
    upgrade: str | None = None
    connection: frozenset[str] = frozenset()

    def get(self, name: str, default: str | None = None) -> str | None:
        """First value of the lower-case header ``name``, or ``default``."""
        for n, v in self.headers:
            if n == name:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        """Every value of the lower-case header ``name``, in order."""
        return [v for n, v in self.headers if n == name]


@dataclass(slots=True)
class Response:
    status: int
    reason: str
    version: str
    headers: list[tuple[str, str]]

    get = Request.get
    get_all = Request.get_all


@dataclass(frozen=True, slots=True)
class Framing:
    """How a body is delimited.

    ``kind`` is one of ``"none"`` (no body), ``"length"`` (exactly ``length``
    bytes; may be 0), ``"chunked"`` or ``"close"`` (until the peer closes;
    responses only).  ``codings`` lists the transfer codings applied *before*
    chunked (e.g. ``("gzip",)`` for ``Transfer-Encoding: gzip, chunked``), or
    for a close-delimited response every coding named; a proxy that strips
    Transfer-Encoding must re-send these or refuse the message.
    """

    kind: str
    length: int = 0
    codings: tuple[str, ...] = ()

    @property
    def carries_body(self) -> bool:
        """True when at least one body byte may follow the head."""
        return self.kind in ("chunked", "close") or (self.kind == "length" and self.length > 0)


NO_BODY = Framing("none")
CHUNKED = Framing("chunked")
UNTIL_CLOSE = Framing("close")

# Codings registered with IANA that we can name; we never decode them, but
# knowing them separates "final coding is not chunked" (400) from "we have no
# idea what this is" (501).
KNOWN_CODINGS = frozenset(
    {"chunked", "gzip", "x-gzip", "deflate", "compress", "x-compress", "identity", "trailers"}
)
