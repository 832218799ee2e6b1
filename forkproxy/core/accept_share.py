"""Which worker takes the next connection: each worker's open connections, shared.

The workers of a forkproxy accept from the same listening sockets, and
every one of them is woken for a new connection; the first to call
accept takes it.  Which one that is depends on the scheduler, not on
load: measured with ``wrk -c32`` and two workers, the 32 connections were
split 20/12, 23/9, even 2/30 (nginx, whose kernel wakes one worker per
connection: 16/16, at worst 12/20).  A worker holding most connections
then does most of the work while the other idles: fewer requests a
second and a longer tail of latency than the CPUs allow.

So each worker publishes here how many connections it holds, and a worker
holding more than the least-loaded other live worker (``SLACK`` more, and
a quarter more) lets that one take the connection (``defers``): it stops accepting for
``DEFER`` seconds, then takes what is still waiting, so a connection
waits at most that long for a busy worker whatever the others do.  A
worker is live while it published within ``LIVE_NS`` (it does at every
accept and at least every second); a worker that stopped accepting (it
drains) withdraws.

Layout: one 16-byte slot per worker slot (``daemon.state``): the
connections it holds (u64), then when it last said so (u64 nanoseconds
of ``time.monotonic_ns``; 0: not accepting).  Each slot has one writer,
its worker; 8-byte aligned cells are never read half written.
"""

from __future__ import annotations

import struct

SLOT_SIZE = 16
SLACK = 1  # connections a worker may hold over the least-loaded one and still accept
# Seconds a worker over its share leaves a new connection to the others: an
# idle worker the kernel woke for it takes it well within (0.2 ms was too
# short on a 2-core VM: the busy worker took most sequential connections).
DEFER = 0.002
LIVE_NS = 2_000_000_000  # a slot not refreshed for this long is a worker that is gone or hung

_SLOT = struct.Struct("=QQ")


def size(n_slots: int) -> int:
    """Bytes of a buffer holding ``n_slots`` slots."""
    return SLOT_SIZE * n_slots


def defers(mine: int, others) -> bool:
    """Whether a worker holding ``mine`` connections lets the others take the
    next one: the least-loaded live other (``others``: their counts) holds
    fewer by more than ``SLACK`` and by more than a quarter.  With no live
    other, never.  The quarter spares workers whose counts differ by what
    comes and goes anyway (clients that close after each request): there
    a deferral would only delay connections."""
    least = min(others, default=None)
    return least is not None and mine > least + SLACK and 4 * mine > 5 * least


class AcceptShare:
    """The slots over a shared buffer (an anonymous shared mapping the master
    makes before it forks)."""

    __slots__ = ("_buf", "n_slots")

    def __init__(self, buf):
        self._buf = buf
        self.n_slots = len(buf) // SLOT_SIZE

    def publish(self, slot: int, connections: int, now_ns: int) -> None:
        """Slot ``slot``'s worker holds ``connections`` and accepts (``now_ns`` > 0)."""
        _SLOT.pack_into(self._buf, slot * SLOT_SIZE, connections, max(now_ns, 1))

    def withdraw(self, slot: int) -> None:
        """Slot ``slot``'s worker accepts no more (it drains, or exits)."""
        _SLOT.pack_into(self._buf, slot * SLOT_SIZE, 0, 0)

    def others(self, slot: int, now_ns: int) -> list[int]:
        """The connections of every live accepting worker but slot ``slot``'s."""
        out = []
        for i, (conns, stamp) in enumerate(_SLOT.iter_unpack(self._buf[:size(self.n_slots)])):
            if i != slot and stamp and now_ns - stamp < LIVE_NS:
                out.append(conns)
        return out
