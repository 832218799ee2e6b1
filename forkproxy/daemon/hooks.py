"""gunicorn server hooks: where forkproxy's own state enters the master and workers.

Nothing here may raise at run time for a reason an operator cannot fix at
start-up (DESIGN section 3, item 2): an exception during worker boot halts
the whole master.
"""

from __future__ import annotations

import os
import signal


def on_starting(arbiter) -> None:
    """Master, before binding: make the runtime dir and the pidfile's dir."""
    cfg = arbiter.app.fp_config
    os.makedirs(cfg.server.runtime_dir, mode=0o755, exist_ok=True)
    if cfg.server.pidfile:
        os.makedirs(os.path.dirname(os.path.abspath(cfg.server.pidfile)), mode=0o755,
                    exist_ok=True)


def post_fork(arbiter, worker) -> None:
    """Child, right after fork: become the gevent worker (see daemon.worker).

    Until ``init_signals`` installs the worker's own handlers (after gevent is
    imported and patched, a few hundred milliseconds), the child still has the
    master's handlers, which only queue a signal in the child's copy of the
    master's queue, where nobody reads it: a TERM, INT or QUIT sent to a
    booting worker was lost and the master waited the whole graceful timeout.
    A worker that has served nothing may simply die, so those signals get
    their default action until then.
    """
    from forkproxy.daemon.worker import become_gevent_worker

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)
    become_gevent_worker(worker)


def post_worker_init(worker) -> None:
    """Child, gevent patched: build this worker's runtime for the current config."""
    import gevent

    from forkproxy.logs import AccessLog
    from forkproxy.net.session import Runtime, watch_alive

    cfg = worker.app.fp_config
    try:
        access_log = AccessLog(cfg.server.access_log, cfg.server.access_log_format)
    except OSError as exc:
        worker.log.error("cannot open the access log %s: %s; access logging is off in "
                         "worker %s", cfg.server.access_log, exc, worker.pid)
        access_log = AccessLog("off", cfg.server.access_log_format)
    worker.log.fp_access_log = access_log  # reopened with the error log on USR1
    worker.runtime = Runtime(cfg, worker.log, access_log)
    gevent.spawn(watch_alive, worker, lambda: worker.runtime)


def worker_exit(arbiter, worker) -> None:
    """Child, on the way out: close what the runtime holds."""
    rt = getattr(worker, "runtime", None)
    if rt is not None:
        for pool in rt.pools.values():
            pool.close()
        rt.access_log.close()
