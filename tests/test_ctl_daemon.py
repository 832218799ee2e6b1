"""forkproxyctl against real masters: a stopped one, the edge shape (a plain
listener that redirects to https, a TLS listener, a cached route), and
options written after the command.

Real masters, real backends, a real memcached (skipped when not installed),
certificates made with trustme; ``X-Cache`` says what the cache did.
"""

from __future__ import annotations

import json
import os

import pytest
import requests
import trustme

from forkproxy.daemon import shm
from support.configs import memcached, one_pool
from support.procs import free_port, pid_alive, wait_until

pytestmark = pytest.mark.timeout(180)

TOKEN = "ctl-token"
MAXAGE = "hdr=Cache-Control:max-age%3D60"


def admin_cell(fp, label: str):
    t = shm.open_table(os.path.join(fp.server["runtime_dir"], "health.tbl"))
    try:
        return t.read_admin(t.find(label))
    finally:
        shm.close_table(t)


# -- a stopped daemon ----------------------------------------------------------------


@pytest.mark.parametrize("admin", [False, True], ids=["table", "endpoint-gone"])
def test_admin_commands_on_a_stopped_daemon_exit_1_and_change_nothing(
        forkproxy_factory, backend_factory, admin):
    b = backend_factory("b1")
    server = {"admin": f"127.0.0.1:{free_port()}", "admin_token": TOKEN} if admin else {}
    fp = forkproxy_factory(one_pool(free_port(), [b.addr]), server=server)
    fp.wait_workers()
    label = f"web/{b.addr}"
    assert fp.ctl("maint", "web", b.addr).returncode == 0  # so that "ready" is a change too
    before = admin_cell(fp, label)
    master = fp.pid
    fp.stop()
    assert not pid_alive(master)
    # What the stopped master leaves behind: a table ctl could still write.
    assert os.path.exists(os.path.join(fp.server["runtime_dir"], "health.tbl"))
    for args in (["drain"], ["ready"], ["maint"], ["weight", "2"]):
        command, *n = args
        out = fp.ctl(command, "web", b.addr, *n)
        assert out.returncode == 1, (args, out.stdout)
        assert out.stderr.startswith(f"forkproxyctl: forkproxy is not running: no process "
                                     f"per {fp.pidfile}; nothing changed")
        assert "writing the table" not in out.stderr
        assert out.stdout == ""
        assert admin_cell(fp, label) == before


# -- purge on the edge shape -----------------------------------------------------------


@pytest.fixture
def edge(forkproxy_factory, backend_factory, memcached_factory, tmp_path):
    """(fp, plain port, TLS port): conf/edge.toml's shape, without the admin endpoint."""
    mc = memcached_factory()
    origin = backend_factory("origin")
    ca = trustme.CA()
    leaf = ca.issue_cert("shop.example.com")
    cert, key = tmp_path / "site.pem", tmp_path / "site.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    plain, tls = free_port(), free_port()
    body = f"""
[cache]
{memcached(mc.addr)}
purge_allowed = ["127.0.0.1"]

[[listener]]
name = "web"
bind = "127.0.0.1:{plain}"

[[listener]]
name = "websecure"
bind = "127.0.0.1:{tls}"
tls = {{ cert = "{cert}", key = "{key}" }}

[[route]]
pool = "site"
redirect_https = true
cache = true

[pool.site]
servers = [{{ addr = "{origin.addr}" }}]
"""
    fp = forkproxy_factory(body)
    fp.wait_workers()
    return fp, plain, tls


def x_cache(tls: int, path: str) -> str:
    r = requests.get(f"https://127.0.0.1:{tls}{path}", verify=False, timeout=30,
                     headers={"Host": "shop.example.com", "Connection": "close"})
    assert r.status_code == 200, r.text
    return r.headers["X-Cache"]


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
@pytest.mark.parametrize("how", ["url", "host"])
def test_purge_https_reaches_the_tls_listener(edge, how):
    fp, plain, tls = edge
    path = f"/p?{MAXAGE}"
    assert x_cache(tls, path) == "MISS"
    assert x_cache(tls, path) == "HIT"
    # The plain listener redirects everything, PURGE included.
    r = requests.request("PURGE", f"http://127.0.0.1:{plain}{path}", allow_redirects=False,
                         headers={"Host": "shop.example.com"}, timeout=30)
    assert r.status_code == 308
    if how == "host":
        args, said = ["--host", "shop.example.com"], "every URL of shop.example.com: purged\n"
    else:
        url = f"https://shop.example.com{path}"
        args, said = [url], f"{url}: purged\n"
    out = fp.ctl("purge", *args)
    assert out.returncode == 0, out.stderr
    assert out.stdout == said
    # A host purge reaches the other worker within a second (forkproxyctl(8)).
    wait_until(lambda: x_cache(tls, path) == "MISS", timeout=10, what="a miss after the purge")


# -- options after the command ---------------------------------------------------------


def test_options_after_the_command(forkproxy_factory, backend_factory):
    b = backend_factory("b1")
    fp = forkproxy_factory(one_pool(free_port(), [b.addr]))
    fp.wait_workers()
    import subprocess
    import sys

    base = [sys.executable, "-m", "forkproxy.ctl"]
    conf = str(fp.config_path)
    for argv in (["status", "--json", "-c", conf], ["--json", "status", "--config", conf],
                 ["-c", "/nonexistent.toml", "status", "-c", conf, "--json"]):
        out = subprocess.run(base + argv, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, (argv, out.stderr)
        doc = json.loads(out.stdout)
        assert [s["addr"] for p in doc["pools"] for s in p["servers"]] == [b.addr]
    out = subprocess.run(base + ["drain", "web", b.addr, "-c", conf], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"web/{b.addr}: ready -> drain\n"


# -- a reload to a pool with one address twice ------------------------------------------


def test_a_reload_to_a_pool_with_one_address_twice_is_rejected(forkproxy_factory,
                                                                backend_factory, tmp_path):
    """forkproxyctl sends the reload with its own good copy of the file; the
    master's file lists a server twice: the master refuses it (FILE:LINE) and
    serves on with the generation it had."""
    b = backend_factory("b1")
    port = free_port()
    fp = forkproxy_factory(one_pool(port, [b.addr]))
    fp.wait_workers()
    copy = tmp_path / "ctl.toml"
    copy.write_text(fp.config_path.read_text())
    fp.write_config(one_pool(port, [b.addr, b.addr]))
    line = fp.config_path.read_text().splitlines().index(
        f'servers = [{{ addr = "{b.addr}" }}, {{ addr = "{b.addr}" }}]') + 1
    out = fp.ctl("-c", str(copy), "reload")
    assert out.returncode == 1, out.stdout
    assert (f"{fp.config_path}:{line}: pool.web.servers[1].addr: duplicate server "
            f'"{b.addr}" (also servers[0])') in out.stderr
    assert fp.alive()
    r = requests.get(f"http://127.0.0.1:{port}/", headers={"Connection": "close"}, timeout=30)
    assert r.status_code == 200 and r.headers["X-Backend"] == "b1"
