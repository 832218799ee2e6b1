"""``[[route]]`` tables and their sub-tables: the edge rules (``deny``,
``rate_limit``, ``rewrite``, ``redirect``, ``request_headers``,
``response_headers``), ``compress`` and ``mirror``.

Their keys, each declared once, the dataclasses made from them, and the
builders that check a table's keys together with the code that runs them.
"""

from __future__ import annotations

from forkproxy.config.parsers import (
    _access_list, _bool, _cookie_name, _duration, _enum, _error_pages, _header_names, _header_table,
    _header_value, _hsts, _int, _listener_names, _media_types, _methods, _methods_or_none, _name,
    _nonempty_str, _prefix, _protocol_names, _r_duration, _r_error_pages, _r_list,
    _r_opt_duration, _r_opt_list, _r_size, _r_table, _rate, _rate_key, _regex, _route_host,
    _rule_path, _set_cookie_mode, _size, _split_by, _str,
)
from forkproxy.config.schema import (
    _RELOAD, LAST, REQUIRED, Derived, Path, Section, Setting, config_classes, copied,
)
from forkproxy.core.access import DenyRule
from forkproxy.core.rewrite import HeaderRules, compile_rewrites
from forkproxy.core.split import Split

DEFAULT_COMPRESS_TYPES = (
    "text/html", "text/css", "text/plain", "text/xml", "text/javascript",
    "application/javascript", "application/json", "application/xml", "image/svg+xml",
)

