"""A master survives any reload: 200+ mutated configurations sent as SIGHUP under load.

Each mutant (seeded, so every run sends the same ones) is written over the
running master's file and sent as a reload while a client loop keeps asking
the listener.  After every one the master is alive and ``reload.json``
reports that reload as applied ("serving") or refused ("rejected", with a
reason); at the end every request of the client loop got its response.
Mutants are made from a base configuration and the shipped samples
(``conf/*.toml``): deleted keys and tables, values of the wrong type, values
another key takes in a sample, duplicated servers, listeners and routes,
routes naming a pool that does not exist, files that cannot be read or
parsed, huge values, and files naming a pidfile or runtime directory the
master cannot write.  Mutants that validate fork a generation each, so there
are at most ``MAX_VALID`` of them, plus ``MAX_APPLY_FAIL`` duplicates and
unwritable paths, which validate but cannot be applied.

Real ``python -m forkproxy`` master, real backends, 127.0.0.1 only.
"""

from __future__ import annotations

import copy
import json
import os
import random
import signal
import threading
import time
import tomllib
from pathlib import Path

import requests

from forkproxy import config
from support.procs import free_port, wait_until
from support.runner import REPO_ROOT, toml_value

SEED = 17
N_MUTANTS = 210
MAX_VALID = 6      # mutants the loader accepts (each forks a generation)...
MAX_APPLY_FAIL = 8  # ...and, apart, those the master must refuse while applying them
# Keys never mutated: the client loop must keep reaching the same listener
# and the same backends (no mutant may point probes or requests elsewhere),
# the workers keep the test's user, and the files stay in the test's
# directory (the "unwritable" mutants change those on purpose).
FROZEN = {"bind", "addr", "servers", "user", "group", "runtime_dir", "host", "admin",
          "pidfile", "error_log", "access_log"}
TABLES = {"server", "cache", "listener", "route", "pool"}


def base_doc(port: int, b1: str, b2: str, d: Path) -> dict:
    return {
        "server": {"workers": 2, "pidfile": str(d / "forkproxy.pid"),
                   "runtime_dir": str(d / "run"), "error_log": str(d / "error.log"),
                   "access_log": str(d / "access.log"), "graceful_timeout": "5s",
                   "keepalive_timeout": "5s", "log_level": "info"},
        "cache": {"memory_size": "4m", "max_object_size": "1m"},
        "listener": [{"name": "web", "bind": f"127.0.0.1:{port}"}],
        "route": [{"path": "/static/", "pool": "p", "cache": True},
                  {"pool": "p", "hide_headers": ["X-Powered-By"]}],
        "pool": {"p": {"balance": "round_robin", "servers": [{"addr": b1}, {"addr": b2}],
                       "retry": {"tries": 2}, "max_fails": 1, "fail_timeout": "10s",
                       "health": {"path": "/", "interval": "1s", "rise": 1, "fall": 2}}},
    }


# -- rendering ---------------------------------------------------------------------

def _key(k) -> str:
    k = str(k)
    return k if k and all(c.isalnum() or c in "_-" for c in k) else json.dumps(k)


def _value(v) -> str:
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return toml_value(v)


def render(doc: dict) -> str:
    """TOML for ``doc``: top-level tables as [t], [t.sub]; arrays of tables as [[t]]."""
    top, tables = [], []
    for k, v in doc.items():
        if isinstance(v, dict):
            scal = {a: b for a, b in v.items() if not isinstance(b, dict) or k != "pool"}
            tables.append(f"[{_key(k)}]")
            tables += [f"{_key(a)} = {_value(b)}" for a, b in scal.items()]
            for a, b in v.items():
                if k == "pool" and isinstance(b, dict):
                    tables.append(f"[{_key(k)}.{_key(a)}]")
                    tables += [f"{_key(x)} = {_value(y)}" for x, y in b.items()]
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for item in v:
                tables.append(f"[[{_key(k)}]]")
                tables += [f"{_key(a)} = {_value(b)}" for a, b in item.items()]
        else:
            top.append(f"{_key(k)} = {_value(v)}")
    return "\n".join(top + [""] + tables) + "\n"


# -- mutation ----------------------------------------------------------------------

