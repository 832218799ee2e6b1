"""How a session waits on its sockets: time limits with reusable timers,
waiting before reading, sending without waiting.

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
``finally`` above); a stopped timer is never fired.  Every start runs the
whole duration: libev keeps what is left of a stopped timer and a plain
restart resumes from there (a keep-alive connection's idle waits would sum
up to one keepalive_timeout), so a timer repeats at its duration and is
started with ``again``, which always sets a full period.  One ``Timers`` serves
one greenlet at a time: it is not shared across sessions.

``wait_readable(sock)`` makes a read cheap when the data is
known not to be there yet (a server's answer just after the request went
out, a keep-alive client's next request): gevent's recv would first try
the read, fail with EAGAIN (a syscall, and an exception handled in Python)
and then wait; waiting first skips that.  bench/floor.py spent 41-47 us of
user CPU per request that way, against 49-64 us.

``send_now(sock, data)`` gives a plain socket what it takes at once, with
no timer and no gevent wrapper: a response or a request head nearly always
fits the socket buffer whole, and only the rest (if any) needs a time limit.

``recv_ready(sock, n)`` reads after ``wait_readable`` said there is
something, without gevent's Python wrapper around recv (which would try,
catch EAGAIN and wait); a spurious wake-up falls back to that wrapper.

The last three are for plain sockets only (``is_plain``): a TLS socket may
already hold decrypted bytes that no readiness event announces, and its
raw socket must never see plaintext.

``send_within(sock, data, plain, timers, seconds)`` is how every byte to a
client or a server goes out: ``send_now`` first, a timer only for the rest.
"""

from __future__ import annotations

import socket

from gevent import get_hub, getcurrent


def is_plain(sock) -> bool:
    """True for a plain gevent socket (not TLS): ``wait_readable`` and ``send_now`` suit it."""
    return hasattr(sock, "_read_event") and not hasattr(sock, "pending")


def wait_readable(sock) -> None:
    """Block this greenlet until ``sock`` has data, EOF or an error to read.

    A ``Timers`` timer bounds it like any other call (``socket.timeout``);
    closing the socket from another greenlet raises ``OSError`` (EBADF).
    """
    get_hub().wait(sock._read_event)


def recv_ready(sock, n: int) -> bytes:
    """One read of up to ``n`` bytes from a plain socket ``wait_readable``
    just woke for; waits (gevent's way) only when nothing was there after all."""
    try:
        return sock._sock.recv(n)
    except BlockingIOError:
        return sock.recv(n)


def send_now(sock, data) -> int:
    """How many bytes of ``data`` a plain socket took without waiting (0 to
    all); ``OSError`` when the connection failed."""
    try:
        return sock._sock.send(data)  # gevent keeps the real socket non-blocking
    except BlockingIOError:
        return 0


def _expire(timer, glet) -> None:
    timer.stop()  # it repeats (see Timers.start): this expiry is its only one
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
            # Repeating, with the duration as its period: see below.  A period
            # of 0 would start nothing.
            period = max(seconds, 1e-6)
            t = self._by_seconds[seconds] = self._loop.timer(period, period, ref=False)
        # again(), never start(): libev's start() reuses what is left of the
        # timer's last run (nothing once it fired, the rest after an early
        # stop), so a reused timer would give less and less time, and none
        # after its first expiry: every later call on the session timed out
        # at once.  again() sets a stopped timer to its full repeat interval.
        t.again(_expire, t, getcurrent(), update=False)
        return t

    def close(self) -> None:
        """Release every timer (the session ends)."""
        for t in self._by_seconds.values():
            t.close()
        self._by_seconds.clear()


def sendall(sock, data) -> None:
    """sendall, with the common case (everything fits the socket buffer) in one call.

    gevent's sendall costs three Python frames and timeout bookkeeping per
    call; a single send() nearly always takes a whole small response.
    """
    sent = sock.send(data)
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])


def send_within(sock, data, plain: bool, timers: Timers, seconds: float) -> None:
    """All of ``data`` to ``sock``; ``socket.timeout`` if it takes over ``seconds``.

    A plain socket takes what fits at once without a timer (``send_now``); a
    timer bounds only the wait for the rest.
    """
    if plain:
        sent = send_now(sock, data)
        if sent == len(data):
            return
        data = memoryview(data)[sent:]
    t = timers.start(seconds)
    try:
        sendall(sock, data)
    finally:
        t.stop()

