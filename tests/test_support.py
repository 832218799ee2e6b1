"""Tests of the harness itself: procs, the test backend, memcached, and the ForkProxy runner.

The runner is exercised against a stand-in ``forkproxy`` package (a tiny
forking HTTP server written to tmp_path), so it is tested independently of
the real daemon.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import signal
import socket
import subprocess
import sys
import textwrap

import pytest
import requests

from support import procs
from support.backend import pattern, pattern_sha256
from support.procs import Proc, ProcError, children_of, free_port, pid_alive, wait_for_port, wait_until
from support.runner import ForkProxy, toml_value


@pytest.fixture
def web():
    """A requests session that ignores proxy environment variables."""
    s = requests.Session()
    s.trust_env = False
    yield s
    s.close()


def raw(port: int, data: bytes, timeout: float = 5) -> bytes:
    """Send data on a fresh connection and read until the peer closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
        return out


# -- procs ------------------------------------------------------------------


def test_free_port_unique_and_bindable():
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[-1]))


def test_free_ports_are_never_ones_the_kernel_gives_outgoing_connections():
    """A port from the ephemeral range could be taken by any client's connect()
    before the daemon binds it (a clean-clone run failed that way)."""
    low, high = map(int, open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
    assert not any(low <= free_port() <= high for _ in range(50))


def test_wait_for_port_times_out_with_clear_message():
    port = free_port()
    with pytest.raises(ProcError, match=f"127.0.0.1:{port}"):
        wait_for_port(port, timeout=0.2)


def test_wait_for_port_reports_dead_process(tmp_path):
    p = Proc([sys.executable, "-c", "import sys; print('boom here'); sys.exit(7)"], tmp_path, name="dies")
    p.wait(10)
    with pytest.raises(ProcError, match="(?s)exited with 7.*boom here"):
        wait_for_port(free_port(), timeout=10, proc=p)


def test_proc_stop_terminates_and_logs(tmp_path):
    p = Proc([sys.executable, "-c", "import time; print('hello' + ' log', flush=True); time.sleep(60)"], tmp_path, name="sleeper")
    wait_until(lambda: "hello log" in p.log_text(), what="log line")
    assert p.alive()
    assert p.stop() == -signal.SIGTERM
    assert not p.alive()
    assert not pid_alive(p.pid)


def test_proc_stop_kills_term_ignoring_process(tmp_path):
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('rea' + 'dy', flush=True); time.sleep(60)"
    p = Proc([sys.executable, "-c", code], tmp_path, name="stubborn")
    wait_until(lambda: "ready\n" in p.log_text(), what="handler installed")
    assert p.stop(timeout=0.5) == -signal.SIGKILL


def test_proc_stop_kills_leftover_children_and_children_of(tmp_path):
    # The parent forks two children that ignore TERM, then exits on TERM itself.
    code = textwrap.dedent(
        """
        import os, signal, time
        for _ in range(2):
            if os.fork() == 0:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                time.sleep(60)
                os._exit(0)
        print('forked', flush=True)
        time.sleep(60)
        """
    )
    p = Proc([sys.executable, "-c", code], tmp_path, name="forker")
    wait_until(lambda: len(children_of(p.pid)) == 2, what="two children")
    kids = children_of(p.pid)
    assert all(pid_alive(k) for k in kids)
    p.stop()
    wait_until(lambda: not any(pid_alive(k) for k in kids), what="children killed")
    assert p.pid not in procs.leaked()


# -- backend ----------------------------------------------------------------


@pytest.fixture
def backend(backend_factory):
    return backend_factory("alpha")


def test_backend_root_and_unknown(backend, web):
    for path in ("/", "/no/such/thing?x=1"):
        r = web.get(backend.url + path)
        assert (r.status_code, r.text, r.headers["X-Backend"]) == (200, "alpha", "alpha")


def test_backend_keepalive_many_requests_one_connection(backend):
    conn = http.client.HTTPConnection("127.0.0.1", backend.port, timeout=5)
    conn.connect()
    sock = conn.sock
    for i in range(5):
        body = b"x" * i
        conn.request("POST" if i % 2 else "GET", f"/?i={i}", body=body or None)
        r = conn.getresponse()
        assert r.status == 200 and r.read() == b"alpha"
    assert conn.sock is sock  # never reconnected
    conn.close()


def test_backend_echo_keeps_header_order_and_raw_target(backend):
    req = (
        b"POST /echo?a=1&b=%2F HTTP/1.1\r\nHost: x\r\nX-B: 2\r\nX-A: 1\r\nX-B: 3\r\n"
        b"Content-Length: 5\r\nConnection: close\r\n\r\nhello"
    )
    resp = raw(backend.port, req)
    head, _, body = resp.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    data = json.loads(body)
    assert data["method"] == "POST"
    assert data["path"] == "/echo?a=1&b=%2F"
    assert [h for h in data["headers"] if h[0].startswith("X-")] == [["X-B", "2"], ["X-A", "1"], ["X-B", "3"]]
    assert data["body_len"] == 5
    assert data["body_sha256"] == hashlib.sha256(b"hello").hexdigest()
    assert data["backend"] == "alpha"


@pytest.mark.parametrize("n", [0, 1, 255, 65536, 65537, 1_000_003])
@pytest.mark.parametrize("chunked", [False, True])
def test_backend_bytes(backend, web, n, chunked):
    r = web.get(f"{backend.url}/bytes?n={n}" + ("&chunked=1" if chunked else ""), stream=True)
    if chunked:
        assert r.headers["Transfer-Encoding"] == "chunked" and "Content-Length" not in r.headers
    else:
        assert r.headers["Content-Length"] == str(n)
    h, total = hashlib.sha256(), 0
    for piece in r.iter_content(65536):
        h.update(piece)
        total += len(piece)
    assert total == n
    assert h.hexdigest() == pattern_sha256(n)


def test_backend_bytes_chunked_framing_on_the_wire(backend):
    resp = raw(backend.port, b"GET /bytes?n=3&chunked=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert resp.endswith(b"\r\n\r\n3\r\n\x00\x01\x02\r\n0\r\n\r\n")


def test_pattern_is_periodic():
    data = b"".join(pattern(600))
    assert len(data) == 600 and data[256:512] == bytes(range(256)) and data[512] == 0


@pytest.mark.parametrize("size", [0, 10, 200_000])
def test_backend_upload_content_length_and_chunked(backend, web, size):
    body = bytes(i % 253 for i in range(size))
    want = {"len": size, "sha256": hashlib.sha256(body).hexdigest()}
    assert web.put(backend.url + "/upload", data=body).json() == want
    # A generator body makes requests send Transfer-Encoding: chunked.
    pieces = (body[i : i + 7000] for i in range(0, size, 7000))
    assert web.post(backend.url + "/upload", data=pieces).json() == want


@pytest.mark.parametrize(
    "code, has_body", [(200, True), (201, True), (204, False), (304, False), (404, True), (500, True), (503, True)]
)
def test_backend_status(backend, web, code, has_body):
    r = web.get(f"{backend.url}/status/{code}")
    assert r.status_code == code
    assert r.headers["X-Backend"] == "alpha"
    assert bool(r.content) == has_body
    assert ("Content-Length" in r.headers) == has_body


def test_backend_head_has_no_body(backend):
    resp = raw(backend.port, b"HEAD /status/200 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = resp.partition(b"\r\n\r\n")
    assert b"Content-Length: " in head and body == b""


def test_backend_die_truncates_body(backend, web):
    resp = raw(backend.port, b"GET /die HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = resp.partition(b"\r\n\r\n")
    assert b"Content-Length: 1000" in head
    assert body == b"x" * 10
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError)):
        web.get(backend.url + "/die").content


def test_backend_die_rst(backend):
    with socket.create_connection(("127.0.0.1", backend.port), timeout=5) as s:
        s.sendall(b"GET /die?rst=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        with pytest.raises(ConnectionResetError):
            while True:
                chunk = s.recv(65536)
                assert chunk, "expected a reset, got a clean EOF"
                got += chunk


def test_backend_dieheader_closes_without_a_byte(backend):
    assert raw(backend.port, b"GET /dieheader HTTP/1.1\r\nHost: x\r\n\r\n") == b""


def test_backend_stats_and_reset(backend, web):
    web.get(backend.url + "/a?q=1")
    web.get(backend.url + "/a")
    web.post(backend.url + "/echo", data=b"one")
    web.post(backend.url + "/upload", data=b"two")
    web.put(backend.url + "/upload", data=b"not a post")
    st = backend.stats()
    assert st["requests"] == 5
    assert st["by_path"] == {"/a": 2, "/echo": 1, "/upload": 2}
    assert st["posts"] == [hashlib.sha256(b"one").hexdigest(), hashlib.sha256(b"two").hexdigest()]
    assert st["heads"] == {"/a": 2, "/echo": 1, "/upload": 2}
    backend.reset()
    assert backend.stats() == {"requests": 0, "by_path": {}, "posts": [], "heads": {}}


def test_backend_slow_extra_headers_and_health(backend, web):
    r = web.get(backend.url + "/slow?ms=10&hdr=Cache-Control:max-age%3D60&hdr=ETag:%22v1%22")
    assert r.text == "alpha"
    assert r.headers["Cache-Control"] == "max-age=60" and r.headers["ETag"] == '"v1"'
    assert web.get(backend.url + "/healthz").status_code == 200
    backend.set_health(503)
    assert web.get(backend.url + "/healthz").status_code == 503


def test_backend_rejects_bad_chunked_body(backend):
    resp = raw(backend.port, b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    assert resp.startswith(b"HTTP/1.1 400")


def test_backend_stop_and_restart_same_port(backend, web):
    port, first = backend.port, backend.pid
    backend.stop()
    assert not procs.port_open(port)
    backend.start()
    assert backend.port == port and backend.pid != first
    assert web.get(backend.url).text == "alpha"


def test_backend_exits_zero_on_term(backend):
    assert backend.proc.stop() == 0


def test_two_backends_distinct(backend_factory, web):
    a, b = backend_factory("a"), backend_factory("b")
    assert a.port != b.port
    assert [web.get(x.url).text for x in (a, b)] == ["a", "b"]


# -- memcached --------------------------------------------------------------


def test_memcached_set_get_freeze_thaw(memcached_factory):
    m = memcached_factory()
    assert m.command("set k 0 0 2\r\nhi") == b"STORED\r\n"
    assert m.command("get k") == b"VALUE k 0 2\r\nhi\r\nEND\r\n"
    assert int(m.stats()["get_hits"]) == 1
    m.freeze()
    with pytest.raises(socket.timeout):
        m.command("get k", timeout=0.3)
    m.thaw()
    assert m.command("get k").startswith(b"VALUE k")
    m.freeze()  # stop() must cope with a frozen memcached
    m.stop()
    assert not m.alive()


# -- ForkProxy runner against a stand-in daemon -------------------------------

FAKE_MAIN = textwrap.dedent(
    '''
    """Stand-in for ``python -m forkproxy -c FILE``: a forking HTTP server."""
    import os, signal, socket, sys, tomllib
    conf = sys.argv[sys.argv.index("-c") + 1]
    with open(conf, "rb") as f:
        cfg = tomllib.load(f)
    srv, fake = cfg["server"], cfg.get("fake", {})
    err = open(srv["error_log"], "a", buffering=1)
    if fake.get("die"):
        err.write("fatal: config says die\\n")
        sys.exit(3)
    host, port = cfg["listener"][0]["bind"].rsplit(":", 1)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, int(port)))
    s.listen(64)
    with open(srv["pidfile"], "w") as f:
        f.write(f"{os.getpid()}\\n")
    kids = []
    for _ in range(srv["workers"]):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN if fake.get("stubborn") else signal.SIG_DFL)
            while True:
                c, _ = s.accept()
                c.recv(65536)
                c.sendall(b"HTTP/1.1 404 Not Found\\r\\nContent-Length: 0\\r\\nConnection: close\\r\\n\\r\\n")
                c.close()
        kids.append(pid)
    err.write("master started\\n")
    def term(*_):
        for k in kids:
            os.kill(k, signal.SIGTERM)
        os._exit(0)  # deliberately does not wait: stubborn workers are left behind
    signal.signal(signal.SIGTERM, term)
    while True:
        signal.pause()
    '''
)


@pytest.fixture
def fake_env(tmp_path):
    pkg = tmp_path / "fake" / "forkproxy"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text(FAKE_MAIN)
    return {"PYTHONPATH": str(tmp_path / "fake")}


def listener(port):
    return f'[[listener]]\nname = "web"\nbind = "127.0.0.1:{port}"\n'


def test_toml_value_roundtrip():
    import tomllib

    v = {"a": 'q"uote\\', "b": [1, 2.5, True], "c": {"addr": "x:1", "backup": False}}
    assert tomllib.loads("\n".join(f"{k} = {toml_value(x)}" for k, x in v.items())) == v


def test_forkproxy_config_merges_server_overrides(tmp_path):
    fp = ForkProxy(tmp_path / "fp", listener(1234), server={"workers": 3, "access_log": None, "extra": "x"})
    cfg = fp.parsed()
    assert cfg["server"]["workers"] == 3 and cfg["server"]["extra"] == "x"
    assert "access_log" not in cfg["server"]
    assert cfg["server"]["pidfile"] == str(tmp_path / "fp" / "forkproxy.pid")
    assert cfg["listener"] == [{"name": "web", "bind": "127.0.0.1:1234"}]
    assert fp.proc is None  # the constructor does not start anything


def test_forkproxy_runner_ready_workers_logs_stop(forkproxy_factory, fake_env):
    port = free_port()
    fp = forkproxy_factory(listener(port), env=fake_env)  # waits ready on the first listener
    workers = fp.wait_workers()
    assert len(workers) == 2 and fp.worker_pids() == workers
    # The stand-in writes it after forking its workers, which may serve first.
    fp.wait_error_log("master started")
    assert int(fp.pidfile.read_text()) == fp.pid
    fp.stop()
    assert not fp.alive()
    wait_until(lambda: not any(pid_alive(w) for w in workers), what="workers gone")


def test_forkproxy_runner_kills_stubborn_workers(forkproxy_factory, fake_env):
    port = free_port()
    fp = forkproxy_factory(listener(port) + "[fake]\nstubborn = true\n", env=fake_env)
    workers = fp.wait_workers(2)
    fp.wait_ready(f"http://127.0.0.1:{port}/anything")
    assert fp.stop() == 0  # the master exits at once, its workers ignore TERM
    wait_until(lambda: not any(pid_alive(w) for w in workers), what="stubborn workers killed")


def test_forkproxy_runner_reports_death_with_log_tail(forkproxy_factory, fake_env):
    fp = forkproxy_factory(listener(free_port()) + "[fake]\ndie = true\n", env=fake_env, ready=False)
    with pytest.raises(ProcError, match="(?s)exited with 3.*config says die"):
        fp.wait_ready()
    assert fp.wait(10) == 3


def test_leak_guard_sees_a_running_proc(tmp_path):
    p = Proc([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path, name="leaky")
    try:
        assert p.pid in procs.leaked()
    finally:
        p.stop()
    assert p.pid not in procs.leaked()


def test_proc_wait_timeout(tmp_path):
    p = Proc([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path, name="waiter")
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            p.wait(0.05)
    finally:
        p.stop()
