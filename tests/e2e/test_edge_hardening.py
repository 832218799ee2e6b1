"""Issue 16's edge findings, end to end: what an attacker with curl and a raw socket
could do to a real forkproxy in front of real backends, and no longer can.

Each test starts a real forkproxy master and real backend processes and
looks only at what real clients and backends saw.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading

import pytest
import requests

from support.configs import one_pool
from support.procs import free_port, wait_until
from support.rawhttp import Conn
from support.runner import REPO_ROOT, _child_env

CUBIC = r"^/(.*)/(.*)/(.*)\.php$"


def _site(port: int, backend_addr: str, route_extra: str = "", server_extra: str = "") -> str:
    return f"\n{server_extra}" + one_pool(port, [backend_addr], route_extra=route_extra, pool="app")


# -- regular expressions: RE2, linear time -------------------------------------------


def test_cubic_regex_on_a_path_of_slashes_does_not_freeze_a_worker(backend_factory, forkproxy_factory):
    # Python's re takes minutes on this path for each of these patterns (cubic);
    # one worker, so a frozen worker would leave the second request unanswered.
    b = backend_factory("origin")
    port = free_port()
    body = f"""
[[listener]]
name = "web"
bind = "127.0.0.1:{port}"

[[route]]
path_regex = '{CUBIC}'
rewrite = [{{ from = '{CUBIC}', to = "/echo" }}]
pool = "app"

[[route]]
pool = "app"
deny = [{{ path_regex = '{CUBIC}' }}, {{ query_regex = '{CUBIC}' }},
        {{ header = "X-A", header_regex = '{CUBIC}' }}]

[pool.app]
servers = [{{ addr = "{b.addr}" }}]
"""
    fp = forkproxy_factory(body, server={"workers": 1})
    slashes = "/" * 7000
    with Conn(port, timeout=60) as c:
        c.send(f"GET {slashes}?{slashes[:500]} HTTP/1.1\r\nHost: a\r\nX-A: {slashes[:500]}\r\n\r\n".encode())
        assert c.reply().status == 200  # no route regex, no deny rule matched: the backend answered
    with Conn(port, timeout=60) as c:
        c.send(b"GET /a/b/c/d.php HTTP/1.1\r\nHost: a\r\n\r\n")
        reply = c.reply()
    assert reply.status == 200 and json.loads(reply.body)["path"] == "/echo"
    assert fp.alive()


def test_config_check_names_key_line_and_re2_reason(tmp_path):
    conf = tmp_path / "f.toml"
    conf.write_text(
        '[[listener]]\nname = "web"\nbind = "127.0.0.1:1"\n\n'
        '[[route]]\npool = "app"\ndeny = [{ path_regex = "(?<=/)x" }]\n'
        'rewrite = [{ from = "(a)\\\\1", to = "/x" }]\n\n'
        '[pool.app]\nservers = [{ addr = "127.0.0.1:2" }]\n')
    r = subprocess.run([sys.executable, "-m", "forkproxy", "-t", "-c", str(conf)], cwd=REPO_ROOT,
                       env=_child_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert (f'{conf}:7: route[0].deny[0].path_regex: regular expression "(?<=/)x" refused by RE2: '
            "invalid perl operator: (?<= (RE2 has no lookbehind)") in r.stderr
    assert (f'{conf}:8: route[0].rewrite[0].from: regular expression "(a)\\\\1" refused by RE2: '
            "invalid escape sequence: \\1 (RE2 has no backreferences)") in r.stderr


# -- Transfer-Encoding: exactly chunked, or 501 --------------------------------------


@contextlib.contextmanager
def _naive_backend():
    """A keep-alive HTTP/1.1 server that, like many, knows a body only by
    ``Transfer-Encoding: chunked`` alone or Content-Length: any other
    Transfer-Encoding it takes for no body, and reads what follows as the
    next request.  Answers 200 with the request line as the body, or, to a
    request with Upgrade, 101 and then echoes every byte (a tunnel).  Yields
    (address, request lines seen, heads seen); stopped on exit."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    srv.settimeout(0.2)  # so the loop sees the stop flag
    stop = threading.Event()
    seen: list[bytes] = []
    heads: list[dict] = []

    def one(c):
        with c:
            c.settimeout(30)
            f = c.makefile("rb")
            try:
                while not stop.is_set():
                    head = []
                    while (line := f.readline(65536)) not in (b"\r\n", b""):
                        head.append(line)
                    if not head:
                        return
                    seen.append(head[0].strip())
                    fields = {k.strip().lower(): v.strip() for k, _, v in
                              (h.decode("latin-1").partition(":") for h in head[1:])}
                    heads.append(fields)
                    if "upgrade" in fields:
                        c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n"
                                  b"Upgrade: %s\r\n\r\n" % fields["upgrade"].encode())
                        while data := c.recv(65536):
                            c.sendall(data)
                        return
                    if fields.get("transfer-encoding", "").lower() == "chunked":
                        while (size := int(f.readline(1024).split(b";")[0], 16)):
                            f.read(size + 2)
                        f.readline(1024)
                    elif "content-length" in fields:
                        f.read(int(fields["content-length"]))
                    body = head[0].strip()
                    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            except (OSError, ValueError):
                return

    def accept():
        while not stop.is_set():
            try:
                c, _ = srv.accept()
            except socket.timeout:
                continue
            threading.Thread(target=one, args=(c,), daemon=True).start()

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield "127.0.0.1:%d" % srv.getsockname()[1], seen, heads
    finally:
        stop.set()
        t.join(5)
        srv.close()


