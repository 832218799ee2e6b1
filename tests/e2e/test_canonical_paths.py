"""Issue 16, item 1 and the open redirect, end to end: every path decision sees
the canonical path, and the backend receives that path.

A real forkproxy master (2 workers) in front of a real backend; requests go
over raw sockets, byte for byte (an HTTP library would clean the paths up
itself).  "Never reached the backend" is read in the backend's own request
count; "what the backend received" in its ``/echo`` answer and its per-path
counts.
"""

from __future__ import annotations

import json

import pytest

from support.configs import cache_site
from support.procs import free_port, wait_until
from support.rawhttp import Conn

TOKEN = "canon-token"


def config(port: int, backend_addr: str) -> str:
    return f"""
[[listener]]
name = "web"
bind = "127.0.0.1:{port}"

[[route]]
host = "redir.test"
redirect = {{ to = "$uri/" }}
pool = "app"

[[route]]
host = "rw.test"
rewrite = [{{ from = "^/r$", to = "/$args?" }}]
pool = "app"

[[route]]
path = "/private/"
access = ["deny all"]
pool = "app"

[[route]]
path = "/public/"
strip_prefix = "/public"
add_prefix = "/sandbox"
pool = "app"

[[route]]
pool = "app"
deny = [{{ path = "/admin/" }}]

[pool.app]
servers = [{{ addr = "{backend_addr}" }}]
"""


@pytest.fixture
def site(backend_factory, forkproxy_factory):
    b = backend_factory("origin")
    port = free_port()
    fp = forkproxy_factory(config(port, b.addr),
                           server={"admin": f"127.0.0.1:{free_port()}", "admin_token": TOKEN})
    b.reset()
    return fp, b, port


