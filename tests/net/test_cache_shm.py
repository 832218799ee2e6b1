"""net.cache_shm: the embedded store shared by the workers, across real processes.

Workers are ``os.fork``ed children of the test (as a master forks them:
they inherit the mapping and the descriptor the row locks are taken on).
A child reports through its exit status; nothing waits on time.
"""

from __future__ import annotations

import fcntl
import os
import signal
import types

import pytest

from forkproxy.core import cache_slab
from forkproxy.net.cache_shm import REGION_NAME, SharedStore, create_region


@pytest.fixture
def region(tmp_path):
    r = create_region(str(tmp_path), 8 << 20)
    yield r
    os.close(r.fd)


def in_child(fn) -> int:
    """Run ``fn()`` in a forked child; its exit status (fn's int), or -signal."""
    pid = os.fork()
    if pid == 0:
        try:
            code = fn() or 0
        except BaseException:
            code = 99
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def store_entry(store, key: str, body: bytes, head: bytes = b"h") -> bool:
    w = store.begin_write(key, head)
    for i in range(0, len(body), 10_000):
        if not w.write(body[i:i + 10_000]):
            return False
    return w.commit()


def read(store, key: str) -> bytes | None:
    got = store.get_entry(key)
    return None if got is None else b"".join(got[1])


def row_lock_is_free(region, store, key: str) -> bool:
    """Whether another process could take the row lock of the entry ``key`` now."""
    row = store.slab.row_of(bytes.fromhex(store._entry_key(key)[3:]))
    fd = os.open(region.path, os.O_RDWR)
    try:
        def probe():
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, row)
            except OSError:
                return 1
            return 0
        return in_child(probe) == 0  # a child: our own locks never conflict with us
    finally:
        os.close(fd)


def test_the_file_is_made_whole_and_private(region, tmp_path):
    assert os.listdir(tmp_path) == [REGION_NAME]
    assert os.stat(region.path).st_mode & 0o777 == 0o600
    with pytest.raises(ValueError):
        create_region(str(tmp_path), 4096)
    assert os.listdir(tmp_path) == [REGION_NAME]


def test_what_one_worker_stores_deletes_or_purges_every_worker_sees_at_once(region):
    a = SharedStore(region)
    body = os.urandom(300_000)  # chunked
    assert in_child(lambda: 0 if store_entry(SharedStore(region), "k", body) else 1) == 0
    assert read(a, "k") == body
    ns = a.namespace("shop.example")
    assert in_child(lambda: 0 if SharedStore(region).bump_namespace("shop.example") else 1) == 0
    assert a.namespace("shop.example") != ns  # not after NAMESPACE_TTL: at once
    assert in_child(lambda: 0 if SharedStore(region).delete("k") else 1) == 0
    assert a.get_entry("k") is None


def test_coalescing_lock_across_workers_its_expiry_and_a_dead_holder(region):
    now = [100.0]
    a = SharedStore(region, clock=lambda: now[0])
    assert a.lock("page", 5)
    assert in_child(lambda: 1 if SharedStore(region, clock=lambda: 100.0).lock("page", 5) else 0) == 0
    now[0] += 10                        # expired: another worker takes it
    assert in_child(lambda: 0 if SharedStore(region, clock=lambda: 110.0).lock("page", 5) else 1) == 0
    # ... and died holding it: free at once, not after its ttl
    assert a.lock("page", 5)
    assert not a.lock("page", 5)        # held by this (live) process
    a.unlock("page")
    assert a.lock("page", 5)


def test_a_body_with_a_chunk_evicted_is_a_miss_not_a_broken_hit(region):
    store = SharedStore(region)
    assert store_entry(store, "k", os.urandom(200_000))
    item = store._get(store._entry_key("k"))
    version = item[4:20]
    store._delete(store._chunk_key("k", version, 2))
    assert store.get_entry("k") is None and store.state["broken"] == 1
    assert store.get_entry("k") is None  # dropped


@pytest.mark.parametrize("before", [None, b"old body " * 100])
def test_a_worker_killed_mid_write_leaves_no_entry_and_no_lock(region, monkeypatch, before):
    """The child dies inside ``Slab.put`` (value copied, header not yet, seq odd),
    holding the row lock: the lock is the kernel's to free, readers miss, and
    the next write of the key takes the slot."""
    store = SharedStore(region)
    if before is not None:
        assert store_entry(store, "k", before)

    def die():
        def pack_into(*args):
            os.kill(os.getpid(), signal.SIGKILL)
        monkeypatch.setattr(cache_slab, "struct", types.SimpleNamespace(pack_into=pack_into))
        store_entry(SharedStore(region), "k", b"new body " * 100)
        return 3

    assert in_child(die) == -signal.SIGKILL
    assert row_lock_is_free(region, store, "k")
    assert store.get_entry("k") is None
    assert store_entry(store, "k", b"again " * 100)
    assert read(store, "k") == b"again " * 100