SECTIONS: tuple[Section, ...] = (
    Section(
        "route",
        "array",
        "[[route]]",
        "Routes send each request to a pool. "
        "They are tried in file order and the first whose every condition holds wins. "
        "A route without host, path or listener conditions matches every request. "
        "A request that no route matches is answered 404.",
        cls="RouteConfig",
        doc="""One ``[[route]]``; ``index`` is its position in the file (0-based).

        ``pool`` (one pool) or ``pools`` (a weighted split, ``split`` its
        ``core.split.Split``; None for one pool).  ``timeouts``: the route's
        (connect_timeout, send_timeout, read_timeout), each None for the
        pool's; None when the route overrides none.
        """,
        derived=(Derived("index"), Derived("split", after=LAST, default=None),
                 Derived("timeouts", after=LAST, default=None)),
        one_of=("pool", "pools"),
    ),
    Section(
        "route.pools",
        "array",
        "pools = [{ ... }]",
        "A weighted split of the route's requests across pools, for canaries and blue/green "
        'deployments, as an array of inline tables such as [{ pool = "v1", weight = 95 }, '
        '{ pool = "v2", weight = 5 }], instead of pool (a route has exactly one of the two). '
        "Each pool gets its weight's share of the requests; weight 0 takes a pool out "
        "of the split without removing it from the file. "
        "Without split_by each request draws its pool at random, by weight; with it, each "
        "client's key is hashed onto the weights (weighted rendezvous hashing, over BLAKE2b "
        "seeded by the pools' names), so a client stays on its pool as long as the weights do, in "
        "every worker and across reloads and restarts, and raising a pool's weight moves "
        "clients only to that pool (lowering it, only from it), about as many as its "
        "share changed. "
        "Each pool keeps its own balancing, health checks, sticky cookie, retry and queue "
        "(pools with sticky cookies want split_by: a client the split moves to another "
        "pool gets that pool's cookie); "
        "the access log's pool field, the metrics' pool label and forkproxyctl explain "
        "name the pool a request took. "
        "As nginx's split_clients (with a proxy_pass to a variable), HAProxy's use_backend "
        "on a random draw or a stick table, Envoy's weighted_clusters, Traefik's "
        "weighted services. "
        "On a cached route both pools' responses share the route's cache entries.",
        cls="SplitEntry",
        doc="""One entry of a route's ``pools = [{ pool, weight }]``.""",
    ),
    Section(
        "route.deny",
        "array",
        "deny = [{ ... }]",
        "Requests the route refuses, as an array of inline tables such as "
        '[{ path = "/admin/" }, { header = "X-Debug", status = 404 }, '
        '{ query_regex = "(^|&)debug=", methods = ["GET"] }]. '
        "Every condition a rule gives must hold; the first rule that holds answers its "
        "status (403 by default) and nothing goes upstream. "
        "They run after access and methods, and before rate_limit. "
        "Path and query are matched as received, before any rewrite. "
        "Regular expressions are searched (anchor them yourself) with RE2, which matches in "
        "time linear in the input whatever the pattern, and are compiled when the file is "
        "loaded. RE2's syntax is Python's without backreferences, lookaround, conditionals, "
        "atomic groups, possessive quantifiers and (?x); write \\z for \\Z; repetition "
        "counts go up to 1000; \\d, \\w, \\s and \\b are ASCII-only; {,n} is literal "
        "(write {0,n}). forkproxy -t refuses what RE2 cannot compile and says why.",
        cls="DenyConfig",
        doc="""One ``deny = [{ ... }]`` rule of a route (see ``core.access.DenyRule``).""",
    ),
    Section(
        "route.rate_limit",
        "table",
        "rate_limit = { ... }",
        "A token bucket per key, as an inline table such as "
        '{ key = "ip", rate = "100r/s", burst = 50 } (nginx\'s limit_req with burst and '
        "nodelay). "
        "A full bucket admits burst requests at once, then one every 1/rate seconds; a "
        "request over the limit is answered 429 with Retry-After (whole seconds, rounded "
        "up) and nothing goes upstream. "
        "The buckets live in shared memory, so the limit holds whichever worker serves "
        "the request (up to one request per worker above it when several workers admit "
        "the same key in the same instant). "
        "Memory is bounded: each worker tracks up to keys keys and forgets the least "
        "recently seen one first. "
        "A reload starts every bucket full again.",
        optional=True,
        cls="RateLimitConfig",
        doc="""``rate_limit = { ... }``: ``rate`` as written ("100r/s"); ``key`` "ip" or "header:NAME".""",
    ),
    Section(
        "route.rewrite",
        "array",
        "rewrite = [{ ... }]",
        "URL rewrites, as an array of inline tables such as "
        '[{ from = "^/old/(.*)", to = "/new/$1" }], with nginx\'s rewrite semantics: '
        "when the regular expression from is found in the path, the whole path becomes to, "
        "expanded. "
        "Every rule is tried, in order, after strip_prefix and add_prefix, each on the "
        "result of the previous one. "
        'In to, $1..$9 are the groups of from, ${name} or $name a named group or a variable '
        "($remote_addr, $request_id, $route, $host, $scheme, $request_uri, $uri, $args, "
        "$is_args), and $$ a dollar sign; $request_uri and $uri carry the canonical path "
        "(see server.merge_slashes), and a rewritten path is made canonical again. "
        'to must start with "/"; a "?" in it starts a new query that replaces the '
        'request\'s ("/x?" drops it, "/x?a=1&$args" keeps it after a=1); without one the '
        "query is kept. "
        "Regular expressions are checked as in deny.",
        cls="RewriteRule",
        doc="""One ``rewrite = [{ from, to }]`` rule; ``pattern`` is the TOML key ``from``.""",
    ),
    Section(
        "route.redirect",
        "table",
        "redirect = { ... }",
        "Answer every request of the route with a redirect, as an inline table such as "
        '{ to = "https://www.example.com$request_uri", status = 301 }. '
        "forkproxy answers itself; nothing goes upstream. "
        "to is expanded as in rewrite, after the rewrite steps ($uri and $args are the "
        "rewritten path and query). "
        "A Location that would start with // or /\\ (another host, to a browser) keeps one "
        "slash: GET //evil.example with to = \"$uri/\" is sent to /evil.example/.",
        optional=True,
        cls="RedirectConfig",
        doc="""``redirect = { ... }``: answer the route's requests with a redirect to ``to``.""",
    ),
    Section(
        "route.request_headers",
        "table",
        "request_headers = { ... }",
        "Header rules for the request sent upstream, as an inline table such as "
        '{ set = { X-Env = "prod" }, add = { X-Client = "$remote_addr" }, remove = ["Cookie"] }. '
        "Fields named in remove or set are removed, then the set fields are added, then "
        "the add fields (a second value even when the field exists). "
        "Values may use $remote_addr (the real client address), $request_id, $route (the "
        "route's index), $host, $scheme and $upstream_addr (the server chosen; empty in "
        "requests). "
        "A field whose value expands to nothing, or to control characters, is left out. "
        "Framing and hop-by-hop fields cannot be changed; Host can only be set (as "
        "host_header does).",
        optional=True,
        cls="HeaderRulesConfig",
        doc="""``request_headers`` / ``response_headers``: ``set`` and ``add`` as (name, template) pairs.""",
    ),
    Section(
        "route.response_headers",
        "table",
        "response_headers = { ... }",
        "Header rules for the response sent to the client, as request_headers. "
        "They run after hide_headers and rewrite_location.",
        optional=True,
        cls="HeaderRulesConfig",
        doc="""``request_headers`` / ``response_headers``: ``set`` and ``add`` as (name, template) pairs.""",
    ),
    Section(
        "route.compress",
        "table",
        "compress = { ... }",
        "Compress responses of the route on the fly, as an inline table such as "
        '{ types = ["text/html", "application/json"], min_size = "1k", level = 6 } '
        "(an empty table { } takes the defaults). "
        "The coding is chosen from the client's Accept-Encoding, q-values included: "
        "br (brotli, when the Python brotli package is installed) or gzip, brotli first "
        "on a tie. "
        "Bodies are compressed as they stream (never buffered whole) and sent chunked "
        "(to HTTP/1.0 clients: until the connection closes), with Content-Encoding, "
        "a weakened ETag (W/) and without Accept-Ranges. "
        "Every response that could be compressed gets Vary: Accept-Encoding, also when "
        "this client gets it uncompressed. "
        "Left as they are: responses that already have a Content-Encoding, whose type is "
        "not in types, whose Content-Length is below min_size, with "
        "Cache-Control: no-transform, 204, 206 and 304 responses, and answers to HEAD. "
        "Compression is the last step before the client: on a route with cache the cache "
        "stores the representation the server sent, never a compressed copy of ours.",
        optional=True,
        cls="CompressConfig",
        doc="""A route's ``compress = { ... }``: on-the-fly response compression.

        ``types``: media types (``text/*`` and ``*`` allowed), lower case;
        ``min_size`` in bytes (a known Content-Length below it is sent as it is);
        ``level`` 1..9 (gzip's scale; mapped for brotli by ``net.compress``).
        """,
    ),
    Section(
        "route.mirror",
        "table",
        "mirror = { ... }",
        "Shadow traffic: a copy of the route's requests goes to another pool and its answer "
        'is thrown away, as an inline table such as { pool = "canary", percent = 10 } '
        "(nginx's mirror, Envoy's request_mirror_policies; HAProxy and Caddy have none). "
        "The client gets the route's own pool's answer, never the mirror's, and the copy "
        "costs the real request no wait: it is sent by one of the route's own greenlets "
        "(at most queue in each worker, kept for its life) once the real request waits "
        "on its server, each worker has at most queue copies in flight (a copy over it "
        "is dropped, not queued), and it has its own time limit. "
        "A copy's share of the workers' CPU is a second exchange; one that cannot be "
        "sent (no server of the mirror pool up) costs next to nothing: it is counted "
        "failed at once. "
        "Each request is drawn at random (percent of them, independently in each worker). "
        "Only requests that go to the route's pool are mirrored: those forkproxy answers "
        "itself (refusals, redirects, cache hits, background refreshes) are not, unlike "
        "nginx, whose mirror runs before its cache. "
        "The copy carries the same head as the request sent to the route's pool "
        "(rewritten target, X-Forwarded-For, X-Request-Id, request_headers...), plus "
        "X-Forkproxy-Mirror: 1; the Host stays the same (Envoy "
        'appends "-shadow" to it instead; nginx marks nothing). '
        "It goes on one of the mirror pool's keep-alive connections (or a new one), and "
        "its whole answer is read and thrown away. "
        "Bodies: nginx's mirror_request_body reads the whole body before mirroring; "
        "here only bodies up to max_body are mirrored: a body read whole "
        "(request_buffering) is copied from where it was kept; a streamed body "
        "(request_buffering = false) with a Content-Length up to max_body is read whole "
        "before the real request is sent (as nginx does) and copied; a larger one, or a "
        "streamed chunked one, is not mirrored (counted as skipped). "
        "Requests that ask to upgrade (WebSocket) are never mirrored. "
        "The mirror pool's servers are chosen by its own balancer and health; a server "
        "that takes no connection (refused, connect timeout) counts as a passive failure "
        "of the mirror pool (its max_fails and fail_timeout, so that a dead mirror is "
        "skipped cheaply; a pool of one server is taken out only with "
        "max_ejection_percent = 100, or by its active health checks); nothing of a copy is ever charged to the route's pool, and a "
        "copy is never retried. "
        "Nothing of the copy goes in the access log (a debug line in the error log); "
        "forkproxy_mirror_total{route,result} counts sent (an answer came), failed (no "
        "server, connection error, no answer within timeout), dropped (the queue was "
        "full) and skipped (the body could not be mirrored) copies. "
        "forkproxyctl explain says when a route mirrors.",
        optional=True,
        cls="MirrorConfig",
        doc="""A route's ``mirror = { ... }``: shadow traffic to ``pool`` (``net.mirror``).

        ``percent`` 0..100 of the requests; ``queue``: copies in flight per
        worker; ``max_body`` in bytes; ``timeout`` in seconds.
        """,
    ),
)

