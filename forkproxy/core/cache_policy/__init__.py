"""RFC 9111 shared-cache policy, sans-IO.

CONTRACT (consumed by ``forkproxy.net.http_cache`` and ``net.cache_filter``; keep it):

Everything here is pure.  Times are float epoch seconds passed in by the
caller; headers are lists of ``(lower-case name, value)`` str pairs, in order,
repeats kept, exactly as ``forkproxy.core.http1.heads`` produces them.  Nothing here
raises on what a client or an origin sends: bad input degrades to "do not
store", "stale" or "miss", never to an exception.

Flow for the shell:

1. Request in.  ``primary_key(scheme, host, target)`` names the URL; the store
   keeps, per primary key, the variants (``Entry``) and picks the one whose
   ``entry.secondary_key == vary_key(entry.vary_fields, request_headers)``
   (``decide`` checks it again).  Both keys are readable strings: hash them
   (e.g. sha256) before using them as memcached keys.
2. ``decide(entry_or_None, method, req_headers, now, ...) -> Decision``:
   ``FRESH`` serve it (``client_not_modified`` -> answer 304 with
   ``not_modified_headers``, else ``serve_headers``; no body for HEAD);
   ``STALE_OK`` serve it, and when ``decision.background_refresh`` also
   refresh it with a conditional GET carrying ``decision.conditional_headers``;
   ``REVALIDATE`` forward with ``decision.conditional_headers`` added, then a
   304 (and ``can_freshen``) -> ``merge_304`` + store + serve, a 5xx or a
   connection error -> ``stale_if_error_ok`` decides whether the stale entry
   is served instead; ``MISS`` forward as is (an entry there, stale and
   without a validator, may still be served on an error the same way);
   ``GATEWAY_TIMEOUT`` answer 504 (``only-if-cached`` and nothing usable).
   Whatever entry is served, ``select_range`` says which part of it a Range
   request gets (206, 416 or the whole).
3. Response in.  ``storable(...)`` -> ``make_entry(...)`` -> store the head
   (``entry.to_bytes()``) and the body.  For any method, ``invalidations(...)``
   lists primary keys to delete (all variants).

Choices (RFC 9111 leaves them to the cache):

- Only responses to GET are stored; HEAD is answered from a stored GET.
  206 (no range assembly) and 304 (not a complete response) are not stored;
  one byte range of a stored 200 is served from it (``ranges``).
  A response with neither explicit freshness nor a validator is not stored
  (it could never be reused).  Heuristic freshness (RFC 9111 4.2.2) is 10% of
  ``Date - Last-Modified`` capped by ``heuristic_max``, only for heuristically
  cacheable statuses (or with ``public``).
- Cache-Control parsing is lenient (RFC 9111 5.2): directive names are
  case-insensitive, arguments may be tokens or quoted strings, the first
  occurrence of a directive wins, unknown directives are kept in
  ``Directives.extensions`` and otherwise ignored.  An invalid delta-seconds
  is treated conservatively: ``max-age``/``s-maxage`` (response or request)
  become 0 (stale, RFC 9111 4.2.1); the permissive ``max-stale`` (with a bad
  argument), ``stale-while-revalidate``, ``stale-if-error`` and the
  ``min-fresh`` request directive are dropped.  Values above 2**31 are
  clamped to 2**31 (RFC 9111 1.2.2).  The qualified form of ``no-cache``
  (with field names) is treated as unqualified.  The qualified form of
  ``private`` (``private="Set-Cookie"``, RFC 9111 5.2.2.7) lists fields a
  shared cache must not store: the response is stored without them
  (``Directives.private_fields``); every ``private`` counts, not only the
  first, and an unqualified one, or one whose argument is not a list of
  field names, means "do not store" as before.
- Set-Cookie (nginx's and Varnish's default): a response carrying one is not
  stored, unless the route says ``set_cookie="strip"`` (stored without it) or
  the response itself says ``private="Set-Cookie"``.  A stored entry never
  holds a Set-Cookie (``make_entry``, ``merge_304``): one client's cookie is
  never handed to another.
- Targeted fields (RFC 9213): ``cdn_header`` names the field(s) forkproxy
  obeys, in priority order (a str or a tuple of str; ``()`` disables).  The
  first one present and valid (an RFC 8941 dictionary) replaces
  Cache-Control *and* Expires for every response-side decision.  An invalid
  one is ignored.  A directive with a value of the wrong type is treated as
  above (invalid max-age -> 0, others dropped).
- A request ``Pragma: no-cache`` counts as ``Cache-Control: no-cache`` only
  when the request has no Cache-Control (RFC 9111 5.4, RFC 7234 compat).
- A request ``stale-if-error`` overrides the response's; otherwise the
  response's applies (RFC 5861 4).
- On a 304 without Date, Date is set to the 304's response time; a stored
  Age the 304 does not repeat is dropped (it described the old response).

Modules, each holding one part of the above:

- ``directives``: ``Directives``, ``parse_cache_control``,
  ``parse_cdn_cache_control`` (over ``structured_fields``, RFC 8941),
  ``response_directives``; ``DEFAULT_CDN_HEADER``, ``DELTA_MAX``;
- ``dates``: ``parse_http_date``, ``format_http_date``;
- ``keys``: ``primary_key``;  ``vary``: ``vary_key``, ``normalize_accept_encoding``;
- ``ranges``: ``select_range`` (``parse_range``, ``if_range_holds``), ``Span``,
  ``Unsatisfiable``: the part of a stored 200 a Range request gets;
- ``storability``: ``storable``, ``not_storable_reason``, ``SET_COOKIE_MODES``;
- ``entry``: ``Entry`` (and its byte format), ``make_entry``,
  ``conditional_headers``;
- ``freshness``: ``freshness_lifetime``, ``current_age``, ``age_value``,
  ``HEURISTIC_STATUSES``;
- ``decision``: ``Action``, ``Decision``, ``decide``, ``plain_lifetime``,
  ``stale_if_error_ok``, ``ERROR_STATUSES``, ``serve_headers``, ``not_modified_headers``;
- ``validation``: ``can_freshen``, ``merge_304``, ``client_not_modified``,
  ``CLIENT_CONDITIONS``;
- ``invalidation``: ``invalidations``;
- ``fields``: the header-list readers the others share.

Names starting with ``_`` are shared between these modules only.  Import a
name from the module that holds it.
"""

# The package's face for forkproxy.net, which reads ``cache_policy.<name>``:
# the same objects as in the modules above.
from .dates import format_http_date, parse_http_date  # noqa: F401
from .decision import (ERROR_STATUSES, Action, Decision, decide,  # noqa: F401
                       not_modified_headers, plain_lifetime, serve_headers, stale_if_error_ok)
from .directives import (DEFAULT_CDN_HEADER, DELTA_MAX, Directives,  # noqa: F401
                         parse_cache_control, parse_cdn_cache_control, response_directives)
from .entry import Entry, conditional_headers, make_entry  # noqa: F401
from .freshness import HEURISTIC_STATUSES, age_value, current_age, freshness_lifetime  # noqa: F401
from .invalidation import invalidations  # noqa: F401
from .keys import primary_key  # noqa: F401
from .ranges import Span, Unsatisfiable, if_range_holds, parse_range, select_range  # noqa: F401
from .storability import SET_COOKIE_MODES, not_storable_reason, storable  # noqa: F401
from .validation import CLIENT_CONDITIONS, can_freshen, client_not_modified, merge_304  # noqa: F401
from .vary import normalize_accept_encoding, vary_key  # noqa: F401
