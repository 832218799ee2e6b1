"""``forkproxy -t`` checks the host, not only the file (forkproxy.daemon.preflight).

Real ``python -m forkproxy -t`` runs.  The questions about what server.user
may read are asked as that user, which needs root: those tests are in
test_privileges.py.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import trustme

ROOT = pathlib.Path(__file__).resolve().parents[2]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "forkproxy", *args], capture_output=True,
                          text=True, timeout=30, cwd=ROOT)


def config(tmp_path, server: str = "", listener: str = "") -> pathlib.Path:
    f = tmp_path / "forkproxy.toml"
    f.write_text(f"""[server]
runtime_dir = "{tmp_path / 'run'}"
pidfile = "{tmp_path / 'forkproxy.pid'}"
{server}
[[listener]]
name = "web"
bind = "127.0.0.1:18080"
{listener}
[[route]]
pool = "p"
[pool.p]
servers = [{{ addr = "127.0.0.1:9" }}]
""")
    return f


def test_t_fails_on_an_unknown_user_or_group_and_a_missing_log_directory(tmp_path):
    f = config(tmp_path, f'''user = "no-such-user-fp"
group = "no-such-group-fp"
error_log = "{tmp_path}/absent/error.log"
access_log = "{tmp_path}/access.log"''')
    out = run_cli("-t", "-c", str(f))
    assert out.returncode == 1, out.stderr
    lines = out.stderr.splitlines()
    assert f'{f}: server.user: no such user "no-such-user-fp" (create it, e.g. adduser ' \
           "--system no-such-user-fp)" in lines
    assert f'{f}: server.group: no such group "no-such-group-fp"' in lines
    assert f"{f}: server.error_log: directory {tmp_path}/absent does not exist" in lines
    assert not any("access_log" in line for line in lines)
    # The start refuses the same file with the same words, before binding anything.
    start = run_cli("-c", str(f))
    assert start.returncode == 1 and "no such user" in start.stderr, start.stderr


def test_t_refuses_a_log_that_is_a_symlink(tmp_path):
    (tmp_path / "elsewhere.log").write_text("")
    (tmp_path / "error.log").symlink_to(tmp_path / "elsewhere.log")
    f = config(tmp_path, f'error_log = "{tmp_path}/error.log"')
    out = run_cli("-t", "-c", str(f))
    assert out.returncode == 1
    assert "server.error_log: " in out.stderr and "is a symbolic link" in out.stderr


def test_t_warns_about_a_private_key_every_user_can_read(tmp_path):
    leaf = trustme.CA().issue_cert("a.example")
    cert, key = tmp_path / "a.pem", tmp_path / "a.key"
    cert.write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    f = config(tmp_path, listener=f'tls = {{ cert = "{cert}", key = "{key}" }}')
    os.chmod(key, 0o644)
    out = run_cli("-t", "-c", str(f))
    assert out.returncode == 0, out.stderr
    assert (f"forkproxy: warning: {f}: listener[0].tls.key: {key} is readable by every user "
            "(chmod o-r)") in out.stderr.splitlines()
    os.chmod(key, 0o640)  # a group such as ssl-cert is fine
    out = run_cli("-t", "-c", str(f))
    assert out.returncode == 0 and "warning" not in out.stderr, out.stderr
