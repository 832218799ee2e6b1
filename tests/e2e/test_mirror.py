"""Shadow traffic (route ``mirror``), end to end.

A real master (one worker, so that the per-worker queue is one queue) in
front of a real pool and a mirror pool: the client always gets the real
pool's answer; the mirror sees the copies (method, path, body, head) when
it is there, and costs nothing when it is frozen (SIGSTOP) or dead.  No
timing is asserted: the real answers are checked to have come while the
mirror was still frozen.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from support.procs import free_port, wait_until

TOKEN = "mirror-token"


def config(port: int, web: str, shadow: str, mirror: str) -> str:
    return f"""
[[listener]]
name = "web"
bind = "127.0.0.1:{port}"

[[route]]
host = "buffered.test"
pool = "web"
mirror = {{ {mirror} }}

[[route]]
host = "streamed.test"
pool = "web"
request_buffering = false
mirror = {{ {mirror} }}

[[route]]
pool = "web"

[pool.web]
servers = [{{ addr = "{web}" }}]

[pool.shadow]
servers = [{{ addr = "{shadow}" }}]
"""


def start(forkproxy_factory, web: str, shadow: str, mirror: str):
    port = free_port()
    fp = forkproxy_factory(config(port, web, shadow, mirror), server={
        "workers": 1, "admin": f"127.0.0.1:{free_port()}", "admin_token": TOKEN})
    fp.wait_workers()
    return fp, port


def mirror_counts(fp) -> dict[str, float]:
    text = requests.get(f"http://{fp.server['admin']}/metrics", timeout=30,
                        headers={"Authorization": f"Bearer {TOKEN}"}).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("forkproxy_mirror_total{"):
            result = line.split('result="', 1)[1].split('"', 1)[0]
            out[result] = out.get(result, 0) + float(line.rsplit(" ", 1)[1])
    return out


class _Recorder(BaseHTTPRequestHandler):
    """Records every request (method, path, fields, body) and answers 500."""

    protocol_version = "HTTP/1.1"

    def _any(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        self.server.seen.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(500)
        self.send_header("Content-Length", "6")
        self.end_headers()
        self.wfile.write(b"shadow")

    do_GET = do_POST = do_PUT = do_DELETE = _any

    def log_message(self, *args):
        pass


@pytest.fixture
def recorder():
    srv = ThreadingHTTPServer(("127.0.0.1", free_port()), _Recorder)
    srv.seen = []
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_every_request_is_copied_and_the_client_gets_the_real_answer(
        forkproxy_factory, backend_factory, recorder):
    web = backend_factory("web")
    fp, port = start(forkproxy_factory, web.addr, "127.0.0.1:%d" % recorder.server_port,
                     'pool = "shadow", percent = 100')
    body = b"hello mirror " * 100
    with requests.Session() as s:
        for host in ("buffered.test", "streamed.test"):
            r = s.get(f"http://127.0.0.1:{port}/a/b?q=1", headers={"Host": host}, timeout=30)
            assert (r.status_code, r.text) == (200, "web")
            r = s.post(f"http://127.0.0.1:{port}/upload", data=body, headers={"Host": host},
                       timeout=30)
            assert r.status_code == 200 and r.json()["len"] == len(body)
        r = s.get(f"http://127.0.0.1:{port}/other", timeout=30)  # a route without mirror
        assert r.status_code == 200
    wait_until(lambda: len(recorder.seen) >= 4, what="4 copies")
    wait_until(lambda: mirror_counts(fp).get("sent") == 4, what="4 copies counted sent")
    seen = sorted(recorder.seen, key=lambda x: (x[2]["host"], x[0]))
    assert [(m, p) for m, p, _, _ in seen] == [("GET", "/a/b?q=1"), ("POST", "/upload")] * 2
    for method, _, fields, got in seen:
        assert fields["x-forkproxy-mirror"] == "1"
        assert fields["x-forwarded-for"] == "127.0.0.1"
        assert fields["x-request-id"]
        assert fields["host"] in ("buffered.test", "streamed.test")
        assert got == (body if method == "POST" else b"")
    assert web.stats()["posts"] == [hashlib.sha256(body).hexdigest()] * 2
    assert "/other" not in {p for _, p, _, _ in recorder.seen}
    assert "X-Forkproxy-Mirror" not in fp.access_log()  # nothing of the copies logged
    lines = fp.access_log().splitlines()
    assert sum(" route=0 " in x or " route=1 " in x for x in lines) == 4, lines


def test_a_frozen_mirror_costs_nothing_and_a_full_queue_drops(forkproxy_factory, backend_factory):
    web, shadow = backend_factory("web"), backend_factory("shadow")
    fp, port = start(forkproxy_factory, web.addr, shadow.addr,
                     'pool = "shadow", queue = 4, timeout = "60s"')
    shadow.freeze()
    with requests.Session() as s:
        for i in range(10):
            r = s.post(f"http://127.0.0.1:{port}/upload", data=b"x" * 100,
                       headers={"Host": "buffered.test"}, timeout=30)
            assert r.status_code == 200
    assert shadow.frozen  # every real answer came while the mirror hung
    counts = mirror_counts(fp)
    assert counts.get("dropped") == 6 and not counts.get("sent"), counts
    assert web.stats()["by_path"]["/upload"] == 10
    shadow.thaw()
    wait_until(lambda: mirror_counts(fp).get("sent") == 4, what="the 4 queued copies answered")
    assert shadow.stats()["by_path"] == {"/upload": 4}


def test_a_dead_mirror_costs_nothing(forkproxy_factory, backend_factory):
    web, shadow = backend_factory("web"), backend_factory("shadow")
    fp, port = start(forkproxy_factory, web.addr, shadow.addr, 'pool = "shadow"')
    shadow.stop()
    with requests.Session() as s:
        for _ in range(10):
            r = s.get(f"http://127.0.0.1:{port}/", headers={"Host": "streamed.test"}, timeout=30)
            assert (r.status_code, r.text) == (200, "web")
    wait_until(lambda: mirror_counts(fp).get("failed") == 10, what="10 failed copies")
    # explain says the route mirrors, and where to (and not for a route without).
    out = fp.ctl("--json", "explain", "GET", f"http://streamed.test:{port}/")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["mirror"] == {"pool": "shadow", "percent": 100, "queue": 64,
                                                "max_body": 65536, "timeout": 2.0}
    text = fp.ctl("explain", "GET", f"http://streamed.test:{port}/").stdout
    assert "100% copied to pool shadow" in text, text
    out = fp.ctl("--json", "explain", "GET", f"http://other.test:{port}/")
    assert json.loads(out.stdout)["mirror"] is None


def test_percent_zero_and_large_bodies_send_nothing(forkproxy_factory, backend_factory):
    web, shadow = backend_factory("web"), backend_factory("shadow")
    fp, port = start(forkproxy_factory, web.addr, shadow.addr,
                     'pool = "shadow", percent = 0')
    with requests.Session() as s:
        for _ in range(20):
            assert s.get(f"http://127.0.0.1:{port}/", headers={"Host": "buffered.test"},
                         timeout=30).status_code == 200
    fp2, port2 = start(forkproxy_factory, web.addr, shadow.addr,
                       'pool = "shadow", max_body = "1k"')
    with requests.Session() as s:
        for host in ("buffered.test", "streamed.test"):
            r = s.post(f"http://127.0.0.1:{port2}/upload", data=b"y" * 5000,
                       headers={"Host": host}, timeout=30)
            assert r.status_code == 200 and r.json()["len"] == 5000
        r = s.post(f"http://127.0.0.1:{port2}/upload", data=iter([b"z" * 10]),
                   headers={"Host": "streamed.test"}, timeout=30)  # chunked, streamed
        assert r.status_code == 200 and r.json()["len"] == 10
    assert mirror_counts(fp2) == {"skipped": 3}
    assert mirror_counts(fp) == {}
    assert shadow.stats()["requests"] == 0


def test_check_refuses_an_unknown_mirror_pool(tmp_path):
    f = tmp_path / "forkproxy.toml"
    f.write_text(config(free_port(), "127.0.0.1:1", "127.0.0.1:2", 'pool = "canry"'))
    out = subprocess.run([sys.executable, "-m", "forkproxy", "-t", "-c", str(f)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert 'route[0].mirror.pool: no pool named "canry"' in out.stderr, out.stderr
