"""forkproxyctl: inspect and change a running forkproxy.

    forkproxyctl [-c FILE] [--json] status
    forkproxyctl [-c FILE] [--json] drain|maint|ready POOL SERVER
    forkproxyctl [-c FILE] [--json] weight POOL SERVER N|config
    forkproxyctl [-c FILE] [--json] add-server POOL ADDR [--weight N] [--backup]
                                    [--max-conns N]
    forkproxyctl [-c FILE] [--json] remove-server POOL ADDR
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
  (``forkproxy.control``): ``status`` when the endpoint is off or does not
  answer; ``drain``, ``maint``, ``ready`` and ``weight`` likewise, through
  ``control.set_admin`` as the endpoint does (the table's writer contract;
  idempotent: setting the state a server already has writes nothing);
  ``add-server`` and ``remove-server`` likewise, through
  ``control.add_server`` / ``control.remove_server`` (the table's member
  cells and the state file ``servers.json``).

Without the endpoint (or a token), ``reload`` sends SIGHUP to the pid in
``server.pidfile``, and ``purge`` sends a ``PURGE`` request to the http
listener serving the URL's scheme (TLS for https; to 127.0.0.1 when it
listens on every address; the next one when it redirects), which
``cache.purge_allowed`` lets through from loopback.  ``drain``, ``maint``,
``ready`` and ``weight`` write the table only while the pidfile names a
running master: a stopped forkproxy leaves its table behind.  ``reload`` then waits
(``--timeout``) until ``reload.json`` (``daemon.process``) says the new
generation serves or was rejected (``control.reload_and_wait``, as
``forkproxy -s reload --wait`` does), and reports the new table generation.

Exit status: 0 success; 1 failure (forkproxy not running, table unreadable,
endpoint unreachable or refusing, unknown pool or server, broken
configuration, rejected reload); 2 usage error; 3 ``status`` read a table
no running master serves (shown, marked stale).

Layering: config, errors, core, ``control`` (the actions, stdlib + core) and
``net.leader.holder_pid`` (stdlib); never ``daemon``.  Importing it pulls in
no gunicorn, gevent, pylibmc or requests (``status`` from the table stays
light).
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

from forkproxy import config, control
from forkproxy.control import DEFAULT_CONFIG, WEIGHT_MAX, master_pid
from forkproxy.core.http1.targets import split_url
from forkproxy.core.status import snapshot
from forkproxy.core.table import LayoutError, Table
from forkproxy.ctl.render import (format_age, render_cache, render_explain,  # noqa: F401
                                  render_status, _purge_text, _reload_text)
from forkproxy.errors import EX_CONFIG, EX_NOT_RUNNING, EX_OK, EX_USAGE, ConfigErrors
from forkproxy.net.leader import holder_pid

__all__ = [
    "CtlError",
    "checker_pid",
    "master_pid",
    "format_age",
    "snapshot",
    "render_status",
    "render_cache",
    "render_explain",
    "status",
    "reload",
    "purge",
    "explain",
    "admin_call",
    "admin_get",
    "COMMANDS",
    "build_parser",
    "main",
]


class CtlError(control.ControlError):
    """A failure to report as ``forkproxyctl: MESSAGE`` and exit with ``code``
    (``main`` reports every other ``control.ControlError`` with EX_CONFIG)."""

    def __init__(self, message: str, code: int = EX_CONFIG):
        super().__init__(message)
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


# -- presentation --------------------------------------------------------------------


# -- the table -----------------------------------------------------------------------


def _table_error(path: str, exc: Exception, writable: bool = False) -> CtlError:
    """The operator's message for a failure to open the table at ``path`` (or,
    when ``exc.filename`` says so, its admin lock file)."""
    if isinstance(exc, FileNotFoundError) and exc.filename == path:
        return CtlError(f"forkproxy does not seem to be running: no health table at {path}")
    if isinstance(exc, PermissionError):
        if exc.filename == control.admin_lock_path(path):
            return CtlError(f"permission denied: cannot lock {exc.filename} "
                            "(run as root or as the user forkproxy runs as)")
        how = "read and write" if writable else "read"
        return CtlError(f"permission denied: cannot {how} {path} (run as root or as the "
                        "user forkproxy runs as)")
    if isinstance(exc, (LayoutError, ValueError)):  # ValueError: mmap of an empty file
        return CtlError(f"{path} is not a health table this forkproxyctl can read: {exc}")
    return CtlError(f"cannot open {exc.filename or path}: {exc.strerror or exc}")


def _open(path: str) -> Table:
    """``control.open_table`` (read-only) with every failure turned into an operator's message."""
    try:
        return control.open_table(path)
    except (OSError, LayoutError, ValueError) as exc:
        raise _table_error(path, exc) from None


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


