"""Configuration bodies that several test files share (TOML text for ForkProxy)."""

from __future__ import annotations


def cache_site(port: int, origin_addr: str, cache: str = "", route_extra: str = "") -> str:
    """One listener on 127.0.0.1:``port``, one cached route to one origin.

    ``cache``: lines of the [cache] section; ``route_extra``: more route keys.
    """
    return f"""
[cache]
{cache}

[[listener]]
name = "web"
bind = "127.0.0.1:{port}"

[[route]]
pool = "web"
cache = true
{route_extra}

[pool.web]
servers = [{{ addr = "{origin_addr}" }}]
"""


def memcached(addr: str, timeout: str = "1s") -> str:
    """``[cache]`` lines for one memcached at ``addr``.

    The 30 ms default timeout is for production.  Tests of cache semantics
    give memcached a second, so that a stall of this loaded machine is not
    taken for a miss (fail open); tests of the breaker pass a short one.
    """
    return f'servers = ["{addr}"]\ntimeout = "{timeout}"'
