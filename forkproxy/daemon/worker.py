"""The worker class gunicorn forks: gunicorn's gevent worker with forkproxy's ``handle`` and drain.

The master must never import gevent (DESIGN section 1), yet gunicorn
instantiates the worker class in the master, before the fork.  So
``ProxyWorker`` is an ``AsyncWorker`` that imports gevent only in the
methods that run after the fork, and does there what gunicorn's
``GeventWorker`` does (``patch``, ``init_process``, ``notify``, the QUIT
and USR1 handlers, mirrored from gunicorn 27; tests/daemon/test_gunicorn_shim.py
fails when gunicorn's changes), plus forkproxy's ``handle``,
which hands each accepted connection to forkproxy's session loop, and the
graceful exit (``run``), which stops accepting at once and drains (see the
class docstring).

Made in the master, the worker takes its ``context`` (``daemon.state``) from
the master's state: its generation, slot and the shared memory it maps, as
of its fork.  After the fork, the ``post_worker_init`` hook builds its
``runtime`` from that context (``hooks.build_runtime``).

Privileges: gunicorn switches to ``server.user`` in ``init_process``, after
gevent's patching.  Between the two (``patch``), the worker imports every
module it will ever need (``preload``) and sets its groups
(``set_groups``): after the switch it may not be able to read the
interpreter's library or forkproxy's own files (a Python under /root), and
gunicorn alone would leave it root's supplementary groups (gid 0 too when
``server.group`` is unset).

A worker that cannot boot with a configuration that came with a reload (or
once the first generation served) does not halt the master, as gunicorn's
boot error would: it writes why into the generation's boot report and exits
with ``BOOT_REFUSED``; the master refuses that generation (``daemon.arbiter``).
"""

import importlib
import os
import pkgutil
import signal
import sys

from gunicorn.workers.base_async import AsyncWorker

from forkproxy.config.listener import serves_http2


# Imported lazily by the stdlib or by libraries, on paths a worker takes after
# its start (a server named by host name, the first health probe, DNS through
# gevent's thread pool): loaded before the worker switches to server.user.
LAZY_MODULES = (
    "encodings.idna", "encodings.ascii", "encodings.latin_1", "encodings.utf_8",
    "idna", "gevent.resolver.thread", "gevent.threadpool", "gevent.resolver.blocking",
    "_strptime", "email.utils",
    # ProxyWorker.run's own, imported there so that the master never loads gevent.
    "gevent.server", "gevent.pool", "gevent.event",
)
# requests' own lazy imports: for health checks only (net.checker.new_session).
PROBE_MODULES = ("http.client", "urllib3.util.ssl_", "charset_normalizer", "certifi")


# The modules of forkproxy.net that load a heavy library (h2, pylibmc), with
# the question whether a configuration needs them: a worker whose
# configuration does not never imports them (2 to 3 MiB of RSS per worker).
# Each is imported, when it is needed, by the worker's runtime (listener,
# pools, checker, cache, edge) on the same conditions.
def _speaks_http2(cfg) -> bool:
    return any(serves_http2(lc) for lc in cfg.listeners) \
        or any(p.protocol != "http1" for p in cfg.pools)


def _uses_memcached(cfg) -> bool:
    """A cache (either store: net.http_cache loads both), a fleet rate limit,
    a sticky table (net.sticktable)."""
    return any(r.cache or (r.rate_limit is not None and r.rate_limit.scope == "fleet")
               for r in cfg.routes) \
        or any(p.sticky is not None and p.sticky.key is not None for p in cfg.pools)


def _checks_health(cfg) -> bool:
    """Health checks (net.checker; requests makes the HTTP probes): any
    worker may become the one that probes."""
    return any(p.health is not None for p in cfg.pools)


OPTIONAL_MODULES = {
    "h2_conn": _speaks_http2, "h2_stream": _speaks_http2, "upstream_h2": _speaks_http2,
    "h2_probe": _speaks_http2,
    "http_cache": _uses_memcached, "cache_memcached": _uses_memcached,
    "cache_shm": _uses_memcached, "fleetlimit": _uses_memcached, "sticktable": _uses_memcached,
}


