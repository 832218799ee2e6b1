"""net.cache_store and net.cache_memcached: the memcached store (both modes) and the in-process store, against a real memcached.

Most tests drive the stores in this process (pylibmc in "direct" mode is
plain blocking I/O; "threadpool" mode uses gevent's hub and threadpool,
which work without monkey patching).  The cross-process lock and a smoke
test under ``monkey.patch_all`` (as in a worker) run in child processes.
The breaker gets a manual clock, so its state is asserted, never a timing;
every wait polls a condition.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from support import procs
from support.procs import wait_until
from support.runner import REPO_ROOT

from forkproxy.core.epochs import Epochs
from forkproxy.net.cache_memcached import Breaker, MemcachedStore, breaker_for
from forkproxy.net.cache_shm import SharedStore, create_region
from forkproxy.net.cache_store import (NAMESPACE_HOSTS, NAMESPACE_TTL, NEAR_TTL, CacheError, MemoryStore,
                                       _split_entry, hashed_key)

SMALL_ITEM = 1000   # small chunks: many chunks from a few KB
# Where a test expects memcached to answer: a generous timeout, so a loaded
# machine cannot turn a hit into a (fail-open) miss.
SAFE_MS = 500


class Clock:
    """A manual monotonic clock for breakers."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def read_all(got) -> bytes:
    head, reader = got
    return b"".join(reader)


@pytest.fixture
def memcached(memcached_factory):
    return memcached_factory()


@pytest.fixture(params=["direct", "threadpool", "memory", "shared"])
def make_store(request, memcached_factory, tmp_path):
    """``make(**kw) -> store`` of the parametrized kind (one memcached per test)."""
    mc = memcached_factory() if request.param not in ("memory", "shared") else None

    def make(**kw):
        if request.param == "shared":  # the embedded store (net.cache_shm)
            kw.pop("timeout_ms", None)
            return SharedStore(create_region(str(tmp_path), kw.pop("max_bytes", 32 << 20)), **kw)
        if mc is None:
            kw.pop("timeout_ms", None)
            return MemoryStore(kw.pop("max_bytes", 64 << 20), **kw)
        kw.setdefault("timeout_ms", SAFE_MS)
        return MemcachedStore([mc.addr], mode=request.param, **kw)

    return make


def freeze(mc) -> None:
    """SIGSTOP, then wait until every thread of memcached is stopped (the signal is asynchronous)."""
    mc.freeze()
    task = f"/proc/{mc.pid}/task"

    def stopped():
        states = []
        for tid in os.listdir(task):
            try:
                with open(f"{task}/{tid}/stat") as f:
                    states.append(f.read().rsplit(")", 1)[1].split()[0])
            except OSError:
                pass
        return bool(states) and all(s in "Tt" for s in states)

    wait_until(stopped, timeout=10, what="memcached to stop")


def curr_items(mc) -> int:
    for line in mc.command("stats").decode().splitlines():
        if line.startswith("STAT curr_items "):
            return int(line.split()[2])
    raise AssertionError("no curr_items in stats")


# ------------------------------------------------------------------ round trips

def test_hashed_keys_fit_memcached():
    k = hashed_key("e", "http://x" + "/a" * 1000, "\u00e9 \n\0")
    assert k.startswith("fp:") and len(k) == 67 and k.isascii() and " " not in k
    assert k != hashed_key("e", "http://x")


def test_round_trip_small_inline(make_store):
    store = make_store()
    assert store.get_entry("k") is None
    w = store.begin_write("k", b'{"head":1}')
    assert w.write(b"hello ") and w.write(b"world")
    assert w.commit()
    head, reader = store.get_entry("k")
    assert head == b'{"head":1}' and reader.length == 11
    assert b"".join(reader) == b"hello world"
    s = store.state
    assert s["hits"] == 1 and s["misses"] == 1 and s["stores"] == 1 and s["errors"] == 0


def test_round_trip_empty_body(make_store):
    store = make_store()
    w = store.begin_write("empty", b"h")
    assert w.commit()
    head, reader = store.get_entry("empty")
    assert head == b"h" and reader.length == 0 and list(reader) == []


