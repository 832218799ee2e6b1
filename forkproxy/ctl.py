"""forkproxyctl: inspect and change a running forkproxy through its shared health table.

    forkproxyctl [-c FILE] [--json] status
    forkproxyctl [-c FILE] drain|maint|ready POOL SERVER
    forkproxyctl [-c FILE] weight POOL SERVER N|config
    forkproxyctl [-c FILE] purge URL | --host HOST
    forkproxyctl [-c FILE] [--json] metrics

No admin endpoint is involved: the master keeps the health table at
``{server.runtime_dir}/health.tbl`` (``forkproxy.daemon.shm``), every worker
maps it, and this tool maps it too. From the configuration file only
``server.runtime_dir`` is required (and ``server.pidfile``, to warn when the
table outlived its master); the pools' ``max_fails`` and ``fail_timeout`` are
used to count passive failures (a pool that is in the table but no longer in
the file is counted with the defaults). Everything else comes from the table,
which is what the running daemon sees even when the file has been edited since.

``status`` maps the table read-only. The admin commands follow the table's
writer contract: take ``shm.admin_lock(table_path)``, *then* open the table
(so a reload that swaps in the next generation under the same lock never
loses the change), write the row's admin cell, release. They are idempotent:
setting the state a server already has writes nothing and exits 0.

Exit status: 0 success; 1 failure (forkproxy not running, table unreadable,
unknown pool or server, broken configuration); 2 usage error.

``metrics`` asks the admin endpoint (``server.admin``) for ``/metrics``, with
the token from ``server.admin_token`` or ``$FORKPROXY_ADMIN_TOKEN``.

``purge`` is the exception: it sends a ``PURGE`` request to the first http
listener of the configuration (to 127.0.0.1 when it listens on every
address), which ``cache.purge_allowed`` lets through from loopback.

Layering: config, errors, core and ``daemon.shm`` only (``daemon.shm`` is
stdlib + core; nothing here may pull in gunicorn, gevent or requests).
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import sys
import time

from forkproxy import config
from forkproxy.core.status import snapshot
from forkproxy.core.table import AdminRow, LayoutError, Table
from forkproxy.daemon import shm
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
    "set_admin",
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
    if s["passive_out"]:
        n = s["passive_failures"]
        why = f"{n} failed request{'s' if n != 1 else ''} (max_fails)" + (f"; {why}" if why else "")
    return [pool, s["addr"], health, admin, check, str(s["inflight"]),
            format_age(None if when is None else now - when), why or "-"]


def render_status(doc: dict, now: float, table_path: str) -> str:
    """The human table for a ``snapshot`` document: a header line, then one line per server."""
    checker = doc["checker_pid"]
    lines = [f"health table {table_path}, generation {doc['generation']}, "
             + (f"checker pid {checker}" if checker else "no active checker")]
    rows = [list(_COLUMNS)]
    for pool in doc["pools"]:
        for s in pool["servers"]:
            rows.append(_row_cells(pool["name"], s, now))
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    for r in rows:
        # The last column is free text: no padding after it.
        lines.append("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1])
    return "\n".join(line.rstrip() for line in lines) + "\n"


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


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="forkproxyctl",
                description="Inspect and control a running forkproxy through its shared "
                            "health table. See forkproxyctl(8).")
    p.add_argument("-c", "--config", metavar="FILE",
                   help=f"configuration file (default {DEFAULT_CONFIG}, or $FORKPROXY_CONFIG)")
    p.add_argument("--json", action="store_true", help="print one JSON document (status)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    s = sub.add_parser("status", help="every pool and server: health, admin state, checks, load")
    # Accepted after the command too; SUPPRESS keeps the top-level value.
    s.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="print one JSON document")
    for name, what in (("drain", "no new requests except those pinned by persistence"),
                       ("maint", "no traffic at all"),
                       ("ready", "back in rotation")):
        s = sub.add_parser(name, help=f"put a server in the {name} admin state: {what}")
        s.add_argument("pool")
        s.add_argument("server", help="the server's addr as written in the configuration")
    s = sub.add_parser("weight", help="override a server's weight (or 'config' to restore it)")
    s.add_argument("pool")
    s.add_argument("server", help="the server's addr as written in the configuration")
    s.add_argument("weight", type=_weight, metavar="N", help=f"1..{WEIGHT_MAX}, or 'config'")
    s = sub.add_parser("metrics", help="print the admin endpoint's /metrics (Prometheus text)")
    s.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="print the samples as one JSON document")
    s = sub.add_parser("purge", help="delete a URL (or every URL of a host) from the cache")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("url", nargs="?", help="the URL as clients request it, http://HOST/PATH?QUERY")
    g.add_argument("--host", help="purge every URL of this Host (with its port, if not the default)")
    return p


def purge(cfg: config.Config, url: str | None, host: str | None, timeout: float = 10) -> tuple[int, str]:
    """Send PURGE for ``url`` (or ``PURGE /*`` with Host ``host``) to the running
    forkproxy's first http listener; (status, body text)."""
    import http.client
    import ssl
    from urllib.parse import urlsplit

    if url is not None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise CtlError(f"expected a URL such as http://example.com/path, got {url!r}", EX_USAGE)
        host = parts.netloc
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    else:
        target = "/*"
    listeners = [lc for lc in cfg.listeners if lc.mode == "http"]
    if not listeners:
        raise CtlError("the configuration has no http listener to send PURGE to")
    lc = listeners[0]
    addr = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(lc.host, lc.host)
    if lc.certs:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection(addr, lc.port, timeout=timeout, context=ctx)
    else:
        conn = http.client.HTTPConnection(addr, lc.port, timeout=timeout)
    try:
        conn.putrequest("PURGE", target, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host)
        conn.putheader("Content-Length", "0")
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace").strip()
    except OSError as exc:
        raise CtlError(f"cannot reach forkproxy on {addr}:{lc.port}: {exc}") from None
    finally:
        conn.close()


def admin_get(cfg: config.Config, path: str, timeout: float = 10) -> str:
    """GET ``path`` from the running forkproxy's admin endpoint (server.admin); the body.

    The token (``server.admin_token``, else ``$FORKPROXY_ADMIN_TOKEN``) is sent
    when there is one. Raises CtlError when there is no endpoint or it refuses.
    """
    import http.client

    if not cfg.server.admin:
        raise CtlError("server.admin is not set: forkproxy has no admin endpoint")
    host, port = config.split_host_port(cfg.server.admin)
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    token = cfg.server.admin_token or os.environ.get("FORKPROXY_ADMIN_TOKEN")
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        resp = conn.getresponse()
        body = resp.read().decode("utf-8", "replace")
    except OSError as exc:
        raise CtlError(f"cannot reach the admin endpoint {host}:{port}: {exc}") from None
    finally:
        conn.close()
    if resp.status != 200:
        raise CtlError(f"admin endpoint {host}:{port}{path}: {resp.status} {body.strip()}")
    return body


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


def _describe_weight(w: int) -> str:
    return str(w) if w else "config"


def _run(args) -> int:
    path = args.config or os.environ.get("FORKPROXY_CONFIG") or DEFAULT_CONFIG
    try:
        cfg = config.load(path)
    except ConfigErrors as exc:
        print(exc, file=sys.stderr)
        raise CtlError(f"cannot use the configuration file {path}") from None
    tpath = os.path.join(cfg.server.runtime_dir, TABLE_NAME)

    if args.command == "purge":
        status, text = purge(cfg, args.url, args.host)
        what = args.url or f"every URL of {args.host}"
        if status == 200:
            print(f"{what}: purged")
            return EX_OK
        if status == 404:
            print(f"{what}: not in the cache")
            return EX_OK
        raise CtlError(f"{what}: forkproxy answered {status} {text}")

    if args.command == "metrics":
        text = admin_get(cfg, "/metrics")
        if args.json:
            print(json.dumps(metrics_json(text), indent=2))
        else:
            sys.stdout.write(text)
        return EX_OK

    if args.command == "status":
        table = _open(tpath)
        try:
            now = time.time()
            doc = snapshot(table, cfg, now,
                           checker_pid(os.path.join(cfg.server.runtime_dir, CHECKER_LOCK_NAME)))
        finally:
            shm.close_table(table)
        master = master_pid(cfg.server.pidfile)
        doc["master_pid"] = master
        if master is None:
            print(f"forkproxyctl: warning: no running master per {cfg.server.pidfile}: "
                  "this table may be stale", file=sys.stderr)
        if args.json:
            json.dump(doc, sys.stdout, indent=2)
            sys.stdout.write("\n")
        else:
            sys.stdout.write(render_status(doc, now, tpath))
        return EX_OK

    label = f"{args.pool}/{args.server}"
    if args.command == "weight":
        old, new = set_admin(tpath, args.pool, args.server, weight=args.weight)
        field, before, after = "weight", old.weight or None, new.weight or None
        text = f"weight {_describe_weight(old.weight)} -> {_describe_weight(new.weight)}"
        same = f"weight already {_describe_weight(new.weight)}"
    else:
        old, new = set_admin(tpath, args.pool, args.server, state=args.command)
        field, before, after = "admin", old.state, new.state
        text, same = f"{before} -> {after}", f"already {after}"
    if args.json:
        print(json.dumps({"server": label, "field": field, "before": before, "after": after,
                          "changed": before != after}))
    else:
        print(f"{label}: {text if before != after else same}")
    return EX_OK


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
