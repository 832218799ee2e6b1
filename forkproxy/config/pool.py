"""``[pool.NAME]`` tables and their sub-tables: ``servers``, ``tls``, ``health``,
``sticky``, ``retry``, ``outlier`` and ``queue``.

Their keys, each declared once, the dataclasses made from them, and the
builders (a pool's name, duplicate servers, a CA file that must load).
"""

from __future__ import annotations

import ipaddress

from forkproxy.config.parsers import (
    _addr, _bool, _cookie_name, _duration, _enum, _fail_status, _hash_key, _header_value, _int,
    _nonempty_str, _number, _percent, _probe_path, _r_duration, _r_list, _r_opt_duration, _r_percent,
    _r_retry_on, _r_status, _regex, _retry_on, _secret_str, _status_ranges, _stick_key,
)
from forkproxy.config.schema import (
    _RELOAD, LAST, Derived, Path, Section, Setting, config_classes,
)
from forkproxy.config.units import _is_ip, _quote, split_host_port
from forkproxy.net.tls_contexts import TlsFileError, check_ca_file

SECTIONS: tuple[Section, ...] = (
    Section(
        "pool",
        "named",
        "[pool.NAME]",
        "One table per pool of upstream servers, named by NAME. "
        "Routes refer to pools by name.",
        cls="PoolConfig",
        doc="""One ``[pool.NAME]`` table.

        ``health`` None: no active checks.  Passive checks (nginx semantics):
        ``max_fails`` failures (connect errors, timeouts, and responses whose
        status is in ``fail_status``) within ``fail_timeout`` seconds take a
        server out of rotation for ``fail_timeout``; ``max_fails`` 0 disables
        them.  ``slow_start`` seconds (0: off) ramp a returning server's weight.
        """,
        derived=(Derived("name"), Derived("discover", after=LAST, default=())),
    ),
    Section(
        "pool.servers",
        "array",
        "servers = [{ ... }]",
        "The servers of the pool, as an array of inline tables "
        'such as { addr = "10.0.0.11:8080", weight = 2 }, '
        'or entries that DNS discovery expands: { dns = "app.internal:8080" } (every A and '
        'AAAA address of the name, on that port) and { srv = "_http._tcp.app.service.consul" } '
        "(the targets, ports and weights of the SRV records; targets of the lowest priority "
        "are the primaries, the others backups). "
        "The process that runs the health checks resolves them against server.resolvers, "
        "again when the TTL of the answer runs out (within server.dns_min_ttl and "
        "server.dns_max_ttl), and adds and removes servers as the answers change, through "
        "the health table, with no reload; active checks start for new addresses. "
        "A failed or empty answer keeps the servers of the last good one. "
        "Until the first answer, a pool whose servers are all discovered has none. "
        "At least one entry is required.",
        required=True,
        need='the pool has no servers: add at least one { addr = "HOST:PORT" }',
        cls="ServerEntry",
        doc="""One member of a pool's ``servers`` array.

        A pool's ``servers`` holds only ``addr`` entries; its ``dns`` and
        ``srv`` entries are its ``discover`` (their ``addr``, ``host`` and
        ``port`` are None, but a dns entry's ``host`` and ``port``).
        """,
        derived=(Derived("host", after="addr", default=None),
                 Derived("port", after="addr", default=None)),
        one_of=("addr", "dns", "srv"),
        also="discover",
    ),
    Section(
        "pool.tls",
        "table",
        "tls = { ... } (upstream)",
        "Connect to the servers of the pool over TLS (HTTPS backends), as an inline table "
        'such as { verify = true, ca = "/etc/forkproxy/tls/internal-ca.pem" }. '
        "Without it connections to the servers are plain TCP. "
        'Active checks of such a pool should be { type = "tcp" }: HTTP probes are sent '
        "without TLS.",
        optional=True,
        cls="PoolTlsConfig",
        doc="""A pool's ``tls = { ... }``: connect to its servers over TLS.

        ``ca`` None: the system's trusted CAs.  ``sni`` None: the server's host
        as written in its addr (sent unless it is an IP address, and checked
        against the certificate when ``verify``).
        """,
    ),
    Section(
        "pool.health",
        "table",
        "health = { ... }",
        "The active health checks of the pool, as an inline table such as "
        '{ path = "/healthz", interval = "2s", rise = 2, fall = 3 } '
        '(HTTP probes) or { type = "tcp" } (connect only). '
        "Without it the pool has no active checks and only passive checks "
        "(max_fails) take servers out of rotation. "
        "The semantics are HAProxy's: a server goes DOWN after fall consecutive failed "
        "checks and comes back UP after rise consecutive successful ones. "
        "One worker at a time runs the checks of every pool, all servers concurrently, "
        "and shares the results with the others through the health table in "
        "server.runtime_dir, which forkproxyctl status reads.",
        optional=True,
        cls="HealthConfig",
        doc="""A pool's ``health = { ... }``: its active checks (HAProxy semantics).

        ``type`` "http" probes ``method path`` and succeeds when the status is in
        one of the inclusive ``expect_status`` ranges and, if ``expect_body`` is
        set, that regex is found in the first 64 KiB of the body; "tcp" only
        connects (the http-only fields then keep their defaults and mean
        nothing).  ``host`` None means the server's addr as written.
        ``fastinter``/``downinter`` None mean ``interval``.  Times in seconds.
        """,
    ),
    Section(
        "pool.sticky",
        "table",
        "sticky = { ... }",
        "Session persistence by cookie, as an inline table such as "
        '{ cookie = "srv", ttl = "1h" }. '
        "The first response to a client carries a Set-Cookie that names the chosen server "
        "by an opaque token (an HMAC of its address, never the address itself). "
        "Later requests that send the cookie go to that server while it is usable, "
        "even while it is in drain; when it is not (down, in maint, out after passive "
        "failures, gone from the pool) the request goes to a fresh choice and the response "
        "carries a new cookie. "
        "Tokens depend only on the server's addr and the HMAC key (secret), so they stay valid "
        "across reloads and restarts for servers that stay. "
        "Over a TLS listener the cookie is also Secure and SameSite=Lax. "
        "Stickiness comes before the balance algorithm. "
        "With key, the pool keeps a sticky table instead, as HAProxy's stick tables, for "
        "clients that keep no cookie of forkproxy's: "
        '{ key = "header:X-Client", ttl = "30m", scope = "fleet" } maps the value of the key '
        "to the server the first request went to (by its addr, so entries stay valid across "
        "reloads and as servers come and go); later requests with the same value go to that "
        "server while it may take them, as with the cookie; when it is down, in maint, out "
        "after passive failures or gone, the request goes to a fresh choice and the entry "
        "is rewritten. No cookie is set. A request without the key is balanced as usual.",
        optional=True,
        cls="StickyConfig",
        doc="""A pool's ``sticky = { ... }``: session persistence.

        ``key`` None: by cookie (``cookie``, ``ttl`` 0 makes a session cookie,
        no Max-Age; ``secret`` None: the daemon's key, see the key's help).
        ``key`` "ip", "header:NAME" or "cookie:NAME": a sticky table whose
        entries last ``ttl`` seconds after their last use (0: no expiry), kept per worker
        (``scope`` "node") or in memcached (``scope`` "fleet", falling back to
        the worker's own table), at most ``keys`` entries per worker.
        """,
    ),
    Section(
        "pool.retry",
        "table",
        "retry = { ... }",
        "Failover of a failed attempt to another server, as an inline table such as "
        '{ tries = 3, timeout = "10s", on = ["error", "timeout", "502", "503", "504"] } '
        "(nginx's proxy_next_upstream, proxy_next_upstream_tries and "
        "proxy_next_upstream_timeout). "
        "A request none of whose bytes reached a server (connection refused, a pooled "
        "connection found closed) is always retried. "
        "Otherwise a request is retried only when its method is idempotent and it has no "
        "body, and only before any byte of the response went to the client: a POST is "
        "never sent twice. "
        "Each server is tried at most once per request (a pooled connection found closed "
        "is retried once on a new connection to the same server). "
        "Every failed attempt also counts as a passive failure (max_fails) of the server it "
        "was made on, but for a pooled connection the server had closed. "
        "The error log says \"(retrying)\" for a failed attempt only when another one follows; "
        "the last one is reported with the answer sent to the client. "
        'A budget such as { budget = "20%" } bounds the retries in flight by the load, as '
        "Envoy's retry_budget (nginx and HAProxy have only counts of tries). "
        "Without this table the defaults below apply.",
        optional=True,
        cls="RetryConfig",
        doc="""A pool's ``retry = { ... }`` (nginx's proxy_next_upstream family).

        ``tries`` 0: each server of the pool at most once; ``timeout`` 0: no
        time limit; ``on``: "error", "timeout" and status codes as ints;
        ``budget``: percent of the requests in flight that may be retries
        (None: no budget), at least ``budget_min``.
        """,
    ),
    Section(
        "pool.outlier",
        "table",
        "outlier = { ... }",
        "Outlier detection, as Envoy's outlier_detection: servers that answer errors while "
        "the pool's others do not are ejected (take no new requests) for a while, as an "
        'inline table such as { consecutive_5xx = 5, interval = "10s", '
        'base_ejection_time = "30s" }. '
        "Every worker counts each server's responses in the health table; the worker that "
        "runs the health checks decides, at once for runs of consecutive errors, every "
        "interval for the success rate, and every worker stops sending new requests to an "
        "ejected server within 0.2 s. "
        "The n-th ejection of a server lasts base_ejection_time times n, at most "
        "max_ejection_time; n goes down by one for every interval the server then spends in "
        "rotation. "
        "At most max_ejection_percent of the pool's servers (rounded down: with 3 servers and "
        "50, one; a pool of one server is never ejected) are ejected at a time. "
        "forkproxyctl status says \"ejected (outlier: REASON) for 12s\"; the metrics count "
        "ejections (outlier_ejections_total) and show who is ejected (server_ejected). "
        "For the pool of a tcp listener, a connect that fails counts as a gateway error "
        "and one that succeeds as a success. "
        "HAProxy's nearest equivalent is observe layer7 with error-limit and on-error "
        "mark-down; nginx has only max_fails. "
        "Without this table no outlier detection is done (passive checks, max_fails, still are).",
        optional=True,
        cls="OutlierConfig",
        doc="""A pool's ``outlier = { ... }`` (Envoy's outlier_detection).

        0 turns a consecutive rule off; ``success_rate`` false turns the
        success-rate rule off.
        """,
    ),
    Section(
        "pool.queue",
        "table",
        "queue = { ... }",
        "Where requests wait when every usable server is at its max_conns, as an inline "
        'table such as { size = 100, timeout = "5s" }. '
        "The queue is per worker: each worker holds up to size waiting requests, served "
        "first come, first served as connections free up in any worker. "
        "A request that finds the queue full, or waits longer than timeout, is answered 503. "
        "Without this table a request that finds every server full is answered 503 at once.",
        optional=True,
        cls="QueueConfig",
        doc="""A pool's ``queue = { ... }``: where requests wait when every server is at max_conns.""",
    ),
)

