"""forkproxyctl: inspect and change a running forkproxy.

    forkproxyctl [-c FILE] [--json] status
    forkproxyctl [-c FILE] [--json] drain|maint|ready POOL SERVER
    forkproxyctl [-c FILE] [--json] weight POOL SERVER N|config
    forkproxyctl [-c FILE] [--json] purge URL | --host HOST
    forkproxyctl [-c FILE] [--json] reload [--no-wait] [--timeout SECONDS]
    forkproxyctl [-c FILE] [--json] explain METHOD URL [-H 'Name: value']...
                                    [--listener NAME] [--client IP]
    forkproxyctl [-c FILE] [--json] metrics

``-c`` and ``--json`` may also follow the command (``status --json -c FILE``).

Two ways in, chosen per command:

- The admin endpoint (``server.admin``), over HTTP with requests (imported
  only then), with the token from ``server.admin_token`` or
  ``$FORKPROXY_ADMIN_TOKEN``: ``status`` when the endpoint is on (it adds
  the cache's state); ``reload``, ``purge``, ``drain``, ``maint``, ``ready``
  and ``weight`` when the endpoint is on and a token is known (they are
  commands, logged by the daemon with the peer); ``explain`` and
  ``metrics`` always (they exist only there).
- The shared health table at ``{server.runtime_dir}/health.tbl``
  (``forkproxy.daemon.shm``): ``status`` when the endpoint is off or does not
  answer; ``drain``, ``maint``, ``ready`` and ``weight`` likewise,
  following the table's writer contract: take ``shm.admin_lock(table_path)``, *then* open
  the table (so a reload that swaps in the next generation under the same
  lock never loses the change), write the row's admin cell, release. They are
  idempotent: setting the state a server already has writes nothing.

Without the endpoint (or a token), ``reload`` sends SIGHUP to the pid in
``server.pidfile``, and ``purge`` sends a ``PURGE`` request to the http
listener serving the URL's scheme (TLS for https; to 127.0.0.1 when it
listens on every address; the next one when it redirects), which
``cache.purge_allowed`` lets through from loopback.  ``drain``, ``maint``,
``ready`` and ``weight`` write the table only while the pidfile names a
running master: a stopped forkproxy leaves its table behind.  ``reload`` then waits
(``--timeout``) until ``reload.json`` (``daemon.process``) says the new
generation serves or was rejected, and reports the new table generation.

Exit status: 0 success; 1 failure (forkproxy not running, table unreadable,
endpoint unreachable or refusing, unknown pool or server, broken
configuration, rejected reload); 2 usage error.

Layering: config, errors, core, ``daemon.shm`` and ``daemon.process`` (both
stdlib + core) and ``net.leader.holder_pid``; importing it pulls in no
gunicorn, gevent, pylibmc or requests (``status`` from the table stays light).
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import signal
import sys
import time
from urllib.parse import quote

from forkproxy import config
from forkproxy.core import http1
from forkproxy.core.status import snapshot
from forkproxy.core.table import AdminRow, LayoutError, Table
from forkproxy.daemon import process, shm
from forkproxy.errors import EX_CONFIG, EX_OK, EX_USAGE, ConfigErrors
from forkproxy.net.leader import holder_pid

__all__ = [
    "DEFAULT_CONFIG",
    "TABLE_NAME",
    "CHECKER_LOCK_NAME",
    "WEIGHT_MAX",
    "CtlError",
    "checker_pid",
    "master_pid",
    "format_age",
    "snapshot",
    "render_status",
    "render_cache",
    "render_explain",
    "set_admin",
    "status",
    "reload",
    "purge",
    "explain",
    "admin_call",
    "admin_get",
    "build_parser",
    "main",
]

DEFAULT_CONFIG = "/etc/forkproxy/forkproxy.toml"
TABLE_NAME = "health.tbl"
CHECKER_LOCK_NAME = "checker.lock"
#: Same bounds as the ``weight`` key of a pool's servers (1..1000).
WEIGHT_MAX = 1000

class CtlError(Exception):
    """A failure to report as ``forkproxyctl: MESSAGE`` and exit with ``code``."""

    def __init__(self, message: str, code: int = EX_CONFIG):
        super().__init__(message)
        self.message = message
        self.code = code


# -- the checker's pid ---------------------------------------------------------------

def checker_pid(lock_path: str) -> int | None:
    """The pid of the worker holding the checker election lock, or None.

    None also when the lock file is missing or unreadable: status then shows
    no checker rather than failing.  Never blocks, never locks.
    """
    try:
        return holder_pid(lock_path)
    except OSError:
        return None


def master_pid(pidfile: str) -> int | None:
    """The pid in ``pidfile`` if that process exists, else None (never raises)."""
    try:
        with open(pidfile, encoding="ascii") as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return None
    if pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except PermissionError:  # exists, owned by someone else
        return pid
    except OSError:
        return None
    return pid


# -- presentation --------------------------------------------------------------------


def format_age(seconds: float | None) -> str:
    """A short human age: ``"3s"``, ``"2m"``, ``"1h"``, ``"4d"`` (truncated); ``"-"`` if None.

    Negative ages (a clock step backwards) read as ``"0s"``.
    """
    if seconds is None:
        return "-"
    s = int(max(0.0, seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


_COLUMNS = ("POOL", "SERVER", "HEALTH", "ADMIN", "CHECK", "INFLIGHT", "SINCE", "WHY")


def _row_cells(pool: str, s: dict, now: float) -> list[str]:
    health = (s["health"] or "unknown").upper()
    admin = s["admin"] + (f" w={s['weight']}" if s["weight"] else "")
    if s["last_check"] is None:
        check = "-"
    else:
        ms = s["latency"] * 1000
        check = f"{s['last_result'] or '?'} " + (f"{ms:.1f}ms" if ms < 10 else f"{ms:.0f}ms")
    # "Since" and "why" describe the most recent change, health or admin.
    when, why = s["last_change"], s["reason"] or ""
    if s["admin_changed"] and (when is None or s["admin_changed"] >= when):
        when = s["admin_changed"]
        why = f"{s['admin']} by {s['admin_by'] or '?'}"
    n = s["passive_failures"]
    if n:  # out of rotation, or kept in it (a pool of one, max_ejection_percent)
        why = (f"{n} failed request{'s' if n != 1 else ''} (max_fails"
               f"{'' if s['passive_out'] else ', kept in rotation'})" + (f"; {why}" if why else ""))
    if s["passive_out"] and s["health"] == "up":
        health = "OUT"  # up by its active checks, out by passive ones
    return [pool, s["addr"], health, admin, check, str(s["inflight"]),
            format_age(None if when is None else now - when), why or "-"]


def render_status(doc: dict, now: float, source: str) -> str:
    """The human table for a status document: a header line naming ``source``
    (where it was read), a line on the cache when the document has one (the
    admin endpoint's), then one line per server."""
    checker = doc["checker_pid"]
    lines = [f"{source}, generation {doc['generation']}, "
             + (f"checker pid {checker}" if checker else "no active checker")]
    if doc.get("cache"):
        lines.append(render_cache(doc["cache"]))
    rows = [list(_COLUMNS)]
    for pool in doc["pools"]:
        for s in pool["servers"]:
            rows.append(_row_cells(pool["name"], s, now))
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    for r in rows:
        # The last column is free text: no padding after it.
        lines.append("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1])
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def render_cache(cache: dict) -> str:
    """One line: the store, whether each memcached server answers, the answering
    worker's breaker, and the hit ratio (overall, then per cached route)."""
    if cache["backend"] == "memcached":
        where = "memcached " + ", ".join(
            f"{s['addr']} {'up' if s['reachable'] else 'NOT ANSWERING'}" for s in cache["servers"])
        where += f"; breaker {cache['breaker']} (worker {cache['worker_pid']})"
    else:
        where = "in-process, per worker"
    routes = ", ".join(f"route {r['route']} {_ratio(r['hit_ratio'])}" for r in cache["routes"])
    return f"cache {where}; hit ratio {_ratio(cache['hit_ratio'])}" + (f" ({routes})" if routes else "")


# -- the table -----------------------------------------------------------------------


def _open(path: str, writable: bool = False) -> Table:
    """``shm.open_table`` with every failure turned into an operator's message."""
    try:
        return shm.open_table(path, writable=writable)
    except FileNotFoundError:
        raise CtlError(f"forkproxy does not seem to be running: no health table at {path}") from None
    except PermissionError:
        how = "read and write" if writable else "read"
        raise CtlError(f"permission denied: cannot {how} {path} (run as root or as the "
                       "user forkproxy runs as)") from None
    except (LayoutError, ValueError) as exc:  # ValueError: mmap of an empty file
        raise CtlError(f"{path} is not a health table this forkproxyctl can read: {exc}") from None
    except OSError as exc:
        raise CtlError(f"cannot open {path}: {exc.strerror or exc}") from None


def _who() -> str:
    """Who is making an admin change, for the table's ``by`` field (32 bytes)."""
    uid = os.getuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = f"uid={uid}"
    sudo = os.environ.get("SUDO_USER")
    if uid == 0 and sudo:
        user = f"{sudo} via sudo"
    return f"forkproxyctl {user}"


def _find_row(table: Table, pool: str, server: str) -> int:
    """The row of ``pool/server``; CtlError naming what exists when there is none."""
    row = table.find(f"{pool}/{server}")
    if row is not None:
        return row
    known: dict[str, list[str]] = {}
    for r in range(table.n_rows):
        p, _, addr = table.label(r).partition("/")
        known.setdefault(p, []).append(addr)
    if pool not in known:
        raise CtlError(f"no pool {pool!r} in the health table; pools: "
                       + (", ".join(known) or "none"))
    raise CtlError(f"no server {server!r} in pool {pool!r}; servers: " + ", ".join(known[pool]))


def set_admin(path: str, pool: str, server: str, *, state: str | None = None,
              weight: int | None = None, by: str | None = None,
              now: float | None = None) -> tuple[AdminRow, AdminRow]:
    """Change one server's admin cell in the table at ``path``; return (old, new).

    ``state`` is ``"ready"``, ``"drain"`` or ``"maint"`` (None: keep);
    ``weight`` is 1..WEIGHT_MAX to override the configured weight, 0 to go
    back to it (None: keep). State and weight are independent. Takes the
    admin lock, then opens the table writable (the writer contract of
    ``core.table``). Writes nothing when the cell already says so (so
    ``changed``/``by`` keep telling who really changed it). Raises CtlError.
    """
    # Check first: admin_lock creates its lock file, and a command aimed at a
    # forkproxy that is not running must leave nothing behind.
    if not os.path.exists(path):
        shm.close_table(_open(path))  # raises the right message (missing, no permission)
    try:
        with shm.admin_lock(path):
            table = _open(path, writable=True)
            try:
                row = _find_row(table, pool, server)
                old = table.read_admin(row)
                new = AdminRow(
                    state=old.state if state is None else state,
                    weight=old.weight if weight is None else weight,
                    changed=old.changed, by=old.by,
                )
                if new != old:
                    new = AdminRow(new.state, new.weight, time.time() if now is None else now,
                                   by if by is not None else _who())
                    table.write_admin(row, new)
                return old, new
            finally:
                shm.close_table(table)
    except PermissionError:  # only the lock file: _open reports its own
        raise CtlError(f"permission denied: cannot lock {shm.admin_lock_path(path)} "
                       "(run as root or as the user forkproxy runs as)") from None


# -- the admin endpoint --------------------------------------------------------------


class Unreachable(CtlError):
    """The admin endpoint did not answer (connection refused, reset, timeout)."""


def _token(cfg: config.Config) -> str | None:
    return cfg.server.admin_token or os.environ.get("FORKPROXY_ADMIN_TOKEN")


def _endpoint(cfg: config.Config) -> tuple[str, int]:
    """(host, port) to reach ``server.admin`` at (loopback for a wildcard address)."""
    if not cfg.server.admin:
        raise CtlError("server.admin is not set: forkproxy has no admin endpoint")
    host, port = config.split_host_port(cfg.server.admin)
    return _reachable(host), port


def _reachable(host: str) -> str:
    """Where to connect to reach a socket bound to ``host`` (loopback for a wildcard)."""
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


def admin_call(cfg: config.Config, method: str, path: str, timeout: float = 10) -> tuple[int, str]:
    """(status, body) of one request to the admin endpoint, with the token when
    there is one.  Raises ``Unreachable`` when it does not answer."""
    import requests  # here: `forkproxyctl status` on the table must not pay for it

    host, port = _endpoint(cfg)
    token = _token(cfg)
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}{path}"
    with requests.Session() as session:
        session.trust_env = False  # an operator's http_proxy must not see the token
        try:
            r = session.request(method, url, timeout=timeout, allow_redirects=False,
                                headers={"Authorization": f"Bearer {token}"} if token else {})
        except requests.RequestException as exc:
            raise Unreachable(f"cannot reach the admin endpoint {host}:{port}: {exc}") from None
        return r.status_code, r.content.decode("utf-8", "replace")


def admin_get(cfg: config.Config, path: str, timeout: float = 10) -> str:
    """The body of a 200 to ``GET path`` on the admin endpoint; CtlError otherwise."""
    return _admin_ok(cfg, "GET", path, timeout)


def _admin_ok(cfg: config.Config, method: str, path: str, timeout: float = 10) -> str:
    status, body = admin_call(cfg, method, path, timeout)
    if status != 200:
        raise CtlError(f"admin endpoint {cfg.server.admin} {method} {path.split('?')[0]}: "
                       f"{status} {body.strip()}")
    return body


def _commands_allowed(cfg: config.Config) -> bool:
    """True when commands can go through the endpoint: it is on and a token is known."""
    return bool(cfg.server.admin and _token(cfg))


def metrics_json(text: str) -> dict:
    """``{"samples": [{name, labels, value}]}`` from Prometheus text (as forkproxy writes it)."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        name, _, rest = series.partition("{")
        labels = {}
        for part in rest.rstrip("}").split('",') if rest else ():
            k, _, v = part.partition("=")
            labels[k] = v.strip('"').replace('\\"', '"').replace("\\\\", "\\")
        samples.append({"name": name, "labels": labels, "value": float(value)})
    return {"samples": samples}


# -- status --------------------------------------------------------------------------


def status(cfg: config.Config, tpath: str) -> tuple[dict, str]:
    """(status document, where it was read): the admin endpoint's ``/status`` when
    it is on and answers, else the shared table."""
    if cfg.server.admin:
        try:
            doc = json.loads(_admin_ok(cfg, "GET", "/status"))
            return doc, f"admin endpoint {cfg.server.admin} (worker {doc.get('worker_pid')})"
        except Unreachable as exc:
            print(f"forkproxyctl: warning: {exc.message}; reading the health table",
                  file=sys.stderr)
    table = _open(tpath)
    try:
        doc = snapshot(table, cfg, time.time(),
                       checker_pid(os.path.join(cfg.server.runtime_dir, CHECKER_LOCK_NAME)))
    finally:
        shm.close_table(table)
    doc["master_pid"] = master_pid(cfg.server.pidfile)
    if doc["master_pid"] is None:
        print(f"forkproxyctl: warning: no running master per {cfg.server.pidfile}: "
              "this table may be stale", file=sys.stderr)
    return doc, f"health table {tpath}"


def _table_generation(tpath: str) -> int:
    table = _open(tpath)
    try:
        return table.generation
    finally:
        shm.close_table(table)


# -- reload --------------------------------------------------------------------------


def reload(cfg: config.Config, tpath: str, wait: bool, timeout: float) -> dict:
    """Ask the running master for a reload; with ``wait``, until it serves or is rejected.

    Returns ``{via, master_pid, state, generation_before, generation, errors}``:
    ``state`` "requested" (not waited for), "serving", "rejected" (``errors``
    from ``reload.json``) or "failed" (the master died, or ``timeout`` ran out
    before the new generation answered).  ``generation`` is the table
    generation serving at the end (the endpoint's ``/status`` when the reload
    went through it, else the table's header).
    """
    rdir = cfg.server.runtime_dir
    before = process.read_status(rdir)
    if _commands_allowed(cfg):
        via = "admin"
        doc = json.loads(_admin_ok(cfg, "GET", "/status"))
        master, gen0 = doc["master_pid"], doc["generation"]
        _admin_ok(cfg, "POST", "/reload")
    else:
        via = "signal"
        master = master_pid(cfg.server.pidfile)
        if master is None:
            raise CtlError(f"forkproxy does not seem to be running: no process per "
                           f"{cfg.server.pidfile}")
        gen0 = _table_generation(tpath)
        try:
            os.kill(master, signal.SIGHUP)
        except PermissionError:
            raise CtlError(f"not allowed to signal the master (pid {master}): run as root or "
                           "as the user forkproxy runs as") from None
    out = {"via": via, "master_pid": master, "state": "requested", "generation_before": gen0,
           "generation": gen0, "errors": []}
    if not wait:
        return out
    deadline = time.monotonic() + timeout
    ok, errors = process.wait_reload(rdir, master, before, timeout)
    if not ok:
        rejected = not any(e.startswith(("no new generation", "the master")) for e in errors)
        out.update(state="rejected" if rejected else "failed", errors=errors)
        return out
    gen = _new_generation(cfg, tpath, via, gen0, deadline)
    if gen is None:
        out.update(state="failed", errors=[f"generation {gen0} still answers after {timeout:g}s"])
    else:
        out.update(state="serving", generation=gen)
    return out


def _new_generation(cfg: config.Config, tpath: str, via: str, old: int,
                    deadline: float) -> int | None:
    """The generation serving once it is not ``old`` any more (None at ``deadline``).

    Through the endpoint, an old worker may still answer for a moment after
    the new generation serves (it drains), or reset the connection: ask again.
    """
    while True:
        if via == "signal":
            gen = _table_generation(tpath)
        else:
            try:
                gen = json.loads(_admin_ok(cfg, "GET", "/status"))["generation"]
            except Unreachable:
                gen = old
        if gen != old:
            return gen
        if time.monotonic() > deadline:
            return None
        time.sleep(0.1)


def _reload_text(r: dict) -> str:
    how = "through the admin endpoint" if r["via"] == "admin" else f"SIGHUP to pid {r['master_pid']}"
    if r["state"] == "requested":
        return f"reload requested ({how}); generation {r['generation_before']} serving"
    if r["state"] == "serving":
        return f"reloaded ({how}): generation {r['generation_before']} -> {r['generation']}"
    return "\n".join([f"reload {r['state']} ({how}): {e}" for e in r["errors"]]
                     + [f"generation {r['generation_before']} still serving"])


# -- purge ---------------------------------------------------------------------------


def _url_parts(url: str) -> tuple[str, str]:
    """(Host, target) of ``http://HOST/PATH?QUERY``; a usage error otherwise."""
    try:
        _, authority, target, _ = http1.split_url(url)
    except ValueError as exc:
        raise CtlError(str(exc), EX_USAGE) from None
    return authority, target


def purge(cfg: config.Config, url: str | None, host: str | None, timeout: float = 10) -> dict:
    """Delete ``url`` (or every URL of ``host``) from the cache.

    Through the admin endpoint when commands can go there, else a PURGE
    request to the listener serving the URL's scheme and port (see
    ``_purge_through_listeners``).  Returns ``{url | host, purged,
    shared, via}``; ``shared`` False: an in-process cache, purged in the one
    worker that answered.
    """
    if _commands_allowed(cfg):
        from urllib.parse import urlencode

        query = urlencode({"url": url} if url is not None else {"host": host})
        doc = json.loads(_admin_ok(cfg, "POST", f"/purge?{query}", timeout))
        doc["via"] = "admin"
        return doc
    scheme, port = None, None
    if url is not None:
        host, target = _url_parts(url)
        scheme, _, _, port = http1.split_url(url)
    else:
        target = "/*"
    code, text = _purge_through_listeners(cfg, scheme, port, host, target, timeout)
    if code == 403:
        raise CtlError(f"{url or host}: forkproxy refused the PURGE (403): without the admin "
                       "endpoint (server.admin and admin_token), cache.purge_allowed must "
                       "include 127.0.0.1")
    if code not in (200, 404):
        raise CtlError(f"{url or host}: forkproxy answered {code} {text}")
    what = {"url": url} if url is not None else {"host": host}
    return {**what, "purged": code == 200, "shared": cfg.cache.servers != (), "via": "listener"}


def _purge_listeners(cfg: config.Config, scheme: str | None, port: int | None) -> list:
    """The http listeners a PURGE may go to, best first: those serving the
    URL's scheme (TLS for https), the one on its port first, then the others;
    in file order for a host purge (no scheme)."""
    listeners = [lc for lc in cfg.listeners if lc.mode == "http"]
    if scheme is None:
        return listeners
    return sorted(listeners, key=lambda lc: (bool(lc.contexts) != (scheme == "https"),
                                             lc.port != port))


def _purge_through_listeners(cfg: config.Config, scheme: str | None, port: int | None,
                             host: str, target: str, timeout: float) -> tuple[int, str]:
    """(status, body text) of ``PURGE target`` with Host ``host`` from the
    first listener of ``_purge_listeners`` that does not redirect it (a
    ``redirect_https`` route answers 308 on a plain listener: the next one,
    with TLS, then takes it).  The cache deletes both schemes' entries
    whichever listener takes the request."""
    listeners = _purge_listeners(cfg, scheme, port)
    if not listeners:
        raise CtlError("the configuration has no http listener to send PURGE to")
    for lc in listeners:
        code, text = _purge_request(lc, host, target, timeout)
        if not 300 <= code < 400:
            return code, text
    raise CtlError(f"every http listener redirects PURGE {target} for {host} (last: {code} "
                   f"from {lc.name}); use the admin endpoint (server.admin and a token)")


def _purge_request(lc: config.ListenerConfig, host: str, target: str,
                   timeout: float) -> tuple[int, str]:
    """(status, body text) of ``PURGE target`` with Host ``host`` to listener ``lc``.

    Over TLS for a TLS listener, with the URL's host as SNI and no
    certificate check: the address comes from the daemon's own configuration
    on this host, which is what is trusted here, not a name.
    """
    import http.client
    import socket
    import ssl

    addr = _reachable(lc.host)
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
        raise CtlError(f"cannot reach forkproxy on {addr}:{lc.port} ({lc.name}): {exc}") from None
    finally:
        conn.close()


def _purge_text(r: dict) -> str:
    what = r["url"] if "url" in r else f"every URL of {r['host']}"
    text = f"{what}: {'purged' if r['purged'] else 'not in the cache'}"
    if not r["shared"]:
        text += " (in-process cache: in the worker that answered only)"
    return text


# -- explain -------------------------------------------------------------------------


def explain(cfg: config.Config, method: str, url: str, headers: list[str],
            listener: str | None, client: str | None) -> dict:
    """The admin endpoint's ``/explain`` document (see ``net.explain``)."""
    from urllib.parse import urlencode

    query = [("method", method), ("url", url)] + [("header", h) for h in headers]
    query += [(k, v) for k, v in (("listener", listener), ("client", client)) if v is not None]
    return json.loads(_admin_ok(cfg, "GET", "/explain?" + urlencode(query)))


def render_explain(doc: dict) -> str:
    """A few aligned lines: what forkproxy would do with the request, in order."""
    req, lc = doc["request"], doc["listener"]
    lines = [("listener", f"{lc['name']} {lc['bind']} ({lc['proto']})"),
             ("request", f"{req['method']} {req['target']}  Host {req['host']}, "
                         f"client {req['client']}")]
    route = doc["route"]
    if route is not None:
        where = " ".join(f"{k}={route[k]}" for k in ("host", "path", "path_regex") if route[k])
        lines.append(("route", f"#{route['id']} {where or '(default)'} -> pool {route['pool']}"))
    if doc["upstream_target"] is not None and doc["upstream_target"] != req["target"]:
        lines.append(("rewritten", doc["upstream_target"]))
    if doc["rate_limit"] is not None:
        rl = doc["rate_limit"]
        lines.append(("rate limit", f"{rl['rate']} burst {rl['burst']}, bucket {rl['key']!r} "
                                    "(not consulted by explain)"))
    if doc["refused"] is not None:
        lines.append(("refused", f"{doc['refused']['status']} {doc['refused']['why']}"))
    if doc["redirect"] is not None:
        lines.append(("redirect", f"{doc['redirect']['status']} -> {doc['redirect']['location']}"))
    if doc["cache"] is not None:
        c = doc["cache"]
        ns = c.get("namespace")
        lines.append(("cache", " ".join(filter(None, [c["result"], c["key"],
                                                      f"[{ns}]" if ns else "",
                                                      f"({c['reason']})" if c["reason"] else ""]))))
    if doc["pool"] is not None:
        p = doc["pool"]
        lines.append(("pool", f"{p['name']} {p['balance']}"
                              + (f", key {p['key']!r}" if p["key"] is not None else "")))
    if doc["sticky"] is not None:
        st = doc["sticky"]
        lines.append(("sticky", f"cookie {st['cookie']}: "
                                + (f"names {st['server'] or 'no server of this pool'}"
                                   if st["token"] else "not sent")))
    if doc["server"] is not None:
        lines.append(("server", f"{doc['server']['addr']} (by {doc['server']['by']})"))
    elif doc["why_no_server"] is not None:
        lines.append(("server", doc["why_no_server"]))
    width = max(len(label) for label, _ in lines)
    return "".join(f"{label.ljust(width)}  {text}\n" for label, text in lines)


# -- the command line ----------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so ``main`` returns the code."""

    def error(self, message):
        self.print_usage(sys.stderr)
        raise CtlError(f"{message}", EX_USAGE)


def _weight(text: str) -> int:
    """``N`` (1..1000) or ``config``/``-1`` (back to the configured weight, stored as 0)."""
    if text in ("config", "-1"):
        return 0
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 1..{WEIGHT_MAX} or 'config', got {text!r}") from None
    if n == 0:
        raise argparse.ArgumentTypeError(
            "weight 0 is not supported: use 'drain' to stop new traffic to a server")
    if not 1 <= n <= WEIGHT_MAX:
        raise argparse.ArgumentTypeError(f"expected 1..{WEIGHT_MAX} or 'config', got {n}")
    return n


def _url(text: str) -> str:
    try:
        _url_parts(text)
    except CtlError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None
    return text


def _header(text: str) -> str:
    name, colon, _ = text.partition(":")
    if not colon or not name.strip():
        raise argparse.ArgumentTypeError(f"expected 'Name: value', got {text!r}")
    return text


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="forkproxyctl",
                description="Inspect and control a running forkproxy through its admin "
                            "endpoint and its shared health table. See forkproxyctl(8).")
    p.add_argument("-c", "--config", metavar="FILE",
                   help=f"configuration file (default {DEFAULT_CONFIG}, or $FORKPROXY_CONFIG)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)

    def command(name: str, help: str):
        s = sub.add_parser(name, help=help)
        # Accepted after the command too; SUPPRESS keeps the top-level value.
        s.add_argument("-c", "--config", metavar="FILE", default=argparse.SUPPRESS,
                       help="configuration file, as before the command")
        s.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                       help="print one JSON document")
        return s

    command("status", "every pool and server: health, admin state, checks, load; the cache")
    for name, what in (("drain", "no new requests except those pinned by persistence"),
                       ("maint", "no traffic at all"),
                       ("ready", "back in rotation")):
        s = command(name, f"put a server in the {name} admin state: {what}")
        s.add_argument("pool")
        s.add_argument("server", help="the server's addr as written in the configuration")
    s = command("weight", "override a server's weight (or 'config' to restore it)")
    s.add_argument("pool")
    s.add_argument("server", help="the server's addr as written in the configuration")
    s.add_argument("weight", type=_weight, metavar="N", help=f"1..{WEIGHT_MAX}, or 'config'")
    command("metrics", "print the admin endpoint's /metrics (Prometheus text)")
    s = command("purge", "delete a URL (or every URL of a host) from the cache")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("url", nargs="?", type=_url,
                   help="the URL as clients request it, http://HOST/PATH?QUERY")
    g.add_argument("--host", help="purge every URL of this Host (with its port, if not the default)")
    s = command("reload", "reload the configuration file; wait until it serves or is rejected")
    s.add_argument("--no-wait", dest="wait", action="store_false",
                   help="return once the reload is requested")
    s.add_argument("--timeout", type=_seconds, default=60.0, metavar="SECONDS",
                   help="how long to wait for the new generation (default 60)")
    s = command("explain", "how a request would be routed, refused, cached and balanced")
    s.add_argument("method", help="the request method, such as GET")
    s.add_argument("url", type=_url, help="http://HOST[:PORT]/PATH?QUERY; the port picks the "
                                          "listener")
    s.add_argument("-H", "--header", action="append", default=[], type=_header,
                   metavar="'NAME: VALUE'", help="a request header (repeatable)")
    s.add_argument("--listener", metavar="NAME", help="the listener, instead of the URL's port")
    s.add_argument("--client", metavar="IP",
                   help="the client address (default: this host's, as the endpoint sees it)")
    return p


def _describe_weight(w: int | None) -> str:
    return str(w) if w else "config"


def _emit(args, doc: dict, text: str, stream=None) -> None:
    """``doc`` as JSON on stdout with --json, else ``text`` on ``stream`` (stdout)."""
    if args.json:
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        (stream or sys.stdout).write(text if text.endswith("\n") else text + "\n")


def _load(args):
    path = args.config or os.environ.get("FORKPROXY_CONFIG") or DEFAULT_CONFIG
    try:
        return config.load(path)
    except ConfigErrors as exc:
        print(exc, file=sys.stderr)
        if args.command == "reload":
            raise CtlError("reload not sent: the running master would reject this file") from None
        raise CtlError(f"cannot use the configuration file {path}") from None


def _run(args) -> int:
    cfg = _load(args)
    tpath = os.path.join(cfg.server.runtime_dir, TABLE_NAME)
    if args.command == "status":
        doc, source = status(cfg, tpath)
        _emit(args, doc, render_status(doc, time.time(), source))
    elif args.command == "metrics":
        text = admin_get(cfg, "/metrics")
        if args.json:
            _emit(args, metrics_json(text), "")
        else:
            sys.stdout.write(text)
    elif args.command == "purge":
        r = purge(cfg, args.url, args.host)
        _emit(args, r, _purge_text(r))
    elif args.command == "reload":
        r = reload(cfg, tpath, args.wait, args.timeout)
        ok = r["state"] in ("requested", "serving")
        _emit(args, r, _reload_text(r), None if ok else sys.stderr)
        return EX_OK if ok else EX_CONFIG
    elif args.command == "explain":
        doc = explain(cfg, args.method.upper(), args.url, args.header, args.listener, args.client)
        _emit(args, doc, render_explain(doc))
    else:
        return _set(args, cfg, tpath)
    return EX_OK


def _set(args, cfg: config.Config, tpath: str) -> int:
    """drain, maint, ready, weight: one admin cell of the table.

    Through the admin endpoint when commands can go there (it logs the
    change with who asked); straight into the table otherwise, or when the
    endpoint does not answer: a drain must work at 3 a.m. either way.
    """
    doc = _set_through_endpoint(args, cfg, tpath) if _commands_allowed(cfg) else None
    if doc is None:
        _check_running(cfg, tpath)
        if args.command == "weight":
            old, new = set_admin(tpath, args.pool, args.server, weight=args.weight)
            field, before, after = "weight", old.weight or None, new.weight or None
        else:
            old, new = set_admin(tpath, args.pool, args.server, state=args.command)
            field, before, after = "admin", old.state, new.state
        doc = {"server": f"{args.pool}/{args.server}", "field": field, "before": before,
               "after": after, "changed": before != after}
    before, after, prefix = doc["before"], doc["after"], ""
    if doc["field"] == "weight":
        before, after, prefix = _describe_weight(before), _describe_weight(after), "weight "
    text = f"{prefix}{before} -> {after}" if doc["changed"] else f"{prefix}already {after}"
    _emit(args, doc, f"{doc['server']}: {text}")
    return EX_OK


def _check_running(cfg: config.Config, tpath: str) -> None:
    """CtlError unless ``server.pidfile`` names a running process: the table of
    a stopped forkproxy stays on disk, and a change written there would be
    reported as done while nothing applies it (the next start makes a new one)."""
    if master_pid(cfg.server.pidfile) is None:
        raise CtlError(f"forkproxy is not running: no process per {cfg.server.pidfile}; "
                       f"nothing changed (the table {tpath} is not in use)")


def _set_through_endpoint(args, cfg: config.Config, tpath: str) -> dict | None:
    """The endpoint's answer to the change (the document ``_set`` prints), or
    None when the endpoint does not answer and a master runs (CtlError when
    none does)."""
    what = f"weight/{args.weight or 'config'}" if args.command == "weight" else args.command
    path = f"/servers/{quote(args.pool, safe='')}/{quote(args.server, safe='')}/{what}"
    try:
        status, body = admin_call(cfg, "POST", path)
    except Unreachable as exc:
        _check_running(cfg, tpath)
        print(f"forkproxyctl: {exc.message}; writing the table directly", file=sys.stderr)
        return None
    if status != 200:
        raise CtlError(f"admin endpoint {cfg.server.admin}: {status} {body.strip()}")
    return json.loads(body)


def main(argv: list[str] | None = None) -> int:
    """Run forkproxyctl; returns the exit status (0, 1 failure, 2 usage)."""
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exc:  # --help
            return EX_OK if exc.code in (0, None) else EX_USAGE
        return _run(args)
    except CtlError as exc:
        print(f"forkproxyctl: {exc.message}", file=sys.stderr)
        return exc.code
    except BrokenPipeError:  # `forkproxyctl status | head`
        # Point stdout at /dev/null so the interpreter's final flush does
        # not raise again on the closed pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EX_OK


if __name__ == "__main__":
    sys.exit(main())
