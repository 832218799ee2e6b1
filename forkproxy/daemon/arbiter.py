"""forkproxy's master: gunicorn's Arbiter with a reload that never blocks nor drops.

gunicorn's ``Arbiter.reload`` (DESIGN section 3) re-reads the file even when
it is bad, closes *every* listener when one address changed (resetting the
connections queued on the others), and then blocks the master in a sleep
loop for up to ``graceful_timeout`` while the old workers finish: no
reaping, no respawning, no signals meanwhile.  ``ForkProxyArbiter.reload``
replaces it:

- the candidate file is validated first; a bad one changes nothing (no new
  workers either) and is reported in the error log and ``reload.json``;
- listeners that stay keep their socket (and its accept queue); removed ones
  are closed, added ones opened;
- the master never exits because of a reload: any failure while applying
  the new file, a worker of the new generation that cannot boot with it
  (gunicorn halts the master on that), or a new generation that does not
  serve within ``BOOT_GRACE`` refuses the reload with the reason and applies
  the last configuration that served again, as the next generation, while
  the old workers keep serving;
- the new generation is forked at once; each older worker is *retired*
  (SIGTERM, after which it drains, see ``daemon.worker``) as soon as every
  worker of the newest generation serves, or at once if it had not booted
  itself.  The reload is announced ("serving") once the retired workers
  closed their listeners: from then on every new connection meets the new
  configuration.  Retiring workers stay in ``WORKERS`` (so they are reaped and their
  table slot freed as usual) but no longer count towards ``num_workers``.

The master loop keeps running during all of it; the only wait it does is
the signal queue's, shortened to 50 ms while a generation is booting.

One generation number everywhere: ``state.generation`` (1 for the first generation,
+1 for every generation forked after a reload) is the health table's
generation (``forkproxyctl status``, the admin ``/status``), the error log's,
``reload.json``'s and the ``STATUS=`` line sent to systemd.
"""

from __future__ import annotations

import mmap
import os
import signal
import struct
import sys
import time

from gunicorn.arbiter import Arbiter

from forkproxy.daemon import process
from forkproxy.daemon.gunicorn_shim import listener
from forkproxy.daemon.state import MasterState

# How long a new generation may take to serve before the reload is refused
# (workers that crash while booting are respawned meanwhile).
BOOT_GRACE = 30.0

# Exit status of a worker that could not boot with a configuration after
# the first generation served (daemon.worker): unlike gunicorn's
# WORKER_BOOT_ERROR (3) it does not halt the master.
BOOT_REFUSED = 75

# A worker that cannot boot writes why into the generation's boot report:
# a shared anonymous mapping, length (u32) then UTF-8 text.
REPORT_SIZE = 4096


def new_boot_report() -> mmap.mmap:
    return mmap.mmap(-1, REPORT_SIZE)


def write_boot_report(report: mmap.mmap, text: str) -> None:
    """Worker side: record why it could not boot (the first writer wins)."""
    if struct.unpack_from("<I", report, 0)[0]:
        return
    data = text.encode("utf-8", "replace")[:REPORT_SIZE - 4]
    report[4:4 + len(data)] = data
    struct.pack_into("<I", report, 0, len(data))  # last: a reader sees all or nothing


def read_boot_report(report: mmap.mmap) -> str:
    n = struct.unpack_from("<I", report, 0)[0]
    return bytes(report[4:4 + min(n, REPORT_SIZE - 4)]).decode("utf-8", "replace")


# A worker that closed its listeners (daemon.worker, when it drains) makes
# its heartbeat file read-only: the master announces a reload's generation
# only once no older worker can accept a new connection.  One that never
# says so stops heartbeating too, and gunicorn kills it after its timeout.


def mark_closed(tmp) -> None:
    """Worker side: it accepts no more connections."""
    os.fchmod(tmp.fileno(), 0o400)


def has_closed(tmp) -> bool:
    """Master side: the worker of this heartbeat file accepts no more connections."""
    try:
        return not os.fstat(tmp.fileno()).st_mode & 0o200
    except (OSError, ValueError, AttributeError):
        return True  # its file is closed: the worker was reaped


def set_title(title: str) -> None:
    """``forkproxy: TITLE`` in ps (setproctitle; nothing without it)."""
    try:
        from setproctitle import setproctitle
    except ImportError:  # pragma: no cover - a dependency (setup.py)
        return
    setproctitle(f"forkproxy: {title}")


def _is_booted(worker) -> bool:
    """A worker serves once it has touched its heartbeat file (first ``notify``)."""
    try:
        return worker.tmp.last_update() != worker.context.heartbeat0
    except (OSError, ValueError, AttributeError):
        return False


