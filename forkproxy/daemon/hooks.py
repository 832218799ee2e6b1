"""gunicorn server hooks: where forkproxy's own state enters the master and workers.

The master's hooks fill the master's state (``daemon.state.MasterState``,
reached as ``arbiter.state``); the worker's build its runtime from its
``daemon.state.WorkerContext`` alone (``build_runtime``).

Master side: the runtime dir, the shared health table (``health.tbl``, one
row per pool and server, rebuilt on reload with the rows of servers that
stay), the checker lock file, and the worker slots (a respawned worker gets
the slot of the one it replaces; a dead worker's columns are cleared).
Worker side: the worker's runtime and its housekeeping greenlets.
Both: the metrics buffer (``core.metrics``: a shared anonymous mmap made by
the master, one row per slot; kept across a reload that keeps its series,
else rebuilt with the totals carried over), the cache's change counters
(``core.epochs``: shared anonymous memory, one for the master's life), the
embedded cache store's region (``net.cache_shm``, ``cache.shm`` in runtime_dir,
kept across reloads) and,
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
from forkproxy.core import accept_share
from forkproxy.core.epochs import Epochs
from forkproxy.core.table import copy_rows
from forkproxy.daemon import shm

STICKY_KEY_NAME = "sticky.key"


def table_path(cfg: Config) -> str:
    return control.table_path(cfg.server.runtime_dir)


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


def make_private_dirs(cfg: Config) -> None:
    """Master: the workers' own directories in runtime_dir: spooled request
    bodies (net.spool) and the sockets that hand connections over (net.handoff).

    Private (0700): bodies are the clients' data, the sockets take their
    connections.  Given to server.user, who could not create them in the
    root-owned runtime_dir.
    """
    from forkproxy.control import handoff_dir
    from forkproxy.net.spool import body_dir

    owner = _owner(cfg.server)
    for path in (body_dir(cfg.server.runtime_dir), handoff_dir(cfg.server.runtime_dir)):
        os.makedirs(path, mode=0o700, exist_ok=True)
        if owner is not None and os.geteuid() == 0:
            os.chown(path, *owner)


def open_access_log(cfg: Config):
    """Master: the access log, opened with the master's privileges and given to server.user.

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
    return log


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

    from forkproxy.config.route import route_pools
    from forkproxy.core.metrics import Metrics, request_keys

    pools = {p.name: [s.addr for s in p.servers] for p in cfg.pools}
    # The table's rows after the configured servers' (control.table_plan) hold
    # the servers that come at run time: their series are kept by row.
    first = sum(len(p.servers) for p in cfg.pools)
    keys = request_keys([(r.index, p, pools.get(p, [])) for r in cfg.routes
                         for p in route_pools(r)], pools,
                        range(first, first + cfg.server.runtime_servers),
                        [r.index for r in cfg.routes if r.mirror is not None])
    if old is not None and old.keys == keys and old.n_slots == n_slots:
        return old
    metrics = Metrics(keys, n_slots, mmap.mmap(-1, Metrics.size(len(keys), n_slots)))
    if old is not None:
        metrics.carry(old)
    return metrics


def build_cache_region(cfg: Config, old, log=None):
    """Master: the embedded cache store's region (``net.cache_shm``) when a route caches
    without memcached and cache.shared_size > 0; ``old`` itself when its size stays
    (its entries survive the reload).  A region no longer needed is kept, unused.

    On start (``old`` None) a failure is fatal; on reload it is logged and the old
    region kept (the new workers then keep their own stores if there is none).
    """
    c = cfg.cache
    if not any(r.cache for r in cfg.routes) or c.servers or not c.shared_size:
        return old
    if old is not None and old.size == c.shared_size:
        return old
    from forkproxy.net.cache_shm import create_region

    try:
        region = create_region(cfg.server.runtime_dir, c.shared_size, _owner(cfg.server))
    except OSError as exc:
        if log is None:
            raise RuntimeError(f"cache.shared_size: {cfg.server.runtime_dir}: {exc.strerror}") from None
        log.error("cache: keeping the previous embedded store: %s", exc)
        return old
    if old is not None:
        os.close(old.fd)  # the old generation keeps its inherited descriptor and mapping
    return region


