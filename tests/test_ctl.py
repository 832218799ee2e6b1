"""forkproxyctl against a real health table file, run as a real process.

Each test builds the table the master would (``daemon.shm.create`` under a
``runtime_dir`` in tmp_path, rows labelled ``POOL/ADDR`` in config order),
writes rows with the table API, runs ``python -m forkproxy.ctl`` and checks
its output, exit status, and what it wrote back into the table.
"""

import ast
import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

from forkproxy import ctl
from forkproxy.core.table import AdminRow, HealthRow
from forkproxy.ctl.render import render_status
from forkproxy.daemon import shm

pytestmark = pytest.mark.timeout(120)

ROOT = pathlib.Path(__file__).resolve().parent.parent
LABELS = ["web/127.0.0.1:8081", "web/127.0.0.1:8082", "api/10.0.0.1:80"]

CONFIG = """\
[server]
runtime_dir = "{run}"
pidfile = "{pidfile}"

[[listener]]
name = "web"
bind = "127.0.0.1:8080"

[[route]]
pool = "web"

[pool.web]
servers = [{{ addr = "127.0.0.1:8081" }}, {{ addr = "127.0.0.1:8082" }}]

[pool.api]
servers = [{{ addr = "10.0.0.1:80" }}]
"""


class Env:
    """A runtime dir with a config file pointing at it; ``make_table`` adds the table."""

    def __init__(self, tmp_path):
        self.run_dir = tmp_path / "run"
        self.run_dir.mkdir()
        self.pidfile = self.run_dir / "forkproxy.pid"
        # The test process stands in for a running master.
        self.pidfile.write_text(f"{os.getpid()}\n")
        self.conf = tmp_path / "forkproxy.toml"
        self.conf.write_text(CONFIG.format(run=self.run_dir, pidfile=self.pidfile))
        self.table_path = str(self.run_dir / "health.tbl")
        self.table = None

    def make_table(self, generation=7, n_slots=2):
        _, self.table = shm.create(self.table_path, len(LABELS), n_slots, generation, labels=LABELS)
        return self.table

    def ctl(self, *args, conf=True, env=None):
        cmd = [sys.executable, "-m", "forkproxy.ctl"]
        if conf:
            cmd += ["-c", str(self.conf)]
        return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=60,
                              cwd=ROOT, env=env)

    def admin(self, label):
        """The admin cell as a fresh reader sees it."""
        t = shm.open_table(self.table_path)
        try:
            return t.read_admin(t.find(label))
        finally:
            shm.close_table(t)

    def close(self):
        if self.table is not None:
            shm.close_table(self.table)


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path)
    yield e
    e.close()


def fill(t, now):
    """Row 0 up with load, row 1 down after failed checks, row 2 never written."""
    t.write_health(0, HealthRow("up", 2, 0, now - 1, "ok", 0.0034, now - 125,
                                "2 successful checks, last: ok"))
    t.write_health(1, HealthRow("down", 0, 3, now - 0.5, "refused", 0.0002, now - 4000,
                                "3 failed checks, last: refused"))
    t.inflight_add(0, 0, 3)
    t.inflight_add(0, 1, 2)


# -- status ------------------------------------------------------------------------------


def test_status_prints_every_server_in_table_order(env):
    fill(env.make_table(), time.time())
    r = env.ctl("status")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    lines = r.stdout.splitlines()
    assert lines[0] == f"health table {env.table_path}, generation 7, no active checker"
    assert lines[1].split() == ["POOL", "SERVER", "HEALTH", "ADMIN", "CHECK", "INFLIGHT", "SINCE", "WHY"]
    rows = [l.split(None, 7) for l in lines[2:]]
    assert [r_[:2] for r_ in rows] == [l.split("/") for l in LABELS]
    web1, web2, api = (l for l in lines[2:])
    assert web1.split()[2:10] == ["UP", "ready", "ok", "3.4ms", "5", "2m", "2", "successful"]
    assert web1.endswith("2 successful checks, last: ok")
    assert web2.split()[2:8] == ["DOWN", "ready", "refused", "0.2ms", "0", "1h"]
    assert api.split()[2:] == ["UNKNOWN", "ready", "-", "0", "-", "-"]


