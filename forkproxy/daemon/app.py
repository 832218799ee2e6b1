"""forkproxy's gunicorn application: configuration in, Arbiter out.

Only gunicorn's public embedding surface is used: ``BaseApplication`` with
``load_config``/``load``, settings set with ``cfg.set`` by their documented
names, and server hooks.  gunicorn's own HTTP parser and WSGI are never used:
the workers override ``handle`` (see ``daemon.worker``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys

from gunicorn import glogging
from gunicorn.app.base import BaseApplication

from forkproxy import config as fpconfig
from forkproxy.daemon import hooks
from forkproxy.daemon.gunicorn_shim import HandlerHookLogger
from forkproxy.daemon.state import MasterState
from forkproxy.logs import open_append


class ProxyLogger(HandlerHookLogger):
    """gunicorn's logger, with its log files opened by forkproxy.

    The error log is opened by ``logs.open_append`` (never through a
    symlink) at start, reload and USR1, and the master hands each file it
    opens to server.user (by descriptor, never by path) so the workers can
    reopen it too.  A file that cannot be reopened keeps the old one in use
    and is reported.  The access log is forkproxy's own (``logs.AccessLog``,
    held by ``daemon.state``): ``reopen_all`` reopens it with the others.
    """

    _previous: list = []  # the error log's handlers while setup replaces them

    def _give(self, f) -> None:
        """Hand the open log ``f`` to the workers' user (master, root only)."""
        owner = (self.cfg.uid, self.cfg.gid)
        if os.geteuid() == 0 and owner != (os.geteuid(), os.getegid()):
            try:
                os.fchown(f.fileno(), *owner)
            except OSError:
                pass  # a log on a filesystem without owners still works for root

    def setup(self, cfg):
        # gunicorn drops its handlers before it opens the new file: remember
        # them, so that a reload that cannot open the error log keeps the one
        # in use (make_handler) instead of leaving the master without a log.
        self._previous = self.previous_handlers(self.error_log)
        super().setup(cfg)

    def make_handler(self, log, output, fmt, stream=None):
        if output is None or output == "-":
            return super().make_handler(log, output, fmt, stream)
        prev = self._previous if log is self.error_log else []
        try:
            stream = open_append(output)
        except OSError as exc:
            if not prev:  # the start: nothing to log to
                raise
            for h in prev:  # a reload: the master must not lose its log over it
                log.addHandler(h)
            log.error("keeping the error log in use: cannot open %s: %s", output, exc.strerror)
            return
        for h in prev:
            h.close()
        h = logging.FileHandler(output, delay=True)
        h.stream = stream
        self._give(h.stream)
        h.setFormatter(fmt)
        self.mark(h)
        log.addHandler(h)

    def reopen_if_moved(self, access_log) -> None:
        """Worker, once its signal handlers are in place: reopen the logs if a
        rotation moved them meanwhile.  A USR1 that reached the worker while it
        booted (importing what it needs, see daemon.worker) was lost, and the
        worker would write to the moved-away files for the rest of its life."""
        files = [(h.stream, h.baseFilename) for log in glogging.loggers() for h in log.handlers
                 if isinstance(h, logging.FileHandler) and h.stream]
        if access_log is not None and access_log.path not in ("-", "off"):
            files.append((access_log._file, access_log.path))
        for f, path in files:
            try:
                st, now = os.fstat(f.fileno()), os.lstat(path)
            except (AttributeError, OSError, ValueError):
                continue  # closed, or nothing at the path: nothing to reopen
            if (st.st_dev, st.st_ino) != (now.st_dev, now.st_ino):
                self.reopen_all(access_log)
                return

    def reopen_files(self):
        for log in glogging.loggers():
            for handler in log.handlers:
                if not isinstance(handler, logging.FileHandler) or not handler.stream:
                    continue
                try:
                    new = open_append(handler.baseFilename)
                except OSError as exc:  # keep writing to the old file; say why on both
                    msg = f"cannot reopen the log {handler.baseFilename}: {exc.strerror}"
                    print(f"forkproxy: pid {os.getpid()}: {msg}", file=sys.stderr)
                    self.error("%s (still writing to the old file)", msg)
                    continue
                self._give(new)
                handler.acquire()
                try:
                    handler.stream.close()
                    handler.stream = new
                finally:
                    handler.release()

    def reopen_all(self, access_log) -> None:
        """USR1 (master and workers) and a reload (master): the error log, then ``access_log``."""
        self.reopen_files()
        if access_log is not None:
            try:
                access_log.reopen()
            except OSError as exc:
                self.error("cannot reopen the access log %s: %s (still writing to the old "
                           "file)", access_log.path, exc.strerror)


def _bind(listener: fpconfig.ListenerConfig) -> str:
    host = listener.host or "0.0.0.0"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{listener.port}"


# Stdlib modules the workers' net layer imports that bind nothing gevent
# patches (no socket, ssl, select or threading names): the master imports them
# once, so a worker (a new generation, a replacement) does not.
_PRELOAD_STDLIB = ("email.utils", "hmac", "importlib.metadata", "importlib.resources",
                   "ipaddress", "json", "hashlib", "urllib.parse", "zlib", "collections",
                   "copy", "operator", "base64", "calendar", "datetime")


