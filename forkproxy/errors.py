"""Configuration errors and the process exit codes.

Exit codes of ``forkproxy`` (documented in forkproxy(8)):

    EX_OK        0   success (``-t``: the configuration is valid)
    EX_CONFIG    1   the configuration is invalid, or cannot be read
    EX_USAGE     2   bad command-line usage (unknown flag, missing argument)
    EX_SOFTWARE 70   internal error (a bug: please report it), as sysexits.h

``ConfigError`` is one problem, located as precisely as the loader can:
``FILE:LINE: key.path: message`` (``:LINE`` omitted when unknown, ``key:``
omitted for whole-file problems such as an unreadable file).
``ConfigErrors`` carries every problem found in one file, so an operator
fixes them all in one pass instead of one per ``forkproxy -t`` run.
"""

from __future__ import annotations

__all__ = ["EX_OK", "EX_CONFIG", "EX_USAGE", "EX_NOT_RUNNING", "EX_SOFTWARE", "ConfigError", "ConfigErrors"]

EX_OK = 0
EX_CONFIG = 1
EX_USAGE = 2
EX_NOT_RUNNING = 3  # LSB: `status` of a program that is not running
EX_SOFTWARE = 70


class ConfigError(Exception):
    """One problem: .file, .line (int or None), .key (dotted path like
    'pool.api.servers[1].weight' or 'listener[0].bind'; '' for whole-file
    problems), .message; str(e) == 'FILE:LINE: key: message' (omit ':LINE'
    when unknown, omit 'key: ' when the key is empty)."""

    def __init__(self, file: str, line: int | None, key: str, message: str):
        super().__init__(file, line, key, message)
        self.file = file
        self.line = line
        self.key = key
        self.message = message

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        if self.key:
            return f"{where}: {self.key}: {self.message}"
        return f"{where}: {self.message}"


class ConfigErrors(Exception):
    """All problems of one file: .errors (list[ConfigError]); str() joins
    them one per line, in file order (problems without a line last)."""

    def __init__(self, errors: list[ConfigError]):
        super().__init__(errors)
        self.errors = list(errors)

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)

    def __iter__(self):
        return iter(self.errors)

    def __len__(self) -> int:
        return len(self.errors)