def test_status_json(env):
    now = time.time()
    fill(env.make_table(), now)
    for args in (["--json", "status"], ["status", "--json"]):
        r = env.ctl(*args)
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        assert doc["generation"] == 7
        assert doc["checker_pid"] is None
        assert doc["master_pid"] == os.getpid()
        assert [p["name"] for p in doc["pools"]] == ["web", "api"]
        web1, web2 = doc["pools"][0]["servers"]
        assert web1 == {
            "addr": "127.0.0.1:8081", "health": "up", "admin": "ready", "weight": None,
            "config_weight": 1, "inflight": 5, "last_check": pytest.approx(now - 1), "last_result": "ok",
            "latency": pytest.approx(0.0034), "last_change": pytest.approx(now - 125),
            "reason": "2 successful checks, last: ok", "admin_changed": None,
            "admin_by": None, "passive_failures": 0, "passive_out": False,
            "origin": "config", "member": "active", "ejected": False, "ejected_until": None,
            "ejection_reason": None, "ejections": 0, "seen": None,
        }
        assert web2["health"] == "down" and web2["last_result"] == "refused"
        (api,) = doc["pools"][1]["servers"]
        assert api["addr"] == "10.0.0.1:80"
        assert api["health"] is None and api["last_check"] is None and api["reason"] is None


def test_status_shows_passive_failures(env):
    t = env.make_table()
    fill(t, time.time())
    t.passive_fail(1, 1, time.time(), 10.0)
    doc = json.loads(env.ctl("--json", "status").stdout)
    web2 = doc["pools"][0]["servers"][1]
    assert web2["passive_failures"] == 1
    assert web2["passive_out"] is True  # max_fails defaults to 1, as in nginx
    line = env.ctl("status").stdout.splitlines()[3]
    assert "1 failed request (max_fails); 3 failed checks" in line


def test_status_says_ejected_by_outlier_detection():
    now = 1000.0
    server = {"addr": "127.0.0.1:8081", "health": "up", "admin": "ready", "weight": None,
              "last_check": None, "inflight": 0, "last_change": None, "reason": None,
              "admin_changed": None, "admin_by": None, "passive_failures": 0,
              "passive_out": False, "ejected": True, "ejected_until": now + 30.5,
              "ejection_reason": "5 consecutive 5xx", "ejections": 1}
    doc = {"generation": 1, "checker_pid": None, "pools": [{"name": "web", "servers": [server]}]}
    line = render_status(doc, now, "x").splitlines()[-1]
    assert line.split()[2] == "EJECTED"
    assert line.endswith("ejected (outlier: 5 consecutive 5xx) for 30s")
    down = render_status({**doc, "pools": [{"name": "web", "servers": [
        {**server, "health": "down"}]}]}, now, "x").splitlines()[-1]
    assert down.split()[2] == "DOWN"  # the active checks' verdict first


def test_status_says_out_and_kept_in_rotation(env):
    # web: two servers up; one failure each.  max_ejection_percent 50 lets
    # one of the two out (the lower index on a tie): OUT, not UP; the other
    # keeps taking requests and its failure is shown as such.  The pool of
    # one (api) counts its failure and is never out.
    now = time.time()
    t = env.make_table()
    up = HealthRow("up", 2, 0, now - 1, "ok", 0.001, now - 100, "2 successful checks, last: ok")
    for row in (0, 1, 2):
        t.write_health(row, up)
    for row in (0, 1, 2):
        t.passive_fail(row, 0, now, 10.0)
    doc = json.loads(env.ctl("--json", "status").stdout)
    web1, web2 = doc["pools"][0]["servers"]
    (api,) = doc["pools"][1]["servers"]
    assert [(s["passive_failures"], s["passive_out"]) for s in (web1, web2, api)] == \
        [(1, True), (1, False), (1, False)]
    lines = env.ctl("status").stdout.splitlines()[2:]
    assert lines[0].split()[2] == "OUT" and "1 failed request (max_fails);" in lines[0]
    assert lines[1].split()[2] == "UP" and "1 failed request (max_fails, kept in rotation)" in lines[1]
    assert lines[2].split()[2] == "UP" and "kept in rotation" in lines[2]


def test_a_successful_check_forgives_earlier_passive_failures(env):
    now = time.time()
    t = env.make_table()
    t.passive_fail(0, 0, now - 2, 10.0)
    t.write_health(0, HealthRow("up", 1, 0, now - 1, "ok", 0.001, now - 100, "init"))
    web1 = json.loads(env.ctl("--json", "status").stdout)["pools"][0]["servers"][0]
    assert (web1["passive_failures"], web1["passive_out"]) == (0, False)


