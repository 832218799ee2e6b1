"""DNS discovery: a pool's ``{ dns = "NAME:PORT" }`` and ``{ srv = "NAME" }`` servers.

Run by the one worker that holds the checker lock, as a housekeeping job of
its ``net.checker.Checker`` (so one process resolves, however many workers):
each entry is resolved in its own greenlet when it is due, with dnspython
(cooperative under gevent's patched sockets), against ``server.resolvers``
or the system's.  The answer's TTL, bounded by ``server.dns_min_ttl`` and
``dns_max_ttl``, says when it is due again.

What a good answer says goes into the shared table through
``control.sync_discovered`` under the admin lock: every worker follows at
its next refresh, and the checker starts checks for new addresses.  A
failed answer (timeout, SERVFAIL, NXDOMAIN) or an empty one changes
nothing: the servers of the last good answer stay (a DNS outage never
empties a pool), and the entry is tried again after ``dns_min_ttl``.

A dns entry gives one server per A and AAAA address, on its port, with the
entry's weight, backup and max_conns.  An srv entry gives one server per
address of each SRV target, on the record's port, with the record's weight
(bounded to 1..1000) and as a backup unless its priority is the lowest of
the answer.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass

import gevent

from forkproxy import control
from forkproxy.config import split_host_port
from forkproxy.core.members import Spec

__all__ = ["Discovery", "make_resolver", "lookup", "Answer", "LOOKUP_TIMEOUT"]

#: Seconds one resolution (every query it makes) may take.
LOOKUP_TIMEOUT = 3.0


@dataclass(frozen=True)
class Answer:
    """The servers one entry resolved to, and the smallest TTL that gave them."""

    servers: tuple[Spec, ...]
    ttl: float


def make_resolver(resolvers: tuple[str, ...]):
    """A ``dns.resolver.Resolver`` for ``server.resolvers`` (empty: the system's)."""
    import dns.nameserver
    import dns.resolver

    if not resolvers:
        r = dns.resolver.Resolver()
    else:
        r = dns.resolver.Resolver(configure=False)
        servers = []
        for text in resolvers:
            try:
                ipaddress.ip_address(text)
                host, port = text, 53
            except ValueError:
                host, port = split_host_port(text)
            servers.append(dns.nameserver.Do53Nameserver(host, port))
        r.nameservers = servers
    r.lifetime = LOOKUP_TIMEOUT
    r.cache = None  # the TTLs are honoured here, per entry
    return r


def _addr(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _addresses(resolver, name: str) -> tuple[list[str], float]:
    """(A and AAAA addresses of ``name``, the smallest TTL seen); raises on failure."""
    ips, ttls = [], []
    for rdtype in ("A", "AAAA"):
        answer = resolver.resolve(name, rdtype, raise_on_no_answer=False, search=False)
        if answer.rrset is not None:
            ips += [r.address for r in answer.rrset]
            ttls.append(answer.rrset.ttl)
    return ips, min(ttls) if ttls else 0.0


def lookup(resolver, entry) -> Answer:
    """Resolve one discovery entry (a pool's ``discover`` ServerEntry).

    Raises ``dns.exception.DNSException`` (and ``OSError``) when the
    resolution fails; an answer with no address is an empty ``servers``.
    """
    if entry.dns is not None:
        ips, ttl = _addresses(resolver, entry.host)
        return Answer(tuple(Spec(_addr(ip, entry.port), entry.weight, entry.backup,
                                 entry.max_conns) for ip in dict.fromkeys(ips)), ttl)
    answer = resolver.resolve(entry.srv, "SRV", raise_on_no_answer=False, search=False)
    if answer.rrset is None:
        return Answer((), 0.0)
    records = [r for r in answer.rrset if r.target.to_text() != "."]
    ttls = [answer.rrset.ttl]
    found: dict[str, Spec] = {}
    if records:
        best = min(r.priority for r in records)
        for r in sorted(records, key=lambda r: (r.priority, -r.weight)):
            ips, ttl = _addresses(resolver, r.target.to_text())
            if ips:
                ttls.append(ttl)
            for ip in ips:
                addr = _addr(ip, r.port)
                found.setdefault(addr, Spec(addr, max(1, min(control.WEIGHT_MAX, r.weight)),
                                            r.priority != best, entry.max_conns))
    return Answer(tuple(found.values()), min(ttls))


class Discovery:
    """The discovery entries of every pool of ``cfg``, kept in ``table``.

    ``job()`` is the checker's housekeeping job: it starts a resolution of
    each entry that is due and not already running.  ``path``: the table's
    file (for the admin lock).  ``log``: the worker's error log.
    """

    def __init__(self, table, path: str, cfg, log, clock=time.time, resolver=None):
        self.table, self.path, self.cfg, self.log, self.clock = table, path, cfg, log, clock
        self.entries = [(p.name, e) for p in cfg.pools for e in p.discover]
        self.min_ttl, self.max_ttl = cfg.server.dns_min_ttl, cfg.server.dns_max_ttl
        self._resolver = resolver
        self._due = {i: 0.0 for i in range(len(self.entries))}
        self._running: dict[int, gevent.Greenlet] = {}
        self._last: dict[int, tuple[Spec, ...]] = {}  # last good answer per entry
        self._failing: dict[int, str] = {}  # entry -> why its last resolution failed

    def job(self) -> None:
        if not self.entries:
            return
        now = self.clock()
        for i, due in self._due.items():
            if due <= now and i not in self._running:
                self._running[i] = gevent.spawn(self._resolve, i)

    def stop(self) -> None:
        gevent.killall(list(self._running.values()), block=False)

    @property
    def resolver(self):
        if self._resolver is None:
            self._resolver = make_resolver(self.cfg.server.resolvers)
        return self._resolver

    def _name(self, i: int) -> str:
        pool, e = self.entries[i]
        return f"pool {pool}: {'dns ' + e.dns if e.dns is not None else 'srv ' + e.srv}"

    def _resolve(self, i: int) -> None:
        try:
            try:
                answer = lookup(self.resolver, self.entries[i][1])
            except Exception as exc:  # DNSException, OSError: a failed answer keeps the last
                self._failed(i, f"{type(exc).__name__}: {exc}")
                return
            if not answer.servers:
                self._failed(i, "no address in the answer")
                return
            if self._failing.pop(i, None) is not None:
                self.log.info("%s resolves again", self._name(i))
            self._due[i] = self.clock() + min(self.max_ttl, max(self.min_ttl, answer.ttl))
            if answer.servers != self._last.get(i):
                self._last[i] = answer.servers
                self._apply(self.entries[i][0])
        finally:
            self._running.pop(i, None)

    def _failed(self, i: int, why: str) -> None:
        self._due[i] = self.clock() + self.min_ttl
        if self._failing.get(i) != why:  # once per outage and reason, not at every retry
            self._failing[i] = why
            kept = len(self._last.get(i, ()))
            self.log.warning("%s: resolution failed (%s); keeping the %d server(s) of the "
                             "last answer", self._name(i), why, kept)

    def _apply(self, pool: str) -> None:
        """The pool's discovered servers are the union of its entries' last answers."""
        found: dict[str, Spec] = {}
        for i, (p, _) in enumerate(self.entries):
            if p == pool:
                for spec in self._last.get(i, ()):
                    found.setdefault(spec.addr, spec)
        now = self.clock()
        with control.admin_lock(self.path):
            try:
                added, removed = control.sync_discovered(self.table, self.cfg, pool,
                                                         list(found.values()), now)
            except control.TableFull as exc:
                self.log.error("pool %s: DNS discovery: %s", pool, exc.message)
                return
        for label in added:
            self.log.info("server %s found by DNS discovery", label)
        for label in removed:
            self.log.info("server %s no longer in DNS: removing it", label)
