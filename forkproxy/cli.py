"""forkproxy's command line: nginx-style flags and exit codes.

    forkproxy [-c file] [-t] [-T] [-D] [-p pidfile] [-s signal] [-v] [-h]

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

from forkproxy import __version__, config
from forkproxy.errors import EX_CONFIG, EX_OK, EX_SOFTWARE, EX_USAGE, ConfigErrors

DEFAULT_CONFIG = "/etc/forkproxy/forkproxy.toml"

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
               "USR1 reopen logs, TTIN/TTOU one worker more/less. See forkproxy(8).")
    p.add_argument("-c", "--config", metavar="FILE",
                   help=f"configuration file (default {DEFAULT_CONFIG}, or $FORKPROXY_CONFIG)")
    p.add_argument("-t", "--test", action="store_true",
                   help="validate the configuration and exit (0 valid, 1 invalid)")
    p.add_argument("-T", "--test-dump", action="store_true",
                   help="validate and print the effective configuration as TOML")
    p.add_argument("-D", "--daemon", action="store_true",
                   help="detach from the terminal and run in the background")
    p.add_argument("-p", "--pidfile", metavar="FILE", help="override server.pidfile")
    p.add_argument("-s", "--signal", choices=sorted(SIGNALS), metavar="SIGNAL",
                   help="send a signal to the running master: reload, stop (graceful), "
                        "quit (fast), reopen")
    p.add_argument("-v", "--version", action="version", version=f"forkproxy {__version__}",
                   help="print the version and exit")
    return p


def _config_path(args) -> str:
    return args.config or os.environ.get("FORKPROXY_CONFIG") or DEFAULT_CONFIG


def _load(path: str, pidfile: str | None):
    cfg = config.load(path)
    if pidfile:
        cfg = dataclasses.replace(cfg, server=dataclasses.replace(cfg.server, pidfile=pidfile))
    return cfg


def send_signal(name: str, pidfile: str) -> int:
    """``-s``: signal the master whose pid is in ``pidfile``."""
    try:
        with open(pidfile, encoding="ascii") as f:
            pid = int(f.read().strip())
    except FileNotFoundError:
        print(f"forkproxy: no pidfile at {pidfile}: is forkproxy running?", file=sys.stderr)
        return EX_CONFIG
    except (OSError, ValueError) as exc:
        print(f"forkproxy: cannot read the pid from {pidfile}: {exc}", file=sys.stderr)
        return EX_CONFIG
    try:
        os.kill(pid, SIGNALS[name])
    except ProcessLookupError:
        print(f"forkproxy: stale pidfile {pidfile}: no process {pid}", file=sys.stderr)
        return EX_CONFIG
    except PermissionError:
        print(f"forkproxy: not allowed to signal process {pid}", file=sys.stderr)
        return EX_CONFIG
    return EX_OK


def _runtime_dir_problem(path: str) -> str | None:
    """Why the master could not keep its table and lock files in ``path``, or None."""
    try:
        os.makedirs(path, mode=0o755, exist_ok=True)
    except OSError as exc:
        return f"cannot create it: {exc.strerror}"
    if not os.access(path, os.W_OK | os.X_OK):
        return "not writable"
    return None


def daemonize() -> None:
    """Detach: double fork, new session, stdio to /dev/null, umask 022."""
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EX_OK if exc.code == 0 else EX_USAGE
    path = _config_path(args)
    try:
        cfg = _load(path, args.pidfile)
    except ConfigErrors as exc:
        if args.signal and args.signal != "reload":
            # Stopping must not depend on a file that may be half edited.
            return send_signal(args.signal, args.pidfile or config.ServerConfig.pidfile)
        print(exc, file=sys.stderr)
        if args.test or args.test_dump:
            print(f"forkproxy: configuration file {path} test failed", file=sys.stderr)
        return EX_CONFIG
    if args.test_dump:
        sys.stdout.write(config.dump(cfg))
        return EX_OK
    if args.test:
        print(f"forkproxy: configuration file {path} test is successful", file=sys.stderr)
        return EX_OK
    if args.signal:
        return send_signal(args.signal, cfg.server.pidfile)
    problem = _runtime_dir_problem(cfg.server.runtime_dir)
    if problem:
        print(f"forkproxy: server.runtime_dir {cfg.server.runtime_dir}: {problem}", file=sys.stderr)
        return EX_CONFIG
    if args.daemon:
        daemonize()
    try:
        from forkproxy.daemon.app import run
        run(cfg)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EX_SOFTWARE
    return EX_OK
