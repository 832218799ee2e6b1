"""net.sticktable against a real memcached: what two workers (or nodes) share,
when an entry is written (new, moved, due for its refresh), and the worker's
own table when memcached is gone.  The clock is injected; no request path."""

from __future__ import annotations

from types import SimpleNamespace

import pylibmc

from forkproxy.core.stick import decode_entry
from forkproxy.net.sticktable import StickTable

TTL = 600.0


class Clock:
    def __init__(self):
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def table(servers, clock, scope="fleet") -> StickTable:
    cfg = SimpleNamespace(key="header:x-client", ttl=TTL, scope=scope, keys=1000)
    return StickTable("app", cfg, servers, 1.0, clock=clock)  # a loaded host: a generous timeout


def req(client: str | None):
    return SimpleNamespace(get=lambda name: client, get_all=lambda name: [])


def stored(mc_addr: str, t: StickTable, key: str):
    raw = pylibmc.Client([mc_addr], binary=True).get(t._mkey(key))
    return decode_entry(raw) if raw is not None else None


def test_two_tables_on_one_memcached_share_their_entries(memcached_factory):
    mc, clock = memcached_factory(), Clock()
    one, two = table([mc.addr], clock), table([mc.addr], clock)
    stuck = one.lookup(req("alice"), "192.0.2.1")
    assert (stuck.key, stuck.addr, stuck.shared) == ("h alice", None, True)
    one.store(stuck, "10.0.0.1:80")
    assert two.lookup(req("alice"), "192.0.2.9").addr == "10.0.0.1:80"
    assert two.lookup(req(None), "192.0.2.9") is None  # no key: balanced as usual


def test_a_new_key_does_not_overwrite_another_nodes_choice(memcached_factory):
    mc, clock = memcached_factory(), Clock()
    one, two = table([mc.addr], clock), table([mc.addr], clock)
    a, b = one.lookup(req("bob"), ""), two.lookup(req("bob"), "")  # both miss
    one.store(a, "10.0.0.1:80")
    two.store(b, "10.0.0.2:80")  # an add: the first choice stays
    assert stored(mc.addr, one, "h bob")[0] == "10.0.0.1:80"
    # A moved entry (its server could not take the request) is overwritten.
    c = two.lookup(req("bob"), "")
    two.store(c, "10.0.0.2:80")
    assert stored(mc.addr, one, "h bob")[0] == "10.0.0.2:80"


def test_an_entry_in_use_is_written_again_a_tenth_of_its_ttl_on(memcached_factory):
    mc, clock = memcached_factory(), Clock()
    t = table([mc.addr], clock)
    t.store(t.lookup(req("carol"), ""), "10.0.0.1:80")
    first = stored(mc.addr, t, "h carol")[1]
    clock.now += TTL * 0.05
    t.store(t.lookup(req("carol"), ""), "10.0.0.1:80")
    assert stored(mc.addr, t, "h carol")[1] == first  # not yet due: no write
    clock.now += TTL * 0.06
    t.store(t.lookup(req("carol"), ""), "10.0.0.1:80")
    assert stored(mc.addr, t, "h carol")[1] == int(clock.now)


def test_without_memcached_the_workers_own_table_answers(memcached_factory):
    mc, clock = memcached_factory(), Clock()
    t = table([mc.addr], clock)
    t.store(t.lookup(req("dave"), ""), "10.0.0.1:80")  # kept in the worker too
    assert t.state()["shared"] is True
    mc.stop()
    # libmemcached answers the first get on the connection memcached closed
    # as a miss, without an error; the next call fails.
    t.lookup(req("zed"), "")
    stuck = t.lookup(req("dave"), "")
    assert (stuck.addr, stuck.shared) == ("10.0.0.1:80", False)
    t.store(t.lookup(req("erin"), ""), "10.0.0.2:80")
    assert t.lookup(req("erin"), "").addr == "10.0.0.2:80"
    st = t.state()
    assert st["shared"] is False and "memcached unreachable" in st["why"]


def test_a_node_table_never_calls_memcached_and_says_nothing():
    clock = Clock()
    t = table(["127.0.0.1:1"], clock, scope="node")
    t.store(t.lookup(req("frank"), ""), "10.0.0.1:80")
    assert t.lookup(req("frank"), "").addr == "10.0.0.1:80"
    assert t.servers == () and t.fleet is False
    clock.now += TTL
    assert t.lookup(req("frank"), "").addr is None  # unused for its ttl: gone


def test_a_fleet_table_without_cache_servers_says_so():
    t = table([], Clock())
    assert t.state() == {"pool": "app", "scope": "fleet", "shared": False,
                         "why": "no cache.servers: each worker keeps its own table"}
