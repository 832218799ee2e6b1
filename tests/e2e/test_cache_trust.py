"""The cache never hands one route's, one client's or one listener's answer to another (issue 16).

Real forkproxy masters, real origins (each answers its own name as the body,
``tests/support/backend.py``), the in-process store and a real memcached.
An "outside" client connects from 127.0.0.2, which the routes' access rules
tell apart from 127.0.0.1.  Each test failed on the code before the fix: the
key was scheme://Host/target after rewriting, a stored response kept its
Set-Cookie, and PURGE was judged by the TCP peer with loopback allowed by
default.
"""

from __future__ import annotations

import http.client
import json

import pytest

from support.configs import memcached
from support.procs import free_port, wait_until

pytestmark = pytest.mark.timeout(180)

MAXAGE = "hdr=Cache-Control:max-age%3D60"
HOST = "shop.example"


@pytest.fixture(params=["memory", "shared", "memcached"])
def store(request, memcached_factory):
    """(``[cache]`` lines, workers): the per-worker store with one worker (its
    entries are per worker), or the embedded store or memcached shared by two."""
    if request.param == "memory":
        return "servers = []\nshared_size = 0", 1
    if request.param == "shared":
        return "servers = []", 2
    return memcached(memcached_factory().addr), 2


class Reply:
    def __init__(self, status: int, headers, body: bytes):
        self.status, self.headers, self.body = status, headers, body

    def get(self, name: str) -> str | None:
        return self.headers.get(name)

    def all(self, name: str) -> list[str]:
        return self.headers.get_all(name) or []

    @property
    def cache(self) -> str | None:
        return self.headers.get("X-Cache")


def ask(port: int, path: str, method: str = "GET", source: str = "127.0.0.1",
        host: str = HOST, headers=()) -> Reply:
    """One request on a new connection from ``source`` (a 127.0.0.0/8 address)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(source, 0))
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for name, value in [("Host", host), ("Connection", "close"), *headers]:
            conn.putheader(name, value)
        conn.endheaders()
        r = conn.getresponse()
        return Reply(r.status, r.headers, r.read())
    finally:
        conn.close()


def pools(**origins) -> str:
    return "".join(f'\n[pool.{name}]\nservers = [{{ addr = "{b.addr}" }}]\n'
                   for name, b in origins.items())


def start(forkproxy_factory, store, body: str, **server):
    cache, workers = store
    fp = forkproxy_factory(f"[cache]\n{cache}\n{body}", server={"workers": workers, **server})
    fp.wait_workers()
    return fp


# -- the key: route, pool, listener --------------------------------------------------


def test_an_internal_routes_answer_is_not_a_hit_on_the_public_route(forkproxy_factory,
                                                                  backend_factory, store):
    """access + strip_prefix: /internal/salaries (from 127.0.0.1) is stored;
    the outside client's GET /salaries on the public route must not get it."""
    internal, public = backend_factory("internal"), backend_factory("public")
    port = free_port()
    fp = start(forkproxy_factory, store, f"""
[[listener]]
name = "web"
bind = "127.0.0.1:{port}"

[[route]]
path = "/internal/"
strip_prefix = "/internal"
access = ["allow 127.0.0.1", "deny all"]
pool = "internal"
cache = true

[[route]]
pool = "public"
cache = true
""" + pools(internal=internal, public=public))
    inside = ask(port, f"/internal/salaries?{MAXAGE}")
    assert (inside.status, inside.body, inside.cache) == (200, b"internal", "MISS")
    assert ask(port, f"/internal/salaries?{MAXAGE}").cache == "HIT"
    # the route's own access rule still holds for the outside client
    assert ask(port, f"/internal/salaries?{MAXAGE}", source="127.0.0.2").status == 403
    outside = ask(port, f"/salaries?{MAXAGE}", source="127.0.0.2")
    assert (outside.status, outside.body, outside.cache) == (200, b"public", "MISS")
    assert ask(port, f"/salaries?{MAXAGE}", source="127.0.0.2").body == b"public"


