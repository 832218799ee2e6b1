"""Failing servers under keep-alive load: a hung one, a slow one, one that resets.

Three real backends behind a real master (2 workers), active checks every
second, a short read_timeout; keep-alive clients (threads, one connection
each) send GETs, a bounded number of them, while one backend fails.  Every
request must succeed: those caught on the failing server are retried on
another one (idempotent, nothing of the response sent yet), the active
checks take it out, and a failure is charged to no server but the failing
one.  The latency of the requests that waited on a hung server is printed,
never asserted.  Waits are readiness checks on counts and on the status.
"""

from __future__ import annotations

import http.client
import re
import socket
import threading
import time

import pytest
import requests

from support.configs import one_pool
from support.procs import free_port, wait_until

# A short read_timeout so a hung server costs seconds, not a minute; on this
# shared machine a healthy answer still comes well within it.
CHECKED = ('health = { path = "/healthz", interval = "1s", timeout = "1s", rise = 2, fall = 2 }\n'
           'read_timeout = "2s"\n')


class Load:
    """``clients`` keep-alive clients sending ``GET path`` until ``stop()``,
    at most ``limit`` requests each; every answer other than a 200, and every
    error, is kept in ``failed``."""

    def __init__(self, port: int, clients: int = 8, path: str = "/", limit: int = 3000):
        self.port, self.path, self.limit = port, path, limit
        self.lock = threading.Lock()
        self.done = 0
        self.failed: list[str] = []
        self.latency: list[float] = []
        self._stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]
        for t in self.threads:
            t.start()

    def _client(self) -> None:
        conn = None
        for _ in range(self.limit):
            if self._stop.is_set():
                break
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            t0 = time.monotonic()
            try:
                conn.request("GET", self.path)
                resp = conn.getresponse()
                resp.read()
                bad = None if resp.status == 200 else f"{resp.status} {resp.reason}"
                if resp.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                bad = repr(exc)
                conn.close()
                conn = None
            with self.lock:
                self.done += 1
                self.latency.append(time.monotonic() - t0)
                if bad is not None:
                    self.failed.append(bad)
        if conn is not None:
            conn.close()

    def count(self) -> int:
        with self.lock:
            return self.done

    def more(self, n: int, timeout: float = 60) -> None:
        """Wait until ``n`` more requests were answered."""
        target = self.count() + n
        wait_until(lambda: self.count() >= target or not self.running(), timeout=timeout,
                   what=f"{n} more requests")

    def running(self) -> bool:
        return any(t.is_alive() for t in self.threads)

    def stop(self) -> None:
        self._stop.set()
        for t in self.threads:
            t.join(timeout=60)

    def slowest(self, n: int = 5) -> list[str]:
        return [f"{x:.2f}s" for x in sorted(self.latency)[-n:]]


def servers(fp) -> dict[str, dict]:
    return {s["addr"]: s for s in fp.ctl_status()["pools"][0]["servers"]}


@pytest.fixture
def trio(forkproxy_factory, backend_factory):
    bs = [backend_factory(f"b{i}") for i in (1, 2, 3)]
    port = free_port()
    fp = forkproxy_factory(one_pool(port, [b.addr for b in bs], CHECKED))
    fp.wait_workers(2)
    wait_until(lambda: all(s["last_check"] and s["health"] == "up" for s in servers(fp).values()),
               what="every server checked and up")
    return fp, port, bs


def _healthy_are_clean(fp, bad) -> None:
    """No failure was charged to a server other than ``bad``: none shows one."""
    for addr, s in servers(fp).items():
        if addr != bad.addr:
            assert (s["health"], s["passive_failures"], s["passive_out"]) == ("up", 0, False), s


