"""Layer 4: relay a client connection byte for byte to a server of a pool.

``serve(rt, listener, client, peer, local)`` is what ``Runtime.handle`` runs
for a ``mode = "tcp"`` listener (after the TLS handshake, when the listener
terminates TLS, and after reading the client's PROXY header, when it
accepts one):

- the server is chosen by the pool's balancer (the client's address is the
  key of ip_hash and hash) through ``net.forward.ServerChoice``, as for an
  HTTP request; a connect error or timeout counts as a passive
  failure and the next server is tried, each at most once; when none can
  be reached the client connection is closed (there is nothing else to say
  at Layer 4);
- the pool's ``proxy_protocol`` header goes first to the server, carrying
  the client's address and the address it connected to;
- bytes then flow both ways through ``net.tunnel.Relay`` until both sides
  are done, or ``idle_timeout`` passes without a byte either way.
"""

from __future__ import annotations

import random
import socket
import time

from forkproxy.config import ListenerConfig
from forkproxy.core import proxy_protocol
from forkproxy.net.forward import ServerChoice
from forkproxy.net.tls import wrap_upstream
from forkproxy.net.tunnel import Relay

_RNG = random.Random()


def serve(rt, listener: ListenerConfig, client, peer: tuple, local: tuple) -> None:
    """Relay ``client`` to a server of the listener's pool until both sides are done.

    ``peer`` is the client's (ip, port) (from the PROXY header when the
    listener accepts one), ``local`` the address it connected to.  Never
    raises for a network reason; closes ``client``.
    """
    pool = rt.pools[listener.pool]
    up = None
    i = None
    try:
        up, i = _connect(rt, pool, peer, local)
        if up is None:
            return
        pool.begin(i)
        try:
            Relay(client, up, listener.idle_timeout, tls_client=hasattr(client, "unwrap")).run()
        finally:
            pool.end(i)
    finally:
        for s in (client, up):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass


def _connect(rt, pool, peer, local):
    """(socket, index) of the first server that accepts; (None, None) when none does."""
    cfg = pool.cfg
    key = peer[0].encode() if peer else None
    choice = ServerChoice(pool, lambda tried: pool.pick_key(key, _RNG, tried))
    while True:
        i = choice.next()
        if i is None:
            rt.log.error("tcp pool=%s: no server available for %s%s", pool.name,
                         peer[0] if peer else "-", " (all tried)" if choice.tried else "")
            return None, None
        server = pool.servers[i]
        try:
            up = socket.create_connection((server.host, server.port), timeout=cfg.connect_timeout)
            up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if cfg.tls is not None:
                up = wrap_upstream(up, cfg.tls, server.host, cfg.connect_timeout)
            if cfg.proxy_protocol:
                up.settimeout(cfg.send_timeout)
                up.sendall(proxy_protocol.encode(cfg.proxy_protocol, peer, local))
        except (OSError, ValueError) as exc:  # socket.timeout and ssl.SSLError are OSErrors
            reason = "timed out" if isinstance(exc, socket.timeout) else (
                getattr(exc, "reason", None) or exc.strerror or exc)
            rt.log.warning("tcp pool=%s server=%s: connect: %s", pool.name, server.addr, reason)
            pool.failed(i, time.time())
            pool.outcome(i, None)
            choice.failed(i)
            continue
        pool.outcome(i, 0)  # connected: a success for outlier detection
        return up, i
