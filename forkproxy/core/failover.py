"""After a failed attempt at a server: whom it is charged to, where the request goes next.

Pure decisions for ``net.forward.exchange`` (DESIGN section 4, and
forkproxy.toml(5) ``retry``), on what the attempt's ``UpstreamError`` says:
``kind`` ("refused", "reset", "timeout", "closed", "invalid", or "status"
for a response whose status ``retry.on`` lists), ``sent`` (a byte of the
request may have reached the server) and whether the connection came from
the idle pool (``reused``).

A failure is only ever charged to the server the attempt was made on: the
caller passes that server's index and nothing else, and each attempt has
its own time limits, so a retry never inherits the time its predecessor
spent (net.sockio).
"""

from __future__ import annotations

__all__ = ["SAME", "OTHER", "STOP", "condition", "charged", "after_failure", "within_budget"]

SAME = "same"  # once more on a new connection to the same server (not counted as a try)
OTHER = "other"  # another server, if one is left and the retry limits allow
STOP = "stop"  # answer the client with this failure's status

# A server may close (or reset) an idle keep-alive connection at any time;
# the request found it so, nothing of it was processed: not the server's fault.
_STALE = frozenset({"closed", "reset"})


def condition(kind: str, code: int | None = None):
    """The ``retry.on`` entry a failure meets: "timeout", "error", or the status code."""
    if kind == "status":
        return code
    return "timeout" if kind == "timeout" else "error"


def charged(kind: str, reused: bool, counted: bool = False) -> bool:
    """True when the failure counts as a passive failure (max_fails) of its server.

    ``counted``: the response's status is in fail_status, so the relay
    already counted it (once per response).  A pooled connection found
    closed or reset is never charged.
    """
    if kind == "status":
        return not counted
    return not (reused and kind in _STALE)


def after_failure(kind: str, *, sent: bool, reused: bool, replayable: bool, listed: bool) -> str:
    """Where the request goes after the failure: SAME, OTHER or STOP.

    ``replayable``: idempotent method, no body; ``listed``: the failure's
    ``condition`` is in ``retry.on``.  Nothing of the request reached the
    server: always OTHER (SAME on a stale pooled connection).  Otherwise
    only a replayable request moves: SAME on a stale pooled connection,
    OTHER when the condition is listed (a timeout before the response head
    with the default ``on``, as nginx's ``proxy_next_upstream timeout``).
    The caller only asks while no byte of the response reached the client.
    """
    if reused and kind in _STALE and (replayable or not sent):
        return SAME
    if not sent or (replayable and listed):
        return OTHER
    return STOP


def within_budget(retrying: int, active: int, percent: float, minimum: int) -> bool:
    """Whether one more retry may start under a retry budget (Envoy's retry_budget).

    ``retrying``: the pool's retries in flight, not counting this request's;
    ``active``: its requests in flight, this one included; ``percent`` of
    them may be retries, and always ``minimum`` (Envoy's
    min_retry_concurrency), so that a pool with little traffic still retries.
    """
    return retrying < max(minimum, active * percent / 100.0)
