"""HTTP Upgrade and WebSocket through forkproxy: real clients, real servers.

The WebSocket servers are ``websockets`` echo servers, each its own process
(``WS_SERVER`` below); the client is ``websocket-client``.  Plain HTTP
answers to an Upgrade come from the harness's backend.py.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from support.configs import one_pool
from support.procs import Proc, free_port, wait_for_port, wait_until
from support.rawhttp import Conn
from support.runner import _child_env

websocket = pytest.importorskip("websocket")  # websocket-client
pytest.importorskip("websockets")

WS_SERVER = r"""
import sys
from websockets.sync.server import serve

name = sys.argv[2]

def echo(ws):
    for msg in ws:
        if msg == "who":
            ws.send(name)
        elif msg == "headers":
            ws.send(repr(sorted(ws.request.headers.raw_items())))
        else:
            ws.send(msg)

with serve(echo, "127.0.0.1", int(sys.argv[1]), max_size=None) as server:
    server.serve_forever()
"""


class WsServer:
    def __init__(self, directory, name):
        self.name = name
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.proc = Proc([sys.executable, "-c", WS_SERVER, str(self.port), name], directory,
                         name=f"ws-{name}", env=_child_env())
        wait_for_port(self.port, proc=self.proc)

    def stop(self):
        self.proc.stop()


@pytest.fixture
def ws_servers(tmp_path):
    made = []

    def make(n=1):
        for i in range(n):
            made.append(WsServer(tmp_path / "ws", f"ws{len(made) + 1}"))
        return made[-n:]

    yield make
    for s in made:
        s.stop()


def config(port, servers, route_extra="", pool_extra="") -> str:
    return one_pool(port, [s.addr for s in servers], pool_extra, route_extra)


def ctl(fp, *args):
    return subprocess.run([sys.executable, "-m", "forkproxy.ctl", "-c", str(fp.config_path), *args],
                          capture_output=True, text=True, timeout=30, env=_child_env())


def test_websocket_echo(ws_servers, forkproxy_factory):
    (ws,) = ws_servers(1)
    port = free_port()
    forkproxy_factory(config(port, [ws]))
    c = websocket.create_connection(f"ws://127.0.0.1:{port}/chat", timeout=10)
    try:
        for msg in ("hello", "é" * 1000, "x" * 300_000):
            c.send(msg)
            assert c.recv() == msg
        c.send_binary(bytes(range(256)) * 4096)
        assert c.recv() == bytes(range(256)) * 4096
        c.send("headers")
        seen = c.recv().lower()
        assert "x-forwarded-for" in seen and "sec-websocket-key" in seen
    finally:
        c.close()


def test_upgrade_answered_with_http_keeps_parsing_http(backend_factory, forkproxy_factory):
    b = backend_factory("b1")
    port = free_port()
    fp = forkproxy_factory(config(port, [b]))
    with Conn(port) as c:
        c.send(b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        r = c.reply()
        assert r.status == 200
        sent = {n.lower(): v for n, v in json.loads(r.body)["headers"]}
        assert sent["upgrade"] == "websocket" and sent["connection"].lower() == "upgrade"
        # the same connection carries the next request
        c.send(b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n")
        r = c.reply()
        sent = {n.lower() for n, v in json.loads(r.body)["headers"]}
        assert "upgrade" not in sent  # not asked for (no Connection: upgrade): hop-by-hop
    assert fp.alive()


def test_idle_tunnel_closed_after_tunnel_timeout(ws_servers, forkproxy_factory):
    (ws,) = ws_servers(1)
    port = free_port()
    forkproxy_factory(config(port, [ws], route_extra='tunnel_timeout = "1s"'))
    c = websocket.create_connection(f"ws://127.0.0.1:{port}/", timeout=30)
    try:
        c.send("ping")
        assert c.recv() == "ping"
        # Silent both ways: the proxy ends the tunnel (the read sees the close).
        with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
            c.recv()
    finally:
        c.close()


def test_tunnel_survives_a_reload(ws_servers, forkproxy_factory):
    (ws,) = ws_servers(1)
    port = free_port()
    fp = forkproxy_factory(config(port, [ws]), server={"graceful_timeout": "60s"})
    old = set(fp.wait_workers())
    c = websocket.create_connection(f"ws://127.0.0.1:{port}/", timeout=10)
    try:
        c.send("before")
        assert c.recv() == "before"
        fp.reload()
        wait_until(lambda: not old & set(fp.worker_pids()) or len(fp.worker_pids()) > len(old),
                   what="the new generation of workers")
        for i in range(5):
            c.send(f"after {i}")
            assert c.recv() == f"after {i}"
        c2 = websocket.create_connection(f"ws://127.0.0.1:{port}/", timeout=10)
        c2.send("new")
        assert c2.recv() == "new"
        c2.close()
    finally:
        c.close()


def test_a_tunnel_outlives_graceful_timeout_after_a_reload(ws_servers, forkproxy_factory):
    """A reload's drain keeps tunnels up to their own timeout (here 1h), not
    graceful_timeout (1s): a changed file does not cut WebSocket users.  The
    old worker's log line says when graceful_timeout has passed."""
    (ws,) = ws_servers(1)
    port = free_port()
    fp = forkproxy_factory(config(port, [ws]), server={"graceful_timeout": "1s", "workers": 1})
    c = websocket.create_connection(f"ws://127.0.0.1:{port}/", timeout=10)
    try:
        c.send("before")
        assert c.recv() == "before"
        fp.reload_and_wait()
        fp.wait_error_log("keeping 1 tunnels until they end")
        for i in range(3):
            c.send(f"after {i}")
            assert c.recv() == f"after {i}"
    finally:
        c.close()


def test_upgrade_never_goes_to_a_server_in_drain(ws_servers, forkproxy_factory):
    a, b = ws_servers(2)
    port = free_port()
    fp = forkproxy_factory(config(port, [a, b], pool_extra='sticky = { cookie = "srv" }'))
    c = websocket.create_connection(f"ws://127.0.0.1:{port}/", timeout=10)
    c.send("who")
    first = c.recv()
    c.close()
    token = None
    # the sticky cookie of the first server, from a fresh upgrade's 101
    while token is None:
        ws = websocket.create_connection(f"ws://127.0.0.1:{port}/", timeout=10)
        ws.send("who")
        if ws.recv() == first:
            cookie = ws.getheaders().get("set-cookie", "")
            token = cookie.split(";")[0].partition("=")[2]
        ws.close()
    pinned = a if first == a.name else b
    ws = websocket.create_connection(f"ws://127.0.0.1:{port}/", timeout=10, cookie=f"srv={token}")
    ws.send("who")
    assert ws.recv() == first
    ws.close()
    assert ctl(fp, "drain", "web", pinned.addr).returncode == 0

    def moved():
        w = websocket.create_connection(f"ws://127.0.0.1:{port}/", timeout=10,
                                        cookie=f"srv={token}")
        try:
            w.send("who")
            return w.recv() != first
        finally:
            w.close()

    wait_until(lambda: all(moved() for _ in range(8)), timeout=30,
               what="sticky upgrades off the drained server")
