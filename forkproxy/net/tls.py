"""TLS in a worker: terminate clients' TLS (SNI among a listener's certificates),
and speak TLS to the servers of pools that ask for it.

Server side.  The ``ssl.SSLContext`` objects of a listener are built by
``net.tls_contexts`` (gevent-free), which the configuration loader calls when
the file is loaded, in the master, before the workers fork: every worker of a
generation shares their session ticket keys
(a client resumes its session whichever worker accepts it) and keys are read
with the master's privileges.  A reload loads the files again, so new
certificates reach the next generation of workers; old workers keep theirs.
The handshake runs in the connection's own greenlet (gevent's ``SSLSocket``
is cooperative), never in the accept loop, bounded by ``header_timeout``.

Client side.  ``client_context(pool_tls)`` is one gevent ``SSLContext`` per
pool setting (verification against the pool's CA file or the system's), and
``wrap_upstream`` does the handshake with the pool's connect timeout, resuming
the last session of the same server when it can.
"""

from __future__ import annotations

import functools
import socket
import ssl
import weakref

from gevent import ssl as gssl

from forkproxy.config import ListenerConfig, PoolTlsConfig

# The SNI name each accepted connection sent, by connection (forgotten with it).
_SERVER_NAMES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class HandshakeFailed(Exception):
    """A client's TLS handshake failed; ``reason`` is the one log line's text."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class ListenerTLS:
    """The TLS side of one listener: SNI selection over its certificates.

    The first certificate is the default (no SNI, or a name no certificate
    holds).  An exact name wins over a wildcard; ``*.example.com`` covers one
    label (``a.example.com``, not ``example.com`` nor ``a.b.example.com``).
    The name a client sent is kept on its connection (``tls_server_name``).
    """

    def __init__(self, listener: ListenerConfig):
        self.contexts = listener.contexts
        self.default = listener.contexts[0]
        self.exact: dict[str, ssl.SSLContext] = {}
        self.wild: dict[str, ssl.SSLContext] = {}
        for cert, ctx in zip(listener.certs or (listener.tls,), listener.contexts):
            for name in cert.names:
                if name.startswith("*."):
                    self.wild.setdefault(name[2:], ctx)
                else:
                    self.exact.setdefault(name, ctx)
        self.default.sni_callback = self._on_sni

    def choose(self, server_name: str | None) -> ssl.SSLContext:
        """The context whose certificate serves ``server_name``."""
        if not server_name:
            return self.default
        name = server_name.lower().rstrip(".")
        ctx = self.exact.get(name)
        if ctx is None:
            parent = name.partition(".")[2]
            ctx = self.wild.get(parent) if parent else None
        return ctx or self.default

    def _on_sni(self, conn, server_name, ctx) -> None:
        # The context is a stdlib one (built in the master): OpenSSL hands
        # the callback gevent's inner socket, which points back at the
        # SSLSocket: the connection, whose context may change.
        owner = conn._sslsock() if hasattr(conn, "_sslsock") else conn
        if server_name is not None:
            _SERVER_NAMES[owner] = server_name
        chosen = self.choose(server_name)
        if chosen is not ctx:
            owner.context = chosen

    def accept(self, sock: socket.socket, timeout: float):
        """Handshake on an accepted socket; the TLS socket, or ``HandshakeFailed``.

        On failure the socket is closed.
        """
        try:
            tls = gssl.SSLSocket(sock=sock, server_side=True, do_handshake_on_connect=False,
                                 _context=self.default)
        except (OSError, ValueError) as exc:
            _close(sock)
            raise HandshakeFailed(f"cannot start TLS: {exc}") from None
        tls.settimeout(timeout)
        try:
            tls.do_handshake()
        except socket.timeout:
            _close(tls)
            raise HandshakeFailed("TLS handshake timed out") from None
        except ssl.SSLError as exc:
            _close(tls)
            reason = exc.reason or str(exc)
            if reason == "HTTP_REQUEST":
                reason = "plain HTTP sent to a TLS port"
            raise HandshakeFailed(f"TLS handshake failed: {reason}") from None
        except OSError as exc:
            _close(tls)
            raise HandshakeFailed(f"TLS handshake failed: {exc.strerror or exc}") from None
        return tls


def tls_server_name(tls) -> str | None:
    """The server name a client sent in SNI on an accepted connection (None: none)."""
    return _SERVER_NAMES.get(tls)


def _close(sock) -> None:
    try:
        sock.close()
    except OSError:
        pass


@functools.lru_cache(maxsize=None)
def client_context(cfg: PoolTlsConfig, alpn: tuple = ()) -> ssl.SSLContext:
    """A client context for a pool's ``tls = { ... }`` (one per distinct setting)."""
    ctx = gssl.create_default_context(cafile=cfg.ca)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    if not cfg.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def wrap_upstream(sock: socket.socket, cfg: PoolTlsConfig, host: str, timeout: float,
                  session=None, alpn: tuple = ()):
    """TLS over a connected upstream socket, handshake done within ``timeout``.

    ``host`` is the server's host as configured (``cfg.sni`` overrides it):
    sent as SNI unless it is an IP address, and checked against the
    certificate when verifying.  Raises ``ssl.SSLError``/``OSError``/
    ``socket.timeout``; the socket is closed then.  ``alpn``: the
    protocols offered by ALPN (("h2",) for a pool with protocol "h2").
    """
    ctx = client_context(cfg, alpn)
    try:
        tls = ctx.wrap_socket(sock, server_hostname=cfg.sni or host, do_handshake_on_connect=False,
                              session=session)
        tls.settimeout(timeout)
        tls.do_handshake()
    except BaseException:
        _close(sock)
        raise
    return tls
