"""One request and its response, from the head read to the access-log line.

The connection loop (``net.http_session``) makes a ``Transaction`` for each
request it reads and hands it along the request stages, forwarding
(``net.forward``), the body pump (``net.relay``) and the cache
(``net.http_cache``).  Everything that belongs to one request lives here,
never on the connection: the stages fill it in request-path order and read
back only what an earlier stage set.  The access record (``rec``) is
written from it, never read back for a decision.
"""

from __future__ import annotations

from forkproxy.logs import AccessRecord


class Transaction:
    """What one request came to have (a plain bag; one per request).

    Set when the head is parsed: ``req`` (canonical target), ``head_size``.
    Routing: ``host_value``, ``host``, ``path``, ``asked_target`` (the
    client's target, which the cache keys), ``rc`` (the route's config).
    Edge rules: ``edge`` (``net.edge.EdgeRequest``), ``target`` (what goes
    upstream, after rewrites), ``hsts``.  Admission of the body:
    ``max_body``, ``spool`` (a body read whole), ``keep`` (the client asked
    to keep the connection).  Balancing and forwarding: ``pool``,
    ``pinned`` and ``token`` (a sticky cookie's server and token),
    ``headers`` and ``out_host`` (the upstream head's fields and Host),
    ``wire`` (that head serialized, ``upstream_http.upstream_head``),
    ``resp_head_size``.  The cache's ``hook`` and ``tee`` see the response
    (``net.http_cache``).  Timings: ``start`` (the head was read),
    ``upstream_start`` (the first upstream attempt).
    """

    # The defaults live on the class, as AccessRecord's do: one transaction
    # is made per request, and it sets only what its request came to have.
    # Those every forwarded request reads before anything sets them are set
    # in __init__ too: an instance's own attribute is read faster than a
    # default on its class (which the interpreter does not specialise).
    req = None  # core.http1.Request, its target canonical
    head_size = resp_head_size = 0  # only small heads' results are remembered
    host_value = host = path = None
    asked_target = target = None
    rc = None  # config.RouteConfig, once routed
    edge = None  # net.edge.EdgeRequest, once routed
    hsts = None  # the route's Strict-Transport-Security value, over TLS only
    pool = None  # net.pools.PoolRuntime, once routed
    max_body = 0
    has_body = False  # the request carries a body (set by the body stage)
    spool = None  # net.spool.Spool: the body read whole (route request_buffering)
    keep = False
    pinned = token = None  # the server a sticky cookie (table) names; its token (Stuck)
    headers = out_host = None
    wire = None  # (Host, the upstream head's bytes): net.upstream_http.upstream_head
    wire_lines = None  # (headers, field lines before and after X-Request-Id): the same
    hook = None  # net.http_cache's hook for the exchange in progress
    tee = None  # the current response's net.http_cache.Tee
    upstream_start = 0.0
    cleanup = None  # what to release when the request ends (a cache lock)

    def __init__(self, rec: AccessRecord, start: float):
        self.rec = rec
        self.start = start
        self.spool = self.cleanup = self.hook = self.headers = self.pinned = self.hsts = None

    def close(self) -> None:
        """Release what the request holds (a spooled body's file, a cache lock)."""
        if self.spool is not None:
            self.spool.close()
            self.spool = None
        if self.cleanup is not None:
            cleanup, self.cleanup = self.cleanup, None
            cleanup()