SETTINGS: tuple[Setting, ...] = (
    Setting("pool", "balance", '"round_robin", "least_conn", "ip_hash", "hash" or "random2"',
            "round_robin",
            "How requests are spread over the servers. "
            "Every algorithm honours weight, skips servers that are down, in drain or maint, "
            "out after passive failures or at max_conns, and uses backup servers only when "
            "no other server is usable. "
            "round_robin: nginx's smooth weighted round robin. "
            "least_conn: the fewest requests in flight divided by weight, counted over all "
            "workers through the health table; ties are broken by round robin. "
            "ip_hash: the client's IPv4 /24 or IPv6 /64 picks the server, as nginx's ip_hash; "
            "stable while the pool is unchanged. "
            "hash: consistent hashing of hash_key with hash_method; adding or removing one "
            "of N servers moves about 1/N of the keys, and the keys of a server that is not "
            "usable go to the next choice only; a request without the key is balanced round "
            "robin. "
            "random2: power of two random choices, the one with fewer requests in flight "
            "per weight.",
            _RELOAD, _enum("balance", ("round_robin", "least_conn", "ip_hash", "hash", "random2"))),
    Setting("pool", "hash_key", '"uri", "header:NAME", "cookie:NAME" or "query:NAME"', "uri",
            "What balance = \"hash\" hashes: the request target with its query (uri), "
            "a request header, a cookie, or a query parameter.",
            _RELOAD, _hash_key, when=("balance", "hash")),
    Setting("pool", "hash_method", '"ketama" or "maglev"', "ketama",
            "The consistent hash of balance = \"hash\": a ketama ring (libketama's: md5, "
            "160 points per weight unit) or a Maglev lookup table (even spread, faster "
            "lookups, slightly more keys move when the pool changes).",
            _RELOAD, _enum("hash_method", ("ketama", "maglev")), when=("balance", "hash")),
    Setting("pool", "proxy_protocol", '"v1" or "v2"', None,
            "Start every connection to a server with a PROXY protocol header of this "
            "version (HAProxy's send-proxy and send-proxy-v2), so the server sees the "
            "client's address. Only for pools of tcp listeners: a route cannot use such a "
            "pool. Unset: no header.",
            _RELOAD, _enum("proxy_protocol", ("v1", "v2")), example="v2"),
    Setting("pool", "protocol", '"http1", "h2c" or "h2"', "http1",
            "What the pool speaks to its servers: HTTP/1.1 (\"http1\"), HTTP/2 over plain TCP "
            "with prior knowledge (\"h2c\", as gRPC servers listen), or HTTP/2 over TLS "
            "(\"h2\": needs tls = { ... }, and the server must choose h2 by ALPN). "
            "With HTTP/2 the requests of many clients share a few connections per server "
            "and worker (streams, up to the server's SETTINGS_MAX_CONCURRENT_STREAMS each); "
            "keepalive bounds the idle connections kept; trailers (gRPC's grpc-status) pass "
            "to HTTP/2 clients and to HTTP/1.1 clients that sent TE: trailers (as they do from "
            "an HTTP/1.1 server's chunked body), but for the fields a trailer may not carry "
            "on: framing, Host, hop-by-hop and response control fields (RFC 9110 6.5.1). "
            "WebSocket upgrades are not forwarded to such a pool.",
            _RELOAD, _enum("protocol", ("http1", "h2c", "h2")), example="h2c"),
    Setting("pool", "connect_timeout", "duration", "5s",
            "Time allowed to connect to a server.",
            _RELOAD, _duration(False), _r_duration),
    Setting("pool", "read_timeout", "duration", "60s",
            "Time allowed for a server's response head, from the request sent (each attempt "
            "has its own: a retry starts with the whole of it), then the maximum idle time "
            "between two reads of the response body. "
            "An idempotent request without a body that times out before the response head "
            "moves to another server (retry.on).",
            _RELOAD, _duration(False), _r_duration),
    Setting("pool", "send_timeout", "duration", "60s",
            "Maximum idle time between two writes to a server.",
            _RELOAD, _duration(False), _r_duration),
    Setting("pool", "keepalive", "integer >= 0", 32,
            "Idle connections kept open per server and per worker for reuse. "
            "0 disables reuse.",
            _RELOAD, _int(0)),
    Setting("pool", "keepalive_timeout", "duration", "60s",
            "How long an idle upstream connection is kept for reuse.",
            _RELOAD, _duration(True), _r_duration),
    Setting("pool", "max_fails", "integer 0..1000", 1,
            "Passive checks, as nginx's max_fails: this many failures of a server within "
            "fail_timeout, counted over all workers, take it out of rotation for fail_timeout. "
            "A failure is a connect error, a timeout, or a response whose status is in fail_status. "
            "When the pool has active checks, one successful check brings the server back earlier. "
            "A failure is charged only to the server that failed, never to the one a request "
            "is then retried on. "
            "max_ejection_percent caps how many servers this takes out: a pool of one server is "
            "never taken out (nginx's rule), but its failures are counted and shown "
            "(forkproxyctl status, the admin status page). "
            "0 disables passive checks.",
            _RELOAD, _int(0, 1000)),
    Setting("pool", "max_ejection_percent", "integer 0..100", 50,
            "At most this share of the pool's servers (counted among those its active checks "
            "and admin state let take requests, rounded down) is out of rotation by max_fails "
            "at a time, as Envoy's max_ejection_percent; the servers with the most failures go "
            "first, the others keep taking requests, as nginx keeps using its servers when "
            "every one of them failed. "
            "Below 100 a pool therefore always keeps a server in rotation whatever its "
            "passive failures (with 3 servers and 50, at most one is out); 100 lets max_fails "
            "take out every server (then requests get 503 until fail_timeout passes); "
            "0 counts and shows failures but takes no server out. "
            "Active checks are not capped: a server they mark DOWN is out. "
            "The same share caps outlier ejections (outlier), counted on their own.",
            _RELOAD, _int(0, 100)),
    Setting("pool", "fail_timeout", "duration", "10s",
            "As nginx's fail_timeout: both the window in which max_fails failures are counted "
            "and how long the server then stays out of rotation.",
            _RELOAD, _duration(False), _r_duration),
    Setting("pool", "fail_status", "array of status codes 500..599", [],
            "Response statuses that count as passive failures, as nginx's proxy_next_upstream "
            "http_500, http_502, http_503, http_504. "
            "The response is still relayed to the client. "
            "Empty: only connect errors and timeouts count.",
            _RELOAD, _fail_status, _r_list, example=[502, 503, 504]),
    Setting("pool", "slow_start", "duration", "0s",
            "As HAProxy's slowstart: when a server comes back UP or ready, its weight ramps "
            "linearly from almost nothing to its full value over this time. "
            '"0s" disables it.',
            _RELOAD, _duration(True), _r_duration),
    # servers = [{ ... }]
    Setting("pool.servers", "addr", '"HOST:PORT" or "[IPv6]:PORT"', None,
            "Address of the server. The port is required. Each address once per pool "
            "(a name that does not resolve is only a warning of forkproxy -t). "
            "Each entry has exactly one of addr, dns and srv.",
            _RELOAD, _addr, example="127.0.0.1:8080"),
    Setting("pool.servers", "weight", "integer 1..1000", 1,
            "Relative share of requests the server receives.",
            _RELOAD, _int(1, 1000)),
    Setting("pool.servers", "backup", "boolean", False,
            "A backup server receives requests only when no other server of the pool is available.",
            _RELOAD, _bool),
    Setting("pool.servers", "max_conns", "integer 0..100000", 0,
            "Most requests in flight to the server, counted over all workers through the "
            "health table; beyond it the server is skipped (see queue). "
            "Workers read each other's counts, so under a burst the limit can be exceeded by "
            "a few requests. "
            "0: no limit.",
            _RELOAD, _int(0, 100000)),
    Setting("pool.servers", "dns", '"NAME:PORT"', None,
            "DNS discovery: one server per A and AAAA address of NAME, on PORT, each with "
            "this entry's weight, backup and max_conns.",
            _RELOAD, _addr, example="app.internal:8080"),
    Setting("pool.servers", "srv", "DNS name", None,
            "DNS discovery: one server per address of each target of the SRV records of "
            "this name, on the record's port; its weight is the record's (1..1000), it is a "
            "backup unless its priority is the lowest; max_conns is this entry's.",
            _RELOAD, _nonempty_str, example="_http._tcp.app.service.consul"),
    # tls = { ... } of a pool
    Setting("pool.tls", "verify", "boolean", True,
            "Check the server's certificate against ca and the name sni. "
            "false accepts any certificate (encryption without authentication).",
            _RELOAD, _bool),
    Setting("pool.tls", "ca", "path", None,
            "PEM file of the CA certificates that sign the servers' certificates. "
            "Unset: the system's trusted CAs. It is read when the file is loaded.",
            _RELOAD, _nonempty_str, example="/etc/forkproxy/tls/internal-ca.pem"),
    Setting("pool.tls", "sni", "host name", None,
            "Server name sent in the TLS handshake and checked against the certificate. "
            "Unset: the host of the server's addr.",
            _RELOAD, _header_value, example="backend.internal"),
    # health = { ... }
    Setting("pool.health", "type", '"http" or "tcp"', "http",
            '"http" sends an HTTP/1.1 request and checks the response, as HAProxy\'s option httpchk. '
            '"tcp" only opens a connection, as HAProxy\'s plain check.',
            _RELOAD, _enum("type", ("http", "tcp"))),
    Setting("pool.health", "path", "path", "/",
            'Request target of the probe, as in HAProxy\'s option httpchk GET /healthz. '
            'It must start with "/" and may carry a query.',
            _RELOAD, _probe_path, when=("type", "http")),
    Setting("pool.health", "method", '"GET", "HEAD" or "OPTIONS"', "GET",
            "Method of the probe.",
            _RELOAD, _enum("method", ("GET", "HEAD", "OPTIONS")), when=("type", "http")),
    Setting("pool.health", "expect_status", 'array of status codes and "LO-HI" ranges', ["200-399"],
            "Statuses that make a probe succeed, as HAProxy's http-check expect status: "
            'codes 100..599 and inclusive ranges such as [200, "300-399"]. '
            "Any other status is a failure.",
            _RELOAD, _status_ranges, _r_status, when=("type", "http")),
    Setting("pool.health", "expect_body", "regular expression", None,
            "When set, a probe also needs this regular expression (RE2, as in route.deny) "
            "to be found in the "
            "first 64 KiB of the response body, as HAProxy's http-check expect rstring. "
            "It is compiled when the file is loaded.",
            _RELOAD, _regex, example="\"status\":\\s*\"ok\"", when=("type", "http")),
    Setting("pool.health", "host", "Host header value", None,
            "Host header of the probes. "
            "Unset: the server's addr as written in servers.",
            _RELOAD, _header_value, example="health.internal", when=("type", "http")),
    Setting("pool.health", "interval", "duration", "2s",
            "Time between the starts of two checks of a server, as HAProxy's inter: "
            "a check that takes long does not delay the next one (it starts at once when "
            "the last one took longer than this). "
            "So a server that accepts connections and never answers is DOWN within "
            "about (fall - 1) x interval + timeout.",
            _RELOAD, _duration(False), _r_duration),
    Setting("pool.health", "timeout", "duration", "1s",
            "Time allowed for one check (connect, and for HTTP the whole response), "
            "as HAProxy's timeout check. "
            "A check that takes longer fails.",
            _RELOAD, _duration(False), _r_duration),
    Setting("pool.health", "rise", "integer 1..100", 2,
            "Consecutive successful checks that bring a DOWN server UP, as HAProxy's rise.",
            _RELOAD, _int(1, 100)),
    Setting("pool.health", "fall", "integer 1..100", 3,
            "Consecutive failed checks that take an UP server DOWN, as HAProxy's fall.",
            _RELOAD, _int(1, 100)),
    Setting("pool.health", "fastinter", "duration", None,
            "Interval while a server is changing state (some but not yet rise or fall checks "
            "in a row), as HAProxy's fastinter. "
            "Unset: interval.",
            _RELOAD, _duration(False), _r_opt_duration, example="500ms"),
    Setting("pool.health", "downinter", "duration", None,
            "Interval while a server is DOWN, as HAProxy's downinter. "
            "Unset: interval.",
            _RELOAD, _duration(False), _r_opt_duration, example="5s"),
    # sticky = { ... }
    Setting("pool.sticky", "cookie", "cookie name", "fp_srv",
            "Name of the cookie.",
            _RELOAD, _cookie_name),
    Setting("pool.sticky", "ttl", "duration", "0s",
            "Max-Age of the cookie. "
            '"0s" makes a session cookie, dropped when the browser closes. '
            "With key: how long an entry of the sticky table lasts after its last use; "
            '"0s": until it is forgotten (keys) or memcached evicts it.',
            _RELOAD, _duration(True), _r_duration),
    Setting("pool.sticky", "secret", "string", None,
            "Key of the HMAC that turns a server's addr into its token. "
            "Give every forkproxy that must honour the same cookies the same secret. "
            "Unset: the key is derived from the pool name and a random key the master makes "
            "at its first start and keeps in server.runtime_dir/sticky.key (mode 0600), so "
            "tokens stay valid across reloads, restarts and upgrades of this forkproxy, but "
            "not on other machines, nor after that file is lost (as /run is at boot). "
            "Changing it invalidates every cookie once (clients get a fresh choice).",
            _RELOAD, _secret_str, example="a long random string", secret=True),
    Setting("pool.sticky", "key", '"ip", "header:NAME" or "cookie:NAME"', None,
            "Makes stickiness a sticky table keyed by this instead of a cookie of forkproxy's: "
            "the real client address (behind server.trusted_proxies, the one they vouch "
            "for), a request header's value, or a cookie the application sets (a session id). "
            "Unset: the cookie above (cookie, secret).",
            _RELOAD, _stick_key, example="header:X-Client"),
    Setting("pool.sticky", "scope", '"node" or "fleet"', "node",
            'Where the sticky table of key lives. "node": in each worker\'s memory, so a '
            "client whose connections reach different workers (or nodes) may be pinned to a "
            "different server by each. "
            '"fleet": in memcached (cache.servers), shared by every worker of every '
            "forkproxy on the same memcached whose pool has the same name, as HAProxy's peers "
            "share stick tables; an entry expires ttl after its last use (refreshed at most "
            "every tenth of ttl), each call bounded by cache.timeout. "
            "It costs one memcached get per request with the key, and a write when an entry "
            "is made, moved or refreshed (measured with memcached on the same host, "
            "bench/fleet.py --sticky: 0.1 to 0.2 ms of latency more than a node table for a "
            "known key, about 25 us of the worker's time; 0.4 to 0.55 ms for a new key, "
            "a get and an add, about 50 us). "
            "While memcached errors or is slow (the cache's breaker rules), or without "
            "cache.servers, each worker uses its own table as with \"node\" (it keeps a copy of "
            "the entries it read or wrote) and forkproxyctl status says so.",
            _RELOAD, _enum("scope", ("node", "fleet"))),
    Setting("pool.sticky", "keys", "integer 16..10000000", 100000,
            "Entries each worker keeps in its own table (scope node, and the copy of scope "
            "fleet), about 300 bytes each for a short key; beyond it the least recently used "
            "is forgotten.",
            _RELOAD, _int(16, 10000000)),
    # retry = { ... }
    Setting("pool.retry", "tries", "integer 0..100", 0,
            "Most attempts per request, the first included, as nginx's "
            "proxy_next_upstream_tries. "
            "0: each usable server of the pool at most once.",
            _RELOAD, _int(0, 100)),
    Setting("pool.retry", "timeout", "duration", "0s",
            "No new attempt starts once this much time has passed since the first one, as "
            "nginx's proxy_next_upstream_timeout: the request's overall limit on failing over. "
            "An attempt that starts gets its whole connect_timeout, send_timeout and "
            "read_timeout. "
            '"0s": no limit.',
            _RELOAD, _duration(True), _r_duration),
    Setting("pool.retry", "on", 'array of "error", "timeout" and status codes', ["error", "timeout"],
            "Which failures of an idempotent request without a body move it to another server: "
            '"error" (connection reset or closed, or an invalid response, before the response '
            'head), "timeout" (connect or read timeout before the response head), and response '
            'statuses 500..599 such as "502", "503", "504" (the response is discarded only when '
            "another server is left to try; otherwise it is relayed). "
            "Failures before any byte was sent are retried whatever this says.",
            _RELOAD, _retry_on, _r_retry_on),
    Setting("pool.retry", "budget", "percentage", None,
            "A retry budget, as Envoy's retry_budget: a request moves to another server "
            "only while the pool's retries in flight stay under this share of its requests "
            "in flight (and under budget_min, whichever is larger), so that a failing pool "
            "is not hit by a retry storm on top of its load. "
            "A retry that the budget refuses is not made: the client gets the last failure "
            "(a 502 or 504, or the server's own 5xx response). "
            "Counted per worker: each worker holds its own share of the pool's load. "
            "The retry on a new connection after a pooled one was found closed is not "
            "counted. "
            "Unset: no budget (retries as tries and timeout allow).",
            _RELOAD, _percent, _r_percent, example="20%"),
    Setting("pool.retry", "budget_min", "integer 0..10000", 3,
            "With budget: retries in flight always allowed, whatever the share (Envoy's "
            "min_retry_concurrency), so that a pool with few requests still retries them.",
            _RELOAD, _int(0, 10000)),
    # outlier = { ... }
    Setting("pool.outlier", "consecutive_5xx", "integer 0..1000", 5,
            "Eject a server after this many 5xx responses (or failed attempts: connect error, "
            "reset, timeout) in a row, counted over all workers; a response that is not a 5xx "
            "ends the run. As Envoy's consecutive_5xx. 0: off.",
            _RELOAD, _int(0, 1000)),
    Setting("pool.outlier", "consecutive_gateway_failure", "integer 0..1000", 0,
            "Eject a server after this many gateway errors in a row: 502, 503, 504 and failed "
            "attempts (connect error, reset, timeout); any other response ends the run. "
            "As Envoy's consecutive_gateway_failure. 0: off.",
            _RELOAD, _int(0, 1000)),
    Setting("pool.outlier", "interval", "duration", "10s",
            "How often the success rates are compared (over the requests of the last interval), "
            "and the step by which an ejection's multiplier goes down. As Envoy's interval.",
            _RELOAD, _duration(False), _r_duration),
    Setting("pool.outlier", "base_ejection_time", "duration", "30s",
            "How long the first ejection of a server lasts; the n-th lasts n times as long.",
            _RELOAD, _duration(False), _r_duration),
    Setting("pool.outlier", "max_ejection_time", "duration", "300s",
            "The longest an ejection lasts, whatever n.",
            _RELOAD, _duration(False), _r_duration),
    Setting("pool.outlier", "success_rate", "boolean", True,
            "Eject, every interval, the servers whose success rate (responses that are not 5xx, "
            "among all) is below the mean of the pool's servers' rates minus "
            "success_rate_stdev_factor times their standard deviation, counting only servers "
            "with at least success_rate_request_volume requests in the interval, and only when "
            "at least success_rate_minimum_hosts of them have. As Envoy's success-rate rule.",
            _RELOAD, _bool),
    Setting("pool.outlier", "success_rate_minimum_hosts", "integer 1..1000", 5,
            "Servers with enough requests needed for the success-rate rule to decide anything.",
            _RELOAD, _int(1, 1000)),
    Setting("pool.outlier", "success_rate_request_volume", "integer 1..10000000", 100,
            "Requests a server needs in an interval to count in the success-rate rule.",
            _RELOAD, _int(1, 10000000)),
    Setting("pool.outlier", "success_rate_stdev_factor", "number 0..100", 1.9,
            "How many standard deviations below the mean a server's success rate must be to be "
            "ejected (Envoy's success_rate_stdev_factor, 1900, divided by 1000). With few "
            "servers use a small factor: among n servers none can be more than "
            "(n - 1) / sqrt(n) deviations below the mean (1.15 for 3).",
            _RELOAD, _number(0, 100)),
    # queue = { ... }
    Setting("pool.queue", "size", "integer 1..100000", 100,
            "Most requests waiting in the queue of one worker.",
            _RELOAD, _int(1, 100000)),
    Setting("pool.queue", "timeout", "duration", "10s",
            "Longest wait in the queue before the request is answered 503.",
            _RELOAD, _duration(False), _r_duration),
)