SETTINGS: tuple[Setting, ...] = (
    Setting("route", "pool", "pool name", None,
            "The pool that serves the requests this route matches. It must exist. "
            "A route has exactly one of pool and pools.",
            _RELOAD, _str, example="web"),
    Setting("route", "listener", "listener name or array of names", [],
            "Match only requests that arrived on one of these listeners. "
            "Empty: any listener.",
            _RELOAD, _listener_names, _r_list, example=["web"]),
    Setting("route", "host", "host name", None,
            'Match only this Host, exactly, or any subdomain with "*.example.com" '
            "(not example.com itself). "
            "Compared without case and without port.",
            _RELOAD, _route_host, example="shop.example.com"),
    Setting("route", "path", "path prefix", None,
            'Match only paths starting with this prefix, which must start with "/". '
            'Write "/api/" to match /api/x but not /apix. '
            "Exclusive with path_regex. "
            "Compared with the canonical path (see server.merge_slashes).",
            _RELOAD, _rule_path, example="/api/"),
    Setting("route", "path_regex", "regular expression", None,
            "Match only paths where this regular expression (RE2, as in route.deny) is found. "
            'Anchor it with "^" yourself. '
            "Exclusive with path. "
            "The path is the canonical one (see server.merge_slashes): no dot segments, "
            "escapes of other than unreserved characters in uppercase hex.",
            _RELOAD, _regex, example="^/(img|css)/"),
    Setting("route", "host_header", "host name", None,
            "Host header sent upstream instead of the client's.",
            _RELOAD, _header_value, example="backend.internal"),
    Setting("route", "max_body_size", "size", None,
            "Overrides server.max_body_size for this route.",
            _RELOAD, _size(0), _r_size, example="1g"),
    Setting("route", "access", 'array of "allow CIDR" and "deny CIDR"', None,
            "Overrides server.access for this route ([] allows every address).",
            _RELOAD, _access_list, _r_opt_list, example=["allow 192.0.2.0/24", "deny all"]),
    Setting("route", "methods", "array of method names", None,
            "The only methods the route accepts; any other is answered 405 with an Allow "
            "header. Allowing GET allows HEAD. Unset: every method.",
            _RELOAD, _methods, _r_opt_list, example=["GET", "POST"]),
    Setting("route", "strip_prefix", "path prefix", None,
            "Removed from the start of the path before the request goes upstream, at a "
            'segment boundary: "/api" turns /api/x into /x and /api into /, not /apix.',
            _RELOAD, _prefix, example="/api"),
    Setting("route", "add_prefix", "path prefix", None,
            "Put in front of the path (after strip_prefix): \"/v2\" turns /x into /v2/x.",
            _RELOAD, _prefix, example="/v2"),
    Setting("route", "hide_headers", "array of header names", None,
            "Overrides server.hide_headers for this route.",
            _RELOAD, _header_names, _r_opt_list, example=["Server", "X-Powered-By", "X-Runtime"]),
    Setting("route", "error_pages", 'table of status = "path"', None,
            "Overrides server.error_pages for this route.",
            _RELOAD, _error_pages, _r_error_pages, example={"503": "/etc/forkproxy/maint.html"}),
    Setting("route", "rewrite_location", "boolean", True,
            "Rewrite Location and Refresh response headers that point at the server's "
            "address (or at host_header) to the host the client asked for, and drop the "
            "Domain attribute of Set-Cookie headers that name the server's address, as "
            "nginx's proxy_redirect default and proxy_cookie_domain.",
            _RELOAD, _bool),
    Setting("route", "body_timeout", "duration", None,
            "Overrides server.body_timeout for this route.",
            _RELOAD, _duration(False), _r_opt_duration, example="10s"),
    Setting("route", "max_uri_length", "integer >= 1", None,
            "Lower limit than server.max_uri_length for this route (answered 414); the "
            "request head is read before routing, so the server's limit applies first.",
            _RELOAD, _int(1), example=1024),
    Setting("route", "max_headers", "integer >= 1", None,
            "Lower limit than server.max_headers for this route (answered 431).",
            _RELOAD, _int(1), example=50),
    # deny = [{ ... }]
    Setting("route.deny", "path", "path prefix", None,
            "The path starts with this prefix (the canonical path: see server.merge_slashes).",
            _RELOAD, _rule_path, example="/admin/"),
    Setting("route.deny", "path_regex", "regular expression", None,
            "The regular expression is found in the path.",
            _RELOAD, _regex, example="\\.(git|env)(/|$)"),
    Setting("route.deny", "query_regex", "regular expression", None,
            "The regular expression is found in the query (the part after ?, empty when none).",
            _RELOAD, _regex, example="(^|&)debug="),
    Setting("route.deny", "header", "header name", None,
            "The request has this header field.",
            _RELOAD, _cookie_name, example="X-Debug"),
    Setting("route.deny", "header_regex", "regular expression", None,
            "With header: one of its values matches this regular expression.",
            _RELOAD, _regex, example="(?i)sqlmap"),
    Setting("route.deny", "methods", "array of method names", [],
            "The request method is one of these. Empty: any method.",
            _RELOAD, _methods_or_none, _r_list, example=["POST"]),
    Setting("route.deny", "status", "integer 400..599", 403,
            "The status of the answer.",
            _RELOAD, _int(400, 599)),
    # rate_limit = { ... }
    Setting("route.rate_limit", "rate", '"Nr/s", "Nr/m" or "Nr/h"', REQUIRED,
            "Sustained rate allowed per key.",
            _RELOAD, _rate, example="100r/s"),
    Setting("route.rate_limit", "key", '"ip" or "header:NAME"', "ip",
            "What a bucket belongs to: the real client address, or the value of a request "
            "header (requests without it are keyed by the client address).",
            _RELOAD, _rate_key),
    Setting("route.rate_limit", "burst", "integer 1..1000000", 1,
            "Requests a full bucket admits at once.",
            _RELOAD, _int(1, 1000000)),
    Setting("route.rate_limit", "scope", '"node" or "fleet"', "node",
            '"node": the token bucket above, in this forkproxy\'s shared memory. '
            '"fleet": one count per key shared by every forkproxy using the same '
            "cache.servers (memcached), for routes with the same index and rate: a fixed "
            "window of the rate's unit (1 s for r/s, 1 min for r/m, 1 h for r/h) admitting "
            "N + burst - 1 requests, up to twice that around a window's edge. "
            "It costs one memcached round trip per request, bounded by cache.timeout "
            "(measured with memcached on the same host: 0.1 to 0.2 ms more than a node "
            "limit, bench/fleet.py); "
            "while memcached errors or is slow (the cache's breaker rules), or without "
            "cache.servers, each node applies the node limit instead and "
            "forkproxyctl status says so.",
            _RELOAD, _enum("scope", ("node", "fleet"))),
    Setting("route.rate_limit", "keys", "integer 16..10000000", 10000,
            "Keys each worker tracks (32 bytes per key and worker slot).",
            _RELOAD, _int(16, 10000000)),
    # rewrite = [{ ... }]
    Setting("route.rewrite", "from", "regular expression", REQUIRED,
            "Searched in the path.",
            _RELOAD, _regex, example="^/old/(.*)", attr="pattern"),
    Setting("route.rewrite", "to", "path template", REQUIRED,
            "The new path (and optionally query).",
            _RELOAD, _str, example="/new/$1"),
    # redirect = { ... }
    Setting("route.redirect", "to", "URL template", REQUIRED,
            "The Location of the answer.",
            _RELOAD, _nonempty_str, example="https://example.com$request_uri"),
    Setting("route.redirect", "status", "301, 302, 303, 307 or 308", 302,
            "The status of the answer.",
            _RELOAD, _int(301, 308)),
    # request_headers and response_headers = { ... }
    Setting("route.request_headers", "set", "table of name = value", {},
            "Fields replaced (or added when absent).",
            _RELOAD, _header_table, _r_table),
    Setting("route.request_headers", "add", "table of name = value", {},
            "Fields added.",
            _RELOAD, _header_table, _r_table),
    Setting("route.request_headers", "remove", "array of header names", [],
            "Fields removed.",
            _RELOAD, _header_names, _r_list),
    Setting("route", "redirect_https", "boolean", False,
            "Answer requests that arrived without TLS with a 308 redirect to the same URL "
            "over https, as nginx's return 308 https://$host$request_uri. "
            "The port is that of the first TLS listener the route accepts, left out when it "
            "is 443.",
            _RELOAD, _bool),
    Setting("route", "hsts", "Strict-Transport-Security value", None,
            "Add a Strict-Transport-Security header with this value to responses sent over "
            "TLS (never over plain HTTP, as RFC 6797 says).",
            _RELOAD, _hsts, example="max-age=31536000; includeSubDomains"),
    Setting("route", "cache", "boolean", False,
            "Serve this route's GET and HEAD requests through the shared cache ([cache]). "
            "Unsafe methods (POST, PUT, DELETE...) on the route still invalidate what the "
            "cache holds for their URL. "
            "The cache stores the origin's response; hits go out through the route's "
            "hide_headers, response_headers, rewrite_location and compress like any "
            "other response.",
            _RELOAD, _bool),
    Setting("route", "cache_key", "name", None,
            "The route's cache namespace: responses are stored and found under it, so no "
            "other route ever serves them. "
            "Routes that set the same name share their entries, on purpose (two listeners' "
            "routes to one pool, say). "
            "Unset: a digest of what makes the route (its listener list, host, path or "
            "path_regex, pool, strip_prefix, add_prefix, rewrite, host_header and "
            "request_headers), which stays the same across reloads as long as those do, so a "
            "reload keeps the route's entries; changing one of them starts the route on an "
            "empty cache. "
            "Two routes never share by default: routes with the same listeners, host and "
            "path could not both be reached. "
            "A purge of a URL (PURGE, forkproxyctl purge) deletes it in every route that a "
            "request for it reaches on any listener; a purge of a host, in every route.",
            _RELOAD, _name, example="shop"),
    Setting("route", "cache_set_cookie", '"no-store" or "strip"', "no-store",
            "What the cache does with a response that sets a cookie (Set-Cookie), which "
            "would hand one client's cookie to the next: not store it "
            "(nginx's and Varnish's default), or store it without its Set-Cookie (as "
            "Varnish's unset beresp.http.Set-Cookie); the client whose request fetched it "
            "still gets its cookie. "
            'A response with Cache-Control: private="Set-Cookie" (RFC 9111 5.2.2.7) is '
            "stored without it either way; any other field a qualified private names is "
            "never stored either.",
            _RELOAD, _set_cookie_mode),
    Setting("route", "request_buffering", "boolean", True,
            "Read a request's whole body before choosing a server, as nginx's "
            "proxy_request_buffering (on by default there too): a client that sends its body "
            "slowly then holds no server, a body that does not come in time never reaches "
            "one, and an idempotent request with a body (PUT, DELETE) may be retried on "
            "another server. The body goes upstream with a Content-Length, a chunked one "
            "too. When buffering, an Expect: 100-continue is answered by forkproxy. false "
            "streams the body to the server as it comes (uploads larger than a server "
            "should wait for, or that it answers before their end). gRPC calls (Content-Type "
            "application/grpc) to a pool with protocol h2c or h2 are always streamed: their "
            "messages go both ways (to an HTTP/1.1 pool, which cannot serve them, the header "
            "buys no exemption).",
            _RELOAD, _bool),
    Setting("route", "request_buffer_memory", "size", "64k",
            "How much of a buffered request body is kept in memory; the rest of a larger "
            "one goes to a file in server.runtime_dir, removed from the directory as soon "
            "as it is opened (nginx's client_body_buffer_size).",
            _RELOAD, _size(0), _r_size),
    Setting("route", "request_buffer_timeout", "duration", "5m",
            "Total time allowed to receive a buffered request body, from the end of its "
            "head; past it the request is answered 408 and reaches no server. "
            "body_timeout still bounds each wait between two reads.",
            _RELOAD, _duration(False), _r_duration),
    Setting("route", "tunnel_timeout", "duration", None,
            "Overrides server.tunnel_timeout for this route.",
            _RELOAD, _duration(False), _r_opt_duration, example="10m"),
    Setting("route", "upgrade", "array of protocol names", ["websocket"],
            "Protocols a request may switch to with Upgrade (a tunnel once the server "
            "answers 101), compared by name without case or version. A request asking for "
            "another one (such as h2c) goes upstream as a plain request without its "
            "Upgrade, as nginx does for every Upgrade unless told to pass it; [] allows "
            "none.",
            _RELOAD, _protocol_names, _r_list),
    Setting("route", "split_by", '"cookie:NAME", "header:NAME" or "ip"', None,
            "With pools: what keeps a client on one pool of the split: the value of a cookie, "
            "of a request header, or the client's address (the real one behind "
            "server.trusted_proxies). "
            "A request without the cookie or header is keyed by its client's address. "
            "Unset: each request draws its pool at random, by weight (as Envoy's "
            "weighted_clusters).",
            _RELOAD, _split_by, example="cookie:session"),
    Setting("route", "connect_timeout", "duration", None,
            "Overrides the connect_timeout of the route's pool (of each pool of a split) for "
            "this route's requests.",
            _RELOAD, _duration(False), _r_opt_duration, example="1s"),
    Setting("route", "read_timeout", "duration", None,
            "Overrides the read_timeout of the route's pool (of each pool of a split) for this "
            "route's requests: a report route may wait minutes for a server that other "
            "routes must not wait for. "
            "A request that runs out of it before the response head is answered 504 (or "
            "moves to another server, as the pool's retry says).",
            _RELOAD, _duration(False), _r_opt_duration, example="5s"),
    Setting("route", "send_timeout", "duration", None,
            "Overrides the send_timeout of the route's pool (of each pool of a split) for this "
            "route's requests.",
            _RELOAD, _duration(False), _r_opt_duration, example="30s"),
    # pools = [{ ... }]
    Setting("route.pools", "pool", "pool name", REQUIRED,
            "A pool of the split. It must exist, and appear once in the split.",
            _RELOAD, _str, example="v1"),
    Setting("route.pools", "weight", "integer 0..1000", 1,
            "Its share of the requests, relative to the others' weights; 0: none. "
            "The weights of a split must not all be 0.",
            _RELOAD, _int(0, 1000), example=95),
    # mirror = { ... }
    Setting("route.mirror", "pool", "pool name", REQUIRED,
            "The pool that gets the copies. It must exist; it may be the route's own.",
            _RELOAD, _str, example="canary"),
    Setting("route.mirror", "percent", "integer 0..100", 100,
            "The share of the route's requests mirrored, each request drawn at random; "
            "0 mirrors none (the table stays in the file).",
            _RELOAD, _int(0, 100), example=10),
    Setting("route.mirror", "queue", "integer 1..100000", 64,
            "Copies in flight at once in each worker (and greenlets kept to send them); a "
            "copy over it is dropped and counted.",
            _RELOAD, _int(1, 100000)),
    Setting("route.mirror", "max_body", "size", "64k",
            "The largest request body mirrored (see above); 0 mirrors only requests "
            "without a body.",
            _RELOAD, _size(0), _r_size),
    Setting("route.mirror", "timeout", "duration", "2s",
            "The whole of a copy's exchange (connect, send, the answer read and thrown "
            "away) must end within it, else its connection is closed (a copy whose "
            "answer's head came in time still counts as sent).",
            _RELOAD, _duration(False), _r_duration),
    Setting("route.compress", "types", "array of media types", list(DEFAULT_COMPRESS_TYPES),
            'Media types to compress (the Content-Type without parameters): "text/html", '
            '"text/*" for a whole family, or "*" for every type. '
            "Responses without a Content-Type are never compressed.",
            _RELOAD, _media_types, _r_list),
    Setting("route.compress", "min_size", "size", "1k",
            "Responses whose Content-Length is below this are sent uncompressed "
            "(gzip would save little and cost a header). "
            "Responses of unknown length (chunked) are compressed.",
            _RELOAD, _size(0), _r_size),
    Setting("route.compress", "level", "integer 1..9", 6,
            "Compression level, gzip's scale: 1 is fastest, 9 smallest. "
            "Brotli uses a quality of similar cost.",
            _RELOAD, _int(1, 9)),
)
SETTINGS += copied(SETTINGS, "route.request_headers", "route.response_headers")

