"""A worker's pool following the table's member cells (net.pools.PoolRuntime.sync_members).

The table is a bytearray laid out as the master lays it out
(``control.table_plan``); servers are added and removed with the same
functions ``forkproxyctl`` and DNS discovery use, minus the file and lock.
"""

from __future__ import annotations

import time

from forkproxy import control
from forkproxy.config import loads
from forkproxy.core.members import Spec
from forkproxy.core.table import MemberRow, Table, table_size
from forkproxy.net.pools import PoolRuntime

CONF = """
[[listener]]
name = "web"
bind = "127.0.0.1:8080"
[[route]]
pool = "web"
[pool.web]
servers = [{ addr = "10.0.0.1:80" }, { addr = "10.0.0.2:80" }]
sticky = { secret = "s" }
"""


class Req:
    target = "/"

    def __init__(self, cookie=None):
        self.cookie = cookie

    def get_all(self, name):
        return [self.cookie] if self.cookie else []


def setup(conf=CONF):
    cfg = loads(conf)
    rows, _, _ = control.table_plan(cfg, {})
    table = Table(bytearray(table_size(len(rows), 2)), create=True, n_rows=len(rows), n_slots=2)
    for i, (label, m) in enumerate(rows):
        table.write_member(i, label, m)
    pool = PoolRuntime(cfg.pools[0], table, list(range(len(cfg.pools[0].servers))), 0)
    pool.refresh(time.time())
    return cfg, table, pool


def add(cfg, table, addr, now=None):
    now = now or time.time()
    return control.allocate_row(table, f"web/{addr}", MemberRow(origin="runtime"),
                                control.first_health(cfg, "web", now), "test", now)


def remove(table, addr, now):
    row = control.active_row(table, "web", addr)
    label, m = table.read_member(row)
    table.write_member(row, label, MemberRow("removing", m.origin, m.weight, m.backup,
                                             m.max_conns, m.serial, now))


def picks(pool, n=20):
    return {pool.servers[pool.pick(Req(), "1.2.3.4", set())].addr for _ in range(n)}


def test_an_added_server_is_picked_and_a_removed_one_never_again():
    cfg, table, pool = setup()
    add(cfg, table, "10.0.0.3:80")
    pool.refresh(time.time())
    assert picks(pool) == {"10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"}
    i = next(i for i, s in enumerate(pool.servers) if s.addr == "10.0.0.1:80")
    pool.begin(i)  # a request in flight to it
    remove(table, "10.0.0.1:80", time.time())
    pool.refresh(time.time())
    assert picks(pool) == {"10.0.0.2:80", "10.0.0.3:80"}
    assert control.reclaim(table, time.time() + 60) == []  # still in flight
    pool.end(i)
    assert control.reclaim(table, time.time() + 60) == ["web/10.0.0.1:80"]


def test_a_reused_row_is_a_new_server_and_indexes_stay():
    cfg, table, pool = setup()
    remove(table, "10.0.0.2:80", time.time() - 10)
    control.reclaim(table, time.time())
    row = add(cfg, table, "10.0.0.2:80")  # the same address back, in the freed row
    assert row == 1
    pool.refresh(time.time())
    assert [s.addr for s in pool.servers] == ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.2:80"]
    assert pool._dead == [False, True, False]
    assert picks(pool) == {"10.0.0.1:80", "10.0.0.2:80"}
    assert pool.pick(Req(), "1.2.3.4", {0, 2}) is None  # never the dead index


def test_sticky_cookies_name_live_servers_by_their_pool_index():
    cfg, table, pool = setup()
    gone = pool.set_cookie(0).split(";")[0]
    kept = pool.set_cookie(1).split(";")[0]
    remove(table, "10.0.0.1:80", time.time())
    add(cfg, table, "10.0.0.3:80")
    pool.refresh(time.time())
    new = next(i for i, s in enumerate(pool.servers) if s.addr == "10.0.0.3:80")
    cookie = pool.set_cookie(new).split(";")[0]
    assert pool.sticky_server(Req(cookie))[0] == new
    assert pool.sticky_server(Req(kept))[0] == 1  # same token, same index as before
    assert pool.sticky_server(Req(gone))[0] is None  # the removed server: a fresh choice


def test_a_pool_of_discovered_servers_only_starts_empty():
    conf = CONF.replace('servers = [{ addr = "10.0.0.1:80" }, { addr = "10.0.0.2:80" }]',
                        'servers = [{ dns = "app.internal:80" }]')
    cfg, table, pool = setup(conf)
    assert pool.servers == [] and pool.pick(Req(), "1.2.3.4", set()) is None
    now = time.time()
    control.sync_discovered(table, cfg, "web", [Spec("10.0.0.7:80", weight=2)], now)
    pool.refresh(now)
    assert picks(pool) == {"10.0.0.7:80"}
    control.sync_discovered(table, cfg, "web", [Spec("10.0.0.7:80", weight=5)], now)
    pool.refresh(now)
    assert pool.servers[0].weight == 5
    control.sync_discovered(table, cfg, "web", [Spec("10.0.0.8:80")], now)
    pool.refresh(now)
    assert picks(pool) == {"10.0.0.8:80"}
