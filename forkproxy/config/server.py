"""The ``[server]`` table: process-wide settings.

Its keys (``SETTINGS``), each declared once, and ``ServerConfig``, made from them.
"""

from __future__ import annotations

from forkproxy.config.parsers import (
    _access_list, _addr, _bool, _duration, _enum, _error_pages, _header_names, _host_names, _int,
    _networks, _nonempty_str, _opt_str, _r_duration, _r_error_pages, _r_list, _r_networks,
    _r_size, _secret_str, _size, _workers,
)
from forkproxy.config.schema import _RELOAD, _RESTART, Section, Setting, config_classes
from forkproxy.config.units import Invalid, split_host_port

SECTIONS: tuple[Section, ...] = (
    Section(
        "server",
        "table",
        "[server]",
        "Process-wide settings: workers, client timeouts and limits, logs, files and privileges.",
        cls="ServerConfig",
        doc="""The ``[server]`` table: process-wide settings.""",
    ),
)

def _resolvers(value) -> tuple[str, ...]:
    """An array of "IP" or "IP:PORT" ("[IPv6]:PORT"), each an IP address."""
    import ipaddress

    if not isinstance(value, list):
        raise Invalid('expected an array of "IP" or "IP:PORT" strings')
    out = []
    for v in value:
        if not isinstance(v, str):
            raise Invalid('expected an array of "IP" or "IP:PORT" strings')
        try:
            ipaddress.ip_address(v)
            host = v
        except ValueError:
            host, _ = split_host_port(v)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise Invalid(f"{v!r}: a resolver is an IP address, not a name") from None
        out.append(v)
    return tuple(out)


