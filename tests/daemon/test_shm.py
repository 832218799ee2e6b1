"""The file-backed table across real processes: seqlock torture, SIGKILLed writers, slots.

Every child is forked here, stopped by pid and reaped before the test ends.
"""

import json
import mmap
import os
import random
import signal
import stat
import struct
import time

import pytest

from forkproxy.core import table as T
from forkproxy.core.table import AdminRow, HealthRow, LayoutError, Table
from forkproxy.daemon import shm

pytestmark = pytest.mark.timeout(120)


# -- process helpers ----------------------------------------------------------------


class Child:
    """A forked child running ``fn(send)``; ``send(obj)`` reports JSON to the parent."""

    def __init__(self, fn):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: never return into pytest
            code = 0
            try:
                os.close(r)
                out = os.fdopen(w, "w", buffering=1)
                fn(lambda obj: out.write(json.dumps(obj) + "\n"))
                out.flush()
            except BaseException:  # noqa: BLE001 - report, then exit
                import traceback
                traceback.print_exc()
                code = 70
            os._exit(code)
        os.close(w)
        self.pid = pid
        self.reader = os.fdopen(r)
        self.status = None

    def recv(self):
        line = self.reader.readline()
        if not line:
            raise EOFError(f"child {self.pid} closed its pipe")
        return json.loads(line)

    def wait(self):
        if self.status is None:
            _, self.status = os.waitpid(self.pid, 0)
            self.reader.close()
        return self.status

    def kill(self):
        if self.status is None:
            os.kill(self.pid, signal.SIGKILL)
        return self.wait()

    def exit_code(self):
        return os.waitstatus_to_exitcode(self.wait())


@pytest.fixture
def children():
    started = []

    def start(fn):
        c = Child(fn)
        started.append(c)
        return c

    yield start
    for c in started:  # reap even when the test failed half way
        c.kill()


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "health.tbl")


def derive(i):
    """A row whose every field is a function of one counter."""
    return HealthRow(
        state="up" if i % 2 else "down", successes=i % 2**32, failures=(3 * i) % 2**32,
        last_check=float(i), last_result=f"r{i}", latency=i / 1024, last_change=float(2 * i),
        reason=f"why {i} " + "x" * (i % 20),
    )


def consistent(h):
    return h == derive(h.successes)


def seq_of(table, row):
    return struct.unpack_from("@Q", table.buf, T.HEADER_SIZE + row * table._row_size + T._OFF_HEALTH)[0]


class SlowCopyTable(Table):
    """The real seqlock, but copying payloads 8 bytes per call.

    One memcpy is too quick for a reader to land inside it often; this
    makes overlapping copies common, so the tests below fail if the
    sequence or CRC checks are missing (checked by hand by removing them).
    """

    def _put(self, off, data):
        for k in range(0, len(data), 8):
            self.buf[off + k:off + k + 8] = data[k:k + 8]

    def _get(self, off, n):
        return b"".join(bytes(self.buf[off + k:off + k + 8]) for k in range(0, n, 8))


def writer_loop(path, row=0, start=1):
    def fn(send):
        t = SlowCopyTable(shm.open_table(path, writable=True).buf)
        i = start
        while True:
            t.write_health(row, derive(i))
            i += 1
    return fn


def wait_for(cond, what, limit=30.0):
    """Poll shared state until ``cond()``; the deadline only guards against hangs."""
    deadline = time.monotonic() + limit
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")


# -- the file ---------------------------------------------------------------------------


def test_create_is_atomic_with_permissions_and_reopens(path):
    mm, t = shm.create(path, 3, 2, generation=5, labels=["a/1", "a/2", "b/1"])
    try:
        assert sorted(os.listdir(os.path.dirname(path))) == ["health.tbl"]  # no temp left
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
        assert os.path.getsize(path) == T.table_size(3, 2)
        t.write_health(1, HealthRow(state="down", reason="x"))
        ro = shm.open_table(path)
        assert (ro.generation, ro.n_rows, ro.n_slots) == (5, 3, 2)
        assert ro.label(2) == "b/1" and ro.find("a/2") == 1
        assert ro.read_health(1) == HealthRow(state="down", reason="x")
        with pytest.raises(TypeError):
            ro.write_health(0, HealthRow())
        shm.close_table(ro)
        shm.close_table(ro)  # idempotent
    finally:
        shm.close_table(t)


def test_create_mode_0640(path):
    _, t = shm.create(path, 1, 1, 0, mode=0o640)
    shm.close_table(t)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640