CLASSES = config_classes(SECTIONS, SETTINGS, __name__)
RouteConfig = CLASSES["route"]
SplitEntry = CLASSES["route.pools"]
DenyConfig = CLASSES["route.deny"]
RateLimitConfig = CLASSES["route.rate_limit"]
RewriteRule = CLASSES["route.rewrite"]
RedirectConfig = CLASSES["route.redirect"]
HeaderRulesConfig = CLASSES["route.request_headers"]
CompressConfig = CLASSES["route.compress"]
MirrorConfig = CLASSES["route.mirror"]


# Builders: the values of one table (parsed, keyed by field) -> its
# dataclass, with the checks that involve several keys of the table.
# ``err(path, message)`` records an error.


def route_pools(rc) -> tuple[str, ...]:
    """The names of the pools a route sends requests to (each pool of its
    split, weight 0 included)."""
    return rc.split.pools if rc.split is not None else (rc.pool,)


def _build_route(values: dict, path: Path, err) -> RouteConfig | None:
    if values["path"] is not None and values["path_regex"] is not None:
        err(path + ("path_regex",), "path and path_regex are exclusive: use one or the other")
        return None
    entries = values["pools"]
    if (values["pool"] is None) == (not entries):
        err(path + (("pools",) if entries else ()),
            "a route has exactly one of pool (one pool) and pools (a weighted split)")
        return None
    split = None
    if entries:
        try:
            split = Split(tuple(e.pool for e in entries), tuple(e.weight for e in entries),
                          values["split_by"])
        except ValueError as e:
            err(path + ("pools",), str(e))
            return None
    elif values["split_by"] is not None:
        err(path + ("split_by",), "split_by needs pools (a weighted split)")
        return None
    limits = (values["connect_timeout"], values["send_timeout"], values["read_timeout"])
    return RouteConfig(index=path[-1], split=split, **values,
                       timeouts=None if limits == (None, None, None) else limits)