def set_admin(path: str, pool: str, server: str, *, state: str | None = None,
              weight: int | None = None):
    """``control.set_admin`` by this user (``_who``), its failures as CtlError."""
    try:
        return control.set_admin(path, pool, server, state=state, weight=weight, by=_who())
    except control.NoSuchServer as exc:
        raise CtlError(exc.message) from None
    except (OSError, LayoutError, ValueError) as exc:
        raise _table_error(path, exc, writable=True) from None


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
    return control.connect_address(host), port


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
                       checker_pid(control.checker_lock_path(cfg.server.runtime_dir)))
    finally:
        control.close_table(table)
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
        control.close_table(table)


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
    not_running = CtlError(f"forkproxy does not seem to be running: no process per "
                           f"{cfg.server.pidfile}")
    if _commands_allowed(cfg):
        via = "admin"
        doc = json.loads(_admin_ok(cfg, "GET", "/status"))
        master, gen0 = doc["master_pid"], doc["generation"]

        def ask():
            _admin_ok(cfg, "POST", "/reload")
    else:
        via = "signal"
        master = master_pid(cfg.server.pidfile)
        if master is None:
            raise not_running
        gen0 = _table_generation(tpath)

        def ask():
            try:
                control.signal_master(master, signal.SIGHUP)
            except control.NotRunning:
                raise not_running from None
            except control.NotAllowed:
                raise CtlError(f"not allowed to signal the master (pid {master}): run as root "
                               "or as the user forkproxy runs as") from None
    out = {"via": via, "master_pid": master, "state": "requested", "generation_before": gen0,
           "generation": gen0, "errors": []}
    deadline = time.monotonic() + timeout
    ok, errors = control.reload_and_wait(cfg.server.runtime_dir, master, ask,
                                         timeout if wait else None)
    if not wait:
        return out
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


# -- purge ---------------------------------------------------------------------------


def _url_parts(url: str) -> tuple[str, str]:
    """(Host, target) of ``http://HOST/PATH?QUERY``; a usage error otherwise."""
    try:
        _, authority, target, _ = split_url(url)
    except ValueError as exc:
        raise CtlError(str(exc), EX_USAGE) from None
    return authority, target


def purge(cfg: config.Config, url: str | None, host: str | None, timeout: float = 10) -> dict:
    """Delete ``url`` (or every URL of ``host``) from the cache.

    Through the admin endpoint when commands can go there, else a PURGE
    request to the listener serving the URL's scheme and port
    (``control.purge_through_listeners``).  Returns ``{url | host, purged,
    shared, via}``; ``shared`` False: a per-worker in-process cache
    (``shared_size = 0``), purged in the one worker that answered.
    """
    if _commands_allowed(cfg):
        from urllib.parse import urlencode

        query = urlencode({"url": url} if url is not None else {"host": host})
        doc = json.loads(_admin_ok(cfg, "POST", f"/purge?{query}", timeout))
        doc["via"] = "admin"
        return doc
    return control.purge_through_listeners(cfg, url, host, timeout)


# -- explain -------------------------------------------------------------------------


def explain(cfg: config.Config, method: str, url: str, headers: list[str],
            listener: str | None, client: str | None) -> dict:
    """The admin endpoint's ``/explain`` document (see ``net.explain``)."""
    from urllib.parse import urlencode

    query = [("method", method), ("url", url)] + [("header", h) for h in headers]
    query += [(k, v) for k, v in (("listener", listener), ("client", client)) if v is not None]
    return json.loads(_admin_ok(cfg, "GET", "/explain?" + urlencode(query)))


# -- the command line ----------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so ``main`` returns the code."""

    def error(self, message):
        self.print_usage(sys.stderr)
        raise CtlError(f"{message}", EX_USAGE)


