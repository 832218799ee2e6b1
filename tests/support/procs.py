"""Process plumbing for tests that run real servers on 127.0.0.1.

Contracts:

- ``free_port()`` never hands out the same port twice in one interpreter,
  so two fixtures asking in a row cannot collide even before either binds.
- ``Proc`` starts its child in a new session, so the child's pid is also its
  process-group id: every process the child forks (forkproxy's workers)
  stays findable by group even after the child itself has exited.
- Every ``Proc`` ever started is remembered; ``leaked()`` lists whatever of
  them (or of their process groups, or of pids registered with ``track``) is
  still alive, and ``kill_leaked()`` kills exactly those pids. The test
  session fails on leaks (see ``tests/conftest.py``); an ``atexit`` hook
  kills leftovers even when pytest itself dies.
"""

from __future__ import annotations

import atexit
import os
import random
import signal
import socket
import subprocess
import time
from pathlib import Path

__all__ = [
    "free_port",
    "wait_for_port",
    "port_open",
    "Proc",
    "ProcError",
    "children_of",
    "descendants_of",
    "group_members",
    "pid_alive",
    "track",
    "leaked",
    "kill_leaked",
]

_SIGTERM = signal.SIGTERM
POLL = 0.02  # readiness polling interval: a wait *for a condition*, never a sync sleep

_handed_out: set[int] = set()


class ProcError(RuntimeError):
    """A harness process failed to start, become ready, or stop."""


def _port_span() -> range:
    """The ports this test process hands out: below the kernel's ephemeral
    range, so that no outgoing connection (a client of another test, another
    xdist worker's) can take one as its local port between ``free_port()``
    and the daemon's bind; one slice of that span per xdist worker."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            ephemeral_low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    low, high = 10000, max(10000 + 1024, ephemeral_low)
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:]
    index = int(worker) % count if worker.isdigit() else 0
    size = (high - low) // count
    return range(low + index * size, low + (index + 1) * size)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    Taken from ``_port_span()`` (never an ephemeral port: the kernel gives
    those to outgoing connections too, and one that took the port before
    the daemon bound it failed its start with "Connection in use"); ports
    already returned by this function in this interpreter are skipped.
    """
    span = _port_span()
    for _ in range(200):
        port = random.choice(span)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise ProcError(f"free_port: no free port found in {span.start}-{span.stop - 1}")


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """True when a TCP connect to host:port succeeds right now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(predicate, timeout: float = 15, what: str = "the condition") -> None:
    """Poll ``predicate()`` until it is true: a readiness check, never a blind sleep."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise ProcError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(POLL)


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 15, proc: "Proc | None" = None) -> None:
    """Poll until host:port accepts a TCP connection.

    Raises ``ProcError`` after ``timeout`` seconds, or at once when ``proc``
    is given and has exited (with the tail of its log in the message).
    """
    deadline = time.monotonic() + timeout
    while True:
        if port_open(port, host):
            return
        if proc is not None and proc.returncode is not None:
            raise ProcError(
                f"{proc.name} (pid {proc.pid}) exited with {proc.returncode} "
                f"before {host}:{port} accepted; log tail:\n{proc.log_tail()}"
            )
        if time.monotonic() > deadline:
            tail = f"; log tail:\n{proc.log_tail()}" if proc is not None else ""
            raise ProcError(f"nothing accepted on {host}:{port} within {timeout}s{tail}")
        time.sleep(POLL)


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgid) from /proc/PID/stat, or None when gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # comm may contain spaces and parentheses: split after the last ')'.
    fields = data[data.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[2])


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def pid_alive(pid: int) -> bool:
    """True when pid exists and is not a zombie."""
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def children_of(pid: int) -> list[int]:
    """Live (non-zombie) direct children of pid, sorted, read from /proc."""
    out = []
    for p in _all_pids():
        st = _stat(p)
        if st is not None and st[1] == pid and st[0] not in ("Z", "X"):
            out.append(p)
    return sorted(out)


def descendants_of(pid: int) -> list[int]:
    """Live descendants of pid (children, grandchildren, ...), sorted."""
    parent_of = {}
    for p in _all_pids():
        st = _stat(p)
        if st is not None and st[0] not in ("Z", "X"):
            parent_of[p] = st[1]
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {p for p, pp in parent_of.items() if pp in frontier and p not in found}
        found |= frontier
    return sorted(found)


def open_files(*pids: int) -> set[str]:
    """The paths the open fds of ``pids`` point at (a moved file shows its new name)."""
    paths = set()
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue  # a process that is gone holds nothing
        for fd in fds:
            try:
                paths.add(os.readlink(fd))
            except OSError:
                pass  # the fd closed while we looked
    return paths


def group_members(pgid: int) -> list[int]:
    """Live processes whose process group is pgid."""
    out = []
    for p in _all_pids():
        st = _stat(p)
        if st is not None and st[2] == pgid and st[0] not in ("Z", "X"):
            out.append(p)
    return sorted(out)


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


_started: list["Proc"] = []
_tracked: set[int] = set()


def track(pid: int) -> None:
    """Register a pid the harness is responsible for (e.g. a daemonized master)."""
    _tracked.add(pid)


def leaked() -> list[int]:
    """Pids of harness processes still alive: Procs, their groups, tracked pids."""
    pids: set[int] = set()
    for proc in _started:
        if proc.returncode is None:
            proc.poll()
        if proc.returncode is None:
            pids.add(proc.pid)
        pids.update(group_members(proc.pid))
    pids.update(p for p in _tracked if pid_alive(p))
    pids.discard(os.getpid())
    return sorted(pids)


def kill_leaked() -> list[int]:
    """SIGKILL every pid in ``leaked()``, reap our own children; return the pids."""
    pids = leaked()
    for p in pids:
        _kill(p, signal.SIGCONT)  # a frozen (SIGSTOPped) process must not linger
        _kill(p, signal.SIGKILL)
    for proc in _started:
        try:
            proc.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    return pids


atexit.register(kill_leaked)


class Proc:
    """A child process with its output in ``log_dir/NAME.log``.

    ``argv`` is run in a new session (pid == pgid). ``stop()`` sends TERM,
    waits up to ``timeout``, then KILLs; afterwards it KILLs, by pid, every
    process left in the child's process group or descended from it.
    """

    def __init__(self, argv, log_dir, name: str | None = None, env=None, cwd=None):
        self.argv = [str(a) for a in argv]
        self.name = name or Path(self.argv[0]).name
        log_dir = Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{self.name}.log"
        # Append, so a restarted process keeps the earlier run's output.
        with open(self.log_path, "ab") as log:
            log.write(f"--- start: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        self.pid = self.popen.pid
        _started.append(self)

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def poll(self) -> int | None:
        return self.popen.poll()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        """Send sig to the child (not its group)."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for exit and return the exit status; ``subprocess.TimeoutExpired`` on timeout."""
        return self.popen.wait(timeout=timeout)

    def stop(self, timeout: float = 10, sig: int = _SIGTERM) -> int:
        """Stop the child and everything it left behind; return its exit status."""
        family = set(descendants_of(self.pid)) if self.alive() else set()
        if self.alive():
            _kill(self.pid, signal.SIGCONT)  # a stopped process cannot act on TERM
            self.signal(sig)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        for p in sorted(family | set(group_members(self.pid))):
            if p != os.getpid():
                _kill(p, signal.SIGCONT)
                _kill(p, signal.SIGKILL)
        return self.popen.returncode

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def __repr__(self) -> str:
        return f"<Proc {self.name} pid={self.pid} rc={self.returncode}>"
