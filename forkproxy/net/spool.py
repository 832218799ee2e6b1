"""A request body read whole before it goes upstream (route ``request_buffering``).

``Spool`` keeps the body in memory up to a size, then moves it to an
anonymous temporary file in ``server.runtime_dir``/``body``: opened with
``O_TMPFILE`` where the filesystem has it, else created and unlinked at
once, so no file is left behind whatever happens to the worker.  The
master creates that directory, owned by ``server.user`` (``body_dir``).

Standard library only: the master imports it (for ``body_dir``).
"""

from __future__ import annotations

import os
import tempfile

BODY_DIR = "body"
READ_SIZE = 65536


def body_dir(runtime_dir: str) -> str:
    """The directory of spooled bodies under ``runtime_dir``."""
    return os.path.join(runtime_dir, BODY_DIR)


class Spool:
    """One request body, in memory up to ``memory`` bytes, else in a file in ``directory``.

    ``write`` raises ``OSError`` when the file cannot be made or written.
    ``close`` releases the file (the session closes a spool when its request ends).
    """

    __slots__ = ("memory", "directory", "parts", "size", "file")

    def __init__(self, memory: int, directory: str):
        self.memory = memory
        self.directory = directory
        self.parts: list[bytes] = []
        self.size = 0
        self.file = None

    def write(self, data: bytes) -> None:
        if self.file is None and self.size + len(data) > self.memory:
            self.file = tempfile.TemporaryFile(dir=self.directory)
            self.file.write(b"".join(self.parts))
            self.parts = []
        if self.file is not None:
            self.file.write(data)
        else:
            self.parts.append(data)
        self.size += len(data)

    def pieces(self, first: bytes):
        """Yield ``first`` and the body after it: one piece when the body is in
        memory, else ``first`` with the file's first block, then the others."""
        if self.file is None:
            yield first + b"".join(self.parts)
            return
        f = self.file
        f.flush()
        f.seek(0)
        yield first + f.read(READ_SIZE)
        while block := f.read(READ_SIZE):
            yield block

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        self.parts = []
