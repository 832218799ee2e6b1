"""The docs are generated from forkproxy.config's declarations and cannot drift.

If a test here fails after a change to SETTINGS, regenerate the docs with
``python -m forkproxy.config --write-docs .`` and review the diff.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import trustme

from forkproxy import config
from forkproxy.config import SECTIONS, SETTINGS, loads, man_keys, sample, splice_man

ROOT = Path(__file__).resolve().parent.parent
MAN = ROOT / "man" / "forkproxy.toml.5"
SAMPLE = ROOT / "conf" / "forkproxy.toml"
REGEN = "out of date: run `python -m forkproxy.config --write-docs .`"


def test_man_page_key_reference_is_generated():
    page = MAN.read_text(encoding="utf-8")
    assert splice_man(page) == page, REGEN


def test_sample_is_generated():
    assert SAMPLE.read_text(encoding="utf-8") == sample(), REGEN


def test_generator_cli_prints_the_same():
    for flag, expected in (("--man", man_keys()), ("--sample", sample())):
        out = subprocess.run([sys.executable, "-m", "forkproxy.config", flag], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
        assert out == expected


def test_sample_is_a_valid_config():
    cfg = config.load(str(SAMPLE))
    assert [lst.name for lst in cfg.listeners] == ["web"]


def documented_keys() -> set[tuple[str, str]]:
    """(section title, key) for every `.It Ic key` of the man page's KEYS section."""
    page = MAN.read_text(encoding="utf-8")
    keys_sh = page.split(".Sh KEYS\n", 1)[1].split("\n.Sh ", 1)[0]
    found, title = set(), None
    for line in keys_sh.splitlines():
        if line.startswith(".Ss "):
            title = line[4:].removesuffix("\\&")
        m = re.match(r"\.It Ic (\S+)$", line)
        if m:
            found.add((title, m.group(1)))
    return found


def accepted_keys() -> set[tuple[str, str]]:
    title = {s.path: s.title for s in SECTIONS}
    keys = {(title[s.section], s.name) for s in SETTINGS}
    keys |= {(title[s.parent], s.key) for s in SECTIONS if s.parent}
    return keys


def test_man_page_documents_exactly_the_accepted_keys():
    assert documented_keys() == accepted_keys()


def key_block(page: str, s: config.Setting) -> str:
    """The man page text of setting ``s``, found under its own section's .Ss
    (``path`` and ``host`` are keys of both [[route]] and health = { ... })."""
    title = {sec.path: sec.title for sec in SECTIONS}[s.section]
    section = page.split(f".Ss {title}\\&\n", 1)[1].split("\n.Ss ", 1)[0]
    return section.split(f".It Ic {s.name}\n", 1)[1].split(".It ", 1)[0]


def test_man_page_documents_reload_behaviour_of_every_key():
    page = MAN.read_text(encoding="utf-8")
    for s in SETTINGS:
        assert ("Applies on reload." if s.reload else "Needs a restart.") in key_block(page, s), s.name


def test_man_page_says_which_keys_are_http_only():
    page = MAN.read_text(encoding="utf-8")
    for s in SETTINGS:
        if s.when:
            assert f"Only with {s.when[0]} = \"{s.when[1]}\"." in key_block(page, s), s.name


BASE = """\
[server]
{server}
[[listener]]
name = "web"
bind = "127.0.0.1:8080"
{listener}
[[route]]
pool = "app"
{route}
[pool.app]
servers = [{{ addr = "127.0.0.1:9000", {servers} }}]
{pool}
"""


