"""``forkproxyctl explain`` agrees with what the proxy really does.

One real master (2 workers) with the admin endpoint, a real memcached, three
real backends, and routes that each exercise one decision: no route, an
access list, a deny rule, a rewrite, a redirect, a cached route, hash,
ip_hash and sticky pools, a rate limit.  For every request of the table,
explain is asked first, then the same request is sent for real, and the
answers must match: the status forkproxy answers itself, the Location of a
redirect, the target the backend saw (``/echo``), the backend that served it
(``X-Backend``), and the cache's verdict (``X-Cache``).

Only deterministic choices are compared: a hash, ip_hash or sticky pool, or
a pool of one, picks the same server in every worker.
"""

from __future__ import annotations

import json

import pytest
import requests

from support.configs import memcached
from support.procs import free_port

TOKEN = "explain-token"
MAXAGE = "hdr=Cache-Control:max-age%3D60"


def config(port: int, mc, b1, b2, b3) -> str:
    three = ", ".join(f'{{ addr = "{b.addr}" }}' for b in (b1, b2, b3))
    return f"""
[cache]
{memcached(mc.addr)}

[[listener]]
name = "web"
bind = "127.0.0.1:{port}"

[[route]]
host = "private.test"
access = ["deny 127.0.0.1", "allow all"]
pool = "one"

[[route]]
host = "blocked.test"
deny = [{{ path = "/secret/" }}]
pool = "one"

[[route]]
host = "limited.test"
rate_limit = {{ rate = "1r/h", burst = 2 }}
pool = "one"

[[route]]
host = "rewrite.test"
strip_prefix = "/old"
pool = "hashed"

[[route]]
host = "cache.test"
cache = true
pool = "hashed"

[[route]]
host = "sticky.test"
pool = "sticky"

[[route]]
host = "iphash.test"
pool = "iphash"

[[route]]
host = "moved.test"
redirect = {{ to = "http://elsewhere.test$request_uri", status = 301 }}
pool = "one"

[pool.one]
servers = [{{ addr = "{b3.addr}" }}]

[pool.hashed]
balance = "hash"
servers = [{three}]

[pool.iphash]
balance = "ip_hash"
servers = [{three}]

[pool.sticky]
servers = [{three}]
sticky = {{ cookie = "fp_srv" }}
"""


@pytest.fixture
def site(forkproxy_factory, backend_factory, mc):
    """(fp, port, {backend addr: name})."""
    bs = [backend_factory(f"b{i}") for i in (1, 2, 3)]
    port = free_port()
    fp = forkproxy_factory(config(port, mc, *bs), server={
        "admin": f"127.0.0.1:{free_port()}", "admin_token": TOKEN})
    fp.wait_workers()
    return fp, port, {b.addr: b.name for b in bs}


def explain(fp, port: int, method: str, host: str, path: str, headers=()) -> dict:
    args = ["--json", "explain", method, f"http://{host}:{port}{path}"]
    for name, value in headers:
        args += ["-H", f"{name}: {value}"]
    out = fp.ctl(*args)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def send(port: int, method: str, host: str, path: str, headers=()) -> requests.Response:
    return requests.request(method, f"http://127.0.0.1:{port}{path}", allow_redirects=False,
                            headers={"Host": f"{host}:{port}", "Connection": "close",
                                     **dict(headers)}, timeout=30)


def assert_agree(doc: dict, r: requests.Response, names: dict) -> None:
    """What explain said (``doc``) is what happened (``r``)."""
    if doc["refused"] is not None:
        assert r.status_code == doc["refused"]["status"], (doc, r.text)
        assert "X-Backend" not in r.headers  # nothing went upstream
        return
    if doc["redirect"] is not None:
        assert r.status_code == doc["redirect"]["status"]
        assert r.headers["Location"] == doc["redirect"]["location"]
        return
    assert r.status_code == 200, r.text
    cache = doc["cache"]
    assert r.headers.get("X-Cache") == (cache["result"] if cache else None), doc
    if cache is not None and cache["result"] == "HIT":
        return  # answered from memcached: no server was asked
    assert r.headers["X-Backend"] == names[doc["server"]["addr"]], doc
    if r.headers.get("Content-Type") == "application/json":  # /echo: the target it saw
        assert r.json()["path"] == doc["upstream_target"]


def verdict(doc: dict) -> str:
    """Explain's answer in one word: the status forkproxy gives itself, else the
    cache's result, else "upstream"."""
    if doc["refused"] is not None:
        return str(doc["refused"]["status"])
    if doc["redirect"] is not None:
        return str(doc["redirect"]["status"])
    return doc["cache"]["result"] if doc["cache"] is not None else "upstream"


