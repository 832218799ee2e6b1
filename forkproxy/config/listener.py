"""``[[listener]]`` tables and their certificates (``tls = { ... }``, ``certs = [{ ... }]``).

Their keys, each declared once, the dataclasses made from them
(``ListenerConfig``, ``TlsCert``), and the builder that loads the
certificates into TLS server contexts (``forkproxy.net.tls_contexts``) while
the master reads the file.
"""

from __future__ import annotations

import ipaddress

from forkproxy.config.parsers import (
    _bind, _bool, _ciphers, _duration, _enum, _int, _name, _networks, _nonempty_str,
    _r_duration, _r_networks,
)
from forkproxy.config.schema import (
    _RELOAD, _RESTART, LAST, REQUIRED, Derived, Path, Section, Setting, config_classes, copied,
)
from forkproxy.config.units import _quote, split_host_port
from forkproxy.net.tls_contexts import TlsFileError, cert_names, server_context

# Mozilla's "intermediate" TLS 1.2 suites (TLS 1.3 suites are OpenSSL's own
# and not set by this list): forward secrecy and AEAD only.
DEFAULT_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20"

# Whom a listener with accept_proxy takes PROXY headers from, unless told.
LOOPBACK_NETWORKS = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))

SECTIONS: tuple[Section, ...] = (
    Section(
        "listener",
        "array",
        "[[listener]]",
        "One table per listening socket. At least one is required.",
        required=True,
        need="no listener: add at least one [[listener]] table with name and bind",
        cls="ListenerConfig",
        doc="""One ``[[listener]]``; ``host``/``port`` are parsed from ``bind``.

        ``certs`` holds every certificate (``tls`` alone is one item; the first
        is the default for clients without SNI); empty: no TLS.  ``contexts``
        are the server ``ssl.SSLContext`` objects, one per certificate, built
        (certificate and key read) when the file is loaded: the master builds
        them before forking, so every worker shares the session ticket keys and
        reads keys with the master's privileges.  ``pool`` and
        ``idle_timeout`` apply to ``mode = "tcp"`` only.
        """,
        derived=(Derived("host", after="bind"), Derived("port", after="bind"),
                 Derived("contexts", after=LAST, default=(), compare=False, repr=False)),
    ),
    Section(
        "listener.tls",
        "table",
        "tls = { ... }",
        "TLS termination with one certificate, as an inline table such as "
        '{ cert = "/etc/forkproxy/tls/site.pem", key = "/etc/forkproxy/tls/site.key" }. '
        "With several certificates use certs instead (not both). "
        "The certificate and key are read when the file is loaded, by the master "
        "(so with its privileges), at start, at forkproxy -t and at every reload: "
        "one that cannot be read or does not match its key is a configuration error, "
        "and a reload with such an error keeps the running certificates. "
        "Clients get ALPN h2 and http/1.1 on HTTP listeners (http/1.1 only with "
        "http2 = false), session resumption (tickets and a "
        "session cache, shared by all workers of a generation), and the listener's "
        "tls_min_version and ciphers. "
        "Requests that arrive over TLS are forwarded with X-Forwarded-Proto: https and "
        "Forwarded: proto=https. "
        "A handshake failure, or a client speaking plain HTTP to the port, costs one log "
        "line and the connection. "
        "On a tcp listener the decrypted stream is relayed to the pool.",
        optional=True,
        cls="TlsCert",
        doc="""One certificate of a TLS listener (``tls = {...}`` or an item of ``certs``).

        ``names`` are the DNS names the certificate holds (subjectAltName, else
        the subject's CN), read when the file is loaded; SNI chooses by them.
        """,
        derived=(Derived("names", after=LAST, default=(), compare=False),),
    ),
    Section(
        "listener.certs",
        "array",
        "certs = [{ ... }]",
        "TLS termination with several certificates, as an array of inline tables such as "
        '[{ cert = "a.pem", key = "a.key" }, { cert = "b.pem", key = "b.key" }]. '
        "Each handshake gets the certificate whose names (subjectAltName DNS names, or the "
        "subject's CN when it has none) match the client's SNI name: an exact name first, "
        'then a wildcard "*.example.com" matching one label. '
        "Clients without SNI, or with a name no certificate holds, get the first one. "
        "Everything said of tls applies.",
        cls="TlsCert",
        doc="""One certificate of a TLS listener (``tls = {...}`` or an item of ``certs``).

        ``names`` are the DNS names the certificate holds (subjectAltName, else
        the subject's CN), read when the file is loaded; SNI chooses by them.
        """,
        derived=(Derived("names", after=LAST, default=(), compare=False),),
    ),
)

