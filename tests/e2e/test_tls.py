"""TLS termination, end to end: real forkproxy, real backends, a real TLS client.

Certificates are made in the test with trustme (one CA, a certificate for
a.example and one for *.b.example); clients verify them against that CA.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import subprocess
import sys

import pytest
import trustme
from cryptography import x509

from support.configs import one_pool
from support.procs import free_port, wait_until
from support.runner import _child_env


@pytest.fixture
def pki(tmp_path):
    ca = trustme.CA()
    d = tmp_path / "tls"
    d.mkdir()
    out = {"ca": d / "ca.pem", "dir": d, "obj": ca}
    ca.cert_pem.write_to_path(str(out["ca"]))
    for name, host in (("a", "a.example"), ("b", "*.b.example")):
        issue(ca, host, d / f"{name}.pem", d / f"{name}.key")
        out[name] = (d / f"{name}.pem", d / f"{name}.key")
    return out


def issue(ca, host, cert, key):
    c = ca.issue_cert(host)
    # the chain: leaf then intermediates (trustme's CA is the root: leaf only)
    cert.write_bytes(b"".join(p.bytes() for p in c.cert_chain_pems))
    c.private_key_pem.write_to_path(str(key))
    return c


def client_ctx(pki, **kw) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki["ca"]))
    for k, v in kw.items():
        setattr(ctx, k, v)
    return ctx


def handshake(port, ctx, sni):
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    return ctx.wrap_socket(raw, server_hostname=sni)


def names(sock) -> list[str]:
    return [v for k, v in sock.getpeercert()["subjectAltName"] if k == "DNS"]


def get(sock, path="/", host="a.example") -> tuple[int, dict, bytes]:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        assert data, buf
        buf += data
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    hdrs = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    n = int(hdrs.get("content-length", 0))
    while len(body) < n:
        body += sock.recv(65536)
    return int(lines[0].split()[1]), hdrs, body


def start(forkproxy_factory, backend, port, certs_toml, extra=""):
    body = one_pool(port, [backend.addr], pool="app", listener="websecure",
                    listener_extra=f"{certs_toml}\n{extra}")
    return forkproxy_factory(body, ready=False).wait_ready(f"https://127.0.0.1:{port}/")


def certs_toml(pki, *which) -> str:
    items = ", ".join(f'{{ cert = "{pki[w][0]}", key = "{pki[w][1]}" }}' for w in which)
    return f"certs = [{items}]"


def test_sni_picks_the_certificate_and_requests_go_through(pki, backend_factory, forkproxy_factory):
    b = backend_factory()
    port = free_port()
    fp = start(forkproxy_factory, b, port, certs_toml(pki, "a", "b"))
    ctx = client_ctx(pki)
    ctx.set_alpn_protocols(["http/1.1"])  # h2 is offered too (tests/e2e/test_http2.py)
    with handshake(port, ctx, "a.example") as s:
        assert names(s) == ["a.example"]
        assert s.selected_alpn_protocol() == "http/1.1"
        status, _, body = get(s, "/echo")
        assert status == 200
        hdrs = {k.lower(): v for k, v in json.loads(body)["headers"]}
        assert hdrs["x-forwarded-proto"] == "https"
        assert "proto=https" in hdrs["forwarded"]
        # keep-alive over TLS
        assert get(s, "/")[0] == 200
    with handshake(port, ctx, "x.b.example") as s:
        assert names(s) == ["*.b.example"]
    # No SNI (or an unknown name): the first certificate, the default.
    nocheck = client_ctx(pki, check_hostname=False)
    with handshake(port, nocheck, None) as s:
        assert names(s) == ["a.example"]
    with handshake(port, nocheck, "other.example") as s:
        assert names(s) == ["a.example"]
    # a wildcard covers one label only
    with handshake(port, nocheck, "b.example") as s:
        assert names(s) == ["a.example"]
    assert fp.alive()


def test_session_resumption(pki, backend_factory, forkproxy_factory):
    b = backend_factory()
    port = free_port()
    start(forkproxy_factory, b, port, f'tls = {{ cert = "{pki["a"][0]}", key = "{pki["a"][1]}" }}')
    ctx = client_ctx(pki, maximum_version=ssl.TLSVersion.TLSv1_2)
    with handshake(port, ctx, "a.example") as s:
        get(s)
        session = s.session
    # Tickets are shared by every worker: resumption works wherever the connection lands.
    for _ in range(6):
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        with ctx.wrap_socket(raw, server_hostname="a.example", session=session) as s:
            assert s.session_reused
            assert get(s)[0] == 200


def test_a_close_forkproxy_decides_is_announced_with_close_notify(pki, backend_factory,
                                                                 forkproxy_factory):
    """RFC 8446 6.1: the close is authenticated, so a client reading to the end
    (an HTTP/1.0 response, a body delimited by the close) can tell it from a cut.
    Without close_notify Python's ssl raises SSLEOFError instead of returning b''."""
    b = backend_factory()
    port = free_port()
    start(forkproxy_factory, b, port, f'tls = {{ cert = "{pki["a"][0]}", key = "{pki["a"][1]}" }}')
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    with client_ctx(pki).wrap_socket(raw, server_hostname="a.example",
                                     suppress_ragged_eofs=False) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n")
        got = b""
        while True:
            data = s.recv(65536)  # SSLEOFError here: the close was not announced
            if not data:
                break
            got += data
    assert got.startswith(b"HTTP/1.1 200 ")


