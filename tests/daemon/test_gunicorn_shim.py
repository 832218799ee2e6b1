"""Pins the gunicorn behaviour ``forkproxy.daemon.gunicorn_shim`` relies on.

The shim is the only module that uses gunicorn's private names; these tests
fail when a gunicorn release changes what it assumes of them.
"""

from __future__ import annotations

import logging
import socket

from gunicorn import glogging
from gunicorn import sock as gsock
from gunicorn.config import Config

from forkproxy.daemon import gunicorn_shim


def _cfg(**settings) -> Config:
    cfg = Config()
    for name, value in settings.items():
        cfg.set(name, value)
    return cfg


def test_sock_type_names_the_class_of_each_address_kind():
    assert gsock._sock_type(("127.0.0.1", 80)) is gsock.TCPSocket
    assert gsock._sock_type(("::1", 80)) is gsock.TCP6Socket
    assert gsock._sock_type("/run/x.sock") is gsock.UnixSocket


def test_listener_binds_and_listens_with_the_configured_address(tmp_path):
    cfg = _cfg()
    log = glogging.Logger(cfg)
    tcp = gunicorn_shim.listener(("127.0.0.1", 0), cfg, log)
    unix = gunicorn_shim.listener(str(tmp_path / "s.sock"), cfg, log)
    try:
        assert tcp.cfg_addr == ("127.0.0.1", 0)  # what the arbiter compares on reload
        port = tcp.sock.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # listening: the connection is queued
        assert unix.cfg_addr == str(tmp_path / "s.sock")
        with socket.socket(socket.AF_UNIX) as c:
            c.connect(str(tmp_path / "s.sock"))
    finally:
        tcp.close()
        unix.close()


class Recording(gunicorn_shim.HandlerHookLogger):
    """Records the make_handler calls; installs a marked handler of its own."""

    calls: list = []

    def make_handler(self, log, output, fmt, stream=None):
        type(self).calls.append((log.name, output))
        if output not in (None, "-"):
            h = logging.NullHandler()
            h.output = output
            self.mark(h)
            log.addHandler(h)
        else:
            super().make_handler(log, output, fmt, stream)


def test_setup_installs_the_error_log_through_set_handler(tmp_path):
    Recording.calls = []
    path = str(tmp_path / "error.log")
    log = Recording(_cfg(errorlog=path))
    assert ("gunicorn.error", path) in Recording.calls
    mine = [h for h in log.error_log.handlers if getattr(h, "output", None) == path]
    assert len(mine) == 1


def test_setup_drops_the_marked_handlers_and_keeps_the_others(tmp_path):
    Recording.calls = []
    first, second = str(tmp_path / "a.log"), str(tmp_path / "b.log")
    log = Recording(_cfg(errorlog=first))
    foreign = logging.NullHandler()  # not the logger's: a setup keeps it
    log.error_log.addHandler(foreign)
    before = Recording.previous_handlers(log.error_log)
    assert [h.output for h in before] == [first]
    log.setup(_cfg(errorlog=second))
    outputs = [getattr(h, "output", None) for h in log.error_log.handlers]
    assert first not in outputs and second in outputs
    assert foreign in log.error_log.handlers
    log.error_log.removeHandler(foreign)


def test_only_the_shim_uses_gunicorn_private_names_and_nothing_is_hung_on_its_objects():
    """The rest of the package reaches gunicorn through its public names, and keeps
    its state in ``daemon.state``, not in ``fp_*`` attributes of gunicorn's objects,
    and the worker's runtime gets everything at construction."""
    import pathlib
    import re

    import forkproxy

    private = re.compile(r"\b_(sock_type|setproctitle|set_handler|gunicorn)\b")
    # ... nor on the runtime, which is built complete (hooks.build_runtime)
    hung = re.compile(r"\.fp_[a-z_]+|\bruntime\.(cache|metrics|admin) *=")
    found = []
    for path in sorted(pathlib.Path(forkproxy.__file__).parent.rglob("*.py")):
        text = path.read_text()
        if path.name != "gunicorn_shim.py":
            found += [f"{path.name}: {m.group(0)}" for m in private.finditer(text)]
        found += [f"{path.name}: {m.group(0)}" for m in hung.finditer(text)]
    assert found == []


def test_proxy_worker_mirrors_every_method_of_gunicorns_gevent_worker():
    """``daemon.worker.ProxyWorker`` does what ``GeventWorker`` does without being
    one (the master must not import gevent): a gunicorn release that changes
    what ``GeventWorker`` overrides fails here, to be mirrored (or not) on purpose.
    ``timeout_ctx`` and ``handle_request`` serve gunicorn's WSGI path only."""
    from gunicorn.workers.ggevent import GeventWorker

    from forkproxy.daemon.worker import ProxyWorker

    overridden = {name for name in vars(GeventWorker) if not name.startswith("__")}
    assert overridden == {"server_class", "wsgi_handler", "patch", "notify", "timeout_ctx",
                          "run", "handle", "handle_request", "handle_quit", "handle_usr1",
                          "init_process"}
    mirrored = {"patch", "notify", "run", "handle", "handle_quit", "handle_usr1", "init_process"}
    assert all(name in vars(ProxyWorker) for name in mirrored)
