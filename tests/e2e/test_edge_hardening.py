"""Issue 16's edge findings, end to end: what an attacker with curl and a raw socket
could do to a real forkproxy in front of real backends, and no longer can.

Each test starts a real forkproxy master and real backend processes and
looks only at what real clients and backends saw.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from support.procs import free_port
from support.rawhttp import Conn
from support.runner import REPO_ROOT, _child_env

CUBIC = r"^/(.*)/(.*)/(.*)\.php$"


def _site(port: int, backend_addr: str, route_extra: str = "", server_extra: str = "") -> str:
    return f"""
{server_extra}
[[listener]]
name = "web"
bind = "127.0.0.1:{port}"

[[route]]
pool = "app"
{route_extra}

[pool.app]
servers = [{{ addr = "{backend_addr}" }}]
"""


# -- regular expressions: RE2, linear time -------------------------------------------


def test_cubic_regex_on_a_path_of_slashes_does_not_freeze_a_worker(backend_factory, forkproxy_factory):
    # Python's re takes minutes on this path for each of these patterns (cubic);
    # one worker, so a frozen worker would leave the second request unanswered.
    b = backend_factory("origin")
    port = free_port()
    body = f"""
[[listener]]
name = "web"
bind = "127.0.0.1:{port}"

[[route]]
path_regex = '{CUBIC}'
rewrite = [{{ from = '{CUBIC}', to = "/echo" }}]
pool = "app"

[[route]]
pool = "app"
deny = [{{ path_regex = '{CUBIC}' }}, {{ query_regex = '{CUBIC}' }},
        {{ header = "X-A", header_regex = '{CUBIC}' }}]

[pool.app]
servers = [{{ addr = "{b.addr}" }}]
"""
    fp = forkproxy_factory(body, server={"workers": 1})
    slashes = "/" * 7000
    with Conn(port, timeout=60) as c:
        c.send(f"GET {slashes}?{slashes[:500]} HTTP/1.1\r\nHost: a\r\nX-A: {slashes[:500]}\r\n\r\n".encode())
        assert c.reply().status == 200  # no route regex, no deny rule matched: the backend answered
    with Conn(port, timeout=60) as c:
        c.send(b"GET /a/b/c/d.php HTTP/1.1\r\nHost: a\r\n\r\n")
        reply = c.reply()
    assert reply.status == 200 and json.loads(reply.body)["path"] == "/echo"
    assert fp.alive()


def test_config_check_names_key_line_and_re2_reason(tmp_path):
    conf = tmp_path / "f.toml"
    conf.write_text(
        '[[listener]]\nname = "web"\nbind = "127.0.0.1:1"\n\n'
        '[[route]]\npool = "app"\ndeny = [{ path_regex = "(?<=/)x" }]\n'
        'rewrite = [{ from = "(a)\\\\1", to = "/x" }]\n\n'
        '[pool.app]\nservers = [{ addr = "127.0.0.1:2" }]\n')
    r = subprocess.run([sys.executable, "-m", "forkproxy", "-t", "-c", str(conf)], cwd=REPO_ROOT,
                       env=_child_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert (f'{conf}:7: route[0].deny[0].path_regex: regular expression "(?<=/)x" refused by RE2: '
            "invalid perl operator: (?<= (RE2 has no lookbehind)") in r.stderr
    assert (f'{conf}:8: route[0].rewrite[0].from: regular expression "(a)\\\\1" refused by RE2: '
            "invalid escape sequence: \\1 (RE2 has no backreferences)") in r.stderr
