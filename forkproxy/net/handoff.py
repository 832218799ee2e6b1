"""Keep-alive client connections handed from a draining worker to the newest generation.

A reload used to cost every keep-alive client a new connection: each old
worker closed its idle connections at the end of its drain window.  Now a
draining worker gives each plain-HTTP connection that waits between two
requests (nothing of a next request read yet) to a worker of the newest
generation, which serves it on: the client sees nothing.  A request already
on its way stays in the kernel's buffer of the socket and goes with it.

Every worker listens on a Unix ``SOCK_SEQPACKET`` socket
``runtime_dir/handoff/g<generation>-<pid>.sock`` (mode 0600, the
directory 0700, made by the master for ``server.user``).  One handoff is
one message: a JSON object ``{"listener": name, "peer": [ip, port],
"served": n}`` with the connection's descriptor (``SCM_RIGHTS``), answered
with one byte once the receiver took it.  Without the answer (no newer
generation, its worker gone, a timeout) the connection stays with the old
worker, which drains it as before (``Runtime.drain``).

Not handed: TLS connections (the TLS state lives in this process's
OpenSSL; they stay until idle, then close, as before), WebSocket and L4
tunnels (they stay with the old worker until they end), connections with
bytes of a next request already read (never: they are served first).
"""

from __future__ import annotations

import array
import json
import os
import socket

import gevent
from gevent import socket as gsocket
from gevent.pool import Group

from forkproxy.control import handoff_dir

__all__ = ["Handoff"]

#: How long a draining worker waits for the receiver's answer, per connection.
ANSWER_TIMEOUT = 1.0
MAX_MESSAGE = 1024


def _pid_of(name: str) -> int:
    try:
        return int(name.rsplit("-", 1)[1].split(".", 1)[0])
    except (IndexError, ValueError):
        return 0


def _generation_of(name: str) -> int:
    try:
        return int(name.split("-", 1)[0][1:])
    except (IndexError, ValueError):
        return 0


