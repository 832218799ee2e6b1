"""The canonical form of a request path, sans-IO: the one path every decision sees.

CONTRACT (the session calls it once per request, right after the head is
parsed; routing, access lists, deny rules, rewrites and redirects,
``explain``, the cache key and the head sent upstream all use its result):

    ``canonical_path(path, merge_slashes=True, encoded_slashes="reject") -> str``
        ``path`` is the path part of a request target (``str``, ASCII, starting
        with ``/``, without the query).  Returns the canonical path, or raises
        ``PathRefused`` (``.status`` 400, ``.reason`` in words) for a path no
        rule can judge.  A path already canonical comes back as the very same
        object, after a few ``in`` tests (the hot path: most paths have no
        ``%``, no ``\\``, no ``//`` and no ``/.``).

The steps, in this order (RFC 3986 6.2.2, then nginx's slash merging):

1. Percent-encoding (RFC 3986 2.1, 2.3): ``%`` must be followed by two hex
   digits, else the path is refused (``%zz``, ``%2``, IIS's ``%u0061``).  An
   escape of an unreserved character (``A-Z a-z 0-9 - . _ ~``) is decoded
   (``%61`` -> ``a``, ``%2e`` -> ``.``); every other escape stays encoded,
   with uppercase hex (``%c3%a9`` -> ``%C3%A9``), so nothing is decoded twice.
   ``%00`` is refused.
2. ``%2F`` and ``%5C`` (and a raw ``\\``, which some servers take for ``/``):
   with ``encoded_slashes = "reject"`` the path is refused, since a rule
   cannot know whether the server behind will read them as separators; with
   ``"pass"`` they stay encoded (``%2F``, ``%5C``; a raw ``\\`` becomes
   ``%5C``) and are never separators for a rule.
3. With ``merge_slashes``, runs of ``/`` become one ``/`` (nginx's default).
4. Dot segments are removed (RFC 3986 5.2.4): ``/a/./b`` -> ``/a/b``,
   ``/a/b/../c`` -> ``/a/c``, ``/..`` -> ``/``, ``/a/..`` -> ``/``,
   ``/a/.`` -> ``/a/``.  A dot segment with parameters (``/..;x/``, ``/.;/``,
   which Tomcat reads as ``..`` and ``.``) is refused.

``;`` parameters, ``:``, ``@`` and the other sub-delimiters are kept as
received.  The function is idempotent: ``canonical_path`` of a canonical
path is that path.
"""

from __future__ import annotations

import re

__all__ = ["canonical_path", "PathRefused", "ENCODED_SLASHES"]

#: The values of ``server.encoded_slashes``.
ENCODED_SLASHES = ("reject", "pass")

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_SLASHES = re.compile(r"//+")


class PathRefused(ValueError):
    """A path no rule can judge: the request is answered ``status`` (400)."""

    def __init__(self, reason: str, status: int = 400):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def canonical_path(path: str, merge_slashes: bool = True,
                   encoded_slashes: str = "reject") -> str:
    """The canonical form of ``path`` (see the module docstring); raises ``PathRefused``."""
    # The hot path: nothing below can change a path without these.
    if "%" not in path and "/." not in path and "//" not in path and "\\" not in path:
        return path
    return _canonical(path, merge_slashes, encoded_slashes == "pass")


def _canonical(path: str, merge: bool, pass_slashes: bool) -> str:
    out = path
    if "%" in out:
        if _BAD_ESCAPE.search(out):
            raise PathRefused("malformed percent-encoding in the path")

        def escape(m: re.Match) -> str:
            c = chr(int(m.group(1), 16))
            if c in _UNRESERVED:
                return c
            if c == "\0":
                raise PathRefused("NUL (%00) in the path")
            if (c == "/" or c == "\\") and not pass_slashes:
                raise PathRefused(f"encoded {'slash' if c == '/' else 'backslash'} "
                                  f"(%{m.group(1)}) in the path (server.encoded_slashes)")
            return "%" + m.group(1).upper()

        out = _ESCAPE.sub(escape, out)
    if "\\" in out:
        if not pass_slashes:
            raise PathRefused("backslash in the path (server.encoded_slashes)")
        out = out.replace("\\", "%5C")
    if merge and "//" in out:
        out = _SLASHES.sub("/", out)
    if "/." in out:
        out = _remove_dot_segments(out)
    return path if out == path else out


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 5.2.4 for an absolute path (it starts with ``/``)."""
    segments = path.split("/")
    last = len(segments) - 1
    out: list[str] = []
    for i in range(1, last + 1):
        s = segments[i]
        if s == "." or s == "..":
            if s == ".." and out:
                out.pop()
            if i == last:  # "/a/." and "/a/b/.." end with a slash
                out.append("")
        elif s[:2] == ".;" or s[:3] == "..;":
            raise PathRefused("a dot segment with parameters in the path")
        else:
            out.append(s)
    return "/" + "/".join(out)
