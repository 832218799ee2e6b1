"""The shared health table's binary layout, over any writable buffer.

The master creates the table (see ``forkproxy.daemon.shm``) before it forks;
every worker, the elected health checker and ``forkproxyctl`` then map the
same bytes. This module is the layout only: ``struct`` and ``memoryview``
over a buffer (a ``bytearray`` in tests, a MAP_SHARED
``mmap`` in production). No I/O, no clock: times are passed in.

Layout (all offsets multiples of 8, native byte order: the file is a
per-host runtime artefact, never shipped between machines)::

    header   64 bytes   magic "FPXTABLE", layout version, header size,
                        generation, n_rows, n_slots, row size; at +40 the
                        membership version (u64, see below)
    row i    384 + 128 * n_slots bytes, at 64 + i * row_size
      +0     label      64 bytes  "pool/addr" ("" for a free row)
      +64    health     128 bytes seqlock cell, written only by the checker
      +192   admin      64 bytes  seqlock cell, written only under the admin lock
      +256   member     64 bytes  seqlock cell, written only under the admin lock
      +320   outlier    64 bytes  seqlock cell, written only by the checker
      +384   slot j     128 bytes per worker slot, written only by its owner:
                        inflight i64, passive fail count u64, window start f64,
                        requests u64, bytes_in u64, bytes_out u64, seen f64
                        (when the worker last began re-reading the row), 1 x reserved,
                        then the outlier columns (layout 3): the run of 5xx and
                        of gateway errors (two u32 in one u64), the run's
                        start f64, the gateway run's start f64, the last
                        success f64, the last non-gateway 5xx f64, successes
                        u64, errors u64, 1 x reserved

One writer per cell, no cross-process locks on the hot path. Python has no
cross-process atomics, so the design leans on one hardware fact: a single
aligned 8-byte store or load is atomic on x86-64 and aarch64, and an item
assignment to a ``memoryview`` cast to ``"Q"``, ``"q"`` or ``"d"`` is one
8-byte ``memcpy`` into the buffer, which compilers emit as a single store.
Every shared 8-byte cell is therefore read and written through such views.
Not through ``struct.pack_into``: it zeroes the target bytes before packing
(observed: a concurrent reader sees 0), and the standard-size ``<``/``>``
codes write byte by byte. Hence:

* Per-slot columns are plain 8-byte cells with exactly one writer (the worker
  that owns the slot); readers sum over slots and never see half a number.
  Slots are stable: a respawned worker reuses its predecessor's slot and
  calls ``clear_slot`` first (the master may also clear on the worker's
  exit), so a SIGKILLed worker's in-flight count lasts at most until then.
* Health and admin cells span many bytes, so each sits behind a seqlock: the
  writer makes the sequence odd, writes the payload, makes it even again.
  A reader accepts a copy only if the sequence was even and unchanged around
  it *and* the payload's CRC-32 matches; the CRC makes a torn copy
  detectable even where stores may become visible out of order (aarch64 has
  no store ordering and CPython issues no fences). A writer SIGKILLed
  mid-write leaves the sequence odd forever: readers give up after a bounded
  number of tries and return the last good copy this ``Table`` saw (or
  ``None``), and the next writer repairs the cell by completing a write.
  The health cell's single writer is the checker elected by ``lockf``; a
  dead checker's lock is freed by the kernel, so two never write at once.

Admin state (ready / drain / maint, weight) is set at run time by
``forkproxyctl``, not by the checker, so it has its own cell with its own
sequence. Decision: its writers serialise on an exclusive ``lockf`` on an
admin lock file next to the table (``forkproxy.daemon.shm.admin_lock``)
rather than funnel every change through the master. The master is gunicorn's
Arbiter, a signal loop with no request channel; ``lockf`` is released by the
kernel when a holder dies, so a killed ``forkproxyctl`` cannot wedge it, and
the seqlock repair above covers a holder killed mid-write. The master takes
the same lock while it copies rows into the next generation's table, so an
admin change is never lost across a reload (writers open the table *after*
taking the lock, and the master renames the new table in before releasing it).

Membership (layout 2): servers come and go at run time (``forkproxyctl
add-server``, DNS discovery), so a row is a place a server may occupy. Its
member cell says whether it is ``active``, ``removing`` (no new requests;
in-flight ones finish) or ``free``, where the server came from (``config``,
``runtime``, ``dns``), its weight, backup flag and max_conns, and a
``serial`` bumped every time the row is given to a server, so a worker can
tell a reused row from the server it knew. The member cell's CRC also covers
the row's label, which is written just before it: a reader that accepts the
cell has the label that goes with it. Every membership write bumps the
header's membership version, so workers re-read members only after a change.
Member cells are written only under the admin lock (``forkproxy.control``).

Outlier detection (layout 3, ``core.outlier``): each worker counts, in
its slot, its run of consecutive 5xx and gateway errors to a server and
when the run began, when it last saw a success (or a 5xx that is not a
gateway error, which ends a gateway run), and its successes and errors
(totals, for the success rate).  A worker that records an error reads the
other slots' last success (and last non-gateway 5xx): if one came after
its run began, or the server was ejected since, it begins a new run.
``outlier_counts`` sums the runs that began after the last success any
worker saw and after the server's last ejection: consecutive errors across
the workers.  Between two stores of different workers the sum may miss an
error, never count one a success broke.  The elected checker
reads them, decides, and writes the row's outlier cell (ejected until,
since, ejections so far, reason); every worker reads that cell.

Strings are fixed-size, NUL padded, truncated on a UTF-8 character boundary.

A ``Table`` holds memoryviews of its buffer: call ``release()`` before
closing an mmap under it (``forkproxy.daemon.shm.close_table`` does).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

__all__ = [
    "MAGIC",
    "LAYOUT_VERSION",
    "HEADER_SIZE",
    "HealthRow",
    "AdminRow",
    "SlotCounters",
    "Table",
    "LayoutError",
    "table_size",
    "copy_rows",
    "HEALTH_STATES",
    "ADMIN_STATES",
    "MemberRow",
    "MEMBER_STATES",
    "ORIGINS",
    "OutlierRow",
    "OutlierCounts",
]

MAGIC = b"FPXTABLE"
LAYOUT_VERSION = 3

# Header: magic, version, header size, generation, n_rows, n_slots, row size.
_HEADER = struct.Struct("@8sIIQIII")
HEADER_SIZE = 64

_LABEL_SIZE = 64
_RESULT_SIZE = 32
_REASON_SIZE = 47
_BY_SIZE = 32

# Health cell (128 bytes): seq, crc, 4 spare, then last_check, latency,
# last_change, successes, failures, state, last_result, reason. The CRC covers
# bytes [16, 128).
_CRC = struct.Struct("@I")
_HEALTH_BODY = struct.Struct(f"@dddIIB{_RESULT_SIZE}s{_REASON_SIZE}s")
_HEALTH_SIZE = 128
_HEALTH_BODY_OFF = 16

# Admin cell (64 bytes): seq, crc, state, weight, changed, by. CRC over [16, 64).
_ADMIN_BODY = struct.Struct(f"@B3xI d{_BY_SIZE}s")
_ADMIN_SIZE = 64
_ADMIN_BODY_OFF = 16

# Member cell (64 bytes): seq, crc, state, origin, backup, weight, max_conns,
# serial, changed. CRC over the body and the row's label.
_MEMBER_BODY = struct.Struct("@BBBxIIId")
_MEMBER_SIZE = 64
_MEMBER_BODY_OFF = 16

# Outlier cell (64 bytes): seq, crc, until, since, ejections, reason. CRC over [16, 64).
_OUTLIER_REASON_SIZE = 28
_OUTLIER_BODY = struct.Struct(f"@ddI{_OUTLIER_REASON_SIZE}s")
_OUTLIER_SIZE = 64
_OUTLIER_BODY_OFF = 16

# Header offset of the membership version (u64), after the packed header.
_OFF_MEMBERS_VERSION = 40

# Per-slot columns (64 bytes), each an aligned 8-byte cell.
_SLOT_SIZE = 128
_S_INFLIGHT, _S_FAILS, _S_WINDOW, _S_REQUESTS, _S_BYTES_IN, _S_BYTES_OUT = 0, 8, 16, 24, 32, 40
_S_SEEN = 48  # when the slot's worker last began re-reading the row (0: not since its fork)
# Outlier columns: runs (5xx in the low u32, gateway in the high u32), run
# start, gateway run start, last success, last non-gateway 5xx, totals.
_S_RUNS, _S_RUN_START, _S_GW_START, _S_LAST_OK, _S_LAST_5XX = 64, 72, 80, 88, 96
_S_OK, _S_ERR = 104, 112
_U32 = 2**32

_OFF_LABEL = 0
_OFF_HEALTH = _OFF_LABEL + _LABEL_SIZE
_OFF_ADMIN = _OFF_HEALTH + _HEALTH_SIZE
_OFF_MEMBER = _OFF_ADMIN + _ADMIN_SIZE
_OFF_OUTLIER = _OFF_MEMBER + _MEMBER_SIZE
_OFF_SLOTS = _OFF_OUTLIER + _OUTLIER_SIZE

assert _HEADER.size <= HEADER_SIZE
assert _HEALTH_BODY_OFF + _HEALTH_BODY.size <= _HEALTH_SIZE
assert _ADMIN_BODY_OFF + _ADMIN_BODY.size <= _ADMIN_SIZE
assert _MEMBER_BODY_OFF + _MEMBER_BODY.size <= _MEMBER_SIZE
assert _OUTLIER_BODY_OFF + _OUTLIER_BODY.size <= _OUTLIER_SIZE
assert _HEADER.size <= _OFF_MEMBERS_VERSION

# Codes on disk. 0 means "never written" in both cells.
HEALTH_STATES = ("up", "down")
ADMIN_STATES = ("ready", "drain", "maint")
MEMBER_STATES = ("active", "removing", "free")
ORIGINS = ("config", "runtime", "dns")
_HEALTH_CODE = {s: i + 1 for i, s in enumerate(HEALTH_STATES)}
_ADMIN_CODE = {s: i + 1 for i, s in enumerate(ADMIN_STATES)}

_U32_MAX = 2**32 - 1
_U64_MASK = 2**64 - 1

#: Default bound on seqlock read attempts. A writer holds a cell for a few
#: microseconds; if it is descheduled or killed, readers fall back rather
#: than spin.
READ_TRIES = 100


class LayoutError(ValueError):
    """The buffer is not a table this code can read (magic, version, size)."""


@dataclass(frozen=True)
class HealthRow:
    """One server's active health, as last written by the elected checker.

    ``successes``/``failures`` are the consecutive counts the rise/fall
    machine keeps (u32, saturating). ``last_result`` is a short code such as
    ``"ok"``, ``"timeout"``, ``"refused"``, ``"status 500"``; ``reason`` says
    why the state last changed. Times are float epoch seconds.
    """

    state: str = "up"
    successes: int = 0
    failures: int = 0
    last_check: float = 0.0
    last_result: str = ""
    latency: float = 0.0
    last_change: float = 0.0
    reason: str = ""


@dataclass(frozen=True)
class AdminRow:
    """Operator intent for one server: ``ready``, ``drain`` or ``maint``.

    ``weight`` 0 means "use the configured weight". ``changed`` is when and
    ``by`` who (short free text, e.g. ``"ctl uid=0"``) last set it.
    """

    state: str = "ready"
    weight: int = 0
    changed: float = 0.0
    by: str = ""


@dataclass(frozen=True)
class MemberRow:
    """Who occupies a row: ``state`` one of MEMBER_STATES, ``origin`` one of
    ORIGINS, the server's settings, ``serial`` (bumped at every allocation
    of the row) and ``changed`` (epoch seconds of the last state change)."""

    state: str = "free"
    origin: str = "config"
    weight: int = 1
    backup: bool = False
    max_conns: int = 0
    serial: int = 0
    changed: float = 0.0


@dataclass(frozen=True)
class SlotCounters:
    """Metrics counters summed over all worker slots of one row (u64, wrapping)."""

    requests: int = 0
    bytes_in: int = 0
    bytes_out: int = 0


@dataclass(frozen=True)
class OutlierRow:
    """A server's outlier ejection, as the checker last wrote it: ejected
    while ``until`` > now; ``since``: when the last ejection began;
    ``ejections``: the multiplier of the next ejection's time
    (``core.outlier``); ``reason``: why (short text)."""

    until: float = 0.0
    since: float = 0.0
    ejections: int = 0
    reason: str = ""


@dataclass(frozen=True)
class OutlierCounts:
    """A server's outlier counters summed over the worker slots:
    ``consecutive_5xx`` and ``consecutive_gateway`` (runs not broken by a
    success anywhere, see the module docstring), ``successes`` and
    ``errors`` (totals since the slots were cleared, wrapping u64)."""

    consecutive_5xx: int = 0
    consecutive_gateway: int = 0
    successes: int = 0
    errors: int = 0


def table_size(n_rows: int, n_slots: int) -> int:
    """Bytes needed for a table of ``n_rows`` rows and ``n_slots`` worker slots."""
    if n_rows < 0 or n_slots < 0:
        raise ValueError("n_rows and n_slots must be >= 0")
    return HEADER_SIZE + n_rows * _row_size(n_slots)


def _row_size(n_slots: int) -> int:
    return _OFF_SLOTS + n_slots * _SLOT_SIZE


def _enc(text: str, size: int) -> bytes:
    """UTF-8 encode, truncated to ``size`` bytes without splitting a character."""
    raw = text.encode("utf-8", "replace")
    if len(raw) > size:
        raw = raw[:size].decode("utf-8", "ignore").encode("utf-8")
    return raw


def _dec(raw: bytes) -> str:
    return raw.rstrip(b"\0").decode("utf-8", "replace")


class Table:
    """A view of the shared table over ``buf``.

    ``create=True`` formats the header (the caller gives ``n_rows`` and
    ``n_slots``; the buffer must be zeroed and at least ``table_size`` long);
    the magic is written last so a half-formatted buffer never validates.
    Otherwise the header is validated and the sizes read from it.

    A read-only buffer (``mmap.ACCESS_READ``) works for every read method;
    writes then raise ``TypeError``.

    Each instance remembers the last good copy of every health and admin cell
    it read, and returns it when a cell stays locked past the retry bound.
    """

    def __init__(self, buf, *, create: bool = False, n_rows=None, n_slots=None, generation=0):
        self.buf = buf
        if create:
            if n_rows is None or n_slots is None:
                raise ValueError("create=True needs n_rows and n_slots")
            if len(buf) < table_size(n_rows, n_slots):
                raise LayoutError(f"buffer of {len(buf)} bytes < {table_size(n_rows, n_slots)}")
            _HEADER.pack_into(buf, 0, b"\0" * 8, LAYOUT_VERSION, HEADER_SIZE, generation,
                              n_rows, n_slots, _row_size(n_slots))
            buf[0:8] = MAGIC
        if len(buf) < HEADER_SIZE:
            raise LayoutError("buffer shorter than the header")
        magic, version, hsize, gen, rows, slots, rsize = _HEADER.unpack_from(buf, 0)
        if magic != MAGIC:
            raise LayoutError(f"bad magic {magic!r}")
        if version != LAYOUT_VERSION or hsize != HEADER_SIZE:
            raise LayoutError(f"layout version {version} (header {hsize}), expected {LAYOUT_VERSION}")
        if rsize != _row_size(slots) or len(buf) < table_size(rows, slots):
            raise LayoutError("buffer size disagrees with the header")
        self.generation: int = gen
        self.n_rows: int = rows
        self.n_slots: int = slots
        self._row_size = rsize
        # 8-byte cell views over the table region: the only way shared
        # counters and sequences are touched (see the module docstring).
        whole = memoryview(buf)[:table_size(rows, slots)]
        self._views = (whole, whole.cast("Q"), whole.cast("q"), whole.cast("d"))
        _, self._u64, self._i64, self._f64 = self._views
        self._last_health: dict[int, HealthRow] = {}
        self._last_admin: dict[int, AdminRow] = {}
        self._last_member: dict[int, tuple[str, MemberRow]] = {}
        self._last_outlier: dict[int, OutlierRow] = {}

    def release(self) -> None:
        """Drop this view's hold on the buffer (needed before ``mmap.close``)."""
        for v in reversed(self._views):
            v.release()

    # -- offsets -------------------------------------------------------------

    def _row(self, row: int) -> int:
        if not 0 <= row < self.n_rows:
            raise IndexError(f"row {row} out of range 0..{self.n_rows - 1}")
        return HEADER_SIZE + row * self._row_size

    def _slot(self, row: int, slot: int) -> int:
        if not 0 <= slot < self.n_slots:
            raise IndexError(f"slot {slot} out of range 0..{self.n_slots - 1}")
        return self._row(row) + _OFF_SLOTS + slot * _SLOT_SIZE

    # -- labels (master only, before fork) -------------------------------------

    def set_label(self, row: int, label: str) -> None:
        """Name a row (e.g. ``"api/10.0.0.11:8080"``). Master only, before forking."""
        off = self._row(row) + _OFF_LABEL
        self.buf[off:off + _LABEL_SIZE] = _enc(label, _LABEL_SIZE).ljust(_LABEL_SIZE, b"\0")

    def label(self, row: int) -> str:
        off = self._row(row) + _OFF_LABEL
        return _dec(bytes(self.buf[off:off + _LABEL_SIZE]))

    def find(self, label: str) -> int | None:
        """The row whose label is ``label`` (as stored, i.e. truncated), or None."""
        want = _dec(_enc(label, _LABEL_SIZE))
        for row in range(self.n_rows):
            if self.label(row) == want:
                return row
        return None

    # -- seqlock cells -----------------------------------------------------------

    def _seq_write(self, off: int, body_off: int, body: bytes) -> None:
        seq = self._u64[off // 8]
        # An odd sequence means the previous writer died mid-write: move to a
        # fresh odd value so no reader can mistake this write for that one.
        seq = seq + 1 if seq % 2 == 0 else seq + 2
        self._seq_begin(off, seq)
        self._put(off + body_off, body)
        _CRC.pack_into(self.buf, off + 8, zlib.crc32(body))
        self._seq_end(off, seq + 1)

    # Separate steps so a test can kill a writer between them, or slow the
    # payload copies down to widen the window in which a reader could tear.
    def _put(self, off: int, data: bytes) -> None:
        self.buf[off:off + len(data)] = data

    def _get(self, off: int, n: int) -> bytes:
        return bytes(self.buf[off:off + n])

    def _seq_begin(self, off: int, seq: int) -> None:
        self._u64[off // 8] = seq & _U64_MASK

    def _seq_end(self, off: int, seq: int) -> None:
        self._u64[off // 8] = seq & _U64_MASK

    def _seq_read(self, off: int, body_off: int, body_len: int, tries: int) -> bytes | None:
        """The cell's body if a consistent copy was read within ``tries``; else None.

        Raises ``LookupError`` if the cell was never written (sequence 0).
        """
        u64, i = self._u64, off // 8
        for _ in range(max(1, tries)):
            s1 = u64[i]
            if s1 == 0:
                raise LookupError
            if s1 % 2:
                continue
            crc = _CRC.unpack_from(self.buf, off + 8)[0]
            body = self._get(off + body_off, body_len)
            s2 = u64[i]
            if s1 == s2 and zlib.crc32(body) == crc:
                return body
        return None

    def read_health(self, row: int, tries: int = READ_TRIES) -> HealthRow | None:
        """The row's health, read under the seqlock.

        Returns None if the row was never written. If no consistent copy can
        be read within ``tries`` attempts (a writer is mid-write, or died
        there), returns the last good copy this instance read, else None.
        Never blocks.
        """
        off = self._row(row) + _OFF_HEALTH
        try:
            body = self._seq_read(off, _HEALTH_BODY_OFF, _HEALTH_BODY.size, tries)
        except LookupError:
            return None
        if body is None:
            return self._last_health.get(row)
        last_check, latency, last_change, succ, fail, code, result, reason = _HEALTH_BODY.unpack(body)
        h = HealthRow(
            state=HEALTH_STATES[code - 1] if 1 <= code <= len(HEALTH_STATES) else "down",
            successes=succ, failures=fail, last_check=last_check, last_result=_dec(result),
            latency=latency, last_change=last_change, reason=_dec(reason),
        )
        self._last_health[row] = h
        return h

    def write_health(self, row: int, h: HealthRow) -> None:
        """Write the row's health. Only the elected checker may call this."""
        body = _HEALTH_BODY.pack(
            h.last_check, h.latency, h.last_change, min(max(h.successes, 0), _U32_MAX),
            min(max(h.failures, 0), _U32_MAX), _HEALTH_CODE[h.state],
            _enc(h.last_result, _RESULT_SIZE), _enc(h.reason, _REASON_SIZE),
        )
        self._seq_write(self._row(row) + _OFF_HEALTH, _HEALTH_BODY_OFF, body)

    def read_admin(self, row: int, tries: int = READ_TRIES) -> AdminRow:
        """The row's admin state; ``AdminRow()`` (ready) if never set.

        Falls back to the last good copy, then to ``AdminRow()``, if the cell
        stays locked past ``tries`` attempts.
        """
        off = self._row(row) + _OFF_ADMIN
        try:
            body = self._seq_read(off, _ADMIN_BODY_OFF, _ADMIN_BODY.size, tries)
        except LookupError:
            return AdminRow()
        if body is None:
            return self._last_admin.get(row, AdminRow())
        code, weight, changed, by = _ADMIN_BODY.unpack(body)
        a = AdminRow(
            state=ADMIN_STATES[code - 1] if 1 <= code <= len(ADMIN_STATES) else "ready",
            weight=weight, changed=changed, by=_dec(by),
        )
        self._last_admin[row] = a
        return a

    def write_admin(self, row: int, a: AdminRow) -> None:
        """Set the row's admin state. Callers must hold the admin lock."""
        if not 0 <= a.weight <= _U32_MAX:
            raise ValueError(f"weight {a.weight} out of range")
        body = _ADMIN_BODY.pack(_ADMIN_CODE[a.state], a.weight, a.changed, _enc(a.by, _BY_SIZE))
        self._seq_write(self._row(row) + _OFF_ADMIN, _ADMIN_BODY_OFF, body)

    def read_outlier(self, row: int, tries: int = READ_TRIES) -> OutlierRow:
        """The row's outlier ejection; ``OutlierRow()`` (never ejected) if
        never written; the last good copy if the cell stays locked."""
        off = self._row(row) + _OFF_OUTLIER
        try:
            body = self._seq_read(off, _OUTLIER_BODY_OFF, _OUTLIER_BODY.size, tries)
        except LookupError:
            return OutlierRow()
        if body is None:
            return self._last_outlier.get(row, OutlierRow())
        until, since, n, reason = _OUTLIER_BODY.unpack(body)
        o = OutlierRow(until=until, since=since, ejections=n, reason=_dec(reason))
        self._last_outlier[row] = o
        return o

    def write_outlier(self, row: int, o: OutlierRow) -> None:
        """Set the row's outlier ejection. Only the elected checker may call this."""
        body = _OUTLIER_BODY.pack(o.until, o.since, min(max(o.ejections, 0), _U32_MAX),
                                  _enc(o.reason, _OUTLIER_REASON_SIZE))
        self._seq_write(self._row(row) + _OFF_OUTLIER, _OUTLIER_BODY_OFF, body)

    # -- membership -----------------------------------------------------------------

    @property
    def members_version(self) -> int:
        """Bumped by every ``write_member``: re-read members when it moved."""
        return self._u64[_OFF_MEMBERS_VERSION // 8]

    def read_member(self, row: int, tries: int = READ_TRIES) -> tuple[str, MemberRow] | None:
        """(label, member) of the row, consistent with each other; None if the
        cell was never written, or stays locked past ``tries`` with no good copy."""
        off = self._row(row)
        u64, i = self._u64, (off + _OFF_MEMBER) // 8
        for _ in range(max(1, tries)):
            s1 = u64[i]
            if s1 == 0:
                return None
            if s1 % 2:
                continue
            crc = _CRC.unpack_from(self.buf, off + _OFF_MEMBER + 8)[0]
            label = self._get(off + _OFF_LABEL, _LABEL_SIZE)
            body = self._get(off + _OFF_MEMBER + _MEMBER_BODY_OFF, _MEMBER_BODY.size)
            if u64[i] == s1 and zlib.crc32(label + body) == crc:
                state, origin, backup, weight, max_conns, serial, changed = _MEMBER_BODY.unpack(body)
                m = MemberRow(
                    state=MEMBER_STATES[state - 1] if 1 <= state <= len(MEMBER_STATES) else "free",
                    origin=ORIGINS[origin - 1] if 1 <= origin <= len(ORIGINS) else "config",
                    weight=weight, backup=bool(backup), max_conns=max_conns, serial=serial,
                    changed=changed)
                self._last_member[row] = (_dec(label), m)
                return self._last_member[row]
        return self._last_member.get(row)

    def write_member(self, row: int, label: str, m: MemberRow) -> None:
        """Set the row's label and member cell, then bump the membership version.

        Callers must hold the admin lock (or be the master building the table).
        """
        off = self._row(row)
        i = (off + _OFF_MEMBER) // 8
        seq = self._u64[i]
        seq = seq + 1 if seq % 2 == 0 else seq + 2
        self._seq_begin(off + _OFF_MEMBER, seq)
        raw = _enc(label, _LABEL_SIZE).ljust(_LABEL_SIZE, b"\0")
        body = _MEMBER_BODY.pack(MEMBER_STATES.index(m.state) + 1, ORIGINS.index(m.origin) + 1,
                                 int(m.backup), m.weight, m.max_conns, m.serial & _U32_MAX,
                                 m.changed)
        self._put(off + _OFF_LABEL, raw)
        self._put(off + _OFF_MEMBER + _MEMBER_BODY_OFF, body)
        _CRC.pack_into(self.buf, off + _OFF_MEMBER + 8, zlib.crc32(raw + body))
        self._seq_end(off + _OFF_MEMBER, seq + 1)
        v = _OFF_MEMBERS_VERSION // 8
        self._u64[v] = (self._u64[v] + 1) & _U64_MASK

    # -- per-slot columns ----------------------------------------------------------

    def inflight_add(self, row: int, slot: int, delta: int) -> None:
        """Add ``delta`` to this slot's in-flight count. Owner of ``slot`` only."""
        i = (self._slot(row, slot) + _S_INFLIGHT) // 8
        self._i64[i] += delta

    def inflight_cell(self, row: int, slot: int) -> tuple[memoryview, int]:
        """(cells, index): ``cells[index] += delta`` does ``inflight_add(row,
        slot, delta)`` without recomputing the offset, for the request path
        (net.pools).  Owner of ``slot`` only."""
        return self._i64, (self._slot(row, slot) + _S_INFLIGHT) // 8

    def inflight(self, row: int) -> int:
        """In-flight requests to this server, summed over all worker slots."""
        if not self.n_slots:
            return 0
        base, step = (self._slot(row, 0) + _S_INFLIGHT) // 8, _SLOT_SIZE // 8
        # A negative cell is a bookkeeping bug in one worker: never let it
        # hide another worker's real load.
        return sum(max(0, self._i64[base + j * step]) for j in range(self.n_slots))

    def passive_fail(self, row: int, slot: int, now: float, fail_timeout: float,
                     since: float = 0.0) -> None:
        """Count one failed request (nginx ``max_fails``). Owner of ``slot`` only.

        Each slot keeps (count, window start): a failure after the window has
        expired, or after ``since`` (the last successful active check)
        forgave it, starts a new window with count 1.
        """
        i = self._slot(row, slot) // 8
        fails, window = i + _S_FAILS // 8, i + _S_WINDOW // 8
        start = self._f64[window]
        if self._u64[fails] and now - start < fail_timeout and start >= since:
            self._u64[fails] += 1
            return
        # Zero the count before moving the window so a concurrent reader
        # never counts the old window's failures against the new one.
        self._u64[fails] = 0
        self._f64[window] = now
        self._u64[fails] = 1

    def passive_failures(self, row: int, now: float, fail_timeout: float, since: float = 0.0) -> int:
        """Failures whose window is still open at ``now``, summed over slots.

        Windows that opened before ``since`` are not counted: the caller
        passes the time of the last successful active check, which brings a
        passively failed server back (the checker cannot clear the workers'
        columns itself: one writer per cell).
        """
        total = 0
        for j in range(self.n_slots):
            i = self._slot(row, j) // 8
            count = self._u64[i + _S_FAILS // 8]
            if count:
                start = self._f64[i + _S_WINDOW // 8]
                if now - start < fail_timeout and start >= since:
                    total += count
        return total

    def mark_seen(self, row: int, slot: int, now: float) -> None:
        """The worker of ``slot`` re-read the row, beginning at ``now``: its
        decisions take in every change written before then. Owner only."""
        self._f64[(self._slot(row, slot) + _S_SEEN) // 8] = now

    def seen(self, row: int) -> float:
        """The time by which every worker with a slot had re-read the row
        (the oldest of their ``mark_seen``); 0.0 when none has.  A slot whose
        worker exited is cleared (``clear_slot``), so it holds nobody back."""
        if not self.n_slots:
            return 0.0
        base, step = (self._slot(row, 0) + _S_SEEN) // 8, _SLOT_SIZE // 8
        times = [t for t in (self._f64[base + j * step] for j in range(self.n_slots)) if t]
        return min(times, default=0.0)

    def count(self, row: int, slot: int, requests: int = 0, bytes_in: int = 0, bytes_out: int = 0) -> None:
        """Add to this slot's metrics counters (u64, wrapping). Owner of ``slot`` only."""
        i = self._slot(row, slot) // 8
        for col, add in ((_S_REQUESTS, requests), (_S_BYTES_IN, bytes_in), (_S_BYTES_OUT, bytes_out)):
            if add:
                c = i + col // 8
                self._u64[c] = (self._u64[c] + add) & _U64_MASK

    def counters(self, row: int) -> SlotCounters:
        """Metrics counters summed over all slots (mod 2**64)."""
        req = bin_ = bout = 0
        for j in range(self.n_slots):
            i = self._slot(row, j) // 8
            req += self._u64[i + _S_REQUESTS // 8]
            bin_ += self._u64[i + _S_BYTES_IN // 8]
            bout += self._u64[i + _S_BYTES_OUT // 8]
        return SlotCounters(req & _U64_MASK, bin_ & _U64_MASK, bout & _U64_MASK)

    def outcome(self, row: int, slot: int, now: float, kind: str, since: float = 0.0) -> None:
        """Count one response (or failed attempt) for outlier detection.
        Owner of ``slot`` only.  ``kind``: "ok" (not a 5xx), "5xx" (a 5xx
        that is not a gateway error) or "gateway" (502, 503, 504, or no
        response: connect error, reset, timeout).  ``since``: the server's
        last ejection; a run that began before it is over (the ejection
        was its verdict), so an error after it begins a new run."""
        i = self._slot(row, slot) // 8
        u64, f64 = self._u64, self._f64
        runs = i + _S_RUNS // 8
        if kind == "ok":
            f64[i + _S_LAST_OK // 8] = now
            u64[i + _S_OK // 8] = (u64[i + _S_OK // 8] + 1) & _U64_MASK
            if u64[runs]:
                u64[runs] = 0
            return
        u64[i + _S_ERR // 8] = (u64[i + _S_ERR // 8] + 1) & _U64_MASK
        n5, ngw = u64[runs] % _U32, u64[runs] // _U32
        if n5:
            # A success in any worker (or an ejection) since this run began
            # ended it: begin a new one rather than be left out of the sum.
            last_ok = max(since, self._latest(row, _S_LAST_OK))
            if f64[i + _S_RUN_START // 8] <= last_ok:
                n5 = ngw = 0
            elif ngw and f64[i + _S_GW_START // 8] <= self._latest(row, _S_LAST_5XX):
                ngw = 0
        if not n5:
            f64[i + _S_RUN_START // 8] = now  # the start first: never a count with an old start
        if kind == "gateway":
            if not ngw:
                f64[i + _S_GW_START // 8] = now
            ngw = min(ngw + 1, _U32_MAX)
        else:
            f64[i + _S_LAST_5XX // 8] = now
            ngw = 0
        u64[runs] = ngw * _U32 + min(n5 + 1, _U32_MAX)

    def _latest(self, row: int, col: int) -> float:
        """The latest time in column ``col`` of the row's slots."""
        base, step = (self._slot(row, 0) + col) // 8, _SLOT_SIZE // 8
        return max((self._f64[base + j * step] for j in range(self.n_slots)), default=0.0)

    def outlier_counts(self, row: int, since: float = 0.0) -> OutlierCounts:
        """The row's outlier counters over every slot; runs that began
        before ``since`` (the server's last ejection) are left out."""
        f64, u64 = self._f64, self._u64
        slots = [self._slot(row, j) // 8 for j in range(self.n_slots)]
        last_ok = max([since] + [f64[i + _S_LAST_OK // 8] for i in slots])
        last_5xx = max([last_ok] + [f64[i + _S_LAST_5XX // 8] for i in slots])
        n5 = ngw = ok = err = 0
        for i in slots:
            runs = u64[i + _S_RUNS // 8]
            if runs and f64[i + _S_RUN_START // 8] > last_ok:
                n5 += runs % _U32
            if runs >= _U32 and f64[i + _S_GW_START // 8] > last_5xx:
                ngw += runs // _U32
            ok += u64[i + _S_OK // 8]
            err += u64[i + _S_ERR // 8]
        return OutlierCounts(n5, ngw, ok & _U64_MASK, err & _U64_MASK)

    def clear_slot(self, slot: int, *, counters: bool = False) -> None:
        """Reset ``slot``'s in-flight, passive-failure and seen columns in every row.

        Called by a worker taking over the slot (before it serves anything) or
        by the master when the slot's worker exits; the previous owner is dead
        by then, so this is still the cell's only writer. Metrics counters are
        kept by default so per-server totals stay monotonic across respawns;
        ``counters=True`` zeroes them too.
        """
        for row in range(self.n_rows):
            i = self._slot(row, slot) // 8
            self._i64[i + _S_INFLIGHT // 8] = 0
            self._u64[i + _S_FAILS // 8] = 0
            self._f64[i + _S_WINDOW // 8] = 0.0
            self._f64[i + _S_SEEN // 8] = 0.0
            self._u64[i + _S_RUNS // 8] = 0
            if counters:
                for col in (_S_REQUESTS, _S_BYTES_IN, _S_BYTES_OUT, _S_OK, _S_ERR):
                    self._u64[i + col // 8] = 0


def copy_rows(src: Table, dst: Table, mapping: dict[int, int]) -> None:
    """Carry health, admin and outlier state of servers that stay across a reload.

    ``mapping`` is old row index -> new row index. Per-slot columns are not
    copied: the new generation's workers start with empty slots, and the
    old generation keeps counting in the old table while it drains. Labels
    are not copied either: the master sets them from the new configuration.
    The caller (the master) is the only writer of ``dst`` at this point and
    must hold the admin lock so no admin change is lost.
    """
    for old, new in mapping.items():
        h = src.read_health(old)
        if h is not None:
            dst.write_health(new, h)
        if src._u64[(src._row(old) + _OFF_ADMIN) // 8] != 0:
            dst.write_admin(new, src.read_admin(old))
        if src._u64[(src._row(old) + _OFF_OUTLIER) // 8] != 0:
            dst.write_outlier(new, src.read_outlier(old))
