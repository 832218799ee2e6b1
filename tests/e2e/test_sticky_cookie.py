"""Sticky cookies cannot be forged, survive reloads and restarts, and are Secure on TLS.

Without ``sticky.secret`` the HMAC key of a pool's tokens used to be derived
from the pool name alone: anyone who knows (or guesses) a pool name and a
server address could make the cookie that pins them to that server.  The
key now derives from a random key the master makes once and keeps in
``server.runtime_dir/sticky.key``.
"""

from __future__ import annotations

import hashlib
import os
import ssl
import stat

import requests
import trustme

from forkproxy.core.balance import sticky_token
from support.configs import one_pool
from support.procs import free_port, wait_until
from support.runner import http_get


def sticky_pool(port: int, backends, extra_listener: str = "") -> str:
    return one_pool(port, [b.addr for b in backends], 'sticky = { cookie = "srv" }', pool="app",
                    listener_extra=extra_listener)


def get(port: int, token: str | None = None, tls: bool = False):
    """(status, Set-Cookie or None, the backend that answered)."""
    headers = {"Cookie": f"srv={token}"} if token else {}
    status, hdrs, _ = http_get("127.0.0.1", port, "/", tls=tls, headers=headers)
    return status, hdrs.get("Set-Cookie"), hdrs.get("X-Backend")


def token_of(set_cookie: str) -> str:
    return set_cookie.split(";", 1)[0].split("=", 1)[1]


def test_a_cookie_made_from_the_pool_name_alone_is_refused(forkproxy_factory, backend_factory):
    bs = [backend_factory(f"b{i}") for i in range(3)]
    port = free_port()
    fp = forkproxy_factory(sticky_pool(port, bs))
    # What anyone could compute before: the key from the pool name, a guessed addr.
    name_key = hashlib.sha256(b"forkproxy sticky v1\0" + b"app").digest()
    forged = sticky_token(bs[2].addr, name_key)
    for _ in range(6):
        status, set_cookie, _ = get(port, forged)
        assert status == 200
        assert set_cookie is not None, "the forged cookie was honoured"
        assert token_of(set_cookie) != forged
    key = os.stat(os.path.join(fp.server["runtime_dir"], "sticky.key"))
    assert stat.S_IMODE(key.st_mode) == 0o600


def test_cookies_stay_valid_across_a_reload_and_a_restart(forkproxy_factory, backend_factory):
    bs = [backend_factory(f"b{i}") for i in range(3)]
    port = free_port()
    fp = forkproxy_factory(sticky_pool(port, bs))
    _, set_cookie, name = get(port)
    token = token_of(set_cookie)

    def pinned() -> bool:
        _, again, who = get(port, token)
        return again is None and who == name

    assert pinned()
    fp.reload()
    wait_until(lambda: "reload 1: generation 2 serves" in fp.error_log(), what="the reload")
    assert all(pinned() for _ in range(4))
    fp.stop()
    fp.start()
    fp.wait_ready()
    assert all(pinned() for _ in range(4))


def test_cookies_over_tls_are_secure_and_samesite_lax(forkproxy_factory, backend_factory, tmp_path):
    ca = trustme.CA()
    leaf = ca.issue_cert("a.example")
    cert, key = tmp_path / "a.pem", tmp_path / "a.key"
    cert.write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    b = backend_factory("b")
    port, tls_port = free_port(), free_port()
    extra = f"""
[[listener]]
name = "websecure"
bind = "127.0.0.1:{tls_port}"
tls = {{ cert = "{cert}", key = "{key}" }}
"""
    fp = forkproxy_factory(sticky_pool(port, [b], extra))
    fp.wait_ready(f"https://127.0.0.1:{tls_port}/")
    _, over_tls, _ = get(tls_port, tls=True)
    attrs = [a.strip() for a in over_tls.split(";")]
    assert "Secure" in attrs and "SameSite=Lax" in attrs and "HttpOnly" in attrs
    _, plain, _ = get(port)
    assert "Secure" not in plain and "SameSite" not in plain


def test_a_sticky_key_file_forkproxy_did_not_make_stops_the_start(forkproxy_factory,
                                                                  backend_factory, tmp_path):
    b = backend_factory("b")
    fp = forkproxy_factory(sticky_pool(free_port(), [b]), start=False)
    run = tmp_path / "forkproxy1" / "run"
    run.mkdir(parents=True)
    (run / "sticky.key").write_text("guessable\n")
    fp.start()
    assert fp.wait(timeout=30) == 1
    assert f"{run}/sticky.key: not a key forkproxy made" in fp.output()
    (run / "sticky.key").unlink()
    (tmp_path / "elsewhere").write_text(os.urandom(32).hex())
    (run / "sticky.key").symlink_to(tmp_path / "elsewhere")
    fp.start()
    assert fp.wait(timeout=30) == 1
    assert f"{run}/sticky.key: a symbolic link (refused)" in fp.output()