def on_starting(arbiter) -> None:
    """Master, before binding: runtime dir, pidfile dir, access log, the table and the checker lock."""
    st = arbiter.state
    cfg = st.config
    st.access_log = open_access_log(cfg)
    os.makedirs(cfg.server.runtime_dir, mode=0o755, exist_ok=True)
    st.sticky_key = sticky_key(cfg.server.runtime_dir)  # runtime_dir needs a restart
    make_private_dirs(cfg)
    if cfg.server.pidfile:
        os.makedirs(os.path.dirname(os.path.abspath(cfg.server.pidfile)), mode=0o755,
                    exist_ok=True)
    # Slots for TTIN headroom; a worker beyond them runs without a slot.
    st.n_slots = max(8, 2 * cfg.server.workers)
    st.slots = set()
    st.table_map, st.table = build_table(cfg, st.n_slots, st.generation, arbiter.log)
    st.edge = build_edge(cfg, st.n_slots, None)
    st.metrics = build_metrics(cfg, st.n_slots, None)
    # The cache's change counters (core.epochs): one buffer for the master's
    # life, so workers of every generation see each other's changes.
    st.cache_epochs = mmap.mmap(-1, Epochs.SIZE)
    st.accept_share = mmap.mmap(-1, accept_share.size(st.n_slots))  # who takes a connection
    st.cache_region = build_cache_region(cfg, None)
    # Opened once by the master and inherited: lockf locks belong to the
    # process that takes them, and the kernel frees them when it dies.
    st.lock_fd = os.open(control.checker_lock_path(cfg.server.runtime_dir),
                         os.O_RDWR | os.O_CREAT, 0o644)
    # The admin endpoint's POST /reload: a worker running as server.user may
    # not signal the master, so it writes a byte here and the master's loop
    # (daemon.arbiter) reads it as a SIGHUP.  Non-blocking both ways: a full
    # pipe already holds a request, and the master never waits on it.
    st.reload_pipe = os.pipe()
    for fd in st.reload_pipe:
        os.set_blocking(fd, False)


def on_reload(arbiter) -> None:
    """Master, after a reload read the new file: the next table generation."""
    st = arbiter.state
    old, cfg = st.access_log, st.config
    if (old.path, old.format) != (cfg.server.access_log, cfg.server.access_log_format):
        try:
            st.access_log = open_access_log(cfg)
            old.close()  # the old generation keeps its own inherited copy
        except RuntimeError as exc:
            arbiter.log.error("keeping the previous access log: %s", exc)
    st.n_slots = max(st.n_slots, 2 * cfg.server.workers)
    # The old mapping stays alive in the old workers until they exit.
    st.table_map, st.table = build_table(cfg, st.n_slots, st.generation, arbiter.log)
    st.edge = build_edge(cfg, st.n_slots, st.edge)
    st.metrics = m = build_metrics(cfg, st.n_slots, st.metrics)
    st.cache_region = build_cache_region(cfg, st.cache_region, arbiter.log)
    m.add(m.base, m.index[("reloads_total", ())])  # the base row is the master's


def pre_fork(arbiter, worker) -> None:
    """Master, before forking a worker (its context is made, ``daemon.worker``): say
    when it got no slot."""
    if worker.context.slot is None:
        arbiter.log.warning("no free table slot for a new worker: its in-flight requests "
                            "and passive failures are not shared (more than %d workers)",
                            arbiter.state.n_slots)


def child_exit(arbiter, worker) -> None:
    """Master, a worker was reaped: clear its columns, free its slot.

    A SIGKILLed worker's in-flight counts would otherwise stay in the table;
    the worker is dead, so the master is now the cells' only writer.
    """
    ctx = worker.context
    if ctx.slot is None:
        return
    ctx.table.clear_slot(ctx.slot)
    conns = ctx.edge.get("conns_table")
    if conns is not None:
        conns.clear_slot(ctx.slot)  # its connections died with it
    ctx.metrics.clear_gauges(ctx.slot)  # its counters stay: totals survive it
    arbiter.state.release(ctx)