# (method, host, path, headers, explain's verdict), sent in this order: the
# cache cases depend on it.
TABLE = [
    ("GET", "nowhere.test", "/", (), "404"),                    # no route
    ("GET", "private.test", "/", (), "403"),                    # access list
    ("GET", "blocked.test", "/secret/x", (), "403"),            # deny rule
    ("GET", "blocked.test", "/open/echo", (), "upstream"),      # pool of one
    ("GET", "moved.test", "/a?b=1", (), "301"),                 # redirect
    ("GET", "rewrite.test", "/old/echo?k=1", (), "upstream"),   # strip_prefix, hash pool
    ("GET", "rewrite.test", "/old/echo?k=2", (), "upstream"),
    ("GET", "rewrite.test", "/old/echo?k=3", (), "upstream"),
    ("GET", "iphash.test", "/echo", (), "upstream"),            # ip_hash
    ("GET", "cache.test", f"/echo?{MAXAGE}", (), "MISS"),       # stored
    ("GET", "cache.test", f"/echo?{MAXAGE}", (), "HIT"),
    ("GET", "cache.test", f"/echo?x=2&{MAXAGE}", (), "MISS"),   # another key
    ("POST", "cache.test", "/echo", (), "BYPASS"),
    ("GET", "cache.test", "/echo?none", (("Cache-Control", "only-if-cached"),), "504"),
]


def test_explain_agrees_with_the_proxy_for_a_table_of_requests(site):
    fp, port, names = site
    for method, host, path, headers, expected in TABLE:
        doc = explain(fp, port, method, host, path, headers)
        assert verdict(doc) == expected, doc
        assert_agree(doc, send(port, method, host, path, headers), names)
    # the hash pool spread the table's keys over more than one server
    hashed = {explain(fp, port, "GET", "rewrite.test", f"/old/echo?k={k}")["server"]["addr"]
              for k in range(1, 9)}
    assert len(hashed) > 1
    # a sticky cookie pins a client to the server that set it
    first = send(port, "GET", "sticky.test", "/echo")
    token = first.cookies["fp_srv"]
    cookie = (("Cookie", f"fp_srv={token}"),)
    doc = explain(fp, port, "GET", "sticky.test", "/echo", cookie)
    assert doc["server"]["by"] == "sticky" and doc["sticky"]["token"] == token
    assert names[doc["server"]["addr"]] == first.headers["X-Backend"]
    assert_agree(doc, send(port, "GET", "sticky.test", "/echo", cookie), names)


def test_explain_details(site):
    fp, port, names = site
    doc = explain(fp, port, "GET", "rewrite.test", "/old/echo?k=1")
    assert doc["route"]["id"] == 3 and doc["route"]["host"] == "rewrite.test"
    assert doc["upstream_target"] == "/echo?k=1"
    assert doc["pool"] == {"name": "hashed", "balance": "hash", "key": "/old/echo?k=1"}
    doc = explain(fp, port, "GET", "iphash.test", "/")
    assert doc["pool"]["key"] == "127.0.0.1"
    # another client address, as asked: the access list lets it in
    out = fp.ctl("--json", "explain", "GET", f"http://private.test:{port}/",
                 "--client", "192.0.2.7")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["refused"] is None and doc["request"]["client"] == "192.0.2.7"
    # the human form: a few aligned lines
    out = fp.ctl("explain", "GET", f"http://cache.test:{port}/x")
    assert out.returncode == 0, out.stderr
    labels = [line.split()[0] for line in out.stdout.splitlines()]
    assert labels == ["listener", "request", "route", "cache", "pool", "server"]
    assert out.stdout.splitlines()[3].split()[:2] == ["cache", "MISS"]
    # questions it cannot answer
    out = fp.ctl("explain", "GET", "http://x.test:1/")
    assert out.returncode == 1 and "no http listener on port 1" in out.stderr
    assert fp.ctl("explain", "GET", f"http://x.test:{port}/", "--listener", "nope").returncode == 1


def test_explain_names_the_rate_limit_and_counts_nothing(site):
    fp, port, names = site
    for _ in range(4):  # more than the burst: explain must not use it up
        doc = explain(fp, port, "GET", "limited.test", "/")
        assert doc["rate_limit"] == {"rate": "1r/h", "burst": 2, "key": "ip 127.0.0.1"}
        assert doc["refused"] is None and names[doc["server"]["addr"]] == "b3"
    statuses = [send(port, "GET", "limited.test", "/").status_code for _ in range(3)]
    assert statuses == [200, 200, 429]


def test_explain_shows_the_host_header_it_routes_by(site):
    """-H 'Host: ...' replaces the URL's host, in the routing and in what is printed."""
    fp, port, names = site
    doc = explain(fp, port, "GET", "nowhere.test", "/open/echo", (("Host", "blocked.test"),))
    assert doc["route"]["host"] == "blocked.test"
    assert doc["request"]["host"] == "blocked.test"
    assert_agree(doc, send(port, "GET", "blocked.test", "/open/echo"), names)
    out = fp.ctl("explain", "GET", f"http://nowhere.test:{port}/open/echo", "-H",
                 "Host: blocked.test")
    assert out.returncode == 0, out.stderr
    request = out.stdout.splitlines()[1]
    assert request.split()[:5] == ["request", "GET", "/open/echo", "Host", "blocked.test,"]
