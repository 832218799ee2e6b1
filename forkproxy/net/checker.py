"""Active health checks: HTTP probes via ``requests``, TCP connect probes.

Every worker runs ``Checker.run`` in a greenlet (after gevent's monkey
patching, so ``requests`` and sockets are cooperative). Only the worker that
holds the checker lock (``net.leader.Leader``) probes; the others retry the
lock every ``min(0.5 s, smallest interval)``, so when the checker dies
another worker takes over within about one interval. The state lives in the
shared table, not in the checker: rise/fall counts carry over to the next
leader, and every worker (and ``forkproxyctl status``) reads the result.

Each target gets its own probe loop greenlet, so probes of many servers run
concurrently and a slow server never delays another's check. A loop is
``probe -> RiseFall.step(table row) -> write the row -> sleep until
RiseFall.next_interval after the probe started`` (HAProxy
``inter``/``fastinter``/``downinter``): probes start at a steady pace
whatever they last, so a server that accepts and never answers is DOWN
within ``(fall - 1) * interval + timeout`` of its first failed probe, not
``fall * (interval + timeout)``.
The first probes of all targets are spread over their first interval so
hundreds of checks do not fire in the same instant forever after (HAProxy
does the same).

Servers come and go (``control.add_server``, DNS discovery): with
``members_of``, the checker follows the table's member cells, starting a
loop for a new server and stopping the loop of a removed one at its next
poll (a probe in progress for a row that left is not written).  Its
``housekeeping`` jobs (freeing the rows of removed servers, DNS
discovery) run at every poll of the worker holding the lock, so that one
process does them.

Decisions:

* Every HTTP probe uses a fresh connection and sends ``Connection: close``
  (as HAProxy does): a check must prove the server still accepts
  connections, which a pooled keep-alive connection would hide.
* ``timeout`` bounds the whole probe (connect, head and the body read for
  ``expect_body``), not only each socket operation: a server that drips
  bytes fails with "timeout".
* Redirects are never followed: a 3xx is judged by ``expect_status`` like
  any other status. Proxy environment variables are ignored
  (``trust_env = False``).
* ``expect_body`` is a regex searched (RE2, ``core.patterns``) in the first 64 KiB of
  the body, decoded as UTF-8 with undecodable bytes replaced.
"""

from __future__ import annotations

import functools
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import gevent
from gevent.event import Event

from forkproxy import control
from forkproxy.config import HealthConfig, ServerEntry, split_host_port
from forkproxy.core.health import RiseFall
from forkproxy.core.patterns import compile_pattern

if TYPE_CHECKING:  # imported by the probing worker only (new_session)
    import requests

__all__ = ["Target", "Checker", "probe", "BODY_LIMIT", "table_targets", "reclaimer"]

#: How much of the body ``expect_body`` is matched against.
BODY_LIMIT = 64 * 1024

# Leader retries never wait longer than this, whatever the intervals.
_ELECTION_POLL = 0.5


@dataclass(frozen=True)
class Target:
    """One server to check: its table ``row``, pool name, entry and the pool's ``health``."""

    row: int
    pool: str
    server: ServerEntry
    health: HealthConfig
    serial: int = 0  # the row's member serial (core.table): a reused row is another target
    protocol: str = "http1"  # the pool's: "h2c" and "h2" checks speak HTTP/2 (net.h2_probe)
    tls: object = None  # the pool's tls (PoolTlsConfig), for protocol "h2"

    @property
    def label(self) -> str:
        """``"POOL/ADDR"``, the row label in the shared table."""
        return f"{self.pool}/{self.server.addr}"


def table_targets(table, cfg) -> list[Target]:
    """The active servers of the pools with active checks, as the table's
    member cells say (configured, added at run time, found by DNS)."""
    health = {p.name: p.health for p in cfg.pools if p.health is not None}
    pools = {p.name: p for p in cfg.pools}
    out = []
    for row, label, m in control.members(table):
        pool, _, addr = label.partition("/")
        if m.state != "active" or pool not in health:
            continue
        host, port = split_host_port(addr)
        server = ServerEntry(addr=addr, host=host, port=port, weight=m.weight, backup=m.backup,
                             max_conns=m.max_conns)
        p = pools[pool]
        out.append(Target(row, pool, server, health[pool], m.serial, p.protocol, p.tls))
    return out