class Handoff:
    """One worker's end: ``open()`` receives connections (``serve(listener,
    sock, peer, served)`` is called in a new greenlet for each, when
    ``takes(listener)``; else the sender keeps it), ``give()`` sends one to
    the newest generation once this worker drains.

    ``log``: the worker's error log; failures are logged at info and cost
    nothing but the handoff.
    """

    def __init__(self, runtime_dir: str, generation: int, serve, log, takes=lambda name: True):
        self.dir = handoff_dir(runtime_dir)
        self.generation = generation
        self.serve = serve
        self.takes = takes
        self.log = log
        self.name = f"g{generation}-{os.getpid()}.sock"
        self._dirfd = None  # the directory, opened: see _path
        self._server = None
        self._targets: list[str] | None = None  # the newer generations' sockets, once looked up
        # The connections received, being served: the worker's drain waits
        # for them as for those it accepted (daemon.worker).
        self.serving = Group()
        self._next = 0

    # -- receiving -----------------------------------------------------------

    def open(self) -> bool:
        """Listen as ``self.name`` in the directory (False, logged, when that cannot be done:
        connections are then simply not handed to this worker)."""
        try:
            self._dirfd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
            self._sweep()
            try:
                os.unlink(self.name, dir_fd=self._dirfd)
            except FileNotFoundError:
                pass
            srv = gsocket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            old = os.umask(0o177)
            try:
                srv.bind(self._path(self.name))
            finally:
                os.umask(old)
            srv.listen(64)
        except OSError as exc:
            self.log.warning("connection handoff: cannot listen in %s: %s; keep-alive "
                             "connections will close at reloads", self.dir, exc)
            return False
        self._server = srv
        gevent.spawn(self._accept, srv)
        return True

    def close(self) -> None:
        """Stop receiving (this worker drains, or ends)."""
        srv, self._server = self._server, None
        if srv is None:
            return
        try:
            os.unlink(self.name, dir_fd=self._dirfd)
        except OSError:
            pass
        srv.close()

    def _path(self, name: str) -> str:
        # Through the directory's descriptor: a Unix socket's path has at
        # most 107 bytes, and runtime_dir may be deep (a test's tmp dir).
        return f"/proc/self/fd/{self._dirfd}/{name}"

    def _names(self) -> list[str]:
        try:
            return [n for n in os.listdir(self._dirfd) if n.startswith("g") and n.endswith(".sock")]
        except OSError:
            return []

    def _sweep(self) -> None:
        """Remove the sockets of workers that died without removing theirs."""
        for name in self._names():
            pid = _pid_of(name)
            if pid and pid != os.getpid() and not _alive(pid):
                try:
                    os.unlink(name, dir_fd=self._dirfd)
                except OSError:
                    pass

    def _accept(self, srv) -> None:
        while self._server is srv:
            try:
                conn, _ = srv.accept()
            except OSError:
                return  # closed
            gevent.spawn(self._receive, conn)

    def _receive(self, conn) -> None:
        """Every connection one old worker sends, until it hangs up."""
        fds = array.array("i")
        try:
            while True:
                msg, anc, _flags, _ = conn.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(fds.itemsize))
                if not msg:
                    return
                sock = None
                for level, kind, data in anc:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        got = array.array("i")
                        got.frombytes(data[:len(data) - len(data) % got.itemsize])
                        for fd in got:
                            if sock is None:
                                sock = gsocket.socket(fileno=fd)
                            else:
                                os.close(fd)  # one descriptor a message, never more
                if sock is None:
                    continue
                try:
                    meta = json.loads(msg)
                    listener, peer, served = meta["listener"], tuple(meta["peer"]), meta["served"]
                    if sock.type != socket.SOCK_STREAM:
                        raise ValueError("not a stream socket")
                    if not self.takes(listener):
                        raise ValueError(f"no plain HTTP listener {listener!r} here")
                except (ValueError, KeyError, TypeError) as exc:
                    # "n": the sender keeps the connection (and drains it as before).
                    self.log.info("connection handoff: refused: %s", exc)
                    sock.close()
                    conn.sendall(b"n")
                    continue
                conn.sendall(b"k")
                self.serving.spawn(self.serve, listener, sock, peer, served)
        except OSError:
            return
        finally:
            conn.close()

    # -- giving --------------------------------------------------------------

    def targets(self) -> list[str]:
        """The sockets of the generations after this one, newest first (looked up once)."""
        if self._targets is None:
            found = [n for n in self._names() if _generation_of(n) > self.generation]
            self._targets = sorted(found, key=lambda n: (-_generation_of(n), n))
        return self._targets

    def _order(self) -> list[str]:
        """Whom to ask, in turn: the newest generation's workers first, a
        different one first each time (they share the connections)."""
        targets = self.targets()
        if not targets:
            return []
        top = _generation_of(targets[0])
        newest = [n for n in targets if _generation_of(n) == top]
        k = self._next % len(newest)
        self._next += 1
        return newest[k:] + newest[:k] + targets[len(newest):]

    def give(self, sock, listener: str, peer, served: int) -> bool:
        """Send ``sock`` to a worker of the newest generation; True once it took it
        (the caller then closes its own descriptor, without shutdown)."""
        meta = json.dumps({"listener": listener, "peer": list(peer), "served": served}).encode()
        fds = array.array("i", [sock.fileno()])
        for name in self._order():
            try:
                with gevent.Timeout(ANSWER_TIMEOUT, socket.timeout):
                    with gsocket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as c:
                        c.connect(self._path(name))
                        c.sendmsg([meta], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
                        answer = c.recv(1)
                        if answer == b"k":
                            return True
                        if answer == b"n":  # its configuration has no such listener:
                            return False    # nor has the rest of its generation
            except OSError as exc:  # socket.timeout included
                self.log.info("connection handoff to %s failed: %s", name, exc)
                self._targets.remove(name)  # gone or stuck: not asked again
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
