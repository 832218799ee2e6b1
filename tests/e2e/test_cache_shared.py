"""The embedded cache store shared by every worker (issue 23), end to end.

Real forkproxy masters with 2 or 4 workers and ``[cache] servers = []``,
a real origin.  Which worker took a connection is read from /proc (the
worker holding the accepted socket), so a test can send the request that
must see another worker's change to a worker that did not make it.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from support.backend import pattern, pattern_sha256
from support.configs import cache_site
from support.procs import free_port, wait_until

pytestmark = pytest.mark.timeout(180)

MAXAGE = "hdr=Cache-Control:max-age%3D60"
TOKEN = "shared-token"


# -- connections on known workers -----------------------------------------------------

def _inode(proxy_port: int, client_port: int) -> int:
    """The inode of the proxy's accepted socket for the client's port (0: not accepted yet)."""
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], int(fields[9])
            if int(local.split(":")[1], 16) == proxy_port and int(remote.split(":")[1], 16) == client_port:
                return inode
    return 0


def worker_of(fp, port: int, conn: http.client.HTTPConnection) -> int | None:
    """The pid of the worker that accepted ``conn`` (connected), once it did."""
    client_port = conn.sock.getsockname()[1]
    found: list[int] = []

    def look() -> bool:
        inode = _inode(port, client_port)
        if not inode:
            return False
        for pid in fp.worker_pids():
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                continue
            for fd in fds:
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                        found.append(pid)
                        return True
                except OSError:
                    pass
        return False

    wait_until(look, timeout=10, what="the worker holding the connection")
    return found[0]


def connect(port: int) -> http.client.HTTPConnection:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.connect()
    return conn


def on_workers(fp, port: int, n: int, each: int = 1, tries: int = 400) -> dict[int, list]:
    """New connections until ``n`` workers hold ``each`` of them: {pid: [conn, ...]}."""
    by: dict[int, list] = {}
    for _ in range(tries):
        c = connect(port)
        pid = worker_of(fp, port, c)
        if len(by.get(pid, [])) < each:
            by.setdefault(pid, []).append(c)
        else:
            c.close()
        if len(by) >= n and all(len(v) >= each for v in list(by.values())[:n]):
            break
    assert len(by) >= n, f"connections landed on {len(by)} workers only"
    return by


def ask(conn, path: str, method: str = "GET", headers=None):
    """One request on ``conn`` (then closed): (status, X-Cache, body)."""
    try:
        conn.request(method, path, headers={"Connection": "close", **(headers or {})})
        r = conn.getresponse()
        return r.status, r.getheader("X-Cache"), r.read()
    finally:
        conn.close()


def count(origin, path) -> int:
    return origin.stats()["by_path"].get(path, 0)


def start(forkproxy_factory, origin, workers: int, cache: str = "", **server):
    port = free_port()
    fp = forkproxy_factory(cache_site(port, origin.addr, cache), server={"workers": workers, **server})
    fp.wait_workers()
    return fp, port


# -- the tests -----------------------------------------------------------------------

def test_40_gets_over_4_workers_reach_the_origin_once(forkproxy_factory, origin):
    """40 connections spread over the 4 workers ask at once for a URL the origin is slow
    to answer: one request upstream (coalescing across workers); then every worker hits."""
    # Gathering the 40 connections (each one's worker found in /proc) can take
    # longer than header_timeout's 10 s on a loaded machine: the first ones,
    # idle meanwhile, were closed before their request.
    fp, port = start(forkproxy_factory, origin, 4, header_timeout="120s")
    t0 = time.monotonic()
    by = on_workers(fp, port, 4, each=10)
    print(f"\n40 connections over 4 workers gathered in {time.monotonic() - t0:.1f}s")
    conns = [c for cs in by.values() for c in cs][:40]
    path = f"/one?ms=300&{MAXAGE}"
    with ThreadPoolExecutor(len(conns)) as pool:
        got = list(pool.map(lambda c: ask(c, path), conns))
    assert all(status == 200 for status, _, _ in got)
    assert sorted(x for _, x, _ in got).count("MISS") == 1
    assert count(origin, "/one") == 1
    for pid, (c, *_) in on_workers(fp, port, 4).items():
        assert ask(c, path)[1] == "HIT", f"worker {pid} missed"
    assert count(origin, "/one") == 1


def test_a_post_invalidates_for_every_worker(forkproxy_factory, origin):
    fp, port = start(forkproxy_factory, origin, 2)
    (a, *_), (b, *_) = on_workers(fp, port, 2).values()
    path = f"/inv?{MAXAGE}"
    assert ask(a, path)[1] == "MISS"
    assert ask(b, path)[1] == "HIT"  # stored by the other worker
    (a, *_), (b, *_) = on_workers(fp, port, 2).values()
    assert ask(a, path, "POST", {"Content-Length": "0"})[0] == 200
    assert ask(b, path)[1] == "MISS"  # invalidated by the other worker's POST
    assert count(origin, "/inv") == 3


def test_a_purge_through_forkproxyctl_reaches_every_worker(forkproxy_factory, origin):
    fp, port = start(forkproxy_factory, origin, 2,
                     admin=f"127.0.0.1:{free_port()}", admin_token=TOKEN)
    path = f"/p?{MAXAGE}"
    url = f"http://127.0.0.1:{port}{path}"
    for how in (("purge", url), ("purge", "--host", f"127.0.0.1:{port}")):
        for pid, (c, *_) in on_workers(fp, port, 2).items():
            assert ask(c, path)[1] in ("MISS", "HIT")
        assert all(ask(c, path)[1] == "HIT" for c, *_ in on_workers(fp, port, 2).values())
        out = fp.ctl("--json", *how)
        assert out.returncode == 0, out.stderr
        assert '"shared": true' in out.stdout
        first, second = [c for c, *_ in on_workers(fp, port, 2).values()]
        assert ask(first, path)[1] == "MISS"
        assert ask(second, path)[1] == "HIT"  # whichever worker took the purge
    assert count(origin, "/p") == 3  # the first miss, one after each purge
    assert "embedded, shared by the workers" in fp.ctl("status").stdout


def test_entries_survive_a_reload(forkproxy_factory, origin):
    fp, port = start(forkproxy_factory, origin, 2)
    path = f"/r?{MAXAGE}"
    assert ask(connect(port), path)[1] == "MISS"
    old = set(fp.worker_pids())
    fp.reload()
    wait_until(lambda: len(fp.worker_pids()) == 2 and not old & set(fp.worker_pids()),
               timeout=30, what="the new generation alone")
    for c, *_ in on_workers(fp, port, 2).values():
        assert ask(c, path)[1] == "HIT"
    assert count(origin, "/r") == 1


class SlowOrigin:
    """An origin whose first answer to /big sends half its body, then waits for ``go``
    (any other path: "ok")."""

    SIZE = 600_000

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.addr = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.go = threading.Event()
        self.requests = 0
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.answer, args=(conn,), daemon=True).start()

    def answer(self, conn):
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                piece = conn.recv(65536)
                if not piece:
                    return
                data += piece
            if not data.startswith(b"GET /big "):
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                return
            self.requests += 1
            first = self.requests == 1
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nCache-Control: max-age=60\r\n"
                         b"Connection: close\r\n\r\n" % self.SIZE)
            sent = 0
            for piece in pattern(self.SIZE):
                if first and sent >= self.SIZE // 2:
                    self.go.wait(60)
                try:
                    conn.sendall(piece)
                except OSError:
                    return
                sent += len(piece)

    def close(self):
        self.go.set()
        self.sock.close()


def test_a_worker_killed_while_it_stores_a_body_leaves_no_entry(forkproxy_factory):
    """The worker relaying (and storing) a 600 KB body is SIGKILLed when the client
    has half of it (chunks of it are in the store; the entry is not): the next GET
    is a MISS with the whole body, never a truncated HIT; the one after a HIT."""
    origin = SlowOrigin()
    try:
        port = free_port()
        fp = forkproxy_factory(cache_site(port, origin.addr, 'lock_timeout = "30s"'),
                               server={"workers": 2})
        fp.wait_workers()
        conn = connect(port)
        pid = worker_of(fp, port, conn)
        conn.request("GET", "/big")
        r = conn.getresponse()
        assert r.status == 200 and r.getheader("X-Cache") == "MISS"
        assert len(r.read(SlowOrigin.SIZE // 2)) == SlowOrigin.SIZE // 2
        os.kill(pid, signal.SIGKILL)
        with pytest.raises((http.client.IncompleteRead, ConnectionError)):
            r.read()
            raise ConnectionError("the body ended cleanly")  # it must not
        conn.close()
        origin.go.set()
        fp.wait_workers(2)
        # lock_timeout is 30 s: the next request must not wait for the dead worker's lock
        status, x_cache, body = ask(connect(port), "/big")
        assert (status, x_cache) == (200, "MISS")
        assert hashlib.sha256(body).hexdigest() == pattern_sha256(SlowOrigin.SIZE)
        for c, *_ in on_workers(fp, port, 2).values():
            status, x_cache, body = ask(c, "/big")
            assert (status, x_cache, len(body)) == (200, "HIT", SlowOrigin.SIZE)
            assert hashlib.sha256(body).hexdigest() == pattern_sha256(SlowOrigin.SIZE)
        assert origin.requests == 2
    finally:
        origin.close()


def test_the_per_worker_store_is_still_there(forkproxy_factory, origin):
    """shared_size = 0: each worker its own store (the old behaviour), no region file."""
    fp, port = start(forkproxy_factory, origin, 2, cache="shared_size = 0")
    path = f"/w?{MAXAGE}"
    for c, *_ in on_workers(fp, port, 2).values():
        assert ask(c, path)[1] == "MISS"
    assert count(origin, "/w") == 2
    assert not os.path.exists(os.path.join(fp.server["runtime_dir"], "cache.shm"))


def test_a_reload_that_changes_the_size_starts_an_empty_store(forkproxy_factory, origin):
    fp, port = start(forkproxy_factory, origin, 2)
    path = f"/z?{MAXAGE}"
    assert ask(connect(port), path)[1] == "MISS"
    inode = os.stat(os.path.join(fp.server["runtime_dir"], "cache.shm")).st_ino
    old = set(fp.worker_pids())
    fp.write_config(fp.body.replace("[cache]\n", '[cache]\nshared_size = "8m"\n', 1))
    fp.reload()
    wait_until(lambda: len(fp.worker_pids()) == 2 and not old & set(fp.worker_pids()),
               timeout=30, what="the new generation alone")
    region = os.path.join(fp.server["runtime_dir"], "cache.shm")
    assert os.stat(region).st_ino != inode and os.stat(region).st_size == 8 << 20
    assert ask(connect(port), path)[1] == "MISS"
    for c, *_ in on_workers(fp, port, 2).values():
        assert ask(c, path)[1] == "HIT"