def preload(switching: bool, cfg=None) -> None:
    """Import every module of forkproxy.core and forkproxy.net, LAZY_MODULES, and
    read the package's data files (the admin status page): what the worker
    reads from disk after this is only its configuration's files.

    ``cfg``: the worker's configuration; the ``OPTIONAL_MODULES`` it does not
    need are skipped, and requests' (``PROBE_MODULES``) without health checks
    (None: every module).

    ``switching``: the worker is about to switch to another user.  Then
    ``requests`` (which ``net.checker`` imports only in the worker that
    probes, to spare every other worker's boot a third of a second) is
    imported now too: after the switch the interpreter may be unreadable.

    Called in the worker after gevent's patching (ssl must be patched before
    requests imports it) and before the switch to ``server.user``.  A module
    missing from LAZY_MODULES (an optional one) is skipped.
    """
    import forkproxy.core
    import forkproxy.net

    for pkg in (forkproxy.core, forkproxy.net):
        for info in pkgutil.iter_modules(pkg.__path__):
            needed = OPTIONAL_MODULES.get(info.name) if pkg is forkproxy.net else None
            if cfg is None or needed is None or needed(cfg):
                importlib.import_module(f"{pkg.__name__}.{info.name}")
    probes = cfg is None or _checks_health(cfg)
    for name in LAZY_MODULES + (PROBE_MODULES if probes else ()):
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    if switching and probes:
        importlib.import_module("requests")
    from forkproxy.net.admin import _page
    _page()


def set_groups(uid: int, gid: int) -> None:
    """Before gunicorn's setuid: the groups of the user ``uid``, primary ``gid``.

    ``os.initgroups`` gives the user's supplementary groups (dropping the
    master's, root's 0 among them), then ``setgid``: gunicorn's own
    ``initgroups`` path never calls setgid, and its default group is the
    master's.  Nothing to do when the worker keeps the master's user, or is
    not root.  With only ``server.group``: that group alone.
    """
    if os.getuid() != 0:
        return
    if uid != 0:
        import pwd

        os.initgroups(pwd.getpwuid(uid).pw_name, gid)
    elif gid != os.getgid():
        os.setgroups([gid])
    else:
        return
    os.setgid(gid)


def set_title(ctx, checker: bool = False) -> None:
    """``forkproxy: worker SLOT generation N``, `` (checker)`` while it runs the health checks.

    ``ctx``: the worker's ``daemon.state.WorkerContext``.
    """
    from forkproxy.daemon.arbiter import set_title as title

    slot = '-' if ctx.slot is None else ctx.slot
    title(f"worker {slot} generation {ctx.generation}" + (" (checker)" if checker else ""))


