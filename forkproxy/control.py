"""The operator's actions on a running forkproxy, one implementation each.

The admin endpoint (``net.admin``), ``forkproxy -s`` (``cli``) and
``forkproxyctl`` (``ctl``) all call these; DESIGN section 0, "one owner per
operator action".  What lives here:

- the files in ``server.runtime_dir`` and their names (``TABLE_NAME``,
  ``CHECKER_LOCK_NAME``, ``RELOAD_STATUS_NAME``);
- the shared table's reader/writer side: ``open_table``, ``close_table``,
  ``admin_lock`` (the master's ``create`` stays in ``daemon.shm``);
- ``set_admin``: a server's admin state (drain, maint, ready) and weight;
- servers that come and go: ``add_server``, ``remove_server`` (member
  cells of the table, and the state file ``STATE_NAME`` that keeps them
  across reloads and restarts, see ``core.members``), ``allocate_row`` and
  ``reclaim`` (the rows of removed servers, freed once their in-flight
  requests end), ``table_plan`` (the master's rows for a configuration);
- the master's pid (``read_pid``, ``master_pid``) and signalling it
  (``signal_master``);
- reload and wait: ``read_reload_status``, ``wait_reload``,
  ``reload_and_wait`` over ``reload.json``;
- parsing what an operator types: ``parse_weight``, ``config_path``;
- purging the cache without the admin endpoint (``purge_through_listeners``;
  the endpoint's own purge is the worker's cache, ``net.admin``).

Every function states what it changes and what it raises; turning an error
into an exit status or an HTTP status is the caller's business.

Stdlib, ``forkproxy.core`` and ``forkproxy.config`` only (tests/test_layering.py):
``forkproxyctl`` uses it without importing ``daemon`` or ``net``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import mmap
import os
import time
from dataclasses import replace

from forkproxy.config import Config, ListenerConfig, split_host_port
from forkproxy.core.health import RiseFall
from forkproxy.core.http1.targets import split_url
from forkproxy.core.members import Spec, empty_state, merge, record_add, record_remove
from forkproxy.core.table import ADMIN_STATES, AdminRow, HealthRow, MemberRow, Table

__all__ = [
    "DEFAULT_CONFIG", "TABLE_NAME", "CHECKER_LOCK_NAME", "RELOAD_STATUS_NAME", "ADMIN_STATES",
    "WEIGHT_MAX", "ControlError", "NoSuchServer", "NotRunning", "NotAllowed",
    "config_path", "table_path", "checker_lock_path", "reload_status_path",
    "open_table", "close_table", "admin_lock", "admin_lock_path", "set_admin", "parse_weight",
    "read_pid", "master_pid", "signal_master", "read_reload_status", "wait_reload",
    "reload_and_wait", "connect_address", "purge_through_listeners",
    "STATE_NAME", "REMOVE_GRACE", "MAX_CONNS_MAX", "TableFull", "state_path", "read_state",
    "write_state", "configured_specs", "table_plan", "members", "active_row", "first_health",
    "allocate_row", "reclaim", "add_server", "remove_server", "sync_discovered",
]

DEFAULT_CONFIG = "/etc/forkproxy/forkproxy.toml"
TABLE_NAME = "health.tbl"
CHECKER_LOCK_NAME = "checker.lock"
RELOAD_STATUS_NAME = "reload.json"
STATE_NAME = "servers.json"
#: Seconds a removed server's row stays "removing" before it may be freed
#: (once nothing is in flight to it): every worker re-reads members every
#: ``net.pools.REFRESH`` (0.2 s), so by then none picks it any more.
REMOVE_GRACE = 2.0
#: Same bounds as the ``max_conns`` key of a pool's servers.
MAX_CONNS_MAX = 100000
#: Same bounds as the ``weight`` key of a pool's servers (1..1000).
WEIGHT_MAX = 1000


class ControlError(Exception):
    """An action that cannot be done, with the operator's explanation in ``message``."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class NoSuchServer(ControlError):
    """``set_admin``: no row for that pool and server (the message names what exists)."""


class TableFull(ControlError):
    """``add_server``: every row ``server.runtime_servers`` keeps is in use."""


class NotRunning(ControlError):
    """``signal_master``: no process has that pid (a stale pidfile)."""


