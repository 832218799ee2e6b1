"""The cache's part in a forwarded exchange: the response hook and the body tee.

``net.http_cache.Cache.lookup`` puts a ``Hook`` on the transaction
(``tx.hook``) when the request goes upstream; the forwarding stage and
``net.forward`` call it (see ``net.http_cache``'s contract):

- ``Hook.upstream_fields``: a revalidation's validators replace the
  client's conditions in the head sent upstream; a cacheable GET asks for
  the whole (no Range) with its normalised Accept-Encoding
  (``net.cache_ranges``);
- ``Hook.on_response``: an unsafe request's success invalidates the URL; a
  304 merges into the stale entry, an error may serve it (stale-if-error);
  otherwise the response gets a ``Tee`` (store-on-miss) that the body pump
  (``net.relay``) writes the origin's body into and commits at a clean end
  (a ``RangeTee`` when the client asked for a part of it);
- ``Hook.on_refuse``: stale-if-error when forkproxy itself would answer 5xx;
- ``Hook.done``: the exchange ended (a body not committed is dropped).

``Background`` is the downstream of a background revalidation: the
forwarding stage runs for it with no client and no socket.
"""

from __future__ import annotations

import time

from forkproxy.core import cache_policy as policy
from forkproxy.net import cache_ranges
from forkproxy.net.sockio import Timers

CONDITIONAL_FIELDS = frozenset({"if-none-match", "if-modified-since", "if-match",
                                "if-unmodified-since", "if-range"})


class Tee:
    """What the forwarding does with one upstream response (``net.http_cache``'s
    contract): ``served`` (the cache answered), or a response filter that
    writes the origin's body into the store (store-on-miss)."""

    served = False
    keep = False
    view = None  # (response, framing) the client's head is made of, when not the origin's

    def __init__(self, headers=(), writer=None):
        self.headers = list(headers)
        self.writer = writer

    def write(self, data) -> None:
        if self.writer is not None and not self.writer.write(bytes(data)):
            self.writer = None  # too large or a cache error: pass the rest through

    def commit(self) -> None:
        w, self.writer = self.writer, None
        if w is not None:
            w.commit()

    # The response filter contract (net.relay.pump): the origin's bytes pass
    # through unchanged; the body's clean end commits the copy.
    def on_data(self, data) -> bytes:
        self.write(data)
        return data

    @staticmethod
    def on_flush() -> bytes:
        return b""

    def on_end(self) -> bytes:
        self.commit()
        return b""

    def abort(self) -> None:
        w, self.writer = self.writer, None
        if w is not None:
            w.abort()


class RangeTee(Tee):
    """A miss's ``Tee`` that stores the origin's whole 200 and lets only the
    client's part (``span``) through; ``net.forward`` makes the client's head
    of ``view`` (a 206 or 416)."""

    def __init__(self, headers, writer, resp, span):
        super().__init__(headers, writer)
        self.view = cache_ranges.client_view(resp, span)
        self.part = cache_ranges.RangeSlice(span)

    def on_data(self, data) -> bytes:
        self.write(data)
        return self.part.on_data(data)


class Served(Tee):
    served = True

    def __init__(self, keep: bool):
        super().__init__()
        self.keep = keep


class Background:
    """Where a background refresh (stale-while-revalidate) sends its response:
    nowhere.  It stands for the connection loop's session in the balancing
    and forwarding stages (``net.stages``: the runtime, a peer, the scheme,
    timers, ``_send``, ``refuse``), with no client and no socket: the
    refreshed response only goes into the store."""

    tls_version = None
    buf = b""
    live = True
    mirrored = False  # a refresh is no client's request: never mirrored
    sent = 0

    def __init__(self, rt, proto: str):
        self.rt = rt
        self.peer = "127.0.0.1"
        self.proto = proto
        self.timers = Timers()

    @property
    def draining(self) -> bool:
        return self.rt.draining

    def _send(self, data) -> None:
        pass

    def refuse(self, tx, status: int, why: str, *, fields=()) -> None:
        rec = tx.rec
        rec.why = why
        if status >= 500 and tx.hook is not None and tx.hook.on_refuse(tx, status):
            return
        rec.status = status


