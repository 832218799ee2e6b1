"""``forkproxyctl reload`` against a real master: through the admin endpoint, or SIGHUP.

Each test starts a real forkproxy (2 workers) and real backends on
127.0.0.1; a reload rewrites the configuration to send the route to another
backend, so "the new generation serves" is checked by where requests go.
"""

from __future__ import annotations

import json
import shutil

import pytest
import requests

from support.configs import one_pool
from support.procs import free_port, wait_until

pytestmark = pytest.mark.timeout(180)

TOKEN = "reload-token"


def body(port: int, backend) -> str:
    return one_pool(port, [backend.addr])


def served_by(port: int) -> str:
    r = requests.get(f"http://127.0.0.1:{port}/", headers={"Connection": "close"}, timeout=30)
    assert r.status_code == 200, r.text
    return r.headers["X-Backend"]


@pytest.fixture
def two(backend_factory):
    return backend_factory("b1"), backend_factory("b2")


def start(forkproxy_factory, port, backend, admin: bool):
    server = {"admin": f"127.0.0.1:{free_port()}", "admin_token": TOKEN} if admin else {}
    fp = forkproxy_factory(body(port, backend), server=server)
    fp.wait_workers()
    return fp


def generation(fp, conf=None) -> int:
    """The generation /status reports (through ``conf`` instead of fp's own file)."""
    out = fp.ctl(*(["-c", str(conf)] if conf else []), "--json", "status")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["generation"]


def moves_to(port: int, name: str) -> None:
    """Wait until requests are served by backend ``name``: old workers finish
    draining a moment after the new generation answers."""
    wait_until(lambda: served_by(port) == name, timeout=30, what=f"requests served by {name}")


def _reload_to_b2(forkproxy_factory, two, admin: bool):
    """Start on b1, point the file at b2, run ``forkproxyctl reload``.

    Returns (forkproxy, port, generation before, the command's result).
    """
    b1, b2 = two
    port = free_port()
    fp = start(forkproxy_factory, port, b1, admin=admin)
    before = generation(fp)
    fp.write_config(body(port, b2))
    out = fp.ctl("reload")
    assert out.returncode == 0, out.stderr
    return fp, port, before, out


def test_reload_through_the_endpoint_reports_the_new_generation(forkproxy_factory, two):
    fp, port, before, out = _reload_to_b2(forkproxy_factory, two, admin=True)
    assert out.stdout == (f"reloaded (through the admin endpoint): generation {before} -> "
                          f"{before + 1}\n")
    moves_to(port, "b2")
    assert generation(fp) == before + 1
    fp.wait_error_log("admin: reload requested by 127.0.0.1")
    out = fp.ctl("--json", "reload")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["via"] == "admin" and doc["state"] == "serving" and doc["errors"] == []
    assert (doc["generation_before"], doc["generation"]) == (before + 1, before + 2)
    assert doc["master_pid"] == fp.pid


def test_a_broken_file_is_reported_and_not_sent(forkproxy_factory, two):
    b1, _ = two
    port = free_port()
    fp = start(forkproxy_factory, port, b1, admin=True)
    before = generation(fp)
    good = fp.config_path.read_text()
    fp.config_path.write_text(good.replace('pool = "web"', 'pool = "nope"', 1))
    out = fp.ctl("reload")
    assert out.returncode == 1
    assert "nope" in out.stderr and "reload not sent" in out.stderr
    fp.config_path.write_text(good)
    assert generation(fp) == before
    assert served_by(port) == "b1"


def test_a_reload_the_master_rejects_exits_1_with_its_error(forkproxy_factory, two, tmp_path):
    """forkproxyctl reads the endpoint from its own copy of the file; the master
    reloads its own file, which is broken: reload.json carries the error."""
    b1, _ = two
    port = free_port()
    fp = start(forkproxy_factory, port, b1, admin=True)
    before = generation(fp)
    copy = tmp_path / "ctl.toml"
    shutil.copy(fp.config_path, copy)
    fp.config_path.write_text(fp.config_path.read_text().replace('pool = "web"',
                                                                 'pool = "nope"', 1))
    out = fp.ctl("-c", str(copy), "reload")  # the last -c wins
    assert out.returncode == 1, out.stdout
    assert "reload rejected" in out.stderr and "nope" in out.stderr
    assert str(fp.config_path) in out.stderr  # the master's own file and line
    assert f"generation {before} still serving" in out.stderr
    assert generation(fp, copy) == before
    assert served_by(port) == "b1"


def test_without_the_endpoint_reload_sends_sighup(forkproxy_factory, two):
    fp, port, before, out = _reload_to_b2(forkproxy_factory, two, admin=False)
    assert out.stdout == f"reloaded (SIGHUP to pid {fp.pid}): generation {before} -> {before + 1}\n"
    moves_to(port, "b2")


def test_reload_of_a_forkproxy_that_is_not_running_exits_1(forkproxy_factory, two):
    fp = forkproxy_factory(body(free_port(), two[0]), start=False)
    out = fp.ctl("reload")
    assert out.returncode == 1
    assert "does not seem to be running" in out.stderr