class NotAllowed(ControlError):
    """``signal_master``: the process exists but this user may not signal it."""


def config_path(given: str | None) -> str:
    """The configuration file: ``-c FILE``, else ``$FORKPROXY_CONFIG``, else DEFAULT_CONFIG."""
    return given or os.environ.get("FORKPROXY_CONFIG") or DEFAULT_CONFIG


def table_path(runtime_dir: str) -> str:
    return os.path.join(runtime_dir, TABLE_NAME)


def checker_lock_path(runtime_dir: str) -> str:
    return os.path.join(runtime_dir, CHECKER_LOCK_NAME)


def handoff_dir(runtime_dir: str) -> str:
    """Where workers listen for the connections older generations hand over (net.handoff)."""
    return os.path.join(runtime_dir, "handoff")


def reload_status_path(runtime_dir: str) -> str:
    return os.path.join(runtime_dir, RELOAD_STATUS_NAME)


# -- the shared table ----------------------------------------------------------------


def open_table(path: str, writable: bool = False) -> Table:
    """Map an existing table file; read-only unless ``writable``.

    Raises ``OSError`` (missing, no permission), ``ValueError`` (an empty
    file) or ``core.table.LayoutError`` if the file is not a table of this
    layout version. The mapping is reachable as ``table.buf``; release it
    with ``close_table``.
    """
    fd = os.open(path, (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        if writable:
            mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        else:
            mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    try:
        return Table(mm)
    except BaseException:
        mm.close()
        raise


def close_table(table: Table) -> None:
    """Release ``table``'s views and unmap its buffer if it is an mmap (idempotent).

    Every other ``Table`` over the same mmap must be released first, or
    ``mmap.close`` raises ``BufferError``.
    """
    table.release()
    buf = table.buf
    if isinstance(buf, mmap.mmap) and not buf.closed:
        buf.close()


def admin_lock_path(path: str) -> str:
    """The admin lock file for the table at ``path`` (stable across generations)."""
    return f"{path}.admin.lock"


@contextlib.contextmanager
def admin_lock(path: str, blocking: bool = True):
    """Hold the exclusive admin lock for the table at ``path``.

    Writers of admin cells (``set_admin``, the master while copying rows on
    reload) take it, then open the table. It is a POSIX ``lockf`` lock,
    released by the kernel if the holder dies. Creates the lock file.
    Raises ``BlockingIOError`` if ``blocking`` is false and the lock is
    held, ``OSError`` (with the lock file's name) when it cannot be opened.
    """
    fd = os.open(admin_lock_path(path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
        try:
            yield
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _find_row(table: Table, pool: str, server: str) -> int:
    """The row of ``pool/server``; NoSuchServer naming what exists when there is none."""
    row = active_row(table, pool, server)
    if row is not None:
        return row
    known: dict[str, list[str]] = {}
    for r, label, _ in members(table):
        p, _, addr = label.partition("/")
        known.setdefault(p, []).append(addr)
    if pool not in known:
        raise NoSuchServer(f"no pool {pool!r} in the health table; pools: "
                           + (", ".join(known) or "none"))
    raise NoSuchServer(f"no server {server!r} in pool {pool!r}; servers: "
                       + ", ".join(known[pool]))


def set_admin(path: str, pool: str, server: str, *, state: str | None = None,
              weight: int | None = None, by: str, now: float | None = None
              ) -> tuple[AdminRow, AdminRow]:
    """Change one server's admin cell in the table at ``path``; return (old, new).

    ``state`` is one of ADMIN_STATES (None: keep); ``weight`` is
    1..WEIGHT_MAX to override the configured weight, 0 to go back to it
    (None: keep). State and weight are independent. ``by`` (who asked, cut
    to the table's 32 bytes) and ``now`` (default: the clock) are recorded
    with a change.  Follows the writer contract of ``core.table``: takes
    the admin lock, *then* opens the table writable, so a reload that swaps
    in the next generation under the same lock never loses the change.
    Writes nothing when the cell already says so (``changed``/``by`` keep
    telling who really changed it).

    Raises NoSuchServer when the table has no such row; the ``OSError``,
    ``ValueError`` or ``LayoutError`` of opening the table or the lock file
    (``filename`` tells which); nothing is created when the table is missing.
    """
    if state is not None and state not in ADMIN_STATES:
        raise ValueError(f"admin state {state!r}: expected one of {', '.join(ADMIN_STATES)}")
    # Check first: admin_lock creates its lock file, and a command aimed at a
    # forkproxy that is not running must leave nothing behind.
    if not os.path.exists(path):
        close_table(open_table(path))  # raises the reason (missing, no permission)
    with admin_lock(path):
        table = open_table(path, writable=True)
        try:
            row = _find_row(table, pool, server)
            old = table.read_admin(row)
            new = AdminRow(old.state if state is None else state,
                           old.weight if weight is None else weight, old.changed, old.by)
            if new != old:
                new = AdminRow(new.state, new.weight, time.time() if now is None else now, by)
                table.write_admin(row, new)
            return old, new
        finally:
            close_table(table)


def parse_weight(text: str) -> int:
    """``N`` (1..WEIGHT_MAX) or ``config``/``-1`` (back to the configured weight: 0).

    Raises ValueError with the operator's message for anything else.
    """
    if text in ("config", "-1"):
        return 0
    try:
        n = int(text)
    except ValueError:
        raise ValueError(f"expected 1..{WEIGHT_MAX} or 'config', got {text!r}") from None
    if n == 0:
        raise ValueError("weight 0 is not supported: use 'drain' to stop new traffic to a server")
    if not 1 <= n <= WEIGHT_MAX:
        raise ValueError(f"expected 1..{WEIGHT_MAX} or 'config', got {n}")
    return n


# -- servers that come and go --------------------------------------------------------


def state_path(runtime_dir: str) -> str:
    return os.path.join(runtime_dir, STATE_NAME)


def read_state(runtime_dir: str) -> dict:
    """The runtime changes kept in ``runtime_dir`` (``core.members``'s document).

    An absent file is no change.  Raises ControlError for a file that is
    not such a document (an operator's to look at: it is never overwritten
    silently) and the ``OSError`` of reading it.
    """
    path = state_path(runtime_dir)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return empty_state()
    except ValueError as exc:
        raise ControlError(f"{path}: not a forkproxy state file: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("pools"), dict):
        raise ControlError(f"{path}: not a forkproxy state file")
    return data


def write_state(runtime_dir: str, state: dict) -> None:
    """Replace the state file (temp file, fsync, rename: never half written)."""
    path = state_path(runtime_dir)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(state, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def configured_specs(cfg: Config) -> dict[str, list[Spec]]:
    """Every pool's servers as the configuration file lists them."""
    return {p.name: [Spec(s.addr, s.weight, s.backup, s.max_conns) for s in p.servers]
            for p in cfg.pools}


def table_plan(cfg: Config, state: dict) -> tuple[list[tuple[str, MemberRow]], dict, list[str]]:
    """The master's rows for ``cfg`` with the runtime changes of ``state``.

    Returns ``(rows, kept state, notes)``: first one row per configured
    server, pools in file order and servers in list order (``net.listener``
    counts on that order), free when removed at run time; then the servers
    added at run time; then free rows up to ``server.runtime_servers`` rows
    beyond the configured ones (the room for servers that come at run
    time).  Each row is (label, member); serials start at 1.
    """
    pools, kept, notes = merge(configured_specs(cfg), state)
    rows: list[tuple[str, MemberRow]] = []
    extra: list[tuple[str, MemberRow]] = []
    for name, entries in pools.items():
        for spec, origin, active in entries:
            m = MemberRow("active" if active else "free", origin, spec.weight, spec.backup,
                          spec.max_conns, 1)
            label = f"{name}/{spec.addr}" if active else ""
            (rows if origin == "config" else extra).append((label, m))
    room = cfg.server.runtime_servers
    if len(extra) > room:
        notes.append(f"server.runtime_servers = {room} leaves no room for {len(extra) - room} "
                     "server(s) added at run time: not used (raise it and reload)")
        extra = extra[:room]
    return rows + extra + [("", MemberRow())] * (room - len(extra)), kept, notes


def members(table: Table) -> list[tuple[int, str, MemberRow]]:
    """(row, label, member) of every row that is not free, in row order.

    A labelled row whose member cell was never written is a configured,
    active server (a table made by ``set_label`` alone, as tests do).
    """
    out = []
    for row in range(table.n_rows):
        got = table.read_member(row)
        if got is None:
            label = table.label(row)
            if label:
                out.append((row, label, MemberRow("active", serial=1)))
        elif got[1].state != "free" and got[0]:
            out.append((row, got[0], got[1]))
    return out


def active_row(table: Table, pool: str, addr: str) -> int | None:
    """The row of the active server ``addr`` of ``pool``, or None."""
    want = f"{pool}/{addr}"
    for row, label, m in members(table):
        if label == want and m.state == "active":
            return row
    return None


def first_health(cfg: Config, pool: str, now: float) -> HealthRow:
    """The health a new row of ``pool`` starts with (as the master's rows do)."""
    health = cfg.pool(pool).health
    if health is None:
        return HealthRow(state="up", last_change=now, reason="initial: no active checks")
    return RiseFall(health.rise, health.fall, init_state=cfg.server.initial_health).initial(now)


def reclaim(table: Table, now: float, grace: float = REMOVE_GRACE) -> list[str]:
    """Free the rows of removed servers that nothing is in flight to, ``grace``
    seconds after their removal; return their labels.  Admin lock held."""
    freed = []
    for row, label, m in members(table):
        if m.state == "removing" and now - m.changed >= grace and table.inflight(row) == 0:
            table.write_member(row, "", MemberRow("free", m.origin, serial=m.serial,
                                                  changed=now))
            freed.append(label)
    return freed


def allocate_row(table: Table, label: str, member: MemberRow, health: HealthRow,
                 by: str, now: float) -> int:
    """Put a server into a free row (after ``reclaim``); return the row.

    Its health and admin cells start afresh (a reused row must not inherit
    its last occupant's); ``member.serial`` is replaced by the row's next
    one.  Admin lock held.  Raises TableFull.
    """
    if len(label.encode("utf-8")) > 64:
        raise ControlError(f"{label!r}: pool and address are longer than the table's 64 bytes")
    reclaim(table, now)
    for row in range(table.n_rows):
        got = table.read_member(row)
        if got is not None and got[1].state == "free":
            table.write_health(row, health)
            table.write_admin(row, AdminRow("ready", 0, now, by))
            table.write_member(row, label, MemberRow(
                "active", member.origin, member.weight, member.backup, member.max_conns,
                got[1].serial + 1, now))
            return row
    raise TableFull("the health table is full: every row server.runtime_servers keeps for "
                    "servers that come at run time is in use (raise it and reload)")


def _check_spec(cfg: Config, pool: str, spec: Spec) -> Spec | None:
    """The configured entry of ``spec.addr`` in ``pool`` (None: not listed);
    ControlError for an unknown pool or settings out of bounds."""
    try:
        p = cfg.pool(pool)
    except KeyError:
        raise NoSuchServer(f"no pool {pool!r} in the configuration; pools: "
                           + (", ".join(q.name for q in cfg.pools) or "none")) from None
    try:
        split_host_port(spec.addr)
    except ValueError as exc:
        raise ControlError(f"server address {spec.addr!r}: {exc}") from None
    if not 1 <= spec.weight <= WEIGHT_MAX:
        raise ControlError(f"weight {spec.weight}: expected 1..{WEIGHT_MAX}")
    if not 0 <= spec.max_conns <= MAX_CONNS_MAX:
        raise ControlError(f"max_conns {spec.max_conns}: expected 0..{MAX_CONNS_MAX}")
    for s in p.servers:
        if s.addr == spec.addr:
            return Spec(s.addr, s.weight, s.backup, s.max_conns)
    return None


@contextlib.contextmanager
def _membership_change(path: str, runtime_dir: str):
    """(writable table at ``path``, state document of ``runtime_dir``) with the
    admin lock held, as ``set_admin`` takes them (nothing created when the
    table is missing)."""
    if not os.path.exists(path):
        close_table(open_table(path))  # raises the reason (missing, no permission)
    with admin_lock(path):
        state = read_state(runtime_dir)
        table = open_table(path, writable=True)
        try:
            yield table, state
        finally:
            close_table(table)


def add_server(path: str, cfg: Config, pool: str, spec: Spec, *, by: str,
               now: float | None = None) -> dict:
    """Add ``spec`` to ``pool`` of the running forkproxy whose table is at ``path``.

    Takes the admin lock, puts the server in a free row (every worker uses
    it at its next refresh, health checks start for it), and records it in
    the state file of ``cfg.server.runtime_dir``.  Returns ``{server, row,
    changed}``.  Raises NoSuchServer (no such pool), ControlError (already
    in the pool, bad settings), TableFull, and what opening the table raises.
    """
    now = time.time() if now is None else now
    configured = _check_spec(cfg, pool, spec)
    label = f"{pool}/{spec.addr}"
    with _membership_change(path, cfg.server.runtime_dir) as (table, state):
        if active_row(table, pool, spec.addr) is not None:
            raise ControlError(f"{spec.addr} is already a server of pool {pool!r}")
        row = allocate_row(table, label, MemberRow(origin="runtime", weight=spec.weight,
                                                   backup=spec.backup, max_conns=spec.max_conns),
                           first_health(cfg, pool, now), by, now)
        write_state(cfg.server.runtime_dir, record_add(state, pool, spec, configured))
    return {"server": label, "row": row, "changed": True}


def remove_server(path: str, cfg: Config, pool: str, addr: str, *, by: str,
                  now: float | None = None) -> dict:
    """Remove ``addr`` from ``pool``: no new requests go to it, those in flight
    finish, then its row is freed (``reclaim``, by the health checker's
    process or the next ``add_server``).  Recorded in the state file.

    Returns ``{server, row, changed}``.  Raises NoSuchServer, ControlError
    for a server DNS discovery found (it would come back with the next
    answer: drain or maint it instead), and what opening the table raises.
    """
    now = time.time() if now is None else now
    with _membership_change(path, cfg.server.runtime_dir) as (table, state):
        row = _find_row(table, pool, addr)
        label, m = table.read_member(row)
        if m.origin == "dns":
            raise ControlError(f"{label} was found by DNS discovery and follows its "
                               "answers: use drain or maint to keep it out")
        table.write_member(row, label, MemberRow("removing", m.origin, m.weight, m.backup,
                                                 m.max_conns, m.serial, now))
        try:
            configured = _check_spec(cfg, pool, Spec(addr))
        except ControlError:
            configured = None
        write_state(cfg.server.runtime_dir, record_remove(state, pool, addr, configured))
    return {"server": label, "row": row, "changed": True}


def sync_discovered(table: Table, cfg: Config, pool: str, found: list[Spec], now: float
                    ) -> tuple[list[str], list[str]]:
    """Make ``pool``'s servers found by DNS discovery (origin "dns") the
    ``found`` ones: new addresses take free rows, addresses no longer found
    go to "removing" (their requests finish, ``reclaim`` frees the row),
    changed weights or priorities are rewritten in place.  An address the
    pool already has from the file or the runtime API is left to that entry.
    Admin lock held.  Returns (added, removed) labels; raises TableFull
    after adding what fitted.
    """
    want = {s.addr: s for s in found}
    have = {}
    taken = set()
    for row, label, m in members(table):
        p, _, addr = label.partition("/")
        if p != pool or m.state != "active":
            continue
        if m.origin != "dns":
            taken.add(addr)
        else:
            have[addr] = (row, m)
    added, removed = [], []
    for addr, (row, m) in have.items():
        spec = want.get(addr)
        if spec is None or addr in taken:
            table.write_member(row, f"{pool}/{addr}", replace(m, state="removing", changed=now))
            removed.append(f"{pool}/{addr}")
        elif (spec.weight, spec.backup, spec.max_conns) != (m.weight, m.backup, m.max_conns):
            table.write_member(row, f"{pool}/{addr}", replace(
                m, weight=spec.weight, backup=spec.backup, max_conns=spec.max_conns))
    for addr, spec in want.items():
        if addr in have or addr in taken:
            continue
        allocate_row(table, f"{pool}/{addr}", MemberRow(
            origin="dns", weight=spec.weight, backup=spec.backup, max_conns=spec.max_conns),
            first_health(cfg, pool, now), "dns", now)
        added.append(f"{pool}/{addr}")
    return added, removed


# -- the master process --------------------------------------------------------------


def read_pid(pidfile: str) -> int:
    """The pid written in ``pidfile`` (a positive integer; whether it runs is not checked).

    Raises ControlError: ``no pidfile at FILE: is forkproxy running?`` when
    it is missing, ``cannot read the pid from FILE: why`` otherwise.  A pid
    of 0 or below is refused: ``kill`` would signal a whole process group.
    """
    try:
        with open(pidfile, encoding="ascii") as f:
            text = f.read().strip()
    except FileNotFoundError:
        raise ControlError(f"no pidfile at {pidfile}: is forkproxy running?") from None
    except (OSError, ValueError) as exc:
        raise ControlError(f"cannot read the pid from {pidfile}: {exc}") from None
    try:
        pid = int(text)
    except ValueError as exc:
        raise ControlError(f"cannot read the pid from {pidfile}: {exc}") from None
    if pid <= 0:
        raise ControlError(f"cannot read the pid from {pidfile}: {pid} is not a process id")
    return pid


def master_pid(pidfile: str) -> int | None:
    """The pid in ``pidfile`` if that process exists, else None (never raises)."""
    try:
        pid = read_pid(pidfile)
    except ControlError:
        return None
    try:
        os.kill(pid, 0)
    except PermissionError:  # exists, owned by someone else
        return pid
    except OSError:
        return None
    return pid


def signal_master(pid: int, signum: int) -> None:
    """Send ``signum`` to ``pid``.  Raises NotRunning (no such process) or NotAllowed."""
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        raise NotRunning(f"no process {pid}") from None
    except PermissionError:
        raise NotAllowed(f"not allowed to signal process {pid}") from None


# -- reload and wait -----------------------------------------------------------------
#
# After every SIGHUP the master writes reload.json in server.runtime_dir
# (daemon.process.write_status: temp file + rename, so a reader never sees
# half of it): {"reload": N, "generation": G, "state": "loading" | "serving"
# | "rejected", "errors": [...], "pid": PID, "time": T}.  Older masters wrote
# no "reload" and counted in "generation".


def read_reload_status(runtime_dir: str) -> dict | None:
    """The last reload status, or None when there is none (or it is unreadable)."""
    try:
        with open(reload_status_path(runtime_dir), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def reload_number(status: dict) -> int:
    """Which reload of its master a status is about (0 when it does not say)."""
    n = status.get("reload", status.get("generation"))  # "generation": before "reload" existed
    return n if isinstance(n, int) else 0


def wait_reload(runtime_dir: str, pid: int, before: dict | None, timeout: float
                ) -> tuple[bool, list]:
    """After a reload request to master ``pid``: wait until its next generation
    serves or is rejected.  ``before``: the status read before the request.

    Returns (ok, errors).  A master that dies, or a timeout, is a failure
    with the reason as the one error: ``the master (pid N) exited during
    the reload`` or ``no new generation serving after Ns``.
    """
    floor = reload_number(before) if before and before.get("pid") == pid else 0
    deadline = time.monotonic() + timeout
    while True:
        st = read_reload_status(runtime_dir)
        if st and st.get("pid") == pid and reload_number(st) > floor:
            if st.get("state") == "serving":
                return True, []
            if st.get("state") == "rejected":
                return False, st.get("errors") or ["rejected"]
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False, [f"the master (pid {pid}) exited during the reload"]
        except PermissionError:
            pass
        if time.monotonic() > deadline:
            return False, [f"no new generation serving after {timeout:g}s"]
        time.sleep(0.05)


def reload_and_wait(runtime_dir: str | None, pid: int, ask, timeout: float | None
                    ) -> tuple[bool, list]:
    """Ask master ``pid`` for a reload with ``ask()`` (a SIGHUP, a POST /reload);
    with a ``timeout``, wait for its outcome in ``runtime_dir`` (``wait_reload``).

    Returns (ok, errors); (True, []) without a timeout (``runtime_dir`` is
    then not read and may be None).  Whatever ``ask`` raises propagates,
    and then nothing was requested.
    """
    before = read_reload_status(runtime_dir) if timeout is not None else None
    ask()
    if timeout is None:
        return True, []
    return wait_reload(runtime_dir, pid, before, timeout)


# -- purge without the admin endpoint ------------------------------------------------


def connect_address(host: str) -> str:
    """Where to connect to reach a socket bound to ``host`` (loopback for a wildcard)."""
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


def purge_through_listeners(cfg: Config, url: str | None, host: str | None,
                            timeout: float = 10) -> dict:
    """Delete ``url`` (or, with ``url`` None, every URL of ``host``) from the
    cache with a ``PURGE`` request to the http listener serving the URL's
    scheme and port (``cache.purge_allowed`` must let loopback through).

    Returns ``{url | host, purged, shared, via: "listener"}``; ``shared``
    False: an in-process cache, purged in the one worker that answered.
    Raises ControlError (refused, unreachable, every listener redirects),
    ValueError for a ``url`` ``core.http1.targets.split_url`` refuses.
    """
    scheme, port = None, None
    if url is not None:
        scheme, host, target, port = split_url(url)
    else:
        target = "/*"
    code, text = _purge_through_listeners(cfg, scheme, port, host, target, timeout)
    if code == 403:
        raise ControlError(f"{url or host}: forkproxy refused the PURGE (403): without the "
                           "admin endpoint (server.admin and admin_token), "
                           "cache.purge_allowed must include 127.0.0.1")
    if code not in (200, 404):
        raise ControlError(f"{url or host}: forkproxy answered {code} {text}")
    what = {"url": url} if url is not None else {"host": host}
    return {**what, "purged": code == 200, "shared": cfg.cache.servers != (), "via": "listener"}


def _purge_listeners(cfg: Config, scheme: str | None, port: int | None) -> list:
    """The http listeners a PURGE may go to, best first: those serving the
    URL's scheme (TLS for https), the one on its port first, then the others;
    in file order for a host purge (no scheme)."""
    listeners = [lc for lc in cfg.listeners if lc.mode == "http"]
    if scheme is None:
        return listeners
    return sorted(listeners, key=lambda lc: (bool(lc.contexts) != (scheme == "https"),
                                             lc.port != port))


def _purge_through_listeners(cfg: Config, scheme: str | None, port: int | None,
                             host: str, target: str, timeout: float) -> tuple[int, str]:
    """(status, body text) of ``PURGE target`` with Host ``host`` from the
    first listener of ``_purge_listeners`` that does not redirect it (a
    ``redirect_https`` route answers 308 on a plain listener: the next one,
    with TLS, then takes it).  The cache deletes both schemes' entries
    whichever listener takes the request."""
    listeners = _purge_listeners(cfg, scheme, port)
    if not listeners:
        raise ControlError("the configuration has no http listener to send PURGE to")
    for lc in listeners:
        code, text = _purge_request(lc, host, target, timeout)
        if not 300 <= code < 400:
            return code, text
    raise ControlError(f"every http listener redirects PURGE {target} for {host} (last: "
                       f"{code} from {lc.name}); use the admin endpoint (server.admin and a "
                       "token)")


def _purge_request(lc: ListenerConfig, host: str, target: str,
                   timeout: float) -> tuple[int, str]:
    """(status, body text) of ``PURGE target`` with Host ``host`` to listener ``lc``.

    Over TLS for a TLS listener, with the URL's host as SNI and no
    certificate check: the address comes from the daemon's own configuration
    on this host, which is what is trusted here, not a name.
    """
    import http.client
    import socket
    import ssl

    addr = connect_address(lc.host)
    conn = http.client.HTTPConnection(addr, lc.port, timeout=timeout)
    try:
        if lc.contexts:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            name = host.rpartition(":")[0] if host.rpartition(":")[2].isdigit() else host
            sock = socket.create_connection((addr, lc.port), timeout=timeout)
            try:
                conn.sock = ctx.wrap_socket(sock, server_hostname=name.strip("[]") or None)
            except BaseException:
                sock.close()
                raise
        conn.putrequest("PURGE", target, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host)
        conn.putheader("Content-Length", "0")
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace").strip()
    except OSError as exc:
        raise ControlError(f"cannot reach forkproxy on {addr}:{lc.port} ({lc.name}): "
                           f"{exc}") from None
    finally:
        conn.close()
