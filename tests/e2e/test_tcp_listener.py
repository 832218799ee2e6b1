"""Layer 4 listeners, end to end: real forkproxy, real sockets on 127.0.0.1.

The servers behind the pools are small TCP servers run by the test (a
thread each, on their own port): they echo, count, or close their side
first, and read back the PROXY header forkproxy sends them.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import trustme

from forkproxy.core import proxy_protocol as pp
from support.procs import free_port, wait_until
from support.runner import _child_env



def config_test(path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "forkproxy", "-t", "-c", str(path)],
                          capture_output=True, text=True, env=_child_env(), timeout=30)


class TcpServer:
    """A threaded TCP server.  ``mode``: "echo" (echo to EOF, then half-close),
    "count" (read to EOF, answer the byte count, close), "first" (send
    b"bye", half-close, then read to EOF).  ``proxy``: read a PROXY header
    first and keep it in ``headers``."""

    def __init__(self, mode="echo", proxy=False, tls=None):
        self.mode, self.proxy, self.tls = mode, proxy, tls
        self.headers: list = []
        self.received: list[bytes] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.addr = f"127.0.0.1:{self.port}"
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopped:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        try:
            rest = b""
            if self.proxy:
                buf = b""
                while (h := pp.parse(buf)) is pp.NEED_MORE:
                    buf += conn.recv(1)
                self.headers.append(h)
                rest = buf[h.length:]
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            if self.mode == "first":
                conn.sendall(b"bye")
                conn.shutdown(socket.SHUT_WR)
            total, got = len(rest), [rest]
            while data := conn.recv(1 << 20):
                total += len(data)
                if self.mode == "echo":
                    conn.sendall(data)
                elif self.mode == "first":
                    got.append(data)
            self.received.append(b"".join(got))
            if self.mode == "count":
                conn.sendall(b"%d\n" % total)
            elif self.mode == "echo":
                conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            conn.close()

    def stop(self):
        self.stopped = True
        self.sock.close()


@pytest.fixture
def servers():
    made = []

    def make(*a, **kw):
        s = TcpServer(*a, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


def tcp_proxy(forkproxy_factory, port, pool_servers, listener_extra="", pool_extra="", extra="",
              server=None):
    addrs = ", ".join(f'{{ addr = "{a}" }}' for a in pool_servers)
    return forkproxy_factory(f"""
[[listener]]
name = "l4"
bind = "127.0.0.1:{port}"
mode = "tcp"
pool = "back"
{listener_extra}
{extra}
[pool.back]
servers = [{addrs}]
connect_timeout = "2s"
{pool_extra}
""", server=server, ready=False)


def recv_all(sock) -> bytes:
    out = []
    while data := sock.recv(1 << 20):
        out.append(data)
    return b"".join(out)


def test_bytes_relayed_both_ways_with_half_close(servers, forkproxy_factory):
    echo = servers("echo")
    port = free_port()
    tcp_proxy(forkproxy_factory, port, [echo.addr]).wait_ready(port, mode="tcp")
    payload = bytes(range(256)) * 4096  # 1 MiB, every byte value
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        c.sendall(payload)
        c.shutdown(socket.SHUT_WR)  # the client is done sending, still reading
        assert recv_all(c) == payload


def test_server_half_close_passed_on(servers, forkproxy_factory):
    """The server closes its side first; the client's later bytes still arrive."""
    first = servers("first")
    port = free_port()
    tcp_proxy(forkproxy_factory, port, [first.addr]).wait_ready(port, mode="tcp")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        assert recv_all(c) == b"bye"  # EOF from the server passed on
        c.sendall(b"after the server's EOF")
        c.shutdown(socket.SHUT_WR)
    wait_until(lambda: b"after the server's EOF" in first.received, what="the late bytes")


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_proxy_protocol_sent_to_servers(version, servers, forkproxy_factory):
    srv = servers("echo", proxy=True)
    port = free_port()
    tcp_proxy(forkproxy_factory, port, [srv.addr],
              pool_extra=f'proxy_protocol = "{version}"').wait_ready(port, mode="tcp")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        c.sendall(b"hello")
        c.shutdown(socket.SHUT_WR)
        assert recv_all(c) == b"hello"
        me = c.getsockname()
    # (wait_ready's probe connection may have sent its own header meanwhile)
    (h,) = [h for h in srv.headers if h.src == (me[0], me[1])]
    assert h.version == int(version[1])
    assert h.dst == ("127.0.0.1", port)