SETTINGS: tuple[Setting, ...] = (
    Setting("listener", "name", "name", REQUIRED,
            "Unique name of the listener, used by routes and in logs.",
            _RESTART, _name, example="web"),
    Setting("listener", "bind", '"HOST:PORT", "[IPv6]:PORT" or ":PORT"', REQUIRED,
            'Address to listen on. ":PORT" listens on every IPv4 address. '
            "Each bind must be unique.",
            _RESTART, _bind, example="0.0.0.0:80"),
    Setting("listener", "mode", '"http" or "tcp"', "http",
            '"http" proxies HTTP/1.1 requests along the routes. '
            '"tcp" (Layer 4) relays every connection byte for byte to a server of the '
            "listener's pool, chosen by the pool's balance, with its active checks, passive "
            "failures on connect errors and a connect retry to another server; "
            "a half-close is passed on in both directions. "
            "Routes do not apply to tcp listeners.",
            _RELOAD, _enum("mode", ("http", "tcp"))),
    Setting("listener", "pool", "pool name", None,
            "The pool a tcp listener relays its connections to. Required with mode = \"tcp\".",
            _RELOAD, _name, example="db", when=("mode", "tcp")),
    Setting("listener", "idle_timeout", "duration", "10m",
            "A tcp listener's connection is closed after this long without a byte in "
            "either direction, as nginx's proxy_timeout and HAProxy's timeout tunnel.",
            _RELOAD, _duration(False), _r_duration, when=("mode", "tcp")),
    Setting("listener", "max_conns_per_ip", "integer 0..1000000", 0,
            "Most connections open at once from one client address on this listener, "
            "counted over every worker; an extra one is closed as soon as it is accepted. "
            "The address is the peer's (behind accept_proxy, the load balancer's). "
            "0: no limit.",
            _RELOAD, _int(0, 1000000)),
    Setting("listener", "accept_proxy", "boolean", False,
            "Every connection starts with a PROXY protocol header (v1 or v2, as HAProxy's "
            "accept-proxy) from a trusted load balancer in front: the client address it "
            "carries replaces the peer's in logs, forwarding headers and PROXY headers sent "
            "on. A connection without a valid header is closed. "
            "Only peers in proxy_protocol_from may connect (loopback unless told): "
            "give the load balancers' addresses there.",
            _RELOAD, _bool),
    Setting("listener", "proxy_protocol_from", "array of addresses or CIDR ranges",
            ["127.0.0.0/8", "::1/128"],
            "With accept_proxy, the peers whose PROXY headers are believed, as nginx's "
            "set_real_ip_from: a connection from any other address is closed before a "
            "byte is read, with a warning in the error log, so a client that reaches the "
            "listener directly cannot choose its own address. "
            "HAProxy's accept-proxy believes every peer; [\"0.0.0.0/0\", \"::/0\"] does the same.",
            _RELOAD, _networks, _r_networks, example=["10.0.0.0/24"]),
    Setting("listener", "http2", "boolean", None,
            "Serve HTTP/2 to clients (RFC 9113) as well as HTTP/1.1. "
            "Unset: true on TLS listeners, false on plain ones. "
            "On a TLS listener ALPN offers h2, then http/1.1. "
            "On a plain listener, clients that open with the HTTP/2 connection preface "
            "(h2c with prior knowledge, as curl --http2-prior-knowledge) speak HTTP/2 and "
            "the others HTTP/1.1, on the same port; Upgrade: h2c is not offered. "
            "Each stream is one request through the same routes, rules, cache, compression "
            "and pools as HTTP/1.1 (servers are spoken to in HTTP/1.1); the access log "
            "says HTTP/2.0. Limits: the [server] keys http2_*.",
            _RELOAD, _bool, example=True, when=("mode", "http")),
    Setting("listener", "tls_min_version", '"1.0", "1.1", "1.2" or "1.3"', "1.2",
            "Oldest TLS version accepted from clients on a TLS listener. "
            "OpenSSL's security level may refuse 1.0 and 1.1 even when allowed here.",
            _RELOAD, _enum("tls_min_version", ("1.0", "1.1", "1.2", "1.3"))),
    Setting("listener", "ciphers", "OpenSSL cipher list", DEFAULT_CIPHERS,
            "TLS 1.2 and older cipher suites offered on a TLS listener, in OpenSSL's "
            "syntax, server preference first. "
            "The default is Mozilla's intermediate list (forward secrecy and AEAD only). "
            "TLS 1.3 suites are OpenSSL's defaults.",
            _RELOAD, _ciphers),
    # tls = { ... } and certs = [{ ... }]
    Setting("listener.tls", "cert", "path", REQUIRED,
            "PEM file with the certificate, followed by its intermediates.",
            _RELOAD, _nonempty_str, example="/etc/forkproxy/tls/site.pem"),
    Setting("listener.tls", "key", "path", REQUIRED,
            "PEM file with the private key of cert (unencrypted).",
            _RELOAD, _nonempty_str, example="/etc/forkproxy/tls/site.key"),
)
SETTINGS += copied(SETTINGS, "listener.tls", "listener.certs")

