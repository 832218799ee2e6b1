"""The daemon as a Unix process: detaching, systemd notification, reload status.

Stdlib + ``forkproxy.control`` (which owns the file's name and its readers,
``read_reload_status`` and ``wait_reload``, for ``forkproxy -s reload --wait``,
``forkproxyctl reload`` and the tests).

Reload status: after every SIGHUP the master writes ``reload.json`` in
``server.runtime_dir`` (temp file + rename, so a reader never sees half of
it): ``{"reload": N, "generation": G, "state": "loading" | "serving" |
"rejected", "errors": [...], "pid": PID, "time": T}``.  ``reload`` counts
the reloads (HUPs) this master handled; ``generation`` is the master's
generation number (the one the health table, the error log and systemd's
STATUS show: the new one while loading or serving, the one still serving
when rejected).  ``forkproxy -s reload --wait`` reads it before and after
signalling.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time

from forkproxy.control import reload_status_path


# -D: the write end of the pipe the command's first process waits on.
_PARENT_FD: int | None = None


def daemonize() -> None:
    """Detach: double fork, new session, stdin/stdout to /dev/null, umask 022, cwd /.

    The command's own process does not exit at once: it waits until the
    master reports (``tell_parent``) that its first generation serves (exit
    0) or that it stops before (its exit status), and exits the same way,
    as nginx does; a master that dies without a word makes it exit 1.
    stderr stays the terminal's until then, so start-up errors are seen;
    ``tell_parent`` points it at /dev/null.
    """
    global _PARENT_FD
    r, w = os.pipe()
    if os.fork():
        os.close(w)
        sys.exit(_wait_for_master(r))
    os.close(r)
    os.setsid()
    if os.fork():
        os._exit(0)
    os.umask(0o022)
    os.chdir("/")
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        os.dup2(devnull, fd)
    if devnull > 2:
        os.close(devnull)
    _PARENT_FD = w


def _wait_for_master(fd: int) -> int:
    data = b""
    while True:
        try:
            chunk = os.read(fd, 1)
        except InterruptedError:  # pragma: no cover - PEP 475 retries
            continue
        if not chunk:
            break
        data += chunk
    if data == b"\0":
        return 0
    why = f"with status {data[0]} " if data else ""
    print(f"forkproxy: the master exited {why}before serving (see the error log)",
          file=sys.stderr)
    return data[0] if data else 1


def tell_parent(status: int) -> None:
    """Master, after ``daemonize``: report ``status`` (0: serving) to the waiting command, once."""
    global _PARENT_FD
    if _PARENT_FD is None:
        return
    fd, _PARENT_FD = _PARENT_FD, None
    try:
        os.write(fd, bytes([status & 0xFF]))
    except OSError:
        pass
    os.close(fd)
    if status == 0:  # detached for good: the terminal may go away
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 2)
        os.close(devnull)


def close_parent_pipe() -> None:
    """Worker, after fork: drop the master's copy of the pipe (its end of file is the master's)."""
    global _PARENT_FD
    if _PARENT_FD is not None:
        try:
            os.close(_PARENT_FD)
        except OSError:
            pass
        _PARENT_FD = None


def sd_notify(state: str) -> bool:
    """Send ``state`` ("READY=1", "STATUS=...") to systemd; no-op without NOTIFY_SOCKET.

    Returns whether a datagram was sent.  Never raises: a notification is
    advice to the service manager, not something worth dying for.
    """
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr[0] == "@":
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(state.encode())
        return True
    except OSError:
        return False


def monotonic_usec() -> str:
    """The MONOTONIC_USEC= field systemd wants with RELOADING=1."""
    return f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"


def write_status(runtime_dir: str, reload_no: int, state: str, errors=(),
                 generation: int | None = None) -> None:
    """Atomically replace ``reload.json`` (see the module docstring)."""
    path = reload_status_path(runtime_dir)
    tmp = f"{path}.{os.getpid()}.tmp"
    data = {"reload": reload_no, "generation": generation, "state": state,
            "errors": list(errors), "pid": os.getpid(), "time": time.time()}
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except OSError as exc:
        print(f"forkproxy: cannot write {path}: {exc}", file=sys.stderr)
