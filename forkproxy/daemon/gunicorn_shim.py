"""The only place forkproxy touches gunicorn's private names.

gunicorn has no public way to do the two things below; each use is pinned
by ``tests/daemon/test_gunicorn_shim.py``, which fails when a gunicorn
release changes the behaviour relied on.

- ``listener(addr, cfg, log)``: bind one listening socket the way gunicorn
  binds those of its ``bind`` setting (``gunicorn.sock._sock_type`` picks
  the TCP, TCP6 or Unix class).  The arbiter opens the listeners a reload
  adds, and those socket activation did not hand over, one by one, where
  gunicorn only offers ``create_sockets`` for the whole list (which retries
  for five seconds and exits the master on a failure).
- ``HandlerHookLogger``: gunicorn's logger with its file handlers made by
  forkproxy.  ``glogging.Logger.setup`` installs each log's handler through
  the private ``_set_handler(log, output, fmt, stream=None)`` and, on a
  reload, first drops the handlers marked with the private ``_gunicorn``
  attribute.  The subclass routes ``_set_handler`` to a public-named
  ``make_handler`` and offers ``mark`` and ``previous_handlers`` for that
  marker.
"""

from __future__ import annotations

from gunicorn import glogging
from gunicorn import sock as gsock

_MARK = "_gunicorn"  # glogging's marker of the handlers it owns


def listener(addr, cfg, log):
    """A bound, listening gunicorn socket for ``addr`` (a (host, port) tuple or a path).

    Raises ``OSError`` when it cannot be bound.
    """
    return gsock._sock_type(addr)(addr, cfg, log)


class HandlerHookLogger(glogging.Logger):
    """``glogging.Logger`` whose handlers for a file come from ``make_handler``."""

    def make_handler(self, log, output, fmt, stream=None) -> None:
        """Install the handler of ``log`` writing to ``output`` (gunicorn's own by default)."""
        glogging.Logger._set_handler(self, log, output, fmt, stream)

    def _set_handler(self, log, output, fmt, stream=None):
        self.make_handler(log, output, fmt, stream)

    @staticmethod
    def mark(handler) -> None:
        """Mark ``handler`` as the logger's own: the next ``setup`` drops it."""
        setattr(handler, _MARK, True)

    @staticmethod
    def previous_handlers(log) -> list:
        """The handlers of ``log`` that ``setup`` is about to drop (the marked ones)."""
        return [h for h in log.handlers if getattr(h, _MARK, False)]
