"""``core.status.traffic``: metrics totals summed into the status page's counters (table-driven)."""

from __future__ import annotations

import pytest

from forkproxy.core.metrics import Metrics, request_keys
from forkproxy.core.status import traffic


def req(route, pool, server, code):
    return ("requests_total", (("route", route), ("pool", pool), ("server", server), ("code", code)))


def dur(part, route, pool):
    return (f"request_duration_seconds_{part}", (("route", route), ("pool", pool)))


ZERO_CODES = {"1xx": 0, "2xx": 0, "3xx": 0, "4xx": 0, "5xx": 0}

CASES = {
    "metrics off: no keys, all zeros": (
        {},
        {"requests": 0, "by_code": ZERO_CODES, "servers": {},
         "latency": {"count": 0, "sum": 0.0}},
    ),
    "classes and servers are summed over routes": (
        {req("0", "web", "10.0.0.1:80", "2xx"): 5, req("1", "web", "10.0.0.1:80", "2xx"): 2,
         req("0", "web", "10.0.0.2:80", "5xx"): 1, req("0", "web", "10.0.0.2:80", "2xx"): 0},
        {"requests": 8, "by_code": {**ZERO_CODES, "2xx": 7, "5xx": 1},
         "servers": {"web/10.0.0.1:80": 7, "web/10.0.0.2:80": 1},
         "latency": {"count": 0, "sum": 0.0}},
    ),
    "answered without a server: counted, but under no server": (
        {req("", "", "", "4xx"): 3, req("0", "web", "", "5xx"): 2},
        {"requests": 5, "by_code": {**ZERO_CODES, "4xx": 3, "5xx": 2}, "servers": {},
         "latency": {"count": 0, "sum": 0.0}},
    ),
    "the same address in two pools stays two servers": (
        {req("0", "a", "10.0.0.1:80", "2xx"): 1, req("1", "b", "10.0.0.1:80", "3xx"): 4},
        {"requests": 5, "by_code": {**ZERO_CODES, "2xx": 1, "3xx": 4},
         "servers": {"a/10.0.0.1:80": 1, "b/10.0.0.1:80": 4},
         "latency": {"count": 0, "sum": 0.0}},
    ),
    "latency: counts summed, microseconds become seconds": (
        {dur("count", "0", "web"): 3, dur("sum", "0", "web"): 1_500_000,
         dur("count", "", ""): 1, dur("sum", "", ""): 250_000,
         ("request_duration_seconds_bucket", (("route", "0"), ("pool", "web"), ("le", "0.005"))): 9},
        {"requests": 0, "by_code": ZERO_CODES, "servers": {},
         "latency": {"count": 4, "sum": 1.75}},
    ),
    "other families are ignored": (
        {("received_bytes_total", ()): 100, ("sent_bytes_total", ()): 200,
         ("connections_active", ()): 3, ("reloads_total", ()): 1},
        {"requests": 0, "by_code": ZERO_CODES, "servers": {},
         "latency": {"count": 0, "sum": 0.0}},
    ),
}


@pytest.mark.parametrize("totals, expected", CASES.values(), ids=CASES.keys())
def test_traffic(totals, expected):
    assert traffic(totals) == expected


def test_traffic_of_a_real_layout_lists_every_routed_server_at_zero():
    """Over real ``Metrics`` totals: every server a route sends to is listed, from 0."""
    keys = request_keys([(0, "web", ["10.0.0.1:80", "10.0.0.2:80"])])
    metrics = Metrics(keys, 2, bytearray(Metrics.size(len(keys), 2)))
    doc = traffic(metrics.totals())
    assert doc["servers"] == {"web/10.0.0.1:80": 0, "web/10.0.0.2:80": 0}
    assert doc["requests"] == 0 and doc["latency"] == {"count": 0, "sum": 0.0}
