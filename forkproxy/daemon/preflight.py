"""What ``forkproxy -t`` and the start check beyond the file: the host.

A file can be valid and still not run here: a ``server.user`` that does not
exist, a log directory that is missing, a Python the workers' user cannot
read (installed under /root, as pyenv does).  A log directory the workers'
user cannot reach is a warning: they serve, but cannot follow a rotation.  ``check(cfg)`` returns (errors, warnings) as ``ConfigError``s
(``FILE: key: message``); ``forkproxy -t`` prints both and fails on errors,
and so does the start, before anything is bound.

Questions about what ``server.user`` may do are answered by that user
itself: a child forks, takes the user's groups and ids (as the workers do)
and asks ``os.access``.  Only root can do that; a check run by another user
answers for itself when it is ``server.user``, else skips those questions.

Stdlib only (no gevent: it runs in the master).
"""

from __future__ import annotations

import grp
import importlib.util
import json
import os
import pwd
import stat

from forkproxy.config import Config
from forkproxy.errors import ConfigError

__all__ = ["check", "as_user_access"]

# Workers import these after the fork (daemon.worker.preload): the user must
# be able to read them, besides the standard library and forkproxy.
WORKER_PACKAGES = ("gevent", "gunicorn", "requests", "pylibmc")


def as_user_access(uid: int, gid: int, queries: list[tuple[str, int]]) -> list[bool] | None:
    """``os.access(path, mode)`` for each query as user ``uid`` with primary
    group ``gid`` and that user's supplementary groups; None when this
    process cannot take that identity (not root, and not already it)."""
    if os.geteuid() == uid:
        return [os.access(p, m) for p, m in queries]
    if os.geteuid() != 0:
        return None
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            os.close(r)
            os.initgroups(pwd.getpwuid(uid).pw_name, gid)
            os.setgid(gid)
            os.setuid(uid)
            os.write(w, json.dumps([os.access(p, m) for p, m in queries]).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return json.loads(data) if data else None


def _package_dirs() -> list[str]:
    """The directories the workers read modules from."""
    import forkproxy

    dirs = [os.path.dirname(os.__file__), os.path.dirname(os.path.abspath(forkproxy.__file__))]
    for name in WORKER_PACKAGES:
        spec = importlib.util.find_spec(name)  # finds without importing
        if spec is not None and spec.origin:
            dirs.append(os.path.dirname(spec.origin))
    return dirs


def _existing(path: str) -> str:
    """``path`` or its deepest existing ancestor."""
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def check(cfg: Config) -> tuple[list[ConfigError], list[ConfigError]]:
    """(errors, warnings) about running ``cfg`` on this host (module docstring)."""
    errors: list[ConfigError] = []
    warnings: list[ConfigError] = []

    def err(key: str, msg: str) -> None:
        errors.append(ConfigError(cfg.path, None, key, msg))

    s = cfg.server
    user = None
    if s.user:
        try:
            user = pwd.getpwnam(s.user)
        except KeyError:
            err("server.user", f'no such user "{s.user}" (create it, e.g. adduser --system '
                f"{s.user})")
    gid = None
    if s.group:
        try:
            gid = grp.getgrnam(s.group).gr_gid
        except KeyError:
            err("server.group", f'no such group "{s.group}"')
    elif user is not None:
        gid = user.pw_gid

    logs = [(f"server.{k}", getattr(s, k)) for k in ("error_log", "access_log")]
    logs = [(k, os.path.abspath(p)) for k, p in logs if p not in ("-", "off")]
    for key, path in logs:
        d = os.path.dirname(path)
        if not os.path.isdir(d):
            err(key, f"directory {d} does not exist")
        elif os.path.lexists(path):
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                err(key, f"{path} is a symbolic link: log files are never opened through one")
            elif not stat.S_ISREG(st.st_mode):
                err(key, f"{path} is not a regular file")
            elif not os.access(path, os.W_OK):
                err(key, f"{path} is not writable by uid {os.geteuid()} (the master opens it)")
        elif not os.access(d, os.W_OK | os.X_OK):
            err(key, f"cannot create {path}: directory {d} is not writable by uid "
                f"{os.geteuid()} (the master creates it)")

    if user is not None and gid is not None and user.pw_uid != os.geteuid():
        dirs = _package_dirs()
        queries = [(d, os.R_OK | os.X_OK) for d in dirs]
        reach = [(k, os.path.dirname(p)) for k, p in logs if os.path.isdir(os.path.dirname(p))]
        queries += [(d, os.X_OK) for _, d in reach]
        if s.admin:
            rdir = _existing(s.runtime_dir)  # what the master creates is 0755
            queries.append((rdir, os.X_OK))
        answers = as_user_access(user.pw_uid, gid, queries)
        if answers is not None:
            unreadable = [d for d, ok in zip(dirs, answers) if not ok]
            if unreadable:
                err("server.user", f'"{s.user}" cannot read {", ".join(unreadable)}: the '
                    "workers run as this user and read Python's library and forkproxy's "
                    "modules (is Python installed in a private directory, such as a pyenv "
                    "under /root?)")
            answers = answers[len(dirs):]
            for (key, d), ok in zip(reach, answers):
                if not ok:  # serving works; rotation does not: a warning
                    warnings.append(ConfigError(
                        cfg.path, None, key, f'server.user "{s.user}" cannot reach {d}: its '
                        "workers could not reopen the log on USR1 and would go on writing to "
                        "the rotated file (chmod o+x the directory)"))
            if s.admin and not answers[-1]:
                err("server.runtime_dir", f'server.user "{s.user}" cannot reach {rdir}: the '
                    "admin endpoint's commands (drain, weight...) write the table there")

    for i, lc in enumerate(cfg.listeners):
        certs = [("tls", lc.tls)] if lc.tls is not None else \
            [(f"certs[{j}]", c) for j, c in enumerate(lc.certs or ())]
        for where, c in certs:
            try:
                mode = os.stat(c.key).st_mode
            except OSError:
                continue  # the loader said it already
            if mode & 0o004:
                warnings.append(ConfigError(cfg.path, None, f"listener[{i}].{where}.key",
                                            f"{c.key} is readable by every user (chmod o-r)"))
    return errors, warnings
