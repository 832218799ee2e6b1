"""Keep-alive client connections survive reloads (net.handoff): a draining
worker hands each plain-HTTP connection between two requests to the newest
generation, so clients never reconnect.

Real masters, backends and clients on 127.0.0.1; real SIGHUPs.
"""

from __future__ import annotations

import os
import socket
import threading

from support.configs import one_pool
from support.procs import free_port, wait_until
from support.rawhttp import Conn

CLIENTS = 64
RELOADS = 20


def test_keep_alive_clients_never_reconnect_across_twenty_reloads(forkproxy_factory,
                                                                  backend_factory):
    b = backend_factory("b")
    port = free_port()
    body = one_pool(port, [b.addr])
    fp = forkproxy_factory(body)
    get = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    stop = threading.Event()
    counts = {"connects": 0, "ok": 0}
    failures: list[str] = []
    lock = threading.Lock()

    def client():
        conn = None
        try:
            while not stop.is_set():
                if conn is None:
                    conn = Conn(port, timeout=30)
                    with lock:
                        counts["connects"] += 1
                conn.send(get)
                r = conn.reply()
                if r.status != 200 or r.body != b"b":
                    failures.append(f"{r.status} {r.body[:80]!r}")
                with lock:
                    counts["ok"] += 1
                if r.headers.get("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
        except Exception as exc:  # noqa: BLE001 - reported below, never lost
            failures.append(repr(exc))
        finally:
            if conn is not None:
                conn.close()

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: counts["connects"] == CLIENTS, timeout=30)
        first_workers = set(fp.worker_pids())
        for _ in range(RELOADS):
            served = counts["ok"]
            fp.reload_and_wait()
            # Requests go on between reloads: some are in flight at each drain.
            wait_until(lambda: counts["ok"] >= served + CLIENTS or failures, timeout=30,
                       what=f"requests after a reload ({counts}, {failures[:3]})")
            if failures:
                open("/tmp/handoff-err.log", "w").write(fp.error_log())
            assert not failures, failures[:3]
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not failures, failures[:5]
    assert counts["connects"] == CLIENTS, counts  # no client ever had to reconnect
    assert not first_workers & set(fp.worker_pids())  # served by other processes by now
    assert all(not t.is_alive() for t in threads)


def test_a_receiver_that_refuses_is_skipped_for_the_next(forkproxy_factory, backend_factory):
    """A socket of a newer generation whose worker died (left behind, refusing)
    costs a log line, and the connection goes to the next receiver.  (TLS
    connections stay in their worker: tests/e2e/test_tls.py.)"""
    b = backend_factory("b")
    port = free_port()
    fp = forkproxy_factory(one_pool(port, [b.addr]), server={"workers": 1})
    # A socket of a newer generation whose worker is gone (bound, never
    # listening: a connect is refused), made after the workers swept.
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    dirfd = os.open(fp.dir / "run" / "handoff", os.O_RDONLY | os.O_DIRECTORY)
    try:
        dead.bind(f"/proc/self/fd/{dirfd}/g99-{os.getpid()}.sock")
    finally:
        os.close(dirfd)
    dead.close()
    get = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    with Conn(port, timeout=30) as c:
        c.send(get)
        assert c.reply().status == 200
        fp.reload_and_wait()
        c.send(get)  # handed to generation 2 after g99 refused
        r = c.reply()
        assert r.status == 200 and r.headers.get("Connection", "").lower() != "close"
    assert f"g99-{os.getpid()}.sock failed" in fp.error_log()


def test_a_connection_whose_listener_is_gone_is_kept_and_closed_as_before(forkproxy_factory,
                                                                          backend_factory):
    """The new configuration names the listener differently: the new generation
    refuses the connection, the old worker keeps it, answers the next request
    with Connection: close, and nothing is lost."""
    b = backend_factory("b")
    port = free_port()
    fp = forkproxy_factory(one_pool(port, [b.addr], listener="web"), server={"workers": 1})
    get = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    with Conn(port, timeout=30) as c:
        c.send(get)
        assert c.reply().status == 200
        fp.write_config(one_pool(port, [b.addr], listener="front"))
        fp.reload_and_wait()
        c.send(get)
        r = c.reply()
        assert r.status == 200 and r.headers.get("Connection", "").lower() == "close"
    fp.wait_error_log("no plain HTTP listener 'web' here")
