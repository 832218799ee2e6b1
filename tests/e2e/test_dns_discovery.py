"""DNS discovery end to end: { srv = ... } and { dns = ... } servers of a pool,
resolved against a real DNS server on 127.0.0.1 (tests/support/dnsserver.py)
whose records the test changes while forkproxy runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from support.configs import one_pool
from support.dnsserver import write_zone
from support.procs import Proc, free_port, wait_until
from support.runner import http_get

DNSSERVER_PY = Path(__file__).resolve().parents[1] / "support" / "dnsserver.py"


class DnsServer:
    """dnsserver.py on 127.0.0.1:port, its zone in a file ``set()`` rewrites."""

    def __init__(self, directory: Path):
        self.port = free_port()
        directory.mkdir(parents=True, exist_ok=True)
        self.zone = directory / "zone.json"
        self.set({})
        self.proc = Proc([sys.executable, DNSSERVER_PY, "--port", self.port, "--zone", self.zone],
                         directory, name="dnsserver")
        wait_until(lambda: "ready" in self.proc.log_text(), timeout=15, what="dnsserver ready")

    def set(self, records: dict, fail: bool = False) -> None:
        write_zone(self.zone, records, ttl=1, fail=fail)


@pytest.fixture
def dns_server(tmp_path):
    server = DnsServer(tmp_path / "dns")
    yield server
    server.proc.stop()


def srv(*targets):
    """SRV records: (priority, weight, port) on target app.test."""
    return {"_http._tcp.app.test.": {"SRV": [[p, w, port, "app.test."] for p, w, port in targets]},
            "app.test.": {"A": ["127.0.0.1"]}}


def pool_servers(fp) -> dict:
    doc = fp.ctl_status()
    return {s["addr"]: s for p in doc["pools"] if p["name"] == "web" for s in p["servers"]}


def active(fp) -> set[str]:
    return {a for a, s in pool_servers(fp).items() if s["member"] == "active"}


def server_conf(dns_server) -> dict:
    return {"resolvers": [f"127.0.0.1:{dns_server.port}"], "dns_min_ttl": "100ms"}


def test_srv_records_that_change_move_the_traffic(forkproxy_factory, backend_factory,
                                                  dns_server):
    a, b = backend_factory("a"), backend_factory("b")
    dns_server.set(srv((10, 5, a.port)))
    port = free_port()
    fp = forkproxy_factory(one_pool(port, ['{ srv = "_http._tcp.app.test" }']),
                           server=server_conf(dns_server), ready=False)
    fp.wait_workers(2)
    wait_until(lambda: active(fp) == {a.addr}, timeout=20, what="a found")
    s = pool_servers(fp)[a.addr]
    assert s["origin"] == "dns" and s["weight"] is None
    assert f"{a.addr} (dns)" in fp.ctl("status").stdout
    assert http_get("127.0.0.1", port, "/x")[0] == 200
    # b arrives, with a lower priority: a backup
    dns_server.set(srv((10, 5, a.port), (20, 1, b.port)))
    wait_until(lambda: active(fp) == {a.addr, b.addr}, timeout=20, what="b found")
    # a leaves: its row goes, traffic goes to b
    dns_server.set(srv((20, 1, b.port)))
    wait_until(lambda: a.addr not in pool_servers(fp), timeout=20, what="a gone")
    a.reset()
    for _ in range(5):
        assert http_get("127.0.0.1", port, "/x")[0] == 200
    assert a.stats()["requests"] == 0 and b.stats()["requests"] >= 5
    # a DNS outage, then an empty answer: the last known set stays
    dns_server.set({}, fail=True)
    fp.wait_error_log("resolution failed (", timeout=20)
    dns_server.set({"_http._tcp.app.test.": {"SRV": []}})
    fp.wait_error_log("no address in the answer", timeout=20)
    assert active(fp) == {b.addr}
    assert http_get("127.0.0.1", port, "/x")[0] == 200


def test_dns_entry_follows_every_a_and_aaaa_address(forkproxy_factory, backend_factory,
                                                   dns_server):
    a = backend_factory("a")
    dns_server.set({"app.test.": {"A": ["127.0.0.1"], "AAAA": ["::1"]}})
    port = free_port()
    fp = forkproxy_factory(one_pool(port, [f'{{ dns = "app.test:{a.port}", weight = 3 }}']),
                           server=server_conf(dns_server), ready=False)
    fp.wait_workers(2)
    wait_until(lambda: active(fp) == {a.addr, f"[::1]:{a.port}"}, timeout=20,
               what="both addresses found")
    dns_server.set({"app.test.": {"A": ["127.0.0.2"]}})
    wait_until(lambda: active(fp) == {f"127.0.0.2:{a.port}"}, timeout=20,
               what="the new address only")
    # survives a reload: the last known set is carried into the new table
    dns_server.set({}, fail=True)
    fp.reload()
    fp.wait_error_log("resolution failed (", timeout=20)
    wait_until(lambda: active(fp) == {f"127.0.0.2:{a.port}"}, timeout=20,
               what="the set kept across the reload")


def test_a_discovered_server_has_its_own_metrics(forkproxy_factory, backend_factory, dns_server):
    import requests

    a = backend_factory("a")
    dns_server.set(srv((10, 5, a.port)))
    port, aport = free_port(), free_port()
    fp = forkproxy_factory(one_pool(port, ['{ srv = "_http._tcp.app.test" }']),
                           server={**server_conf(dns_server), "admin": f"127.0.0.1:{aport}"},
                           ready=False)
    fp.wait_workers(2)
    wait_until(lambda: active(fp) == {a.addr}, timeout=20, what="a found")

    def served():
        return http_get("127.0.0.1", port, "/x")[0] == 200
    wait_until(served, timeout=15, what="a request through a")
    labels = f'pool="web",server="{a.addr}"'
    series = f'forkproxy_requests_total{{route="0",{labels},code="2xx",protocol="http1"}} '

    def metrics() -> str:
        return requests.get(f"http://127.0.0.1:{aport}/metrics", timeout=30).text
    # Counted when the request ends, just after its answer went out (and a
    # series at 0 is not exported).
    wait_until(lambda: series in metrics(), timeout=15, what="the request counted")
    text = metrics()
    assert f"forkproxy_upstream_duration_seconds_count{{{labels}}} " in text
    assert 'server="#' not in text
