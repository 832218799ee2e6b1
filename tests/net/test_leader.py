"""net.leader: lockf election on an inherited fd, and holder_pid, with real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from support import procs
from support.runner import REPO_ROOT

from forkproxy.net.leader import Leader, holder_pid

# A "worker": builds a Leader on the fd it inherited, says whether it won,
# then waits to be killed (it holds the lock, if it won, until it dies).
_CHILD = """
import signal, sys
from forkproxy.net.leader import Leader
leader = Leader(int(sys.argv[1]))
print("held" if leader.try_acquire() else "free", flush=True)
signal.pause()
"""


class Child:
    """A child process inheriting ``fd`` (as the master's workers do); stopped by pid."""

    def __init__(self, fd: int):
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        self.popen = subprocess.Popen([sys.executable, "-c", _CHILD, str(fd)], pass_fds=(fd,),
                                      stdout=subprocess.PIPE, text=True, env=env, start_new_session=True)
        self.pid = self.popen.pid
        procs.track(self.pid)
        # The child prints one line right after its try_acquire: a condition, not a sleep.
        self.verdict = self.popen.stdout.readline().strip()

    def kill(self) -> None:
        if self.popen.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)
        self.popen.stdout.close()


@pytest.fixture
def lockfile(tmp_path):
    """(path, fd) of a lock file opened read-write, as the master opens checker.lock."""
    path = str(tmp_path / "checker.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    yield path, fd
    os.close(fd)


@pytest.fixture
def children():
    made: list[Child] = []

    def make(fd: int) -> Child:
        c = Child(fd)
        made.append(c)
        return c

    yield make
    for c in made:
        c.kill()


def test_holder_pid_none_when_missing_or_free(tmp_path, lockfile):
    path, _ = lockfile
    assert holder_pid(str(tmp_path / "nope.lock")) is None
    assert holder_pid(path) is None


def test_one_holder_and_takeover_after_sigkill(lockfile, children):
    path, fd = lockfile
    first = children(fd)
    assert first.verdict == "held"
    assert holder_pid(path) == first.pid

    # Same inherited fd, other processes: the lock is per process, so they lose.
    assert children(fd).verdict == "free"
    mine = Leader(fd)
    assert mine.try_acquire() is False
    assert mine.held is False

    first.kill()  # the kernel frees the lock of a SIGKILLed holder
    procs.wait_until(mine.try_acquire, what="the lock to be free after SIGKILL")
    assert mine.held is True
    assert mine.try_acquire() is True  # idempotent while held
    assert children(fd).verdict == "free"


def test_release_lets_another_process_take_over(lockfile, children):
    path, fd = lockfile
    mine = Leader(fd)
    assert mine.try_acquire()
    mine.release()
    assert mine.held is False
    mine.release()  # idempotent
    other = children(fd)
    assert other.verdict == "held"
    assert holder_pid(path) == other.pid
    assert mine.try_acquire() is False
