"""The declarations: ``Setting`` (one key), ``Section`` (one table's shape),
and ``config_classes``, which makes each section's frozen dataclass from them.

Every key is declared once, as a ``Setting`` in its section's module
(``server``, ``cache``, ``listener``, ``route``, ``pool``); the dataclass
field that holds its value, with the parsed default, is made from it.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from dataclasses import MISSING, dataclass, field
from typing import Any, Callable

from forkproxy.config.units import _quote

Path = tuple  # of str and int segments, e.g. ("pool", "api", "servers", 1, "weight")

# What Setting.reload says: SIGHUP applies the key, or it needs a restart.
_RESTART = False
_RELOAD = True

#: Derived.after for a field that comes after every key and sub-table.
LAST = "*"


def _r_same(v: Any) -> Any:
    """The renderer of a key whose Python value is its TOML value."""
    return v


REQUIRED: Any = type("Required", (), {"__repr__": lambda self: "REQUIRED"})()


@dataclass(frozen=True)
class Setting:
    """One key.  ``section`` is a SECTIONS path ("server", "pool.servers");
    ``default`` is written as TOML would ("30s", "auto"), REQUIRED, or None
    for "unset"; ``type`` describes the accepted values for the docs;
    ``reload`` is True when SIGHUP applies a change, False when it needs a
    restart; ``example`` is shown in the docs for REQUIRED/None keys;
    ``when`` = (sibling, value) makes the key valid only when the sibling
    key of the same table has that value (``("type", "http")``).
    The key is also a field of its section's dataclass (``config_classes``),
    whose default is ``parse(default)``."""

    section: str
    name: str
    type: str
    default: Any
    help: str
    reload: bool
    parse: Callable[[Any], Any] = field(default=_r_same, repr=False, compare=False)
    render: Callable[[Any], Any] = field(default=_r_same, repr=False, compare=False)
    example: Any = None
    when: tuple[str, str] | None = None
    secret: bool = False  # printed as REDACTED by dump (forkproxy -T) unless asked
    attr: str | None = None  # the dataclass field, when the key is a Python keyword ("from")

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    @property
    def attribute(self) -> str:
        """The name of the key's field in its section's dataclass."""
        return self.attr or self.name


@dataclass(frozen=True)
class Section:
    """The shape of a table of settings.  ``kind``: "table" (one table),
    "array" (array of tables), "named" (table of tables keyed by a name, as
    ``[pool.NAME]``).  A dotted ``path`` is a sub-table under its parent
    section (``pool.servers`` is the ``servers`` key of each pool).  An
    ``optional`` "table" that is absent is None instead of all defaults.

    ``cls`` names the frozen dataclass made for the section, ``doc`` is its
    docstring, and ``derived`` its fields that no key sets (see Derived).
    Sections with the same keys share one class (``cls`` names it twice)."""

    path: str
    kind: str
    title: str
    help: str
    required: bool = False
    need: str = ""  # the error when a required section is missing or empty
    optional: bool = False
    cls: str = ""
    doc: str = field(default="", repr=False)
    derived: tuple[Derived, ...] = field(default=(), repr=False)
    # An array whose entries each have exactly one of these keys (the
    # builder checks it; the sample shows one entry per key); for a table,
    # its keys or sub-tables of which it has exactly one (a route's pool and
    # pools; the sample sets the first).
    one_of: tuple[str, ...] = ()
    # The parent's field that holds the rest of this array's entries, when
    # its builder splits them (a pool's discover: the dns and srv servers).
    also: str = ""

    @property
    def key(self) -> str:
        return self.path.rpartition(".")[2]

    @property
    def parent(self) -> str | None:
        return self.path.rpartition(".")[0] or None


@dataclass(frozen=True)
class Derived:
    """A field of a section's dataclass that no key sets: its builder
    computes it (``host`` and ``port`` from ``bind``) or the walker gives it
    (a route's ``index``, a pool's ``name``).  ``after``: the key it follows,
    None to come first, LAST to come after every key and sub-table."""

    name: str
    after: str | None = None
    default: Any = REQUIRED  # REQUIRED: none, the builder gives it
    compare: bool = True
    repr: bool = True


def copied(settings: tuple[Setting, ...], source: str, target: str) -> tuple[Setting, ...]:
    """The keys of section ``source`` declared again for ``target``, a section
    of the same shape (``tls`` and ``certs``; request and response headers)."""
    return tuple(dataclasses.replace(s, section=target) for s in settings if s.section == source)


def config_classes(sections: tuple[Section, ...], settings: tuple[Setting, ...],
                   module: str) -> dict[str, type]:
    """Section path -> the frozen dataclass of its tables, made from its keys.

    The fields: the ``derived`` ones without ``after`` first, then each key
    (``Setting.attribute``, default ``parse(default)``, none when REQUIRED)
    followed by the derived fields ``after`` it, then each sub-table (None
    when optional, ``()`` for an array that may be empty), then the LAST
    derived ones; fields without a default move before the others, in that
    order, as positional construction (``ServerEntry(addr, host, port)``)
    expects.  ``module`` is where the class is said to live.
    """
    made: dict[str, type] = {}
    by_name: dict[str, type] = {}
    for sec in sections:
        keys = [s for s in settings if s.section == sec.path]
        children = [c for c in sections if c.parent == sec.path]
        specs = _fields(sec, keys, children)
        cls = by_name.get(sec.cls)
        if cls is None:
            # A docstring given here spares dataclass making one from the signature.
            cls = dataclasses.make_dataclass(sec.cls, specs, frozen=True, namespace={
                "__module__": module, "__doc__": inspect.cleandoc(sec.doc)})
            by_name[sec.cls] = cls
        elif [f.name for f in dataclasses.fields(cls)] != [name for name, _, _ in specs]:
            raise TypeError(f"{sec.path} shares {sec.cls} with a section of other keys")
        made[sec.path] = cls
    return made


def _fields(sec: Section, keys: list[Setting], children: list[Section]) -> list[tuple]:
    unknown = {d.after for d in sec.derived} - {None, LAST} - {s.name for s in keys}
    if unknown:
        raise TypeError(f"{sec.path}: derived fields after unknown keys {sorted(unknown)}")

    def derived(after: str | None) -> list[tuple]:
        return [(d.name, Any, field(default=MISSING if d.default is REQUIRED else d.default,
                                   compare=d.compare, repr=d.repr))
                for d in sec.derived if d.after == after]

    out = derived(None)
    for s in keys:
        default = MISSING if s.required else None if s.default is None else s.parse(s.default)
        out.append((s.attribute, Any, field(default=default)))
        out += derived(s.name)
    for c in children:
        if c.kind == "table" and not c.optional:
            raise TypeError(f"{c.path}: a sub-table that is not optional has no default")
        default = None if c.kind == "table" else MISSING if c.required else ()
        out.append((c.key, Any, field(default=default)))
    out += derived(LAST)
    return sorted(out, key=lambda spec: spec[2].default is not MISSING)  # stable


def _fmt_path(path: Path) -> str:
    """A key path as messages show it: ``pool.api.servers[1].weight``."""
    out = ""
    for seg in path:
        if isinstance(seg, int):
            out += f"[{seg}]"
        else:
            out += ("." if out else "") + (seg if re.fullmatch(r"[A-Za-z0-9_-]+", seg) else _quote(seg))
    return out
