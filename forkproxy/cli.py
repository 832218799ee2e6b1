"""forkproxy's command line: nginx-style flags and exit codes.

    forkproxy [-c file] [-t] [-T] [-D] [-p pidfile] [-s signal] [-v] [-V] [-h]

Exit status: 0 ok; 1 configuration error (every error printed as
``FILE:LINE: key.path: message``); 2 usage error; 3 a worker failed to boot;
70 internal error.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys

from forkproxy import __version__, config, control
from forkproxy.control import DEFAULT_CONFIG
from forkproxy.errors import EX_CONFIG, EX_OK, EX_SOFTWARE, EX_USAGE, ConfigErrors

# -s NAME: the signal and what it means to the master (gunicorn's meanings:
# TERM is the graceful stop, QUIT the fast one; the opposite of nginx).
SIGNALS = {
    "reload": signal.SIGHUP,
    "stop": signal.SIGTERM,
    "quit": signal.SIGQUIT,
    "reopen": signal.SIGUSR1,
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="forkproxy",
        description="A prefork reverse proxy and load balancer (HTTP/1.1 and TCP).",
        epilog="Signals to the master: HUP reload, TERM graceful stop, INT/QUIT fast stop, "
               "USR1 reopen logs, USR2 binary upgrade, WINCH stop the workers, TTIN/TTOU one "
               "worker more/less. See forkproxy(8).")
    p.add_argument("-c", "--config", metavar="FILE",
                   help=f"configuration file (default {DEFAULT_CONFIG}, or $FORKPROXY_CONFIG)")
    p.add_argument("-t", "--test", action="store_true",
                   help="validate the configuration and exit (0 valid, 1 invalid)")
    p.add_argument("-T", "--test-dump", action="store_true",
                   help="validate and print the effective configuration as TOML")
    p.add_argument("--show-secrets", action="store_true",
                   help="with -T: print server.admin_token and sticky.secret instead of "
                        "<redacted>")
    p.add_argument("-D", "--daemon", action="store_true",
                   help="detach from the terminal and run in the background")
    p.add_argument("-p", "--pidfile", metavar="FILE", help="override server.pidfile")
    p.add_argument("-s", "--signal", choices=sorted(SIGNALS), metavar="SIGNAL",
                   help="send a signal to the running master: reload, stop (graceful), "
                        "quit (fast), reopen")
    p.add_argument("--wait", action="store_true",
                   help="with -s reload: return when the new generation serves (0) or the "
                        "reload was rejected (1, errors printed)")
    p.add_argument("-v", "--version", action="version", version=f"forkproxy {__version__}",
                   help="print the version and exit")
    p.add_argument("-V", "--versions", action="store_true",
                   help="print the versions of forkproxy and of what it runs on, and exit")
    return p


def versions() -> list[str]:
    """``-V``: forkproxy's version and those of the parts it runs on (nginx's -V)."""
    import platform
    import ssl
    from importlib import metadata

    def dist(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    try:
        import pylibmc
        libmemcached = pylibmc.libmemcached_version
    except ImportError as exc:
        libmemcached = f"unavailable ({exc})"
    return [f"forkproxy {__version__}",
            f"Python {platform.python_version()} ({sys.executable})",
            f"gevent {dist('gevent')}",
            f"gunicorn {dist('gunicorn')}",
            f"OpenSSL: {ssl.OPENSSL_VERSION}",
            f"libmemcached {libmemcached} (pylibmc {dist('pylibmc')})"]


def _load(path: str, pidfile: str | None):
    cfg = config.load(path)
    if pidfile:
        cfg = dataclasses.replace(cfg, server=dataclasses.replace(cfg.server, pidfile=pidfile))
    return cfg


def send_signal(name: str, pidfile: str, wait_in: str | None = None,
                timeout: float = 60.0) -> int:
    """``-s``: signal the master whose pid is in ``pidfile`` (``control.signal_master``).

    ``wait_in`` (``-s reload --wait``): the runtime dir whose ``reload.json``
    says when the new generation serves or why the reload was rejected
    (``control.reload_and_wait``).
    """
    try:
        pid = control.read_pid(pidfile)
        ok, errors = control.reload_and_wait(
            wait_in, pid, lambda: control.signal_master(pid, SIGNALS[name]),
            None if wait_in is None else timeout)
    except control.NotRunning:
        print(f"forkproxy: stale pidfile {pidfile}: no process {pid}", file=sys.stderr)
        return EX_CONFIG
    except control.ControlError as exc:
        print(f"forkproxy: {exc.message}", file=sys.stderr)
        return EX_CONFIG
    if not ok:
        for err in errors:
            print(f"forkproxy: reload rejected: {err}", file=sys.stderr)
        return EX_CONFIG
    if wait_in is not None:
        print("forkproxy: reloaded: the new generation serves", file=sys.stderr)
    return EX_OK


def _runtime_dir_problem(path: str) -> str | None:
    """Why the master could not keep its table and lock files in ``path``, or None.

    Created 0755; an existing directory that anyone may write to is refused
    (others could replace the table or the reload status).
    """
    try:
        os.makedirs(path, mode=0o755, exist_ok=True)
    except OSError as exc:
        return f"cannot create it: {exc.strerror}"
    if not os.access(path, os.W_OK | os.X_OK):
        return "not writable"
    mode = os.stat(path).st_mode
    if mode & 0o002 and not mode & 0o1000:
        return "writable by every user (chmod o-w)"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EX_OK if exc.code == 0 else EX_USAGE
    if args.versions:
        print("\n".join(versions()))
        return EX_OK
    path = control.config_path(args.config)
    try:
        cfg = _load(path, args.pidfile)
    except ConfigErrors as exc:
        if args.signal and args.signal != "reload":
            # Stopping must not depend on a file that may be half edited.
            return send_signal(args.signal, args.pidfile or config.ServerConfig.pidfile)
        print(exc, file=sys.stderr)
        if args.signal:
            print("forkproxy: reload not sent: the running master would reject this file",
                  file=sys.stderr)
        if args.test or args.test_dump:
            print(f"forkproxy: configuration file {path} test failed", file=sys.stderr)
        return EX_CONFIG
    if args.test or args.test_dump:
        # Warnings never fail the test: the file serves as it is.
        for warning in config.warnings(cfg):
            print(warning, file=sys.stderr)
    if not args.signal:
        # The host, beyond the file (daemon.preflight): -t says what the start would.
        from forkproxy.daemon.preflight import check
        errors, warnings = check(cfg)
        for w in warnings:
            print(f"forkproxy: warning: {w}", file=sys.stderr)
        if errors:
            print(ConfigErrors(errors), file=sys.stderr)
            if args.test or args.test_dump:
                print(f"forkproxy: configuration file {path} test failed", file=sys.stderr)
            return EX_CONFIG
    if args.test_dump:
        sys.stdout.write(config.dump(cfg, secrets=args.show_secrets))
        return EX_OK
    if args.test:
        print(f"forkproxy: configuration file {path} test is successful", file=sys.stderr)
        return EX_OK
    if args.signal:
        wait_in = cfg.server.runtime_dir if args.wait and args.signal == "reload" else None
        return send_signal(args.signal, cfg.server.pidfile, wait_in)
    problem = _runtime_dir_problem(cfg.server.runtime_dir)
    if problem:
        print(f"forkproxy: server.runtime_dir {cfg.server.runtime_dir}: {problem}", file=sys.stderr)
        return EX_CONFIG
    # -D changes to /: reloads and a USR2 re-exec must still find the file.
    cfg = dataclasses.replace(cfg, path=os.path.abspath(cfg.path))
    start_cwd = os.getcwd()
    from forkproxy.daemon import process
    if args.daemon:
        process.daemonize()  # returns in the master; the command waits for its word
    code = EX_OK
    try:
        from forkproxy.daemon.app import run
        run(cfg, detached=args.daemon, start_cwd=start_cwd, pidfile=args.pidfile)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else EX_SOFTWARE
    process.tell_parent(code or EX_SOFTWARE)  # stopped before serving: never 0
    return code
