"""The documentation generated from the declarations.

``man_keys()`` is the mdoc key reference of forkproxy.toml(5), spliced into
``man/forkproxy.toml.5`` between the GENERATED markers (``splice_man``);
``sample()`` is ``conf/forkproxy.toml``, every key with its default and its
help as comments.  ``python -m forkproxy.config --write-docs .`` writes both.
"""

from __future__ import annotations

import re
import textwrap
from typing import Any

from forkproxy.config.document import CHILDREN, KEYS, SECTION, SECTIONS
from forkproxy.config.render import _toml
from forkproxy.config.schema import Section, Setting


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+(?=[A-Z\"(0-9])", text.strip()) if s]


def _roff(line: str) -> str:
    line = line.replace("\\", "\\e")
    return "\\&" + line if line[:1] in (".", "'") else line


def _roff_text(text: str) -> list[str]:
    """mdoc text lines: one sentence per line, wrapped under 80 bytes."""
    out = []
    for sentence in _sentences(text):
        out += [_roff(x) for x in textwrap.wrap(sentence, 78, break_on_hyphens=False)]
    return out


def _default_text(s: Setting) -> str:
    if s.required:
        return "required"
    one_of = SECTION[s.section].one_of
    if s.name in one_of:
        return "one of " + ", ".join(one_of)
    if s.default is None:
        return "unset"
    v = s.default
    return _toml(v)


def man_keys() -> str:
    """The mdoc key reference of forkproxy.toml(5) (the ``.Sh KEYS`` section)."""
    out = [".Sh KEYS"]
    for sec in SECTIONS:
        # "\\&" stops mdoc from reading the closing bracket as punctuation.
        out.append(f".Ss {_roff(sec.title)}\\&")
        out += _roff_text(sec.help)
        if sec.parent:
            out.append(f"It is the {sec.key} key of each {SECTION[sec.parent].title} table.")
        keys = KEYS.get(sec.path, [])
        subs = [c for c in CHILDREN.get(sec.path, [])]
        if not keys and not subs:
            continue
        out.append(".Bl -tag -width Ds")
        for s in keys:
            out.append(f".It Ic {s.name}")
            out += _roff_text(s.help)
            if s.when:
                out.append(_roff(f"Only with {s.when[0]} = {_toml(s.when[1])}."))
            out.append(".Pp")
            out.append(_roff(f"Type: {s.type}."))
            out.append(_roff(f"Default: {_default_text(s)}."))
            out.append("Applies on reload." if s.reload else "Needs a restart.")
        for c in subs:
            out.append(f".It Ic {c.key}")
            out.append(_roff(f"See {c.title} below."))
        out.append(".El")
    return "\n".join(out) + "\n"


_MAN_BEGIN = '.\\" BEGIN GENERATED KEYS: python -m forkproxy.config --write-docs .'
_MAN_END = '.\\" END GENERATED KEYS'


def splice_man(page: str) -> str:
    """``page`` with the text between the GENERATED markers replaced by man_keys()."""
    head, sep, rest = page.partition(_MAN_BEGIN + "\n")
    _, sep2, tail = rest.partition(_MAN_END + "\n")
    if not sep or not sep2:
        raise ValueError("the man page lacks the GENERATED KEYS markers")
    return head + _MAN_BEGIN + "\n" + man_keys() + _MAN_END + "\n" + tail


def _comment(text: str, indent: str = "") -> list[str]:
    return textwrap.wrap(text, 76, initial_indent="# " + indent, subsequent_indent="# " + indent,
                         break_on_hyphens=False)


def _doc_value(s: Setting) -> Any:
    return s.example if s.required or s.default is None else s.default


