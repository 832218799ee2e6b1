"""A worker's accept loop: gevent's StreamServer, leaning toward the least-loaded worker.

``SharingServer`` accepts as gevent's ``StreamServer`` does, except
that a worker holding more connections than the least-loaded other live
worker (``core.accept_share.defers``) first leaves a new connection to
the others for ``DEFER`` seconds, then takes what is still waiting.
Every accept publishes the worker's count.  The reasons and the measurements are in
``core.accept_share``.
"""

from __future__ import annotations

import time

from gevent.server import StreamServer

from forkproxy.core.accept_share import DEFER, AcceptShare, defers


class SharingServer(StreamServer):
    """``StreamServer`` whose worker publishes its connections in ``share``
    (slot ``slot``) and defers to less-loaded workers.  ``connections()``:
    how many client connections the worker holds now."""

    # gevent's default: accepting what waits in one wake-up is what keeps a
    # worker fast under clients that connect for every request (17% more
    # of them than with one accept a wake-up, wrk -c64 with Connection:
    # close); ``do_read`` stops as soon as this worker is over its share.
    max_accept = 100

    def __init__(self, listener, *, share: AcceptShare, slot: int, connections, **kw):
        super().__init__(listener, **kw)
        self._share, self._slot, self._connections = share, slot, connections
        self._forced = False

    def do_read(self):
        """One accept (None: nothing to take now), unless this worker is over its share."""
        share, slot = self._share, self._slot
        if not self._forced and defers(self._connections(),
                                       share.others(slot, time.monotonic_ns())):
            self.stop_accepting()  # the others are woken for it too: theirs to take first
            self._timer = self.loop.timer(DEFER)
            self._timer.start(self._resume)
            return None
        self._forced = False
        got = super().do_read()
        if got is not None:  # counted once its greenlet is spawned: +1 here
            share.publish(slot, self._connections() + 1, time.monotonic_ns())
        return got

    def _resume(self):
        self._forced = True  # what is still waiting is this worker's now
        self._start_accepting_if_started()