def test_state_counts_entries(region):
    store = SharedStore(region)
    assert store_entry(store, "a", b"x" * 100)
    s = store.state
    assert s["backend"] == "shared" and s["items"] == 1 and s["max_bytes"] == 8 << 20
    assert s["max_object_size"] == store.slab.max_body < 8 << 20


def test_a_workers_copies_are_never_older_than_the_region(region):
    """A copy of a value read is used only while its slot's commit word is unchanged:
    another worker's overwrite, delete or eviction is seen at the next read."""
    a = SharedStore(region)
    assert a._set("fp:" + "11" * 32, b"one", 0)
    k = "fp:" + "11" * 32
    assert a._get(k) == b"one" and a._get(k) == b"one"  # the second from the copy
    assert len(a.near) == 1
    assert in_child(lambda: 0 if SharedStore(region)._set(k, b"two", 0) else 1) == 0
    assert a._get(k) == b"two"
    assert in_child(lambda: 0 if SharedStore(region)._delete(k) else 1) == 0
    assert a._get(k) is None
    # any write into the slot (another key's, on eviction) is a change too: the copy
    # is not used, the slot is read again
    assert a._set(k, b"three", 0) and a._get(k) == b"three"
    q = a.near.get(k)[1]
    a.slab._q[q] = a.slab._q[q] + 2
    assert a._get(k) == b"three" and a.near.get(k)[2] == a.slab._q[q]


def test_expired_copies_are_not_used(region):
    now = [100.0]
    a = SharedStore(region, clock=lambda: now[0])
    k = "fp:" + "22" * 32
    assert a._set(k, b"v", 5) and a._get(k) == b"v"
    now[0] += 5
    assert a._get(k) is None


def test_a_stamp_holds_exactly_while_get_entry_would_hand_out_the_same_bytes(region):
    """stamp/still (net.http_cache's hot hits): True, and counted as a hit,
    until another worker rewrites or deletes the entry, or it expires."""
    now = [100.0]
    a = SharedStore(region, clock=lambda: now[0])
    assert store_entry(a, "k", b"body one") and store_entry(a, "gone", b"x")
    head, reader = a.get_entry("k")
    assert a.stamp("k", object()) is None            # not the reader the store hands out
    stamp = a.stamp("k", reader)
    hits = a.counters["hits"]
    assert a.still(stamp) and a.still(stamp)
    assert a.counters["hits"] == hits + 2
    assert a.get_entry("k")[1] is reader              # what still() stands for
    assert in_child(lambda: 0 if store_entry(SharedStore(region), "k", b"body two") else 1) == 0
    assert not a.still(stamp)
    assert read(a, "k") == b"body two"
    _, reader = a.get_entry("k")
    stamp = a.stamp("k", reader)
    assert a.still(stamp)
    assert in_child(lambda: 0 if SharedStore(region).delete("k") else 1) == 0
    assert not a.still(stamp) and a.get_entry("k") is None
    assert a.counters["hits"] == hits + 6             # still() twice, get_entry twice, still() once
    # an entry with a time to live: its stamp ends with it
    w = a.begin_write("short", b"h", ttl=5)
    assert w.write(b"soon gone") and w.commit()
    _, reader = a.get_entry("short")
    stamp = a.stamp("short", reader)
    assert a.still(stamp)
    now[0] += 5
    assert not a.still(stamp) and a.get_entry("short") is None


def test_two_writers_and_a_reader_at_once_never_see_a_torn_value(tmp_path):
    """Two worker processes rewrite 64 keys of one row (values of every class) while
    this one reads them: every value read is whole and its key's, never a mix."""
    region = create_region(str(tmp_path), 4 << 20)
    keys = [f"fp:{i:064x}" for i in range(64)]  # bytes 8..16 are zero: all in row 0

    def value(i: int, n: int) -> bytes:
        return (b"%d:%d;" % (i, n)) * (1 + n * 37 % 7000)  # up to 56 KB

    def writer(seed: int):
        store = SharedStore(region, near_size=0)
        for n in range(1500):
            i = (n * 7 + seed) % 64
            if not store._set(keys[i], value(i, n), 0):
                return 1
        return 0

    pids = []
    for seed in (0, 3):
        pid = os.fork()
        if pid == 0:
            try:
                code = writer(seed)
            except BaseException:
                code = 99
            os._exit(code)
        pids.append(pid)
    reader = SharedStore(region, near_size=0)
    seen, statuses = 0, {}
    while len(statuses) < len(pids):
        for i, k in enumerate(keys):
            v = reader._get(k)
            if v is not None:
                parts = v.split(b";")
                assert parts[-1] == b"" and len(set(parts[:-1])) == 1, f"key {i}: torn value"
                assert parts[0].startswith(b"%d:" % i), f"key {i}: another key's value"
                seen += 1
        for pid in pids:
            if pid not in statuses:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    statuses[pid] = status
    assert all(os.WIFEXITED(s) and os.WEXITSTATUS(s) == 0 for s in statuses.values())
    assert seen > 0
    os.close(region.fd)
