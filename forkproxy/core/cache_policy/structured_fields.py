"""RFC 8941 section 4.2 dictionary parser (only what a targeted cache field needs).

``_SF(text).dictionary()`` returns ``{key: value}``; it raises ``_SFError``
on anything that is not a valid dictionary.  Values are ``int``, ``float``,
``str``, ``_Token``, ``bytes``, ``bool`` or a tuple of those (an inner list);
parameters are parsed and dropped.
"""

import base64
import re


_SF_KEY = re.compile(r"[a-z*][a-z0-9_\-.*]*")
_SF_NUMBER = re.compile(r"-?[0-9]{1,15}(\.[0-9]{1,3})?")
_SF_TOKEN = re.compile(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*")
_SF_BINARY = re.compile(r":([A-Za-z0-9+/=]*):")


class _SFError(ValueError):
    pass


class _SF:
    def __init__(self, text: str):
        self.s, self.i = text, 0

    def peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def skip(self, chars: str) -> None:
        while self.peek() and self.peek() in chars:
            self.i += 1

    def match(self, regex: re.Pattern) -> re.Match:
        m = regex.match(self.s, self.i)
        if not m:
            raise _SFError(self.i)
        self.i = m.end()
        return m

    def bare_item(self):
        c = self.peek()
        if c == "-" or c.isdigit():
            m = self.match(_SF_NUMBER)
            if m.group(1) is None:
                return int(m.group(0))
            if len(m.group(0).lstrip("-").split(".")[0]) > 12:
                raise _SFError(self.i)
            return float(m.group(0))
        if c == '"':
            self.i += 1
            out = []
            while True:
                c = self.peek()
                if not c:
                    raise _SFError(self.i)
                self.i += 1
                if c == "\\":
                    c = self.peek()
                    if c not in ('"', "\\"):
                        raise _SFError(self.i)
                    self.i += 1
                elif c == '"':
                    return "".join(out)
                elif not (" " <= c <= "~"):
                    raise _SFError(self.i)
                out.append(c)
        if c == ":":
            m = self.match(_SF_BINARY)
            try:
                return base64.b64decode(m.group(1), validate=True)
            except ValueError:
                raise _SFError(self.i) from None
        if c == "?":
            m = self.match(re.compile(r"\?([01])"))
            return m.group(1) == "1"
        return _Token(self.match(_SF_TOKEN).group(0))

    def params(self) -> None:
        # Parameters on directives carry no meaning for caching: parse, drop.
        while self.peek() == ";":
            self.i += 1
            self.skip(" ")
            self.match(_SF_KEY)
            if self.peek() == "=":
                self.i += 1
                self.bare_item()

    def item_or_inner_list(self):
        if self.peek() == "(":
            self.i += 1
            items = []
            while True:
                self.skip(" ")
                if self.peek() == ")":
                    self.i += 1
                    self.params()
                    return tuple(items)
                items.append(self.bare_item())
                self.params()
                if self.peek() not in (" ", ")"):
                    raise _SFError(self.i)
        value = self.bare_item()
        self.params()
        return value

    def dictionary(self) -> dict:
        out: dict = {}
        self.skip(" ")
        while self.peek():
            key = self.match(_SF_KEY).group(0)
            if self.peek() == "=":
                self.i += 1
                out[key] = self.item_or_inner_list()
            else:
                self.params()
                out[key] = True
            self.skip(" \t")
            if not self.peek():
                return out
            if self.peek() != ",":
                raise _SFError(self.i)
            self.i += 1
            self.skip(" \t")
            if not self.peek():
                raise _SFError(self.i)
        return out


class _Token(str):
    """An RFC 8941 token (distinct from a string only for type checks)."""
