"""Streaming response encoders: gzip (zlib) and brotli (when installed).

``new(coding, level)`` returns an encoder with ``feed(data) -> bytes`` and
``finish() -> bytes``; the bytes may be empty (the encoder buffers until it
has a block worth sending).  Memory is bounded by the compressor's window,
never by the body: a response is never buffered whole.

``flush()`` emits what the encoder holds back (a sync flush): the session
calls it each time it passes what one read from the upstream gave, so a
slow stream (server-sent events, a long poll) reaches the client as it
comes instead of waiting for a full compressor block.  With 64 KiB reads
the cost in ratio is small.

An encoder is a response filter (``net.relay.pump``'s contract):
``on_data``, ``on_flush`` and ``on_end`` are ``feed``, ``flush`` and ``finish``.

``AVAILABLE``: the codings this process can produce, in order of preference
(brotli compresses text 15-25% better than gzip at similar speed).
``level`` is the route's compress.level: 1..9, mapped onto brotli's 0..11
quality scale for brotli.
"""

from __future__ import annotations

import zlib

try:  # optional: pip install brotli
    import brotli as _brotli
except ImportError:  # pragma: no cover - depends on the host
    _brotli = None

AVAILABLE: tuple[str, ...] = (("br",) if _brotli is not None else ()) + ("gzip",)

# gzip level -> brotli quality: brotli 11 is far slower than gzip 9 for a few
# percent; a proxy compresses on the fly, so the scale tops out at 9.
_BR_QUALITY = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 5, 7: 6, 8: 7, 9: 9}


class GzipEncoder:
    __slots__ = ("_z",)

    def __init__(self, level: int):
        # wbits 31: a gzip header and trailer around the deflate stream.
        self._z = zlib.compressobj(level, zlib.DEFLATED, 31, 8)

    def feed(self, data) -> bytes:
        return self._z.compress(data)

    def flush(self) -> bytes:
        return self._z.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        return self._z.flush(zlib.Z_FINISH)

    # The response filter contract (net.relay.pump).
    on_data, on_flush, on_end = feed, flush, finish


class BrotliEncoder:
    __slots__ = ("_c",)

    def __init__(self, level: int):
        self._c = _brotli.Compressor(quality=_BR_QUALITY.get(level, 5), lgwin=22)

    def feed(self, data) -> bytes:
        return self._c.process(bytes(data))

    def flush(self) -> bytes:
        return self._c.flush()

    def finish(self) -> bytes:
        return self._c.finish()

    # The response filter contract (net.relay.pump).
    on_data, on_flush, on_end = feed, flush, finish


def new(coding: str, level: int):
    """A fresh encoder for ``coding`` (one of ``AVAILABLE``)."""
    if coding == "gzip":
        return GzipEncoder(level)
    if coding == "br" and _brotli is not None:
        return BrotliEncoder(level)
    raise ValueError(f"no encoder for {coding!r}")
