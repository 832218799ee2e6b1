"""Outlier detection, pure: Envoy's ``outlier_detection`` rules.

A server is *ejected* (takes no new requests) for a while when

* its run of consecutive 5xx responses reaches ``consecutive_5xx``, or its
  run of consecutive gateway errors (502, 503, 504, or no response at all:
  connect error, reset, timeout) reaches ``consecutive_gateway_failure``
  (a success ends both runs, a 5xx that is not a gateway error ends the
  gateway run);
* its success rate over the last ``interval`` is below
  ``mean - stdev_factor * stdev`` of the rates of the pool's servers that
  took at least ``request_volume`` requests in it, when at least
  ``minimum_hosts`` of them did (``success_rate_outliers``).

The n-th ejection lasts ``base_ejection_time * n``, at most
``max_ejection_time`` (``ejection_time``); n goes down by one at every
interval pass once the server is back in rotation for an interval
(``after_interval``).  At most
``floor(servers * max_ejection_percent / 100)`` of a pool's servers are
ejected at a time (``room``): with 3 servers and 50 %, one.

The counting itself lives in the shared table (``core.table``: the
workers' runs and totals, the checker's outlier cell); the elected checker
applies these rules (``net.outlier``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

from forkproxy.core.table import OutlierCounts, OutlierRow

__all__ = ["GATEWAY", "kind_of", "ejection_time", "eject", "after_interval", "room",
           "consecutive_reason", "success_rate_outliers", "REASONS"]

#: Statuses Envoy calls gateway errors.
GATEWAY = frozenset({502, 503, 504})
_EPSILON = 1e-9  # percent
#: The metric label of each rule.
REASONS = ("consecutive_5xx", "consecutive_gateway_failure", "success_rate")


def kind_of(status: int | None) -> str:
    """The outcome ``core.table.Table.outcome`` counts: "ok", "5xx" or
    "gateway" (``status`` None: no response, a locally seen failure; 0: an
    L4 connection made, a success)."""
    if status is None or status in GATEWAY:
        return "gateway"
    return "5xx" if 500 <= status <= 599 else "ok"


def ejection_time(base: float, ejections: int, cap: float) -> float:
    """How long the ``ejections``-th ejection lasts: ``base * ejections``,
    at most ``max(cap, base)`` (Envoy's base and max_ejection_time)."""
    return min(base * max(1, ejections), max(cap, base))


def eject(o: OutlierRow, now: float, reason: str, base: float, cap: float) -> OutlierRow:
    """The outlier cell after one more ejection at ``now``."""
    n = o.ejections + 1
    return OutlierRow(until=now + ejection_time(base, n, cap), since=now, ejections=n,
                      reason=reason)


def after_interval(o: OutlierRow, now: float, interval: float) -> OutlierRow:
    """The cell after an interval: a server back in rotation for at least
    ``interval`` has its multiplier lowered by one (Envoy), so that a server
    that behaves comes back to short ejections."""
    if o.ejections > 0 and now - o.until >= interval:
        return replace(o, ejections=o.ejections - 1)
    return o


def room(servers: int, ejected: int, max_percent: int) -> int:
    """How many more servers of a pool of ``servers`` may be ejected now."""
    return max(0, servers * max_percent // 100 - ejected)


def consecutive_reason(c: OutlierCounts, consecutive_5xx: int, consecutive_gateway: int) -> str | None:
    """Why the runs in ``c`` eject the server (None: they don't), naming the
    rule's threshold; 0 turns a rule off."""
    if consecutive_gateway and c.consecutive_gateway >= consecutive_gateway:
        return f"{consecutive_gateway} consecutive gateway errors"
    if consecutive_5xx and c.consecutive_5xx >= consecutive_5xx:
        return f"{consecutive_5xx} consecutive 5xx"
    return None


def success_rate_outliers(volumes: Sequence[tuple[int, int] | None], minimum_hosts: int,
                          request_volume: int, stdev_factor: float) -> dict[int, tuple[float, float]]:
    """Envoy's success-rate rule over one interval.

    ``volumes[i]``: server i's (successes, requests) in the interval, None
    when it is not a candidate (ejected, removed).  Servers with fewer than
    ``request_volume`` requests are left out; with fewer than
    ``minimum_hosts`` left, nothing is decided.  Returns {i: (its rate,
    the threshold)} for the servers below ``mean - stdev_factor * stdev``
    (population standard deviation; rates in percent).
    """
    rates = {i: 100.0 * ok / total for i, v in enumerate(volumes) if v is not None
             for ok, total in [v] if total >= max(1, request_volume)}
    if len(rates) < max(1, minimum_hosts):
        return {}
    mean = sum(rates.values()) / len(rates)
    stdev = math.sqrt(sum((r - mean) ** 2 for r in rates.values()) / len(rates))
    threshold = mean - stdev_factor * stdev
    # Below by more than rounding: equal rates must never make an outlier
    # out of the float error of their mean.
    return {i: (r, threshold) for i, r in rates.items() if r < threshold - _EPSILON}
