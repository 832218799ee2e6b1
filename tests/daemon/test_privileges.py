"""server.user / server.group: the master keeps root, workers drop to the user.

Run as root only (the only way to test a privilege drop for real).  The
access log is opened by the master and handed to the user, so workers keep
logging after a rotation (USR1) even though they could not create the file.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import tempfile
from pathlib import Path

import pytest
import requests
import trustme
import urllib3

import forkproxy

from support.configs import one_pool
from support.procs import free_port, wait_until

def _world_traversable(path: str) -> bool:
    """Every directory from / to ``path`` lets other users in (o+x)."""
    path = os.path.realpath(path)
    while True:
        if not os.stat(path).st_mode & 0o001:
            return False
        parent = os.path.dirname(path)
        if parent == path:
            return True
        path = parent


# Workers import modules after dropping to the user: the interpreter's library
# and forkproxy itself must be readable by it (true of a packaged install; not
# of a Python built under /root, as on some CI machines).
_readable = all(_world_traversable(os.path.dirname(m.__file__))
                for m in (os, pytest, requests, forkproxy))
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges"),
    pytest.mark.skipif(not _readable, reason="this Python's files are not readable by other "
                       "users (installed under a private home directory)"),
]


def status_field(pid: int, name: str) -> list[int]:
    """The numbers of a line of /proc/PID/status (``Uid``, ``Gid``, ``Groups``)."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(name + ":"):
            return [int(x) for x in line.split()[1:]]
    raise KeyError(name)


def uid_of(pid: int) -> int:
    return status_field(pid, "Uid")[0]  # real uid


def switched(fp, uid: int, n: int = 2) -> list[int]:
    """The ``n`` workers, once every one has switched to ``uid`` (a worker boots
    as root: it imports what it needs before the switch)."""
    def done():
        pids = fp.wait_workers(n)
        return all(uid_of(p) == uid for p in pids)
    wait_until(done, what=f"{n} workers running as uid {uid}")
    return fp.wait_workers(n)


@pytest.fixture
def shared_dir():
    """A directory every user can traverse (for runtime_dir and the logs), like
    /run and /var/log; pytest's own temporary directories are private to root."""
    d = tempfile.mkdtemp(prefix="forkproxy-priv-")
    os.chmod(d, 0o755)
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def logdir():
    """A log directory the workers' user can traverse, like /var/log/forkproxy
    (pytest's own temporary directories are private to root)."""
    d = tempfile.mkdtemp(prefix="forkproxy-logs-")
    os.chmod(d, 0o755)
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


def test_workers_run_as_the_configured_user_and_keep_logging(forkproxy_factory, backend_factory,
                                                            logdir):
    nobody = pwd.getpwnam("nobody")
    b = backend_factory("b")
    port = free_port()
    fp = forkproxy_factory(one_pool(port, [b.addr], pool="p"), server={
        "user": "nobody", "group": "nogroup" if _has_group("nogroup") else None,
        "access_log": str(logdir / "access.log"), "error_log": str(logdir / "error.log")})
    assert uid_of(fp.pid) == 0
    switched(fp, nobody.pw_uid)

    url = f"http://127.0.0.1:{port}/"
    assert requests.get(url + "?before", timeout=10).status_code == 200
    log = Path(fp.server["access_log"])
    wait_until(lambda: "?before" in log.read_text(), what="the access log line")
    assert os.stat(log).st_uid == nobody.pw_uid

    # logrotate: move the files away, USR1; the master makes the new ones.
    os.rename(log, str(log) + ".1")
    os.rename(fp.server["error_log"], fp.server["error_log"] + ".1")
    fp.signal(signal.SIGUSR1)
    wait_until(lambda: log.exists() and Path(fp.server["error_log"]).exists(),
               what="the reopened logs")

    def logged_after():
        requests.get(url + "?after", timeout=10)
        return "?after" in log.read_text()
    wait_until(logged_after, what="workers writing to the new file")
    assert os.stat(log).st_uid == nobody.pw_uid
    error = Path(fp.server["error_log"])
    assert os.stat(error).st_uid == nobody.pw_uid  # the master handed over the new one too


