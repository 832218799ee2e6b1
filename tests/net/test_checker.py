"""net.checker: probes against real backends, and Checker processes over a real shared table.

``probe`` is exercised in this process (plain blocking sockets are fine for
one probe). ``Checker`` runs as it does in a worker: in a child process,
after gevent's monkey patching, writing a table made by ``daemon.shm.create``
in tmp_path and electing itself on a lock file there. Every wait polls a
condition; no test asserts a duration.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time

import pytest

from support.procs import Proc, free_port, wait_until
from support.runner import REPO_ROOT

from forkproxy.config import HealthConfig, ServerEntry
from forkproxy.daemon import shm
from forkproxy.net.checker import Target, probe
from forkproxy.net.leader import holder_pid

# A worker's checker, alone: argv[1] is a JSON spec (table, lock, targets, initial).
_DRIVER = """
from gevent import monkey; monkey.patch_all()
import json, logging, os, sys
from forkproxy.config import HealthConfig, ServerEntry
from forkproxy.daemon.shm import open_table
from forkproxy.net.checker import Checker, Target
from forkproxy.net.leader import Leader
spec = json.loads(sys.argv[1])
logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(process)d %(levelname)s %(message)s")
table = open_table(spec["table"], writable=True)
fd = os.open(spec["lock"], os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
targets = []
for t in spec["targets"]:
    h = dict(t["health"])
    if "expect_status" in h:
        h["expect_status"] = tuple(tuple(r) for r in h["expect_status"])
    server = ServerEntry(addr=t["addr"], host=t["addr"].rsplit(":", 1)[0], port=int(t["addr"].rsplit(":", 1)[1]))
    targets.append(Target(t["row"], t["pool"], server, HealthConfig(**h)))
Checker(table, targets, Leader(fd), logging.getLogger("forkproxy.checker"), initial=spec.get("initial", "up")).run()
"""

DEADLINE = 30  # generous: a condition that needs a few intervals of 0.1-1 s


def entry(addr: str) -> ServerEntry:
    host, port = addr.rsplit(":", 1)
    return ServerEntry(addr=addr, host=host, port=int(port))


def target(addr: str, row: int = 0, pool: str = "p", **health) -> Target:
    if "expect_status" in health:
        health["expect_status"] = tuple(tuple(r) for r in health["expect_status"])
    return Target(row, pool, entry(addr), HealthConfig(**health))


class Checkers:
    """One shared table + lock in a directory, and checker processes over it."""

    def __init__(self, directory, addrs_health: list[tuple[str, dict]]):
        self.dir = directory
        self.table_path = str(directory / "health.tbl")
        self.lock_path = str(directory / "checker.lock")
        self.rows = addrs_health
        labels = [f"p/{addr}" for addr, _ in addrs_health]
        self.mm, self.table = shm.create(self.table_path, len(labels), 1, 1, labels=labels)
        self.procs: list[Proc] = []

    def start(self, name: str, health_override: dict | None = None, initial: str = "up") -> Proc:
        spec = {
            "table": self.table_path, "lock": self.lock_path, "initial": initial,
            "targets": [{"row": i, "pool": "p", "addr": addr, "health": {**h, **(health_override or {})}}
                        for i, (addr, h) in enumerate(self.rows)],
        }
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"}
        p = Proc([sys.executable, "-c", _DRIVER, json.dumps(spec)], self.dir, name=name, env=env)
        self.procs.append(p)
        return p

    def health(self, row: int = 0):
        return self.table.read_health(row)

    def wait_row(self, pred, row: int = 0, what: str = "the row", timeout: float = DEADLINE):
        def ok():
            for p in self.procs:
                if p.poll() is not None and p.returncode not in (-signal.SIGKILL,):
                    raise AssertionError(f"{p.name} exited {p.returncode}:\n{p.log_tail()}")
            h = self.health(row)
            return h is not None and pred(h)
        wait_until(ok, timeout=timeout, what=what)
        return self.health(row)

    def close(self):
        for p in self.procs:
            p.stop()
        shm.close_table(self.table)


@pytest.fixture
def checkers(tmp_path):
    made: list[Checkers] = []

    def make(rows):
        d = tmp_path / f"checkers{len(made)}"
        d.mkdir()
        c = Checkers(d, rows)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


# -- probe ----------------------------------------------------------------------


def test_probe_http_status_body_host_and_method(backend_factory):
    b = backend_factory("b1")
    assert probe(target(b.addr, path="/healthz"))[:2] == (True, "ok")
    b.set_health(503)
    ok, result, latency = probe(target(b.addr, path="/healthz"))
    assert (ok, result) == (False, "status 503") and latency > 0
    assert probe(target(b.addr, path="/healthz", expect_status=[(200, 200), (500, 503)]))[:2] == (True, "ok")

    assert probe(target(b.addr, expect_body=r"^b\d$"))[:2] == (True, "ok")  # "/" answers the name
    assert probe(target(b.addr, expect_body="nope"))[:2] == (False, "body mismatch")
    # Host header: the server's addr by default, health.host when set.
    assert probe(target(b.addr, path="/echo", expect_body=r'\["Host", "%s"\]' % b.addr.replace(".", r"\.")))[0]
    assert probe(target(b.addr, path="/echo", host="api.test", expect_body=r'\["Host", "api\.test"\]'))[0]
    assert probe(target(b.addr, path="/echo", method="OPTIONS", expect_body='"method": "OPTIONS"'))[0]
    assert probe(target(b.addr, method="HEAD"))[:2] == (True, "ok")

    # Redirects are judged, never followed.
    assert probe(target(b.addr, path="/status/302"))[:2] == (True, "ok")
    assert probe(target(b.addr, path="/status/302", expect_status=[(200, 299)]))[:2] == (False, "status 302")
    assert b.stats()["by_path"].get("/status/302") == 2


def test_probe_failures_refused_and_timeout(backend_factory):
    closed = f"127.0.0.1:{free_port()}"  # nothing listens there
    assert probe(target(closed, type="tcp"))[:2] == (False, "refused")
    assert probe(target(closed))[:2] == (False, "refused")
    b = backend_factory("b1")
    assert probe(target(b.addr, type="tcp"))[:2] == (True, "ok")
    assert probe(target(b.addr, path="/slow?ms=3000", timeout=0.3))[:2] == (False, "timeout")


# -- Checker processes --------------------------------------------------------------


def test_up_down_up_follows_rise_and_fall(checkers, backend_factory):
    b = backend_factory("b1")
    c = checkers([(b.addr, {"path": "/healthz", "interval": 0.1, "rise": 2, "fall": 3})])
    p = c.start("checker")
    h = c.wait_row(lambda h: h.last_result == "ok" and h.successes >= 2, what="first good checks")
    assert h.state == "up" and h.failures == 0 and h.latency > 0 and h.last_check > 0

    b.set_health(503)
    h = c.wait_row(lambda h: h.state == "down", what="DOWN after fall failures")
    assert h.reason == "3 failed checks, last: status 503"
    assert h.last_result == "status 503"

    b.set_health(200)
    h = c.wait_row(lambda h: h.state == "up", what="UP after rise successes")
    assert h.reason == "2 successful checks, last: ok"
    # The checker writes the row, then the line: wait for the line (a
    # clean-clone CI run read the log between the two and missed it).
    for line in (f"server p/{b.addr} is DOWN: 3 failed checks, last: status 503",
                 f"server p/{b.addr} is UP: 2 successful checks, last: ok"):
        wait_until(lambda: line in p.log_text(), what=repr(line))


def test_tcp_checks_and_expectations_in_the_table(checkers, backend_factory):
    b = backend_factory("b1")
    closed = f"127.0.0.1:{free_port()}"
    fast = {"interval": 0.1, "rise": 1, "fall": 1}
    c = checkers([
        (closed, {"type": "tcp", **fast}),
        (b.addr, {"type": "tcp", **fast}),
        (b.addr, {"path": "/", "expect_body": "^never$", **fast}),
        (b.addr, {"path": "/status/204", "expect_status": [[200, 200]], **fast}),
        (b.addr, {"path": "/status/204", "expect_status": [[204, 204]], **fast}),
    ])
    c.start("checker")
    assert c.wait_row(lambda h: h.state == "down", 0).last_result == "refused"
    assert c.wait_row(lambda h: h.successes >= 2, 1).state == "up"
    assert c.wait_row(lambda h: h.state == "down", 2).last_result == "body mismatch"
    assert c.wait_row(lambda h: h.state == "down", 3).last_result == "status 204"
    assert c.wait_row(lambda h: h.successes >= 2, 4).state == "up"


def test_initial_down_row_comes_up(checkers, backend_factory):
    b = backend_factory("b1")
    c = checkers([(b.addr, {"path": "/healthz", "interval": 0.1, "rise": 3})])
    c.start("checker", initial="fully-down")
    h = c.wait_row(lambda h: h.state == "up", what="UP from fully-down")
    assert h.reason == "3 successful checks, last: ok"


def test_one_leader_probes_and_another_takes_over_after_sigkill(checkers, backend_factory):
    b = backend_factory("b1")
    c = checkers([(b.addr, {"interval": 0.1})])
    # Each process probes its own path, so the backend tells who probed.
    pa = c.start("checker-a", {"path": "/a"})
    pb = c.start("checker-b", {"path": "/b"})

    def counts():
        by = b.stats()["by_path"]
        return by.get("/a", 0), by.get("/b", 0)

    wait_until(lambda: sum(counts()) >= 10, timeout=DEADLINE, what="10 probes")
    wait_until(lambda: holder_pid(c.lock_path) in (pa.pid, pb.pid), timeout=DEADLINE, what="a lock holder")
    leader, follower, follower_path = (pa, pb, 1) if holder_pid(c.lock_path) == pa.pid else (pb, pa, 0)
    a, bb = counts()
    assert (a == 0) != (bb == 0), f"both processes probed: /a {a}, /b {bb}"
    assert counts()[follower_path] == 0

    leader.signal(signal.SIGKILL)
    leader.wait(timeout=10)
    killed_at = time.time()
    wait_until(lambda: counts()[follower_path] >= 5, timeout=DEADLINE, what="the follower to probe")
    assert holder_pid(c.lock_path) == follower.pid
    c.wait_row(lambda h: h.last_check > killed_at, what="last_check advancing after takeover")
    assert "health checker elected" in follower.log_text()


def test_many_targets_checked_concurrently(checkers):
    """200 TCP targets at a 1 s interval: each row gets several checks.

    Sequential probes would still pass here only if each took ~1/200 s, so
    the HTTP test below is the one that proves concurrency with slow probes.
    """
    listeners = []
    try:
        for _ in range(200):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            s.listen(128)  # the kernel completes the handshakes; nobody needs to accept
            listeners.append(s)
        rows = [(f"127.0.0.1:{s.getsockname()[1]}", {"type": "tcp", "interval": 1.0}) for s in listeners]
        c = checkers(rows)
        c.start("checker")
        for row in range(len(rows)):
            c.wait_row(lambda h: h.successes >= 3, row, what=f"3 checks of row {row}")
    finally:
        for s in listeners:
            s.close()


def test_slow_http_probes_run_concurrently(checkers, backend_factory):
    """20 probes of 0.7 s each, every 0.5 s: only concurrent probes give every row 3 checks quickly.

    One at a time, a round would take 14 s and the 30 s deadline would see
    at most two checks of the last rows.
    """
    b1, b2 = backend_factory("b1"), backend_factory("b2")
    rows = [((b1, b2)[i % 2].addr, {"path": "/slow?ms=700", "interval": 0.5, "timeout": 5.0}) for i in range(20)]
    c = checkers(rows)
    c.start("checker")
    for row in range(len(rows)):
        h = c.wait_row(lambda h: h.successes >= 3, row, what=f"3 checks of row {row}")
        assert h.latency >= 0.7


def test_probes_of_a_hung_server_keep_their_pace(checkers):
    """A server that accepts and never answers: each probe lasts its whole
    timeout (0.5 s), and the next still starts one interval (0.5 s) after it
    started, not an interval after it ended, so the failures come at the
    interval's pace: 16 in about 8 s (twice that at the old pace, past the 14 s
    deadline), and such a server is DOWN within (fall - 1) x interval + timeout.
    """
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(128)  # the kernel accepts; nobody ever reads or answers
    try:
        c = checkers([(f"127.0.0.1:{hung.getsockname()[1]}",
                       {"interval": 0.5, "timeout": 0.5, "fall": 100})])
        c.start("checker", initial="fully-up")
        h = c.wait_row(lambda h: h.failures >= 16, what="16 failed probes", timeout=14)
        assert h.last_result == "timeout"
    finally:
        hung.close()
