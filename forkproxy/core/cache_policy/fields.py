"""Reading header lists: ``(lower-case name, value)`` pairs, in order, repeats kept."""

from operator import itemgetter


def _all(headers, name: str) -> list[str]:
    return [v for n, v in headers if n == name]


def _first(headers, name: str) -> str | None:
    for n, v in headers:
        if n == name:
            return v
    return None


def _list_members(values) -> list[str]:
    return [m.strip() for v in values for m in v.split(",") if m.strip()]


# The name of a (name, value) pair, in C: ``map(_NAME, headers)``.
_NAME = itemgetter(0)
