"""Health state machines, pure: active rise/fall, passive failures, slow start.

Active checks follow HAProxy: a server that is ``up`` goes ``down`` after
``fall`` consecutive failed probes; a ``down`` server comes back ``up`` after
``rise`` consecutive successful ones. A result of the other kind resets the
run. The whole machine is the table ``_TRANSITIONS`` below; ``RiseFall.step``
only applies it. State lives in ``core.table.HealthRow`` so what the checker
computes is exactly what it writes to the shared table.

Initial state follows HAProxy's ``init-state``: ``"up"`` (the default) starts
up but one failed probe marks the server down; ``"fully-up"`` needs ``fall``
failures; ``"down"`` starts down and one success brings it up;
``"fully-down"`` needs ``rise`` successes.

Passive checks follow nginx's ``max_fails``/``fail_timeout``, with a cap on
the share of a pool they may take out (Envoy's ``max_ejection_percent``,
``ejected``); slow start follows HAProxy/nginx ``slow_start`` (a linear
weight ramp after recovery).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from forkproxy.core.table import HealthRow

__all__ = ["RiseFall", "passive_out", "ejected", "slow_start_weight", "INIT_STATES"]

# (state, probe ok) -> (counter to increment, counter to reset, threshold attribute,
# state entered when the incremented counter reaches the threshold).
_TRANSITIONS = {
    ("up", True): ("successes", "failures", None, None),
    ("up", False): ("failures", "successes", "fall", "down"),
    ("down", True): ("successes", "failures", "rise", "up"),
    ("down", False): ("failures", "successes", None, None),
}

# init-state -> (state, successes, failures) as a function of (rise, fall).
INIT_STATES = {
    "up": lambda rise, fall: ("up", 0, fall - 1),
    "fully-up": lambda rise, fall: ("up", 0, 0),
    "down": lambda rise, fall: ("down", rise - 1, 0),
    "fully-down": lambda rise, fall: ("down", 0, 0),
}


@dataclass(frozen=True)
class RiseFall:
    """The active-check machine for one pool's ``rise`` and ``fall`` (both >= 1)."""

    rise: int = 2
    fall: int = 3
    init_state: str = "up"

    def __post_init__(self):
        if self.rise < 1 or self.fall < 1:
            raise ValueError("rise and fall must be >= 1")
        if self.init_state not in INIT_STATES:
            raise ValueError(f"init_state must be one of {sorted(INIT_STATES)}")

    def initial(self, now: float) -> HealthRow:
        """The state of a server never probed yet."""
        state, succ, fail = INIT_STATES[self.init_state](self.rise, self.fall)
        return HealthRow(state=state, successes=succ, failures=fail, last_change=now,
                         reason=f"init-state {self.init_state}")

    def step(self, h: HealthRow | None, ok: bool, now: float, result: str, latency: float) -> HealthRow:
        """The state after one probe that began at ``now`` and got ``result``.

        ``h`` None means never probed (see ``initial``). Pure: returns a new
        row; ``last_change`` and ``reason`` change only on a transition.
        """
        if h is None:
            h = self.initial(now)
        inc, reset, threshold, target = _TRANSITIONS[(h.state, bool(ok))]
        count = getattr(h, inc) + 1
        new = replace(h, **{inc: count, reset: 0}, last_check=now, last_result=result, latency=latency)
        if threshold is not None and count >= getattr(self, threshold):
            why = "successful" if ok else "failed"
            new = replace(new, state=target, last_change=now,
                          reason=f"{count} {why} checks, last: {result}")
        return new

    def next_interval(self, h: HealthRow | None, interval: float,
                      fastinter: float | None = None, downinter: float | None = None) -> float:
        """Seconds to wait before the next probe (HAProxy ``inter``/``fastinter``/``downinter``).

        ``fastinter`` while transitioning (up with 0 < failures < fall, or
        down with 0 < successes < rise); ``downinter`` while fully down;
        ``interval`` otherwise. Unset (None or 0) falls back to ``interval``.
        """
        fast = fastinter or interval
        down = downinter or interval
        if h is None:
            return interval
        if h.state == "up":
            return fast if 0 < h.failures < self.fall else interval
        return fast if 0 < h.successes < self.rise else down


def passive_out(failures_in_window: int, max_fails: int) -> bool:
    """nginx ``max_fails``: out of rotation once the window holds that many failures.

    ``max_fails`` 0 disables passive checks.
    """
    return max_fails > 0 and failures_in_window >= max_fails


def ejected(failures: Sequence[int], eligible: Sequence[bool], max_fails: int,
            max_percent: int) -> list[bool]:
    """Which servers of one pool passive checks keep out of rotation.

    ``failures[i]``: server i's failures in its open window; ``eligible[i]``:
    nothing but passive checks stops server i from taking requests (its
    active checks say up, its admin state is ready).  A server has *failed*
    once it reached ``max_fails`` (``passive_out``).  A failed server that
    is not eligible is out anyway and counts for nothing.  Of the eligible
    ones, at most ``floor(n_eligible * max_percent / 100)`` are out: those
    with the most failures, the lower index first on a tie.  Below 100 % the
    cap always leaves at least one eligible server in rotation, so failures
    alone never make a pool answer 503 (a pool of one server is never out,
    nginx's rule); the others keep taking requests, as nginx does when
    every server failed.  Every worker decides the same from the same table.
    """
    n = len(failures)
    failed = [passive_out(failures[i], max_fails) for i in range(n)]
    cap = sum(1 for e in eligible if e) * max_percent // 100
    ranked = sorted((i for i in range(n) if failed[i] and eligible[i]),
                    key=lambda i: (-failures[i], i))
    kept_out = set(ranked[:cap])
    return [failed[i] and (not eligible[i] or i in kept_out) for i in range(n)]


def slow_start_weight(weight: int, since_up: float, slow_start: float) -> int:
    """The effective weight ``since_up`` seconds after a server came back up.

    Ramps linearly from ``max(1, weight // 10)`` to ``weight`` over
    ``slow_start`` seconds; ``slow_start`` <= 0 disables the ramp. A weight of
    0 stays 0 (the server takes no traffic).
    """
    if weight <= 0:
        return 0
    if slow_start <= 0 or since_up >= slow_start:
        return weight
    low = max(1, weight // 10)
    frac = max(0.0, since_up) / slow_start
    return min(weight, max(low, low + math.floor((weight - low) * frac)))