def get(port: int, target: str, host: str = "app.test"):
    """One request on its own connection, the target sent exactly as given."""
    with Conn(port) as c:
        c.send(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        return c.reply()


def explain(fp, port: int, target: str, host: str = "app.test") -> dict:
    out = fp.ctl("--json", "explain", "GET", f"http://{host}:{port}{target}")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


# The six deny bypasses (nginx: 403 to all six); %2F is refused (400)
# by default, as a path no rule can judge.
DENY_BYPASSES = [("//admin/x", 403), ("/./admin/x", 403), ("/%61dmin/x", 403),
                 ("/x/../admin/x", 403), ("/%2e/admin/x", 403), ("/admin%2fx", 400)]
ACCESS_BYPASSES = ["//private/x", "/%70rivate/x", "/./private/x", "/public/../private/x"]
PREFIX_ESCAPES = ["/public/../admin/x", "/public/%2e%2e/admin/x", "/public/x/../../admin/x"]


def test_deny_rule_bypasses_are_refused_and_never_reach_the_backend(site):
    fp, b, port = site
    for target, status in DENY_BYPASSES:
        assert get(port, target).status == status, target
        # the same with an absolute-form target (RFC 9112 3.2.2)
        assert get(port, f"http://app.test{target}").status == status, target
    assert b.stats()["requests"] == 0, b.stats()["by_path"]
    for target, status in DENY_BYPASSES:
        doc = explain(fp, port, target)
        assert doc["refused"]["status"] == status, (target, doc)
    assert b.stats()["requests"] == 0


def test_the_same_head_again_is_judged_the_same(site):
    """The same head bytes again (the same parsed request each time in a
    worker, whose canonical form the worker remembers): every time the same
    refusal, or the same canonical path upstream."""
    fp, b, port = site
    query = "?next=/../admin/%2f"
    with Conn(port) as kept:
        for _ in range(4):
            for target, status in DENY_BYPASSES[:-1] + [(t, 403) for t in ACCESS_BYPASSES]:
                assert get(port, target).status == status, target  # a refusal closes
            kept.send(f"GET /x/..//%65cho{query} HTTP/1.1\r\nHost: app.test\r\n\r\n".encode())
            r = kept.reply()
            assert (r.status, json.loads(r.body)["path"]) == (200, "/echo" + query)
    assert b.stats()["by_path"] == {"/echo": 4}, b.stats()["by_path"]


def test_path_scoped_access_route_cannot_be_bypassed(site):
    fp, b, port = site
    for target in ACCESS_BYPASSES:
        assert get(port, target).status == 403, target
        doc = explain(fp, port, target)
        assert doc["route"]["id"] == 2 and doc["refused"]["status"] == 403, (target, doc)
    assert b.stats()["requests"] == 0, b.stats()["by_path"]


def test_strip_and_add_prefix_cannot_be_escaped(site):
    fp, b, port = site
    for target in PREFIX_ESCAPES:
        assert get(port, target).status == 403, target
    assert b.stats()["requests"] == 0, b.stats()["by_path"]
    # inside the prefix, the backend gets the canonical path under /sandbox
    assert get(port, "/public/a/./b/../%63").status == 200
    assert b.stats()["by_path"] == {"/sandbox/a/c": 1}
    assert explain(fp, port, "/public/a/./b/../%63")["upstream_target"] == "/sandbox/a/c"


def test_the_backend_receives_the_canonical_path_and_the_query_as_sent(site):
    fp, b, port = site
    query = "?next=/../admin/%2f&x=%61//y"
    for target in ("/x/..//%65cho" + query, "//echo" + query, "/a/./../echo" + query,
                   "http://app.test/a/b/../../%65%63ho" + query):
        r = get(port, target)
        assert r.status == 200, target
        seen = json.loads(r.body)["path"]
        assert seen == "/echo" + query, (target, seen)
    r = get(port, "/caf%c3%a9/%7euser")
    assert r.status == 200
    assert b.stats()["by_path"].get("/caf%C3%A9/~user") == 1, b.stats()["by_path"]
    # the access log keeps the target as received
    wait_until(lambda: "/caf%c3%a9/%7euser" in fp.access_log(), what="the raw target logged")


def test_a_rewritten_path_goes_upstream_canonical(site):
    fp, b, port = site
    assert get(port, "/r?a/./b/../c//d", host="rw.test").status == 200
    assert b.stats()["by_path"] == {"/a/c/d": 1}
    r = get(port, "/r?a%2fb", host="rw.test")  # the query may hold %2F; a path may not
    assert r.status == 400
    assert b.stats()["requests"] == 1
    wait_until(lambda: "rewrite of route 1 made a path no rule can judge: encoded slash"
               in fp.error_log(), what="the rewrite's refusal in the error log")


def test_encoded_slash_is_refused_with_a_reason(site):
    fp, b, port = site
    for target in ("/a%2Fb", "/a%5cb", "/a\\b", "/%00", "/%zz", "/%2", "/x/..;/admin/x"):
        with Conn(port) as c:
            c.send(f"GET {target} HTTP/1.1\r\nHost: app.test\r\n\r\n".encode())
            r = c.reply()
            assert r.status == 400, target
            assert r.headers["Connection"] == "close"
            assert c.closed_by_peer()
    assert b.stats()["requests"] == 0
    wait_until(lambda: '"GET /a%2Fb" -> 400: malformed request: encoded slash (%2F) in the path'
               in fp.error_log(), what="the refusal's reason in the error log")
    fp.wait_error_log("malformed request: NUL (%00) in the path")


def test_encoded_slash_passes_encoded_with_the_option(backend_factory, forkproxy_factory):
    b = backend_factory("origin")
    port = free_port()
    fp = forkproxy_factory(config(port, b.addr), server={"encoded_slashes": "pass"})
    b.reset()
    assert get(port, "/a%2fb/%61/..%2F..%2Fadmin/x").status == 200
    assert get(port, "/a\\b").status == 200
    assert get(port, "/x/../admin/x").status == 403  # dots and the rules work as before
    assert b.stats()["by_path"] == {"/a%2Fb/a/..%2F..%2Fadmin/x": 1, "/a%5Cb": 1}


def test_open_redirect_from_uri(site):
    fp, b, port = site
    for target in ("//evil.example", "///evil.example", "/.//evil.example"):
        r = get(port, target, host="redir.test")
        assert r.status == 302, target
        assert r.headers["Location"] == "/evil.example/", (target, r.headers["Location"])
    assert explain(fp, port, "//evil.example", host="redir.test")["redirect"]["location"] \
        == "/evil.example/"
    assert b.stats()["requests"] == 0


def test_open_redirect_without_merge_slashes(backend_factory, forkproxy_factory):
    b = backend_factory("origin")
    port = free_port()
    forkproxy_factory(config(port, b.addr), server={"merge_slashes": False})
    r = get(port, "//evil.example", host="redir.test")
    assert r.status == 302
    assert r.headers["Location"] == "/evil.example/"  # the path stays //evil.example...
    assert get(port, "/\\evil.example", host="redir.test").status == 400
    assert get(port, "/x/..//evil.example/", host="redir.test").headers["Location"] \
        == "/evil.example//"


def test_the_cache_key_is_the_canonical_target(backend_factory, forkproxy_factory):
    """Spellings of one URL are one cache entry (in-process cache: one connection,
    so one worker, asks for all of them)."""
    b = backend_factory("origin")
    port = free_port()
    forkproxy_factory(cache_site(port, b.addr))
    b.reset()
    query = "?hdr=Cache-Control:max-age%3D60"
    seen = []
    with Conn(port) as c:
        for target in ("/c/x", "//c/./%78", "/c/y/../x", "http://app.test/%63//x"):
            c.send(f"GET {target}{query} HTTP/1.1\r\nHost: app.test\r\n\r\n".encode())
            seen.append(c.reply().headers["X-Cache"])
    assert seen == ["MISS", "HIT", "HIT", "HIT"]
    assert b.stats()["by_path"] == {"/c/x": 1}