class ProxyWorker(AsyncWorker):
    """gunicorn's ``GeventWorker``, its gevent imported after the fork (module docstring).

    Two overrides besides ``handle``, because gunicorn's behaviour breaks
    a reload that drops nothing (DESIGN sections 3.5 and 5):

    - ``run``: gunicorn checks ``alive`` once a second, so an old worker
      kept accepting for up to a second after SIGTERM; and it waited for
      its servers' pools with one-second sleeps.  Here SIGTERM wakes the
      loop at once: the listeners are closed (the other generation takes
      the accept queue), the runtime drains (see ``net.listener``), and
      the worker exits as soon as no connection is left, or kills the
      rest at ``server.graceful_timeout``.
    - ``init_signals``: SIGTERM is delivered through gevent's loop (a
      ``gevent.signal_handler``), so the wake-up runs in a greenlet, not
      inside whatever code the Python-level handler interrupted.

    ``context``: its ``daemon.state.WorkerContext``; ``runtime``: its
    ``net.listener.Runtime``, built by the ``post_worker_init`` hook.
    """

    runtime = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.context = self.app.state.new_worker(self.tmp.last_update())
        self._stop = None  # gevent.event.Event, made by init_signals after the fork

    # -- gunicorn's GeventWorker, gevent imported here -----------------------------

    def patch(self):
        from gevent import config, monkey, socket

        monkey.patch_all()
        # Each greenlet would keep who spawned it and a copy of the spawning
        # stack, for debugging helpers forkproxy does not use: 0.7 KiB and some
        # CPU per connection (bench/idle.py).
        config.track_greenlet_tree = False
        self.sockets = [socket.socket(s.FAMILY, socket.SOCK_STREAM, fileno=s.sock.detach())
                        for s in self.sockets]
        # See the module docstring: before init_process drops privileges.
        preload(self.cfg.uid != os.getuid(), self.context.config)
        set_groups(self.cfg.uid, self.cfg.gid)

    def init_process(self):
        from gevent import hub

        from forkproxy.daemon import arbiter

        try:
            self.patch()
            hub.reinit()
            super().init_process()
        except Exception as exc:
            report = self.context.boot_report
            if self.booted or report is None:
                raise  # the first generation booting: gunicorn's boot error halts the master
            self.log.exception("worker %s cannot serve this configuration", self.pid)
            arbiter.write_boot_report(report, f"{type(exc).__name__}: {exc}")
            sys.exit(arbiter.BOOT_REFUSED)

    def notify(self):
        super().notify()
        if self.ppid != os.getppid():
            self.log.info("Parent changed, shutting down: %s", self)
            sys.exit(0)

    def handle_quit(self, sig, frame):
        import gevent

        # Out of the signal handler, so that it may block (gunicorn #1126).
        gevent.spawn(super().handle_quit, sig, frame)

    def handle_usr1(self, sig, frame):
        import gevent

        # In a greenlet, as gunicorn's (#1645); the access log too.
        gevent.spawn(self.log.reopen_all, self.context.access_log)

    # -- forkproxy's -----------------------------------------------------------

    def handle(self, listener, client, addr):
        # gevent hands over a socket whose timeout is the default one;
        # the session sets its own per phase.
        self.runtime.handle(listener, client, addr)

    def init_signals(self):
        import gevent
        from gevent.event import Event

        super().init_signals()
        self._stop = Event()
        gevent.signal_handler(signal.SIGTERM, self._term)

    def _term(self):
        self.alive = False
        self._stop.set()

    def run(self):
        import time
        from functools import partial

        import gevent
        from gevent.pool import Pool
        from gevent.server import StreamServer

        from forkproxy.daemon import arbiter
        from forkproxy.net.accepting import SharingServer

        if self.runtime is not None:
            # The snapshot made with the runtime may be old by now (a loaded
            # host boots slowly); the maintenance greenlet's first refresh
            # comes only once the loop runs, after the first connections.
            self.runtime.refresh(time.time())
        servers = []
        # The worker's client connections, one group each: its listeners'
        # pools, then those an older generation handed over (filled below).
        groups = []
        share = self._accept_share()
        for s in self.sockets:
            s.setblocking(1)
            kw = dict(handle=partial(self.handle, s), spawn=Pool(self.worker_connections))
            if share is not None:  # spread connections over the workers (net.accepting)
                server = SharingServer(s, share=share, slot=self.context.slot,
                                       connections=partial(_held, groups), **kw)
            else:
                server = StreamServer(s, **kw)
            server.start()
            servers.append(server)
        groups.extend(srv.pool for srv in servers)
        rt = self.runtime
        if rt is not None:  # connections older generations hand over (net.handoff)
            rt.open_handoff(self.context.generation)
            if rt.handoff is not None:
                groups.append(rt.handoff.serving)
            rt.groups = groups  # where a parked idle connection counts itself (net.http_session)
        while self.alive:
            self.notify()  # the first notify tells the master this worker serves
            if share is not None:  # still live, and what it holds now
                share.publish(self.context.slot, _held(groups), time.monotonic_ns())
            self._stop.wait(1.0)
        for server in servers:
            server.close()  # stop accepting now
        if share is not None:
            share.withdraw(self.context.slot)
        arbiter.mark_closed(self.tmp)  # the master may announce a reload now
        if self.runtime is not None:
            self.runtime.drain()
        start = time.monotonic()
        deadline = start + self.cfg.graceful_timeout
        # A reload (a newer generation serves): tunnels may stay until their
        # own timeout, WebSocket users are not cut because the file changed.
        # A stop: graceful_timeout for everything.
        tunnels_until = start + rt.tunnels_timeout() if rt is not None and rt.handing_off \
            else deadline
        while any(len(g) for g in groups):
            now = time.monotonic()
            if now >= deadline:
                if self._cut(groups, keep_tunnels=now < tunnels_until):
                    for srv in servers:
                        srv.stop(timeout=1)
                    return
                deadline = tunnels_until
            self.notify()
            gevent.sleep(0.05)

    def _accept_share(self):
        """The workers' shared connection counts (``core.accept_share``), or
        None: one worker, or this one has no slot (more workers than slots)."""
        from forkproxy.core.accept_share import AcceptShare

        buf, slot = self.context.accept_share, self.context.slot
        if self.cfg.workers < 2 or buf is None or slot is None:
            return None
        return AcceptShare(buf)

    def _cut(self, groups, keep_tunnels: bool) -> bool:
        """graceful_timeout ran out: close the connections left (but tunnels
        with ``keep_tunnels``); True when none is kept."""
        from forkproxy.net.tunnel import LIVE

        left = [g for group in groups for g in list(group)
                if not (keep_tunnels and g in LIVE)]
        kept = _held(groups) - len(left)
        if left:
            self.log.warning("worker %s: graceful timeout, closing %d connections", self.pid,
                             len(left))
        for g in left:
            g.kill(block=False)
        if kept:
            self.log.info("worker %s: draining for a reload, keeping %d tunnels until they "
                          "end (at most server.tunnel_timeout)", self.pid, kept)
        return not kept


def _held(groups) -> int:
    """The client connections of a worker's connection ``groups``."""
    return sum(len(g) for g in groups)