def sample() -> str:
    """conf/forkproxy.toml: every key with its default (or an example) and its help."""
    out = [
        "# forkproxy.toml: every key of forkproxy, with its default and its help.",
        "# Generated from the declarations in forkproxy/config/ by `python -m forkproxy.config --write-docs .`:",
        "# do not edit by hand.  Reference: forkproxy.toml(5).",
        "#",
        '# Durations take a unit: "500ms", "2s", "1.5s", "1m", "1h".  Sizes are bytes',
        '# or "64k", "1m", "1g" (powers of 1024).  A commented key shows its default;',
        '# uncomment it to change it.  A key noted "restart" needs a restart: a',
        "# reload (SIGHUP) does not apply it.",
    ]
    for sec in SECTIONS:
        if sec.parent:
            continue
        out.append("")
        out += _comment(f"{sec.title}: {sec.help}")
        example_name = {"pool": "web"}.get(sec.key)
        header = f"[{sec.key}]" if sec.kind == "table" else f"[[{sec.key}]]" if sec.kind == "array" else f"[{sec.key}.{example_name}]"
        out.append(header)
        out += _sample_keys(sec)
    return "\n".join(out) + "\n"


def _sample_keys(sec: Section) -> list[str]:
    out = []
    for s in KEYS.get(sec.path, []):
        first = sec.one_of[:1] == (s.name,)  # set in the sample: it stands for its alternatives
        note = "required" if s.required else ("one of " + ", ".join(sec.one_of) if first
                                              else "unset by default" if s.default is None else "")
        flags = ", ".join(x for x in (s.type, note, "" if s.reload else "restart") if x)
        out.append("")
        out += _comment(f"{s.name} ({flags}): {s.help}")
        line = f"{s.name} = {_toml(_doc_value(s))}"
        out.append(line if s.required or first else "#" + line)
    for child in CHILDREN.get(sec.path, []):
        out.append("")
        if child.kind == "table":
            out += _sample_table(child)
            continue
        out += _comment(f"{child.key}: {child.help} Keys of each entry:")
        one_of = ", ".join(child.one_of)
        for s in KEYS.get(child.path, []):
            default = ("required" if s.required else f"each entry has one of {one_of}"
                       if s.name in child.one_of else "unset by default" if s.default is None
                       else f"default {_toml(s.default)}")
            flags = ", ".join(x for x in (s.type, default) if x)
            out += _comment(f"{s.name} ({flags}): {s.help}", indent="  ")
        keys = KEYS.get(child.path, [])
        # Of alternative keys, the first stands for them in the examples.
        others = [s for s in keys if s.name in child.one_of[1:]]
        required = [s for s in keys if s.required or child.one_of[:1] == (s.name,)]
        full = [(s, _doc_value(s)) for s in keys if s not in others]
        if not child.required:  # an optional array: the whole example commented out
            out.append(f"#{child.key} = [{{ " + ", ".join(f"{s.name} = {_toml(v)}" for s, v in full)
                       + " }]")
            continue
        out.append(f"{child.key} = [")
        out.append("  { " + ", ".join(f"{s.name} = {_toml(s.example)}" for s in required) + " },")
        out.append("  #{ " + ", ".join(f"{s.name} = {_toml(v)}" for s, v in full) + " },")
        out += [f"  #{{ {s.name} = {_toml(s.example)} }}," for s in others]
        out.append("]")
    return out


def _sample_table(child: Section) -> list[str]:
    """An optional inline sub-table: its keys, then a commented example line."""
    out = _comment(f"{child.key}: {child.help} Keys:")
    for s in KEYS.get(child.path, []):
        default = ("required" if s.required else "unset by default" if s.default is None
                   else f"default {_toml(s.default)}")
        only = f"only with {s.when[0]} = {_toml(s.when[1])}" if s.when else ""
        flags = ", ".join(x for x in (s.type, default, only) if x)
        out += _comment(f"{s.name} ({flags}): {s.help}", indent="  ")
    full = ", ".join(f"{s.name} = {_toml(_doc_value(s))}" for s in KEYS.get(child.path, []))
    out.append(f"#{child.key} = {{ {full} }}")
    return out


# ---------------------------------------------------------------------------
