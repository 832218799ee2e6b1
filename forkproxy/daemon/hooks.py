"""gunicorn server hooks: where forkproxy's own state enters the master and workers.

Master side: the runtime dir, the shared health table (``health.tbl``, one
row per pool and server, rebuilt on reload with the rows of servers that
stay), the checker lock file, and the worker slots (a respawned worker gets
the slot of the one it replaces; a dead worker's columns are cleared).
Worker side: the worker's runtime and its housekeeping greenlets.
Both: the metrics buffer (``core.metrics``: a shared anonymous mmap made by
the master, one row per slot; kept across a reload that keeps its series,
else rebuilt with the totals carried over), the cache's change counters
(``core.epochs``: shared anonymous memory, one for the master's life) and,
when ``server.admin`` is set, the admin endpoint (``net.admin``) on its own
listening socket.

Nothing here may raise at run time for a reason an operator cannot fix at
start-up (DESIGN section 3, item 2): an exception during worker boot halts
the whole master.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import signal
import time
from dataclasses import replace

from forkproxy import control
from forkproxy.config import Config
from forkproxy.core.epochs import Epochs
from forkproxy.core.table import copy_rows
from forkproxy.daemon import shm

STICKY_KEY_NAME = "sticky.key"


def table_path(cfg: Config) -> str:
    return control.table_path(cfg.server.runtime_dir)


def table_labels(cfg: Config) -> list[str]:
    """One row per (pool, server): pools in file order, servers in list order."""
    return [f"{p.name}/{s.addr}" for p in cfg.pools for s in p.servers]


def build_table(cfg: Config, n_slots: int, generation: int, log=None):
    """Create the table for ``cfg`` at its path, carrying over the rows of servers that stay.

    ``generation``: the master's generation number (``daemon.arbiter``).

    Done under the admin lock so that a ``forkproxyctl drain`` racing a
    reload lands in the new table, not in the one being replaced.  The
    table and the lock file belong to server.user: its workers' admin
    endpoint opens both for writing.  Rows of
    new servers start as ``server.initial_health`` says (pools with active
    checks) or up (pools without: only passive checks apply to them).
    The rows are ``control.table_plan``'s: the configured servers, then
    those added at run time (the state file, whose records the
    configuration overrides are dropped from it, with a warning on ``log``),
    then free rows for more.
    """
    path = table_path(cfg)
    owner = _owner(cfg.server)
    with shm.admin_lock(path):
        if owner is not None:
            os.chown(shm.admin_lock_path(path), *owner)
        try:
            state = control.read_state(cfg.server.runtime_dir)
        except (control.ControlError, OSError) as exc:
            if log is not None:
                log.error("ignoring the servers added or removed at run time: %s",
                          getattr(exc, "message", exc))
            state = None
        rows, kept, notes = control.table_plan(cfg, state or {})
        for note in notes:
            if log is not None:
                log.warning("%s", note)
        if state is not None and kept != state and (state.get("pools") or kept["pools"]):
            control.write_state(cfg.server.runtime_dir, kept)
        try:
            old = shm.open_table(path, writable=False)
        except (OSError, ValueError):
            old = None
        mm, table = shm.create(path, len(rows), n_slots, generation, owner=owner)
        now = time.time()
        for row, (label, member) in enumerate(rows):
            table.write_member(row, label, replace(member, changed=now))
            if member.state == "active":
                table.write_health(row, control.first_health(cfg, label.partition("/")[0], now))
        if old is not None:
            _carry_discovered(cfg, old, table, now, log)
            new_rows = {label: row for row, label, m in control.members(table)}
            mapping = {}
            for i, label, m in control.members(old):
                if m.state == "active" and label in new_rows:
                    mapping[i] = new_rows[label]
            copy_rows(old, table, mapping)
            shm.close_table(old)
    return mm, table


def _carry_discovered(cfg: Config, old, table, now: float, log) -> None:
    """Give the servers DNS discovery found for pools that still discover
    rows in the new table: until the next answer, they are the last known set."""
    discovering = {p.name for p in cfg.pools if p.discover}
    for _, label, m in control.members(old):
        if m.origin == "dns" and m.state == "active" and label.partition("/")[0] in discovering:
            try:
                control.allocate_row(table, label, m, control.first_health(
                    cfg, label.partition("/")[0], now), "dns", now)
            except control.TableFull as exc:
                if log is not None:
                    log.error("servers found by DNS not all kept: %s", exc.message)
                return


def sticky_key(runtime_dir: str) -> bytes:
    """Master: the daemon's random key of sticky tokens, in ``runtime_dir/sticky.key``.

    Made at the first start (32 random bytes, hex, mode 0600, the master's),
    then read by every later start, reload and USR2 upgrade, so cookies stay
    valid for servers that stay.  The workers inherit it in memory.  Never
    follows a symlink.  A file that is not such a key is an error (an
    operator's to look at, not something to overwrite).
    """
    path = os.path.join(runtime_dir, STICKY_KEY_NAME)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        fd = None
    except OSError as exc:
        why = "a symbolic link (refused)" if exc.errno == errno.ELOOP else exc.strerror
        raise RuntimeError(f"{path}: {why}") from None
    if fd is None:
        tmp = f"{path}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # left by a master of the same pid that died here
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            os.write(fd, os.urandom(32).hex().encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # never replaces: a master that got there first wins
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
        return sticky_key(runtime_dir)
    try:
        text = os.read(fd, 4096).decode("ascii", "replace").strip()
    finally:
        os.close(fd)
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < 16:
        raise RuntimeError(f"{path}: not a key forkproxy made (remove it to make a new one; "
                           "every sticky cookie then gets a fresh choice)")
    return key


def _owner(server) -> tuple[int, int] | None:
    """(uid, gid) of server.user / server.group, or None when workers keep the master's."""
    import grp
    import pwd

    if not server.user:
        return None
    pw = pwd.getpwnam(server.user)
    gid = grp.getgrnam(server.group).gr_gid if server.group else pw.pw_gid
    return pw.pw_uid, gid


def make_body_dir(cfg: Config) -> None:
    """Master: the directory of spooled request bodies (net.spool), the workers' own.

    Private (0700): bodies are the clients' data.  Given to server.user, who
    could not create it in the root-owned runtime_dir.
    """
    from forkproxy.net.spool import body_dir

    path = body_dir(cfg.server.runtime_dir)
    os.makedirs(path, mode=0o700, exist_ok=True)
    owner = _owner(cfg.server)
    if owner is not None and os.geteuid() == 0:
        os.chown(path, *owner)


def open_access_log(arbiter, cfg: Config):
    """Master: open the access log with the master's privileges and give it to server.user.

    Workers inherit the open file; on USR1 the master reopens it first (a
    new file after logrotate moved the old one, handed to server.user), then
    signals the workers, which reopen the path that now exists.
    """
    from forkproxy.logs import AccessLog

    owner = _owner(cfg.server)
    try:
        log = AccessLog(cfg.server.access_log, cfg.server.access_log_format, owner=owner)
    except OSError as exc:
        raise RuntimeError(f"server.access_log {cfg.server.access_log}: {exc.strerror}") from None
    arbiter.app.fp_access_log = log
    arbiter.log.fp_access_log = log  # the master's own USR1 reopen


def build_edge(cfg: Config, n_slots: int, old: dict | None) -> dict:
    """The edge rules' shared memory (net.edge.create_shared): rate-limit buckets per
    route, new at every load (a reload refills them), and the max_conns_per_ip table,
    kept across reloads while the slot count stays (old workers' connections still count)."""
    from forkproxy.core.connlimit import ConnTable
    from forkproxy.net.edge import CONN_ENTRIES, create_shared

    shared = create_shared(cfg, n_slots)
    if shared["conns"] is not None:
        if old is not None and old["conns"] is not None and old["n_slots"] == n_slots:
            shared["conns"] = old["conns"]
        shared["conns_table"] = ConnTable(shared["conns"], CONN_ENTRIES, n_slots)
    return shared


def build_metrics(cfg: Config, n_slots: int, old):
    """The ``core.metrics.Metrics`` for ``cfg`` (master): ``old`` itself when its
    series and slots are the same, else a new buffer carrying ``old``'s totals.

    Anonymous shared memory, not a file in runtime_dir: only the workers read
    it (forkproxyctl asks the admin endpoint), and keeping the old buffer
    means the old generation's last requests still count after a reload.
    """
    import mmap

    from forkproxy.core.metrics import Metrics, request_keys

    pools = {p.name: [s.addr for s in p.servers] for p in cfg.pools}
    keys = request_keys([(r.index, r.pool, pools.get(r.pool, [])) for r in cfg.routes], pools)
    if old is not None and old.keys == keys and old.n_slots == n_slots:
        return old
    metrics = Metrics(keys, n_slots, mmap.mmap(-1, Metrics.size(len(keys), n_slots)))
    if old is not None:
        metrics.carry(old)
    return metrics


def on_starting(arbiter) -> None:
    """Master, before binding: runtime dir, pidfile dir, access log, the table and the checker lock."""
    app = arbiter.app
    cfg = app.fp_config
    open_access_log(arbiter, cfg)
    os.makedirs(cfg.server.runtime_dir, mode=0o755, exist_ok=True)
    app.fp_sticky_key = sticky_key(cfg.server.runtime_dir)  # runtime_dir needs a restart
    make_body_dir(cfg)
    if cfg.server.pidfile:
        os.makedirs(os.path.dirname(os.path.abspath(cfg.server.pidfile)), mode=0o755,
                    exist_ok=True)
    # Slots for TTIN headroom; a worker beyond them runs without a slot.
    app.fp_n_slots = max(8, 2 * cfg.server.workers)
    app.fp_slots = set()
    app.fp_mmap, app.fp_table = build_table(cfg, app.fp_n_slots, arbiter.fp_gen, arbiter.log)
    app.fp_edge = build_edge(cfg, app.fp_n_slots, None)
    app.fp_metrics = build_metrics(cfg, app.fp_n_slots, None)
    # The cache's change counters (core.epochs): one buffer for the master's
    # life, so workers of every generation see each other's changes.
    app.fp_cache_epochs = mmap.mmap(-1, Epochs.SIZE)
    # Opened once by the master and inherited: lockf locks belong to the
    # process that takes them, and the kernel frees them when it dies.
    app.fp_lock_fd = os.open(control.checker_lock_path(cfg.server.runtime_dir),
                             os.O_RDWR | os.O_CREAT, 0o644)
    # The admin endpoint's POST /reload: a worker running as server.user may
    # not signal the master, so it writes a byte here and the master's loop
    # (daemon.arbiter) reads it as a SIGHUP.  Non-blocking both ways: a full
    # pipe already holds a request, and the master never waits on it.
    app.fp_reload_pipe = os.pipe()
    for fd in app.fp_reload_pipe:
        os.set_blocking(fd, False)


def on_reload(arbiter) -> None:
    """Master, after a reload read the new file: the next table generation."""
    app = arbiter.app
    old, cfg = app.fp_access_log, app.fp_config
    if (old.path, old.format) != (cfg.server.access_log, cfg.server.access_log_format):
        try:
            open_access_log(arbiter, cfg)
            old.close()  # the old generation keeps its own inherited copy
        except RuntimeError as exc:
            arbiter.log.error("keeping the previous access log: %s", exc)
    app.fp_n_slots = max(app.fp_n_slots, 2 * app.fp_config.server.workers)
    # The old mapping stays alive in the old workers until they exit.
    app.fp_mmap, app.fp_table = build_table(app.fp_config, app.fp_n_slots, arbiter.fp_gen,
                                             arbiter.log)
    app.fp_edge = build_edge(app.fp_config, app.fp_n_slots, app.fp_edge)
    app.fp_metrics = m = build_metrics(app.fp_config, app.fp_n_slots, app.fp_metrics)
    m.add(m.base, m.index[("reloads_total", ())])  # the base row is the master's


def pre_fork(arbiter, worker) -> None:
    """Master, before forking a worker: its generation, and the lowest free slot."""
    app = arbiter.app
    # Generation and heartbeat baseline: the arbiter retires older
    # generations once every worker of the newest one has notified.
    worker.fp_gen = getattr(arbiter, "fp_gen", 0)
    worker.fp_tmp0 = worker.tmp.last_update()
    free = [s for s in range(app.fp_n_slots) if s not in app.fp_slots]
    worker.fp_slot = free[0] if free else None
    worker.fp_table = app.fp_table
    worker.fp_edge = app.fp_edge
    worker.fp_cache_epochs = app.fp_cache_epochs
    worker.fp_metrics = app.fp_metrics
    if worker.fp_slot is not None:
        app.fp_slots.add(worker.fp_slot)
    else:
        arbiter.log.warning("no free table slot for a new worker: its in-flight requests "
                            "and passive failures are not shared (more than %d workers)",
                            app.fp_n_slots)


def child_exit(arbiter, worker) -> None:
    """Master, a worker was reaped: clear its columns, free its slot.

    A SIGKILLed worker's in-flight counts would otherwise stay in the table;
    the worker is dead, so the master is now the cells' only writer.
    """
    slot = getattr(worker, "fp_slot", None)
    if slot is None:
        return
    worker.fp_table.clear_slot(slot)
    conns = worker.fp_edge.get("conns_table")
    if conns is not None:
        conns.clear_slot(slot)  # its connections died with it
    worker.fp_metrics.clear_gauges(slot)  # its counters stay: totals survive it
    arbiter.app.fp_slots.discard(slot)


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
    os.close(arbiter.app.fp_reload_pipe[0])  # the master's end
    become_gevent_worker(worker)


def post_worker_init(worker) -> None:
    """Child, gevent patched: build this worker's runtime and start its greenlets."""
    import gevent

    from forkproxy.net.session import Runtime, maintain

    app = worker.app
    cfg = app.fp_config
    table = worker.fp_table
    if worker.fp_slot is not None:
        table.clear_slot(worker.fp_slot)  # the predecessor may have died mid-request
    access_log = app.fp_access_log  # opened by the master, inherited
    worker.log.fp_access_log = access_log  # reopened with the error log on USR1
    worker.log.fp_reopen_if_moved()  # a USR1 sent while this worker booted was lost
    worker.runtime = Runtime(cfg, worker.log, access_log, table, worker.fp_slot, worker.fp_edge,
                             app.fp_sticky_key)
    # Counting costs every request a few microseconds: only when /metrics can
    # be read (server.admin); a worker without a slot counts nothing.
    if worker.fp_slot is not None and cfg.server.admin:
        from forkproxy.core.metrics import SlotCounter

        worker.runtime.metrics = SlotCounter(worker.fp_metrics, worker.fp_slot)
    if cfg.server.admin:
        from forkproxy.net.admin import Admin

        worker.runtime.admin = Admin(worker.runtime, table, table_path(cfg),
                                     control.checker_lock_path(cfg.server.runtime_dir),
                                     reload_fd=app.fp_reload_pipe[1])
    if any(r.cache for r in cfg.routes):
        # After the fork: pylibmc clients must not be shared across processes.
        # Nothing connects here (the store connects on first use), so a
        # memcached that is down cannot fail the boot.
        from forkproxy.net.caching import Cache

        worker.runtime.cache = Cache.from_config(cfg.cache, worker.log, worker.fp_cache_epochs)
    checker = start_checker(worker, cfg, table, app.fp_lock_fd)
    if checker is not None and worker.runtime.admin is not None:
        worker.runtime.admin.leader = checker.leader
    gevent.spawn(maintain, worker, lambda: worker.runtime,
                 on_stop=[checker.stop] if checker is not None else [])


def start_checker(worker, cfg: Config, table, lock_fd: int):
    """Every worker runs a checker greenlet; the one holding the lock probes,
    frees the rows of removed servers and runs DNS discovery (servers come
    and go at run time, so every worker runs one, with or without active
    checks).

    Returns the checker.
    """
    import gevent

    from forkproxy.net.checker import Checker, reclaimer, table_targets
    from forkproxy.net.discovery import Discovery
    from forkproxy.net.leader import Leader

    from forkproxy.daemon.worker import set_title

    checker = Checker(table, [], Leader(lock_fd), worker.log,
                      initial=cfg.server.initial_health, metrics=worker.runtime.metrics,
                      on_lead=lambda lead: set_title(worker, checker=lead),
                      members_of=lambda t: table_targets(t, cfg),
                      housekeeping=[reclaimer(table, table_path(cfg), worker.log),
                                    Discovery(table, table_path(cfg), cfg, worker.log).job],
                      poll=min([0.5] + [p.health.interval for p in cfg.pools if p.health]))
    gevent.spawn(checker.run)
    return checker


def worker_exit(arbiter, worker) -> None:
    """Child, on the way out: close what the runtime holds."""
    rt = getattr(worker, "runtime", None)
    if rt is not None:
        for pool in rt.pools.values():
            pool.close()
        rt.access_log.close()
