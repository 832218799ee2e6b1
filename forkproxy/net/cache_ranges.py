"""Byte ranges in the cache's part of the request path (issue 23).

What is served (``core.cache_policy.ranges`` decides which part):

- A hit: a GET with one byte range (``Range: bytes=a-b``, ``a-``, ``-n``,
  and an ``If-Range`` that holds) for a stored complete 200 is answered
  206 with ``Content-Range`` from the stored body (``Cache.serve`` slices it
  with ``RangeSlice``), or 416 with ``Content-Range: bytes */length``.  An
  If-Range that does not hold, several ranges, another unit: the whole 200.
  The part is of the stored (origin's) representation: the route's
  ``compress`` does not apply to it.
- A miss (as nginx's proxy_cache does): a cacheable GET goes upstream
  without its Range and If-Range (``upstream_fields``), the whole 200 is
  stored, and the client gets its part of it as the body goes by
  (``cache_filter.RangeTee``: the whole into the store, the part to the
  client, a 206 or 416 head from ``client_view``).  A response whose
  length is unknown (chunked) is sent whole.  A URL marked hit-for-pass
  (its last response could not be stored, or was larger than
  max_object_size) keeps its Range: the origin's 206 is passed through,
  never stored.
- Either way, a GET miss whose response may be stored sends upstream the
  Accept-Encoding its variant key holds (``upstream_fields``): what is
  stored under a key is what any request with that key may be given.
"""

from __future__ import annotations

from operator import itemgetter

from forkproxy.core import cache_policy as policy
from forkproxy.core.http1 import Framing, Response
from forkproxy.net.relay import Discard

_NAME = itemgetter(0)

# Request fields a cacheable miss does not send upstream: the whole is asked for.
_PART_FIELDS = frozenset({"range", "if-range"})


def upstream_fields(headers, whole: bool = True) -> list:
    """The head sent upstream for a GET miss whose response may be stored:
    with the Accept-Encoding its variant key names
    (``cache_policy.normalize_accept_encoding``), and, when ``whole``,
    without Range and If-Range."""
    drop = _PART_FIELDS if whole else ()
    ae = []
    out = []
    for n, v in headers:
        low = n.lower()
        if low == "accept-encoding":
            ae.append(v)
        elif low not in drop:
            out.append((n, v))
    coding = policy.normalize_accept_encoding(ae)
    if coding is not None:
        out.append(("Accept-Encoding", coding))
    return out


def span_of(req, entry: policy.Entry, length: int | None):
    """The part of a stored entry a request gets (``select_range``): a Span,
    Unsatisfiable, or None (the whole)."""
    return policy.select_range(req.method, req.headers, entry.status, entry.headers, length)


class RangeSlice(Discard):
    """A response filter that lets through only bytes ``span.start`` to
    ``span.end`` (inclusive) of the body it is given, nothing for a 416
    (and, as ``Discard``, nothing more on a flush or at the end)."""

    def __init__(self, span):
        self.at = 0  # offset of the next byte given
        self.start = getattr(span, "start", 0)
        self.stop = self.start + span.size  # one past the last byte let through

    def on_data(self, data) -> bytes:
        at = self.at
        self.at = at + len(data)
        if self.at <= self.start or at >= self.stop:
            return b""
        return bytes(data[max(0, self.start - at):self.stop - at])


def client_view(resp, span) -> tuple:
    """(response, framing) the client's head is made of when it gets ``span``
    (a Span or Unsatisfiable) of the origin's 200 ``resp``."""
    fields = [(n, v) for n, v in resp.headers if n != "content-range"]
    fields.append(("content-range", span.content_range))
    return Response(span.status, span.reason, resp.version, fields), Framing("length", span.size)


def miss_span(req, resp, rframing):
    """The part of the origin's whole ``resp`` a cacheable GET miss's client
    gets (its Range was not sent upstream): None for the whole (no Range, an
    If-Range that does not hold, a length unknown)."""
    if rframing.kind != "length" or "range" not in map(_NAME, req.headers):
        return None
    return policy.select_range("GET", req.headers, resp.status, resp.headers, rframing.length)