def test_accept_proxy_reads_the_client_address_and_passes_it_on(servers, forkproxy_factory):
    srv = servers("echo", proxy=True)
    port = free_port()
    fp = tcp_proxy(forkproxy_factory, port, [srv.addr], listener_extra="accept_proxy = true",
                   pool_extra='proxy_protocol = "v1"')
    fp.wait_ready(port, mode="tcp")
    for header in (pp.encode_v2(("203.0.113.9", 4444), ("198.51.100.1", 5432)),
                   pp.encode_v1(("203.0.113.9", 4444), ("198.51.100.1", 5432))):
        # the header and the first bytes of the stream in one segment
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            c.sendall(header + b"stream")
            c.shutdown(socket.SHUT_WR)
            assert recv_all(c) == b"stream"
        assert srv.headers[-1].src == ("203.0.113.9", 4444)
        assert srv.headers[-1].dst == ("198.51.100.1", 5432)
    # no header: closed, one log line, nothing reaches a server
    n = len(srv.headers)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        c.sendall(b"GET / HTTP/1.1\r\n\r\n")
        try:
            assert recv_all(c) == b""
        except ConnectionResetError:  # closed with the request unread: a reset
            pass
    wait_until(lambda: "no PROXY protocol header" in fp.error_log(), what="the log line")
    assert len(srv.headers) == n


def test_connect_failure_retries_another_server(servers, forkproxy_factory):
    echo = servers("echo")
    dead = f"127.0.0.1:{free_port()}"
    port = free_port()
    fp = tcp_proxy(forkproxy_factory, port, [dead, echo.addr], pool_extra="max_fails = 0")
    fp.wait_ready(port, mode="tcp")
    for i in range(10):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            c.sendall(b"%d" % i)
            c.shutdown(socket.SHUT_WR)
            assert recv_all(c) == b"%d" % i
    fp.wait_error_log(f"server={dead}: connect")


def test_idle_timeout_closes_both_sides(servers, forkproxy_factory):
    echo = servers("echo")
    port = free_port()
    tcp_proxy(forkproxy_factory, port, [echo.addr],
              listener_extra='idle_timeout = "1s"').wait_ready(port, mode="tcp")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        c.sendall(b"ping")
        assert c.recv(4) == b"ping"
        assert c.recv(4) == b""  # closed by forkproxy after the idle timeout


@pytest.fixture
def pki(tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("db.example")
    d = tmp_path / "tls"
    d.mkdir()
    cert.cert_chain_pems[0].write_to_path(str(d / "c.pem"))
    cert.private_key_pem.write_to_path(str(d / "c.key"))
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    return {"ca": ca, "cert": cert, "dir": d}


def test_tls_termination_on_a_tcp_listener(pki, servers, forkproxy_factory):
    echo = servers("echo")
    port = free_port()
    d = pki["dir"]
    tcp_proxy(forkproxy_factory, port, [echo.addr],
              listener_extra=f'tls = {{ cert = "{d / "c.pem"}", key = "{d / "c.key"}" }}'
              ).wait_ready(port, mode="tcp")
    ctx = ssl.create_default_context(cafile=str(d / "ca.pem"))
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                         server_hostname="db.example") as c:
        assert c.selected_alpn_protocol() is None  # no ALPN on a tcp listener
        payload = b"decrypted " * 10000
        c.sendall(payload)
        got = b""
        while len(got) < len(payload):
            got += c.recv(65536)
        assert got == payload  # plain bytes at the server, TLS again on the way back


def test_tls_passthrough(pki, servers, forkproxy_factory):
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    pki["cert"].configure_cert(server_ctx)
    echo = servers("echo", tls=server_ctx)
    port = free_port()
    tcp_proxy(forkproxy_factory, port, [echo.addr]).wait_ready(port, mode="tcp")
    ctx = ssl.create_default_context(cafile=str(pki["dir"] / "ca.pem"))
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                         server_hostname="db.example") as c:
        c.sendall(b"end to end")
        assert c.recv(100) == b"end to end"  # the server's own certificate, verified


def _rss_kb(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def test_one_gib_with_bounded_memory(servers, forkproxy_factory):
    counter = servers("count")
    port = free_port()
    fp = tcp_proxy(forkproxy_factory, port, [counter.addr], server={"workers": 1})
    fp.wait_ready(port, mode="tcp")
    (worker,) = fp.wait_workers(1)
    before = _rss_kb(worker)
    chunk = b"\xab" * (1 << 20)
    total = 1 << 30
    peak = before
    with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
        for i in range(total // len(chunk)):
            c.sendall(chunk)
            if i % 64 == 0:
                peak = max(peak, _rss_kb(worker))
        c.shutdown(socket.SHUT_WR)
        assert recv_all(c) == b"%d\n" % total
    print(f"worker RSS before {before} kB, peak during 1 GiB {peak} kB")
    assert peak - before < 32 * 1024  # fixed buffers: nowhere near the volume


def test_routes_cannot_name_a_tcp_listener(tmp_path):
    conf = tmp_path / "t.toml"
    conf.write_text("""[[listener]]
name = "l4"
bind = "127.0.0.1:6432"
mode = "tcp"
pool = "db"

[[route]]
listener = "l4"
pool = "db"

[pool.db]
servers = [{ addr = "127.0.0.1:5432" }]
proxy_protocol = "v2"
""")
    r = config_test(conf)
    assert r.returncode == 1
    assert 't.toml:8: route[0].listener: listener "l4" is a tcp listener' in r.stderr
    assert 't.toml:9: route[0].pool: pool "db" sends PROXY protocol headers' in r.stderr