def test_a_prefixed_routes_pool_does_not_poison_the_plain_one(forkproxy_factory,
                                                              backend_factory, store):
    """/api/app.js goes to the internal pool as /app.js; the public /app.js is another URL."""
    internal, public = backend_factory("internal"), backend_factory("public")
    port = free_port()
    fp = start(forkproxy_factory, store, f"""
[[listener]]
name = "web"
bind = "127.0.0.1:{port}"

[[route]]
path = "/api/"
strip_prefix = "/api"
pool = "internal"
cache = true

[[route]]
pool = "public"
cache = true
""" + pools(internal=internal, public=public))
    assert ask(port, f"/api/app.js?{MAXAGE}").body == b"internal"
    assert ask(port, f"/api/app.js?{MAXAGE}").cache == "HIT"
    r = ask(port, f"/app.js?{MAXAGE}")
    assert (r.body, r.cache) == (b"public", "MISS")
    r = ask(port, f"/app.js?{MAXAGE}")
    assert (r.body, r.cache) == (b"public", "HIT")
    assert ask(port, f"/api/app.js?{MAXAGE}").body == b"internal"


def test_an_internal_listeners_answer_is_not_served_on_the_public_one(forkproxy_factory,
                                                                     backend_factory, store):
    """The same Host and target on two listeners, each with its own route: two
    entries.  A PURGE of the URL (allowed from loopback here), or a PUT to it,
    reaches both."""
    internal, public = backend_factory("internal"), backend_factory("public")
    inner, outer = free_port(), free_port()
    fp = start(forkproxy_factory, (store[0] + '\npurge_allowed = ["127.0.0.1"]', store[1]), f"""
[[listener]]
name = "inside"
bind = "127.0.0.1:{inner}"

[[listener]]
name = "outside"
bind = "127.0.0.1:{outer}"

[[route]]
listener = ["inside"]
pool = "internal"
cache = true

[[route]]
listener = ["outside"]
pool = "public"
cache = true
""" + pools(internal=internal, public=public))
    path = f"/report?{MAXAGE}"
    assert ask(inner, path).body == b"internal"
    assert ask(inner, path).cache == "HIT"
    r = ask(outer, path, source="127.0.0.2")
    assert (r.body, r.cache) == (b"public", "MISS")
    assert ask(outer, path).cache == "HIT"
    # one PURGE, on either listener, deletes the URL in both routes
    assert ask(outer, path, method="PURGE").status == 200
    assert ask(inner, path).cache == "MISS"
    assert ask(outer, path).cache == "MISS"
    # and so does a successful unsafe request (RFC 9111 4.4): the resource changed
    assert [ask(port, path).cache for port in (inner, outer)] == ["HIT", "HIT"]
    assert ask(inner, path, method="PUT", headers=[("Content-Length", "0")]).status == 200
    assert [ask(port, path).cache for port in (inner, outer)] == ["MISS", "MISS"]


def test_a_shared_cache_key_shares_urls_but_never_a_rewritten_target(forkproxy_factory,
                                                                     backend_factory, store):
    """Three routes on two listeners name one cache_key: the first's /page is
    a hit on the third; the second's /internal/page (upstream /page) is
    still another URL."""
    b = backend_factory("site")
    one, two = free_port(), free_port()
    fp = start(forkproxy_factory, store, f"""
[[listener]]
name = "one"
bind = "127.0.0.1:{one}"

[[listener]]
name = "two"
bind = "127.0.0.1:{two}"

[[route]]
listener = ["one"]
pool = "site"
cache = true
cache_key = "site"

[[route]]
listener = ["two"]
path = "/internal/"
strip_prefix = "/internal"
pool = "site"
cache = true
cache_key = "site"

[[route]]
listener = ["two"]
pool = "site"
cache = true
cache_key = "site"
""" + pools(site=b))
    assert ask(one, f"/page?{MAXAGE}").cache == "MISS"
    assert ask(two, f"/page?{MAXAGE}").cache == "HIT"  # another route, one namespace
    assert ask(two, f"/internal/page?{MAXAGE}").cache == "MISS"  # not the other URL's entry
    assert ask(two, f"/internal/page?{MAXAGE}").cache == "HIT"
    assert b.stats()["by_path"]["/page"] == 2