def _show(addr) -> str:
    if isinstance(addr, tuple):
        host = addr[0]
        return f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"
    return str(addr)


def _same_address(configured, bound) -> bool:
    """Whether a configured bind address (host, port) is the bound socket's name."""
    import ipaddress

    if not (isinstance(configured, tuple) and isinstance(bound, tuple)):
        return configured == bound
    if configured[1] != bound[1]:
        return False
    try:
        return ipaddress.ip_address(configured[0].strip("[]")) == \
            ipaddress.ip_address(bound[0].split("%")[0])
    except ValueError:
        return configured[0] == bound[0]


def reexec_args(argv: list[str]) -> list[str]:
    """The command line a USR2 upgrade runs: this one, minus ``-D``.

    ``python -m forkproxy`` shows up as ``.../forkproxy/__main__.py`` in
    ``sys.argv``; running that path as a script would put the package
    directory first on ``sys.path``, so it becomes ``-m forkproxy`` again.
    The new master is the old one's child (gunicorn tells them apart by the
    parent pid), so it must not detach again.
    """
    head, rest = (argv[0] if argv else "forkproxy"), list(argv[1:])
    if os.path.basename(head) == "__main__.py" and \
            os.path.basename(os.path.dirname(head)) == "forkproxy":
        cmd = [sys.executable, "-m", "forkproxy"]
    else:
        cmd = [sys.executable, head]
    return cmd + [a for a in rest if a not in ("-D", "--daemon")]


