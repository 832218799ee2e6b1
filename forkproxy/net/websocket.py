"""WebSocket (any protocol upgrade a route allows): after a 101, a two-way tunnel.

``forward.attempt`` calls ``tunnel`` when the server switched protocols for a
request that asked it to (``forward.upgrade_asked``); the bytes then go both
ways through ``net.tunnel.Relay``, the relay the L4 proxy (``net.tcp_proxy``)
uses too.
"""

from __future__ import annotations

import time

from forkproxy.net import response
from forkproxy.net.sockio import sendall
from forkproxy.net.tunnel import Relay
from forkproxy.net.upstream import UpstreamConn


def tunnel(s, tx, conn: UpstreamConn, resp, early: bytes, extra=()) -> bool:
    """A 101 to a request that asked for it: relay bytes both ways until both end.

    The tunnel counts as a request in flight to its server (least_conn,
    max_conns) for its whole life; it ends when either side closes or
    resets, or after the route's tunnel_timeout without a byte either way.
    A draining worker lets it run (up to graceful_timeout).  Bytes that
    already came past the heads on either side (``early`` from the server,
    ``s.buf`` from the client) go first.  Returns False: the client
    connection is done.
    """
    rt, rc, rec = s.rt, tx.rc, tx.rec
    rec.status = rec.upstream_status = 101
    s._send(response.interim_head(resp, extra) + early)
    rec.upstream_time = time.time() - tx.upstream_start
    up = conn.sock
    try:
        if s.buf:
            up.settimeout(conn.send_timeout)  # the pool's, or the route's
            sendall(up, s.buf)
            s.buf = b""
        timeout = rc.tunnel_timeout if rc.tunnel_timeout is not None \
            else rt.cfg.server.tunnel_timeout
        Relay(s.client, up, timeout,
              tls_client=hasattr(s.client, "unwrap")).run()
    except OSError:  # the server went away before the early bytes reached it
        pass
    finally:
        conn.close()
    return False