def test_a_reload_keeps_an_unchanged_routes_entries_and_not_a_changed_ones(
        forkproxy_factory, backend_factory, memcached_factory):
    """The default namespace is a digest of the route: a reload that leaves the
    route alone keeps its entries (memcached outlives workers); one that gives
    it another pool starts it empty."""
    a, b = backend_factory("a"), backend_factory("b")
    port = free_port()

    def body(pool: str, extra: str = "") -> str:
        return f"""
[[listener]]
name = "web"
bind = "127.0.0.1:{port}"
{extra}
[[route]]
pool = "{pool}"
cache = true
""" + pools(a=a, b=b)

    cache = memcached(memcached_factory().addr)
    fp = start(forkproxy_factory, (cache, 2), body("a"))
    path = f"/k?{MAXAGE}"
    assert ask(port, path).body == b"a"
    assert ask(port, path).cache == "HIT"
    fp.write_config(f"[cache]\n{cache}\n"
                    + body("a", '\n[[route]]\npath = "/other/"\npool = "b"\n'))
    out = fp.ctl("reload")
    assert out.returncode == 0, out.stderr
    r = ask(port, path)
    assert (r.body, r.cache) == (b"a", "HIT")
    fp.write_config(f"[cache]\n{cache}\n" + body("b"))
    out = fp.ctl("reload")
    assert out.returncode == 0, out.stderr
    wait_until(lambda: ask(port, path).body == b"b", timeout=15,
               what="the route with a new pool answering from it")


# -- Set-Cookie -----------------------------------------------------------------------

COOKIE = "hdr=Set-Cookie:sid%3Dclient-a"


def cookie_site(forkproxy_factory, backend_factory, store, route_extra: str = ""):
    origin = backend_factory("origin")
    port = free_port()
    fp = start(forkproxy_factory, store, f"""
[[listener]]
name = "web"
bind = "127.0.0.1:{port}"

[[route]]
pool = "web"
cache = true
{route_extra}
""" + pools(web=origin))
    return fp, port, origin


def test_a_response_that_sets_a_cookie_is_not_replayed(forkproxy_factory, backend_factory, store):
    fp, port, origin = cookie_site(forkproxy_factory, backend_factory, store)
    path = f"/login?{MAXAGE}&{COOKIE}"
    a = ask(port, path)
    assert a.all("Set-Cookie") == ["sid=client-a"] and a.cache == "MISS"
    b = ask(port, path, source="127.0.0.2")
    assert b.cache == "MISS"  # from the origin again, not client A's stored answer
    assert origin.stats()["by_path"]["/login"] == 2


def test_strip_stores_without_the_cookie(forkproxy_factory, backend_factory, store):
    fp, port, origin = cookie_site(forkproxy_factory, backend_factory, store,
                                   'cache_set_cookie = "strip"')
    path = f"/home?{MAXAGE}&{COOKIE}"
    a = ask(port, path)
    assert a.all("Set-Cookie") == ["sid=client-a"] and a.cache == "MISS"  # A's own answer
    b = ask(port, path, source="127.0.0.2")
    assert (b.status, b.cache, b.all("Set-Cookie")) == (200, "HIT", [])
    assert origin.stats()["by_path"]["/home"] == 1


def test_private_set_cookie_stores_without_it(forkproxy_factory, backend_factory, store):
    """Cache-Control: private="Set-Cookie" (RFC 9111 5.2.2.7): stored, the cookie left out,
    whatever the route's cache_set_cookie."""
    fp, port, origin = cookie_site(forkproxy_factory, backend_factory, store)
    path = ("/news?hdr=Cache-Control:max-age%3D60,%20private%3D%22Set-Cookie%22"
            f"&{COOKIE}&hdr=X-Kept:yes")
    a = ask(port, path)
    assert a.all("Set-Cookie") == ["sid=client-a"] and a.cache == "MISS"
    b = ask(port, path, source="127.0.0.2")
    assert (b.cache, b.all("Set-Cookie"), b.get("X-Kept")) == ("HIT", [], "yes")
    # unqualified private: never stored
    path = f"/mine?hdr=Cache-Control:max-age%3D60,%20private&{COOKIE}"
    assert [ask(port, path).cache for _ in range(2)] == ["MISS", "MISS"]


# -- PURGE ----------------------------------------------------------------------------


def purge_site(forkproxy_factory, backend_factory, store, cache_extra: str, **server):
    origin = backend_factory("origin")
    port = free_port()
    cache, workers = store
    fp = start(forkproxy_factory, (f"{cache}\n{cache_extra}", workers), f"""
[[listener]]
name = "web"
bind = "127.0.0.1:{port}"

[[route]]
pool = "web"
cache = true
""" + pools(web=origin), **server)
    return fp, port