def test_a_hung_server_costs_no_request(trio):
    fp, port, (b1, b2, b3) = trio
    load = Load(port)
    try:
        load.more(200)
        b2.freeze()  # the kernel still accepts: requests sent there get no answer
        t0 = time.monotonic()
        wait_until(lambda: servers(fp)[b2.addr]["health"] == "down", timeout=30,
                   what="the active checks taking the hung server out")
        detect = time.monotonic() - t0
        load.more(400)
    finally:
        load.stop()
        b2.thaw()
    assert load.failed == [], load.failed[:10]
    _healthy_are_clean(fp, b2)
    print(f"\nhung server: {load.count()} requests, 0 failed; detected DOWN in {detect:.1f}s; "
          f"slowest {load.slowest()}")


def test_a_slow_server_within_the_timeout_costs_nothing(trio):
    # Slower than its peers but well within read_timeout: no request fails
    # and no server is taken out (a session's timers used to shrink by every
    # wait until they expired at once).
    fp, port, (b1, b2, b3) = trio
    b2.set_fault(ms=150)
    load = Load(port, limit=120)
    try:
        load.more(8 * 120)
    finally:
        load.stop()
    assert load.failed == [], load.failed[:10]
    assert all((s["health"], s["passive_failures"]) == ("up", 0) for s in servers(fp).values())
    assert b2.stats()["by_path"].get("/", 0) > 0  # it kept taking its share


def test_a_server_that_resets_costs_no_request(trio):
    fp, port, (b1, b2, b3) = trio
    load = Load(port)
    try:
        load.more(200)
        b2.set_fault(reset=True)  # every request answered with a TCP RST
        wait_until(lambda: servers(fp)[b2.addr]["health"] == "down", timeout=30,
                   what="the active checks taking the resetting server out")
        load.more(400)
    finally:
        load.stop()
    assert load.failed == [], load.failed[:10]
    _healthy_are_clean(fp, b2)


def test_passive_checks_never_take_the_whole_pool_out(forkproxy_factory, backend_factory):
    # Each server answers one request with a 500 (fail_status): with
    # max_fails 1 that used to take all three out, and every later request
    # got a 503.  max_ejection_percent (50) keeps two of three in rotation.
    bs = [backend_factory(f"b{i}") for i in (1, 2, 3)]
    port = free_port()
    fp = forkproxy_factory(one_pool(port, [b.addr for b in bs], "fail_status = [500]"),
                           server={"workers": 1})
    failed = set()
    for _ in range(9):
        r = requests.get(f"http://127.0.0.1:{port}/status/500", timeout=10)
        assert r.status_code == 500
        failed.add(r.headers["X-Backend"])
    assert len(failed) >= 2  # more servers failed than the cap lets out
    for _ in range(10):
        r = requests.get(f"http://127.0.0.1:{port}/", timeout=10)
        assert r.status_code == 200, r.text
    doc = {s["addr"]: s for s in fp.ctl_status()["pools"][0]["servers"]}
    assert sum(s["passive_out"] for s in doc.values()) == 1
    assert sum(s["passive_failures"] for s in doc.values()) >= 2


def _metrics(aport) -> str:
    return requests.get(f"http://127.0.0.1:{aport}/metrics", timeout=30).text


def test_server_up_is_0_for_a_server_out_by_passive_checks(forkproxy_factory, backend_factory):
    bs = [backend_factory(f"b{i}") for i in (1, 2, 3)]
    port, aport = free_port(), free_port()
    fp = forkproxy_factory(one_pool(port, [b.addr for b in bs], "fail_status = [500]"),
                           server={"workers": 1, "admin": f"127.0.0.1:{aport}"})
    r = requests.get(f"http://127.0.0.1:{port}/status/500", timeout=10)
    victim = next(b for b in bs if b.name == r.headers["X-Backend"])
    doc = {s["addr"]: s for s in fp.ctl_status()["pools"][0]["servers"]}
    assert doc[victim.addr]["passive_out"] is True and doc[victim.addr]["health"] == "up"
    up = dict(re.findall(r'forkproxy_server_up\{pool="web",server="([^"]+)"\} (\d)',
                         _metrics(aport)))
    assert up == {b.addr: "0" if b is victim else "1" for b in bs}