def _weight(text: str) -> int:
    try:
        return control.parse_weight(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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


def _describe_weight(w: int | None) -> str:
    return str(w) if w else "config"


def _emit(args, doc: dict, text: str, stream=None) -> None:
    """``doc`` as JSON on stdout with --json, else ``text`` on ``stream`` (stdout)."""
    if args.json:
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        (stream or sys.stdout).write(text if text.endswith("\n") else text + "\n")


# -- the commands: each one a handler run(args, cfg, table path) -> exit status ------


def _status(args, cfg: config.Config, tpath: str) -> int:
    doc, source = status(cfg, tpath)
    _emit(args, doc, render_status(doc, time.time(), source))
    # A table left by a stopped daemon is still shown (the last state is what
    # an operator wants to read), but `forkproxyctl status || alert` must fire:
    # 3 is LSB's "program is not running", as `systemctl status` answers.
    return EX_NOT_RUNNING if doc.get("master_pid", 0) is None else EX_OK


def _metrics(args, cfg: config.Config, tpath: str) -> int:
    text = admin_get(cfg, "/metrics")
    if args.json:
        _emit(args, metrics_json(text), "")
    else:
        sys.stdout.write(text)
    return EX_OK


def _purge(args, cfg: config.Config, tpath: str) -> int:
    r = purge(cfg, args.url, args.host)
    _emit(args, r, _purge_text(r))
    return EX_OK


def _reload(args, cfg: config.Config, tpath: str) -> int:
    r = reload(cfg, tpath, args.wait, args.timeout)
    ok = r["state"] in ("requested", "serving")
    _emit(args, r, _reload_text(r), None if ok else sys.stderr)
    return EX_OK if ok else EX_CONFIG


def _explain(args, cfg: config.Config, tpath: str) -> int:
    doc = explain(cfg, args.method.upper(), args.url, args.header, args.listener, args.client)
    _emit(args, doc, render_explain(doc))
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


def _membership(args, cfg: config.Config, tpath: str) -> int:
    """add-server, remove-server: through the admin endpoint when commands
    can go there, else (or when it does not answer) the table directly."""
    add = args.command == "add-server"
    doc = None
    if _commands_allowed(cfg):
        path = f"/servers/{quote(args.pool, safe='')}/{quote(args.addr, safe='')}/"
        if add:
            path += (f"add?weight={args.weight}&backup={'true' if args.backup else 'false'}"
                     f"&max_conns={args.max_conns}")
        else:
            path += "remove"
        try:
            status_, body = admin_call(cfg, "POST", path)
        except Unreachable as exc:
            print(f"forkproxyctl: {exc.message}; writing the table directly", file=sys.stderr)
        else:
            if status_ != 200:
                raise CtlError(f"admin endpoint {cfg.server.admin}: {status_} {body.strip()}")
            doc = json.loads(body)
    if doc is None:
        _check_running(cfg, tpath)
        try:
            if add:
                doc = control.add_server(tpath, cfg, args.pool, control.Spec(
                    args.addr, args.weight, args.backup, args.max_conns), by=_who())
            else:
                doc = control.remove_server(tpath, cfg, args.pool, args.addr, by=_who())
        except (OSError, LayoutError, ValueError) as exc:
            raise _table_error(tpath, exc, writable=True) from None
    text = (f"{doc['server']}: added; every worker uses it within a second" if add else
            f"{doc['server']}: removed; no new requests, its row is freed once those in "
            "flight end")
    _emit(args, doc, text)
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


def _no_arguments(p: argparse.ArgumentParser) -> None:
    pass


def _server_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pool")
    p.add_argument("server", help="the server's addr as written in the configuration")


def _weight_arguments(p: argparse.ArgumentParser) -> None:
    _server_arguments(p)
    p.add_argument("weight", type=_weight, metavar="N", help=f"1..{WEIGHT_MAX}, or 'config'")


def _count(lo: int, hi: int):
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            n = lo - 1
        if not lo <= n <= hi:
            raise argparse.ArgumentTypeError(f"expected {lo}..{hi}, got {text!r}")
        return n
    return parse


def _add_server_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pool")
    p.add_argument("addr", help="HOST:PORT or [IPv6]:PORT")
    p.add_argument("--weight", type=_count(1, WEIGHT_MAX), default=1, metavar="N",
                   help=f"1..{WEIGHT_MAX} (default 1)")
    p.add_argument("--backup", action="store_true", help="a backup server")
    p.add_argument("--max-conns", type=_count(0, control.MAX_CONNS_MAX), default=0,
                   metavar="N", help="most requests in flight to it, 0: no limit (default)")


def _remove_server_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pool")
    p.add_argument("addr", help="the server's address as the status shows it")


def _purge_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("url", nargs="?", type=_url,
                   help="the URL as clients request it, http://HOST/PATH?QUERY")
    g.add_argument("--host", help="purge every URL of this Host (with its port, if not the default)")


def _reload_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-wait", dest="wait", action="store_false",
                   help="return once the reload is requested")
    p.add_argument("--timeout", type=_seconds, default=60.0, metavar="SECONDS",
                   help="how long to wait for the new generation (default 60)")