def test_round_trip_chunked_over_one_megabyte(make_store):
    store = make_store()
    body = os.urandom(2_500_000)
    w = store.begin_write("big", b"head")
    for i in range(0, len(body), 65536):   # as a response streams in
        assert w.write(body[i:i + 65536])
    assert w.commit()
    head, reader = store.get_entry("big")
    chunks = list(reader)
    assert head == b"head" and reader.length == len(body)
    assert len(chunks) == -(-len(body) // store.item_size) and b"".join(chunks) == body


def test_overwrite_replaces(make_store):
    store = make_store(item_size=SMALL_ITEM)
    for body in (b"a" * 5000, b"b" * 300, b"c" * 2500):
        w = store.begin_write("k", b"h")
        w.write(body)
        assert w.commit()
        assert read_all(store.get_entry("k")) == body


# ------------------------------------------------------------------ versions

def _write(store, key, body, step=700, commit=True):
    w = store.begin_write(key, b"head-" + body[:1])
    for i in range(0, len(body), step):
        assert w.write(body[i:i + step])
    if commit:
        assert w.commit()
    return w


def test_reader_never_sees_a_mix_of_versions(make_store):
    """v1 stored; a reader starts; v2 is written (chunks, then entry) mid-read; the reader ends with v1."""
    store = make_store(item_size=SMALL_ITEM)
    v1, v2 = b"1" * 10_000, b"2" * 10_000
    _write(store, "k", v1)

    head, reader = store.get_entry("k")
    it = iter(reader)
    got = [next(it), next(it)]
    pending = _write(store, "k", v2, commit=False)      # v2's chunks are in, its entry not yet
    got.append(next(it))
    assert read_all(store.get_entry("k")) == v1          # a new reader still gets v1
    assert pending.commit()                             # v2 published
    got.extend(it)
    assert head == b"head-1" and b"".join(got) == v1     # all v1, not a mix

    head2, reader2 = store.get_entry("k")
    assert head2 == b"head-2" and b"".join(reader2) == v2


def test_vanished_chunk_raises_cache_error_not_a_short_body(memcached):
    store = MemcachedStore([memcached.addr], timeout_ms=SAFE_MS, item_size=SMALL_ITEM)
    _write(store, "k", b"x" * 5000)
    head, reader = store.get_entry("k")
    it = iter(reader)
    next(it)
    version, count = _split_entry(store._get(store._entry_key("k")))[:2]
    assert count == 5
    store._delete(store._chunk_key("k", version, 3))     # as if memcached evicted it
    with pytest.raises(CacheError):
        list(it)
    assert store.get_entry("k") is None


# ------------------------------------------------------------------ limits

def test_max_object_size_exceeded_stores_nothing(make_store):
    store = make_store(item_size=SMALL_ITEM, max_object_size=3000)
    before = store.state.get("items")
    w = store.begin_write("big", b"h")
    assert w.write(b"a" * 2500)           # two chunks already sent
    assert not w.write(b"a" * 1000)       # over 3000: gives up
    assert not w.write(b"a")              # and stays given up
    assert not w.commit()
    assert store.get_entry("big") is None
    assert store.state["too_large"] == 1 and store.state["stores"] == 0
    if before is not None:                # memory store: its chunks are gone too
        assert store.state["items"] == before == 0 and store.state["bytes"] == 0


def test_max_object_size_leaves_no_chunk_in_memcached(memcached):
    store = MemcachedStore([memcached.addr], timeout_ms=SAFE_MS, item_size=SMALL_ITEM, max_object_size=5000)
    base = curr_items(memcached)
    w = store.begin_write("big", b"h")
    assert w.write(b"a" * 4500)
    assert not w.write(b"a" * 1000)
    assert curr_items(memcached) == base


def test_memory_store_is_an_lru_bounded_in_bytes():
    store = MemoryStore(20_000, item_size=SMALL_ITEM * 4)
    for i in range(4):
        _write(store, f"k{i}", bytes([65 + i]) * 3000)
    assert store.state["bytes"] <= 20_000
    assert store.get_entry("k0") is not None           # k0 is now the most recently used
    for i in range(4, 8):
        _write(store, f"k{i}", bytes([65 + i]) * 3000)
        assert store.state["bytes"] <= 20_000
    assert read_all(store.get_entry("k0")) == b"A" * 3000
    assert store.get_entry("k1") is None                # least recently used: evicted
    assert read_all(store.get_entry("k7")) == b"H" * 3000
    w = store.begin_write("huge", b"h")
    assert not w.write(b"z" * 20_001)                   # larger than the whole store
    assert store.get_entry("huge") is None


# ------------------------------------------------------------------ namespaces, locks

def test_namespace_bump(make_store):
    store = make_store()
    ns = store.namespace("shop.example")
    assert ns == store.namespace("shop.example") != store.namespace("other.example")
    assert store.bump_namespace("shop.example")
    ns2 = store.namespace("shop.example")
    assert ns2 != ns and ns2 == store.namespace("shop.example")


def test_namespace_is_shared_by_stores_on_one_memcached(memcached):
    a = MemcachedStore([memcached.addr], timeout_ms=SAFE_MS)
    b = MemcachedStore([memcached.addr], timeout_ms=SAFE_MS, mode="threadpool")
    now = [100.0]
    a.clock = lambda: now[0]
    old = a.namespace("h")
    assert old == b.namespace("h")
    b.bump_namespace("h")  # b sees its own purge at once
    assert b.namespace("h") != old
    # a keeps the token it read for NAMESPACE_TTL, then reads the new one
    now[0] += NAMESPACE_TTL * 0.9
    assert a.namespace("h") == old
    now[0] += NAMESPACE_TTL * 0.2
    assert a.namespace("h") == b.namespace("h")


def test_namespace_cache_is_bounded_and_forgets_unreadable(memcached):
    store = MemcachedStore([memcached.addr], timeout_ms=SAFE_MS)
    for i in range(NAMESPACE_HOSTS + 10):
        store.namespace(f"h{i}")
    assert len(store._ns) <= NAMESPACE_HOSTS
    dead = MemcachedStore([f"127.0.0.1:{procs.free_port()}"], timeout_ms=SAFE_MS)
    assert dead.namespace("h") != dead.namespace("h")  # each a miss, nothing kept
    assert not dead._ns


def test_lock_in_process(make_store):
    store = make_store()
    assert store.lock("k", 5)
    assert not store.lock("k", 5)
    assert store.lock("other", 5)
    store.unlock("k")
    assert store.lock("k", 5)


_LOCKER = """
import sys
from gevent import monkey; monkey.patch_all()
from forkproxy.net.cache_memcached import MemcachedStore
store = MemcachedStore([sys.argv[1]], mode=sys.argv[2], timeout_ms=500)
print("held" if store.lock("page", 30) else "busy", flush=True)
sys.stdin.readline()
store.unlock("page")
print("unlocked", flush=True)
sys.stdin.readline()
"""


class Locker:
    """A child process (another worker, another forkproxy) taking the lock under gevent."""

    def __init__(self, addr: str, mode: str):
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        self.popen = subprocess.Popen([sys.executable, "-c", _LOCKER, addr, mode], env=env, text=True,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
        procs.track(self.popen.pid)

    def line(self) -> str:
        return self.popen.stdout.readline().strip()

    def tell(self) -> None:
        self.popen.stdin.write("go\n")
        self.popen.stdin.flush()

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(timeout=10)
        self.popen.stdin.close()
        self.popen.stdout.close()


@pytest.mark.parametrize("mode", ["direct", "threadpool"])
def test_lock_coalesces_across_processes(memcached, mode):
    mine = MemcachedStore([memcached.addr], timeout_ms=SAFE_MS, mode=mode)
    other = Locker(memcached.addr, mode)
    try:
        assert other.line() == "held"
        assert not mine.lock("page", 30)            # the other process fetches upstream
        other.tell()
        assert other.line() == "unlocked"
        assert mine.lock("page", 30)                # now it is ours
        second = Locker(memcached.addr, mode)
        try:
            assert second.line() == "busy"
        finally:
            second.stop()
    finally:
        other.stop()


# ------------------------------------------------------------------ failing open

def _everything_fails_open(store):
    assert store.get_entry("k") is None
    w = store.begin_write("k", b"h")
    if w is not None:
        w.write(b"x" * 10)
        assert not w.commit()
    assert store.lock("k", 5)                       # nobody to coordinate with: fetch it
    store.unlock("k")
    assert not store.delete("k")
    ns = store.namespace("h")
    assert isinstance(ns, str) and ns != store.namespace("h")   # unreadable: never a stored one
    assert not store.bump_namespace("h")


@pytest.mark.parametrize("mode", ["direct", "threadpool"])
def test_memcached_killed_is_a_miss(memcached, mode):
    store = MemcachedStore([memcached.addr], mode=mode, timeout_ms=SAFE_MS)
    _write(store, "k", b"v" * 100)
    memcached.stop()
    _everything_fails_open(store)
    assert store.state["errors"] >= 1


def test_no_server_listening_is_a_miss():
    store = MemcachedStore([f"127.0.0.1:{procs.free_port()}"])
    _everything_fails_open(store)


@pytest.mark.parametrize("mode", ["direct", "threadpool"])
def test_frozen_memcached_opens_the_breaker_then_half_open_then_closed(memcached, mode):
    clock = Clock()
    breaker = Breaker(failures=3, window=10, cooldown=2, clock=clock)
    store = MemcachedStore([memcached.addr], mode=mode, timeout_ms=SAFE_MS, breaker=breaker)
    _write(store, "k", b"v" * 100)
    assert read_all(store.get_entry("k")) == b"v" * 100
    freeze(memcached)
    for _ in range(3):
        assert store.get_entry("k") is None
    assert breaker.state == "open" and breaker.opened == 1
    errors = store.state["errors"]
    for _ in range(5):                               # open: bypassed, no I/O, no new error
        assert store.get_entry("k") is None
        assert store.begin_write("k", b"h") is None
    assert store.state["errors"] == errors and store.state["bypassed"] >= 5

    memcached.thaw()
    clock.now += 2
    assert breaker.state == "half-open"

    def probe_closes():
        # libmemcached may still call the server failed (its retry_timeout): the
        # probe then fails and the breaker reopens; the next cool-down tries again.
        clock.now += 2
        store.get_entry("k")
        return breaker.state == "closed"

    wait_until(probe_closes, timeout=15, what="the breaker to close after the thaw")

    def hit():
        # On a loaded machine a call can still time out (a miss, failing open).
        clock.now += 2
        got = store.get_entry("k")
        return got is not None and read_all(got) == b"v" * 100

    wait_until(hit, timeout=15, what="a hit after the thaw")


# ------------------------------------------------------------------ breaker (pure)

def test_breaker_counts_failures_within_the_window():
    clock = Clock()
    b = Breaker(failures=3, window=10, slow=0.1, open_after=0.25, cooldown=2, clock=clock)
    for _ in range(2):
        assert b.allow()
        assert b.record(False, 0.001) is None
    clock.now += 11                                   # the first two fell out of the window
    assert b.record(False, 0.001) is None and b.state == "closed"
    assert b.record(True, 0.15) is None              # slow: counts as bad
    assert b.record(False, 0.001) == "open"
    assert b.state == "open" and not b.allow()


def test_breaker_opens_at_once_on_a_very_slow_call():
    b = Breaker(failures=3, slow=0.1, open_after=0.25, clock=Clock())
    assert b.record(True, 0.3) == "open"


@pytest.mark.parametrize("timeout, slow, open_after", [
    (0.001, 0.1, 0.25),      # low timeouts: the 100 ms stall target decides
    (0.03, 0.1, 0.25),       # the default cache.timeout
    (0.1, 0.1, 0.3),
    (0.5, 0.5, 1.5),         # memcached across a slow network
])
def test_breaker_for_a_timeout_never_holds_an_allowed_time_against_memcached(timeout, slow,
                                                                             open_after):
    b = breaker_for(timeout, failures=1, clock=Clock())
    assert (b.slow, b.open_after, b.failures) == (slow, pytest.approx(open_after), 1)
    assert b.record(True, slow) is None and b.state == "closed"
    assert b.record(True, slow + 0.001) == "open"


def test_breaker_for_opens_at_once_past_three_timeouts():
    b = breaker_for(0.5, failures=3, clock=Clock())
    assert b.record(True, 1.4) is None                # slow, one of three
    assert b.record(True, 1.6) == "open"


def test_store_breaker_fits_its_timeout():
    assert MemcachedStore(["127.0.0.1:1"], timeout_ms=500).breaker.slow == 0.5
    assert MemcachedStore(["127.0.0.1:1"]).breaker.open_after == 0.25


def test_breaker_half_open_lets_one_probe_through():
    clock = Clock()
    b = Breaker(failures=1, cooldown=2, clock=clock)
    b.record(False, 0)
    clock.now += 1
    assert b.state == "open" and not b.allow()
    clock.now += 1
    assert b.state == "half-open"
    assert b.allow()                                  # the probe
    assert not b.allow() and not b.allow()            # the others wait for it
    assert b.record(False, 0) == "open" and not b.allow()
    clock.now += 2
    assert b.allow()
    assert b.record(True, 0.001) == "closed"
    assert b.allow() and b.allow()


def test_breaker_lost_probe_is_replaced_after_a_cooldown():
    clock = Clock()
    b = Breaker(failures=1, cooldown=2, clock=clock)
    b.record(False, 0)
    clock.now += 2
    assert b.allow() and not b.allow()
    clock.now += 2                                    # the probe never reported
    assert b.allow()


# ------------------------------------------------------------------ under gevent, as in a worker

_GEVENT = """
import json, sys
from gevent import monkey; monkey.patch_all()
import gevent
from forkproxy.net.cache_memcached import MemcachedStore
addr, mode = sys.argv[1], sys.argv[2]
store = MemcachedStore([addr], mode=mode, item_size=1000, timeout_ms=500)
body = bytes(range(256)) * 40
def job(i):
    w = store.begin_write(f"k{i}", b"h%d" % i)
    for j in range(0, len(body), 999):
        w.write(body[j:j + 999])
    ok = w.commit()
    head, reader = store.get_entry(f"k{i}")
    return ok and head == b"h%d" % i and b"".join(reader) == body
jobs = [gevent.spawn(job, i) for i in range(20)]
gevent.joinall(jobs, raise_error=True)
print(json.dumps({"ok": all(j.value for j in jobs), "state": store.state}))
"""


@pytest.mark.parametrize("mode", ["direct", "threadpool"])
def test_concurrent_greenlets_under_monkey_patching(memcached, mode):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run([sys.executable, "-c", _GEVENT, memcached.addr, mode], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["ok"] and result["state"]["errors"] == 0 and result["state"]["hits"] == 20


# -- near copies (memcached only) --------------------------------------------------

def near_store(mc, epochs=None, **kw):
    return MemcachedStore([mc.addr], timeout_ms=SAFE_MS, near_size=1 << 20, epochs=epochs, **kw)


def put(store, key, body: bytes) -> None:
    w = store.begin_write(key, b"head")
    assert w.write(body) and w.commit()


def test_a_hot_entry_is_read_once_per_near_ttl(memcached):
    store = near_store(memcached)
    now = [100.0]
    store.clock = store.near.clock = lambda: now[0]
    put(store, "k", b"v1")
    gets = int(memcached.stats()["cmd_get"])
    for _ in range(5):
        assert read_all(store.get_entry("k")) == b"v1"
    assert int(memcached.stats()["cmd_get"]) == gets + 1
    assert store.counters["near_hits"] == 4 and store.state["near_items"] == 1
    now[0] += NEAR_TTL * 1.1  # then memcached is asked again
    assert read_all(store.get_entry("k")) == b"v1"
    assert int(memcached.stats()["cmd_get"]) == gets + 2


def test_a_change_by_another_worker_voids_near_copies_at_once(memcached):
    shared = bytearray(Epochs.SIZE)  # what the master shares with its workers
    a, b = near_store(memcached, Epochs(shared)), near_store(memcached, Epochs(shared))
    put(a, "k", b"v1")
    assert read_all(a.get_entry("k")) == b"v1" == read_all(a.get_entry("k"))
    put(b, "k", b"v2")  # stored by another worker
    assert read_all(a.get_entry("k")) == b"v2"
    b.delete("k")  # invalidated by another worker
    assert a.get_entry("k") is None
    # a host purge by another worker: a reads the new token at once
    token = a.namespace("h")
    assert b.bump_namespace("h")
    assert a.namespace("h") == b.namespace("h") != token


def test_a_stamp_holds_as_long_as_the_near_copy_would(memcached):
    """stamp/still (net.http_cache's hot hits) over memcached: True, counted as
    a (near) hit, while the near copy stands: not after another worker's change
    (the shared epochs), nor after NEAR_TTL (another forkproxy's change, a
    frozen memcached: get_entry asks memcached again then)."""
    shared = bytearray(Epochs.SIZE)
    a, b = near_store(memcached, Epochs(shared)), near_store(memcached, Epochs(shared))
    now = [100.0]
    a.clock = a.near.clock = lambda: now[0]
    put(a, "k", b"v1")
    _, reader = a.get_entry("k")                 # from memcached: the near copy is made
    assert a.stamp("k", object()) is None
    stamp = a.stamp("k", reader)
    hits, near = a.counters["hits"], a.counters["near_hits"]
    assert a.still(stamp)
    assert (a.counters["hits"], a.counters["near_hits"]) == (hits + 1, near + 1)
    now[0] += NEAR_TTL * 1.1
    assert not a.still(stamp)                   # the copy's time is up
    _, reader = a.get_entry("k")
    stamp = a.stamp("k", reader)
    assert a.still(stamp)
    put(b, "k", b"v2")                          # another worker's change
    assert not a.still(stamp)
    assert read_all(a.get_entry("k")) == b"v2"
    assert MemoryStore(1 << 20).stamp("k", reader) is None  # no cheaper way there


def test_a_change_by_another_forkproxy_is_seen_within_near_ttl(memcached):
    a, other = near_store(memcached), near_store(memcached)  # each its own counters
    now = [100.0]
    a.clock = a.near.clock = lambda: now[0]
    put(a, "k", b"v1")
    assert read_all(a.get_entry("k")) == b"v1"
    put(other, "k", b"v2")
    now[0] += NEAR_TTL * 0.9
    assert read_all(a.get_entry("k")) == b"v1"  # the near copy, still trusted
    now[0] += NEAR_TTL * 0.2
    assert read_all(a.get_entry("k")) == b"v2"


def test_near_copies_are_bounded_and_skip_big_items(memcached):
    store = MemcachedStore([memcached.addr], timeout_ms=SAFE_MS, near_size=64_000)
    put(store, "big", b"x" * 5000)  # over near_size / 16: read from memcached every time
    for _ in range(2):
        assert read_all(store.get_entry("big")) == b"x" * 5000
    assert store.counters["near_hits"] == 0
    for i in range(40):
        put(store, f"k{i}", b"y" * 3000)
        assert read_all(store.get_entry(f"k{i}")) == b"y" * 3000
    assert 0 < store.state["near_bytes"] <= 64_000
    # without near_size, none at all
    plain = MemcachedStore([memcached.addr], timeout_ms=SAFE_MS)
    put(plain, "k", b"v")
    read_all(plain.get_entry("k"))
    assert read_all(plain.get_entry("k")) == b"v"
    assert plain.counters["near_hits"] == 0 and plain.state["near_items"] == 0


def test_a_remembered_inline_entry_is_the_fresh_one():
    from forkproxy.net.cache_store import REMEMBERED_ITEM_SIZE, _HEADER, _MAGIC, _remembered_inline

    def item(body: bytes, count: int = 0, length: int | None = None) -> bytes:
        head = b'{"v":1}'
        n = len(body) if length is None else length
        return _HEADER.pack(_MAGIC, b"v" * 16, count, n, len(head)) + head + body

    for body in (b"", b"x" * 100, b"y" * (REMEMBERED_ITEM_SIZE - 100)):
        it = item(body)
        assert _split_entry(it) == (b"v" * 16, 0, len(body), b'{"v":1}', body)
        for _ in range(2):
            head, reader = _remembered_inline(it)
            assert head == b'{"v":1}' and reader.length == len(body)
            assert b"".join(reader) == body and b"".join(reader) == body  # read twice: the same
            assert reader.whole == body
    # Chunked entries, short bodies and junk are not remembered as inline ones.
    assert _remembered_inline(item(b"", count=3, length=5000)) is None
    assert _remembered_inline(item(b"abc", length=5)) is None
    for junk in (b"", b"FPC1", item(b"z")[:-3] + b"\xff" * 9, b"XXXX" + item(b"q")[4:]):
        assert _split_entry(junk) is None or _remembered_inline(junk) is None
