"""Rate limits shared by a fleet: two forkproxy daemons on one memcached hold one
limit (route rate_limit scope = "fleet"); without memcached each holds its own
and says so in its status.

The fleet count is a fixed window of the rate's unit (one hour here): a run
that straddles the top of an hour starts a new window, which no test here can
rule out without waiting, so the limits are per hour to make that rare.
"""

from __future__ import annotations

import json

from support.configs import memcached, one_pool
from support.procs import free_port
from support.runner import http_get

TOKEN = "s3cret-token"


def node(forkproxy_factory, backend, mc_addr, rate="6r/h"):
    port, aport = free_port(), free_port()
    body = f"[cache]\n{memcached(mc_addr)}\n" + one_pool(
        port, [backend.addr], route_extra=f'rate_limit = {{ rate = "{rate}", key = "header:X-Client", '
                                  'scope = "fleet" }')
    fp = forkproxy_factory(body, server={"admin": f"127.0.0.1:{aport}", "admin_token": TOKEN})
    return fp, port


def status_of(port) -> int:
    """The status of one request of client "t" (the readiness checks are keyed apart)."""
    return http_get("127.0.0.1", port, "/x", headers={"X-Client": "t"})[0]


def rate_limits(fp) -> list[dict]:
    return json.loads(fp.ctl("--json", "status").stdout)["rate_limits"]


def test_two_nodes_on_one_memcached_hold_one_limit(forkproxy_factory, backend_factory,
                                                    memcached_factory):
    mc, b = memcached_factory(), backend_factory("b")
    (fp1, p1), (fp2, p2) = (node(forkproxy_factory, b, mc.addr) for _ in range(2))
    answers = [status_of(p) for p in (p1, p2) * 3]
    assert answers == [200] * 6  # 6 per hour between them, whichever node takes them
    assert status_of(p1) == 429 and status_of(p2) == 429
    assert rate_limits(fp1) == [{"route": 0, "scope": "fleet", "shared": True, "why": None}]
    assert "rate limit of route 0: shared by the fleet" in fp2.ctl("status").stdout


def test_without_memcached_each_node_holds_its_own_limit_and_says_so(
        forkproxy_factory, backend_factory, memcached_factory):
    mc, b = memcached_factory(), backend_factory("b")
    (fp1, p1), (fp2, p2) = (node(forkproxy_factory, b, mc.addr) for _ in range(2))
    mc.stop()
    # The node limit: a bucket of burst 1 per node, refilled every 10 minutes.
    assert [status_of(p1), status_of(p1)] == [200, 429]
    assert [status_of(p2), status_of(p2)] == [200, 429]
    (rl,) = rate_limits(fp1)
    assert rl["shared"] is False and "memcached unreachable" in rl["why"]
    assert "NODE LIMIT" in fp1.ctl("status").stdout