def reclaimer(table, path: str, log):
    """A housekeeping job: free the rows of removed servers whose requests
    ended (``control.reclaim``), under the admin lock of the table at ``path``."""
    def job() -> None:
        if not any(m.state == "removing" for _, _, m in control.members(table)):
            return
        with control.admin_lock(path):
            freed = control.reclaim(table, time.time())
        for label in freed:
            log.info("server %s removed: its requests ended, its row is free", label)
    return job


class _ProbeTimeout(Exception):
    """The whole probe outlived ``health.timeout`` (raised by a gevent.Timeout)."""


def new_session() -> requests.Session:
    """A ``requests.Session`` for probes: no proxies or netrc from the environment.

    requests is imported here, by the worker that probes, once it serves:
    importing it at every worker's boot delayed each one by a third of a
    second on a busy machine.
    """
    import requests

    s = requests.Session()
    s.trust_env = False
    return s


def probe(target: Target, *, session: requests.Session | None = None) -> tuple[bool, str, float]:
    """Run one check of ``target``; return ``(ok, result, latency seconds)``.

    ``result`` is short text for the table and logs: ``"ok"``, ``"timeout"``,
    ``"refused"``, ``"reset"``, ``"status 503"``, ``"body mismatch"`` or
    ``"error: ..."``. Never raises for a failing server. Latency is measured
    with the monotonic clock, from the start of the connect to the verdict.
    """
    h = target.health
    start = time.monotonic()
    timer = gevent.Timeout(h.timeout, _ProbeTimeout)
    timer.start()
    try:
        if h.type == "tcp":
            ok, result = _probe_tcp(target)
        elif target.protocol != "http1":
            from forkproxy.net import h2_probe  # h2 for HTTP/2 pools only (the RSS)

            ok, result = _judge(h, *h2_probe.get(target.server, h, target.tls, BODY_LIMIT))
        else:
            ok, result = _probe_http(target, session)
    except _ProbeTimeout:
        ok, result = False, "timeout"
    except Exception as e:  # a check must report, never crash its loop
        ok, result = False, _classify(e)
    finally:
        timer.close()
    return ok, result, time.monotonic() - start


def _probe_tcp(target: Target) -> tuple[bool, str]:
    s = target.server
    conn = socket.create_connection((s.host, s.port), timeout=target.health.timeout)
    conn.close()
    return True, "ok"


def _url(target: Target) -> str:
    s, h = target.server, target.health
    host = f"[{s.host}]" if ":" in s.host else s.host
    path = h.path if h.path.startswith("/") else "/" + h.path
    return f"http://{host}:{s.port}{path}"


def _probe_http(target: Target, session: requests.Session | None) -> tuple[bool, str]:
    h = target.health
    own = session is None
    if own:
        session = new_session()
    try:
        resp = session.request(
            h.method, _url(target),
            headers={"Host": h.host or target.server.addr, "Connection": "close"},
            timeout=h.timeout, allow_redirects=False, stream=True,
        )
        try:
            if not any(lo <= resp.status_code <= hi for lo, hi in h.expect_status):
                return False, f"status {resp.status_code}"
            if h.expect_body is not None:
                body = bytearray()
                for chunk in resp.iter_content(chunk_size=16384):
                    body += chunk
                    if len(body) >= BODY_LIMIT:
                        break
                text = bytes(body[:BODY_LIMIT]).decode("utf-8", "replace")
                if not _regex(h.expect_body).search(text):
                    return False, "body mismatch"
            return True, "ok"
        finally:
            resp.close()
    finally:
        if own:
            session.close()