def _has_group(name: str) -> bool:
    import grp
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def test_workers_take_the_users_primary_and_supplementary_groups(
        forkproxy_factory, backend_factory, shared_dir):
    """server.user without server.group: the user's groups, none of root's (gid 0)."""
    nobody = pwd.getpwnam("nobody")
    b = backend_factory("b")
    port = free_port()
    fp = forkproxy_factory(one_pool(port, [b.addr], pool="p"), server={
        "user": "nobody", "runtime_dir": str(shared_dir / "run"),
        "access_log": str(shared_dir / "access.log"), "error_log": str(shared_dir / "error.log")})
    want_groups = sorted(set(os.getgrouplist("nobody", nobody.pw_gid)))
    for w in switched(fp, nobody.pw_uid):
        assert status_field(w, "Gid") == [nobody.pw_gid] * 4
        assert sorted(status_field(w, "Groups")) == want_groups
        assert 0 not in status_field(w, "Groups")
    assert status_field(fp.pid, "Gid")[0] == 0  # the master keeps root's


@pytest.fixture
def private_python(tmp_path):
    """An interpreter whose library and site-packages only root can read, like a
    pyenv under /root: a copy of this Python's binary in a 0700 directory, its
    stdlib and this venv's site-packages reached through symlinks inside it, and
    forkproxy (this worktree) likewise.  Returns (python, PYTHONPATH, the
    private directory)."""
    import sys
    import sysconfig

    private = Path(tempfile.mkdtemp(prefix="forkproxy-pyenv-"))
    os.chmod(private, 0o755)  # opened up for the start, closed by the test
    (private / "bin").mkdir()
    (private / "lib").mkdir()
    python = private / "bin" / os.path.basename(os.path.realpath(sys.executable))
    shutil.copy2(os.path.realpath(sys.executable), python)
    stdlib = sysconfig.get_paths()["stdlib"]
    (private / "lib" / os.path.basename(stdlib)).symlink_to(stdlib)
    (private / "site").symlink_to(sysconfig.get_paths()["purelib"])
    (private / "src").mkdir()
    (private / "src" / "forkproxy").symlink_to(Path(forkproxy.__file__).parent)
    yield str(python), f"{private / 'src'}:{private / 'site'}", private
    shutil.rmtree(private, ignore_errors=True)


