"""``dump``: a Config rendered as TOML, every default filled in (what ``forkproxy -T`` prints)."""

from __future__ import annotations

import re
from typing import Any

from forkproxy.config.document import ATTRIBUTE, CHILDREN, KEYS, Config
from forkproxy.config.parsers import REDACTED
from forkproxy.config.schema import Section, Setting
from forkproxy.config.units import _quote


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value == value and abs(value) != float("inf"):
        return repr(value)  # TOML's float syntax: 1.9, 1.0
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f"{_bare(k)} = {_toml(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    raise TypeError(f"cannot render {value!r}")  # pragma: no cover


def _bare(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else _quote(name)


def _applies(s: Setting, obj: Any) -> bool:
    """False when ``s`` has a ``when`` condition that ``obj`` does not meet."""
    return s.when is None or getattr(obj, s.when[0]) == s.when[1]


def _value(s: Setting, obj: Any, secrets: bool) -> Any:
    """What ``dump`` writes for key ``s`` of ``obj``: its rendered value, REDACTED
    for a set secret unless ``secrets``."""
    v = s.render(getattr(obj, s.attribute))
    return REDACTED if s.secret and v is not None and not secrets else v


def _inline(sec: Section, obj: Any, secrets: bool) -> str:
    parts = []
    for s in KEYS.get(sec.path, []):
        if not _applies(s, obj):
            continue
        v = _value(s, obj, secrets)
        if v is not None:
            parts.append(f"{s.name} = {_toml(v)}")
    return "{ " + ", ".join(parts) + " }"


def _dump_table(sec: Section, obj: Any, secrets: bool) -> list[str]:
    out = []
    for s in KEYS.get(sec.path, []):
        if not _applies(s, obj):
            continue
        v = _value(s, obj, secrets)
        if v is None:
            out.append(f"# {s.name} is not set")
        else:
            out.append(f"{s.name} = {_toml(v)}")
    for child in CHILDREN.get(sec.path, []):
        v = getattr(obj, child.key)
        if child.also:
            v = tuple(v) + tuple(getattr(obj, child.also))
        if child.kind == "array":
            out.append(f"{child.key} = [")
            out.extend(f"  {_inline(child, item, secrets)}," for item in v)
            out.append("]")
        elif v is None:
            out.append(f"# {child.key} is not set")
        else:
            out.append(f"{child.key} = {_inline(child, v, secrets)}")
    return out


def dump(cfg: Config, secrets: bool = False) -> str:
    """The effective configuration as TOML, every default filled in (what
    ``forkproxy -T`` prints).  Secrets (server.admin_token, sticky.secret)
    read REDACTED, which the loader refuses, unless ``secrets``
    (``-T --show-secrets``).  ``loads(dump(cfg, True), cfg.path) == cfg``."""
    out = [f"# effective configuration of {cfg.path}"]
    for sec in CHILDREN[None]:
        value = getattr(cfg, ATTRIBUTE[sec.key])
        if sec.kind == "table":
            out += ["", f"[{sec.key}]"] + _dump_table(sec, value, secrets)
        elif sec.kind == "array":
            for item in value:
                out += ["", f"[[{sec.key}]]"] + _dump_table(sec, item, secrets)
        else:
            for item in value:
                out += ["", f"[{sec.key}.{_bare(item.name)}]"] + _dump_table(sec, item,
                                                                               secrets)
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------
# Documentation generators.
