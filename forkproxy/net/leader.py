"""Leader election for the health checker: one POSIX ``lockf`` lock per runtime dir.

The master opens ``{runtime_dir}/checker.lock`` once, before it forks, and
never locks it itself; every worker inherits the fd and builds a ``Leader``
on it. The worker whose ``try_acquire`` wins runs the active health checks.
POSIX record locks belong to the *process*, not the fd, so an fd inherited
through fork is fine (a ``flock`` lock would belong to the shared open file
description and be "held" by every worker at once). When the holder dies,
however it dies, the kernel drops the lock and the next ``try_acquire`` of
another worker wins.

One POSIX trap to know: a process loses *all* its ``lockf`` locks on a file
as soon as it closes *any* fd of that file. So the holder must never open and
close ``checker.lock`` (``holder_pid`` does exactly that: call it only from
processes that do not hold the lock, such as ``forkproxyctl`` or tests).
``try_acquire`` re-asserts the lock with a real ``lockf`` call every time, so
such a loss is noticed (``held`` turns False) instead of silently leaving two
checkers.

Stdlib only at import time; Linux ``struct flock`` layout (see ``holder_pid``).
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import sys

__all__ = ["Leader", "holder_pid"]

# struct flock, per platform: Linux (glibc and musl, every LP64 ABI): short
# type, short whence, off_t start, off_t len, pid_t pid. BSDs and macOS put
# the offsets first (FreeBSD adds int sysid).
if sys.platform.startswith("linux"):
    _FLOCK, _FIELDS = struct.Struct("@hhqqi"), ("type", "whence", "start", "len", "pid")
elif sys.platform == "darwin":
    _FLOCK, _FIELDS = struct.Struct("@qqihh"), ("start", "len", "pid", "type", "whence")
else:  # the BSDs
    _FLOCK, _FIELDS = (struct.Struct("@qqihhi"),
                       ("start", "len", "pid", "type", "whence", "sysid"))
_FLOCK_SIZE = max(32, _FLOCK.size)


class Leader:
    """lockf-based election on an fd the master opened (inherited through fork).

    ``try_acquire()`` is non-blocking and idempotent: it returns True when
    this process holds the exclusive lock on the whole file (taking it if it
    is free), False when another process holds it. ``held`` is the result
    of the last call (and False in a process forked after it, since locks are
    not inherited by children). ``release()`` gives the lock up, e.g. when a
    worker starts its graceful shutdown, so a worker of the next generation
    can take over at once.
    """

    def __init__(self, fd: int):
        self.fd = fd
        self._held_by: int | None = None  # pid that last acquired; locks don't survive fork

    @property
    def held(self) -> bool:
        return self._held_by == os.getpid()

    def try_acquire(self) -> bool:
        # Re-lock even when we believe we hold it: relocking a held lock is a
        # no-op for the kernel, and it detects the close-any-fd loss above.
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES):
                self._held_by = None
                return False
            raise
        self._held_by = os.getpid()
        return True

    def release(self) -> None:
        """Drop the lock if this process holds it (idempotent)."""
        if self.held:
            fcntl.lockf(self.fd, fcntl.LOCK_UN)
        self._held_by = None


def holder_pid(path: str) -> int | None:
    """The pid holding a ``lockf`` lock on ``path`` (``F_GETLK``), None when free.

    Also None when the file does not exist (nothing ever ran there). Other
    errors (e.g. ``PermissionError`` on an unreadable runtime dir) propagate
    so callers can say why. The pid is as seen from this pid namespace (0
    when the holder lives in another one).

    Never call it from the process that holds the lock: the kernel reports
    only *other* processes' locks, and closing the fd it opens drops this
    process's lock (POSIX record-lock semantics).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        # Ask "could I take a write lock on the whole file?"; the kernel
        # answers F_UNLCK, or describes one conflicting lock and its owner.
        values = dict.fromkeys(_FIELDS, 0)
        values["type"], values["whence"] = fcntl.F_WRLCK, os.SEEK_SET
        query = _FLOCK.pack(*(values[f] for f in _FIELDS)).ljust(_FLOCK_SIZE, b"\0")
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, query)
    finally:
        os.close(fd)
    got = dict(zip(_FIELDS, _FLOCK.unpack_from(answer)))
    if got["type"] == fcntl.F_UNLCK or got["pid"] <= 0:
        return None
    return got["pid"]