def test_workers_need_nothing_from_an_interpreter_the_user_cannot_read(
        forkproxy_factory, backend_factory, shared_dir, private_python):
    """Issue 17: with Python where server.user cannot read it, every feature a
    worker has (sticky cookies, the admin endpoint and its page, health probes,
    a server named by host name) still works, and workers started later (TTIN,
    a reload) boot: everything is imported before the switch to the user."""
    python, pythonpath, private = private_python
    b = backend_factory("b")
    port, tls_port, admin = free_port(), free_port(), free_port()
    leaf = trustme.CA().issue_cert("a.example")
    cert, key = shared_dir / "a.pem", shared_dir / "a.key"
    cert.write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    os.chmod(key, 0o600)
    body = f"""
[[listener]]
name = "web"
bind = "127.0.0.1:{port}"
[[listener]]
name = "websecure"
bind = "127.0.0.1:{tls_port}"
tls = {{ cert = "{cert}", key = "{key}" }}
[[route]]
path = "/bytes"
pool = "p"
cache = true
compress = {{ types = ["application/octet-stream"], min_size = "1k" }}
[[route]]
pool = "p"
[pool.p]
servers = [{{ addr = "localhost:{b.port}" }}]
sticky = {{ cookie = "srv" }}
health = {{ path = "/healthz", interval = "200ms", rise = 1, fall = 1 }}
"""
    server = {"user": "nobody", "runtime_dir": str(shared_dir / "run"), "admin": f"127.0.0.1:{admin}",
              "admin_token": "t0ken", "error_log": str(shared_dir / "error.log"),
              "access_log": str(shared_dir / "access.log")}
    fp = forkproxy_factory(body, server=server, python=python, env={"PYTHONPATH": pythonpath})
    switched(fp, pwd.getpwnam("nobody").pw_uid)
    os.chmod(private, 0o700)  # from now on, nobody cannot read the interpreter
    cached = "/bytes?n=4000&hdr=Cache-Control:max-age%3D60"

    def exercise():
        assert requests.get(f"http://127.0.0.1:{admin}/", timeout=10).status_code == 200
        st = requests.get(f"http://127.0.0.1:{admin}/status", timeout=10).json()
        assert st["pools"][0]["servers"][0]["health"] == "up"
        r = requests.get(f"http://127.0.0.1:{port}/", timeout=10)
        assert r.status_code == 200 and "srv" in r.cookies
        r = requests.get(f"http://127.0.0.1:{port}/", cookies=r.cookies, timeout=10)
        assert r.status_code == 200
        r = requests.get(f"https://127.0.0.1:{tls_port}/", timeout=10, verify=False)
        assert r.status_code == 200 and "Secure" in r.headers["Set-Cookie"]
        for encoding in ("gzip", "br"):
            r = requests.get(f"http://127.0.0.1:{port}{cached}", timeout=10,
                             headers={"Accept-Encoding": encoding})
            assert r.status_code == 200 and r.headers.get("Content-Encoding") == encoding
            assert len(r.content) == 4000

    urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    for _ in range(4):  # both workers, by the odds of the accept queue
        exercise()
    wait_until(lambda: b.stats()["by_path"].get("/healthz", 0) >= 2, what="health probes")
    fp.signal(signal.SIGTTIN)
    fp.wait_workers(3)
    fp.reload()
    wait_until(lambda: "reload 1: generation 2 serves" in fp.error_log(),
               what="the reloaded generation")
    for _ in range(4):
        exercise()
    log = fp.error_log()
    assert "No module named" not in log and "Traceback" not in log, log


def admin_post(admin: int, path: str) -> requests.Response:
    return requests.post(f"http://127.0.0.1:{admin}{path}", timeout=10,
                         headers={"Authorization": "Bearer t0ken"})


def test_admin_commands_work_as_the_user_and_say_why_when_they_cannot(
        forkproxy_factory, backend_factory, shared_dir):
    """drain, weight and reload through the admin endpoint of workers running as
    nobody; a change the system refuses is a 500 with the reason and an error-log
    line, never a closed connection."""
    b = backend_factory("b")
    port, admin = free_port(), free_port()
    fp = forkproxy_factory(one_pool(port, [b.addr], pool="p"), server={
        "user": "nobody", "runtime_dir": str(shared_dir / "run"), "admin": f"127.0.0.1:{admin}",
        "admin_token": "t0ken", "error_log": str(shared_dir / "error.log"),
        "access_log": str(shared_dir / "access.log")})
    switched(fp, pwd.getpwnam("nobody").pw_uid)

    r = admin_post(admin, f"/servers/p/{b.addr}/drain")
    assert r.status_code == 200 and r.json()["after"] == "drain", r.text
    r = admin_post(admin, f"/servers/p/{b.addr}/weight/7")
    assert r.status_code == 200 and r.json()["after"] == 7, r.text
    server = fp.ctl_status()["pools"][0]["servers"][0]
    assert (server["admin"], server["weight"]) == ("drain", 7)

    r = admin_post(admin, "/reload")
    assert r.status_code == 200, r.text
    wait_until(lambda: "reload 1: generation 2 serves" in fp.error_log(),
               what="the reload the admin endpoint asked for")

    # The table handed back to root: the workers' user may no longer write it.
    os.chown(shared_dir / "run" / "health.tbl", 0, 0)
    r = admin_post(admin, f"/servers/p/{b.addr}/ready")
    assert r.status_code == 500
    assert "Permission denied" in r.text and "health.tbl" in r.text
    wait_until(lambda: "admin: POST /servers/p/" in fp.error_log(), what="the error-log line")
    assert "Permission denied" in fp.error_log()
    assert fp.ctl_status()["pools"][0]["servers"][0]["admin"] == "drain"


