"""A two-way byte relay between two sockets: the L4 proxy's and WebSocket's.

``Relay(client, up, idle_timeout).run()`` moves bytes both ways until both
sides are done (``net.tcp_proxy`` for a ``mode = "tcp"`` listener,
``net.websocket`` after a 101):

- at most ``BUF_SIZE`` in flight per direction (memory per connection is
  bounded whatever the volume, and an idle tunnel holds no buffer);
- an EOF from one side is passed on as a half-close (``shutdown(SHUT_WR)``)
  and the other direction goes on until it ends too.  A TLS client
  connection cannot be half-closed: the server's EOF ends it (with a
  close_notify);
- ``idle_timeout`` without a byte either way closes both sides.
"""

from __future__ import annotations

import socket
import time

import gevent

BUF_SIZE = 262144  # per read; 64 KiB relays at a third of the speed

#: The greenlets relaying a tunnel now: a worker draining for a reload keeps
#: them past graceful_timeout, up to its tunnels' timeout (daemon.worker).
LIVE: set = set()


class Relay:
    """Both directions of one tunnel, a watchdog for the idle timeout."""

    def __init__(self, client, up, idle_timeout: float, tls_client: bool = False):
        self.client = client
        self.up = up
        self.idle = idle_timeout
        self.tls_client = tls_client
        self.last = time.monotonic()
        self.closed = False

    def run(self) -> None:
        for s in (self.client, self.up):
            s.settimeout(None)  # the watchdog bounds the waits
        back = gevent.spawn(self._pump, self.up, self.client, True)
        dog = gevent.spawn(self._watch)
        me = gevent.getcurrent()
        LIVE.add(me)
        try:
            self._pump(self.client, self.up, False)
            back.join()
        finally:
            LIVE.discard(me)
            dog.kill(block=False)
            back.kill(block=False)

    def _pump(self, src, dst, to_client: bool) -> None:
        # recv, not recv_into a buffer of our own: gevent's recv allocates only
        # once data is there, so an idle tunnel holds no buffer at all.
        try:
            while True:
                data = src.recv(BUF_SIZE)
                if not data:
                    break
                self.last = time.monotonic()
                dst.sendall(data)
                self.last = time.monotonic()
        except (OSError, ValueError):  # reset, or closed by the other side / the watchdog
            self._close_all()
            return
        # A clean EOF: pass the half-close on.
        try:
            if to_client and self.tls_client:
                dst.settimeout(1.0)  # close_notify, without waiting on the client's
                dst.unwrap()
            else:
                dst.shutdown(socket.SHUT_WR)
        except (OSError, ValueError):
            self._close_all()
        if to_client and self.tls_client:
            self._close_all()  # a TLS client connection ends with its close_notify

    def _watch(self) -> None:
        while not self.closed:
            left = self.last + self.idle - time.monotonic()
            if left <= 0:
                self._close_all()
                return
            gevent.sleep(left)

    def _close_all(self) -> None:
        # Closing wakes the greenlet blocked on the other socket with an error.
        if self.closed:
            return
        self.closed = True
        for s in (self.client, self.up):
            try:
                s.close()
            except OSError:
                pass
