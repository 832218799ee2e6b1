"""Units and the helpers every parser and message uses.

Durations are strings with a unit: ``"500ms"``, ``"2s"``, ``"1.5s"``,
``"1m"``, ``"1h"``; a bare number is rejected because ``timeout = 30`` is
ambiguous (seconds? milliseconds?).  Sizes are a plain integer of bytes or a
string ``"64k"``, ``"1m"``, ``"1g"`` (powers of 1024, case-insensitive).
``Invalid`` is what a parser raises; its message follows the key path.
"""

from __future__ import annotations

import ipaddress
import re
from decimal import Decimal
from typing import Any

class Invalid(ValueError):
    """A value a parser rejects; the message is shown after the key path."""


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_DURATION_UNITS = {"ms": Decimal("0.001"), "s": Decimal(1), "m": Decimal(60), "h": Decimal(3600)}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmg]?)\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_DURATION_HINT = 'expected a duration with a unit, such as "500ms", "2s", "1m" or "1h"'


def _tname(value: Any) -> str:
    """The TOML name of a value's type, for messages."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date/time"


def parse_duration(value: Any) -> float:
    """Seconds from "500ms", "2s", "1.5s", "1m" or "1h"; Invalid otherwise.

    Bare numbers (TOML ``30`` or ``"30"``) are rejected on purpose: the unit
    is what makes ``timeout = 30`` unambiguous.
    """
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise Invalid(f"{_DURATION_HINT}, got {_tname(value)}")
    if not isinstance(value, str) or re.fullmatch(r"\s*\d+(\.\d+)?\s*", value):
        raise Invalid(f'{_DURATION_HINT}; bare numbers are not accepted: write "{value}s"')
    m = _DURATION_RE.match(value)
    if not m:
        raise Invalid(f"{_DURATION_HINT}, got {_quote(value)}")
    # Decimal then one rounding, so "0.1s" and "100ms" give the same float.
    return float(Decimal(m.group(1)) * _DURATION_UNITS[m.group(2)])


def format_duration(seconds: float) -> str:
    """The shortest duration string that parse_duration maps back to ``seconds``."""
    if seconds < 0:
        raise ValueError("negative duration")
    candidates = []
    if float(seconds).is_integer():
        n = int(seconds)
        if n and n % 3600 == 0:
            candidates.append(f"{n // 3600}h")
        if n and n % 60 == 0:
            candidates.append(f"{n // 60}m")
        candidates.append(f"{n}s")
    ms = Decimal(repr(float(seconds))) * 1000
    if ms == ms.to_integral_value() and seconds < 1:
        candidates.append(f"{int(ms)}ms")
    candidates.append(f"{Decimal(repr(float(seconds))):f}s")
    for text in candidates:
        if parse_duration(text) == seconds:
            return text
    raise ValueError(f"cannot format {seconds!r} as a duration")  # pragma: no cover


def parse_size(value: Any) -> int:
    """Bytes from a plain integer or "64k", "1m", "1g" (powers of 1024)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise Invalid(f'expected a size such as 65536, "64k", "1m" or "1g", got {_tname(value)}')
    if isinstance(value, int):
        if value < 0:
            raise Invalid(f"a size cannot be negative, got {value}")
        return value
    m = _SIZE_RE.match(value)
    if not m:
        raise Invalid(f'expected a size such as 65536, "64k", "1m" or "1g", got {_quote(value)}')
    return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]


def format_size(n: int) -> str | int:
    """"64k"/"1m"/"1g" when ``n`` is a whole multiple, else the int itself."""
    for unit in ("g", "m", "k"):
        if n and n % _SIZE_UNITS[unit] == 0:
            return f"{n // _SIZE_UNITS[unit]}{unit}"
    return n


_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)


def split_host_port(text: str, *, default_host: str | None = None) -> tuple[str, int]:
    """(host, port) from "HOST:PORT", "[v6]:PORT", and, when ``default_host``
    is given, ":PORT" or "PORT".  HOST is an IPv4 address, a bracketed IPv6
    address (returned without brackets) or a hostname.  Invalid otherwise."""
    text = text.strip()
    if default_host is not None and text.isdigit():
        host, port_s = default_host, text
    elif text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            raise Invalid(f'expected "[IPv6]:PORT", got {_quote(text)}')
        host, port_s = text[1:end], text[end + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise Invalid(f"invalid IPv6 address {_quote(host)}") from None
    else:
        if text.count(":") > 1:
            raise Invalid(f'IPv6 addresses must be in brackets, as "[::1]:8080"; got {_quote(text)}')
        host, sep, port_s = text.rpartition(":")
        if not sep:
            raise Invalid(f'expected "HOST:PORT", got {_quote(text)}: the port is required')
        if not host:
            if default_host is None:
                raise Invalid(f'expected "HOST:PORT", got {_quote(text)}: the host is required')
            host = default_host
        elif not _HOSTNAME_RE.match(host):
            raise Invalid(f"invalid host {_quote(host)}")
        elif re.fullmatch(r"[\d.]+", host):
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise Invalid(f"invalid IPv4 address {_quote(host)}") from None
    if not port_s.isdigit() or not 1 <= int(port_s) <= 65535:
        raise Invalid(f"invalid port {_quote(port_s)}: expected 1..65535")
    return host, int(port_s)


def _quote(s: str) -> str:
    """A TOML basic string for ``s`` (also used to quote values in messages)."""
    out = ['"']
    for ch in s:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch in "\n\t\r":
            out.append({"\n": "\\n", "\t": "\\t", "\r": "\\r"}[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False
