"""Line numbers: a lenient structural scan of text tomli has already accepted.

tomli gives no line numbers, so ``LineFinder`` re-scans the source text to
map each key path to the line where it is written; the loader's errors and
``-t``'s warnings carry them.
"""

from __future__ import annotations

import re

import tomli

from forkproxy.config.schema import Path


class LineFinder:
    """Map key paths to the first line where they appear.

    Records table headers (``[a.b]``, ``[[a]]`` with its array index), keys
    (dotted keys included), array elements (``servers[1]``) and inline-table
    members, whatever line they sit on.
    """

    _BARE = re.compile(r"[A-Za-z0-9_-]+")

    def __init__(self, text: str):
        self.s = text
        self.i = 0
        self.line = 1
        self.lines: dict[Path, int] = {}
        self.arrays: dict[Path, int] = {}
        try:
            self._document()
        except (IndexError, ValueError):  # best effort: keep what was found
            pass

    def _peek(self, k: int = 0) -> str:
        j = self.i + k
        return self.s[j] if j < len(self.s) else ""

    def _adv(self, k: int = 1) -> None:
        self.line += self.s.count("\n", self.i, self.i + k)
        self.i += k

    def _skip(self, newlines: bool) -> None:
        while self.i < len(self.s):
            c = self.s[self.i]
            if c in " \t\r" or (newlines and c == "\n"):
                self._adv()
            elif c == "#":
                end = self.s.find("\n", self.i)
                self._adv((end if end >= 0 else len(self.s)) - self.i)
            else:
                return

    def _record(self, path: Path) -> None:
        self.lines.setdefault(path, self.line)

    def _document(self) -> None:
        prefix: Path = ()
        while True:
            self._skip(True)
            if self.i >= len(self.s):
                return
            if self.s.startswith("[[", self.i):
                self._adv(2)
                parts = self._key()
                self._skip(False)
                self._adv(2)
                prefix = self._resolve(parts, array=True)
            elif self._peek() == "[":
                self._adv()
                parts = self._key()
                self._skip(False)
                self._adv()
                prefix = self._resolve(parts, array=False)
            else:
                self._keyval(prefix)

    def _resolve(self, parts: list[str], array: bool) -> Path:
        # An array named before the last part means its current (last) element.
        cur = ()
        for n, part in enumerate(parts):
            cur += (part,)
            last = n == len(parts) - 1
            if last and array:
                idx = self.arrays.get(cur, -1) + 1
                self.arrays[cur] = idx
                cur += (idx,)
            elif cur in self.arrays:
                cur += (self.arrays[cur],)
            self._record(cur)
        return cur

    def _key(self) -> list[str]:
        parts = []
        while True:
            self._skip(False)
            c = self._peek()
            if c in "\"'":
                start = self.i
                self._string()
                raw = self.s[start : self.i]
                try:
                    parts.append(tomli.loads(f"k = {raw}")["k"])
                except tomli.TOMLDecodeError:
                    parts.append(raw[1:-1])
            else:
                m = self._BARE.match(self.s, self.i)
                if not m:
                    raise ValueError("bad key")
                parts.append(m.group())
                self._adv(m.end() - self.i)
            self._skip(False)
            if self._peek() == ".":
                self._adv()
                continue
            return parts

    def _keyval(self, prefix: Path) -> None:
        line = self.line
        path = prefix + tuple(self._key())
        self.lines.setdefault(path, line)
        self._skip(False)
        if self._peek() != "=":
            raise ValueError("expected =")
        self._adv()
        self._value(path)

    def _value(self, path: Path) -> None:
        self._skip(False)
        c = self._peek()
        if c == "[":
            self._adv()
            idx = 0
            while True:
                self._skip(True)
                if self._peek() == "]":
                    self._adv()
                    return
                self._record(path + (idx,))
                self._value(path + (idx,))
                self._skip(True)
                if self._peek() == ",":
                    self._adv()
                    idx += 1
        elif c == "{":
            self._adv()
            while True:
                self._skip(True)
                if self._peek() == "}":
                    self._adv()
                    return
                if self._peek() == ",":
                    self._adv()
                    continue
                self._keyval(path)
        elif c in "\"'":
            self._string()
        else:
            m = re.compile(r"[^,\]}\n#]*").match(self.s, self.i)
            self._adv(m.end() - self.i)

    def _string(self) -> None:
        q = self._peek()
        if self.s.startswith(q * 3, self.i):
            self._adv(3)
            while True:
                j = self.s.index(q * 3, self.i)
                if q == '"':
                    k = j
                    while k > self.i and self.s[k - 1] == "\\":
                        k -= 1
                    if (j - k) % 2:  # escaped quote
                        self._adv(j + 1 - self.i)
                        continue
                self._adv(j + 3 - self.i)
                while self._peek() == q:  # up to two quotes may close the content
                    self._adv()
                return
        self._adv()
        while True:
            c = self._peek()
            if c == "":
                raise ValueError("unterminated string")
            if c == "\\" and q == '"':
                self._adv(2)
            elif c == q:
                self._adv()
                return
            else:
                self._adv()