@pytest.mark.parametrize("te", ["gzip, chunked", "identity, chunked", "IDENTITY,Chunked",
                                "gzip\r\nTransfer-Encoding: chunked"])
def test_transfer_coding_before_chunked_is_501_and_never_reaches_a_pooled_connection(
        forkproxy_factory, te):
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
    attack = (f"POST /attack HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: {te}\r\n\r\n".encode()
              + b"%x\r\n%s\r\n0\r\n\r\n" % (len(smuggled), smuggled))
    with _naive_backend() as (addr, seen, _):
        port = free_port()
        forkproxy_factory(_site(port, addr), server={"workers": 1})
        with Conn(port) as c:
            c.send(attack)
            reply = c.reply("POST")
            assert reply.status == 501 and reply.headers["Connection"] == "close"
            assert c.closed_by_peer()
        # 80 innocent GETs on the worker's pooled upstream connections: each gets its own answer
        with requests.Session() as s:
            for n in range(80):
                r = s.get(f"http://127.0.0.1:{port}/innocent/{n}", timeout=30)
                assert (r.status_code, r.text) == (200, f"GET /innocent/{n} HTTP/1.1"), n
        assert not [line for line in seen if b"attack" in line or b"smuggled" in line]


# -- header names with underscores ---------------------------------------------------


@pytest.mark.parametrize("allow", [False, True])
def test_underscored_header_names_never_reach_the_backend_by_default(
        backend_factory, forkproxy_factory, allow):
    b = backend_factory("origin")
    port = free_port()
    forkproxy_factory(_site(port, b.addr), server={"underscores_in_headers": True} if allow else None)
    with Conn(port) as c:
        c.send(b"GET /echo HTTP/1.1\r\nHost: a\r\nX_Forwarded_For: 6.6.6.6\r\nX_Real_IP: 6.6.6.6\r\n"
               b"X-Forwarded_Proto: https\r\nX-Plain: 1\r\n\r\n")
        reply = c.reply()
    assert reply.status == 200  # the request is served, as nginx does; only the fields go
    seen = {n.lower(): v for n, v in json.loads(reply.body)["headers"]}
    assert seen["x-plain"] == "1" and seen["x-forwarded-for"] == "127.0.0.1"
    underscored = {n: v for n, v in seen.items() if "_" in n}
    if allow:
        assert underscored == {"x_forwarded_for": "6.6.6.6", "x_real_ip": "6.6.6.6",
                               "x-forwarded_proto": "https"}
    else:
        assert underscored == {}