@pytest.mark.parametrize("setting", SETTINGS, ids=[f"{s.section}.{s.name}" for s in SETTINGS])
def test_every_documented_key_is_accepted(setting, tmp_path):
    """Each declared key, set to its documented default or example, loads."""
    value = setting.example if setting.required or setting.default is None else setting.default
    slots = {"server": "", "listener": "", "route": "", "pool": "", "servers": "weight = 1"}
    line = f"{setting.name} = {config._toml(value)}"
    if setting.section == "pool.servers" and setting.name in ("dns", "srv"):
        pass  # one of addr, dns and srv per entry: in place of addr, below
    elif setting.section == "pool.servers":
        slots["servers"] = "" if setting.name == "addr" else line
    elif setting.section.startswith("pool."):
        slots["pool"] = f"{setting.section[5:]} = {{ {line} }}"
    elif setting.when:
        slots[setting.section] = f"{setting.when[0]} = {config._toml(setting.when[1])}\n{line}"
    elif setting.name not in ("name", "bind", "pool"):
        slots[setting.section] = line
    if setting.when == ("mode", "tcp"):  # a tcp listener needs its pool
        slots["listener"] = slots["listener"].replace('pool = "db"', 'pool = "app"')
        slots["listener"] += "" if setting.name == "pool" else '\npool = "app"'
    text = BASE.format(**slots).replace(", }]", " }]")
    if setting.section == "pool.servers" and setting.name in ("dns", "srv"):
        text = text.replace('addr = "127.0.0.1:9000"', line)
    if setting.section == "route.pools" or setting.name == "split_by":  # a split, not pool
        entry = 'pool = "app"' + ("" if setting.name in ("pool", "split_by") else f", {line}")
        text = text.replace('[[route]]\npool = "app"\n', f"[[route]]\npools = [{{ {entry} }}]\n")
    if setting.name == "proxy_protocol":  # only tcp listeners may use such a pool
        text = text.replace('[[route]]\npool = "app"\n', "")
    if setting.section == "pool.tls" and setting.name == "ca":  # it must be readable
        ca = tmp_path / "ca.pem"
        trustme.CA().cert_pem.write_to_path(str(ca))
        text = text.replace(setting.example, str(ca))
    if setting.name == "error_pages" and setting.default is None:  # the page must be readable
        page = tmp_path / "page.html"
        page.write_text("<p>down</p>")
        text = text.replace(setting.example["503"], str(page))
    loads(text)


def test_unknown_key_is_rejected_with_the_same_machinery():
    with pytest.raises(config.ConfigErrors):
        loads(BASE.format(server="not_a_key = 1", listener="", route="", pool="", servers="weight = 1"))


def test_man_page_lints_clean():
    if shutil.which("mandoc"):
        cmd = ["mandoc", "-Tlint", "-W", "warning", str(MAN)]
    elif shutil.which("groff"):
        cmd = ["groff", "-mdoc", "-ww", "-z", str(MAN)]
    else:
        pytest.skip("neither mandoc nor groff is installed")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.stdout + proc.stderr == ""
    assert proc.returncode == 0


def test_man_page_has_the_required_sections():
    page = MAN.read_text(encoding="utf-8")
    assert page.startswith(".Dd ")
    assert ".Dt FORKPROXY.TOML 5\n.Os\n" in page
    for sh in ("NAME", "SYNOPSIS", "DESCRIPTION", "KEYS", "EXAMPLES", "SEE ALSO"):
        assert f"\n.Sh {sh}\n" in page
    assert ".Xr forkproxy 8" in page and ".Xr forkproxyctl 8" in page


def test_man_page_example_is_a_valid_config():
    page = MAN.read_text(encoding="utf-8")
    example = page.split(".Sh EXAMPLES\n", 1)[1].split(".Bd -literal -offset indent\n", 1)[1]
    example = example.split("\n.Ed\n", 1)[0]
    cfg = loads(example.replace("\\e", "\\"), "example")
    assert cfg.pool("api").servers[2].backup is True
    assert cfg.pool("api").health.path == "/healthz"


def test_sample_commented_health_line_is_valid():
    """Uncommenting the sample's every-key health line gives a valid pool."""
    text = SAMPLE.read_text(encoding="utf-8")
    (line,) = [x for x in text.splitlines() if x.startswith("#health = {")]
    cfg = loads(text.replace(line, line[1:]), "sample")
    assert cfg.pools[0].health.fastinter == 0.5
