"""Time limits on one session's blocking socket calls, with reusable timers.

A gevent socket with a timeout makes a new ``gevent.Timeout`` (a timer
watcher, started and closed) every time one call has to wait.  A proxied
keep-alive request waits at least twice (the client's next request, the
server's answer), and that bookkeeping costs about 20 µs of the worker's
CPU per request here: bench/floor.py moved 13.5k req/s without timeouts
and 11.1k with them, while timers like these kept it at 12.5k.

``Timers`` keeps one libev timer per distinct duration for one session
(the durations come from the configuration, so there are a handful) and
starts it around a call on a socket whose own timeout is ``None``::

    t = timers.start(seconds)
    try:
        data = sock.recv(n)
    finally:
        t.stop()

When the timer fires, ``socket.timeout`` is thrown into the greenlet that
started it, from the hub, exactly as gevent's own ``Timeout`` does: the
call it is blocked in raises ``socket.timeout``, as with ``settimeout``.
A timer must be stopped before the call that started it returns (the
``finally`` above); a stopped timer is never fired.  One ``Timers`` serves
one greenlet at a time: it is not shared across sessions.
"""

from __future__ import annotations

import socket

from gevent import get_hub, getcurrent


def _expire(glet) -> None:
    glet.throw(socket.timeout("timed out"))


class Timers:
    """Reusable timers of one session, by duration in seconds."""

    __slots__ = ("_loop", "_by_seconds")

    def __init__(self):
        self._loop = get_hub().loop
        self._by_seconds: dict[float, object] = {}

    def start(self, seconds: float):
        """A started timer that throws ``socket.timeout`` into the calling
        greenlet in ``seconds``; the caller stops it (``.stop()``)."""
        t = self._by_seconds.get(seconds)
        if t is None:
            if len(self._by_seconds) >= 16:  # computed durations (deadlines): no hoarding
                self.close()
            t = self._by_seconds[seconds] = self._loop.timer(max(seconds, 0.0), ref=False)
        t.start(_expire, getcurrent())
        return t

    def close(self) -> None:
        """Release every timer (the session ends)."""
        for t in self._by_seconds.values():
            t.close()
        self._by_seconds.clear()
