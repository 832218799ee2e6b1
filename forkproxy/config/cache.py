"""The ``[cache]`` table: the shared HTTP cache.

Its keys (``SETTINGS``), each declared once, and ``CacheConfig``, made from them.
"""

from __future__ import annotations

from forkproxy.config.parsers import (
    _addrs, _duration, _enum, _int, _networks, _opt_header_name, _r_duration, _r_list,
    _r_networks, _r_size, _size,
)
from forkproxy.config.schema import _RELOAD, Section, Setting, config_classes
from forkproxy.config.units import Invalid, parse_size
from forkproxy.core.cache_slab import HEADER_SIZE, region_size_ok, row_size


def _shared_size(value) -> int:
    n = parse_size(value)
    if n and not region_size_ok(n):
        raise Invalid(f"must be 0 or at least {HEADER_SIZE + row_size()} bytes (one row), got {n}")
    return n

SECTIONS: tuple[Section, ...] = (
    Section(
        "cache",
        "table",
        "[cache]",
        "The shared HTTP cache (RFC 9111, with RFC 9213's CDN-Cache-Control) used by the routes "
        "that set cache = true. "
        "Entries live in memcached, shared by every worker of every forkproxy that names the "
        "same servers, or, with servers = [], in memory shared by every worker of this "
        "forkproxy (shared_size bytes, kept across reloads). "
        "The cache fails open: a memcached that is down, slow or frozen makes requests misses "
        "(sent upstream), never errors. "
        "Only responses to GET are stored, and only when the response allows it "
        "(no no-store, no private, explicit freshness or a validator); "
        "HEAD is answered from a stored GET. "
        "The key is the route's cache namespace (see the route's cache_key), the scheme, "
        "the Host and the request target as the client sent it, with its query, before "
        "strip_prefix, add_prefix and rewrite: a response is only ever served by the route "
        "that stored it (or one sharing its cache_key), whatever the rewrites make of the "
        "target; Vary selects a variant, Accept-Encoding counted as the one coding a miss "
        "asks the origin for (br, gzip or none: \"gzip, deflate\" and \"deflate, gzip\" share "
        "a variant; a miss that may be stored sends that normalised Accept-Encoding upstream). "
        "A response that sets a cookie is not stored (see cache_set_cookie). "
        "Stale entries are revalidated with If-None-Match and If-Modified-Since; "
        "stale-while-revalidate and stale-if-error are honoured: within its stale-if-error "
        "window a stored response, with or without a validator, is served (header STALE, "
        "with its Age) when the origin answers 500, 502, 503 or 504, refuses the connection, "
        "resets it or times out (pool read_timeout), or when no server of the pool is up. "
        "Ranges: a GET with one byte range (bytes=A-B, A- or -N, and an If-Range that holds) "
        "of a stored 200 is answered 206 with Content-Range from the cache, or 416 with "
        "Content-Range: bytes */LENGTH when the range starts past the end; several ranges, "
        "another unit or an If-Range that does not hold get the whole 200 (as nginx does with "
        "several ranges). The part is of the stored representation, never compressed. "
        "A Range request that misses goes upstream without Range and If-Range, the whole "
        "response is stored and the client gets its part (nginx's proxy_cache does the "
        "same); for a URL whose last response could not be stored, or was known to be larger "
        "than max_object_size, the Range goes upstream; a 206 from the origin is passed "
        "through, never stored. "
        "A successful POST, PUT, DELETE or other unsafe method invalidates the URL and its "
        "Location and Content-Location on the same host. "
        "Concurrent misses for one URL send one request upstream; the others wait for it "
        "(up to lock_timeout). "
        "A PURGE request from an address in purge_allowed deletes a URL in every route that "
        "serves it (PURGE /* every URL of the Host, in every route); forkproxyctl purge does "
        "the same through the admin endpoint.",
        cls="CacheConfig",
        doc="""The ``[cache]`` table: the shared HTTP cache of routes with ``cache = true``.

        ``servers`` empty: the embedded store shared by the workers (``shared_size`` bytes;
        0: a per-worker in-process cache of ``memory_size`` bytes).
        ``header`` "" sends no cache-status header; ``cdn_cache_control`` "" obeys
        Cache-Control only.  Times in seconds.
        """,
    ),
)

