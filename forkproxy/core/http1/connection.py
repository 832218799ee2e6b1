"""Connection tokens and keep-alive.

``wants_keep_alive(version, headers) -> bool``: HTTP/1.1 unless
``Connection: close``; HTTP/1.0 only with ``Connection: keep-alive``.
``keep_alive(version, tokens)`` is the same from ``connection_tokens``.
"""

from __future__ import annotations

from functools import lru_cache


def connection_tokens(headers) -> frozenset[str]:
    """Lower-cased tokens of every Connection header."""
    values = tuple(v for n, v in headers if n == "connection")
    return _tokens_of(values) if values else _NO_TOKENS


_NO_TOKENS: frozenset[str] = frozenset()


@lru_cache(maxsize=64)  # a handful of values in practice: keep-alive, close, Upgrade
def _tokens_of(values: tuple[str, ...]) -> frozenset[str]:
    tokens = set()
    for v in values:
        for t in v.split(","):
            t = t.strip(" \t")
            if t:
                tokens.add(t.lower())
    return frozenset(tokens)


def wants_keep_alive(version: str, headers) -> bool:
    return keep_alive(version, connection_tokens(headers))


def keep_alive(version: str, tokens: frozenset[str]) -> bool:
    """``wants_keep_alive`` for a message whose Connection tokens are known."""
    if version == "1.1":
        return "close" not in tokens
    return "keep-alive" in tokens and "close" not in tokens
