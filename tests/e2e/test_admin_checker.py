"""The admin endpoint answered by the health checker itself must not drop its lock.

POSIX record locks belong to the process: closing any descriptor of the lock
file releases them. ``GET /status`` names the checker's pid; asked in the
checker's own worker, it must not open and close ``checker.lock`` to find
out, or the lock is gone while that worker goes on probing, and the next
worker to try takes it too: two checkers writing one health table.
"""

from __future__ import annotations

import requests

from forkproxy.net.leader import holder_pid
from support.configs import one_pool
from support.procs import free_port, wait_until


def test_status_from_the_checkers_worker_keeps_the_lock(forkproxy_factory, backend_factory):
    b = backend_factory("b1")
    port, aport = free_port(), free_port()
    fp = forkproxy_factory(one_pool(port, [b.addr], 'health = { path = "/healthz", interval = "200ms" }'),
                           server={"workers": 1, "admin": f"127.0.0.1:{aport}"})
    (worker,) = fp.wait_workers(1)
    lock = str(fp.dir / "run" / "checker.lock")
    wait_until(lambda: holder_pid(lock) == worker, timeout=15)
    for _ in range(3):  # the only worker answers: it is the checker
        doc = requests.get(f"http://127.0.0.1:{aport}/status", timeout=30).json()
        assert doc["checker_pid"] == worker
        assert holder_pid(lock) == worker