SETTINGS: tuple[Setting, ...] = (
    Setting("cache", "servers", 'array of "HOST:PORT"', [],
            "memcached servers (keys spread by consistent hashing). "
            "Empty: the embedded store, shared_size bytes of memory shared by every worker of "
            "this forkproxy (see shared_size).",
            _RELOAD, _addrs, _r_list, example=["127.0.0.1:11211"]),
    Setting("cache", "max_object_size", "size", "8m",
            "Largest response body stored. "
            "Bodies larger than one memcached item are stored in chunks. "
            "A larger response is passed through uncached, without being buffered; "
            "one whose Content-Length says so marks its URL hit-for-pass for 10 s (its "
            "requests then go upstream at once, Range included).",
            _RELOAD, _size(1), _r_size),
    Setting("cache", "shared_size", "size", "64m",
            "Bytes of the embedded store used when servers = []: a file in server.runtime_dir "
            "(cache.shm) mapped by every worker, so a hit, a miss that goes upstream (coalescing), "
            "an invalidation and a purge are the same whichever worker takes the request. "
            "It is made empty when forkproxy starts and kept across reloads (remade empty when "
            "a reload changes its size). "
            "Entries are kept in slots of seven sizes, 1 KiB to 64 KiB (their head and "
            "body; larger bodies in 64 KiB chunks), the least recently used of a set of slots "
            "out first; a body larger than a quarter of the 64 KiB slots' bytes (8 MiB "
            "of the default 64m) or than max_object_size is not stored. "
            "A worker killed while it writes leaves no entry half written. "
            "Keep runtime_dir on a memory file system (the default /run is one): elsewhere the "
            "kernel also writes the region's changes to disk. "
            "At least about 2m (one set of slots); "
            "0: each worker keeps its own cache of memory_size bytes instead (hits, coalescing, "
            "invalidations and purges are then per worker).",
            _RELOAD, _shared_size, _r_size),
    Setting("cache", "memory_size", "size", "64m",
            "Bytes of each worker's in-process cache when servers = [] and shared_size = 0. "
            "With the embedded store (shared_size > 0), each worker's copies of entries it "
            "read (at most a quarter of shared_size), each used only while the region's slot "
            "is unchanged, so never older than the store. "
            "With memcached, it holds near copies of entries read from memcached, so a hot URL "
            "costs each worker two memcached round trips a second, not one per hit: a copy is "
            "used for at most 0.5 s, and never after any worker of this forkproxy stored, "
            "deleted or purged its URL (a change made by another forkproxy sharing the servers "
            "is seen within 0.5 s; a host purge within 1 s).",
            _RELOAD, _size(1024), _r_size),
    Setting("cache", "mode", '"direct" or "threadpool"', "direct",
            "How memcached is called: on the worker's event loop, bounded by timeout "
            "(the cheapest hits; a frozen memcached stalls a worker for at most timeout before "
            "the breaker opens), or in a thread pool (the loop never stalls, every call costs "
            "a thread hand-off; for memcached across a slow network).",
            _RELOAD, _enum("mode", ("direct", "threadpool"))),
    Setting("cache", "timeout", "duration", "30ms",
            "Connect, send, receive and poll timeout of every memcached call.",
            _RELOAD, _duration(False), _r_duration),
    Setting("cache", "breaker_failures", "integer 1..1000", 3,
            "memcached errors, timeouts or slow calls (longer than timeout, and than 100ms) "
            "within breaker_window that open the circuit breaker: "
            "the cache is then bypassed (every request a miss, no memcached call) for "
            "breaker_cooldown, after which one probe call decides whether to close it. "
            "One call longer than three timeouts (and than 250ms) opens it at once. "
            "Each opening and closing is logged to server.error_log "
            '("memcached ... breaker open", "... breaker closed").',
            _RELOAD, _int(1, 1000)),
    Setting("cache", "breaker_window", "duration", "10s",
            "Window in which breaker_failures are counted.",
            _RELOAD, _duration(False), _r_duration),
    Setting("cache", "breaker_cooldown", "duration", "2s",
            "How long an open breaker bypasses memcached before probing it again.",
            _RELOAD, _duration(False), _r_duration),
    Setting("cache", "lock_timeout", "duration", "5s",
            "Request coalescing: concurrent misses for one URL, in any worker of any forkproxy "
            "sharing the memcached servers, send one request upstream; the others wait up to "
            "this long for its response to be stored, then go upstream themselves. "
            "Also the lifetime of the lock, should its holder die.",
            _RELOAD, _duration(False), _r_duration),
    Setting("cache", "stale_if_error", "duration", "0s",
            "How long past its freshness a stored response may still be served when the origin "
            "fails (answers 500, 502, 503 or 504, refuses the connection, resets it, times out, "
            "or no server of the pool is up), for responses that name no stale-if-error "
            "themselves (RFC 5861; a request's own stale-if-error still wins): nginx's "
            "proxy_cache_use_stale error timeout http_500 http_502 http_503 http_504, with a "
            "bound. Never for a response with no-cache, must-revalidate, proxy-revalidate or "
            "s-maxage. Entries are kept that much longer past their freshness. "
            '"0s": only what responses and requests say.',
            _RELOAD, _duration(True), _r_duration),
    Setting("cache", "heuristic_max", "duration", "1h",
            "Upper bound of the heuristic freshness (10% of the time since Last-Modified) "
            "given to responses without explicit freshness. "
            '"0s" disables heuristic freshness.',
            _RELOAD, _duration(True), _r_duration),
    Setting("cache", "cdn_cache_control", "header name", "CDN-Cache-Control",
            "Targeted cache-control field (RFC 9213) that overrides Cache-Control and Expires "
            'for forkproxy when present and valid. "" obeys Cache-Control only.',
            _RELOAD, _opt_header_name),
    Setting("cache", "header", "header name", "X-Cache",
            "Response header telling the client how the cache served it: HIT, MISS, STALE, "
            'REVALIDATED or BYPASS. "" sends none. '
            "The access log records the same status.",
            _RELOAD, _opt_header_name),
    Setting("cache", "purge_allowed", "array of addresses or CIDR ranges", [],
            "Clients allowed to send PURGE requests: the client's address as the access "
            "rules see it, the one X-Forwarded-For gives when the connection comes from "
            "server.trusted_proxies, never a trusted proxy's own. "
            "A PURGE from any other address is answered 403; "
            "empty (the default): every PURGE is refused, and purges go through the admin "
            "endpoint (forkproxyctl purge with server.admin and admin_token). "
            "Without the admin endpoint, forkproxyctl purge sends PURGE from 127.0.0.1, which "
            'then needs "127.0.0.1" here. '
            "A PURGE of a URL deletes it in every route that serves it, on any listener. "
            "A purge takes effect at once in every worker of the forkproxy that took it. "
            "In a forkproxy sharing the memcached servers, a purge of a URL takes effect "
            "within 0.5 s (its workers' near copies, see memory_size), and a purge of a whole "
            "host (PURGE /*, forkproxyctl purge --host) within 1 s (each worker keeps the "
            "host's key token for 1 s, to save a memcached round trip per hit).",
            _RELOAD, _networks, _r_networks),
)

CLASSES = config_classes(SECTIONS, SETTINGS, __name__)
CacheConfig = CLASSES["cache"]
