"""Shadow traffic's decisions (route ``mirror``): which requests get a copy,
and what of their body goes with it.  Pure: ``net.mirror`` sends the copy.

``sampled(percent, draw)``: ``draw`` is uniform in [0, 1) (``random.random()``
per request), so ``percent`` of the requests are mirrored, 0 none, 100 all.

``body_plan``: a copy carries the whole body or none is sent (a request with
half its body would be a different request):

- no body: ``NONE``, mirrored as it is;
- a body read whole (request_buffering): ``SPOOLED`` up to ``max_body``;
- a streamed body with a Content-Length up to ``max_body``: ``READ`` (read
  whole from the client before the real request goes, as nginx's
  mirror_request_body reads it, then copied);
- anything else (larger, chunked and streamed, an upgrade): ``SKIP``.
"""

from __future__ import annotations

NONE, SPOOLED, READ, SKIP = "none", "spooled", "read", "skip"


def sampled(percent: int, draw: float) -> bool:
    """Whether the request that drew ``draw`` (in [0, 1)) is mirrored."""
    return draw < percent / 100


def body_plan(kind: str, length: int | None, spooled: int | None, max_body: int,
              upgrade: bool = False) -> str:
    """What a copy does with the request's body.

    ``kind``: the request framing's kind ("none", "length", "chunked");
    ``length``: its Content-Length; ``spooled``: the size of the body read
    whole (None: streamed); ``upgrade``: the request asks to switch protocols.
    """
    if upgrade:
        return SKIP
    if spooled is not None:
        return SPOOLED if spooled <= max_body else SKIP
    if kind == "none" or (kind == "length" and not length):
        return NONE
    if kind == "length" and length <= max_body:
        return READ
    return SKIP
