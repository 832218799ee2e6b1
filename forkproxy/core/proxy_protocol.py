"""PROXY protocol headers (HAProxy's spec, versions 1 and 2): encode and parse.

Pure functions over bytes.  An address is ``(ip_text, port)``; ``None``
stands for "unknown" (v1 ``PROXY UNKNOWN``, v2 ``LOCAL``): a connection whose
origin the sender cannot or will not name.  Mixed families (an IPv4 client
on an IPv6 socket) are sent as IPv6 with the IPv4 address mapped, since a
header carries one family.

``parse(buf)`` reads a header at the start of ``buf``: it returns
``NEED_MORE`` while ``buf`` could still become a valid header, a
``ProxyHeader`` (with the number of bytes it took) once complete, and raises
``ProxyProtocolError`` as soon as ``buf`` cannot start one.  v2 TLVs are
skipped.  A reader should never read past the header: the bytes after it
belong to the relayed stream (see ``net.listener.read_proxy_header``).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

V1_MAX = 107  # the longest v1 line, CRLF included (spec section 2.1)
V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"
NEED_MORE = None


class ProxyProtocolError(ValueError):
    """The bytes are not a valid PROXY protocol header."""


@dataclass(frozen=True)
class ProxyHeader:
    """A parsed header: ``src``/``dst`` None when the sender said UNKNOWN/LOCAL."""

    version: int
    src: tuple[str, int] | None
    dst: tuple[str, int] | None
    length: int  # bytes the header took at the start of the buffer


def _ips(src, dst):
    a = ipaddress.ip_address(src[0])
    b = ipaddress.ip_address(dst[0])
    if a.version != b.version:
        a = a if a.version == 6 else ipaddress.IPv6Address("::ffff:" + str(a))
        b = b if b.version == 6 else ipaddress.IPv6Address("::ffff:" + str(b))
    return a, b


def encode_v1(src: tuple[str, int] | None, dst: tuple[str, int] | None) -> bytes:
    """``PROXY TCP4|TCP6 SRC DST SPORT DPORT\\r\\n``, or ``PROXY UNKNOWN\\r\\n``."""
    if src is None or dst is None:
        return b"PROXY UNKNOWN\r\n"
    a, b = _ips(src, dst)
    fam = "TCP4" if a.version == 4 else "TCP6"
    return f"PROXY {fam} {a} {b} {int(src[1])} {int(dst[1])}\r\n".encode("ascii")


def encode_v2(src: tuple[str, int] | None, dst: tuple[str, int] | None) -> bytes:
    """The binary header: PROXY over TCP with both addresses, or LOCAL without."""
    if src is None or dst is None:
        return V2_SIG + b"\x20\x00\x00\x00"
    a, b = _ips(src, dst)
    fam = 0x11 if a.version == 4 else 0x21
    body = a.packed + b.packed + struct.pack("!HH", int(src[1]), int(dst[1]))
    return V2_SIG + bytes((0x21, fam)) + struct.pack("!H", len(body)) + body


def encode(version: str, src, dst) -> bytes:
    """``version`` "v1" or "v2" (the config's proxy_protocol values)."""
    return encode_v1(src, dst) if version == "v1" else encode_v2(src, dst)


def parse(buf: bytes):
    """A ``ProxyHeader``, ``NEED_MORE``, or ``ProxyProtocolError``; see the module doc."""
    if buf[:1] == b"P":
        return _parse_v1(buf)
    if buf[:1] == b"\r":
        return _parse_v2(buf)
    if not buf:
        return NEED_MORE
    raise ProxyProtocolError("no PROXY protocol header")


def _parse_v1(buf: bytes):
    end = buf.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if not b"PROXY ".startswith(buf[:6]) or len(buf) >= V1_MAX or b"\n" in buf:
            raise ProxyProtocolError("invalid v1 header")
        return NEED_MORE
    parts = buf[:end].split(b" ")
    if parts[0] != b"PROXY" or len(parts) < 2:
        raise ProxyProtocolError("invalid v1 header")
    if parts[1] == b"UNKNOWN":  # the rest of the line is to be ignored
        return ProxyHeader(1, None, None, end + 2)
    if parts[1] not in (b"TCP4", b"TCP6") or len(parts) != 6:
        raise ProxyProtocolError("invalid v1 header")
    try:
        src = ipaddress.ip_address(parts[2].decode("ascii"))
        dst = ipaddress.ip_address(parts[3].decode("ascii"))
        ports = [_port(p) for p in parts[4:6]]
    except (ValueError, UnicodeDecodeError):
        raise ProxyProtocolError("invalid v1 addresses") from None
    want = 4 if parts[1] == b"TCP4" else 6
    if src.version != want or dst.version != want:
        raise ProxyProtocolError(f"v1 {parts[1].decode()} with addresses of another family")
    return ProxyHeader(1, (str(src), ports[0]), (str(dst), ports[1]), end + 2)


def _port(text: bytes) -> int:
    # The spec forbids leading zeros, signs and spaces.
    if not text.isdigit() or (len(text) > 1 and text[:1] == b"0") or int(text) > 65535:
        raise ValueError(text)
    return int(text)


def _parse_v2(buf: bytes):
    n = min(len(buf), 12)
    if buf[:n] != V2_SIG[:n]:
        raise ProxyProtocolError("no PROXY protocol header")
    if len(buf) < 16:
        return NEED_MORE
    ver_cmd, fam = buf[12], buf[13]
    (length,) = struct.unpack("!H", buf[14:16])
    if ver_cmd >> 4 != 2 or ver_cmd & 0xF not in (0, 1):
        raise ProxyProtocolError("invalid v2 version or command")
    if len(buf) < 16 + length:
        return NEED_MORE
    total = 16 + length
    if ver_cmd & 0xF == 0:  # LOCAL: a health check of the sender itself
        return ProxyHeader(2, None, None, total)
    body = buf[16:total]
    if fam == 0x11 and length >= 12:
        src = str(ipaddress.IPv4Address(body[0:4]))
        dst = str(ipaddress.IPv4Address(body[4:8]))
        sport, dport = struct.unpack("!HH", body[8:12])
    elif fam == 0x21 and length >= 36:
        src = str(ipaddress.IPv6Address(body[0:16]))
        dst = str(ipaddress.IPv6Address(body[16:32]))
        sport, dport = struct.unpack("!HH", body[32:36])
    elif fam in (0x11, 0x21):
        raise ProxyProtocolError("v2 address block too short")
    else:  # UNSPEC, UDP, UNIX: no TCP address to take
        return ProxyHeader(2, None, None, total)
    return ProxyHeader(2, (src, sport), (dst, dport), total)