def test_status_names_the_checker_holding_the_lock(env):
    env.make_table()
    lock = env.run_dir / "checker.lock"
    lock.touch()
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, os, sys\n"
         f"fd = os.open({str(lock)!r}, os.O_RDWR)\n"
         "fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
         "print('locked', flush=True)\n"
         "sys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        assert ctl.checker_pid(str(lock)) == holder.pid
        r = env.ctl("status")
        assert r.stdout.splitlines()[0].endswith(f"checker pid {holder.pid}")
        assert json.loads(env.ctl("--json", "status").stdout)["checker_pid"] == holder.pid
    finally:
        holder.stdin.close()  # the holder exits on EOF; the kernel frees the lock
        holder.wait(timeout=30)
        holder.stdout.close()
    assert ctl.checker_pid(str(lock)) is None


def test_checker_pid_without_a_lock_file(tmp_path):
    assert ctl.checker_pid(str(tmp_path / "checker.lock")) is None


def test_status_warns_when_the_pidfile_names_no_process(env):
    env.make_table()
    env.pidfile.unlink()
    r = env.ctl("status")
    assert r.returncode == 3  # LSB "not running": `forkproxyctl status || alert` fires
    assert "no running master" in r.stderr and "stale" in r.stderr
    assert json.loads(env.ctl("--json", "status").stdout)["master_pid"] is None


def test_status_shows_the_latest_admin_change(env):
    now = time.time()
    t = env.make_table()
    fill(t, now)
    t.write_admin(0, AdminRow("drain", 5, now - 10, "forkproxyctl alice"))
    line = env.ctl("status").stdout.splitlines()[2]
    assert line.split()[2:5] == ["UP", "drain", "w=5"]
    assert line.endswith("drain by forkproxyctl alice")


@pytest.mark.parametrize("age, text", [(None, "-"), (-3, "0s"), (0, "0s"), (59.9, "59s"),
                                       (60, "1m"), (3599, "59m"), (3600, "1h"),
                                       (86400 * 3 + 5, "3d")])
def test_format_age(age, text):
    assert ctl.format_age(age) == text


# -- admin commands --------------------------------------------------------------------------


def test_drain_maint_ready_change_the_admin_cell_and_are_idempotent(env):
    env.make_table()
    label = "web/127.0.0.1:8082"
    before = "ready"
    for state in ("drain", "drain", "maint", "ready", "ready"):
        r = env.ctl(state, "web", "127.0.0.1:8082")
        assert r.returncode == 0, r.stderr
        cell = env.admin(label)
        assert cell.state == state
        assert cell.weight == 0
        assert cell.by.startswith("forkproxyctl ")
        if before == state:
            assert r.stdout == f"{label}: already {state}\n"
            assert cell == previous  # nothing rewritten: who and when stay true
        else:
            assert r.stdout == f"{label}: {before} -> {state}\n"
        before, previous = state, cell
    # The other rows were not touched.
    assert env.admin("web/127.0.0.1:8081") == AdminRow()
    assert env.admin("api/10.0.0.1:80") == AdminRow()


def test_weight_overrides_and_clears_independently_of_the_state(env):
    env.make_table()
    label = "api/10.0.0.1:80"
    assert env.ctl("maint", "api", "10.0.0.1:80").returncode == 0
    r = env.ctl("weight", "api", "10.0.0.1:80", "5")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{label}: weight config -> 5\n"
    assert (env.admin(label).state, env.admin(label).weight) == ("maint", 5)
    assert env.ctl("weight", "api", "10.0.0.1:80", "5").stdout == f"{label}: weight already 5\n"
    assert env.ctl("ready", "api", "10.0.0.1:80").returncode == 0
    assert (env.admin(label).state, env.admin(label).weight) == ("ready", 5)
    for clear in ("config", "-1"):
        r = env.ctl("--json", "weight", "api", "10.0.0.1:80", clear)
        assert r.returncode == 0, r.stderr
        assert env.admin(label).weight == 0
    assert json.loads(r.stdout) == {"server": label, "field": "weight", "before": None,
                                    "after": None, "changed": False}


@pytest.mark.parametrize("value", ["0", "1001", "-2", "two"])
def test_weight_out_of_range_is_a_usage_error(env, value):
    env.make_table()
    r = env.ctl("weight", "api", "10.0.0.1:80", value)
    assert r.returncode == 2
    assert env.admin("api/10.0.0.1:80") == AdminRow()


def test_admin_json_output(env):
    env.make_table()
    r = env.ctl("--json", "drain", "web", "127.0.0.1:8081")
    assert json.loads(r.stdout) == {"server": "web/127.0.0.1:8081", "field": "admin",
                                    "before": "ready", "after": "drain", "changed": True}


