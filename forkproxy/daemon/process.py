"""The daemon as a Unix process: detaching, systemd notification, reload status.

Stdlib only: ``forkproxy -s`` (the command line, not the master) imports the
reload-status reader from here.

Reload status: after every SIGHUP the master writes ``reload.json`` in
``server.runtime_dir`` (temp file + rename, so a reader never sees half of
it): ``{"generation": N, "state": "loading" | "serving" | "rejected",
"errors": [...], "pid": PID, "time": T}``.  ``generation`` counts the
reloads this master handled; ``forkproxy -s reload --wait`` reads it before
and after signalling.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time

STATUS_NAME = "reload.json"


def daemonize() -> None:
    """Detach: double fork, new session, stdio to /dev/null, umask 022, cwd /."""
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
    os.umask(0o022)
    os.chdir("/")
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    if devnull > 2:
        os.close(devnull)


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


def status_path(runtime_dir: str) -> str:
    return os.path.join(runtime_dir, STATUS_NAME)


def write_status(runtime_dir: str, generation: int, state: str, errors=()) -> None:
    """Atomically replace ``reload.json`` (see the module docstring)."""
    path = status_path(runtime_dir)
    tmp = f"{path}.{os.getpid()}.tmp"
    data = {"generation": generation, "state": state, "errors": list(errors),
            "pid": os.getpid(), "time": time.time()}
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except OSError as exc:
        print(f"forkproxy: cannot write {path}: {exc}", file=sys.stderr)


def read_status(runtime_dir: str) -> dict | None:
    """The last reload status, or None when there is none (or it is unreadable)."""
    try:
        with open(status_path(runtime_dir), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def wait_reload(runtime_dir: str, pid: int, before: dict | None, timeout: float) -> tuple[bool, list]:
    """After a HUP to ``pid``: wait until its next generation serves or is rejected.

    Returns (ok, errors).  A master that dies, or a timeout, is a failure
    with the reason as the one error.
    """
    floor = before["generation"] if before and before.get("pid") == pid else 0
    deadline = time.monotonic() + timeout
    while True:
        st = read_status(runtime_dir)
        if st and st.get("pid") == pid and st.get("generation", 0) > floor:
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