def test_a_pool_of_one_counts_and_shows_its_failures_but_keeps_its_server(forkproxy_factory,
                                                                         backend_factory):
    b = backend_factory("solo")
    port = free_port()
    fp = forkproxy_factory(one_pool(port, [b.addr], "fail_status = [500]"))
    assert requests.get(f"http://127.0.0.1:{port}/status/500", timeout=10).status_code == 500
    (s,) = fp.ctl_status()["pools"][0]["servers"]
    assert (s["passive_failures"], s["passive_out"]) == (1, False)
    assert requests.get(f"http://127.0.0.1:{port}/", timeout=10).status_code == 200


def test_retrying_is_said_only_when_another_attempt_follows(forkproxy_factory, backend_factory):
    solo, a, b = (backend_factory(n) for n in ("solo", "a", "b"))
    port = free_port()
    body = f"""
[[listener]]
name = "web"
bind = "127.0.0.1:{port}"

[[route]]
path = "/two"
pool = "two"

[[route]]
pool = "solo"

[pool.solo]
servers = [{{ addr = "{solo.addr}" }}]
read_timeout = "500ms"

[pool.two]
servers = [{{ addr = "{a.addr}" }}, {{ addr = "{b.addr}" }}]
read_timeout = "500ms"
"""
    fp = forkproxy_factory(body, server={"workers": 1})
    r = requests.get(f"http://127.0.0.1:{port}/slow?ms=1500", timeout=10)
    assert r.status_code == 504
    wait_until(lambda: "did not answer in time" in fp.error_log(), what="the 504's error line")
    line = next(l for l in fp.error_log().splitlines() if "did not answer in time" in l)
    assert "(retrying)" not in line  # one server: nothing is retried
    assert fp.wait_error_log("did not answer in time").count("did not answer in time") == 1

    a.set_fault(ms=1500)
    b.set_fault(ms=1500)
    r = requests.get(f"http://127.0.0.1:{port}/two/x", timeout=10)
    assert r.status_code == 504
    wait_until(lambda: fp.error_log().count("did not answer in time") == 3,
               what="both attempts' lines")
    lines = [l for l in fp.error_log().splitlines() if "did not answer in time" in l][1:]
    assert ["(retrying)" in l for l in lines] == [True, False]  # the first one, then the answer


def _dripping_server(srv: socket.socket, stop: threading.Event) -> None:
    """Answer each connection's request with a head dripped a byte every 0.2 s
    (about 5 s in all), then a complete empty 200."""
    while not stop.is_set():
        try:
            c, _ = srv.accept()
        except OSError:
            return
        with c:
            try:
                c.recv(65536)
                c.sendall(b"HTTP/1.1 200 OK\r\nX-Drip: ")
                for _ in range(25):
                    if stop.wait(0.2):
                        return
                    c.sendall(b"x")
                c.sendall(b"\r\nContent-Length: 0\r\n\r\n")
            except OSError:
                pass


def test_a_response_head_must_come_within_read_timeout_not_a_byte_per_read_timeout(
        forkproxy_factory):
    # Each attempt has its own deadline for the head: a server that drips it
    # a byte at a time cannot hold the request past read_timeout.
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.settimeout(10)
    stop = threading.Event()
    t = threading.Thread(target=_dripping_server, args=(srv, stop), daemon=True)
    t.start()
    try:
        port = free_port()
        addr = "127.0.0.1:%d" % srv.getsockname()[1]
        fp = forkproxy_factory(one_pool(port, [addr], 'read_timeout = "1s"'),
                               server={"workers": 1}, ready=False)
        fp.wait_ready(port, mode="tcp")
        r = requests.get(f"http://127.0.0.1:{port}/", timeout=30)
        assert r.status_code == 504
    finally:
        stop.set()
        srv.close()
        t.join(10)