def test_unknown_server_or_pool_exits_1_naming_the_known_ones(env):
    env.make_table()
    r = env.ctl("drain", "web", "127.0.0.1:9999")
    assert r.returncode == 1
    assert "no server '127.0.0.1:9999' in pool 'web'" in r.stderr
    assert "127.0.0.1:8081, 127.0.0.1:8082" in r.stderr
    r = env.ctl("maint", "nope", "127.0.0.1:8081")
    assert r.returncode == 1
    assert "no pool 'nope'" in r.stderr and "web, api" in r.stderr
    assert all(env.admin(l) == AdminRow() for l in LABELS)


def test_admin_writes_wait_for_the_admin_lock(env):
    """A change made while another writer holds the lock lands after it lets go."""
    locks = pathlib.Path("/proc/locks")
    if not locks.exists():
        pytest.skip("no /proc/locks to see the waiter")
    env.make_table()
    with shm.admin_lock(env.table_path):
        # lockf locks are per process: the child cannot take it until we release.
        p = subprocess.Popen([sys.executable, "-m", "forkproxy.ctl", "-c", str(env.conf),
                              "drain", "web", "127.0.0.1:8081"], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # Poll for the child blocking on our lock: the kernel lists waiters
        # in /proc/locks as "N: -> POSIX ADVISORY WRITE PID ...".
        deadline = time.monotonic() + 30
        while not any(l.split()[1:2] == ["->"] and str(p.pid) in l.split()
                      for l in locks.read_text().splitlines()):
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < deadline, "forkproxyctl never blocked on the admin lock"
            time.sleep(0.01)
        assert p.poll() is None
        assert env.admin("web/127.0.0.1:8081").state == "ready"
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert env.admin("web/127.0.0.1:8081").state == "drain"


# -- failures ----------------------------------------------------------------------------


@pytest.mark.parametrize("args", [["status"], ["drain", "web", "127.0.0.1:8081"]])
def test_missing_table_says_forkproxy_is_not_running(env, args):
    r = env.ctl(*args)
    assert r.returncode == 1
    assert r.stderr == ("forkproxyctl: forkproxy does not seem to be running: "
                        f"no health table at {env.table_path}\n")
    assert os.listdir(env.run_dir) == ["forkproxy.pid"]  # no lock file left behind


def test_missing_runtime_dir_says_forkproxy_is_not_running(env):
    env.pidfile.unlink()
    env.run_dir.rmdir()
    r = env.ctl("status")
    assert r.returncode == 1
    assert "does not seem to be running" in r.stderr


def test_a_file_that_is_not_a_table(env):
    pathlib.Path(env.table_path).write_bytes(b"x" * 128)
    r = env.ctl("status")
    assert r.returncode == 1
    assert "is not a health table" in r.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_permission_denied(env):
    env.make_table()
    os.chmod(env.table_path, 0)
    try:
        r = env.ctl("status")
        assert r.returncode == 1
        assert "permission denied" in r.stderr
    finally:
        os.chmod(env.table_path, 0o644)


def test_broken_config_prints_its_errors_and_exits_1(env):
    env.make_table()
    env.conf.write_text(env.conf.read_text() + "\n[server]\nworkers = 0\n")
    r = env.ctl("status")
    assert r.returncode == 1
    assert str(env.conf) in r.stderr
    assert r.stdout == ""


def test_config_from_the_environment(env):
    env.make_table()
    r = env.ctl("status", conf=False, env=dict(os.environ, FORKPROXY_CONFIG=str(env.conf)))
    assert r.returncode == 0, r.stderr
    r = env.ctl("status", conf=False, env=dict(os.environ, FORKPROXY_CONFIG=str(env.conf) + ".no"))
    assert r.returncode == 1
    assert "cannot read" in r.stderr


@pytest.mark.parametrize("args", [[], ["purge"], ["purge", "http://x/", "--host", "x"],
                                  ["purge", "/relative"], ["reload", "--timeout", "0"],
                                  ["explain", "GET", "/"], ["explain", "GET"],
                                  ["explain", "GET", "http://x/", "-H", "no colon"],
                                  ["drain", "web"], ["status", "extra"], ["--bogus", "status"]])
def test_usage_errors_exit_2(env, args):
    r = env.ctl(*args)
    assert r.returncode == 2
    assert "usage:" in r.stderr


@pytest.mark.parametrize("argv, config, as_json", [
    (["status"], None, False),
    (["-c", "F", "--json", "status"], "F", True),
    (["status", "--json", "-c", "F"], "F", True),
    (["--json", "status", "--config", "F"], "F", True),
    (["status", "--config=F"], "F", False),
    (["-c", "A", "status", "-c", "F"], "F", False),  # the later one wins
    (["--json", "status", "-c", "F"], "F", True),  # a flag before is kept after
    (["drain", "web", "s", "-c", "F", "--json"], "F", True),
    (["-c", "F", "weight", "--json", "web", "s", "2"], "F", True),
    (["explain", "GET", "http://a/", "-c", "F", "-H", "Host: b"], "F", False),
    (["reload", "--no-wait", "--json", "-c", "F"], "F", True),
    (["purge", "--host", "h", "-c", "F"], "F", False),
])
def test_global_options_before_or_after_the_command(argv, config, as_json):
    args = ctl.build_parser().parse_args(argv)
    assert (args.config, args.json) == (config, as_json)


# The positional arguments of each command, for the test below; a command added
# to ctl.COMMANDS without an entry here fails it.
_COMMAND_ARGS = {"status": [], "drain": ["web", "s"], "maint": ["web", "s"], "ready": ["web", "s"],
                 "weight": ["web", "s", "2"], "metrics": [], "purge": ["http://a/x"],
                 "reload": [], "explain": ["GET", "http://a/"],
                 "add-server": ["web", "10.0.0.9:80", "--weight", "2"],
                 "remove-server": ["web", "10.0.0.9:80"]}


@pytest.mark.parametrize("name", [c[0] for c in ctl.COMMANDS])
def test_every_command_takes_the_global_options_before_or_after_its_name(name):
    args = _COMMAND_ARGS[name]
    parse = ctl.build_parser().parse_args
    for argv in (["-c", "F", "--json", name, *args], [name, *args, "--json", "-c", "F"],
                 ["--json", name, "--config", "F", *args]):
        parsed = parse(argv)
        assert (parsed.command, parsed.config, parsed.json) == (name, "F", True), argv


def test_a_change_with_no_running_master_exits_1_and_writes_nothing(env):
    env.make_table()
    env.pidfile.write_text("999999999\n")  # above pid_max: never a process
    for args in (["drain"], ["maint"], ["weight", "5"]):
        r = env.ctl(args[0], "web", "127.0.0.1:8081", *args[1:])
        assert r.returncode == 1, r.stdout
        assert r.stderr == (f"forkproxyctl: forkproxy is not running: no process per "
                            f"{env.pidfile}; nothing changed (the table {env.table_path} "
                            "is not in use)\n")
        assert env.admin("web/127.0.0.1:8081") == AdminRow("ready", 0, 0.0, "")
    assert sorted(os.listdir(env.run_dir)) == ["forkproxy.pid", "health.tbl"]  # no lock file


def test_help_exits_0(env):
    r = env.ctl("--help", conf=False)
    assert r.returncode == 0
    for command in ("status", "drain", "maint", "ready", "weight"):
        assert command in r.stdout


# -- layering ----------------------------------------------------------------------------


def test_ctl_imports_no_daemon_and_of_net_only_the_checker_lock_reader():
    names = set()
    for node in (n for path in sorted((ROOT / "forkproxy" / "ctl").glob("*.py"))
                 for n in ast.walk(ast.parse(path.read_text()))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
    # the table, the pidfile and reload.json are forkproxy.control's
    assert {n for n in names if n.startswith("forkproxy.daemon")} == set()
    assert {n for n in names if n.startswith("forkproxy.net")} == {"forkproxy.net.leader.holder_pid"}


def test_importing_ctl_pulls_in_no_gunicorn_gevent_or_requests():
    code = ("import sys, forkproxy.ctl\n"
            "bad = [m for m in ('gunicorn', 'gevent', 'requests', 'pylibmc') if m in sys.modules]\n"
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_help_option_is_in_forkproxyctl_8_and_back(env):
    from test_docs import MAN, help_options, man_options
    r = env.ctl("--help", conf=False)
    assert help_options(r.stdout) == man_options(MAN / "forkproxyctl.8")


@pytest.mark.parametrize("before, after", [
    (["--timeout", "5", "reload"], ["reload", "--timeout", "5"]),
    (["--timeout=5", "--no-wait", "reload"], ["reload", "--timeout=5", "--no-wait"]),
    (["--host", "h", "-c", "F", "purge"], ["purge", "--host", "h", "-c", "F"]),
    (["-H", "Host: b", "--listener", "web", "explain", "GET", "http://a/"],
     ["explain", "GET", "http://a/", "-H", "Host: b", "--listener", "web"]),
    (["-c", "status", "--json", "status"], ["status", "-c", "status", "--json"]),  # a value, not the command
])
def test_a_commands_own_options_are_taken_before_its_name_too(before, after):
    assert ctl.parse_args(before) == ctl.parse_args(after)
