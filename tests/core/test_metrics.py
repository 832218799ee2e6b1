"""core.metrics: the counter layout over a shared buffer and the Prometheus text."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from forkproxy.core.metrics import (BUCKETS, PROTOCOLS, Metrics, SlotCounter, relabel_rows, render,
                                    request_keys)

ROUTES = [(0, "web", ["10.0.0.1:80", "10.0.0.2:80"]), (1, "api", ["10.0.1.1:80"])]


def make(n_slots=4, routes=ROUTES):
    keys = request_keys(routes)
    return Metrics(keys, n_slots, bytearray(Metrics.size(len(keys), n_slots)))


def rec(route=0, upstream="10.0.0.1:80", status=200, received=10, sent=100, took=0.02,
        upstream_time=0.01, cache=None):
    return SimpleNamespace(route=route, pool={0: "web", 1: "api"}.get(route), upstream=upstream,
                           status=status, bytes_received=received, bytes_sent=sent,
                           request_time=took, upstream_time=upstream_time, cache=cache)


def req_key(route, pool, server, code, protocol="http1"):
    return ("requests_total", (("route", route), ("pool", pool), ("server", server), ("code", code),
                               ("protocol", protocol)))


@pytest.mark.parametrize("status,cls", [(100, "1xx"), (200, "2xx"), (304, "3xx"), (499, "4xx"),
                                        (599, "5xx"), (0, None), (600, None)])
def test_status_classes(status, cls):
    m = make()
    SlotCounter(m, 0).request(rec(status=status))
    counted = {k[1][3][1]: v for k, v in m.totals().items() if k[0] == "requests_total" and v}
    assert counted == ({cls: 1} if cls else {})


@pytest.mark.parametrize("protocols", [[0], [1], [0, 1, 1], [1, 0, 0, 0]])
def test_each_request_counts_under_its_protocol_only(protocols):
    m = make()
    for p in protocols:
        SlotCounter(m, 1).request(rec(), p)
    t = m.totals()
    for p, name in enumerate(PROTOCOLS):
        assert t[req_key("0", "web", "10.0.0.1:80", "2xx", name)] == protocols.count(p)
    # the other families have no protocol label: counted once per request whatever it came over
    assert t[("sent_bytes_total", ())] == 100 * len(protocols)
    assert sum(v for k, v in t.items() if k[0] == "request_duration_seconds_count") == len(protocols)


def test_every_requests_series_has_one_per_protocol():
    keys = [k for k in request_keys(ROUTES) if k[0] == "requests_total"]
    assert [k[1][-1] for k in keys] == [("protocol", p) for p in PROTOCOLS] * (len(keys) // 2)
    assert len({k[1][:-1] for k in keys}) == len(keys) // len(PROTOCOLS)


def test_slots_sum_and_each_slot_writes_only_its_row():
    m = make()
    a, b = SlotCounter(m, 0), SlotCounter(m, 3)
    for _ in range(3):
        a.request(rec())
    b.request(rec(status=502, upstream=None))
    b.request(rec(route=None, upstream=None, status=404, sent=5))
    t = m.totals()
    assert t[req_key("0", "web", "10.0.0.1:80", "2xx")] == 3
    assert t[req_key("0", "web", "", "5xx")] == 1
    assert t[req_key("", "", "", "4xx")] == 1
    assert t[("sent_bytes_total", ())] == 405
    assert t[("received_bytes_total", ())] == 50
    row1 = m.cells[1 * m.n_keys: 2 * m.n_keys]
    assert not any(row1)  # slot 1 never written


def test_a_server_not_in_the_pool_counts_without_a_server():
    m = make()
    SlotCounter(m, 0).request(rec(upstream="10.9.9.9:80"))
    assert m.totals()[req_key("0", "web", "", "2xx")] == 1


def test_a_server_that_came_at_run_time_counts_in_its_rows_series():
    keys = request_keys(ROUTES, spare_rows=range(3, 5))
    m = Metrics(keys, 2, bytearray(Metrics.size(len(keys), 2)))
    rows = {("web", "10.0.0.9:80"): 4}
    m.locate = lambda pool, addr: rows.get((pool, addr))
    c = SlotCounter(m, 0)
    c.request(rec(upstream="10.0.0.9:80"))
    c.transition("web", "10.0.0.9:80", "down")
    c.ejection("web", "10.0.0.9:80", "consecutive_5xx")
    rows[("web", "10.0.0.9:80")] = 3  # removed, then added again in another row
    c.request(rec(upstream="10.0.0.9:80", status=503))
    c.request(rec(upstream="10.0.0.8:80"))  # not (or no longer) a server: no server
    t = m.totals()
    assert t[req_key("0", "web", "#4", "2xx")] == 1
    assert t[req_key("0", "web", "#3", "5xx")] == 1
    assert t[req_key("0", "web", "", "2xx")] == 1
    assert t[("health_transitions_total", (("pool", "web"), ("server", "#4"), ("to", "down")))] == 1
    assert t[("outlier_ejections_total", (("pool", "web"), ("server", "#4"),
                                          ("reason", "consecutive_5xx")))] == 1
    named = relabel_rows(t, {3: ("web", "10.0.0.9:80"), 4: ("api", "10.0.1.7:80")})
    assert named[req_key("0", "web", "10.0.0.9:80", "5xx")] == 1
    # Row 4 holds a server of another pool now: web's series of row 4 are left out,
    # and a free row's too; configured servers keep theirs.
    assert not any(dict(k[1]).get("server", "").startswith("#") for k in named)
    assert all(dict(k[1]).get("server") != "10.0.1.7:80" or dict(k[1])["pool"] == "api"
               for k in named)
    assert req_key("0", "web", "10.0.0.1:80", "2xx") in named


def test_a_successor_in_the_slot_keeps_the_totals_and_gauges_clear():
    m = make()
    c = SlotCounter(m, 2)
    c.request(rec())
    c.connection(1)
    c.connection(1)
    c.connection(-1)
    assert m.totals()[("connections_active", ())] == 1
    m.clear_gauges(2)  # the master, once the worker is dead
    SlotCounter(m, 2).request(rec())  # its successor
    t = m.totals()
    assert t[("connections_active", ())] == 0
    assert t[req_key("0", "web", "10.0.0.1:80", "2xx")] == 2


def test_gauge_below_zero_reads_signed():
    m = make()
    SlotCounter(m, 0).connection(-1)
    assert m.totals()[("connections_active", ())] == -1


def test_carry_keeps_totals_of_series_that_stay():
    old = make()
    SlotCounter(old, 0).request(rec())
    SlotCounter(old, 1).request(rec(route=1, upstream="10.0.1.1:80"))
    SlotCounter(old, 1).connection(1)
    old.add(old.base, old.index[("reloads_total", ())])
    new = make(n_slots=6, routes=[(0, "web", ["10.0.0.1:80"])])  # route 1 gone
    new.carry(old)
    t = new.totals()
    assert t[req_key("0", "web", "10.0.0.1:80", "2xx")] == 1
    assert t[("reloads_total", ())] == 1
    assert t[("connections_active", ())] == 0  # gauges are not carried
    assert req_key("1", "api", "10.0.1.1:80", "2xx") not in t


def test_buffer_too_small():
    keys = request_keys(ROUTES)
    with pytest.raises(ValueError):
        Metrics(keys, 2, bytearray(8))


def test_render_prometheus_text():
    m = make()
    SlotCounter(m, 0).request(rec())
    text = render(m.totals(), [("server_up", (("pool", 'we"b'), ("server", "a")), 1, "gauge", "Up.")])
    lines = text.splitlines()
    assert "# TYPE forkproxy_requests_total counter" in lines
    assert ('forkproxy_requests_total{route="0",pool="web",server="10.0.0.1:80",code="2xx",'
            'protocol="http1"} 1') in lines
    assert sum(1 for line in lines if line.startswith("forkproxy_requests_total")) == 1  # zeros left out
    assert "forkproxy_sent_bytes_total 100" in lines
    assert 'forkproxy_server_up{pool="we\\"b",server="a"} 1' in lines
    assert text.endswith("\n")
    # every family has HELP and TYPE before its samples
    names = [line.split()[2] for line in lines if line.startswith("# TYPE")]
    assert len(names) == len(set(names))


def parse(text: str) -> dict[str, float]:
    """{sample name with labels: value} of a Prometheus text page."""
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


@pytest.mark.parametrize("took,le", [(0.0, "0.005"), (0.005, "0.005"), (0.0051, "0.01"),
                                     (0.3, "0.5"), (10.0, "10.0"), (11.0, "+Inf")])
def test_latency_lands_in_the_first_bucket_that_holds_it(took, le):
    m = make()
    SlotCounter(m, 1).request(rec(took=took))
    s = parse(render(m.totals()))
    series = 'forkproxy_request_duration_seconds_bucket{route="0",pool="web",le="%s"}'
    les = [*(repr(b) for b in BUCKETS), "+Inf"]
    first = les.index(le)
    assert [s[series % x] for x in les] == [0] * first + [1] * (len(les) - first)  # cumulative
    assert s['forkproxy_request_duration_seconds_count{route="0",pool="web"}'] == 1
    assert s['forkproxy_request_duration_seconds_sum{route="0",pool="web"}'] == pytest.approx(took)


def test_histogram_sums_over_slots_and_upstream_time_is_per_server():
    m = make()
    SlotCounter(m, 0).request(rec(took=0.2, upstream_time=0.1))
    SlotCounter(m, 3).request(rec(took=0.4, upstream_time=None, upstream=None, status=502))
    s = parse(render(m.totals()))
    assert s['forkproxy_request_duration_seconds_count{route="0",pool="web"}'] == 2
    assert s['forkproxy_request_duration_seconds_sum{route="0",pool="web"}'] == pytest.approx(0.6)
    assert s['forkproxy_upstream_duration_seconds_count{pool="web",server="10.0.0.1:80"}'] == 1
    assert not any("10.0.0.2:80" in k for k in s)  # never used: left out


@pytest.mark.parametrize("status,upstream,cache,family", [
    (429, None, None, 'forkproxy_ratelimited_total{route="0"}'),
    (200, "10.0.0.1:80", "HIT", 'forkproxy_cache_requests_total{route="0",result="HIT"}'),
    (200, None, "STALE", 'forkproxy_cache_requests_total{route="0",result="STALE"}'),
])
def test_cache_results_and_rate_limits(status, upstream, cache, family):
    m = make()
    SlotCounter(m, 0).request(rec(status=status, upstream=upstream, cache=cache))
    s = parse(render(m.totals()))
    assert s[family] == 1


def test_a_429_from_the_server_is_not_a_rate_limit():
    m = make()
    SlotCounter(m, 0).request(rec(status=429))
    assert "ratelimited" not in render(m.totals())


def test_retries_and_health_transitions():
    m = make()
    c = SlotCounter(m, 2)
    c.retry("web")
    c.retry("web")
    c.retry("nope")  # not in the layout: ignored, never raises
    c.transition("web", "10.0.0.2:80", "down")
    c.transition("web", "10.0.0.2:80", "up")
    c.transition("web", "10.9.9.9:80", "up")
    s = parse(render(m.totals()))
    assert s['forkproxy_retries_total{pool="web"}'] == 2
    assert not any("api" in k for k in s)  # zeros left out
    assert s['forkproxy_health_transitions_total{pool="web",server="10.0.0.2:80",to="down"}'] == 1
    assert s['forkproxy_health_transitions_total{pool="web",server="10.0.0.2:80",to="up"}'] == 1


def test_outlier_ejections_by_reason():
    m = make()
    c = SlotCounter(m, 1)
    c.ejection("web", "10.0.0.2:80", "consecutive_5xx")
    c.ejection("web", "10.0.0.2:80", "success_rate")
    c.ejection("web", "10.0.0.2:80", "success_rate")
    c.ejection("web", "10.9.9.9:80", "success_rate")  # not a server of the layout: ignored
    s = parse(render(m.totals()))
    key = 'forkproxy_outlier_ejections_total{pool="web",server="10.0.0.2:80",reason="%s"}'
    assert s[key % "consecutive_5xx"] == 1 and s[key % "success_rate"] == 2
    assert key % "consecutive_gateway_failure" not in s  # zeros left out


def test_pools_no_route_names_still_get_their_series():
    keys = request_keys(ROUTES, {"web": ["10.0.0.1:80"], "spare": ["10.5.0.1:80"]})
    assert ("retries_total", (("pool", "spare"),)) in keys


def test_a_server_in_two_pools_times_each_pool_apart():
    m = make(routes=[(0, "web", ["10.0.0.1:80"]), (1, "api", ["10.0.0.1:80"])])
    c = SlotCounter(m, 0)
    c.request(rec(route=0))
    c.request(rec(route=1, upstream_time=0.2))
    c.request(rec(route=1, upstream_time=0.2))
    s = parse(render(m.totals()))
    assert s['forkproxy_upstream_duration_seconds_count{pool="web",server="10.0.0.1:80"}'] == 1
    assert s['forkproxy_upstream_duration_seconds_count{pool="api",server="10.0.0.1:80"}'] == 2


def test_mirror_series_exist_only_for_mirroring_routes_and_count_by_result():
    keys = request_keys(ROUTES, mirrors=[1])
    m = Metrics(keys, 2, bytearray(Metrics.size(len(keys), 2)))
    c0, c1 = SlotCounter(m, 0), SlotCounter(m, 1)
    for result in ("sent", "sent", "dropped", "failed", "skipped"):
        c0.mirror(1, result)
    c1.mirror(1, "sent")
    c0.mirror(0, "sent")  # route 0 does not mirror: no series, nothing counted
    got = {k[1]: v for k, v in m.totals().items() if k[0] == "mirror_total"}
    assert got == {(("route", "1"), ("result", "sent")): 3,
                   (("route", "1"), ("result", "failed")): 1,
                   (("route", "1"), ("result", "dropped")): 1,
                   (("route", "1"), ("result", "skipped")): 1}
    text = render(m.totals())
    assert 'forkproxy_mirror_total{route="1",result="sent"} 3' in text
    assert "# TYPE forkproxy_mirror_total counter" in text