def test_open_rejects_a_file_that_is_not_a_table(path):
    with open(path, "wb") as f:
        f.write(b"\0" * 4096)
    with pytest.raises(LayoutError):
        shm.open_table(path)


def test_next_generation_replaces_the_path_while_old_mappings_live_on(path):
    mm1, old = shm.create(path, 2, 1, generation=1)
    old.write_health(1, HealthRow(state="down", reason="old"))
    old.write_admin(1, AdminRow(state="drain", by="ctl"))
    with shm.admin_lock(path):
        mm2, new = shm.create(path, 1, 1, generation=2)
        T.copy_rows(old, new, {1: 0})
    try:
        reopened = shm.open_table(path)
        assert reopened.generation == 2
        assert reopened.read_health(0).reason == "old"
        assert reopened.read_admin(0).state == "drain"
        old.write_health(0, HealthRow(reason="still mine"))  # draining workers' old mapping
        assert old.read_health(0).reason == "still mine"
        shm.close_table(reopened)
    finally:
        shm.close_table(old)
        shm.close_table(new)


# -- cross-process columns --------------------------------------------------------------


def test_workers_see_each_others_slot_writes(path, children):
    mm, t = shm.create(path, 2, 4, 1)
    try:
        def worker(slot, n):
            def fn(send):
                w = shm.open_table(path, writable=True)
                for k in range(n):
                    w.inflight_add(0, slot, 1)
                    if k % 2:
                        w.inflight_add(0, slot, -1)
                    w.passive_fail(1, slot, 100.0, 10.0)
            return fn
        kids = [children(worker(s, 2000 + s)) for s in range(4)]
        assert [k.exit_code() for k in kids] == [0, 0, 0, 0]
        assert t.inflight(0) == sum((2000 + s + 1) // 2 for s in range(4))
        assert t.passive_failures(1, 105.0, 10.0) == sum(2000 + s for s in range(4))
        assert t.passive_failures(1, 110.0, 10.0) == 0
    finally:
        shm.close_table(t)


def test_sigkilled_worker_inflight_is_cleared_by_master_or_replacement(path, children):
    mm, t = shm.create(path, 2, 3, 1)
    try:
        def busy(send):  # inherits the mapping through fork, like a real worker
            t.inflight_add(0, 2, 1)
            t.inflight_add(0, 2, 1)
            t.inflight_add(1, 2, 1)
            t.passive_fail(1, 2, 50.0, 10.0)
            send("busy")
            os.read(os.open(os.devnull, os.O_RDONLY), 1)
            signal.pause()
        t.inflight_add(0, 0, 1)  # another worker's load
        worker = children(busy)
        assert worker.recv() == "busy"
        assert worker.kill() and os.WTERMSIG(worker.status) == signal.SIGKILL
        assert (t.inflight(0), t.inflight(1)) == (3, 1)  # stuck until someone clears
        t.clear_slot(2)  # the master, on the worker's exit
        assert (t.inflight(0), t.inflight(1), t.passive_failures(1, 51.0, 10.0)) == (1, 0, 0)

        t.inflight_add(0, 2, 5)  # pretend the master missed it: the replacement clears

        def replacement(send):
            r = shm.open_table(path, writable=True)
            r.clear_slot(2)
            r.inflight_add(0, 2, 1)
        assert children(replacement).exit_code() == 0
        assert t.inflight(0) == 2
    finally:
        shm.close_table(t)


# -- seqlock torture ---------------------------------------------------------------------


def test_readers_never_see_a_torn_row(path, children):
    mm, t = shm.create(path, 1, 1, 1)
    try:
        writer = children(writer_loop(path))
        wait_for(lambda: t.read_health(0) is not None, "the first write")

        def reader(send):
            r = SlowCopyTable(shm.open_table(path).buf)  # read-only, like forkproxyctl
            torn = none = none_after_good = reads = 0
            seen = set()
            # Bounds on work, not assertions: 200k reads or 3 s, but keep going
            # (up to 60 s on a starved machine) until the writer was seen moving.
            start = time.monotonic()
            while True:
                elapsed = time.monotonic() - start
                if (reads >= 200_000 or elapsed > 3.0) and (len(seen) >= 50 or elapsed > 60.0):
                    break
                h = r.read_health(0)
                reads += 1
                if h is None:
                    none += 1
                    none_after_good += bool(seen)
                elif not consistent(h):
                    torn += 1
                else:
                    seen.add(h.successes)
            send({"torn": torn, "none": none, "none_after_good": none_after_good,
                  "reads": reads, "distinct": len(seen)})

        readers = [children(reader) for _ in range(3)]
        stats = [r.recv() for r in readers]
        assert [r.exit_code() for r in readers] == [0, 0, 0]
        writer.kill()
        for s in stats:
            assert s["torn"] == 0, s
            # A reader with no good copy yet may give up while the writer is
            # descheduled mid-write; once it has one, it falls back to it.
            assert s["none_after_good"] == 0 and s["none"] < s["reads"], s
            assert s["distinct"] >= 2, s  # the writer really was writing meanwhile
        assert consistent(t.read_health(0))
    finally:
        shm.close_table(t)


def test_writer_killed_mid_write_leaves_readers_unstuck_and_is_repaired(path, children):
    mm, t = shm.create(path, 2, 1, 1)
    try:
        t.write_health(0, derive(10))
        assert t.read_health(0) == derive(10)

        def dies_mid_write(send):
            w = shm.open_table(path, writable=True)
            # Die after the payload, before the sequence turns even again.
            Table._seq_end = lambda self, off, seq: os.kill(os.getpid(), signal.SIGKILL)
            w.write_health(0, derive(11))
        victim = children(dies_mid_write)
        victim.wait()
        assert os.WIFSIGNALED(victim.status) and os.WTERMSIG(victim.status) == signal.SIGKILL
        assert seq_of(t, 0) % 2 == 1  # locked for ever, as far as the writer knows

        def fresh_reader(send):
            r = shm.open_table(path)
            send({"h0": r.read_health(0) is None, "h1": r.read_health(1) is None})
        r = children(fresh_reader)
        assert r.recv() == {"h0": True, "h1": True}  # gave up, did not spin
        assert r.exit_code() == 0
        assert t.read_health(0) == derive(10)  # this view's last good copy
        assert t.read_admin(0) == AdminRow()   # the admin cell is independent

        def next_checker(send):
            shm.open_table(path, writable=True).write_health(0, derive(12))
        assert children(next_checker).exit_code() == 0
        assert seq_of(t, 0) % 2 == 0
        assert shm.open_table(path).read_health(0) == derive(12)
    finally:
        shm.close_table(t)


@pytest.mark.parametrize("seed", range(3))
def test_sigkill_at_random_points(path, children, seed):
    rng = random.Random(seed)
    mm, t = shm.create(path, 1, 1, 1)
    odd = 0
    try:
        for round_ in range(15):
            base = seq_of(t, 0)
            writer = children(writer_loop(path, start=1 + round_ * 10**6))
            target = base + rng.randrange(2, 4000)
            wait_for(lambda: seq_of(t, 0) >= target, "writer progress")
            writer.kill()
            assert os.WTERMSIG(writer.status) == signal.SIGKILL
            odd += seq_of(t, 0) % 2
            h = Table(t.buf).read_health(0, tries=10)  # a fresh view: no cached copy
            assert h is None or consistent(h)
            assert h is not None or seq_of(t, 0) % 2 == 1
        # Whatever state the last kill left, the next writer repairs it.
        fixer = children(lambda send: shm.open_table(path, writable=True).write_health(0, derive(7)))
        assert fixer.exit_code() == 0
        assert seq_of(t, 0) % 2 == 0 and Table(t.buf).read_health(0) == derive(7)
    finally:
        shm.close_table(t)


# -- admin lock ---------------------------------------------------------------------------


def test_admin_lock_is_exclusive_across_processes_and_dies_with_its_holder(path, children):
    mm, t = shm.create(path, 1, 1, 1)
    try:
        def holder(send):
            with shm.admin_lock(path):
                w = shm.open_table(path, writable=True)
                w.write_admin(0, AdminRow(state="maint", weight=3, by="ctl"))
                send("locked")
                signal.pause()
        h = children(holder)
        assert h.recv() == "locked"
        with pytest.raises(BlockingIOError):
            with shm.admin_lock(path, blocking=False):
                pass
        h.kill()
        with shm.admin_lock(path, blocking=False):  # the kernel released it
            assert shm.open_table(path).read_admin(0) == AdminRow(state="maint", weight=3, by="ctl")
    finally:
        shm.close_table(t)


def test_mapping_is_shared_not_private(path, children):
    mm, t = shm.create(path, 1, 1, 1)
    try:
        assert isinstance(t.buf, mmap.mmap)
        assert children(lambda send: t.write_health(0, derive(3))).exit_code() == 0
        assert t.read_health(0) == derive(3)
    finally:
        shm.close_table(t)
