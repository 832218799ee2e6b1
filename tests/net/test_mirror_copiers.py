"""net.mirror.Copiers: the bounded set of greenlets that send a route's copies.

In-process gevent, no sockets: jobs are plain tuples run by a recording
function; the hub runs them when the test yields (``gevent.sleep(0)``, as
the real request's first wait does).  Nothing is timed.
"""

from __future__ import annotations

import gevent
import pytest
from gevent.event import Event

from forkproxy.net.mirror import Copiers
from forkproxy.net.sockio import Timers


def settle():
    for _ in range(5):
        gevent.sleep(0)


def test_jobs_run_after_the_caller_yields_and_greenlets_are_kept():
    ran = []
    c = Copiers(4, lambda job, timers: ran.append((job, type(timers))))
    for n in range(3):
        c.put((n,))
    assert ran == [] and len(c) == 3  # nothing runs before the caller waits
    settle()
    assert sorted(j for j, _ in ran) == [(0,), (1,), (2,)]
    assert {t for _, t in ran} == {Timers}
    assert len(c) == 0 and not c.full()
    made = c.made
    assert 1 <= made <= 3
    for n in range(20):  # one at a time: the same greenlets, woken again
        c.put((n,))
        settle()
    assert c.made == made and len(ran) == 23


@pytest.mark.parametrize("limit", [1, 2, 4])
def test_at_most_limit_copies_in_flight_then_full(limit):
    gate, running = Event(), []

    def run(job, timers):
        running.append(job)
        gate.wait()

    c = Copiers(limit, run)
    for n in range(limit):
        assert not c.full()
        c.put((n,))
    assert c.full() and len(c) == limit
    settle()
    assert len(running) == limit and c.made <= limit
    gate.set()
    settle()
    assert len(c) == 0 and not c.full()


def test_a_job_that_raises_loses_neither_the_greenlet_nor_the_count(monkeypatch):
    hub = gevent.get_hub()
    seen = []
    monkeypatch.setattr(hub, "handle_error", lambda *a: seen.append(a[2]))

    def run(job, timers):
        if job == ("bad",):
            raise ValueError("boom")
        seen.append(job)

    c = Copiers(1, run)
    c.put(("bad",))
    settle()
    c.put(("good",))
    settle()
    assert isinstance(seen[0], ValueError) and seen[1:] == [("good",)]
    assert len(c) == 0 and c.made == 1