def test_a_tls_connection_is_not_handed_over_at_a_reload(pki, backend_factory,
                                                        forkproxy_factory):
    """Its TLS state lives in the old worker's OpenSSL (net.handoff): it stays
    there, and its next response closes it, as before connections were handed."""
    b = backend_factory()
    port = free_port()
    fp = start(forkproxy_factory, b, port,
               f'tls = {{ cert = "{pki["a"][0]}", key = "{pki["a"][1]}" }}')
    with handshake(port, client_ctx(pki), "a.example") as s:
        assert get(s)[0] == 200
        fp.reload_and_wait()
        status, hdrs, _ = get(s)
        assert status == 200 and hdrs.get("connection") == "close"


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_old_tls_versions_refused_by_default(pki, backend_factory, forkproxy_factory):
    b = backend_factory()
    port = free_port()
    fp = start(forkproxy_factory, b, port, certs_toml(pki, "a"))
    for version in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        ctx = client_ctx(pki, minimum_version=version, maximum_version=version)
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # so that only the server can say no
        with pytest.raises(ssl.SSLError):
            handshake(port, ctx, "a.example")
    with handshake(port, client_ctx(pki, maximum_version=ssl.TLSVersion.TLSv1_2), "a.example") as s:
        assert s.version() == "TLSv1.2"
    wait_until(lambda: "TLS handshake failed" in fp.error_log(), what="a handshake failure logged")


def test_plain_http_to_the_tls_port_costs_one_log_line(pki, backend_factory, forkproxy_factory):
    b = backend_factory()
    port = free_port()
    fp = start(forkproxy_factory, b, port, certs_toml(pki, "a"))
    workers = fp.wait_workers()
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n")
            try:
                while s.recv(4096):
                    pass
            except ConnectionResetError:
                pass
    # garbage, and a client that connects and leaves
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"\x16\x03\x01\x00\x05hello")
    socket.create_connection(("127.0.0.1", port), timeout=5).close()
    wait_until(lambda: "plain HTTP sent to a TLS port" in fp.error_log(), what="the log line")
    assert fp.wait_workers() == workers
    with handshake(port, client_ctx(pki), "a.example") as s:
        assert get(s)[0] == 200
    assert "Traceback" not in fp.error_log()


def serial(port, pki) -> int:
    with handshake(port, client_ctx(pki), "a.example") as s:
        return int(s.getpeercert()["serialNumber"], 16)


def test_reload_serves_a_new_certificate_and_keeps_the_old_on_error(pki, backend_factory,
                                                                    forkproxy_factory):
    b = backend_factory()
    port = free_port()
    fp = start(forkproxy_factory, b, port, certs_toml(pki, "a"))
    first = serial(port, pki)
    new = issue(pki["obj"], "a.example", *pki["a"])
    second = x509.load_pem_x509_certificate(new.cert_chain_pems[0].bytes()).serial_number
    assert second != first
    fp.reload()
    wait_until(lambda: serial(port, pki) == second, what="the new certificate served")
    fp.wait_workers()  # the old generation has exited: every worker has the new one
    assert {serial(port, pki) for _ in range(6)} == {second}
    # A key that does not match the certificate: the reload is rejected, the old one serves.
    issue(pki["obj"], "a.example", pki["a"][0], pki["dir"] / "other.key")
    pki["a"][1].write_bytes((pki["dir"] / "other.key").read_bytes())
    pki["a"][0].write_bytes(b"not a certificate\n")
    fp.reload()
    wait_until(lambda: "reload rejected" in fp.error_log() + fp.output(), what="the rejection")
    assert re.search(r"forkproxy\.toml:\d+: listener\[0\]\.certs\[0\]\.cert: cannot load",
                     fp.error_log() + fp.output())
    assert fp.alive()
    assert {serial(port, pki) for _ in range(6)} == {second}


