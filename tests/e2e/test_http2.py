"""HTTP/2 to clients, end to end: curl over TLS (ALPN h2) and h2c with prior
knowledge, h2load for many concurrent streams, bodies both ways, the cache and
compression on a stream, the access log's protocol.  Abuse cases are in
test_http2_abuse.py.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess

import pytest
import trustme

from support.configs import one_pool
from support.procs import free_port, wait_until

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl missing")


@pytest.fixture
def pki(tmp_path):
    ca = trustme.CA()
    d = tmp_path / "tls"
    d.mkdir()
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    c = ca.issue_cert("a.example")
    (d / "a.pem").write_bytes(b"".join(p.bytes() for p in c.cert_chain_pems))
    c.private_key_pem.write_to_path(str(d / "a.key"))
    return d


def tls_toml(pki) -> str:
    return f'tls = {{ cert = "{pki / "a.pem"}", key = "{pki / "a.key"}" }}'


def curl(*args, data: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "10", *args], input=data,
                          capture_output=True, timeout=20, check=True)


def h2_tls(pki, port, path, *args, data=None):
    """curl --http2 over TLS: (HTTP version, status, headers, body)."""
    return _parse(curl("--http2", "--cacert", str(pki / "ca.pem"), "--resolve",
                       f"a.example:{port}:127.0.0.1", "-D", "-", *args,
                       f"https://a.example:{port}{path}", data=data).stdout)


def h2c(port, path, *args, data=None):
    """curl --http2-prior-knowledge on a plain port."""
    return _parse(curl("--http2-prior-knowledge", "-D", "-", *args,
                       f"http://127.0.0.1:{port}{path}", data=data).stdout)


def _parse(out: bytes):
    head, _, body = out.partition(b"\r\n\r\n")
    while head.split(b" ", 2)[1].startswith(b"1"):  # an interim response first
        head, _, body = body.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    version, status = lines[0].split()[:2]
    hdrs = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return version, int(status), hdrs, body


def start_tls(forkproxy_factory, backend, pki, extra="", pool_extra="", route_extra=""):
    port = free_port()
    body = one_pool(port, [backend.addr], pool_extra=pool_extra, route_extra=route_extra,
                    listener_extra=f"{tls_toml(pki)}\n{extra}")
    fp = forkproxy_factory(body, ready=False).wait_ready(f"https://127.0.0.1:{port}/")
    return fp, port


def start_plain(forkproxy_factory, backend, extra="http2 = true", pool_extra="",
                route_extra="", server=None):
    port = free_port()
    fp = forkproxy_factory(one_pool(port, [backend.addr], pool_extra=pool_extra,
                                    route_extra=route_extra, listener_extra=extra),
                           server=server)
    return fp, port


def test_tls_alpn_h2_get_and_post_through_the_pipeline(pki, backend_factory,
                                                       forkproxy_factory):
    b = backend_factory()
    fp, port = start_tls(forkproxy_factory, b, pki)
    version, status, hdrs, body = h2_tls(pki, port, "/echo?x=1", "-H", "Cookie: a=1",
                                         "-H", "Cookie: b=2")
    assert (version, status) == ("HTTP/2", 200)
    seen = json.loads(body)
    fields = {k.lower(): v for k, v in seen["headers"]}
    assert seen["path"] == "/echo?x=1" and seen["method"] == "GET"
    assert fields["host"] == f"a.example:{port}"
    assert fields["x-forwarded-proto"] == "https"
    assert fields["cookie"] == "a=1; b=2"  # RFC 9113 8.2.3: crumbs joined
    assert "connection" not in hdrs and "keep-alive" not in hdrs
    # A POST body upstream (with a length), and a large body back (flow control).
    payload = bytes(range(256)) * 1024  # 256 KiB: past the initial 64 KiB window
    _, status, _, body = h2_tls(pki, port, "/upload", "--data-binary", "@-", data=payload)
    assert status == 200
    assert json.loads(body) == {"len": len(payload),
                                "sha256": hashlib.sha256(payload).hexdigest()}
    _, status, hdrs, body = h2_tls(pki, port, "/bytes?n=1000000&chunked=1")
    assert status == 200 and len(body) == 1000000
    # An HTTP/1.1 client on the same listener still gets HTTP/1.1.
    out = curl("--http1.1", "--cacert", str(pki / "ca.pem"), "--resolve",
               f"a.example:{port}:127.0.0.1", "-D", "-", f"https://a.example:{port}/").stdout
    assert out.startswith(b"HTTP/1.1 200")
    # A line is written as its request ends, after its answer went out, by
    # whichever worker took the connection: each is waited for.
    for line in (r'"GET /echo\?x=1 HTTP/2\.0" 200', r'"POST /upload HTTP/2\.0" 200',
                 r'"GET / HTTP/1\.1" 200'):
        wait_until(lambda: re.search(line, fp.access_log()), what=f"{line} in the access log")


def test_h2c_prior_knowledge_and_http1_on_the_same_port(backend_factory, forkproxy_factory):
    b = backend_factory()
    fp, port = start_plain(forkproxy_factory, b)
    version, status, _, body = h2c(port, "/echo")
    assert (version, status) == ("HTTP/2", 200)
    assert {k.lower(): v for k, v in json.loads(body)["headers"]}["x-forwarded-proto"] == "http"
    payload = b"x" * 200000
    _, status, _, body = h2c(port, "/echo", "--data-binary", "@-", data=payload)
    assert status == 200 and json.loads(body)["body_len"] == len(payload)
    out = curl("--http1.1", "-D", "-", f"http://127.0.0.1:{port}/").stdout
    assert out.startswith(b"HTTP/1.1 200")
    # Refusals are forkproxy's own responses, on the stream, as over HTTP/1.1.
    _, status, hdrs, body = h2c(port, "/x", "-X", "TRACE")
    out = curl("--http1.1", "-D", "-", "-X", "TRACE", f"http://127.0.0.1:{port}/x").stdout
    assert out.startswith(f"HTTP/1.1 {status} ".encode())
    assert int(hdrs["content-length"]) == len(body)
    wait_until(lambda: '"GET /echo HTTP/2.0" 200' in fp.access_log(),  # as the request ends
               what="the h2 request's access-log line")


def test_plain_listener_without_http2_speaks_http1_only(backend_factory, forkproxy_factory):
    b = backend_factory()
    fp, port = start_plain(forkproxy_factory, b, extra="")
    r = subprocess.run(["curl", "-sS", "--max-time", "5", "--http2-prior-knowledge",
                        f"http://127.0.0.1:{port}/"], capture_output=True, timeout=20)
    assert r.returncode != 0  # the preface is a bad HTTP/1.1 request there
    assert fp.alive()


def test_cache_and_compression_on_h2_streams(backend_factory, forkproxy_factory):
    b = backend_factory()
    port = free_port()
    forkproxy_factory("[cache]\nservers = []\n" + one_pool(
        port, [b.addr], listener_extra="http2 = true", route_extra=(
            'cache = true\ncompress = { types = ["text/plain"], min_size = "1" }')))
    path = "/bytes?n=5000&hdr=Content-Type:text/plain&hdr=Cache-Control:max-age%3D60"
    got = [h2c(port, path, "--compressed") for _ in range(3)]
    for _, status, hdrs, body in got:
        assert status == 200 and body == bytes(i % 256 for i in range(5000))
        assert hdrs.get("content-encoding") in ("gzip", "br")
    assert [g[2].get("x-cache") for g in got] == ["MISS", "HIT", "HIT"]
    assert b.stats()["by_path"].get("/bytes") == 1


def test_h2load_many_concurrent_streams_without_failures(backend_factory, forkproxy_factory):
    if shutil.which("h2load") is None:
        pytest.skip("h2load missing")
    b = backend_factory()
    fp, port = start_plain(forkproxy_factory, b)
    r = subprocess.run(["h2load", "-n", "2000", "-c", "4", "-m", "50",
                        f"http://127.0.0.1:{port}/"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored", r.stdout)
    assert m, r.stdout
    assert m.group(4) == "2000" and m.group(5) == "0" and m.group(6) == "0", r.stdout
    assert fp.alive()


def test_bodiless_responses_and_concurrent_uploads(pki, backend_factory, forkproxy_factory,
                                                   tmp_path):
    b = backend_factory()
    fp, port = start_tls(forkproxy_factory, b, pki)
    _, status, hdrs, body = h2_tls(pki, port, "/bytes?n=5000", "-I")  # HEAD
    assert status == 200 and hdrs["content-length"] == "5000"  # (curl -I prints no body)
    _, status, hdrs, body = h2_tls(pki, port, "/etag/x?v=3", "-H", 'If-None-Match: "3"')
    assert status == 304 and body == b""
    _, status, _, body = h2_tls(pki, port, "/status/204")
    assert status == 204 and body == b""
    # Expect: 100-continue: an interim 100 on the stream, then the answer.
    _, status, _, body = h2_tls(pki, port, "/upload", "-H", "Expect: 100-continue",
                                "--data-binary", "@-", data=b"y" * 300000)
    assert status == 200 and json.loads(body)["len"] == 300000
    if shutil.which("h2load") is None:
        return
    payload = tmp_path / "body"
    payload.write_bytes(b"z" * 100000)
    r = subprocess.run(["h2load", "-n", "400", "-c", "4", "-m", "20", "-d", str(payload),
                        f"https://127.0.0.1:{port}/upload"], capture_output=True, text=True,
                       timeout=120)
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored", r.stdout)
    assert m and m.group(4) == "400" and m.group(5) == "0", r.stdout + r.stderr
    assert "h2" in r.stdout  # ALPN chose h2
    assert b.stats()["posts"].count(hashlib.sha256(b"z" * 100000).hexdigest()) == 400