CLASSES = config_classes(SECTIONS, SETTINGS, __name__)
PoolConfig = CLASSES["pool"]
ServerEntry = CLASSES["pool.servers"]
PoolTlsConfig = CLASSES["pool.tls"]
HealthConfig = CLASSES["pool.health"]
StickyConfig = CLASSES["pool.sticky"]
RetryConfig = CLASSES["pool.retry"]
QueueConfig = CLASSES["pool.queue"]
OutlierConfig = CLASSES["pool.outlier"]


# Builders: the values of one table (parsed, keyed by field) -> its
# dataclass, with the checks that involve several keys of the table.
# ``err(path, message)`` records an error.


def _build_pool(values: dict, path: Path, err) -> PoolConfig | None:
    if values.get("tls") is not None and values.get("health") is not None \
            and values["health"].type == "http" and values.get("protocol") != "h2":
        # The probes are plain HTTP: they would fail against every HTTPS server.
        err(path + ("health",), 'HTTP/1.1 checks are sent without TLS: a pool with tls needs '
            'health = { type = "tcp", ... } (or protocol = "h2": its checks are HTTP/2 over TLS)')
        return None
    protocol = values.get("protocol", "http1")
    if protocol == "h2" and values.get("tls") is None:
        err(path + ("protocol",), 'protocol = "h2" is HTTP/2 over TLS: it needs tls = { ... } '
            '(for HTTP/2 over plain TCP use protocol = "h2c")')
        return None
    if protocol == "h2c" and values.get("tls") is not None:
        err(path + ("protocol",), 'protocol = "h2c" is HTTP/2 over plain TCP: with tls = '
            '{ ... } use protocol = "h2"')
        return None
    if protocol != "http1" and values.get("proxy_protocol") is not None:
        err(path + ("protocol",), f'protocol = "{protocol}" is for HTTP routes; a pool with '
            'proxy_protocol serves tcp listeners')
        return None
    servers = tuple(s for s in values["servers"] if s.addr is not None)
    if _duplicate_servers(servers, path, err):
        return None
    return PoolConfig(name=path[-1], **{**values, "servers": servers},
                      discover=tuple(s for s in values["servers"] if s.addr is None))


