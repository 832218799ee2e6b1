"""The file-backed mmap behind ``forkproxy.core.table``.

The master calls ``create`` under ``server.runtime_dir`` before it forks; the
mapping is MAP_SHARED, so every forked worker writes into the same pages and
sees the others' writes. The file is built under a temporary name and renamed
into place, so nobody (``forkproxyctl``, a new master after USR2) ever maps a
half-made table; on reload the master creates the next generation the same
way, copies rows with ``core.table.copy_rows`` under ``admin_lock``, and the
rename swaps it in while old workers keep their mapping of the old inode.

Opening, closing and locking a table (the readers' and admin writers' side)
belong to ``forkproxy.control``, which the admin endpoint and
``forkproxyctl`` use too; they are re-exported here for the master.
"""

from __future__ import annotations

import contextlib
import mmap
import os

from forkproxy.control import admin_lock, admin_lock_path, close_table, open_table
from forkproxy.core.table import Table, table_size

__all__ = ["create", "open_table", "close_table", "admin_lock", "admin_lock_path"]


def create(path: str, n_rows: int, n_slots: int, generation: int, *,
           labels=None, mode: int = 0o644, owner: tuple[int, int] | None = None
           ) -> tuple[mmap.mmap, Table]:
    """Create the table file at ``path`` atomically and map it shared.

    ``labels`` (optional, one per row) name the rows, e.g. ``"pool/addr"``.
    ``owner`` (uid, gid): whom the file belongs to (server.user, whose
    workers open it for writing to change admin cells).
    Returns the writable mapping and a ``Table`` over it (close both with
    ``close_table(table)``); the file appears
    at ``path`` only once fully formatted (temp file + rename).
    """
    if labels is not None and len(labels) != n_rows:
        raise ValueError("need one label per row")
    size = table_size(n_rows, n_slots)
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # the umask must not narrow what forkproxyctl needs
        if owner is not None:
            os.fchown(fd, *owner)
        os.ftruncate(fd, size)
        mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        table = Table(mm, create=True, n_rows=n_rows, n_slots=n_slots, generation=generation)
        for row, label in enumerate(labels or ()):
            table.set_label(row, label)
        mm.flush()
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    finally:
        os.close(fd)  # the mapping keeps the file alive
    return mm, table
