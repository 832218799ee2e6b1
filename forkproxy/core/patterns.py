"""Configured regular expressions, compiled with RE2 so matching is linear in time.

CONTRACT:

    ``compile_pattern(pattern) -> Pattern``
        the one way a regular expression from the configuration (route
        ``path_regex``, deny ``path_regex``/``query_regex``/``header_regex``,
        rewrite ``from``, health ``expect_body``) is compiled. The result has
        the ``re.Pattern`` methods forkproxy uses (``search``, ``match``,
        ``fullmatch``) and attributes (``groups``, ``groupindex``, ``pattern``);
        its matches have ``group``/``groups``/``span``. Matching takes time
        linear in the input whatever the pattern: RE2 is an automaton, not a
        backtracking engine, so no request can make a worker spin (Python's
        ``re`` takes cubic time on ``^/(.*)/(.*)/(.*)\\.php$`` and a path of
        slashes, exponential on ``(a+)+$``).
        ``PatternError`` (a ``ValueError``: "regex 'P': REASON", the reason
        alone in ``.reason``) for what RE2 cannot take: RE2's own message,
        plus what to write instead when there is something.
    ``MAX_PATTERN_LENGTH``
        longer patterns are refused (a configuration mistake, and RE2's
        program size grows with it).

Syntax: RE2's (https://github.com/google/re2/wiki/Syntax), which is Python's
minus backreferences, lookaround, conditionals, atomic groups, possessive
quantifiers and ``(?x)``; ``\\Z`` is written ``\\z``; repetition counts go up
to 1000. For the inputs forkproxy matches (paths, queries, header values)
a pattern both engines accept means the same, except: ``\\d``, ``\\w``,
``\\s`` and ``\\b`` are ASCII-only (Python's are Unicode); ``$`` matches only
at the very end (Python's also before a final newline; paths and header
values never hold one); ``{,n}`` is literal text (write ``{0,n}``); a
repeated group that can match the empty string (``a(|.)+a``) may match and
capture a different stretch (whether it matches is the same).
"""

from __future__ import annotations

import re2

__all__ = ["compile_pattern", "PatternError", "MAX_PATTERN_LENGTH"]

#: Longest pattern accepted, in characters.
MAX_PATTERN_LENGTH = 1024

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # RE2 would print every refusal on stderr

# What to write instead, by the start of RE2's message (and the construct's text).
_HINTS = (
    ("invalid escape sequence: \\Z", "write \\z for the end of the text"),
    *((f"invalid escape sequence: \\{d}", "RE2 has no backreferences") for d in "123456789"),
    ("invalid perl operator: (?=", "RE2 has no lookahead"),
    ("invalid perl operator: (?!", "RE2 has no lookahead"),
    ("invalid perl operator: (?<=", "RE2 has no lookbehind"),
    ("invalid perl operator: (?<!", "RE2 has no lookbehind"),
    ("invalid perl operator: (?P=", "RE2 has no backreferences"),
    ("invalid perl operator: (?(", "RE2 has no conditionals"),
    ("invalid perl operator: (?>", "RE2 has no atomic groups: it never backtracks"),
    ("bad repetition operator: ++", "RE2 has no possessive quantifiers; write + alone"),
    ("bad repetition operator: *+", "RE2 has no possessive quantifiers; write * alone"),
    ("bad repetition operator: ?+", "RE2 has no possessive quantifiers; write ? alone"),
    ("invalid repetition size", "RE2 repeats at most 1000 times"),
)


def _reason(pattern: str, message: str) -> str:
    if message.startswith("invalid perl operator: (?P") and "(?P=" in pattern:
        message = "invalid perl operator: (?P="  # RE2 cuts the construct short
    for start, hint in _HINTS:
        if message.startswith(start):
            return f"{message} ({hint})"
    return message


class PatternError(ValueError):
    """A pattern RE2 refuses; ``reason`` says why (and what to write instead)."""

    def __init__(self, pattern: str, reason: str):
        shown = repr(pattern) if len(pattern) <= 80 else repr(pattern[:40]) + "..."
        super().__init__(f"regex {shown}: {reason}")
        self.reason = reason


def compile_pattern(pattern: str):
    """The RE2 compilation of ``pattern``; ``PatternError`` when RE2 refuses it."""
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise PatternError(pattern, f"longer than {MAX_PATTERN_LENGTH} characters")
    try:
        return re2.compile(pattern, _OPTIONS)
    except re2.error as e:
        raw = e.args[0] if e.args else "refused"
        message = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        raise PatternError(pattern, _reason(pattern, message)) from None
