"""Body decoders: the bytes after a head in, the body's pieces out.

``make_decoder(framing) -> BodyDecoder``
    ``decoder.feed(data) -> (pieces, leftover)``: consumes ``data``, returns
    the body bytes found (a list; chunk framing removed) and the bytes that
    follow the end of the body (non-empty only once ``decoder.done``; they
    belong to the next message).  Raises ``ProtocolError`` on bad chunk
    sizes, extensions or terminators (400 for requests, 502 for responses:
    the caller passes ``status`` to ``make_decoder``).  ``decoder.eof()`` is
    called when the peer closed: for a close-delimited body it marks
    ``done``; otherwise it raises ``IncompleteBody``.  ``decoder.trailers``
    holds the trailer fields of a chunked body once done (a list of (name,
    value)).  Memory is bounded: a decoder never holds more than one
    chunk-size line (and one trailer section, bounded by ``limits``) of
    state.
"""

from __future__ import annotations

from .grammar import _CHUNK_LINE_RE, _FIELD_RE, MAX_CHUNK_LINE
from .messages import DEFAULT_LIMITS, Framing, IncompleteBody, Limits, ProtocolError


class BodyDecoder:
    """Base of the decoders returned by ``make_decoder``.

    ``feed(data) -> (pieces, leftover)``; ``eof()``; ``done``; ``trailers``.
    Pieces are slices of the fed data (no copies when a whole feed is body).
    """

    __slots__ = ("done", "trailers", "status")

    def __init__(self, status: int) -> None:
        self.done = False
        self.trailers: list[tuple[str, str]] = []
        self.status = status

    def feed(self, data):  # pragma: no cover - abstract
        raise NotImplementedError

    def eof(self) -> None:
        if not self.done:
            raise IncompleteBody("peer closed before the end of the body")


class NoBodyDecoder(BodyDecoder):
    __slots__ = ()

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.done = True

    def feed(self, data):
        return [], data


class LengthDecoder(BodyDecoder):
    __slots__ = ("remaining",)

    def __init__(self, length: int, status: int) -> None:
        super().__init__(status)
        self.remaining = length
        self.done = length == 0

    def feed(self, data):
        remaining = self.remaining
        if remaining == 0:
            return [], data
        n = len(data)
        if n <= remaining:
            self.remaining = remaining - n
            if self.remaining == 0:
                self.done = True
            return ([data] if n else []), b""
        self.remaining = 0
        self.done = True
        return [data[:remaining]], data[remaining:]


class CloseDecoder(BodyDecoder):
    __slots__ = ()

    def feed(self, data):
        if self.done:
            return [], data
        return ([data] if data else []), b""

    def eof(self) -> None:
        self.done = True


# Chunked decoder states, and what each expects next.
_SIZE, _DATA, _DATA_CRLF, _TRAILER, _DONE = range(5)


class ChunkedDecoder(BodyDecoder):
    """RFC 9112 7.1 chunked decoding with bounded state.

    State table (one transition per line or data run):
        _SIZE      chunk-size line ``HEX[ext]CRLF``    -> _DATA, or _TRAILER on 0
        _DATA      ``size`` bytes of data              -> _DATA_CRLF
        _DATA_CRLF exactly CRLF                        -> _SIZE
        _TRAILER   field line CRLF                     -> _TRAILER; empty line -> _DONE
    """

    __slots__ = ("_state", "_remaining", "_line", "_limits", "_trailer_bytes")

    def __init__(self, status: int, limits: Limits = DEFAULT_LIMITS) -> None:
        super().__init__(status)
        self._state = _SIZE
        self._remaining = 0
        self._line = bytearray()
        self._limits = limits
        self._trailer_bytes = 0

    def feed(self, data):
        pieces = []
        if self.done:
            return pieces, data
        pos = 0
        n = len(data)
        while pos < n:
            state = self._state
            if state == _DATA:
                take = self._remaining
                if take >= n - pos:
                    take = n - pos
                    pieces.append(data if pos == 0 else data[pos:])
                else:
                    pieces.append(data[pos:pos + take])
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    self._state = _DATA_CRLF
            elif state == _DATA_CRLF:
                line = self._line
                need = 2 - len(line)
                line += data[pos:pos + need]
                pos += need
                if not b"\r\n".startswith(line):
                    raise ProtocolError(self.status, "chunk data not followed by CRLF")
                if len(line) == 2:
                    line.clear()
                    self._state = _SIZE
            else:
                pos = self._feed_line(data, pos, n)
                if self._state == _DONE:
                    self.done = True
                    return pieces, data[pos:]
        return pieces, b""

    def _feed_line(self, data, pos: int, n: int) -> int:
        line = self._line
        bound = MAX_CHUNK_LINE if self._state == _SIZE else self._limits.max_head_size
        i = data.find(b"\n", pos)
        if i < 0:
            line += data[pos:]
            if len(line) > bound:
                raise ProtocolError(self.status, "chunk size or trailer line too long")
            return n
        line += data[pos:i + 1]
        if len(line) > bound:
            raise ProtocolError(self.status, "chunk size or trailer line too long")
        text = line.decode("latin-1")
        line.clear()
        if self._state == _SIZE:
            m = _CHUNK_LINE_RE.fullmatch(text)
            if m is None:
                raise ProtocolError(self.status, "invalid chunk size line")
            size = int(m.group(1), 16)
            if size:
                self._remaining = size
                self._state = _DATA
            else:
                self._state = _TRAILER
        elif text == "\r\n":
            self._state = _DONE
        else:
            self._trailer_bytes += len(text)
            if self._trailer_bytes > self._limits.max_head_size:
                raise ProtocolError(self.status, "trailer section too large")
            m = _FIELD_RE.fullmatch(text)
            if m is None:
                raise ProtocolError(self.status, "invalid trailer field")
            if len(self.trailers) >= self._limits.max_headers:
                raise ProtocolError(self.status, "too many trailer fields")
            self.trailers.append((m.group(1).lower(), m.group(2)))
        return i + 1


def make_decoder(framing: Framing, status: int = 400, limits: Limits = DEFAULT_LIMITS) -> BodyDecoder:
    """A fresh decoder for ``framing``; errors it raises carry ``status``."""
    kind = framing.kind
    if kind == "length":
        return LengthDecoder(framing.length, status)
    if kind == "chunked":
        return ChunkedDecoder(status, limits)
    if kind == "close":
        return CloseDecoder(status)
    if kind == "none":
        return NoBodyDecoder(status)
    raise ValueError(f"unknown framing kind {kind!r}")