class ForkProxyArbiter(Arbiter):
    """See the module docstring.  ``state``: the master's (``daemon.state``), which
    the hooks (``daemon.hooks``) reach through the arbiter they are given."""

    def __init__(self, app, state: MasterState, start_cwd: str | None = None):
        self.state = state
        super().__init__(app)
        self.START_CTX["args"] = reexec_args(sys.argv)
        if start_cwd:
            self.START_CTX["cwd"] = start_cwd

    # -- start ----------------------------------------------------------------

    def start(self):
        """gunicorn's start, minus its early READY=1, plus complete socket activation.

        gunicorn tells systemd READY=1 before any worker exists; forkproxy
        sends it when the first generation serves (``_announce_serving``).
        A start that fails (an address in use, a socket activation that does
        not match the file) removes the pidfile it wrote.
        """
        notify = os.environ.pop("NOTIFY_SOCKET", None)
        try:
            super().start()
            if self.systemd:
                self._complete_activation()
        except BaseException:
            if self.pidfile is not None:
                self.pidfile.unlink()
                self.pidfile = None
            raise
        finally:
            if notify is not None:
                os.environ["NOTIFY_SOCKET"] = notify

    def _complete_activation(self) -> None:
        """Socket activation: bind what the handed-over sockets lack; refuse strangers.

        systemd hands over the sockets its .socket unit names; every
        listener and the admin endpoint of the file that is not among them
        is bound here as without activation.  A handed-over socket that the
        file does not name is refused (no listener settings apply to it).
        """
        wanted = list(self.cfg.address)
        strangers = []
        for lnr in self.LISTENERS:
            match = next((a for a in wanted if _same_address(a, lnr.cfg_addr)), None)
            if match is None:
                strangers.append(str(lnr))
            else:
                lnr.cfg_addr = match  # a reload compares the configured form
                wanted.remove(match)
        if strangers:
            raise RuntimeError("socket activation handed over " + ", ".join(strangers)
                               + ", which no [[listener]] bind nor server.admin names")
        for addr in wanted:
            try:
                lnr = listener(addr, self.cfg, self.log)
            except OSError as exc:
                raise RuntimeError(f"socket activation did not hand over {_show(addr)} and "
                                   f"it cannot be bound: {exc.strerror}") from None
            self.log.info("socket activation: also listening at %s", lnr)
            self.LISTENERS.append(lnr)

    # -- worker accounting --------------------------------------------------

    def _serving(self, newest_only: bool = False) -> list:
        """(pid, worker) of the workers not retiring, oldest first."""
        gen = self.state.generation
        return sorted(((pid, w) for pid, w in self.WORKERS.items()
                       if not w.context.retiring
                       and (not newest_only or w.context.generation == gen)),
                      key=lambda kv: kv[1].age)

    def retire(self, pid: int, worker) -> None:
        """Ask a worker to drain and exit (once)."""
        worker.context.retiring = True
        self.kill_worker(pid, signal.SIGTERM)

    def spawn_workers(self):
        for _ in range(self.num_workers - len(self._serving(newest_only=True))):
            self.spawn_worker()

    def manage_workers(self):
        """Keep ``num_workers`` of the newest generation; retire the surplus and older ones.

        A newest generation that cannot serve (a worker's boot report, or
        nothing up after ``BOOT_GRACE``) is refused, see ``_refuse_generation``.
        """
        st = self.state
        if not st.titled:  # after gunicorn's own title in run()
            st.titled = True
            set_title(f"master -c {st.config.path}")
        failure = self._generation_failure()
        if failure:
            self._refuse_generation(failure)
        if len(self._serving(newest_only=True)) < self.num_workers:
            self.spawn_workers()
        newest = self._serving(newest_only=True)
        while len(newest) > self.num_workers:  # TTOU, WINCH
            pid, worker = newest.pop(0)
            self.retire(pid, worker)
        all_up = all(_is_booted(w) for _, w in newest)
        for pid, worker in self._serving():
            if worker.context.generation < st.generation and (all_up or not _is_booted(worker)):
                self.retire(pid, worker)
        if all_up and not st.announced and self._older_closed():
            st.announced = True
            self._announce_serving()

    def _older_closed(self) -> bool:
        """No retired worker accepts any more connections."""
        return all(has_closed(w.tmp) for w in self.WORKERS.values() if w.context.retiring)

    def _generation_failure(self) -> str | None:
        """Why the newest generation, forked by a reload, cannot serve, or None."""
        st = self.state
        if st.announced or st.good[0] == st.generation or not st.gen_reload:
            # (a restored configuration is not refused again: its workers are
            # respawned while the older ones keep serving)
            return None
        text = read_boot_report(st.boot_report) if st.boot_report is not None else ""
        if text:
            return f"a worker of generation {st.generation} could not start: {text}"
        if time.monotonic() - st.gen_started > BOOT_GRACE:
            return f"generation {st.generation} did not serve within {BOOT_GRACE:g}s"
        return None

    def _refuse_generation(self, reason: str) -> None:
        """The newest generation cannot serve: refuse its reload, serve the last good config again."""
        st = self.state
        self.log.error("reload %d refused: %s", st.gen_reload, reason)
        if st.gen_reload:
            process.write_status(self._status_dir(), st.gen_reload, "rejected", [reason],
                                 generation=st.generation)
        process.sd_notify("STATUS=reload refused: " + reason)
        for pid, worker in self._serving(newest_only=True):
            self.retire(pid, worker)
        self._restore_good()

    def maybe_promote_master(self):
        was_new = self.master_pid != 0
        super().maybe_promote_master()
        if was_new and self.master_pid == 0:
            self.state.titled = False  # gunicorn titled it "master [...]" again

    def wait_for_signals(self, timeout=1.0):
        """gunicorn's queued signals, plus a SIGHUP for each wake-up that finds
        reload requests from the admin endpoint (``hooks.on_starting``)."""
        if not self.state.announced:
            timeout = min(timeout, 0.05)  # notice the new generation booting promptly
        signals = super().wait_for_signals(timeout=timeout)
        pipe = self.state.reload_pipe
        if pipe is not None:
            try:
                if os.read(pipe[0], 4096):
                    signals.append(signal.SIGHUP)
            except BlockingIOError:
                pass
        return signals

    def _announce_serving(self) -> None:
        """Every worker of the newest generation serves: tell systemd, ``-D``'s parent, reload.json."""
        st = self.state
        st.good = (st.generation, st.config)
        if st.boot_report is None:
            # From now on even a replacement worker that cannot boot exits
            # with BOOT_REFUSED (daemon.worker) instead of halting the master.
            st.boot_report = new_boot_report()
        n = len(self._serving(newest_only=True))
        process.sd_notify(f"READY=1\nSTATUS=serving: generation {st.generation}, {n} workers")
        process.tell_parent(0)
        # A rejected HUP since then has the last word in reload.json.
        if st.gen_reload and st.gen_reload == st.reloads:
            process.write_status(st.config.server.runtime_dir, st.reloads,
                                 "serving", generation=st.generation)
            self.log.info("reload %d: generation %d serves", st.reloads, st.generation)
        else:
            self.log.info("generation %d serves", st.generation)

    # -- signals --------------------------------------------------------------

    def handle_winch(self):
        """Stop the workers, keep the master (nginx's USR2 + WINCH upgrade).

        gunicorn honours WINCH only with its own ``daemon`` setting; a
        terminal sends WINCH on every resize, so forkproxy honours it unless
        the master runs in the foreground on a terminal.
        """
        try:
            on_tty = os.isatty(0)
        except OSError:
            on_tty = False
        if self.state.detached or not on_tty:
            self.log.info("WINCH: graceful stop of the workers")
            self.num_workers = 0
            self.manage_workers()
        else:
            self.log.info("WINCH ignored: running in the foreground on a terminal")

    def handle_usr1(self):
        """gunicorn's USR1 (reopen the logs, then tell the workers), the access log included.

        The master reopens the access log before it signals the workers: the
        new file is created (and given to server.user) by the master, the
        workers then reopen the path that exists.  (gunicorn's own also
        forwards USR1 to its "dirty" arbiter, which forkproxy never runs.)
        """
        self.log.reopen_all(self.state.access_log)
        self.kill_workers(signal.SIGUSR1)

    def stop(self, graceful=True):
        process.sd_notify("STOPPING=1\nSTATUS=stopping")
        super().stop(graceful)

    def reload(self):
        """SIGHUP: validate, then switch generations without blocking (module docstring).

        Whatever the file holds, the master keeps running: a file that does
        not validate changes nothing; any failure while applying it is
        reported the same way and the last configuration that served is
        applied again.
        """
        st = self.state
        st.reloads += 1
        try:
            errors = self.app.reload()
            for err in errors:
                self.log.error("reload rejected: %s", err)
        except Exception as exc:  # a loader bug must not take the master down
            self.log.exception("reload %d: reading the configuration failed", st.reloads)
            errors = [f"reading the configuration failed: {type(exc).__name__}: {exc}"]
        if errors:
            runtime_dir = st.config.server.runtime_dir
            process.write_status(runtime_dir, st.reloads, "rejected", errors,
                                 generation=st.generation)
            process.sd_notify("STATUS=reload rejected: " + errors[0])
            return
        process.sd_notify(f"RELOADING=1\n{process.monotonic_usec()}\nSTATUS=reloading")
        try:
            self._apply(st.reloads)
        except Exception as exc:
            self.log.exception("reload %d: applying the configuration failed", st.reloads)
            reason = f"applying the configuration failed: {type(exc).__name__}: {exc}"
            process.write_status(self._status_dir(), st.reloads, "rejected", [reason],
                                 generation=st.generation)
            process.sd_notify("STATUS=reload refused: " + reason)
            self._restore_good()

    def _status_dir(self) -> str:
        """Where a refusal is reported: the runtime_dir of the configuration that keeps serving."""
        return self.state.good[1].server.runtime_dir

    def _restore_good(self) -> None:
        """Apply the last configuration that served again, as the next generation."""
        self.app.set_config(self.state.good[1])
        try:
            self._apply(0)
        except Exception:  # noqa: BLE001 - keep whatever workers still serve
            self.log.critical("re-applying the last configuration that served failed; "
                              "the workers still running keep serving", exc_info=True)

    def _apply(self, reload_no: int) -> None:
        """Fork the next generation for ``state.config`` (``reload_no`` 0: a restore)."""
        st = self.state
        runtime_dir = st.config.server.runtime_dir
        os.makedirs(runtime_dir, mode=0o755, exist_ok=True)
        st.generation += 1
        st.gen_reload = reload_no
        st.gen_started = time.monotonic()
        st.announced = False
        if reload_no:
            process.write_status(runtime_dir, reload_no, "loading", generation=st.generation)
        self.setup(self.app)
        self.log.reopen_all(st.access_log)
        self._rebind()
        self.cfg.on_reload(self)
        # Compared with the file held, not with the last configuration: a
        # restore after a refused reload must not unlink the file it keeps.
        held = self.pidfile.fname if self.pidfile is not None else None
        want = self.cfg.pidfile + (".2" if self.master_pid else "") if self.cfg.pidfile else None
        if want != held:
            from gunicorn.pidfile import Pidfile
            new = None
            if want:
                new = Pidfile(want)
                new.create(self.pid)  # first: a pidfile that cannot be written changes nothing
            if self.pidfile is not None:
                self.pidfile.unlink()
            self.pidfile = new
        st.boot_report = new_boot_report()
        if reload_no:
            self.log.info("reload %d: generation %d starting", reload_no, st.generation)
        else:
            self.log.info("generation %d starting with the last configuration that served",
                          st.generation)
        self.manage_workers()

    def _rebind(self) -> None:
        """Keep the listeners whose address stays; close removed ones, open added ones."""
        wanted = list(self.cfg.address)
        kept, closed = [], []
        for lnr in self.LISTENERS:
            if lnr.cfg_addr in wanted:
                kept.append(lnr)
                wanted.remove(lnr.cfg_addr)
            else:
                closed.append(lnr)
        for lnr in closed:
            self.log.info("closing listener %s", lnr)
            lnr.close()
        for addr in wanted:
            try:
                lnr = listener(addr, self.cfg, self.log)
            except OSError as exc:
                # Validation cannot foresee an address in use: serve the rest.
                self.log.error("cannot listen on %s: %s", addr, exc)
                continue
            self.log.info("listening at %s", lnr)
            kept.append(lnr)
        self.LISTENERS = kept
