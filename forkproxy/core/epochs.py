"""Change counters over a buffer shared by the workers of one forkproxy.

CONTRACT (consumed by ``net.cache_store``'s near copies; the master makes the
buffer, ``SIZE`` bytes of anonymous shared memory, before it forks):

- ``values[i]`` is counter ``i``; counter 0 stands for every key (host
  purges), ``slot(hashed)`` names the counter of one key.
- A writer changes the shared store first, then ``bump``s the counter.  A
  reader reads the counter before it reads the store, and trusts a copy it
  made only while the counter still holds the value it read then: a change
  made after the copy was read always voids it.
- ``bump`` writes a value the caller drew at random, not old + 1: two
  workers bumping at once may both write, and neither change is lost,
  because any new value differs from what the readers saw.
"""

from __future__ import annotations

__all__ = ["Epochs"]


class Epochs:
    """Counters over ``buf`` (a private bytearray when None); see the module contract."""

    SLOTS = 4096
    SIZE = SLOTS * 8

    def __init__(self, buf=None):
        self.buf = buf if buf is not None else bytearray(self.SIZE)
        if len(self.buf) < self.SIZE:
            raise ValueError(f"buffer of {len(self.buf)} bytes < {self.SIZE}")
        self.values = memoryview(self.buf)[:self.SIZE].cast("Q")

    @staticmethod
    def slot(hashed: str) -> int:
        """The counter of a key given as hex digits after a 3-character prefix
        (``net.cache_store.hashed_key``'s "fp:" + sha256 hex): 1..SLOTS-1."""
        return 1 + int(hashed[3:15], 16) % (Epochs.SLOTS - 1)

    def bump(self, i: int, value: int) -> None:
        """Counter ``i`` changed: ``value`` is a random 64-bit number."""
        self.values[i] = value & 0xFFFF_FFFF_FFFF_FFFF
