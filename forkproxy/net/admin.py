"""The admin endpoint: status, metrics and commands on ``server.admin``'s own socket.

The master binds ``server.admin`` as one more listening socket; every worker
accepts on it and ``Runtime.handle`` hands those connections here, never to a
listener's rules. One request per connection (answered with
``Connection: close``), parsed by ``core.http1``::

    GET  / (or /index.html)                       the live status page (status_page.html)
    GET  /status                                  JSON (core.status.snapshot + more)
    GET  /metrics                                 Prometheus text, summed over workers
    POST /servers/POOL/SERVER/drain|maint|ready   admin state, in the shared table
    POST /servers/POOL/SERVER/weight/N            N 1..1000, or "config" to restore
    POST /servers/POOL/ADDR/add[?weight=N&backup=true&max_conns=N]
                                                  a server added at run time
    POST /servers/POOL/ADDR/remove                a server removed at run time
    POST /reload                                  a reload, as SIGHUP to the master does
    POST /purge?url=URL | /purge?host=HOST        delete a URL, or every URL of a host,
                                                  from the cache (through this worker's store)
    GET  /explain?method=M&url=URL&header=N:%20V  what a request would get (net.explain)
         [&listener=NAME][&client=IP]             without sending it; read-only

``/status`` also has ``cache`` (null when no route caches): the answering
worker's store, each memcached server probed (``version``, PROBE_TIMEOUT),
its breaker state, and per cached route the ``cache_requests_total`` counts
with their hit ratio, (HIT + STALE + REVALIDATED) / (those + MISS).

Host check (against DNS rebinding: a page whose own name now resolves to the
admin address would otherwise read it from a victim's browser): the Host's
name must be an IP address, ``localhost``, the name in ``server.admin`` or one
of ``server.admin_names`` (the port is not compared: an SSH tunnel changes it,
and rebinding needs a name); anything else is 421, before authorisation. A
request without Host (HTTP/1.0; no browser sends one) passes.

Authorisation: ``Authorization: Bearer TOKEN`` with ``server.admin_token``,
compared with ``hmac.compare_digest``; required for every POST, and for every
request when the admin address is not loopback. No token configured: those
requests are refused (403). Missing token: 401; wrong token: 403. Every
change is logged at warning level with the peer address and what changed.

State changes go through the shared table (the admin lock, then the current
generation, as forkproxyctl does), so every worker applies them at its next
snapshot. Metrics are ``core.metrics`` cells summed over every worker slot.

A command that fails for a reason of the system (``OSError``: a table file
the workers' user may not write...) is answered 500 with the reason, and
logged at error level; a bug is answered 500 too, logged with its trace.
"""

from __future__ import annotations

import functools
import hmac
import importlib.resources
import ipaddress
import json
import os
import socket
import time
from urllib.parse import parse_qs, unquote

import gevent

from forkproxy import __version__, control
from forkproxy.config import split_host_port
from forkproxy.core import http1
from forkproxy.core.metrics import relabel_rows, render
from forkproxy.core.status import snapshot, traffic
from forkproxy.net.edge import rate_limit_states
from forkproxy.net.explain import BadQuestion, explain, request_for
from forkproxy.net.leader import holder_pid
from forkproxy.net.request_path import request_target

__all__ = ["Admin"]

_MAX_HEAD = 16384


class _Reply(Exception):
    def __init__(self, status: int, body: str, headers=()):
        super().__init__(status)
        self.status, self.body, self.headers = status, body, list(headers)


