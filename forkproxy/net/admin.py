"""The admin endpoint: status, metrics and commands on ``server.admin``'s own socket.

The master binds ``server.admin`` as one more listening socket; every worker
accepts on it and ``Runtime.handle`` hands those connections here, never to a
listener's rules. One request per connection (answered with
``Connection: close``), parsed by ``core.http1``::

    GET  /status                                  JSON (core.status.snapshot + more)
    GET  /metrics                                 Prometheus text, summed over workers
    POST /servers/POOL/SERVER/drain|maint|ready   admin state, in the shared table
    POST /servers/POOL/SERVER/weight/N            N 1..1000, or "config" to restore
    POST /reload                                  SIGHUP to the master (a safe reload)

Authorisation: ``Authorization: Bearer TOKEN`` with ``server.admin_token``,
compared with ``hmac.compare_digest``; required for every POST, and for every
request when the admin address is not loopback. No token configured: those
requests are refused (403). Missing token: 401; wrong token: 403. Every
change is logged at warning level with the peer address and what changed.

State changes go through the shared table (the admin lock, then the current
generation, as forkproxyctl does), so every worker applies them at its next
snapshot. Metrics are ``core.metrics`` cells summed over every worker slot.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import signal
import socket
import time
from urllib.parse import unquote

from forkproxy.core import http1
from forkproxy.core.metrics import render
from forkproxy.core.status import snapshot
from forkproxy.net.leader import holder_pid

__all__ = ["Admin", "WEIGHT_MAX"]

WEIGHT_MAX = 1000
_MAX_HEAD = 16384
_STATES = ("drain", "maint", "ready")


class _Reply(Exception):
    def __init__(self, status: int, body: str, headers=()):
        super().__init__(status)
        self.status, self.body, self.headers = status, body, list(headers)


class Admin:
    """One worker's admin endpoint (built by ``daemon.hooks`` when server.admin is set).

    ``set_admin(table_path, label, state, weight, by, now)`` writes a row's
    admin cell under the admin lock and returns (old, new) or None (no row).
    """

    def __init__(self, rt, table, table_path: str, lock_path: str, set_admin):
        self.rt = rt
        self.table = table
        self.table_path = table_path
        self.lock_path = lock_path
        self.set_admin = set_admin
        host, _, port = rt.cfg.server.admin.rpartition(":")
        self.host, self.port = host.strip("[]") or "0.0.0.0", int(port)
        self.token = rt.cfg.server.admin_token
        try:
            self.loopback = ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            self.loopback = self.host == "localhost"
        self._fds: dict[int, bool] = {}

    def owns(self, sock) -> bool:
        """True when the listening socket ``sock`` is the admin one (by bound address)."""
        fd = sock.fileno()
        mine = self._fds.get(fd)
        if mine is None:
            try:
                host, port = sock.getsockname()[:2]
            except (OSError, ValueError):
                return False
            mine = self._fds[fd] = port == self.port and (
                self.host in ("0.0.0.0", "::", host) or (self.host == "localhost"
                                                          and host == "127.0.0.1"))
        return mine

    # -- the connection --------------------------------------------------------------

    def handle(self, client, addr) -> None:
        """Serve one request on ``client`` and close it; never raises."""
        peer = addr[0] if isinstance(addr, tuple) else "unix"
        try:
            client.settimeout(self.rt.cfg.server.header_timeout)
            try:
                req = self._read(client)
                status, body, ctype, extra = 200, *self.dispatch(req, peer), []
            except _Reply as r:
                status, body, ctype, extra = r.status, r.body, "text/plain; charset=utf-8", r.headers
            data = body.encode()
            head = [f"HTTP/1.1 {status} {_PHRASES.get(status, 'Error')}",
                    f"Content-Type: {ctype}", f"Content-Length: {len(data)}",
                    "Cache-Control: no-store", "Connection: close", *extra]
            client.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + data)
        except (OSError, socket.timeout):
            pass
        except Exception:  # a bug must cost one admin request, never the worker
            self.rt.log.exception("admin: internal error on a request from %s", peer)
        finally:
            try:
                client.close()
            except OSError:
                pass

    def _read(self, client):
        buf = b""
        while b"\r\n\r\n" not in buf:
            if len(buf) > _MAX_HEAD:
                raise _Reply(431, "request head too large\n")
            data = client.recv(4096)
            if not data:
                raise OSError("client went away")
            buf += data
        head = buf[: buf.index(b"\r\n\r\n") + 4]
        try:
            return http1.parse_request_head(head, self.rt.limits)
        except http1.ProtocolError as exc:
            raise _Reply(exc.status, f"{exc.reason}\n") from None

    # -- requests --------------------------------------------------------------------

    def authorize(self, req, write: bool) -> None:
        """Raise a 401/403 ``_Reply`` unless ``req`` may do this (see the module doc)."""
        if not write and self.loopback:
            return
        if not self.token:
            raise _Reply(403, "forbidden: server.admin_token is not set\n")
        given = req.get("authorization") or ""
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise _Reply(401, "a token is required: Authorization: Bearer TOKEN\n",
                         ['WWW-Authenticate: Bearer realm="forkproxy"'])
        if not hmac.compare_digest(value.strip().encode(), self.token.encode()):
            raise _Reply(403, "forbidden: wrong token\n")

    def dispatch(self, req, peer: str) -> tuple[str, str]:
        """(body, content type) for ``req``; raises ``_Reply`` for anything else."""
        path = req.target.split("?", 1)[0]
        parts = [unquote(p) for p in path.strip("/").split("/")] if path.strip("/") else []
        if req.method in ("GET", "HEAD"):
            self.authorize(req, write=False)
            if parts == ["status"]:
                return json.dumps(self.status(), indent=2) + "\n", "application/json"
            if parts == ["metrics"]:
                return self.metrics_text(), "text/plain; version=0.0.4; charset=utf-8"
            raise _Reply(404, "not found: GET /status or /metrics\n")
        if req.method != "POST":
            raise _Reply(405, "method not allowed\n", ["Allow: GET, HEAD, POST"])
        self.authorize(req, write=True)
        if parts == ["reload"]:
            self.rt.log.warning("admin: reload requested by %s", peer)
            os.kill(os.getppid(), signal.SIGHUP)  # the master: the same safe reload as HUP
            return json.dumps({"reload": "requested"}) + "\n", "application/json"
        if len(parts) == 4 and parts[0] == "servers" and parts[3] in _STATES:
            return self.change(parts[1], parts[2], peer, state=parts[3]), "application/json"
        if len(parts) == 5 and parts[0] == "servers" and parts[3] == "weight":
            return self.change(parts[1], parts[2], peer, weight=_weight(parts[4])), "application/json"
        raise _Reply(404, "not found: POST /reload or /servers/POOL/SERVER/"
                          "(drain|maint|ready|weight/N)\n")

    def change(self, pool: str, server: str, peer: str, *, state=None, weight=None) -> str:
        label = f"{pool}/{server}"
        result = self.set_admin(self.table_path, label, state, weight, f"admin {peer}"[:32],
                                time.time())
        if result is None:
            raise _Reply(404, f"no server {server!r} in pool {pool!r}\n")
        old, new = result
        if state is not None:
            field, before, after = "admin", old.state, new.state
        else:
            field, before, after = "weight", old.weight or None, new.weight or None
        if before != after:
            self.rt.log.warning("admin: %s %s: %s -> %s (asked by %s)", label, field,
                                before, after, peer)
        return json.dumps({"server": label, "field": field, "before": before,
                           "after": after, "changed": before != after}) + "\n"

    def status(self) -> dict:
        cfg = self.rt.cfg
        try:
            checker = holder_pid(self.lock_path)
        except OSError:
            checker = None
        doc = snapshot(self.table, cfg, time.time(), checker)
        doc["master_pid"] = os.getppid()
        doc["worker_pid"] = os.getpid()  # the worker that answered
        doc["listeners"] = [{"name": lc.name, "bind": lc.bind, "mode": lc.mode,
                             "tls": bool(lc.contexts)} for lc in cfg.listeners]
        doc["workers"] = cfg.server.workers
        return doc

    def metrics_text(self) -> str:
        counter = self.rt.metrics
        totals = counter.metrics.totals() if counter is not None else {}
        extra = []
        for pool in self.status()["pools"]:
            for s in pool["servers"]:
                labels = (("pool", pool["name"]), ("server", s["addr"]))
                extra.append(("server_up", labels, 1 if s["health"] == "up" else 0, "gauge",
                              "1 when the server's health is up (active and passive checks)."))
                extra.append(("server_inflight", labels, s["inflight"], "gauge",
                              "Requests in flight to the server, over every worker."))
        return render(totals, extra)


def _weight(text: str) -> int:
    if text in ("config", "-1"):
        return 0
    try:
        n = int(text)
    except ValueError:
        n = -1
    if not 1 <= n <= WEIGHT_MAX:
        raise _Reply(400, f"weight: expected 1..{WEIGHT_MAX} or 'config', got {text!r}\n")
    return n


_PHRASES = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
            404: "Not Found", 405: "Method Not Allowed", 431: "Request Header Fields Too Large"}
