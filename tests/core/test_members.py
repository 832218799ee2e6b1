"""Runtime changes of a pool's servers merged with the configuration (core.members)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forkproxy.core.members import Spec, empty_state, merge, record_add, record_remove

A, B, C = Spec("10.0.0.1:80"), Spec("10.0.0.2:80"), Spec("10.0.0.3:80", weight=3)


def state(added=(), removed=(), pool="web"):
    s = empty_state()
    for spec in added:
        s = record_add(s, pool, spec, None)
    for spec in removed:
        s = record_remove(s, pool, spec.addr, spec)
    return s


@pytest.mark.parametrize("configured, st_, expect, kept_pools, notes", [
    # nothing recorded: the file as it is
    ({"web": [A]}, empty_state(), [(A, "config", True)], set(), 0),
    # added at run time: after the configured ones
    ({"web": [A]}, state(added=[C]), [(A, "config", True), (C, "runtime", True)],
     {"web"}, 0),
    # removed at run time, file unchanged: stays removed
    ({"web": [A, B]}, state(removed=[B]), [(A, "config", True), (B, "config", False)],
     {"web"}, 0),
    # the file now lists the runtime server: the file's entry wins
    ({"web": [A, Spec(C.addr, weight=5)]}, state(added=[C]),
     [(A, "config", True), (Spec(C.addr, weight=5), "config", True)], set(), 1),
    # the removed server's entry changed in the file: the file wins
    ({"web": [A, Spec(B.addr, weight=2)]}, state(removed=[B]),
     [(A, "config", True), (Spec(B.addr, weight=2), "config", True)], set(), 1),
    # the removed server left the file: the record goes
    ({"web": [A]}, state(removed=[B]), [(A, "config", True)], set(), 1),
    # the pool left the file: its records go
    ({"api": [A]}, state(added=[C]), [(A, "config", True)], set(), 1),
])
def test_merge_precedence(configured, st_, expect, kept_pools, notes):
    pools, kept, said = merge(configured, st_)
    assert [e for p in pools.values() for e in p] == expect
    assert set(kept["pools"]) == kept_pools
    assert len(said) == notes


def test_readding_a_removed_configured_server_forgets_the_removal():
    s = state(removed=[B])
    s = record_add(s, "web", B, B)
    assert s["pools"] == {}


def test_removing_a_runtime_server_forgets_it():
    s = record_remove(state(added=[C]), "web", C.addr, None)
    assert s["pools"] == {}


specs = st.builds(Spec, st.sampled_from(["a:1", "b:1", "c:1", "d:1"]), st.integers(1, 3),
                  st.booleans(), st.integers(0, 2))


@given(st.lists(specs, unique_by=lambda s: s.addr), st.lists(specs, unique_by=lambda s: s.addr),
       st.lists(st.sampled_from(["a:1", "b:1", "c:1", "d:1"])))
def test_merge_is_idempotent_and_lists_each_address_once(configured, added, removed):
    s = empty_state()
    for spec in added:
        s = record_add(s, "web", spec, next((c for c in configured if c.addr == spec.addr), None))
    for addr in removed:
        s = record_remove(s, "web", addr, next((c for c in configured if c.addr == addr), None))
    pools, kept, _ = merge({"web": configured}, s)
    again, kept2, notes2 = merge({"web": configured}, kept)
    assert again == pools and kept2 == kept and notes2 == []
    addrs = [spec.addr for spec, _, _ in pools["web"]]
    assert len(addrs) == len(set(addrs))
    assert [spec for spec, origin, _ in pools["web"] if origin == "config"] == configured