def post_fork(arbiter, worker) -> None:
    """Child, right after fork: the master's signal handlers and pipe end go.

    Until ``init_signals`` installs the worker's own handlers (after gevent is
    imported and patched, a few hundred milliseconds), the child still has the
    master's handlers, which only queue a signal in the child's copy of the
    master's queue, where nobody reads it: a TERM, INT or QUIT sent to a
    booting worker was lost and the master waited the whole graceful timeout.
    A worker that has served nothing may simply die, so those signals get
    their default action until then.
    """
    from forkproxy.daemon import process
    from forkproxy.daemon.worker import set_title

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)
    os.close(arbiter.state.reload_pipe[0])  # the master's end
    process.close_parent_pipe()  # -D's parent waits for the master, not for workers
    set_title(worker.context)


def build_runtime(ctx, log):
    """Worker, gevent patched: the ``net.listener.Runtime`` of ``ctx`` (a
    ``daemon.state.WorkerContext``), complete, and its health checker (not
    started; every worker has one, see below)."""
    from forkproxy.net.listener import Runtime

    cfg = ctx.config
    metrics = cache = None
    # Counting costs every request a few microseconds: only when /metrics can
    # be read (server.admin); a worker without a slot counts nothing.
    if ctx.slot is not None and cfg.server.admin:
        from forkproxy.core.metrics import SlotCounter

        metrics = SlotCounter(ctx.metrics, ctx.slot)
    if any(r.cache for r in cfg.routes):
        # After the fork: pylibmc clients must not be shared across processes.
        # Nothing connects here (the store connects on first use), so a
        # memcached that is down cannot fail the boot.
        from forkproxy.net.http_cache import Cache

        cache = Cache.from_config(cfg.cache, log, ctx.cache_epochs, ctx.cache_region)
    from forkproxy.net.leader import Leader

    # Every worker runs a checker (servers come and go at run time, so with
    # or without active checks): the one holding the lock probes, frees the
    # rows of removed servers and runs DNS discovery.
    leader = Leader(ctx.lock_fd)

    def admin(rt):
        from forkproxy.net.admin import Admin

        return Admin(rt, ctx.table, table_path(cfg),
                     control.checker_lock_path(cfg.server.runtime_dir),
                     reload_fd=ctx.reload_fd, leader=leader)
    runtime = Runtime(ctx, log, cache=cache, metrics=metrics,
                      admin=admin if cfg.server.admin else None)
    from forkproxy.daemon.worker import set_title
    from forkproxy.net.checker import Checker, Following, reclaimer, table_targets
    from forkproxy.net.discovery import Discovery
    from forkproxy.net.outlier import Detector

    path = table_path(cfg)
    outliers = Detector(ctx.table, cfg, log, metrics)
    # The title says "(checker)" for the worker that runs active checks, as before:
    # not for the lock holder of a configuration without any.
    checks = any(p.health is not None for p in cfg.pools)
    checker = Checker(ctx.table, [], leader, log, initial=cfg.server.initial_health,
                      metrics=metrics,
                      on_lead=lambda lead: set_title(ctx, checker=lead and checks),
                      follow=Following(
                          lambda t: table_targets(t, cfg),
                          (reclaimer(ctx.table, path, log), Discovery(ctx.table, path, cfg, log).job,
                           outliers.job),
                          min([0.5] + [p.health.interval for p in cfg.pools if p.health]
                              + ([outliers.poll] if outliers.poll else []))))
    return runtime, checker


def post_worker_init(worker) -> None:
    """Child, gevent patched: build this worker's runtime and start its greenlets."""
    import gevent

    from forkproxy.net.listener import maintain

    ctx = worker.context
    if ctx.slot is not None:
        ctx.table.clear_slot(ctx.slot)  # the predecessor may have died mid-request
    worker.log.reopen_if_moved(ctx.access_log)  # a USR1 sent while this worker booted was lost
    worker.runtime, checker = build_runtime(ctx, worker.log)
    if checker is not None:
        gevent.spawn(checker.run)
    gevent.spawn(maintain, worker, lambda: worker.runtime,
                 on_stop=[checker.stop] if checker is not None else [])


def worker_exit(arbiter, worker) -> None:
    """Child, on the way out: close what the runtime holds."""
    rt = getattr(worker, "runtime", None)
    if rt is not None:
        for pool in rt.pools.values():
            pool.close()
        rt.access_log.close()