def _judge(h, status: int, body: bytes) -> tuple[bool, str]:
    """An HTTP/2 check's verdict, by the rules of ``_probe_http``."""
    if not any(lo <= status <= hi for lo, hi in h.expect_status):
        return False, f"status {status}"
    if h.expect_body is not None and not _regex(h.expect_body).search(
            body.decode("utf-8", "replace")):
        return False, "body mismatch"
    return True, "ok"


@functools.lru_cache(maxsize=256)
def _regex(pattern: str):
    return compile_pattern(pattern)


def _classify(exc: BaseException) -> str:
    """Map the exception chain of a failed probe to a short result."""
    # Only an HTTP probe raises requests' errors, and it imported requests.
    requests = sys.modules.get("requests")
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if not isinstance(e, BaseException) or id(e) in seen:  # ssl's reason is text
            continue
        seen.add(id(e))
        if isinstance(e, ConnectionRefusedError):
            return "refused"
        if isinstance(e, (ConnectionResetError, BrokenPipeError)):
            return "reset"
        if isinstance(e, (TimeoutError, socket.timeout, _ProbeTimeout)) or \
                (requests is not None and isinstance(e, requests.Timeout)):
            return "timeout"
        # requests wraps urllib3 wraps the OSError: follow every link.
        todo += [e.__cause__, e.__context__, getattr(e, "reason", None)]
        todo += [a for a in getattr(e, "args", ()) if isinstance(a, BaseException)]
    name = type(exc).__name__
    if requests is not None and isinstance(exc, requests.ConnectionError):
        # The interesting part is the innermost message (e.g. "Name or
        # service not known", "RemoteDisconnected").
        inner: BaseException = exc
        for _ in range(8):
            nxt = getattr(inner, "reason", None)
            if not isinstance(nxt, BaseException):
                nxt = next((a for a in inner.args if isinstance(a, BaseException)), None)
            if nxt is None:
                break
            inner = nxt
        return f"error: {type(inner).__name__}"
    return f"error: {name}: {exc}" if str(exc) else f"error: {name}"


@dataclass(frozen=True)
class Following:
    """How a ``Checker`` follows servers that come and go: ``members_of(table)``
    gives the current targets; ``housekeeping``: callables run at every poll
    while leading (freeing removed rows, DNS discovery); ``poll``: the longest
    time between two polls (None: the election poll and the targets' intervals)."""

    members_of: Callable
    housekeeping: tuple = ()
    poll: float | None = None


