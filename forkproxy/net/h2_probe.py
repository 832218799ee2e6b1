"""An active health check over HTTP/2 (pools with ``protocol = "h2c"`` or ``"h2"``).

One GET (the check's method) of the check's path on a new connection: h2c with
prior knowledge, or TLS with ALPN h2 under the pool's ``tls``; the ``h2``
library frames it.  ``net.checker.probe`` bounds the whole with the check's
timeout and judges the status and body as for HTTP/1.1.
"""

from __future__ import annotations

import socket

import h2.config
import h2.connection
import h2.events

from forkproxy.net.tls import wrap_upstream


def get(server, health, tls, limit: int) -> tuple[int, bytes]:
    """(status, at most ``limit`` bytes of the body) of the check of ``server``."""
    sock = socket.create_connection((server.host, server.port), timeout=health.timeout)
    try:
        if tls is not None:
            sock = wrap_upstream(sock, tls, server.host, health.timeout, alpn=("h2",))
            if sock.selected_alpn_protocol() != "h2":
                raise ConnectionResetError("the server did not choose h2 by ALPN")
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                                    header_encoding="utf-8"))
        conn.initiate_connection()
        path = health.path if health.path.startswith("/") else "/" + health.path
        conn.send_headers(1, [(":method", health.method), (":scheme",
                                                            "https" if tls else "http"),
                              (":authority", health.host or server.addr), (":path", path)],
                          end_stream=True)
        sock.sendall(conn.data_to_send())
        return _answer(sock, conn, limit)
    finally:
        sock.close()


def _answer(sock, conn, limit: int) -> tuple[int, bytes]:
    status, body = None, b""
    while True:
        data = sock.recv(65536)
        if not data:
            raise ConnectionResetError("the server closed the connection")
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == 1:
                status = int(dict(ev.headers)[":status"])
            elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == 1:
                body += ev.data
                conn.acknowledge_received_data(ev.flow_controlled_length, 1)
            elif isinstance(ev, h2.events.StreamReset) and ev.stream_id == 1:
                raise ConnectionResetError("the server reset the check's stream")
            elif isinstance(ev, h2.events.ConnectionTerminated):
                raise ConnectionResetError("the server sent GOAWAY")
            if status is not None and (isinstance(ev, h2.events.StreamEnded)
                                       or len(body) >= limit):
                return status, body[:limit]
        out = conn.data_to_send()
        if out:
            sock.sendall(out)