def config_test(path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "forkproxy", "-t", "-c", str(path)],
                          capture_output=True, text=True, env=_child_env(), timeout=30)


def test_config_test_reports_a_missing_or_bad_certificate(pki, tmp_path):
    conf = tmp_path / "t.toml"
    conf.write_text(f"""[server]
runtime_dir = "{tmp_path}/run"

[[listener]]
name = "websecure"
bind = "127.0.0.1:8443"
tls = {{ cert = "{tmp_path}/missing.pem", key = "{pki['a'][1]}" }}
""")
    r = config_test(conf)
    assert r.returncode == 1
    assert f't.toml:7: listener[0].tls.cert: cannot read "{tmp_path}/missing.pem": no such file' \
        in r.stderr
    conf.write_text(conf.read_text().replace(f"{tmp_path}/missing.pem", str(pki["b"][0])))
    r = config_test(conf)
    assert r.returncode == 1
    assert "t.toml:7: listener[0].tls.cert: cannot load certificate" in r.stderr
    assert "KEY_VALUES_MISMATCH" in r.stderr
    conf.write_text(conf.read_text().replace(str(pki["b"][0]), str(pki["a"][0])))
    assert config_test(conf).returncode == 0


def test_redirect_https_and_hsts(pki, backend_factory, forkproxy_factory):
    b = backend_factory()
    http_port, tls_port = free_port(), free_port()
    fp = forkproxy_factory(f"""
[[listener]]
name = "web"
bind = "127.0.0.1:{http_port}"

[[listener]]
name = "websecure"
bind = "127.0.0.1:{tls_port}"
{certs_toml(pki, "a")}

[[route]]
path = "/open/"
pool = "app"

[[route]]
pool = "app"
redirect_https = true
hsts = "max-age=60"

[pool.app]
servers = [{{ addr = "{b.addr}" }}]
""")
    with socket.create_connection(("127.0.0.1", http_port), timeout=5) as s:
        status, hdrs, _ = get(s, "/x?y=1", host="a.example")
        assert status == 308
        assert hdrs["location"] == f"https://a.example:{tls_port}/x?y=1"
        assert "strict-transport-security" not in hdrs
        status, hdrs, _ = get(s, "/open/x", host="a.example")  # same connection: kept alive
        assert status == 200 and "strict-transport-security" not in hdrs
    with handshake(tls_port, client_ctx(pki), "a.example") as s:
        status, hdrs, _ = get(s, "/x?y=1")
        assert status == 200
        assert hdrs["strict-transport-security"] == "max-age=60"
    assert fp.alive()


def test_upstream_tls_to_an_https_backend(pki, backend_factory, forkproxy_factory):
    """forkproxy's own TLS listener is the HTTPS backend of its plain listener's pool."""
    b = backend_factory()
    http_port, tls_port = free_port(), free_port()
    forkproxy_factory(f"""
[[listener]]
name = "web"
bind = "127.0.0.1:{http_port}"

[[listener]]
name = "websecure"
bind = "127.0.0.1:{tls_port}"
{certs_toml(pki, "a")}

[[route]]
listener = "web"
path = "/bad/"
pool = "wrongname"

[[route]]
listener = "web"
pool = "https"

[[route]]
listener = "websecure"
pool = "app"

[pool.https]
servers = [{{ addr = "127.0.0.1:{tls_port}" }}]
tls = {{ ca = "{pki['ca']}", sni = "a.example" }}

[pool.wrongname]
servers = [{{ addr = "127.0.0.1:{tls_port}" }}]
tls = {{ ca = "{pki['ca']}", sni = "c.example" }}

[pool.app]
servers = [{{ addr = "{b.addr}" }}]
""")
    with socket.create_connection(("127.0.0.1", http_port), timeout=5) as s:
        for _ in range(3):  # kept alive both sides
            status, _, body = get(s, "/echo")
            assert status == 200
            hdrs = {k.lower(): v for k, v in json.loads(body)["headers"]}
            assert hdrs["x-forwarded-proto"] == "https"
        # a certificate that does not match the name: 502, never a request sent
        status, _, _ = get(s, "/bad/x")
        assert status == 502