def preload() -> None:
    """Import, in the master, what every worker needs and the master may hold.

    forkproxy's pure parts (``core``, ``logs``) and the stdlib modules above;
    never gevent, requests or pylibmc (DESIGN section 1): a worker imports
    those after the fork.
    """
    import importlib
    import pkgutil

    import forkproxy.core

    for name in _PRELOAD_STDLIB:
        importlib.import_module(name)
    for mod in pkgutil.iter_modules(forkproxy.core.__path__):
        importlib.import_module(f"forkproxy.core.{mod.name}")
    importlib.import_module("forkproxy.logs")


def _no_wsgi(environ, start_response):  # pragma: no cover - never called
    raise RuntimeError("forkproxy workers do not run WSGI")


class ForkProxyApp(BaseApplication):
    """gunicorn's application for the master of ``state`` (a ``daemon.state.MasterState``).

    Its settings are those of ``state.config``; ``reload`` replaces that
    configuration only with one that validates.
    """

    def __init__(self, state: MasterState):
        self.state = state
        super().__init__(usage=None, prog="forkproxy")

    def load_config(self) -> None:
        for name, value in gunicorn_settings(self.state.config).items():
            self.cfg.set(name, value)

    def load(self):
        return _no_wsgi

    def reload(self) -> list[str]:
        """Re-read the file; on any error keep the running configuration.

        Returns the errors (``FILE:LINE: key: message``), empty when the new
        configuration was taken.  gunicorn's own ``reload`` exits the master
        on a bad file (DESIGN section 3, item 1).  Here the candidate is
        parsed and validated first, and only a valid one replaces the
        current settings.  The errors are printed on stderr; the arbiter
        logs them.
        """
        try:
            candidate = fpconfig.load(self.state.config.path)
        except fpconfig.ConfigErrors as exc:
            errors = [str(err) for err in exc.errors]
            for err in errors:
                print(f"forkproxy: reload rejected: {err}", file=sys.stderr)
            return errors
        if self.state.pidfile:
            candidate = dataclasses.replace(
                candidate, server=dataclasses.replace(candidate.server, pidfile=self.state.pidfile))
        self.set_config(candidate)
        return []

    def set_config(self, cfg: fpconfig.Config) -> None:
        """Make ``cfg`` the current configuration (gunicorn's settings too)."""
        self.state.config = cfg
        self.load_default_config()
        self.load_config()

    def run(self, start_cwd: str | None = None):
        """Run forkproxy's arbiter (see ``daemon.arbiter``) until it stops."""
        from forkproxy.daemon.arbiter import ForkProxyArbiter

        preload()
        arbiter = ForkProxyArbiter(self, self.state, start_cwd=start_cwd)
        try:
            arbiter.run()
        except RuntimeError as exc:  # e.g. a pidfile naming a live process
            print(f"forkproxy: {exc}", file=sys.stderr)
            sys.exit(1)


def gunicorn_settings(cfg: fpconfig.Config) -> dict:
    """The gunicorn settings that run ``cfg`` (by gunicorn's documented names)."""
    s = cfg.server
    settings = {
        # The admin endpoint is one more socket; Runtime.handle tells it apart.
        "bind": [_bind(lc) for lc in cfg.listeners] + ([s.admin] if s.admin else []),
        "workers": s.workers,
        "worker_class": "forkproxy.daemon.worker.ProxyWorker",
        "worker_connections": s.worker_connections,
        "graceful_timeout": max(1, math.ceil(s.graceful_timeout)),  # gunicorn takes whole seconds
        "pidfile": s.pidfile or None,
        "errorlog": s.error_log,
        "loglevel": s.log_level,
        "accesslog": None,            # forkproxy writes its own (forkproxy.logs)
        "logger_class": "forkproxy.daemon.app.ProxyLogger",
        "proc_name": "forkproxy",
        "control_socket_disable": True,   # gunicorn's would land in $HOME/.gunicorn
        "reuse_port": False,          # one shared accept queue: reloads reset nothing
        "on_starting": hooks.on_starting,
        "on_reload": hooks.on_reload,
        "pre_fork": hooks.pre_fork,
        "post_fork": hooks.post_fork,
        "child_exit": hooks.child_exit,
        "post_worker_init": hooks.post_worker_init,
        "worker_exit": hooks.worker_exit,
    }
    if s.user:
        settings["user"] = s.user
    if s.group:
        settings["group"] = s.group
    elif s.user:  # gunicorn's default is the master's group (root's)
        import pwd
        settings["group"] = pwd.getpwnam(s.user).pw_gid
    return settings


def run(cfg: fpconfig.Config, detached: bool = False, start_cwd: str | None = None,
        pidfile: str | None = None) -> None:
    """Run the master until it is stopped (exits the process).

    ``detached``: the caller daemonized (``-D``); ``start_cwd``: the directory
    the command was started in (a USR2 upgrade re-executes from there);
    ``pidfile``: ``-p``, kept across reloads.
    """
    state = MasterState(cfg, pidfile=pidfile, detached=detached)
    ForkProxyApp(state).run(start_cwd=start_cwd)