def _paths(node, prefix=()):
    """Every (path, value) below ``node``: dict keys and list indexes."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        path = prefix + (k,)
        if any(p in FROZEN for p in path if isinstance(p, str)):
            continue
        yield path, v
        yield from _paths(v, path)


def _get(doc, path):
    for p in path:
        doc = doc[p]
    return doc


def sample_values() -> dict:
    """{key name: [values]} from the shipped samples (frozen keys left out)."""
    out: dict[str, list] = {}

    def walk(node):
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for k, v in items:
            if k in FROZEN:
                continue
            flat = not isinstance(v, (dict, list)) or (
                isinstance(v, dict) and not any(isinstance(x, (dict, list)) for x in v.values()))
            if isinstance(k, str) and k not in TABLES and flat:
                out.setdefault(k, []).append(v)
            walk(v)

    for f in sorted((REPO_ROOT / "conf").glob("*.toml")):
        walk(tomllib.loads(f.read_text()))
    return out


WRONG = [42, -1, 0, "x", "", True, [1, 2], [], {"a": 1}, {}, 1.5, "10 parsecs", [{"b": 2}]]
HUGE = [10**30, -(10**30), 2**63, "9" * 400 + "s", "99999999999999h", "9999999999999999t",
        "x" * 200_000, ["x"] * 20_000, 1e308]


def mutate(rng: random.Random, base: dict, samples: dict) -> tuple[str, str | bytes]:
    """One mutant: (what it is, the file's text or raw bytes)."""
    doc = copy.deepcopy(base)
    op = rng.choice(["delete", "delete", "wrong", "wrong", "sample", "sample", "duplicate",
                     "dangling", "unreadable", "huge", "huge", "unknown", "unwritable"])
    paths = list(_paths(doc))
    if op == "delete":
        path, _ = rng.choice(paths)
        parent = _get(doc, path[:-1])
        del parent[path[-1]]
        return f"delete {'.'.join(map(str, path))}", render(doc)
    if op in ("wrong", "huge"):
        path, _ = rng.choice(paths)
        new = rng.choice(WRONG if op == "wrong" else HUGE)
        _get(doc, path[:-1])[path[-1]] = new
        return f"{op} {'.'.join(map(str, path))} = {str(new)[:40]}", render(doc)
    if op == "sample":
        leaves = [(p, v) for p, v in paths if isinstance(p[-1], str) and p[-1] in samples]
        keyed = [k for k in samples if any(p[-1] == k for p, _ in leaves)]
        path = None
        if leaves and rng.random() < 0.5:
            path, _ = rng.choice(leaves)
            new = rng.choice(samples[path[-1]])
        else:  # a sample key where the base has none
            table = rng.choice([("server",), ("cache",), ("listener", 0), ("route", 1), ("pool", "p")])
            key = rng.choice(sorted(samples))
            new = rng.choice(samples[key])
            path = table + (key,)
        _get(doc, path[:-1])[path[-1]] = copy.deepcopy(new)
        return f"sample {'.'.join(map(str, path))} = {str(new)[:40]}", render(doc)
    if op == "duplicate":
        what = rng.choice(["server", "listener", "route", "pool"])
        if what == "server":
            doc["pool"]["p"]["servers"].append(dict(doc["pool"]["p"]["servers"][0]))
        elif what == "listener":
            doc["listener"].append(dict(doc["listener"][0]))
        elif what == "route":
            doc["route"].insert(0, dict(doc["route"][1]))
        else:  # the same pool twice under two names, both used
            doc["pool"]["q"] = copy.deepcopy(doc["pool"]["p"])
            doc["route"][0]["pool"] = "q"
        return f"duplicate {what}", render(doc)
    if op == "dangling":
        where = rng.choice(["route0", "route1", "listener"])
        if where == "listener":
            doc["listener"][0]["pool"] = "nope"
        else:
            doc["route"][int(where[-1])]["pool"] = "nope"
        return f"dangling pool in {where}", render(doc)
    if op == "unreadable":
        kind = rng.choice(["binary", "truncated", "empty", "directory", "dangling symlink",
                           "not utf-8"])
        text = render(doc)
        if kind == "binary":
            return kind, bytes(rng.randrange(256) for _ in range(512))
        if kind == "truncated":
            return kind, text[:rng.randrange(1, len(text))]
        if kind == "empty":
            return kind, ""
        if kind == "not utf-8":
            return kind, text.encode() + b"\n# \xff\xfe\n"
        return kind, kind  # written specially by write_mutant
    if op == "unwritable":
        key, value = rng.choice([
            ("pidfile", "/nonexistent-forkproxy-dir/forkproxy.pid"),
            ("pidfile", "/proc/forkproxy.pid"),
            ("access_log", "/nonexistent-forkproxy-dir/access.log"),
            ("error_log", "/proc/forkproxy-error.log"),
        ])
        doc["server"][key] = value
        return f"unwritable server.{key} = {value}", render(doc)
    # unknown key somewhere
    table = rng.choice([doc["server"], doc["cache"], doc["listener"][0], doc["route"][1],
                        doc["pool"]["p"], doc])
    table[f"no_such_key_{rng.randrange(1000)}"] = rng.choice(WRONG)
    return "unknown key", render(doc)


def write_mutant(path: Path, what: str, body) -> None:
    """Replace the file at ``path`` in one rename (a HUP never reads half of it)."""
    tmp = path.with_name("mutant.tmp")
    if os.path.lexists(tmp):
        if tmp.is_dir() and not tmp.is_symlink():
            os.rmdir(tmp)
        else:
            tmp.unlink()
    if body == "directory":
        tmp.mkdir()
        if path.is_dir() and not path.is_symlink():
            os.rmdir(path)
        elif os.path.lexists(path):
            path.unlink()
        os.rename(tmp, path)
        return
    if body == "dangling symlink":
        os.symlink(str(path.with_name("nowhere.toml")), tmp)
    elif isinstance(body, bytes):
        tmp.write_bytes(body)
    else:
        tmp.write_text(body)
    if path.is_dir() and not path.is_symlink():
        os.rmdir(path)
    os.replace(tmp, path)


def predicted_valid(path: Path) -> bool:
    try:
        config.load(str(path))
    except Exception:  # noqa: BLE001 - any refusal by the loader
        return False
    return True


# -- the test ------------------------------------------------------------------------

class Load(threading.Thread):
    """A bounded client loop: GETs on fresh connections until stopped; failures kept."""

    def __init__(self, port: int, limit: int = 200_000, seconds: float = 600):
        super().__init__(daemon=True)
        self.port, self.limit, self.seconds = port, limit, seconds
        self.stop = threading.Event()
        self.count = 0
        self.failures: list[str] = []

    def run(self):
        deadline = time.monotonic() + self.seconds
        while not self.stop.is_set() and self.count < self.limit and time.monotonic() < deadline:
            path = "/static/a" if self.count % 3 == 0 else "/"
            try:
                r = requests.get(f"http://127.0.0.1:{self.port}{path}", timeout=30)
                if r.status_code >= 500:
                    self.failures.append(f"{path}: {r.status_code} {r.text[:100]!r}")
            except requests.RequestException as exc:
                self.failures.append(f"{path}: {exc!r}")
            self.count += 1
            time.sleep(0.005)


def reload_status(d: Path) -> dict | None:
    """reload.json, with "reload" the count of reloads (older masters called it "generation")."""
    try:
        st = json.loads((d / "run" / "reload.json").read_text())
    except (OSError, ValueError):
        return None
    st.setdefault("reload", st.get("generation"))
    return st


def test_master_survives_200_mutated_reloads_under_load(forkproxy_factory, backend_factory):
    b1, b2 = backend_factory("one"), backend_factory("two")
    port = free_port()
    fp = forkproxy_factory("", start=False)
    d = fp.dir
    base = base_doc(port, b1.addr, b2.addr, d)
    good = render(base)
    fp.config_path.write_text(good)
    fp.start()
    fp.wait_ready(port)
    samples = sample_values()
    rng = random.Random(SEED)
    load = Load(port)
    load.start()
    outcomes = {"serving": 0, "rejected": 0}
    n_valid = {"valid": 0, "apply": 0}
    sent = 0
    try:
        while sent < N_MUTANTS:
            what, body = mutate(rng, base, samples)
            write_mutant(fp.config_path, what, body)
            valid = body not in ("directory", "dangling symlink") and predicted_valid(fp.config_path)
            if valid:
                kind = "apply" if what.startswith(("duplicate", "unwritable")) else "valid"
                if n_valid[kind] >= (MAX_APPLY_FAIL if kind == "apply" else MAX_VALID):
                    continue  # each forks a generation: keep the run short
                n_valid[kind] += 1
            sent += 1
            before = (reload_status(d) or {}).get("reload", 0)
            fp.signal(signal.SIGHUP)
            wait_until(lambda: not fp.alive() or (st := reload_status(d)) is not None
                       and st["reload"] > before and st["state"] in ("serving", "rejected"),
                       timeout=60, what=f"the outcome of reload {before + 1} ({what})")
            st = reload_status(d)
            assert fp.alive(), f"the master exited after reload {sent} ({what})"
            assert st["reload"] == before + 1, (what, st)
            if st["state"] == "rejected":
                assert st["errors"] and all(isinstance(e, str) and e for e in st["errors"]), st
            elif not valid:
                raise AssertionError(f"{what}: the loader refuses it, the master applied it: {st}")
            outcomes[st["state"]] += 1
        # Still serving, and a good file still reloads.
        write_mutant(fp.config_path, "base", good)
        before = reload_status(d)["reload"]
        fp.signal(signal.SIGHUP)
        wait_until(lambda: (s := reload_status(d)) is not None and s["reload"] > before
                   and s["state"] == "serving", timeout=60, what="the final good reload")
    finally:
        load.stop.set()
        load.join(60)
    assert fp.alive()
    assert load.count > sent, load.count
    assert not load.failures, f"{len(load.failures)} of {load.count} failed: {load.failures[:5]}"
    assert sent >= 200 and outcomes["rejected"] > 150 and outcomes["serving"] >= 1, outcomes