def _explain_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("method", help="the request method, such as GET")
    p.add_argument("url", type=_url, help="http://HOST[:PORT]/PATH?QUERY; the port picks the "
                                          "listener")
    p.add_argument("-H", "--header", action="append", default=[], type=_header,
                   metavar="'NAME: VALUE'", help="a request header (repeatable)")
    p.add_argument("--listener", metavar="NAME", help="the listener, instead of the URL's port")
    p.add_argument("--client", metavar="IP",
                   help="the client address (default: this host's, as the endpoint sees it)")


#: (name, help, arguments(parser), run(args, cfg, table path) -> exit status), in --help order.
COMMANDS = [
    ("status", "every pool and server: health, admin state, checks, load; the cache",
     _no_arguments, _status),
    ("drain", "put a server in the drain admin state: no new requests except those pinned "
              "by persistence", _server_arguments, _set),
    ("maint", "put a server in the maint admin state: no traffic at all",
     _server_arguments, _set),
    ("ready", "put a server in the ready admin state: back in rotation",
     _server_arguments, _set),
    ("weight", "override a server's weight (or 'config' to restore it)",
     _weight_arguments, _set),
    ("add-server", "add a server to a pool at run time, kept across reloads and restarts",
     _add_server_arguments, _membership),
    ("remove-server", "remove a server from a pool at run time: no new requests, those in "
                      "flight finish", _remove_server_arguments, _membership),
    ("metrics", "print the admin endpoint's /metrics (Prometheus text)", _no_arguments, _metrics),
    ("purge", "delete a URL (or every URL of a host) from the cache", _purge_arguments, _purge),
    ("reload", "reload the configuration file; wait until it serves or is rejected",
     _reload_arguments, _reload),
    ("explain", "how a request would be routed, refused, cached and balanced",
     _explain_arguments, _explain),
]


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``COMMANDS``; ``-c`` and ``--json`` before or after the command
    (and every other option too, through ``parse_args``)."""
    p = _Parser(prog="forkproxyctl",
                description="Inspect and control a running forkproxy through its admin "
                            "endpoint and its shared health table. See forkproxyctl(8).")
    p.add_argument("-c", "--config", metavar="FILE",
                   help=f"configuration file (default {DEFAULT_CONFIG}, or $FORKPROXY_CONFIG)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    for name, help, arguments, run in COMMANDS:
        s = sub.add_parser(name, help=help)
        # Accepted after the command too; SUPPRESS keeps the top-level value.
        s.add_argument("-c", "--config", metavar="FILE", default=argparse.SUPPRESS,
                       help="configuration file, as before the command")
        s.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                       help="print one JSON document")
        arguments(s)
        s.set_defaults(run=run)
    # Options that take a value, of the commands and global: parse_args steps over them.
    p.value_options = {opt for s in sub.choices.values() for action in s._actions
                       if action.nargs != 0 for opt in action.option_strings}
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """``build_parser().parse_args``, with a command's own options (``--timeout``,
    ``--host``, ``-H``...) accepted before its name too: the command name is
    moved to the front, so ``forkproxyctl --timeout 5 reload`` reads as
    ``forkproxyctl reload --timeout 5``.  Positional arguments still follow it."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    names = {c[0] for c in COMMANDS}
    takes_value = parser.value_options
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "--":
        i += 2 if argv[i] in takes_value else 1  # an option, and its value if it takes one
    if 0 < i < len(argv) and argv[i] in names:
        argv = [argv[i], *argv[:i], *argv[i + 1:]]
    return parser.parse_args(argv)


def _load(args):
    path = control.config_path(args.config)
    try:
        return config.load(path)
    except ConfigErrors as exc:
        print(exc, file=sys.stderr)
        if args.command == "reload":
            raise CtlError("reload not sent: the running master would reject this file") from None
        raise CtlError(f"cannot use the configuration file {path}") from None


def main(argv: list[str] | None = None) -> int:
    """Run forkproxyctl; returns the exit status (0, 1 failure, 2 usage)."""
    try:
        try:
            args = parse_args(argv)
        except SystemExit as exc:  # --help
            return EX_OK if exc.code in (0, None) else EX_USAGE
        cfg = _load(args)
        return args.run(args, cfg, control.table_path(cfg.server.runtime_dir))
    except control.ControlError as exc:
        print(f"forkproxyctl: {exc.message}", file=sys.stderr)
        return getattr(exc, "code", EX_CONFIG)
    except BrokenPipeError:  # `forkproxyctl status | head`
        # Point stdout at /dev/null so the interpreter's final flush does
        # not raise again on the closed pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EX_OK
