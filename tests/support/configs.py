"""Configuration bodies that several test files share (TOML text for ForkProxy)."""

from __future__ import annotations

import json


def one_pool(port: int, servers, pool_extra: str = "", route_extra: str = "", *,
             pool: str = "web", listener: str = "web", listener_extra: str = "") -> str:
    """One http listener ``listener`` on 127.0.0.1:``port``, one route to pool ``pool``.

    ``servers``: addresses, or inline tables as written in TOML (``'{ addr =
    "...", weight = 2 }'``); ``pool_extra`` / ``route_extra`` /
    ``listener_extra``: more lines of the pool / the route / the listener.
    The pool comes last: lines appended to the text are the pool's.
    """
    entries = ", ".join(s if s.lstrip().startswith("{") else f'{{ addr = "{s}" }}'
                        for s in servers)
    return f"""
[[listener]]
name = "{listener}"
bind = "127.0.0.1:{port}"
{listener_extra}
[[route]]
pool = "{pool}"
{route_extra}

[pool.{pool}]
servers = [{entries}]
{pool_extra}
"""


def cache_site(port: int, origin_addr: str, cache: str = "", route_extra: str = "") -> str:
    """``one_pool`` with one origin, its route cached; ``cache``: lines of [cache]."""
    return f"[cache]\n{cache}\n" + one_pool(port, [origin_addr],
                                               route_extra="cache = true\n" + route_extra)


def mixed_site(port: int, origin_addr: str) -> str:
    """One listener "web", pool "p" with one origin: paths under /c/ cached
    (in each worker's memory), everything else proxied (the keep-alive soak's)."""
    return f"""
[cache]
servers = []

[[listener]]
name = "web"
bind = "127.0.0.1:{port}"

[[route]]
path = "/c/"
pool = "p"
cache = true

[[route]]
pool = "p"

[pool.p]
servers = [{{ addr = "{origin_addr}" }}]
"""


def memcached(addr: str | list[str], timeout: str = "1s") -> str:
    """``[cache]`` lines for the memcached at ``addr`` (one "host:port", or a list).

    The 30 ms default timeout is for production.  Tests of cache semantics
    give memcached a second, so that a stall of this loaded machine is not
    taken for a miss (fail open); tests of the breaker pass a short one.
    """
    addrs = [addr] if isinstance(addr, str) else addr
    return f'servers = {json.dumps(addrs)}\ntimeout = "{timeout}"'