SETTINGS: tuple[Setting, ...] = (
    Setting("server", "workers", 'integer 1..1024 or "auto"', "auto",
            'Number of worker processes. "auto" uses one per CPU. '
            "The bound keeps a typo from forking a million processes.",
            _RELOAD, _workers),
    Setting("server", "worker_connections", "integer >= 1", 10000,
            "Maximum number of concurrent client connections per worker, idle "
            "keep-alive ones included (parked ones too, forkproxy(8)).",
            _RELOAD, _int(1)),
    Setting("server", "graceful_timeout", "duration", "30s",
            "On reload or graceful stop, how long old workers may take to finish "
            "the requests in flight before they are killed. "
            "On a reload, tunnels (WebSocket, TCP listeners) are kept past it until they "
            "end or their idle timeout passes (the longest of tunnel_timeout, the routes' "
            "and the TCP listeners' idle_timeout), counted from the reload; a stop cuts "
            "them at graceful_timeout.",
            _RELOAD, _duration(False), _r_duration),
    Setting("server", "keepalive_timeout", "duration", "75s",
            "How long an idle client keep-alive connection is kept open, counted from "
            "its last response. Responses on a kept connection say "
            '"Keep-Alive: timeout=N", N a second less than this (at least 1), so that '
            "clients stop reusing it before forkproxy closes it; a request that arrives as "
            "it runs out is still answered, and the close lingers (forkproxy(8)). "
            "A connection idle over a second waits parked, without a greenlet "
            "(forkproxy(8), Idle connections). "
            '"0s" disables client keep-alive.',
            _RELOAD, _duration(True), _r_duration),
    Setting("server", "header_timeout", "duration", "10s",
            "Total time allowed to receive a request head (request line and headers).",
            _RELOAD, _duration(False), _r_duration),
    Setting("server", "body_timeout", "duration", "60s",
            "Maximum idle time between two reads of a request body.",
            _RELOAD, _duration(False), _r_duration),
    Setting("server", "send_timeout", "duration", "60s",
            "Maximum idle time between two writes to the client.",
            _RELOAD, _duration(False), _r_duration),
    Setting("server", "max_head_size", "size", "32k",
            "Largest request head accepted (request line and headers). "
            "A larger one is answered 431.",
            _RELOAD, _size(1), _r_size),
    Setting("server", "http2_max_concurrent_streams", "integer 1..10000", 100,
            "HTTP/2: most streams (requests) a client connection may have open at once "
            "(SETTINGS_MAX_CONCURRENT_STREAMS); one more is refused with REFUSED_STREAM. "
            "Streams a client reset count until their greenlet ended.",
            _RELOAD, _int(1, 10000)),
    Setting("server", "http2_max_header_list_size", "size", "32k",
            "HTTP/2: largest header list of a request, decoded (SETTINGS_MAX_HEADER_LIST_SIZE, "
            "names and values plus 32 bytes a field). A larger one, or a header block "
            "(HEADERS and CONTINUATION frames) longer than this, ends the connection with "
            "GOAWAY: HPACK bombs and CONTINUATION floods. The head made of it still meets "
            "max_head_size and max_headers (431).",
            _RELOAD, _size(64), _r_size),
    Setting("server", "http2_header_table_size", "size", "4k",
            "HTTP/2: size of the HPACK dynamic table clients may use to compress request "
            "fields (SETTINGS_HEADER_TABLE_SIZE); 0 turns it off.",
            _RELOAD, _size(0), _r_size),
    Setting("server", "http2_settings_timeout", "duration", "10s",
            "HTTP/2: how long a client has to acknowledge forkproxy's SETTINGS; past it the "
            "connection ends with GOAWAY SETTINGS_TIMEOUT. An idle HTTP/2 connection "
            "closes after keepalive_timeout (GOAWAY NO_ERROR).",
            _RELOAD, _duration(False), _r_duration),
    Setting("server", "max_headers", "integer >= 1", 100,
            "Largest number of request header fields accepted. "
            "More are answered 431.",
            _RELOAD, _int(1)),
    Setting("server", "max_uri_length", "integer >= 1", 8192,
            "Longest request target accepted, in bytes. "
            "A longer one is answered 414.",
            _RELOAD, _int(1)),
    Setting("server", "merge_slashes", "boolean", True,
            "Merge runs of slashes in request paths into one (//admin/x is /admin/x), as nginx. "
            "Every request path is canonicalised once, before anything looks at it: escapes of "
            "unreserved characters decoded (%61 is a) and other escapes written in uppercase "
            "hex, slashes merged (with this key), dot segments removed (/a/../b and /a/%2e%2e/b "
            "are /b). Routes, access, deny rules, strip_prefix, add_prefix, rewrite, redirect, "
            "explain and the cache all judge that path, and it is the path sent upstream (the "
            "query goes as received; the access log shows the target as received). A path with "
            "malformed percent-encoding (%zz, %2), %00, or a dot segment with parameters "
            "(/..;/) is answered 400. "
            "Other ;parameters are kept as sent: a server that drops them (Tomcat reads "
            "/admin;x/y as /admin/y) needs rules such as path_regex = \"^/admin[/;]\". "
            "With false, //admin/x stays another path than /admin/x, for rules and servers "
            "alike: only for servers that tell them apart.",
            _RELOAD, _bool),
    Setting("server", "encoded_slashes", '"reject" or "pass"', "reject",
            "What an encoded slash or backslash (%2F, %5C) or a raw backslash in a request path "
            'gets. "reject": 400, since no rule can know whether the server behind reads it as '
            'a separator. "pass": kept encoded (%2F, %5C, a raw backslash sent as %5C), never a '
            "separator for a rule: use it only for servers that do not decode them into "
            "separators either.",
            _RELOAD, _enum("encoded_slashes", ("reject", "pass"))),
    Setting("server", "max_body_size", "size", "100m",
            "Largest request body accepted. "
            "A larger one is answered 413. "
            "0 means unlimited. "
            "A route may override it.",
            _RELOAD, _size(0), _r_size),
    Setting("server", "trusted_proxies", "array of addresses or CIDR ranges", [],
            "Peers whose X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host and Forwarded "
            "headers are trusted and extended. "
            "Those headers from any other peer are replaced.",
            _RELOAD, _networks, _r_networks, example=["10.0.0.0/8", "192.0.2.1"]),
    Setting("server", "underscores_in_headers", "boolean", False,
            "Forward request header fields whose names contain an underscore. "
            "Off (as nginx's underscores_in_headers): such fields are dropped before the "
            "request goes upstream, the request itself is served, because CGI, WSGI and "
            "PHP backends read X_Forwarded_For and X-Forwarded-For as the same "
            "HTTP_X_FORWARDED_FOR and a client could pass off its own forwarding headers.",
            _RELOAD, _bool),
    Setting("server", "access", 'array of "allow CIDR" and "deny CIDR"', [],
            "Address access list of every route that sets none, tried in order as nginx's "
            "allow and deny: the first entry that matches the client address decides, and an "
            "address no entry matches is allowed, so an allow list ends with \"deny all\". "
            "CIDR is an IPv4 or IPv6 network, an address, or all. "
            "The client address is the real one (after trusted_proxies). "
            "A refused request is answered 403.",
            _RELOAD, _access_list, _r_list, example=["allow 10.0.0.0/8", "deny all"]),
    Setting("server", "hide_headers", "array of header names", ["Server", "X-Powered-By"],
            "Response header fields of the servers that clients never see, for every route "
            "that sets none, so the software behind forkproxy is not advertised.",
            _RELOAD, _header_names, _r_list),
    Setting("server", "error_pages", 'table of status = "path"', {},
            "Bodies of forkproxy's own error responses (no route, refused, rate limited, "
            "no server, a server that failed) per status, for every route that sets none, "
            'such as { 502 = "/etc/forkproxy/502.html", 503 = "/etc/forkproxy/503.html" }. '
            "The files are read when the configuration is loaded (at most 1m each); their "
            "Content-Type follows the extension (.html, .json, .txt). "
            "Without a page the body is the status line's text: forkproxy's error responses "
            "never name a server or carry a trace.",
            _RELOAD, _error_pages, _r_error_pages, example={"502": "/etc/forkproxy/502.html"}),
    Setting("server", "pidfile", "path", "/run/forkproxy/forkproxy.pid",
            "File where the master writes its process id.",
            _RESTART, _nonempty_str),
    Setting("server", "runtime_dir", "path", "/run/forkproxy",
            "Directory for the shared health table, lock files, the reload status, "
            "sticky.key (the random key of sticky cookies of pools without sticky.secret) "
            "and (in body/, private to the workers) request bodies larger than a route's "
            "request_buffer_memory; and servers.json, the servers added and removed at run "
            "time (forkproxyctl add-server, remove-server), kept across reloads and restarts.",
            _RESTART, _nonempty_str),
    Setting("server", "runtime_servers", "integer 0..10000", 64,
            "Rows of the health table kept for servers that come at run time, over all "
            "pools: those added with forkproxyctl add-server (or the admin endpoint) and "
            "those DNS discovery finds. "
            "Each row costs 320 + 64 x (2 x workers, at least 8) bytes of shared memory. "
            "When every row is in use, add-server fails with \"the health table is full\" "
            "and DNS discovery keeps the servers it has (it logs the error); "
            "the row of a removed server is freed once its requests in flight have ended. "
            "A reload applies a change.",
            _RELOAD, _int(0, 10000)),
    Setting("server", "user", "user name", None,
            "User the workers switch to after the master has bound the listeners, with "
            "its supplementary groups and, unless group is set, its primary group. "
            "Workers import everything they need before the switch; forkproxy -t and "
            "the start check that the user exists, can read Python's library and "
            "forkproxy's modules, can reach the log directories and, with admin, "
            "runtime_dir. "
            "The master hands it the logs, the health table and its admin lock. "
            "Unset: workers keep the master's user.",
            _RESTART, _opt_str, example="forkproxy"),
    Setting("server", "group", "group name", None,
            "Group the workers switch to. "
            "Unset: the primary group of user, or the master's group.",
            _RESTART, _opt_str, example="forkproxy"),
    Setting("server", "error_log", 'path or "-"', "-",
            'Where the error log goes. "-" is standard error. '
            "Besides the daemon's own messages, every request that forkproxy refused "
            "(a malformed request, no route, an access rule, a deny rule, a method, a limit, "
            "the rate limit) or that ended in a 5xx (no server up, a server that failed, "
            "timed out or answered 5xx itself) leaves one line saying why, such as "
            'request ID 192.0.2.7 "GET /api" -> 503: no server up in pool "api", where ID '
            'is the access log\'s request_id ("-" when the head could not be parsed); '
            'a 5xx line ends with where it failed, as [route 2, pool "api", server '
            "10.0.0.11:8080]. These lines are warnings; 500 (a bug in forkproxy) is an error and 408 "
            "(a client too slow to send its head) is info.",
            _RELOAD, _nonempty_str),
    Setting("server", "access_log", 'path, "-" or "off"', "-",
            'Where the access log goes. "-" is standard error and "off" disables it.',
            _RELOAD, _nonempty_str),
    Setting("server", "access_log_format", '"combined" or "json"', "combined",
            "Access log format: the combined format of Apache and nginx, "
            "or one JSON object per line. "
            "The size field of the combined format is bytes_sent, and forkproxy's fields "
            "follow it as name=value (upstream, upstream_status, request_time, upstream_time, "
            "route, pool, cache, request_id, peer). "
            "A JSON line always has the same keys, in this order, null when absent: "
            "time (RFC 3339, local time, such as 2026-11-29T03:13:27+00:00), client (the real "
            "client: the peer, or behind a peer in trusted_proxies the address its "
            "X-Forwarded-For vouches for), request (the request line), method, target, "
            "host (the host the request named, by its Host field or absolute target, "
            "without the port), version, status, bytes_received (the request head and the body "
            "bytes read from the client), bytes_sent (the response head and body written to "
            "it), referer, user_agent, route (its index), pool, upstream (the server that "
            "answered), upstream_status, request_time and upstream_time (seconds), cache "
            "(HIT, MISS, STALE, REVALIDATED, BYPASS or PURGE on cached routes), request_id, "
            "tls_version (such as TLSv1.3), sni (the server name the TLS client sent) and "
            "peer (the address the connection came from, or the one its PROXY header "
            "carried).",
            _RELOAD, _enum("access_log_format", ("combined", "json"))),
    Setting("server", "log_level", '"debug", "info", "warning", "error" or "critical"', "info",
            "Least severe message written to the error log.",
            _RELOAD, _enum("log_level", ("debug", "info", "warning", "error", "critical"))),
    Setting("server", "initial_health", '"up" or "down"', "up",
            "Health state of a server when forkproxy starts, or when a reload adds it. "
            '"up" sends it traffic at once (and active checks take it out if it fails fall of them); '
            '"down" keeps it out of rotation until rise active checks have succeeded, '
            "as HAProxy's init-state down. "
            'A server of a pool without active checks is always "up". '
            "Servers that stay across a reload keep their state.",
            _RELOAD, _enum("initial_health", ("up", "down"))),
    Setting("server", "tunnel_timeout", "duration", "1h",
            "How long a connection switched to another protocol (an HTTP Upgrade such as "
            "WebSocket, answered 101 by the server) may stay without a byte either way "
            "before both sides are closed. "
            "Routes may override it.",
            _RELOAD, _duration(False), _r_duration),
    Setting("server", "admin", '"HOST:PORT"', None,
            "Address of the admin endpoint: GET /status (JSON), GET /metrics (Prometheus "
            "text, summed over every worker) and POST commands (drain, maint, ready, "
            "weight, reload). It has its own listening socket, served by the workers, "
            "and never answers on a listener. Bind it to loopback: on another address "
            "every request needs server.admin_token. Unset: no admin endpoint, and no "
            "request counting (the counters exist for /metrics). "
            "See forkproxy(8).",
            _RESTART, _addr, example="127.0.0.1:9901"),
    Setting("server", "admin_token", "string", None,
            "Secret the admin endpoint requires, as Authorization: Bearer TOKEN, for "
            "every request that changes state (and for every request when server.admin "
            "is not a loopback address). Unset: commands are refused. forkproxyctl "
            "reads it from here or from $FORKPROXY_ADMIN_TOKEN.",
            _RELOAD, _secret_str, example="change-me", secret=True),
    Setting("server", "admin_names", "array of host names", [],
            "Host names the admin endpoint answers to, besides localhost, the name in "
            "server.admin and any IP address. A request with another Host is answered 421, "
            "so a web page that rebinds its own DNS name to the admin address (DNS "
            "rebinding) cannot read /status, /metrics or /explain from a browser. "
            "The port of the Host is not compared (an SSH tunnel changes it).",
            _RELOAD, _host_names, _r_list, example=["forkproxy-admin.internal"]),
    # DNS discovery: { dns = "NAME:PORT" } and { srv = "NAME" } servers of pools
    Setting("server", "resolvers", 'array of "IP" or "IP:PORT"', [],
            "DNS servers that resolve the dns and srv entries of pools' servers "
            "(port 53 unless given). "
            "Empty: the system's, from /etc/resolv.conf.",
            _RELOAD, _resolvers, _r_list, example=["10.0.0.2", "127.0.0.1:8600"]),
    Setting("server", "dns_min_ttl", "duration", "1s",
            "Shortest time between two resolutions of a dns or srv entry, whatever the "
            "TTL of the answer; also the time before a failed resolution is tried again.",
            _RELOAD, _duration(False), _r_duration),
    Setting("server", "dns_max_ttl", "duration", "5m",
            "Longest time between two resolutions of a dns or srv entry, whatever the "
            "TTL of the answer.",
            _RELOAD, _duration(False), _r_duration),
)

CLASSES = config_classes(SECTIONS, SETTINGS, __name__)
ServerConfig = CLASSES["server"]
