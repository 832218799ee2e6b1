"""The worker class gunicorn forks: a ``GeventWorker`` that overrides only ``handle``.

The master must never import gevent (DESIGN section 1), yet gunicorn
instantiates the worker class in the master, before the fork.  So the class
the master sees, ``ProxyWorker``, is a plain ``AsyncWorker``; right after the
fork, in the child, ``become_gevent_worker`` (called from the ``post_fork``
hook, before ``init_process``) imports gevent and turns the instance into a
``GeventProxyWorker``.  From then on it is gunicorn's own ``GeventWorker`` in
every respect (patching, the accept loop, signals, graceful exit) except
``handle``, which hands each accepted connection to forkproxy's session loop.
"""

from gunicorn.workers.base_async import AsyncWorker


class ProxyWorker(AsyncWorker):
    """The pre-fork face of the worker; see the module docstring."""

    runtime = None  # forkproxy.net.session.Runtime, set by the post_worker_init hook


def become_gevent_worker(worker: ProxyWorker) -> None:
    """In the child, after fork: make ``worker`` a ``GeventProxyWorker``."""
    from gunicorn.workers.ggevent import GeventWorker

    class GeventProxyWorker(GeventWorker):
        runtime = None

        def handle(self, listener, client, addr):
            # gevent hands over a socket whose timeout is the default one;
            # the session sets its own per phase.
            self.runtime.handle(listener, client, addr)

    worker.__class__ = GeventProxyWorker
