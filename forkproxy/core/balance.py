"""Load-balancing algorithms and the sticky-session codec, sans-IO.

CONTRACT (consumed by ``forkproxy.net.forward`` / ``net.upstream``, one
``Balancer`` per pool per worker process):

    ``ServerSpec(key, weight=1, backup=False)``
        ``key`` is the server's stable identity ("host:port"); everything
        that must agree across workers and reloads (hash tables, sticky
        tokens) is derived from it, never from list positions or Python's
        randomised ``hash()``.
    ``ServerView``  what the shell lets the balancer see at pick time, by
        server index: ``usable(i)`` (health UP and admin "ready"),
        ``inflight(i)`` (in-flight requests summed over all workers),
        ``effective_weight(i)`` (weight after slow start / runtime change).
    ``Balancer(servers, *, algorithm="round_robin", hash_method="ketama")``
        builds every table at config load.  Raises ``ValueError`` on an
        unknown algorithm or hash method, an empty pool, duplicate keys or a
        weight < 1.
    ``Balancer.pick(view, *, key=None, rng=None, exclude=frozenset())``
        -> index of the chosen server, or ``None`` when there is none.

Rules shared by every algorithm:

* A server is a *candidate* when ``usable(i)``, ``i not in exclude`` and
  ``effective_weight(i) > 0`` (a runtime weight of 0 means "no new traffic",
  as in HAProxy).
* Primary servers first; backup servers are considered only when no primary
  is a candidate.  So once a request has tried every primary (``exclude``),
  its retry goes to a backup.
* ``None`` when no server is a candidate.

Algorithms (``ALGORITHMS``):

round_robin  nginx's smooth weighted round robin over the candidates, using
             ``effective_weight``.  Weights 5,1,1 give a a b a c a a.
least_conn   fewest ``inflight/effective_weight`` (cross-multiplied, no
             floats); ties are broken by smooth round robin among the tied,
             as nginx does.
ip_hash      nginx's ip_hash: the client's IPv4 /24 (first three octets) or
             IPv6 /64 (first eight bytes; nginx hashes all 16) picks a server
             with probability proportional to its configured weight; when it
             is not a candidate the hash is re-mixed and tried again, 20
             times, then round robin.  ``key`` is the textual address
             (b"10.1.2.3"); IPv4-mapped IPv6 counts as IPv4.  No key or an
             unparsable one (a Unix socket peer): round robin.
hash         consistent hashing of ``key`` (no key: round robin).
             ``hash_method="ketama"``: libketama's ring, md5, 160 points per
             weight unit per server; a non-candidate's keys go to the next
             point of the ring owned by a candidate.
             ``hash_method="maglev"``: a Maglev lookup table of prime size
             (65537 slots up to 655 servers, the next prime of a fixed list
             above 100 x servers after that); a non-candidate's slot falls to
             the next slot owned by a candidate.  Either way other servers'
             keys never move, and two processes built from the same
             ``ServerSpec`` list agree on every key.  Tables use the
             configured weights (a slow-start ramp does not reshuffle keys).
random2      power of two choices: two distinct candidates drawn with
             ``rng`` proportionally to ``effective_weight``; the one with
             fewer ``inflight/effective_weight`` wins.  ``rng`` is required.

Sticky sessions: ``sticky_token(server_key, secret)`` is an opaque 16-char
token (HMAC-SHA256, base32, lower case) that does not reveal the address and
is stable for the same key and secret; ``StickyTable`` / ``sticky_lookup``
map it back to a server index.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import random
import struct
from array import array
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from functools import lru_cache
from itertools import accumulate
from typing import AbstractSet, Protocol, Sequence

__all__ = [
    "ALGORITHMS",
    "HASH_METHODS",
    "Balancer",
    "ServerSpec",
    "ServerView",
    "StickyTable",
    "cookie_value",
    "query_value",
    "sticky_lookup",
    "sticky_token",
]

ALGORITHMS = ("round_robin", "least_conn", "ip_hash", "hash", "random2")
HASH_METHODS = ("ketama", "maglev")

KETAMA_POINTS_PER_WEIGHT = 160
# Fixed sizes so the table size only changes when a pool crosses a size class
# (which remaps everything); 65537 covers pools of up to 655 servers.
MAGLEV_SIZES = (65537, 131071, 262147, 524287, 1048573, 2097143, 4194301, 8388593)
IP_HASH_TRIES = 20
# Attempts of the O(1) rejection sampler in random2 before the exact O(N) path.
_RANDOM2_FAST_TRIES = 8


@dataclass(frozen=True)
class ServerSpec:
    """A pool member as configured. ``key`` is its stable identity ("host:port")."""

    key: str
    weight: int = 1
    backup: bool = False


class ServerView(Protocol):
    """What the balancer can see of server ``i`` at pick time."""

    def usable(self, i: int) -> bool: ...

    def inflight(self, i: int) -> int: ...

    def effective_weight(self, i: int) -> int: ...


_EMPTY: frozenset[int] = frozenset()


# --------------------------------------------------------------------------
# Static tables, pure functions of the servers' keys and weights.  Cached so
# several Balancers over the same pool in one process (and a reload that
# keeps the pool) do not rebuild them.


def _md5(data: bytes) -> bytes:
    return hashlib.md5(data, usedforsecurity=False).digest()


@lru_cache(maxsize=64)
def _ketama_ring(members: tuple[tuple[str, int], ...]) -> tuple[array, array]:
    """(sorted points, owner position) for [(key, weight), ...], as libketama.

    Each md5 of "key-k" yields four little-endian 32-bit points; a server of
    weight w gets 160*w points.  Equal points are ordered by server key so
    every process builds the same ring.
    """
    pts: list[tuple[int, str, int]] = []
    for pos, (skey, weight) in enumerate(members):
        for k in range(KETAMA_POINTS_PER_WEIGHT * weight // 4):
            for p in struct.unpack("<4I", _md5(f"{skey}-{k}".encode())):
                pts.append((p, skey, pos))
    pts.sort()
    return array("L", [p[0] for p in pts]), array("l", [p[2] for p in pts])


def _ketama_hash(key: bytes) -> int:
    return struct.unpack_from("<I", _md5(key))[0]


def _maglev_size(n: int) -> int:
    for m in MAGLEV_SIZES:
        if m >= 100 * n:
            return m
    raise ValueError(f"pool of {n} servers is too large for a maglev table")


@lru_cache(maxsize=64)
def _maglev_table(members: tuple[tuple[str, int], ...]) -> array:
    """Maglev lookup table (slot -> owner position) for [(key, weight), ...].

    Each server walks its own permutation of the slots (offset, skip derived
    from md5 of its key) and claims the next free slot; a server of weight w
    takes w turns per round, so its share of slots is proportional to w.
    """
    m = _maglev_size(len(members))
    offsets, skips = [], []
    for skey, _ in members:
        d = _md5(skey.encode())
        a, b = struct.unpack_from("<QQ", d)
        offsets.append(a % m)
        skips.append(b % (m - 1) + 1)
    nexts = [0] * len(members)
    table = array("l", [-1]) * m
    filled = 0
    turns = [(pos, w) for pos, (_, w) in enumerate(members)]
    while True:
        for pos, w in turns:
            off, skip, nxt = offsets[pos], skips[pos], nexts[pos]
            for _ in range(w):
                c = (off + nxt * skip) % m
                while table[c] >= 0:
                    nxt += 1
                    c = (off + nxt * skip) % m
                table[c] = pos
                nxt += 1
                filled += 1
                if filled == m:
                    return table
            nexts[pos] = nxt


def _maglev_hash(key: bytes) -> int:
    return struct.unpack_from("<Q", _md5(key))[0]


def _ip_hash_bytes(key: bytes) -> bytes | None:
    """The network part nginx hashes: IPv4 /24, IPv6 /64; None if not an IP."""
    if b":" not in key:
        parts = key.split(b".")
        if len(parts) != 4:
            return None
        try:
            octets = [int(p) for p in parts]
        except ValueError:
            return None
        if any(not 0 <= o <= 255 for o in octets):
            return None
        return bytes(octets[:3])
    try:
        addr = ipaddress.IPv6Address(key.decode("ascii").split("%", 1)[0])
    except (ValueError, UnicodeDecodeError):
        return None
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.packed[:3]
    return addr.packed[:8]


# --------------------------------------------------------------------------


class _Tier:
    """The primaries or the backups of a pool, with their static tables."""

    __slots__ = ("idx", "members", "cum", "total", "ring_points", "ring_owner", "maglev")

    def __init__(self, servers: Sequence[ServerSpec], idx: list[int]):
        self.idx: tuple[int, ...] = tuple(idx)
        self.members = tuple((servers[i].key, servers[i].weight) for i in idx)
        # cumulative configured weights: weighted draws / ip_hash walks by bisect
        self.cum: list[int] = list(accumulate(w for _, w in self.members))
        self.total = self.cum[-1] if self.cum else 0
        self.ring_points: array | None = None
        self.ring_owner: array | None = None
        self.maglev: array | None = None


class Balancer:
    """Picks a server of one pool; see the module docstring for the rules.

    Holds only per-worker state (current weights of smooth round robin), so
    each worker process has its own instance.
    """

    __slots__ = ("servers", "algorithm", "hash_method", "_tiers", "_cw", "_pick", "_r2_bound")

    def __init__(
        self,
        servers: Sequence[ServerSpec],
        *,
        algorithm: str = "round_robin",
        hash_method: str = "ketama",
    ):
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown balance algorithm {algorithm!r}")
        if hash_method not in HASH_METHODS:
            raise ValueError(f"unknown hash method {hash_method!r}")
        if not servers:
            raise ValueError("a pool needs at least one server")
        seen: set[str] = set()
        for s in servers:
            if s.key in seen:
                raise ValueError(f"duplicate server {s.key!r}")
            seen.add(s.key)
            if not isinstance(s.weight, int) or s.weight < 1:
                raise ValueError(f"server {s.key!r}: weight must be an integer >= 1")
        self.servers: tuple[ServerSpec, ...] = tuple(servers)
        self.algorithm = algorithm
        self.hash_method = hash_method
        primaries = [i for i, s in enumerate(self.servers) if not s.backup]
        backups = [i for i, s in enumerate(self.servers) if s.backup]
        self._tiers = tuple(_Tier(self.servers, t) for t in (primaries, backups) if t)
        self._cw = [0] * len(self.servers)
        self._r2_bound = 1
        if algorithm == "hash":
            for tier in self._tiers:
                if hash_method == "ketama":
                    tier.ring_points, tier.ring_owner = _ketama_ring(tier.members)
                else:
                    tier.maglev = _maglev_table(tier.members)
        self._pick = {
            "round_robin": self._pick_rr,
            "least_conn": self._pick_lc,
            "ip_hash": self._pick_ip_hash,
            "hash": self._pick_hash,
            "random2": self._pick_random2,
        }[algorithm]

    def pick(
        self,
        view: ServerView,
        *,
        key: bytes | None = None,
        rng: random.Random | None = None,
        exclude: AbstractSet[int] = _EMPTY,
    ) -> int | None:
        """Index of the chosen server, or None when no server is a candidate.

        Primary servers first; backups only when no primary is a candidate.
        ``exclude``: indexes this request already tried. ``key``: textual
        client address for ip_hash, the hash key for hash. ``rng``: required
        by random2.
        """
        return self._pick(view, key, rng, exclude)

    # ---- helpers ---------------------------------------------------------

    def _candidates(self, view: ServerView, exclude: AbstractSet[int]) -> list[tuple[int, int]]:
        """[(index, effective weight)] of the first tier that has candidates."""
        usable = view.usable
        ew = view.effective_weight
        for tier in self._tiers:
            out = []
            for i in tier.idx:
                if usable(i) and not (exclude and i in exclude):
                    w = ew(i)
                    if w > 0:
                        out.append((i, w))
            if out:
                return out
        return []

    def _swrr(self, cands: list[tuple[int, int]]) -> int:
        """nginx smooth weighted round robin step over (index, weight) pairs."""
        cw = self._cw
        total = 0
        best = -1
        best_cw = 0
        for i, w in cands:
            c = cw[i] + w
            cw[i] = c
            total += w
            if best < 0 or c > best_cw:
                best, best_cw = i, c
        cw[best] = best_cw - total
        return best

    def _is_candidate(self, view: ServerView, i: int, exclude: AbstractSet[int]) -> bool:
        return i not in exclude and view.usable(i) and view.effective_weight(i) > 0

    # ---- algorithms ------------------------------------------------------

    def _pick_rr(self, view, key, rng, exclude) -> int | None:
        # Candidate scan and the SWRR step fused into one pass: this runs
        # once per request over the whole tier, so no intermediate list.
        usable = view.usable
        ew = view.effective_weight
        cw = self._cw
        for tier in self._tiers:
            total = 0
            best = -1
            best_cw = 0
            for i in tier.idx:
                if not usable(i) or (exclude and i in exclude):
                    continue
                w = ew(i)
                if w <= 0:
                    continue
                c = cw[i] + w
                cw[i] = c
                total += w
                if best < 0 or c > best_cw:
                    best, best_cw = i, c
            if best >= 0:
                cw[best] = best_cw - total
                return best
        return None

    def _pick_lc(self, view, key, rng, exclude) -> int | None:
        usable = view.usable
        ew = view.effective_weight
        inflight = view.inflight
        for tier in self._tiers:
            tied: list[tuple[int, int]] = []
            best_n = best_w = 0
            for i in tier.idx:
                if not usable(i) or (exclude and i in exclude):
                    continue
                w = ew(i)
                if w <= 0:
                    continue
                n = inflight(i)
                # n/w < best_n/best_w without floats
                if not tied or n * best_w < best_n * w:
                    tied = [(i, w)]
                    best_n, best_w = n, w
                elif n * best_w == best_n * w:
                    tied.append((i, w))
            if tied:
                if len(tied) == 1:
                    return tied[0][0]
                return self._swrr(tied)
        return None

    def _pick_ip_hash(self, view, key, rng, exclude) -> int | None:
        net = _ip_hash_bytes(key) if key else None
        if net is not None:
            for tier in self._tiers:
                # Mirrors ngx_http_upstream_get_ip_hash_peer: re-mix the same
                # bytes on every try so a failed server's clients spread out.
                h = 89
                for _ in range(IP_HASH_TRIES):
                    for b in net:
                        h = (h * 113 + b) % 6271
                    pos = bisect_right(tier.cum, h % tier.total)
                    i = tier.idx[pos]
                    if self._is_candidate(view, i, exclude):
                        return i
                # Only fall through to backups when no primary is a candidate
                # at all; otherwise round robin within this tier, as nginx.
                if any(self._is_candidate(view, i, exclude) for i in tier.idx):
                    break
        return self._pick_rr(view, key, rng, exclude)

    def _pick_hash(self, view, key, rng, exclude) -> int | None:
        if key is None:
            return self._pick_rr(view, key, rng, exclude)
        ketama = self.hash_method == "ketama"
        h = _ketama_hash(key) if ketama else _maglev_hash(key)
        for tier in self._tiers:
            if ketama:
                points, owner = tier.ring_points, tier.ring_owner
                start = bisect_left(points, h)
                if start == len(points):
                    start = 0
            else:
                owner = tier.maglev
                start = h % len(owner)
            i = tier.idx[owner[start]]
            if self._is_candidate(view, i, exclude):
                return i
            # Slow path: who in this tier can take it? Then walk on to the
            # first slot/point one of them owns; nobody else's keys move.
            ok = {
                p
                for p, i in enumerate(tier.idx)
                if self._is_candidate(view, i, exclude)
            }
            if not ok:
                continue
            n = len(owner)
            j = start + 1
            while True:
                if j == n:
                    j = 0
                p = owner[j]
                if p in ok:
                    return tier.idx[p]
                j += 1
        return None

    def _pick_random2(self, view, key, rng, exclude) -> int | None:
        if rng is None:
            raise ValueError("random2 needs an rng")
        first = self._tiers[0]
        a = self._draw_fast(view, first, rng, exclude, -1)
        if a is None:
            # Rejection sampling gave up (few candidates left): draw exactly.
            return self._random2_exact(view, rng, exclude, None)
        b = self._draw_fast(view, first, rng, exclude, a)
        if b is None:
            # Keep `a`: redrawing it here would bias towards heavy servers.
            return self._random2_exact(view, rng, exclude, a)
        return self._less_loaded(view, a, b)

    def _draw_fast(self, view, tier: _Tier, rng, exclude, other: int) -> int | None:
        """One candidate of ``tier`` other than ``other``, drawn proportionally
        to effective weight by rejection from the configured weights; None when
        the bounded attempts fail (the caller then takes the exact path).

        Proposals follow configured weights and are accepted with probability
        ew / (w * _r2_bound), where _r2_bound >= max(ew / w) seen so far, so an
        accepted draw is exactly proportional to ew; the one pick that
        discovers a larger ratio is decided by the exact path instead."""
        cum, idx, total = tier.cum, tier.idx, tier.total
        servers = self.servers
        for _ in range(_RANDOM2_FAST_TRIES):
            i = idx[bisect_right(cum, int(rng.random() * total))]
            if i == other or i in exclude or not view.usable(i):
                continue
            ew = view.effective_weight(i)
            w = servers[i].weight
            if ew <= 0:
                continue
            bound = w * self._r2_bound
            if ew > bound:
                # A runtime weight above the configured one breaks the
                # rejection bound: raise it for later picks and let the
                # caller decide this one exactly.
                self._r2_bound = -(-ew // w)
                return None
            if ew == bound or rng.random() * bound < ew:
                return i
        return None

    def _random2_exact(self, view, rng, exclude, a: int | None) -> int | None:
        """random2 by enumerating the candidates; ``a``: first choice already
        drawn (it is a candidate of the first tier that has any)."""
        cands = self._candidates(view, exclude)
        if not cands:
            return None
        if len(cands) == 1:
            return cands[0][0]
        if a is None:
            a = self._weighted(cands, rng)
        rest = [c for c in cands if c[0] != a]
        b = self._weighted(rest, rng)
        return self._less_loaded(view, a, b)

    @staticmethod
    def _weighted(cands: list[tuple[int, int]], rng: random.Random) -> int:
        cum = list(accumulate(w for _, w in cands))
        return cands[bisect_right(cum, int(rng.random() * cum[-1]))][0]

    def _less_loaded(self, view, a: int, b: int) -> int:
        wa, wb = view.effective_weight(a), view.effective_weight(b)
        na, nb = view.inflight(a), view.inflight(b)
        return b if nb * wa < na * wb else a


# --------------------------------------------------------------------------
# Sticky sessions


def sticky_token(server_key: str, secret: bytes) -> str:
    """Opaque cookie/URL-safe token for a server: 16 lower-case base32 chars
    of HMAC-SHA256(secret, key). Stable for the same key and secret."""
    mac = hmac.new(secret, server_key.encode("utf-8"), hashlib.sha256).digest()
    return base64.b32encode(mac[:10]).decode("ascii").lower()


class StickyTable:
    """token <-> server index for one pool, precomputed at config load."""

    __slots__ = ("_tokens", "_index")

    def __init__(self, servers: Sequence[ServerSpec], secret: bytes):
        self._tokens = tuple(sticky_token(s.key, secret) for s in servers)
        self._index = {t: i for i, t in enumerate(self._tokens)}

    def index(self, token: str) -> int | None:
        """Server index for a token, or None if it names no server of the pool."""
        return self._index.get(token)

    def token(self, i: int) -> str:
        return self._tokens[i]


# --------------------------------------------------------------------------
# Request keys


def cookie_value(cookie_headers: Sequence[str], name: str) -> str | None:
    """Value of cookie ``name`` in the request's Cookie header values (the
    first one wins), or None.  Pairs without "=" are skipped, as browsers do."""
    for header in cookie_headers:
        for pair in header.split(";"):
            k, eq, v = pair.strip().partition("=")
            if eq and k == name:
                v = v.strip()
                if len(v) >= 2 and v[0] == v[-1] == '"':
                    v = v[1:-1]
                return v
    return None


def query_value(target: str, name: str) -> str | None:
    """Raw (still percent-encoded) value of query parameter ``name`` in a
    request target, or None; a parameter without "=" has the value ""."""
    _, q, query = target.partition("?")
    if not q:
        return None
    query = query.partition("#")[0]
    for pair in query.split("&"):
        k, _, v = pair.partition("=")
        if k == name:
            return v
    return None


def sticky_lookup(token: str, servers: Sequence[ServerSpec], secret: bytes) -> int | None:
    """Index of the server ``token`` names, or None (O(N); prefer StickyTable)."""
    for i, s in enumerate(servers):
        if hmac.compare_digest(sticky_token(s.key, secret), token):
            return i
    return None
