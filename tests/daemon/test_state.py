"""``daemon.state``: the master's slot accounting, without a master (pure logic;
a stand-in for the configuration, which it only holds)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from forkproxy.daemon.state import MasterState


def _state(n_slots: int) -> MasterState:
    st = MasterState(SimpleNamespace(path="/x.toml"))
    st.n_slots = n_slots
    return st


@pytest.mark.parametrize("n_slots, spawned, released, expect", [
    (3, 3, [], [0, 1, 2]),
    (2, 3, [], [0, 1, None]),        # beyond the slots: a worker without one
    (3, 3, [1], [0, 1, 2, 1]),       # the lowest free slot goes to the next worker
    (3, 3, [2, 0], [0, 1, 2, 0]),
])
def test_a_new_worker_gets_the_lowest_free_slot(n_slots, spawned, released, expect):
    st = _state(n_slots)
    ctxs = [st.new_worker(0.0) for _ in range(spawned)]
    for i in released:
        st.release(ctxs[i])
    if released:
        ctxs.append(st.new_worker(0.0))
    assert [c.slot for c in ctxs] == expect


def test_a_context_holds_the_state_of_its_fork():
    st = _state(4)
    st.sticky_key, st.reload_pipe = b"k" * 16, (7, 8)
    first = st.new_worker(1.5)
    st.generation += 1
    st.config = SimpleNamespace(path="/y.toml")
    second = st.new_worker(2.5)
    assert (first.generation, first.config.path, first.heartbeat0) == (1, "/x.toml", 1.5)
    assert (second.generation, second.config.path, second.reload_fd) == (2, "/y.toml", 8)
    assert not first.retiring and st.good == (1, first.config)