class Admin:
    """One worker's admin endpoint (built by ``daemon.hooks`` when server.admin is set).

    Changes to a server go through ``control.set_admin``, as forkproxyctl's do.
    """

    def __init__(self, rt, table, table_path: str, lock_path: str, reload_fd: int, leader=None):
        """``reload_fd``: the pipe the master reads reload requests from
        (a worker running as server.user may not signal it); ``leader``: this
        worker's checker's ``net.leader.Leader`` (None: no active checks)."""
        self.rt = rt
        self.table = table
        self.table_path = table_path
        self.lock_path = lock_path
        self.reload_fd = reload_fd
        host, _, port = rt.cfg.server.admin.rpartition(":")
        self.host, self.port = host.strip("[]") or "0.0.0.0", int(port)
        self.token = rt.cfg.server.admin_token
        try:
            self.loopback = ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            self.loopback = self.host == "localhost"
        self.names = frozenset({"localhost", *rt.cfg.server.admin_names}
                               | (set() if _is_ip(self.host) else {self.host.lower().rstrip(".")}))
        self.leader = leader

    def listens_on(self, host: str, port: int) -> bool:
        """True when a listening socket bound to (``host``, ``port``) is the admin one."""
        return port == self.port and (self.host in ("0.0.0.0", "::", host)
                                      or (self.host == "localhost" and host == "127.0.0.1"))

    # -- the connection --------------------------------------------------------------

    def handle(self, client, addr) -> None:
        """Serve one request on ``client`` and close it; never raises."""
        peer = addr[0] if isinstance(addr, tuple) else "unix"
        try:
            client.settimeout(self.rt.cfg.server.header_timeout)
            try:
                req = self._read(client)
                self.check_host(req, peer)
                try:
                    status, body, ctype, extra = 200, *self.dispatch(req, peer), []
                except _Reply:
                    raise
                except OSError as exc:  # the system's refusal: say it, never swallow it
                    self.rt.log.error("admin: %s %s from %s failed: %s", req.method,
                                      req.target, peer, exc)
                    raise _Reply(500, f"{req.method} {req.target.split('?', 1)[0]} failed: "
                                      f"{exc}\n") from None
                except Exception:  # a bug must cost one admin request, never the worker
                    self.rt.log.exception("admin: internal error on a request from %s", peer)
                    raise _Reply(500, "internal error (see the error log)\n") from None
            except _Reply as r:
                status, body, ctype, extra = r.status, r.body, "text/plain; charset=utf-8", r.headers
            data = body.encode()
            head = [f"HTTP/1.1 {status} {http1.reason_phrase(status)}",
                    f"Content-Type: {ctype}", f"Content-Length: {len(data)}",
                    "Cache-Control: no-store", "Connection: close", *extra]
            client.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + data)
        except (OSError, socket.timeout):
            pass  # the client went away or was too slow: nothing to answer
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

    def check_host(self, req, peer: str) -> None:
        """Raise a 421 ``_Reply`` unless the Host names this endpoint (module doc)."""
        host = req.host
        if host is None or _is_ip(host) or host.rstrip(".") in self.names:
            return
        self.rt.log.warning("admin: refused Host %r from %s (not in server.admin_names)",
                            req.host_value, peer)
        raise _Reply(421, f"misdirected request: Host {req.host_value!r} is not a name of this "
                          f"admin endpoint; add it to server.admin_names\n")

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
            if parts in ([], ["index.html"]):
                return _page(), "text/html; charset=utf-8"
            if parts == ["status"]:
                totals = self.totals()
                doc = self.status()
                doc["traffic"] = traffic(totals)
                doc["cache"] = self.cache_state(totals)
                return json.dumps(doc, indent=2) + "\n", "application/json"
            if parts == ["explain"]:
                return json.dumps(self.explain(req, peer), indent=2) + "\n", "application/json"
            if parts == ["metrics"]:
                return self.metrics_text(), "text/plain; version=0.0.4; charset=utf-8"
            raise _Reply(404, "not found: GET /, /status, /metrics or /explain\n")
        if req.method != "POST":
            raise _Reply(405, "method not allowed\n", ["Allow: GET, HEAD, POST"])
        self.authorize(req, write=True)
        if parts == ["reload"]:
            self.rt.log.warning("admin: reload requested by %s", peer)
            try:
                os.write(self.reload_fd, b"R")  # read by the master's loop as a SIGHUP
            except BlockingIOError:
                pass  # a full pipe already holds requests the master will read
            return json.dumps({"reload": "requested"}) + "\n", "application/json"
        if parts == ["purge"]:
            return self.purge(_query(req), peer), "application/json"
        if len(parts) == 4 and parts[0] == "servers" and parts[3] in control.ADMIN_STATES:
            return self.change(parts[1], parts[2], peer, state=parts[3]), "application/json"
        if len(parts) == 5 and parts[0] == "servers" and parts[3] == "weight":
            return self.change(parts[1], parts[2], peer, weight=_weight(parts[4])), "application/json"
        if len(parts) == 4 and parts[0] == "servers" and parts[3] in ("add", "remove"):
            return self.membership(parts[1], parts[2], parts[3], _query(req),
                                   peer), "application/json"
        raise _Reply(404, "not found: POST /reload, /purge or /servers/POOL/SERVER/"
                          "(drain|maint|ready|weight/N|add|remove)\n")

    def membership(self, pool: str, addr: str, action: str, query: dict, peer: str) -> str:
        """add or remove a server (``control.add_server``, ``remove_server``)."""
        by = f"admin {peer}"[:32]
        try:
            if action == "add":
                spec = control.Spec(addr, _number(query, "weight", 1),
                                    _one(query, "backup") in ("true", "1", "yes"),
                                    _number(query, "max_conns", 0))
                doc = control.add_server(self.table_path, self.rt.cfg, pool, spec, by=by)
            else:
                doc = control.remove_server(self.table_path, self.rt.cfg, pool, addr, by=by)
        except control.NoSuchServer as exc:
            raise _Reply(404, exc.message + "\n") from None
        except control.TableFull as exc:
            raise _Reply(507, exc.message + "\n") from None
        except control.ControlError as exc:
            raise _Reply(409, exc.message + "\n") from None
        self.rt.log.warning("admin: %s %s (asked by %s)", doc["server"],
                            "added" if action == "add" else "removed", peer)
        return json.dumps(doc) + "\n"

    def change(self, pool: str, server: str, peer: str, *, state=None, weight=None) -> str:
        label = f"{pool}/{server}"
        try:
            old, new = control.set_admin(self.table_path, pool, server, state=state,
                                         weight=weight, by=f"admin {peer}"[:32], now=time.time())
        except control.NoSuchServer:
            raise _Reply(404, f"no server {server!r} in pool {pool!r}\n") from None
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
        """``core.status.snapshot`` of the table, with this daemon's pids, listeners
        and workers (``GET /status`` adds ``traffic`` and ``cache``)."""
        cfg = self.rt.cfg
        if self.leader is not None and self.leader.held:
            # Never holder_pid() here: closing its descriptor of the lock file
            # would release this process's lock (POSIX record locks).
            checker = os.getpid()
        else:
            try:
                checker = holder_pid(self.lock_path)
            except OSError:
                checker = None
        now = time.time()
        doc = snapshot(self.table, cfg, now, checker)
        doc["version"] = __version__
        doc["time"] = now  # the status page computes rates between two documents' times
        doc["master_pid"] = os.getppid()
        doc["worker_pid"] = os.getpid()  # the worker that answered
        doc["listeners"] = [{"name": lc.name, "bind": lc.bind, "mode": lc.mode,
                             "tls": bool(lc.contexts)} for lc in cfg.listeners]
        doc["workers"] = cfg.server.workers
        # Fleet rate limits: shared through memcached, or each node's own now.
        doc["rate_limits"] = rate_limit_states(self.rt.edge)
        # Fleet sticky tables (net.sticktable): in memcached, or each worker's own now.
        doc["sticky_tables"] = [p.stick.state() for p in self.rt.pools.values()
                                if p.stick is not None and p.stick.fleet]
        return doc

    def totals(self) -> dict[tuple, int]:
        """The metrics totals over every worker slot ({} when metrics are off)."""
        counter = self.rt.metrics
        return counter.metrics.totals() if counter is not None else {}

    def metrics_text(self) -> str:
        # Read once: every worker's row, every key; the rows of servers that
        # came at run time named by the server in each now.
        rows = {row: tuple(label.split("/", 1)) for row, label, m in control.members(self.table)
                if m.state != "free" and "/" in label}
        totals = relabel_rows(self.totals(), rows)
        extra = []
        for pool in self.status()["pools"]:
            for s in pool["servers"]:
                labels = (("pool", pool["name"]), ("server", s["addr"]))
                up = s["health"] == "up" and not s["passive_out"]
                extra.append(("server_up", labels, 1 if up else 0, "gauge",
                              "1 when the server's checks let it take requests: up by its "
                              "active checks and not out by passive ones (max_fails)."))
                extra.append(("server_inflight", labels, s["inflight"], "gauge",
                              "Requests in flight to the server, over every worker."))
                extra.append(("server_ejected", labels, 1 if s["ejected"] else 0, "gauge",
                              "1 while outlier detection (the pool's outlier) ejects the "
                              "server."))
        return render(totals, extra)

    # -- the cache -------------------------------------------------------------------

    def purge(self, query: dict, peer: str) -> str:
        """``POST /purge?url=URL`` or ``?host=HOST`` through this worker's cache (the
        same functions as a PURGE request); logged with the peer."""
        cache = self.rt.cache
        if cache is None:
            raise _Reply(404, "the cache is off: no route has cache = true\n")
        url, host = _one(query, "url"), _one(query, "host")
        if (url is None) == (host is None):
            raise _Reply(400, "purge: give url=URL or host=HOST\n")
        shared = cache.store.state["backend"] in ("memcached", "shared")
        if url is not None:
            try:
                _, authority, target, _ = http1.split_url(url)
            except ValueError as exc:
                raise _Reply(400, f"purge: {exc}\n") from None
            found = cache.purge_url(authority, target, _namespaces(self.rt, url))
            self.rt.log.warning("admin: purge of %s: %s (asked by %s)", url,
                                "deleted" if found else "not in the cache", peer)
            return json.dumps({"url": url, "purged": found, "shared": shared}) + "\n"
        if not cache.purge_host(host):
            raise _Reply(503, "purge: the cache could not be reached\n")
        self.rt.log.warning("admin: purge of every URL of %s (asked by %s)", host, peer)
        return json.dumps({"host": host, "purged": True, "shared": shared}) + "\n"

    def cache_state(self, totals: dict[tuple, int]) -> dict | None:
        """``/status``'s ``cache`` member (see the module docstring); None: no cache."""
        cache = self.rt.cache
        if cache is None:
            return None
        st = cache.store.state
        probes = [gevent.spawn(_answers, addr) for addr in st["servers"]]
        gevent.joinall(probes)
        counts: dict[str, dict[str, int]] = {str(r.index): {} for r in self.rt.cfg.routes
                                             if r.cache}
        for (family, labels), n in totals.items():
            d = dict(labels)
            if family == "cache_requests_total" and d.get("route") in counts:
                counts[d["route"]][d["result"]] = n
        routes = [{"route": int(r), "results": c, "hit_ratio": _hit_ratio(c)}
                  for r, c in counts.items()]
        every: dict[str, int] = {}
        for c in counts.values():
            for result, n in c.items():
                every[result] = every.get(result, 0) + n
        return {"backend": st["backend"], "worker_pid": os.getpid(),
                "servers": [{"addr": a, "reachable": p.value} for a, p in
                            zip(st["servers"], probes)],
                "breaker": st["breaker"], "breaker_opened": st.get("breaker_opened", 0),
                "hit_ratio": _hit_ratio(every), "routes": routes}

    # -- explain ---------------------------------------------------------------------

    def explain(self, req, peer: str) -> dict:
        """``GET /explain``: ``net.explain.explain`` on the query's request."""
        query = _query(req)
        url = _one(query, "url")
        if url is None:
            raise _Reply(400, "explain: url=URL is required\n")
        headers = []
        for text in query.get("header", []):
            name, colon, value = text.partition(":")
            if not colon or not name.strip():
                raise _Reply(400, f"explain: expected header=Name: value, got {text!r}\n")
            headers.append((name.strip(), value.strip()))
        client = _one(query, "client") or peer
        try:
            ipaddress.ip_address(client)
        except ValueError:
            raise _Reply(400, f"explain: client must be an IP address, got {client!r}\n") from None
        try:
            return explain(self.rt, (_one(query, "method") or "GET").upper(), url, headers,
                           _one(query, "listener"), client)
        except BadQuestion as exc:
            raise _Reply(400, f"explain: {exc}\n") from None