def test_purge_is_refused_by_default(forkproxy_factory, backend_factory, store):
    fp, port = purge_site(forkproxy_factory, backend_factory, store, "")
    path = f"/p?{MAXAGE}"
    ask(port, path)
    assert ask(port, path, method="PURGE").status == 403
    assert ask(port, path).cache == "HIT"
    fp.wait_error_log("outside cache.purge_allowed (empty: PURGE is refused")
    # forkproxyctl purge without the admin endpoint says what to do
    out = fp.ctl("purge", f"http://127.0.0.1:{port}/p")
    assert out.returncode != 0 and "cache.purge_allowed must include 127.0.0.1" in out.stderr


def test_purge_judges_the_client_behind_a_trusted_proxy(forkproxy_factory, backend_factory,
                                                        store):
    """A TLS terminator on loopback (a trusted proxy) forwards everyone's
    PURGE from 127.0.0.1: the client X-Forwarded-For names is the one judged."""
    fp, port = purge_site(forkproxy_factory, backend_factory, store,
                          'purge_allowed = ["127.0.0.1", "192.0.2.7"]',
                          trusted_proxies=["127.0.0.1"])
    path = f"/t?{MAXAGE}"
    ask(port, path)
    r = ask(port, path, method="PURGE", headers=[("X-Forwarded-For", "203.0.113.5")])
    assert r.status == 403
    assert ask(port, path).cache == "HIT"
    fp.wait_error_log("PURGE from 203.0.113.5, outside cache.purge_allowed")
    # an untrusted peer's X-Forwarded-For is not believed: 127.0.0.2 is judged
    r = ask(port, path, method="PURGE", source="127.0.0.2",
            headers=[("X-Forwarded-For", "192.0.2.7")])
    assert r.status == 403
    assert ask(port, path).cache == "HIT"
    r = ask(port, path, method="PURGE", headers=[("X-Forwarded-For", "192.0.2.7")])
    assert r.status == 200
    assert ask(port, path).cache == "MISS"
    # the proxy's own request (no X-Forwarded-For) is judged by its address
    assert ask(port, path, method="PURGE").status == 200


def test_admin_purge_of_a_rewritten_url_and_explain_name_the_route(
        forkproxy_factory, backend_factory, memcached_factory):
    """forkproxyctl purge URL through the admin endpoint finds the entry of the
    route that strips a prefix; explain shows the URL and the route's namespace."""
    b = backend_factory("site")
    port = free_port()
    token = "t0ken"
    fp = start(forkproxy_factory, (memcached(memcached_factory().addr), 2), f"""
[[listener]]
name = "web"
bind = "127.0.0.1:{port}"

[[route]]
path = "/old/"
strip_prefix = "/old"
pool = "site"
cache = true
cache_key = "legacy"

[[route]]
pool = "site"
cache = true
""" + pools(site=b), admin=f"127.0.0.1:{free_port()}", admin_token=token)
    path = f"/old/x?{MAXAGE}"
    ask(port, path, host=f"127.0.0.1:{port}")
    assert ask(port, path, host=f"127.0.0.1:{port}").cache == "HIT"
    ask(port, f"/x?{MAXAGE}", host=f"127.0.0.1:{port}")
    out = fp.ctl("--json", "explain", "GET", f"http://127.0.0.1:{port}{path}")
    assert out.returncode == 0, out.stderr
    cache = json.loads(out.stdout)["cache"]
    assert (cache["result"], cache["key"], cache["namespace"]) == \
        ("HIT", f"http://127.0.0.1:{port}{path}", "k:legacy")
    out = fp.ctl("explain", "GET", f"http://127.0.0.1:{port}{path}")
    assert f"HIT http://127.0.0.1:{port}{path} [k:legacy] (fresh)" in out.stdout, out.stdout
    out = fp.ctl("purge", f"http://127.0.0.1:{port}{path}")
    assert out.returncode == 0 and out.stdout.endswith(": purged\n"), out.stderr
    assert ask(port, path, host=f"127.0.0.1:{port}").cache == "MISS"
    assert ask(port, f"/x?{MAXAGE}", host=f"127.0.0.1:{port}").cache == "HIT"