def _build_deny(values: dict, path: Path, err) -> DenyConfig | None:
    try:
        DenyRule(**{k: v for k, v in values.items() if k != "methods"},
                 methods=frozenset(values["methods"]))
    except ValueError as e:
        err(path, str(e))
        return None
    return DenyConfig(**values)


def _build_rewrite(values: dict, path: Path, err) -> RewriteRule | None:
    try:
        compile_rewrites(rewrite=[(values["pattern"], values["to"])])
    except ValueError as e:
        err(path + ("to",), str(e))
        return None
    return RewriteRule(**values)


def _build_redirect(values: dict, path: Path, err) -> RedirectConfig | None:
    try:
        compile_rewrites(redirect=(values["to"], values["status"]))
    except ValueError as e:
        err(path + ("to" if "status" not in str(e) else "status",), str(e))
        return None
    return RedirectConfig(**values)


def _build_header_rules(values: dict, path: Path, err) -> HeaderRulesConfig | None:
    try:
        HeaderRules(dict(values["set"]), dict(values["add"]), values["remove"])
    except ValueError as e:
        err(path, str(e))
        return None
    return HeaderRulesConfig(**values)


BUILDERS = {
    "route": _build_route,
    "route.deny": _build_deny,
    "route.rewrite": _build_rewrite,
    "route.redirect": _build_redirect,
    "route.request_headers": _build_header_rules,
    "route.response_headers": _build_header_rules,
}
