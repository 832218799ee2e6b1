"""Answering from the store: a stored entry (or its 304, 206 or 416) to
one client, through the route's response step (hide_headers,
rewrite_location, response_headers, compress), as a relayed response goes.

``serve`` is ``net.http_cache.Cache.serve`` (the cache is its first
argument): hits, stale answers and revalidated entries all go out here.
"""

from __future__ import annotations

import operator
import time

from forkproxy.core import cache_policy as policy
from forkproxy.core import headers as hdr
from forkproxy.core import http1
from forkproxy.net.cache_filter import Tee
from forkproxy.net.cache_ranges import RangeSlice, span_of
from forkproxy.net.cache_store import CacheError
from forkproxy.net.relay import Abort, Discard, pump
from forkproxy.net.response import encoder_for, framing_fields_out

_LENGTH = frozenset({"content-length"})
_NAME = operator.itemgetter(0)
_ASKING = policy.CLIENT_CONDITIONS | {"range"}  # request fields a hit may answer other than 200


def serve(cache, s, tx, entry: policy.Entry, reader, status: str, keep: bool,
          writer=None) -> bool:
    """Send ``entry`` (or a 304 when the client's conditions hold) to the client.

    The stored head is the origin's; on the way out it goes through the
    same response step as a relayed response: the route's hide_headers,
    rewrite_location and response_headers (``EdgeRequest.downstream``),
    then its ``compress`` (``response.encoder_for``), through the body
    pump (``relay.pump``).  With ``writer``, the (origin's) body is also
    written to it through a ``Tee`` (a 304 merged into a stored entry
    re-stores it under the new head) and committed at its end.
    """
    req, rec = tx.req, tx.rec
    keep = keep and not s.draining
    head, code, body, keep, encoder, chunk_out, span = _head(cache, s, tx, entry, reader,
                                                                  status, keep, time.time())
    rec.status, rec.cache = code, status
    send_body = body and req.method != "HEAD" and (span is None or span.size > 0)
    if writer is None:
        if not send_body:
            s._send(head)
            return keep
        whole = reader.whole
        if whole is not None and encoder is None:  # a small body as it is: one send
            s._send(head + (whole if span is None else whole[span.start:span.end + 1]))
            return keep
    tee = Tee(writer=writer) if writer is not None else None
    # HEAD, 416: the body only goes to the writer; a 206: only its part to the client
    last = (encoder if span is None else RangeSlice(span)) if send_body else Discard
    sent = s.sent
    try:
        pump(s, head, _stored(reader), [f for f in (tee, last) if f is not None],
             chunk_out and send_body, flush=False)
    except CacheError as exc:
        if tee is not None:
            tee.abort()
        if s.sent == sent or not send_body:  # nothing of the body went out yet
            cache.log.warning("cache: stored body unreadable (%s); dropping the client", exc)
        raise Abort() from None
    return keep

def _head(cache, s, tx, entry: policy.Entry, reader, status: str, keep: bool,
          now: float) -> tuple:
    """(head bytes, status code, has a body, keep, encoder or None, chunked,
    the part sent: None for the whole, else a 206's or 416's
    ``cache_policy.Span``/``Unsatisfiable``) of the answer ``serve`` sends.

    Without response_headers (which may use per-request variables) and
    compress (which reads the request's Accept-Encoding), the head is a
    function of the entry, its Age and body length, the route's rules, the
    scheme, Host and pool, the cache status, HSTS, keep-alive and the HTTP
    version; hits on a hot entry ask for the same one all second long, so
    the last one made is remembered on the Entry object (one slot).
    """
    req, er, rc = tx.req, tx.edge, tx.rc
    asking = not _ASKING.isdisjoint(map(_NAME, req.headers))
    length, span = reader.length, None
    if asking and policy.client_not_modified(entry, req.headers, req.method):
        code, reason, body = 304, "Not Modified", False
        out = hdr.response_headers_for_client(policy.not_modified_headers(entry, now),
                                              also=_LENGTH)
        key = None
    else:
        span = span_of(req, entry, length) if asking else None
        code, reason = (entry.status, entry.reason) if span is None else \
            (span.status, span.reason)
        body = code not in (204, 304) and code >= 200
        age = _age(entry, now)
        rules = er.rules if er is not None else None
        if span is None and (rules is None or rules.resp_rules is None) and (
                rc is None or rc.compress is None):
            key = (age, reader.length, rules, s.proto, er.host_value if er is not None else None,
                   tx.pool.name if tx.pool is not None else None, status, tx.hsts, keep,
                   req.version)
            memo = entry.__dict__.get("_head")
            if memo is not None and memo[0] == key:
                return memo[1]
        else:
            key = None
        out = _client_fields(entry, age)
        if span is not None:
            out.append(("Content-Range", span.content_range))
            length = span.size
    if er is not None:  # hide_headers, rewrite_location, response_headers
        out = er.downstream(out, "", _servers(tx) if er.rules.rewrite_location
                            else None)
    if cache.header:
        out.append((cache.header, status))
    if tx.hsts is not None:
        out.append(("Strict-Transport-Security", tx.hsts))
    encoder = None
    if body:
        out, encoder = encoder_for(tx, code, entry.headers, out, length)
    keep, chunk_out = framing_fields_out(out, req.version, keep, encoder,
                                         "length" if body else "none", length,
                                         keep_alive=s.rt.keep_alive)
    got = (http1.serialize_response_head(code, reason, out), code, body, keep, encoder,
           chunk_out, span)
    if key is not None:
        entry.__dict__["_head"] = (key, got)  # frozen dataclass: not via setattr
    return got

def _servers(tx) -> tuple:
    """The addresses of the pool a stored response came from (rewrite_location)."""
    pool = tx.pool
    return tuple(srv.addr for srv in pool.servers) if pool is not None else ()


def _stored(reader):
    """The batches of a stored body (``relay.pump``): one per chunk as read."""
    for chunk in reader:
        yield (chunk,), False
    yield (), True


def _age(entry: policy.Entry, now: float) -> int:
    """``policy.age_value``, inline (every hit): the memo key needs the number only."""
    age = int(entry.initial_age + (now - entry.response_time))
    if not 0 <= age <= policy.DELTA_MAX:
        age = 0 if age < 0 else policy.DELTA_MAX
    return age


def _client_fields(entry: policy.Entry, age: int) -> list:
    """``entry.served_headers`` as a client gets them, with its ``age``:
    through ``response_headers_for_client`` (Via last, Content-Length out:
    ``serve`` frames the body itself).  The stored fields' part is the same
    for every hit on this Entry, Age is not: it is worked out once per Entry
    object, as the entry's own facts are (core.cache_policy)."""
    fields = entry.__dict__.get("_client_fields")
    if fields is None:
        fields = tuple(hdr.response_headers_for_client(entry.served_headers, also=_LENGTH))
        entry.__dict__["_client_fields"] = fields  # frozen dataclass: not via setattr
    out = list(fields[:-1])
    out.append(("age", str(age)))
    out.append(fields[-1])  # Via
    return out
