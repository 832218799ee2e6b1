"""The operator's actions on a running forkproxy, one implementation each.

The admin endpoint (``net.admin``), ``forkproxy -s`` (``cli``) and
``forkproxyctl`` (``ctl``) all call these; DESIGN section 0, "one owner per
operator action".  What lives here:

- the files in ``server.runtime_dir`` and their names (``TABLE_NAME``,
  ``CHECKER_LOCK_NAME``, ``RELOAD_STATUS_NAME``);
- the shared table's reader/writer side: ``open_table``, ``close_table``,
  ``admin_lock`` (the master's ``create`` stays in ``daemon.shm``);
- ``set_admin``: a server's admin state (drain, maint, ready) and weight;
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

from forkproxy.config import Config, ListenerConfig
from forkproxy.core.http1.targets import split_url
from forkproxy.core.table import ADMIN_STATES, AdminRow, Table

__all__ = [
    "DEFAULT_CONFIG", "TABLE_NAME", "CHECKER_LOCK_NAME", "RELOAD_STATUS_NAME", "ADMIN_STATES",
    "WEIGHT_MAX", "ControlError", "NoSuchServer", "NotRunning", "NotAllowed",
    "config_path", "table_path", "checker_lock_path", "reload_status_path",
    "open_table", "close_table", "admin_lock", "admin_lock_path", "set_admin", "parse_weight",
    "read_pid", "master_pid", "signal_master", "read_reload_status", "wait_reload",
    "reload_and_wait", "connect_address", "purge_through_listeners",
]

DEFAULT_CONFIG = "/etc/forkproxy/forkproxy.toml"
TABLE_NAME = "health.tbl"
CHECKER_LOCK_NAME = "checker.lock"
RELOAD_STATUS_NAME = "reload.json"
#: Same bounds as the ``weight`` key of a pool's servers (1..1000).
WEIGHT_MAX = 1000


class ControlError(Exception):
    """An action that cannot be done, with the operator's explanation in ``message``."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class NoSuchServer(ControlError):
    """``set_admin``: no row for that pool and server (the message names what exists)."""


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
    row = table.find(f"{pool}/{server}")
    if row is not None:
        return row
    known: dict[str, list[str]] = {}
    for r in range(table.n_rows):
        p, _, addr = table.label(r).partition("/")
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
