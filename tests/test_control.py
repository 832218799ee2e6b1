"""forkproxy.control, the one owner of each operator action, on real files.

Pure parts, table-driven: the pidfile, a server's admin cell in a real
table file (made as the master makes it, ``daemon.shm.create``), parsing a
weight, and ``reload.json`` as masters old and new write it.  The callers
(the admin endpoint, ``forkproxy -s``, forkproxyctl) are covered end to end
by tests/test_ctl*.py, tests/e2e/test_admin.py and tests/daemon/.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forkproxy import control
from forkproxy.core.table import AdminRow
from forkproxy.daemon import shm

LABELS = ["web/127.0.0.1:8081", "web/127.0.0.1:8082", "api/10.0.0.1:80"]


def _dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# -- the pidfile -----------------------------------------------------------------------


@pytest.mark.parametrize("content, expected", [
    ("1234\n", 1234),
    ("  42  ", 42),
    ("7", 7),
    ("", "cannot read the pid from"),
    ("abc\n", "cannot read the pid from"),
    ("12 13\n", "cannot read the pid from"),
    # kill(0, sig) signals the caller's whole process group, kill(-N) a group:
    # never a master's pid.
    ("0\n", "0 is not a process id"),
    ("-5\n", "-5 is not a process id"),
    ("\xff\n", "cannot read the pid from"),
])
def test_read_pid(tmp_path, content, expected):
    path = tmp_path / "forkproxy.pid"
    path.write_text(content, encoding="latin-1")
    if isinstance(expected, int):
        assert control.read_pid(str(path)) == expected
    else:
        with pytest.raises(control.ControlError) as exc:
            control.read_pid(str(path))
        assert expected in exc.value.message and str(path) in exc.value.message


def test_read_pid_of_a_missing_pidfile_says_so(tmp_path):
    path = str(tmp_path / "none.pid")
    with pytest.raises(control.ControlError) as exc:
        control.read_pid(path)
    assert exc.value.message == f"no pidfile at {path}: is forkproxy running?"


@pytest.mark.parametrize("content, running", [
    (lambda: str(os.getpid()), True),
    (lambda: str(_dead_pid()), False),
    (lambda: "0", False),
    (lambda: "junk", False),
    (None, False),  # no pidfile
])
def test_master_pid_is_the_pid_only_while_it_runs(tmp_path, content, running):
    path = tmp_path / "forkproxy.pid"
    if content is not None:
        path.write_text(content() + "\n")
    pid = control.master_pid(str(path))
    assert pid == (os.getpid() if running else None)


def test_signal_master_names_a_process_that_is_gone():
    pid = _dead_pid()
    with pytest.raises(control.NotRunning):
        control.signal_master(pid, 0)
    control.signal_master(os.getpid(), 0)  # signal 0: only "may I?"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may signal every process")
def test_signal_master_refused_is_not_allowed():
    with pytest.raises(control.NotAllowed) as exc:
        control.signal_master(1, 0)
    assert exc.value.message == "not allowed to signal process 1"


# -- the admin cell --------------------------------------------------------------------


@pytest.fixture
def table(tmp_path):
    path = str(tmp_path / control.TABLE_NAME)
    _, t = shm.create(path, len(LABELS), 2, 3, labels=LABELS)
    yield path
    shm.close_table(t)


def _cell(path: str, label: str) -> AdminRow:
    t = control.open_table(path)
    try:
        return t.read_admin(t.find(label))
    finally:
        control.close_table(t)


# (what the cell holds first, the change, what it holds after, whether it was written)
TRANSITIONS = [
    (("ready", 0), {"state": "drain"}, ("drain", 0), True),
    (("ready", 0), {"state": "maint"}, ("maint", 0), True),
    (("drain", 0), {"state": "ready"}, ("ready", 0), True),
    (("maint", 5), {"state": "drain"}, ("drain", 5), True),  # the weight stays
    (("drain", 0), {"state": "drain"}, ("drain", 0), False),  # already: nothing written
    (("ready", 0), {"weight": 7}, ("ready", 7), True),
    (("drain", 7), {"weight": 0}, ("drain", 0), True),  # back to the configured weight
    (("ready", 7), {"weight": 7}, ("ready", 7), False),
    (("maint", 3), {"state": "ready", "weight": 9}, ("ready", 9), True),
    (("ready", 0), {}, ("ready", 0), False),  # nothing asked
]


@pytest.mark.parametrize("first, change, after, written", TRANSITIONS)
def test_set_admin_transitions(table, first, change, after, written):
    label = "web/127.0.0.1:8082"
    start = AdminRow(first[0], first[1], 100.0, "earlier")
    with control.admin_lock(table):
        t = control.open_table(table, writable=True)
        t.write_admin(t.find(label), start)
        control.close_table(t)
    old, new = control.set_admin(table, "web", "127.0.0.1:8082", by="tester", now=200.0,
                                 **change)
    assert old == start
    expected = AdminRow(*after, 200.0, "tester") if written else start
    assert new == expected
    assert _cell(table, label) == expected
    # the other rows are untouched
    assert _cell(table, "web/127.0.0.1:8081") == AdminRow("ready", 0, 0.0, "")


@pytest.mark.parametrize("pool, server, message", [
    ("db", "1.2.3.4:5", "no pool 'db' in the health table; pools: web, api"),
    ("web", "127.0.0.1:9999",
     "no server '127.0.0.1:9999' in pool 'web'; servers: 127.0.0.1:8081, 127.0.0.1:8082"),
    ("web/127.0.0.1:8081", "", "no pool 'web/127.0.0.1:8081' in the health table"),
])
def test_set_admin_names_what_exists_when_the_server_does_not(table, pool, server, message):
    with pytest.raises(control.NoSuchServer) as exc:
        control.set_admin(table, pool, server, state="drain", by="tester")
    assert exc.value.message.startswith(message)


def test_set_admin_on_a_missing_table_leaves_nothing_behind(tmp_path):
    path = str(tmp_path / control.TABLE_NAME)
    with pytest.raises(FileNotFoundError) as exc:
        control.set_admin(path, "web", "127.0.0.1:8081", state="drain", by="tester")
    assert exc.value.filename == path
    assert os.listdir(tmp_path) == []  # no lock file either


def test_set_admin_refuses_a_state_that_is_not_one(table):
    with pytest.raises(ValueError):
        control.set_admin(table, "web", "127.0.0.1:8081", state="up", by="tester")
    assert _cell(table, "web/127.0.0.1:8081") == AdminRow("ready", 0, 0.0, "")


# -- weights ---------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("1", 1), ("1000", 1000), ("config", 0), ("-1", 0), ("42", 42),
    ("0", "weight 0 is not supported"),
    ("1001", "expected 1..1000 or 'config', got 1001"),
    ("-2", "expected 1..1000 or 'config', got -2"),
    ("abc", "expected 1..1000 or 'config', got 'abc'"),
    ("", "expected 1..1000 or 'config', got ''"),
    ("1.5", "expected 1..1000 or 'config', got '1.5'"),
])
def test_parse_weight(text, expected):
    if isinstance(expected, int):
        assert control.parse_weight(text) == expected
    else:
        with pytest.raises(ValueError, match=expected.replace(".", r"\.")):
            control.parse_weight(text)


@given(st.integers(min_value=-10**6, max_value=10**6))
def test_parse_weight_takes_exactly_the_configurable_weights(n):
    if 1 <= n <= control.WEIGHT_MAX:
        assert control.parse_weight(str(n)) == n
    elif n == -1:
        assert control.parse_weight(str(n)) == 0
    else:
        with pytest.raises(ValueError):
            control.parse_weight(str(n))


# -- the configuration file ------------------------------------------------------------


@pytest.mark.parametrize("given_, env, expected", [
    ("a.toml", "b.toml", "a.toml"),
    (None, "b.toml", "b.toml"),
    (None, None, control.DEFAULT_CONFIG),
    (None, "", control.DEFAULT_CONFIG),
])
def test_config_path(monkeypatch, given_, env, expected):
    if env is None:
        monkeypatch.delenv("FORKPROXY_CONFIG", raising=False)
    else:
        monkeypatch.setenv("FORKPROXY_CONFIG", env)
    assert control.config_path(given_) == expected


# -- reload.json -----------------------------------------------------------------------


@pytest.mark.parametrize("content, expected", [
    ('{"reload": 3, "generation": 5, "state": "serving", "errors": [], "pid": 9}',
     {"reload": 3, "generation": 5, "state": "serving", "errors": [], "pid": 9}),
    ('{"generation": 4, "state": "rejected", "pid": 9}',  # before "reload" existed
     {"generation": 4, "state": "rejected", "pid": 9}),
    ('[1, 2]', None),
    ('{"reload": 3', None),  # never seen (the master renames it into place), still no crash
    ('', None),
    (None, None),  # no file: no reload yet
])
def test_read_reload_status(tmp_path, content, expected):
    if content is not None:
        (tmp_path / control.RELOAD_STATUS_NAME).write_text(content)
    assert control.read_reload_status(str(tmp_path)) == expected


@pytest.mark.parametrize("status, number", [
    ({"reload": 3, "generation": 7}, 3),
    ({"generation": 7}, 7),  # older masters counted reloads in "generation"
    ({"reload": "3"}, 0),
    ({}, 0),
])
def test_reload_number(status, number):
    assert control.reload_number(status) == number


def _write_status(directory, **doc):
    (directory / control.RELOAD_STATUS_NAME).write_text(json.dumps(doc))


# (before the request, after it, the result); the pid is filled in: this process.
WAITS = [
    ({"reload": 1, "state": "serving"}, {"reload": 2, "state": "serving"}, (True, [])),
    ({"reload": 1, "state": "serving"}, {"reload": 2, "state": "rejected", "errors": ["x: y"]},
     (False, ["x: y"])),
    ({"reload": 1, "state": "serving"}, {"reload": 2, "state": "rejected"}, (False, ["rejected"])),
    (None, {"reload": 1, "state": "serving"}, (True, [])),  # the first reload
    ({"generation": 4, "state": "serving"}, {"generation": 5, "state": "serving"}, (True, [])),
    # still the old status, or the new one only loading: no answer before the timeout
    ({"reload": 2, "state": "serving"}, {"reload": 2, "state": "serving"},
     (False, ["no new generation serving after 0s"])),
    ({"reload": 2, "state": "serving"}, {"reload": 3, "state": "loading"},
     (False, ["no new generation serving after 0s"])),
]


@pytest.mark.parametrize("before, after, result", WAITS)
def test_reload_and_wait(tmp_path, before, after, result):
    pid = os.getpid()
    if before is not None:
        _write_status(tmp_path, pid=pid, **before)
    asked = []

    def ask():
        asked.append(True)
        _write_status(tmp_path, pid=pid, **after)

    assert control.reload_and_wait(str(tmp_path), pid, ask, 0) == result
    assert asked == [True]


def test_a_status_of_another_master_does_not_count(tmp_path):
    """A status written by a master with another pid (the one before a restart)
    is no answer: only the signalled master's counts."""
    _write_status(tmp_path, pid=os.getpid() + 1, reload=9, state="serving")
    assert control.wait_reload(str(tmp_path), os.getpid(), None, 0) == (
        False, ["no new generation serving after 0s"])


def test_wait_reload_notices_the_master_exit(tmp_path):
    pid = _dead_pid()
    assert control.wait_reload(str(tmp_path), pid, None, 60) == (
        False, [f"the master (pid {pid}) exited during the reload"])


def test_reload_and_wait_without_a_timeout_only_asks(tmp_path):
    asked = []
    assert control.reload_and_wait(None, 1, lambda: asked.append(True), None) == (True, [])
    assert asked == [True]


def test_reload_and_wait_propagates_a_failed_request(tmp_path):
    def ask():
        raise control.NotAllowed("not allowed to signal process 1")

    with pytest.raises(control.NotAllowed):
        control.reload_and_wait(str(tmp_path), 1, ask, 10)