class Hook:
    """``tx.hook`` for one exchange: stores the response, or serves the stale
    entry on a 304 or an error (see the module contract).  ``stale``: the
    stored (entry, reader) the request could not use as it is, served when
    the origin fails and stale-if-error allows (validators or not).
    ``whole``: a GET that may be stored asks upstream for the whole (False
    for a URL marked hit-for-pass: its Range goes upstream)."""

    def __init__(self, cache, s, tx, key: str | None, stale=None, invalidate=None,
                 validators=None, whole=True):
        self.cache, self.s, self.tx = cache, s, tx
        self.key, self.stale = key, stale
        self.may_store = key is not None and tx.req.method == "GET"
        self.whole = whole and self.may_store
        # (namespace, scheme, host, client's target) of an unsafe request
        self.invalidate = invalidate
        self.validators = validators  # a revalidation's conditional fields
        self.request_time = time.time()
        self.resp = None
        self.tee: Tee | None = None

    def on_response(self, resp, rframing) -> Tee:
        c, tx, now = self.cache, self.tx, time.time()
        req, rec = tx.req, tx.rec
        self.resp = resp
        if self.invalidate is not None:
            # Before the response goes out: the client's next request must miss.
            ns, *url = self.invalidate
            for p in policy.invalidations(req.method, resp.status, *url, resp.headers):
                c.invalidate_serving(self.s.rt, tx.host, p, ns)
        if self.stale is not None:
            entry, reader = self.stale
            if resp.status == 304 and policy.can_freshen(entry, resp.headers):
                new = policy.merge_304(entry, resp.headers, self.request_time, now,
                                       cdn_header=c.cdn)
                writer = c.begin(self.key, new, req.headers) if self.key else None
                c.serve(self.s, tx, new, reader, "REVALIDATED", tx.keep, writer)
                return Served(tx.keep)
            if resp.status in policy.ERROR_STATUSES and policy.stale_if_error_ok(
                    entry, now, req.headers, heuristic_max=c.hmax, cdn_header=c.cdn,
                    default=c.sie):
                c.serve(self.s, tx, entry, reader, "STALE", tx.keep)
                return Served(tx.keep)
        status = rec.cache or "MISS"
        rec.cache = status
        extra = [(c.header, status)] if c.header else []
        writer = None
        if self.may_store and resp.status not in (206, 304):
            if policy.storable("GET", resp.status, req.headers, resp.headers, cdn_header=c.cdn,
                               set_cookie=tx.rc.cache_set_cookie) and not (
                    rframing.kind == "length" and rframing.length > c.cfg.max_object_size):
                entry = policy.make_entry(resp.status, resp.reason, req.headers, resp.headers,
                                          self.request_time, now, cdn_header=c.cdn)
                writer = c.begin(self.key, entry, req.headers)
            else:  # hit-for-pass: not storable, or known too large before its body
                c.mark_pass(self.key)
        span = cache_ranges.miss_span(req, resp, rframing) if self.whole else None
        self.tee = Tee(extra, writer) if span is None else RangeTee(extra, writer, resp, span)
        return self.tee

    def upstream_fields(self, headers) -> list:
        """The upstream head's fields for this exchange: a GET that may be
        stored sends the normalised Accept-Encoding of its variant key and
        asks for the whole (unless hit-for-pass); a revalidation's validators
        replace the client's conditions."""
        if self.may_store:
            headers = cache_ranges.upstream_fields(headers, self.whole)
        return headers if self.validators is None else conditional(headers, self.validators)

    def done(self) -> None:
        """The exchange ended: a body not stored by now never will be."""
        if self.tee is not None:
            self.tee.abort()  # no-op once committed

    def on_refuse(self, tx, status: int) -> bool:
        if self.stale is None:
            return False
        entry, reader = self.stale
        c = self.cache
        if not policy.stale_if_error_ok(entry, time.time(), tx.req.headers,
                                        heuristic_max=c.hmax, cdn_header=c.cdn, default=c.sie):
            return False
        c.serve(self.s, tx, entry, reader, "STALE", False)
        return True



def conditional(headers, validators) -> list:
    """The upstream headers with the client's conditions replaced by the cache's validators."""
    out = [(n, v) for n, v in headers if n.lower() not in CONDITIONAL_FIELDS]
    out.extend(validators)
    return out
