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
- the new generation is forked at once; each older worker is *retired*
  (SIGTERM, after which it drains, see ``daemon.worker``) as soon as every
  worker of the newest generation serves, or at once if it had not booted
  itself.  Retiring workers stay in ``WORKERS`` (so they are reaped and their
  table slot freed as usual) but no longer count towards ``num_workers``.

The master loop keeps running during all of it; the only wait it does is
the signal queue's, shortened to 50 ms while a generation is booting.
"""

from __future__ import annotations

import os
import signal
import sys
import time

from gunicorn import sock as gsock
from gunicorn import util
from gunicorn.arbiter import Arbiter

from forkproxy.daemon import process

# How long an older generation may outlive a newest one that never comes up
# (workers that crash while booting are respawned meanwhile).
BOOT_GRACE = 30.0


def _is_booted(worker) -> bool:
    """A worker serves once it has touched its heartbeat file (first ``notify``)."""
    try:
        return worker.tmp.last_update() != worker.fp_tmp0
    except (OSError, ValueError, AttributeError):
        return False


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
    """See the module docstring.  ``fp_detached``: started with ``-D``."""

    fp_detached = False

    def __init__(self, app, start_cwd: str | None = None):
        super().__init__(app)
        self.fp_gen = 0              # bumped by every accepted reload
        self.fp_reloads = 0          # every HUP, for reload.json
        self.fp_gen_reload = 0       # the HUP that started the newest generation
        self.fp_gen_started = time.monotonic()
        self.fp_announced = False    # the newest generation was announced as serving
        self.START_CTX["args"] = reexec_args(sys.argv)
        if start_cwd:
            self.START_CTX["cwd"] = start_cwd

    # -- worker accounting --------------------------------------------------

    def _serving(self, newest_only: bool = False) -> list:
        """(pid, worker) of the workers not retiring, oldest first."""
        return sorted(((pid, w) for pid, w in self.WORKERS.items()
                       if not getattr(w, "fp_retiring", False)
                       and (not newest_only or w.fp_gen == self.fp_gen)),
                      key=lambda kv: kv[1].age)

    def retire(self, pid: int, worker) -> None:
        """Ask a worker to drain and exit (once)."""
        worker.fp_retiring = True
        self.kill_worker(pid, signal.SIGTERM)

    def spawn_workers(self):
        for _ in range(self.num_workers - len(self._serving(newest_only=True))):
            self.spawn_worker()

    def manage_workers(self):
        """Keep ``num_workers`` of the newest generation; retire the surplus and older ones."""
        if len(self._serving(newest_only=True)) < self.num_workers:
            self.spawn_workers()
        newest = self._serving(newest_only=True)
        while len(newest) > self.num_workers:  # TTOU, WINCH
            pid, worker = newest.pop(0)
            self.retire(pid, worker)
        all_up = all(_is_booted(w) for _, w in newest)
        waited = time.monotonic() - self.fp_gen_started > BOOT_GRACE
        for pid, worker in self._serving():
            if worker.fp_gen < self.fp_gen and (all_up or waited or not _is_booted(worker)):
                self.retire(pid, worker)
        if all_up and not self.fp_announced:
            self.fp_announced = True
            self._announce_serving()

    def wait_for_signals(self, timeout=1.0):
        """gunicorn's queued signals, plus a SIGHUP for each wake-up that finds
        reload requests from the admin endpoint (``hooks.on_starting``)."""
        if not self.fp_announced:
            timeout = min(timeout, 0.05)  # notice the new generation booting promptly
        signals = super().wait_for_signals(timeout=timeout)
        pipe = getattr(self.app, "fp_reload_pipe", None)
        if pipe is not None:
            try:
                if os.read(pipe[0], 4096):
                    signals.append(signal.SIGHUP)
            except BlockingIOError:
                pass
        return signals

    def _announce_serving(self) -> None:
        n = len(self._serving())
        process.sd_notify(f"READY=1\nSTATUS=serving: generation {self.fp_gen}, {n} workers")
        # A rejected HUP since then has the last word in reload.json.
        if self.fp_gen_reload and self.fp_gen_reload == self.fp_reloads:
            process.write_status(self.app.fp_config.server.runtime_dir, self.fp_reloads,
                                 "serving")
            self.log.info("reload %d: the new generation serves", self.fp_reloads)

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
        if self.fp_detached or not on_tty:
            self.log.info("WINCH: graceful stop of the workers")
            self.num_workers = 0
            self.manage_workers()
        else:
            self.log.info("WINCH ignored: running in the foreground on a terminal")

    def stop(self, graceful=True):
        process.sd_notify("STOPPING=1\nSTATUS=stopping")
        super().stop(graceful)

    def reload(self):
        """SIGHUP: validate, then switch generations without blocking (module docstring)."""
        self.fp_reloads += 1
        runtime_dir = self.app.fp_config.server.runtime_dir
        errors = self.app.reload()
        if errors:
            process.write_status(runtime_dir, self.fp_reloads, "rejected", errors)
            process.sd_notify("STATUS=reload rejected: " + errors[0])
            return
        process.sd_notify(f"RELOADING=1\n{process.monotonic_usec()}\nSTATUS=reloading")
        runtime_dir = self.app.fp_config.server.runtime_dir
        os.makedirs(runtime_dir, mode=0o755, exist_ok=True)
        process.write_status(runtime_dir, self.fp_reloads, "loading")
        old_pidfile = self.cfg.pidfile
        self.setup(self.app)
        self.log.reopen_files()
        self._rebind()
        self.cfg.on_reload(self)
        if self.cfg.pidfile != old_pidfile:
            if self.pidfile is not None:
                self.pidfile.unlink()
                self.pidfile = None
            if self.cfg.pidfile:
                from gunicorn.pidfile import Pidfile
                name = self.cfg.pidfile + (".2" if self.master_pid else "")
                self.pidfile = Pidfile(name)
                self.pidfile.create(self.pid)
        util._setproctitle("master [%s]" % self.proc_name)
        self.fp_gen += 1
        self.fp_gen_reload = self.fp_reloads
        self.fp_gen_started = time.monotonic()
        self.fp_announced = False
        self.log.info("reload %d: generation %d starting", self.fp_reloads, self.fp_gen)
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
                lnr = gsock._sock_type(addr)(addr, self.cfg, self.log)
            except OSError as exc:
                # Validation cannot foresee an address in use: serve the rest.
                self.log.error("cannot listen on %s: %s", addr, exc)
                continue
            self.log.info("listening at %s", lnr)
            kept.append(lnr)
        self.LISTENERS = kept