# -- the admin endpoint answers only to its own names (DNS rebinding) -----------------


ADMIN_HOSTS = [
    ("evil.example", 421), ("evil.example:{aport}", 421), ("127.0.0.1.evil.example", 421),
    ("localhost.evil.example", 421), ("", 421),
    ("127.0.0.1:{aport}", 200), ("127.0.0.1", 200), ("localhost:{aport}", 200), ("LOCALHOST.:8080", 200),
    ("[::1]:{aport}", 200), ("admin.internal", 200), ("Admin.Internal:9", 200),
]


def test_admin_refuses_a_host_that_is_not_its_own(backend_factory, forkproxy_factory):
    b = backend_factory("origin")
    port, aport = free_port(), free_port()
    fp = forkproxy_factory(_site(port, b.addr), server={
        "admin": f"127.0.0.1:{aport}", "admin_names": ["admin.internal"]})
    for host, status in ADMIN_HOSTS:
        host = host.format(aport=aport)
        for path in ("/status", "/metrics", f"/explain?url=http://a:{port}/", "/"):
            with Conn(aport) as c:
                c.send(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
                reply = c.reply()
            assert reply.status == status, (host, path, reply.body)
            if status == 421:
                assert b"server.admin_names" in reply.body and b"pools" not in reply.body
        if status == 421:
            wait_until(lambda: f"admin: refused Host {host!r}" in fp.error_log(),
                       what="the error-log line")


def test_admin_host_check_leaves_forkproxyctl_working(backend_factory, forkproxy_factory):
    b = backend_factory("origin")
    port, aport = free_port(), free_port()
    fp = forkproxy_factory(_site(port, b.addr), server={"admin": f"localhost:{aport}"})
    for args in (["metrics"], ["explain", "GET", f"http://a:{port}/x"], ["status"]):
        r = fp.ctl(*args)
        assert r.returncode == 0, (args, r.stderr)
    # and a rebinding page's request, with no admin_names configured
    with Conn(aport) as c:
        c.send(b"GET /status HTTP/1.1\r\nHost: rebind.evil.example\r\n\r\n")
        assert c.reply().status == 421


# -- logs behind trusted proxies: the real client, and the peer beside it -------------


@pytest.mark.parametrize("fmt", ["combined", "json"])
def test_logs_name_the_real_client_and_the_peer(backend_factory, forkproxy_factory, fmt):
    b = backend_factory("origin")
    port = free_port()
    fp = forkproxy_factory(_site(port, b.addr, route_extra='deny = [{ path = "/denied" }]'), server={
        "trusted_proxies": ["127.0.0.1/32"], "access_log_format": fmt})
    for target in ("/ok", "/denied"):
        with Conn(port) as c:
            c.send(f"GET {target} HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n".encode())
            c.reply()
    def lines():  # the harness's readiness probes are logged too
        return [line for line in fp.access_log().splitlines() if "/ok" in line or "/denied" in line]

    wait_until(lambda: len(lines()) == 2, what="the two access-log lines")
    lines = lines()
    if fmt == "json":
        docs = [json.loads(line) for line in lines]
        # Each line is written as its request ends, after the answer, by the
        # worker that served it: two workers may write them in either order.
        assert sorted((d["target"], d["client"], d["peer"]) for d in docs) == [
            ("/denied", "203.0.113.9", "127.0.0.1"), ("/ok", "203.0.113.9", "127.0.0.1")]
    else:
        assert all(line.startswith("203.0.113.9 - - [") and line.endswith(" peer=127.0.0.1")
                   for line in lines), lines
    wait_until(lambda: '"GET /denied" -> 403' in fp.error_log(),
               what="the error-log line")
    fp.wait_error_log('203.0.113.9 via 127.0.0.1 "GET /denied" -> 403')


def test_logs_ignore_x_forwarded_for_from_an_untrusted_peer(backend_factory, forkproxy_factory):
    b = backend_factory("origin")
    port = free_port()
    fp = forkproxy_factory(_site(port, b.addr), server={"access_log_format": "json"})
    with Conn(port) as c:
        c.send(b"GET /ok HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n")
        c.reply()
    wait_until(lambda: '"/ok"' in fp.access_log(), what="the access-log line")
    doc = [json.loads(line) for line in fp.access_log().splitlines() if '"/ok"' in line][0]
    assert (doc["client"], doc["peer"]) == ("127.0.0.1", "127.0.0.1")


# -- Upgrade: only the protocols a route allows (websocket by default) -----------------


@pytest.mark.parametrize("upgrade, allow, tunnel", [
    ("h2c", None, False), ("H2C", None, False), ("foo/1", None, False),
    ("websocket", None, True), ("h2c, websocket", None, True),
    ("h2c", '["h2c"]', True), ("websocket", "[]", False),
])
def test_upgrade_only_to_the_protocols_the_route_allows(forkproxy_factory, upgrade, allow, tunnel):
    with _naive_backend() as (addr, _, heads):
        port = free_port()
        forkproxy_factory(_site(port, addr, route_extra=f"upgrade = {allow}" if allow else ""))
        with Conn(port) as c:
            c.send(f"GET /up HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                   f"Upgrade: {upgrade}\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n".encode())
            reply = c.reply()
            if tunnel:
                assert reply.status == 101
                c.send(b"ping through the tunnel")
                assert c.sock.recv(100) == b"ping through the tunnel"
            else:  # a plain request: the backend saw no Upgrade, and the connection stays HTTP
                assert (reply.status, reply.body) == (200, b"GET /up HTTP/1.1")
                c.send(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
                assert c.reply().body == b"GET /next HTTP/1.1"
        up = [h for h in heads if h.get("host") == "a"][0]
        assert "http2-settings" not in up
        if tunnel:
            assert up["upgrade"].lower() in ("websocket", "h2c") and up["connection"] == "upgrade"
        else:
            assert "upgrade" not in up and "upgrade" not in up.get("connection", "").lower()


# -- accept_proxy: PROXY headers only from the configured networks -------------------


def test_proxy_header_believed_only_from_proxy_protocol_from(backend_factory, forkproxy_factory):
    from forkproxy.core import proxy_protocol as pp

    b = backend_factory("origin")
    port, lb_port = free_port(), free_port()
    fp = forkproxy_factory(_site(port, b.addr) + f"""
[[listener]]
name = "lb"
bind = "127.0.0.1:{lb_port}"
accept_proxy = true
proxy_protocol_from = ["127.0.0.2/32"]
""")
    header = pp.encode_v1(("203.0.113.9", 4444), ("127.0.0.1", lb_port))
    request = b"GET /echo?via=lb HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"

    def send(source: str) -> bytes:
        with socket.create_connection(("127.0.0.1", lb_port), timeout=10,
                                      source_address=(source, 0)) as s:
            s.sendall(header + request)
            out = b""
            try:
                while data := s.recv(65536):
                    out += data
            except ConnectionResetError:  # closed with the header unread: a reset
                pass
            return out

    # the balancer's address: its header is believed
    head, _, body = send("127.0.0.2").partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    seen = {n.lower(): v for n, v in json.loads(body)["headers"]}
    assert seen["x-forwarded-for"] == "203.0.113.9"
    # anyone else: closed before a byte is read, and nothing reaches the backend
    b.reset()
    assert send("127.0.0.1") == b""
    wait_until(lambda: "connection from 127.0.0.1 closed: PROXY headers are not accepted"
               in fp.error_log(), what="the error-log line")
    assert b.stats()["requests"] == 0
