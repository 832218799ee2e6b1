"""Every metric family the admin endpoint exports, checked against what really happened.

A real master with 2 workers, real backends, a real memcached (the cache is
shared, so hits and misses do not depend on which worker answers). Each
family is compared with a count taken on the client or backend side, or
with another family that must agree with it.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
import requests

from support.configs import memcached, one_pool
from support.procs import free_port, wait_until


def samples(aport) -> dict[str, float]:
    """{name{labels}: value} of the admin endpoint's /metrics."""
    r = requests.get(f"http://127.0.0.1:{aport}/metrics", timeout=30)
    assert r.status_code == 200, r.text
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in r.text.splitlines() if line and not line.startswith("#")}


def total(s: dict, prefix: str, **labels) -> float:
    """Sum of the samples of ``prefix`` whose labels include ``labels``."""
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(v for k, v in s.items()
               if k.split("{")[0] == prefix and all(w in k for w in want))


def config(port, mc, web, dead, spare, checked) -> str:
    return f"""
[cache]
{memcached(mc.addr)}

[[listener]]
name = "web"
bind = "127.0.0.1:{port}"

[[route]]
path = "/limited"
pool = "web"
rate_limit = {{ key = "ip", rate = "1r/h", burst = 2 }}

[[route]]
path = "/cached"
pool = "web"
cache = true

[[route]]
path = "/checked"
pool = "checked"

[[route]]
pool = "retry"

[pool.web]
servers = [{{ addr = "{web.addr}" }}]

[pool.retry]
servers = [{{ addr = "{dead}" }}, {{ addr = "{spare.addr}" }}]
max_fails = 0
retry = {{ tries = 2, on = ["error"] }}

[pool.checked]
servers = [{{ addr = "{checked.addr}" }}]
health = {{ path = "/healthz", interval = "200ms", fastinter = "100ms", rise = 1, fall = 1 }}
"""


def test_every_family_agrees_with_what_happened(forkproxy_factory, backend_factory,
                                                memcached_factory):
    mc = memcached_factory()
    web, spare, checked = (backend_factory(n) for n in ("web", "spare", "checked"))
    port, aport, dead = free_port(), free_port(), f"127.0.0.1:{free_port()}"
    fp = forkproxy_factory(config(port, mc, web, dead, spare, checked),
                           server={"workers": 2, "admin": f"127.0.0.1:{aport}"})
    fp.wait_workers(2)
    base = f"http://127.0.0.1:{port}"

    def get(path):
        return requests.get(base + path, headers={"Connection": "close"}, timeout=30)

    # Retries: the dead server refuses the connection, the spare answers.
    for k in range(12):
        r = get(f"/r{k}")
        assert r.status_code == 200 and r.headers["X-Backend"] == "spare"
    # The cache: one miss, then hits (memcached is shared by both workers).
    cached = "/cached?hdr=Cache-Control:max-age%3D600"
    results = [get(cached).headers.get("X-Cache") for _ in range(4)]
    # Rate limit: a burst of 2, then 429 (the client counts them).
    limited = sum(get("/limited").status_code == 429 for _ in range(5))
    assert limited >= 3
    # A health transition: the checked server starts failing its checks.
    requests.get(f"http://{checked.addr}/_sethealth?status=500", timeout=30)

    def settled():
        s = samples(aport)
        return (total(s, "forkproxy_health_transitions_total", pool="checked", to="down") >= 1
                and total(s, "forkproxy_ratelimited_total") == limited
                and total(s, "forkproxy_cache_requests_total") == 4)
    wait_until(settled, timeout=20)
    s = samples(aport)
    print("\n" + "\n".join(f"{k} {v:g}" for k, v in sorted(s.items())))

    served_by_spare = spare.stats()["requests"]
    retry_route = next(k for k in s if k.startswith("forkproxy_requests_total")
                       and 'pool="retry"' in k).split('route="')[1].split('"')[0]
    # Every request of the retry route went to the spare; the ones that met the
    # dead server first are the retries, and no request was retried twice.
    assert served_by_spare >= 12
    retries = total(s, "forkproxy_retries_total", pool="retry")
    assert 1 <= retries <= total(s, "forkproxy_requests_total", route=retry_route)
    # Each request is counted once in requests_total and once in the histogram,
    # whose buckets are cumulative and end with the count.
    for k, count in s.items():
        if k.startswith("forkproxy_request_duration_seconds_count"):
            labels = k[k.index("{") + 1:-1]
            route = labels.split('route="')[1].split('"')[0]
            assert total(s, "forkproxy_requests_total", route=route) == count, route
            assert s[f'forkproxy_request_duration_seconds_bucket{{{labels},le="+Inf"}}'] == count
    # Upstream time: only requests that reached a server, by server.
    assert total(s, "forkproxy_upstream_duration_seconds_count", server=spare.addr) >= 12
    assert total(s, "forkproxy_upstream_duration_seconds_count", server=dead) == 0
    # The cache's own words (X-Cache) against the family.
    for result in ("MISS", "HIT"):
        assert total(s, "forkproxy_cache_requests_total", result=result) == results.count(result)
    assert results[0] == "MISS" and results.count("HIT") == 3
    assert total(s, "forkproxy_ratelimited_total") == limited
    assert s["forkproxy_sent_bytes_total"] > 0 and s["forkproxy_received_bytes_total"] > 0


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl missing")
def test_requests_total_tells_http1_requests_from_http2_streams(forkproxy_factory,
                                                                 backend_factory):
    """One HTTP/1.1 request and one HTTP/2 stream (h2c, prior knowledge) on the
    same plain listener: each under its own ``protocol`` label, nothing else
    split (the histogram and byte counters count both)."""
    web = backend_factory("web")
    port, aport = free_port(), free_port()
    # Route 0 is this test's alone: the readiness checks go to "/" (route 1).
    fp = forkproxy_factory(one_pool(port, [web.addr], listener_extra="http2 = true",
                                    route_extra='path = "/m/"\n[[route]]\npool = "web"'),
                           server={"workers": 2, "admin": f"127.0.0.1:{aport}"})
    fp.wait_workers(2)
    r = requests.get(f"http://127.0.0.1:{port}/m/one", headers={"Connection": "close"}, timeout=30)
    assert r.status_code == 200 and r.raw.version == 11
    out = subprocess.run(["curl", "-sS", "--max-time", "10", "--http2-prior-knowledge",
                          "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
                          f"http://127.0.0.1:{port}/m/two"],
                         capture_output=True, timeout=20, check=True).stdout
    assert out == b"2 200"
    series = f'forkproxy_requests_total{{route="0",pool="web",server="{web.addr}",code="2xx",'
    # Counted when the request ends, just after its last byte went out.
    wait_until(lambda: total(samples(aport), "forkproxy_requests_total", route="0") == 2,
               timeout=15, what="both requests counted")
    s = samples(aport)
    assert s[series + 'protocol="http1"}'] == 1
    assert s[series + 'protocol="h2"}'] == 1
    assert [k for k in s if k.startswith("forkproxy_requests_total") and 'route="0"' in k] == [
        series + 'protocol="http1"}', series + 'protocol="h2"}']
    assert total(s, "forkproxy_request_duration_seconds_count", route="0") == 2
    text = requests.get(f"http://127.0.0.1:{aport}/metrics", timeout=30).text
    assert text.count("# TYPE forkproxy_requests_total counter") == 1