class Checker:
    """Active checks of ``targets``, run by whichever worker holds ``leader``.

    ``table`` is the shared ``core.table.Table``; ``log`` a ``logging.Logger``;
    ``initial`` the RiseFall init state of rows never written (the master
    normally writes initial rows itself; "up", "down", "fully-up" or
    "fully-down"); ``clock`` the epoch clock stamped into rows; ``metrics``
    a ``core.metrics.SlotCounter`` counting state changes (None: not counted).

    ``run()`` is a greenlet body and returns after ``stop()``. ``stop()``
    kills the probe loops and releases the lock, so a worker of the next
    generation takes over at once: call it when the worker begins its
    graceful shutdown, since an old worker that kept the lock would keep
    checking the old generation's table.
    """

    clock = staticmethod(time.time)  # the epoch clock stamped into rows (a test may set its own)

    def __init__(self, table, targets: list[Target], leader, log, *, initial: str = "up",
                 metrics=None, on_lead=None, follow: Following | None = None):
        """``follow``: the table's membership to follow (servers that come and
        go), with its housekeeping jobs; None: ``targets`` for good."""
        self.table = table
        self.members_of = follow.members_of if follow is not None else None
        self.housekeeping = list(follow.housekeeping) if follow is not None else []
        self._seen_version = None
        self.on_lead = on_lead  # called with True / False when this worker wins / loses the lock
        self.metrics = metrics
        self.targets = list(targets)
        self.leader = leader
        self.log = log
        self.initial = initial
        intervals = [t.health.interval for t in self.targets]
        poll = follow.poll if follow is not None else None
        self._poll = min([_ELECTION_POLL, *intervals] + ([poll] if poll else []))
        self._stopped = Event()
        self._loops: dict[Target, gevent.Greenlet] = {}
        self._session: requests.Session | None = None

    def run(self) -> None:
        was_leader = False
        while not self._stopped.is_set():
            try:
                leader = self.leader.try_acquire()
            except OSError as e:  # e.g. the fd is not open for writing: say so, keep serving
                self.log.error("health checker: cannot take the checker lock: %s", e)
                leader = False
            if leader:
                self._sync()
            if leader and not was_leader:
                self.log.info("health checker elected: %d servers to check", len(self.targets))
            elif was_leader and not leader:
                self.log.warning("health checker lost the checker lock; checks paused in this worker")
            if leader != was_leader and self.on_lead is not None:
                self.on_lead(leader)
            was_leader = leader
            if leader:
                for job in self.housekeeping:
                    try:
                        job()
                    except Exception:  # never end the checks for a housekeeping bug
                        self.log.exception("health checker: housekeeping failed")
            self._stopped.wait(self._poll)

    def stop(self) -> None:
        """Stop probing (idempotent): end ``run``, kill the probe loops, release the lock."""
        self._stopped.set()
        loops, self._loops = self._loops, {}
        gevent.killall(list(loops.values()), block=False)
        try:
            self.leader.release()
        except (AttributeError, OSError):
            pass  # a leader without release(), or the fd already gone: the kernel frees it at exit
        if self._session is not None:
            self._session.close()
            self._session = None

    def _sync(self) -> None:
        """Start the loops of targets that have none, stop those of targets that left."""
        if self.members_of is not None:
            version = self.table.members_version
            if version != self._seen_version:
                self._seen_version = version
                self.targets = self.members_of(self.table)
        current = set(self.targets)
        for t in [t for t in self._loops if t not in current]:
            self._loops.pop(t).kill(block=False)
        new = [t for t in self.targets if t not in self._loops]
        if not new:
            return
        if self._session is None:
            self._session = new_session()
        first = not self._loops
        for i, t in enumerate(new):
            # At the start, spread the first probes over the first interval
            # (see module doc); a server that arrives later is probed at once.
            delay = t.health.interval * i / len(new) if first else 0.0
            self._loops[t] = gevent.spawn(self._loop, t, delay)

    def _loop(self, t: Target, delay: float) -> None:
        rf = RiseFall(t.health.rise, t.health.fall, init_state=self.initial)
        h = t.health
        if self._stopped.wait(delay):
            return
        while not self._stopped.is_set():
            if not self.leader.held:
                # Only possible if the lock was lost (see net.leader): wait
                # for run() to win it back rather than write as a non-leader.
                self._stopped.wait(self._poll)
                continue
            wait = h.interval
            started, begun = time.monotonic(), self.clock()
            try:
                ok, result, latency = probe(t, session=self._session)
                if self._stopped.is_set() or not self.leader.held or t not in self._loops:
                    continue
                old = self.table.read_health(t.row)
                # Dated when the probe began: a good check forgives the passive
                # failures before it (net.pools), and one that failed while
                # this probe was on its way is not one of them.
                new = rf.step(old, ok, begun, result, latency)
                self.table.write_health(t.row, new)
                before = old.state if old is not None else rf.initial(0.0).state
                if new.state != before:
                    if self.metrics is not None:
                        self.metrics.transition(t.pool, t.server.addr, new.state)
                    if new.state == "down":
                        self.log.warning("server %s is DOWN: %s", t.label, new.reason)
                    else:
                        self.log.info("server %s is UP: %s", t.label, new.reason)
                wait = rf.next_interval(new, h.interval, h.fastinter, h.downinter)
            except Exception:  # a bug must not end this server's checks for good
                self.log.exception("health check of %s failed unexpectedly", t.label)
            self._stopped.wait(max(0.0, wait - (time.monotonic() - started)))
