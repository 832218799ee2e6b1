"""Weighted splits of a route's requests across pools (canaries), sans-IO.

CONTRACT (consumed by ``forkproxy.config.route``, ``net.stages`` and ``net.explain``):

    ``Split(pools, weights, by)``
        a route's ``pools = [{ pool, weight }, ...]`` and ``split_by``.
        Raises ``ValueError`` for no pool, a pool twice, a weight outside
        0..1000, or weights that sum to 0.
    ``Split.key(req, client) -> bytes | None``
        what a sticky split hashes: the cookie or header ``by`` names, else
        (absent, or ``by = "ip"``) the client's address; None when the
        split is random per request (``by`` None).
    ``Split.pick(key) -> int``
        the index of the pool a key lands on: weighted rendezvous hashing
        (highest random weight), so every key sticks to its pool while the
        weights stay; a pool's share of the keys is its weight's share of the
        sum; a pool of weight 0 gets none; changing one pool's weight moves
        keys only to it (raised) or only from it (lowered), about as many as
        its share changed, and adding a pool moves keys only to the new one.
    ``Split.draw(r) -> int``
        the index for a uniform ``r`` in [0, 1): random per request, by weight.
    ``Split.choose(req, client, rand=random.random) -> int``
        ``pick(key)`` when the split is sticky, else ``draw(rand())``.

The hash (BLAKE2b of the key, mixed with a seed made of the pool's name by
splitmix64's finaliser) is the same in every worker, process and version: a
client keeps its pool across reloads and restarts as long as the pools and
weights do.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
from dataclasses import dataclass, field

from .balance import cookie_value

__all__ = ["Split", "MAX_WEIGHT"]

MAX_WEIGHT = 1000
_SCALE = 1.0 / (1 << 64)
_MASK = (1 << 64) - 1


@dataclass(frozen=True)
class Split:
    """A route's weighted split; see the module docstring."""

    pools: tuple[str, ...]
    weights: tuple[int, ...]
    by: str | None = None  # "cookie:NAME", "header:NAME" (lower case), "ip"; None: random
    _cum: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _seeds: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        pools, weights = tuple(self.pools), tuple(self.weights)
        if not pools or len(pools) != len(weights):
            raise ValueError("a split needs one weight per pool, and at least one pool")
        if len(set(pools)) != len(pools):
            raise ValueError("a pool appears twice in the split")
        if any(not 0 <= w <= MAX_WEIGHT for w in weights):
            raise ValueError(f"split weights are 0..{MAX_WEIGHT}")
        if not sum(weights):
            raise ValueError("the split's weights sum to 0: no pool would get a request")
        if self.by is not None and self.by != "ip":
            kind, _, name = self.by.partition(":")
            if kind not in ("cookie", "header") or not name:
                raise ValueError(f'split_by is "cookie:NAME", "header:NAME" or "ip", '
                                 f"not {self.by!r}")
        cum, total = [], 0
        for w in weights:
            total += w
            cum.append(total)
        object.__setattr__(self, "pools", pools)
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "_cum", tuple(cum))
        # Seeded by the pool's name: a pool's scores do not depend on the others.
        object.__setattr__(self, "_seeds", tuple(
            (i, w, int.from_bytes(hashlib.blake2b(name.encode("utf-8"), digest_size=8,
                                                  person=b"fp-split").digest(), "big"))
            for i, (name, w) in enumerate(zip(pools, weights)) if w > 0))

    @property
    def total(self) -> int:
        return self._cum[-1]

    def key(self, req, client: str) -> bytes | None:
        by = self.by
        if by is None:
            return None
        value = None
        if by.startswith("cookie:"):
            value = cookie_value(req.get_all("cookie"), by[7:])
        elif by.startswith("header:"):
            value = req.get(by[7:])
        if value is None:  # "ip", or the client sent no key: its address
            return b"src " + client.encode("utf-8", "surrogateescape")
        return b"key " + value.encode("utf-8", "surrogateescape")

    def pick(self, key: bytes) -> int:
        # One BLAKE2b of the key, then per pool the splitmix64 finaliser of
        # (key hash XOR pool seed): a uniform draw u in (0, 1) per (key, pool),
        # and the pool with the highest weight / -ln(u) wins (each pool wins
        # with probability weight / sum of weights).
        k = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")
        best, best_score = -1, -1.0
        for i, w, seed in self._seeds:
            x = ((k ^ seed) + 0x9E3779B97F4A7C15) & _MASK
            x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
            x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
            x ^= x >> 31
            score = w / -math.log((x + 0.5) * _SCALE)
            if score > best_score:
                best, best_score = i, score
        return best

    def draw(self, r: float) -> int:
        cum = self._cum
        return min(bisect.bisect_right(cum, int(r * cum[-1])), len(cum) - 1)

    def choose(self, req, client: str, rand=random.random) -> int:
        key = self.key(req, client)
        return self.pick(key) if key is not None else self.draw(rand())

    def share(self, i: int) -> float:
        """The share of requests pool ``i`` gets."""
        return self.weights[i] / self.total