CLASSES = config_classes(SECTIONS, SETTINGS, __name__)
ListenerConfig = CLASSES["listener"]
TlsCert = CLASSES["listener.tls"]


# Builders: the values of one table (parsed, keyed by field) -> its
# dataclass, with the checks that involve several keys of the table.
# ``err(path, message)`` records an error.


def _build_listener(values: dict, path: Path, err) -> ListenerConfig | None:
    """The ListenerConfig, with the TLS server contexts of its certificates
    built now (net.tls_contexts), in the master: None when one cannot be."""
    host, port = split_host_port(values["bind"], default_host="0.0.0.0")
    if values["mode"] == "tcp" and values["pool"] is None:
        err(path + ("mode",), 'a tcp listener needs pool = "NAME": the pool it relays to')
        return None
    if values["tls"] is not None and values["certs"]:
        err(path + ("certs",), "tls and certs are exclusive: list every certificate in certs")
        return None
    certs = (values["tls"],) if values["tls"] is not None else values["certs"]
    alpn = None if values["mode"] != "http" else (
        ("h2", "http/1.1") if values["http2"] is not False else ("http/1.1",))
    contexts, named = [], []
    for n, c in enumerate(certs):
        where = path + (("tls",) if values["tls"] is not None else ("certs", n))
        try:
            contexts.append(server_context(c.cert, c.key, values["tls_min_version"],
                                           values["ciphers"], alpn=alpn))
        except TlsFileError as e:
            if e.missing:
                err(where + (e.which,), f"cannot read {_quote(e.path)}: no such file")
            else:
                err(where + ("cert",), f"cannot load certificate {_quote(c.cert)} with key "
                    f"{_quote(c.key)}: {e.reason}")
            return None
        named.append(TlsCert(c.cert, c.key, cert_names(c.cert)))
    if values["tls"] is not None:
        values["tls"] = named[0]
    else:
        values["certs"] = tuple(named)
    return ListenerConfig(host=host, port=port, contexts=tuple(contexts), **values)


BUILDERS = {"listener": _build_listener}


def serves_http2(lc: ListenerConfig) -> bool:
    """Whether listener ``lc`` speaks HTTP/2 to clients: its ``http2``, or
    when unset, whether it is a TLS listener (ALPN offers h2)."""
    if lc.mode != "http":
        return False
    return bool(lc.contexts) if lc.http2 is None else lc.http2