def _duplicate_servers(servers: tuple, path: Path, err) -> bool:
    """Report each server of a pool whose address an earlier one has; True if any.

    The same address twice would be one server counted twice (twice the
    weight, one health row for two labels): never what was meant.  Names
    compare case-insensitively, addresses by value ("[::1]" and "[0::1]").
    """
    seen: dict[tuple, int] = {}
    found = False
    for i, s in enumerate(servers):
        host = s.host.lower().rstrip(".")
        key = (ipaddress.ip_address(host) if _is_ip(host) else host, s.port)
        if key in seen:
            err(path + ("servers", i, "addr"), f"duplicate server {_quote(s.addr)} "
                f"(also servers[{seen[key]}])")
            found = True
        seen.setdefault(key, i)
    return found


def _build_server_entry(values: dict, path: Path, err) -> ServerEntry | None:
    given = [k for k in ("addr", "dns", "srv") if values.get(k) is not None]
    if len(given) != 1:
        err(path, "a server has exactly one of addr, dns and srv"
            + (f" (this one has {' and '.join(given)})" if given else ""))
        return None
    host, port = split_host_port(values["addr"] or values["dns"]) if values["srv"] is None \
        else (None, None)
    return ServerEntry(host=host, port=port, **values)


def _build_pool_tls(values: dict, path: Path, err) -> PoolTlsConfig | None:
    if values["ca"] is not None:
        try:
            check_ca_file(values["ca"])
        except TlsFileError as e:
            err(path + ("ca",), f"cannot load CA certificates from {_quote(values['ca'])}: {e.reason}")
            return None
    return PoolTlsConfig(**values)


BUILDERS = {
    "pool": _build_pool,
    "pool.servers": _build_server_entry,
    "pool.tls": _build_pool_tls,
}