def test_usr1_and_reload_never_open_a_log_through_a_symlink(forkproxy_factory, backend_factory,
                                                   shared_dir):
    """The workers' user may write in the log directory: a symlink it puts in
    place of a log must not make root append to the file it names, nor give it
    that file.  The reopen is refused and said; the old files stay in use."""
    b = backend_factory("b")
    port = free_port()
    access, error = shared_dir / "access.log", shared_dir / "error.log"
    fp = forkproxy_factory(one_pool(port, [b.addr], pool="p"), server={
        "user": "nobody", "runtime_dir": str(shared_dir / "run"),
        "access_log": str(access), "error_log": str(error)})
    switched(fp, pwd.getpwnam("nobody").pw_uid)
    secrets = {}
    for log in (access, error):
        target = shared_dir / f"{log.stem}.target"
        target.write_text("root's\n")
        os.chmod(target, 0o600)
        os.rename(log, f"{log}.1")
        os.symlink(target, log)
        secrets[target] = target.read_text()

    fp.signal(signal.SIGUSR1)
    old_error = Path(f"{error}.1")
    wait_until(lambda: old_error.read_text().count("it is a symbolic link") >= 2,
               what="both refusals in the error log")
    fp.reload()  # the master opens the error log again: it keeps the old one, and lives
    wait_until(lambda: "reload 1: generation 2 serves" in old_error.read_text(),
               what="the reload, logged in the file still in use")
    assert "keeping the error log in use" in old_error.read_text()
    for target, text in secrets.items():
        assert target.read_text() == text
        assert os.stat(target).st_uid == 0
    assert requests.get(f"http://127.0.0.1:{port}/?still", timeout=10).status_code == 200
    wait_until(lambda: "?still" in Path(f"{access}.1").read_text(),
               what="the request in the old access log")


def run_t(config: Path, python: str | None = None, env=None):
    import subprocess
    import sys
    return subprocess.run([python or sys.executable, "-m", "forkproxy", "-t", "-c", str(config)],
                          capture_output=True, text=True, timeout=60, env=env)


def test_t_checks_what_the_user_can_read_and_reach(tmp_path, shared_dir, private_python):
    """Issue 17: -t passed while the workers could not read Python.  Now -t asks,
    as server.user, for the interpreter's library and forkproxy's modules, the log
    directories (USR1 reopens there: a warning) and, with the admin endpoint,
    runtime_dir."""
    private_logs = tmp_path / "logs"  # pytest's tmp_path: root's, 0700 above it
    private_logs.mkdir()
    conf = tmp_path / "forkproxy.toml"
    conf.write_text(f"""[server]
user = "nobody"
runtime_dir = "{tmp_path / 'run'}"
admin = "127.0.0.1:{free_port()}"
error_log = "{private_logs / 'error.log'}"
access_log = "{shared_dir / 'access.log'}"
""" + one_pool(free_port(), ["127.0.0.1:9"], pool="p"))
    out = run_t(conf)
    assert out.returncode == 1
    lines = out.stderr.splitlines()
    assert f'forkproxy: warning: {conf}: server.error_log: server.user "nobody" cannot reach ' \
           f"{private_logs}: its workers could not reopen the log on USR1 and would go on " \
           "writing to the rotated file (chmod o+x the directory)" in lines, out.stderr
    assert not any("server.access_log" in line for line in lines)
    assert any(line.startswith(f'{conf}: server.runtime_dir: server.user "nobody" cannot reach ')
               for line in lines), out.stderr
    assert "cannot read" not in out.stderr  # this Python is readable by everyone

    conf.write_text(conf.read_text().replace(str(private_logs), str(shared_dir))
                    .replace(str(tmp_path / "run"), str(shared_dir / "run")))
    out = run_t(conf)
    assert out.returncode == 0 and "warning" not in out.stderr, out.stderr

    python, pythonpath, private = private_python
    os.chmod(private, 0o700)
    out = run_t(conf, python, env={**os.environ, "PYTHONPATH": pythonpath})
    assert out.returncode == 1
    assert f'{conf}: server.user: "nobody" cannot read {private}/lib/' in out.stderr, out.stderr
    assert "pyenv under /root" in out.stderr
