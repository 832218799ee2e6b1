"""server.user / server.group: the master keeps root, workers drop to the user.

Run as root only (the only way to test a privilege drop for real).  The
access log is opened by the master and handed to the user, so workers keep
logging after a rotation (USR1) even though they could not create the file.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import tempfile
from pathlib import Path

import pytest
import requests

import forkproxy

from support.procs import free_port, wait_until

def _world_traversable(path: str) -> bool:
    """Every directory from / to ``path`` lets other users in (o+x)."""
    path = os.path.realpath(path)
    while True:
        if not os.stat(path).st_mode & 0o001:
            return False
        parent = os.path.dirname(path)
        if parent == path:
            return True
        path = parent


# Workers import modules after dropping to the user: the interpreter's library
# and forkproxy itself must be readable by it (true of a packaged install; not
# of a Python built under /root, as on some CI machines).
_readable = all(_world_traversable(os.path.dirname(m.__file__))
                for m in (os, pytest, requests, forkproxy))
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges"),
    pytest.mark.skipif(not _readable, reason="this Python's files are not readable by other "
                       "users (installed under a private home directory)"),
]


def uid_of(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("Uid:"):
            return int(line.split()[1])  # real uid
    raise KeyError("Uid")


@pytest.fixture
def logdir():
    """A log directory the workers' user can traverse, like /var/log/forkproxy
    (pytest's own temporary directories are private to root)."""
    d = tempfile.mkdtemp(prefix="forkproxy-logs-")
    os.chmod(d, 0o755)
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


def test_workers_run_as_the_configured_user_and_keep_logging(forkproxy_factory, backend_factory,
                                                            logdir):
    nobody = pwd.getpwnam("nobody")
    b = backend_factory("b")
    port = free_port()
    fp = forkproxy_factory(f"""
[[listener]]
name = "web"
bind = "127.0.0.1:{port}"
[[route]]
pool = "p"
[pool.p]
servers = [{{ addr = "{b.addr}" }}]
""", server={"user": "nobody", "group": "nogroup" if _has_group("nogroup") else None,
            "access_log": str(logdir / "access.log"), "error_log": str(logdir / "error.log")})
    workers = fp.wait_workers(2)
    assert uid_of(fp.pid) == 0
    assert {uid_of(w) for w in workers} == {nobody.pw_uid}

    url = f"http://127.0.0.1:{port}/"
    assert requests.get(url + "?before", timeout=10).status_code == 200
    log = Path(fp.server["access_log"])
    wait_until(lambda: "?before" in log.read_text(), what="the access log line")
    assert os.stat(log).st_uid == nobody.pw_uid

    # logrotate: move the file away, USR1; the master makes the new one.
    os.rename(log, str(log) + ".1")
    fp.signal(signal.SIGUSR1)
    wait_until(log.exists, what="the reopened access log")

    def logged_after():
        requests.get(url + "?after", timeout=10)
        return "?after" in log.read_text()
    wait_until(logged_after, what="workers writing to the new file")
    assert os.stat(log).st_uid == nobody.pw_uid


def _has_group(name: str) -> bool:
    import grp
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False