#: How long a memcached server may take to answer ``version`` in ``/status``.
PROBE_TIMEOUT = 0.5


def _answers(addr: str) -> bool:
    """True when the memcached at ``addr`` answers ``version`` within PROBE_TIMEOUT
    (a connect alone would pass a frozen server: the kernel completes it)."""
    try:
        host, port = split_host_port(addr)
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT) as sock:
            sock.sendall(b"version\r\n")
            return sock.recv(64).startswith(b"VERSION")
    except (OSError, ValueError):
        return False


def _namespaces(rt, url: str) -> list[str]:
    """The cache namespaces of the routes a request for ``url`` reaches on any
    listener (``Cache.namespaces_serving``, as a PURGE request finds them); a
    400 when forkproxy would refuse the request itself."""
    _, authority, target, _ = http1.split_url(url)
    try:
        req = request_for(rt, "GET", target, authority, [])
    except BadQuestion as exc:
        raise _Reply(400, f"purge: {exc}\n") from None
    except http1.ProtocolError as exc:
        raise _Reply(400, "purge: forkproxy would refuse a request for it: "
                     f"{exc.reason}\n") from None
    _, host, path, _ = request_target(req)
    return rt.cache.namespaces_serving(rt, host, path)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _hit_ratio(results: dict[str, int]) -> float | None:
    """Responses from the cache over lookups, (HIT + STALE + REVALIDATED) / (those
    + MISS); None before the first lookup.  BYPASS, PURGE and REFRESH never look up."""
    served = sum(results.get(r, 0) for r in ("HIT", "STALE", "REVALIDATED"))
    lookups = served + results.get("MISS", 0)
    return served / lookups if lookups else None


def _query(req) -> dict[str, list[str]]:
    """The request target's query string, decoded (repeated names kept in order)."""
    return parse_qs(req.target.partition("?")[2], keep_blank_values=True)


def _one(query: dict, name: str) -> str | None:
    """The value of a parameter given at most once (a 400 when repeated)."""
    values = query.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise _Reply(400, f"{name} given more than once\n")
    return values[0]


def _number(query: dict, name: str, default: int) -> int:
    """The integer parameter ``name`` (``default`` when absent); 400 otherwise."""
    text = _one(query, name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise _Reply(400, f"{name}: expected an integer, got {text!r}\n") from None


@functools.cache
def _page() -> str:
    """The status page, read from the package once per process."""
    return importlib.resources.files(__package__).joinpath("status_page.html").read_text("utf-8")


def _weight(text: str) -> int:
    try:
        return control.parse_weight(text)
    except ValueError as exc:
        raise _Reply(400, f"weight: {exc}\n") from None
