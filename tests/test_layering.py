"""The layering is the architecture (DESIGN section 2): fail when a module reaches up or sideways.

Every import in every module of the package is read with ``ast`` (function-
level imports included) and checked against the rules below.  "Lazy" imports
(inside a function) are allowed where the rule says so: the master must not
import gevent, so daemon code imports it only in functions that run after the
fork; cli imports daemon only when it is about to run the master.
"""

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PKG = ROOT / "forkproxy"
STDLIB = set(sys.stdlib_module_names)

# layer -> (forkproxy layers it may import, third-party packages it may import)
RULES = {
    "core": ({"core"}, {"httptools", "re2"}),
    "errors": (set(), set()),
    "logs": (set(), set()),
    "config": ({"core", "errors"}, {"tomli"}),
    # The operator's actions, one owner each (DESIGN section 0): the admin
    # endpoint (net), forkproxy -s (cli), forkproxyctl and the master (daemon)
    # call them, so they reach down only.
    "control": ({"core", "config", "errors"}, set()),
    # dns: dnspython, for DNS discovery (net.discovery); h2 and hyperframe
    # (python-hyper, sans-IO): HTTP/2 framing and HPACK (net.h2_conn).
    "net": ({"core", "config", "control", "errors", "logs"},
            {"gevent", "pylibmc", "requests", "brotli", "dns", "h2", "hyperframe"}),
    "daemon": ({"net", "core", "config", "control", "errors", "logs"}, {"gunicorn", "setproctitle"}),
    # pylibmc: only -V, for the libmemcached version it was built with.
    "cli": ({"config", "control", "errors"}, {"pylibmc"}),
    # ctl: a command table over control, never daemon; of net only who holds
    # the checker lock (net.leader, stdlib; tests/test_ctl.py pins it).
    # requests only inside the admin endpoint's client: importing ctl must
    # stay light.
    "ctl": ({"config", "errors", "core", "control", "net"}, {"requests"}),
    "__main__": ({"cli"}, set()),
    "__init__": (set(), set()),
}
# (layer, what) pairs allowed only inside function bodies.
LAZY_ONLY = {("daemon", "gevent"), ("daemon", "net"), ("cli", "daemon"), ("cli", "pylibmc")}
# Modules a layer may import although their layer is not in its rule, each
# for a reason.  config -> net.tls_contexts: the loader builds the TLS server
# contexts while it reads the file, in the master before the fork, so that
# forkproxy -t reports a certificate that cannot be loaded at its line; that
# module is a leaf of the standard library only (test_leaves_import_only_the_
# standard_library), so config still reaches nothing above it.
LEAVES = {"forkproxy.net.tls_contexts": {"config"}}


def layer_of(path: pathlib.Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imports(tree: ast.AST, package: str = "forkproxy"):
    """(absolute module name, is_lazy, lineno) for every import in a module of ``package``."""
    def visit(node, lazy):
        for child in ast.iter_child_nodes(node):
            child_lazy = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield alias.name, child_lazy, child.lineno
            elif isinstance(child, ast.ImportFrom):
                if child.level:  # relative: resolve against the module's package
                    base = package.split(".")[: len(package.split(".")) - child.level + 1]
                    name = ".".join(base + ([child.module] if child.module else []))
                    yield name, child_lazy, child.lineno
                else:
                    yield child.module, child_lazy, child.lineno
            yield from visit(child, child_lazy)
    yield from visit(tree, False)


def violations():
    found = []
    for path in sorted(PKG.rglob("*.py")):
        layer = layer_of(path)
        assert layer in RULES, f"{path}: no layering rule for {layer!r}; add one to RULES"
        allowed_layers, allowed_3rd = RULES[layer]
        tree = ast.parse(path.read_text(), str(path))
        package = ".".join(("forkproxy",) + path.relative_to(PKG).parts[:-1])
        for name, lazy, line in imports(tree, package):
            top = name.split(".")[0]
            where = f"{path.relative_to(ROOT)}:{line}"
            if top == "forkproxy":
                parts = name.split(".")
                if len(parts) == 1:  # "from forkproxy import x": x is the layer
                    continue
                target = parts[1]
                if target == layer or target == "__init__" or layer in LEAVES.get(name, ()):
                    continue
                if target not in allowed_layers and not ((layer, target) in LAZY_ONLY and lazy):
                    found.append(f"{where}: {layer} imports forkproxy.{target}")
                elif (layer, target) in LAZY_ONLY and not lazy:
                    found.append(f"{where}: {layer} may import {target} only inside a function")
            elif top in STDLIB or top == "__future__":
                continue
            elif (layer, top) in LAZY_ONLY:
                if not lazy:
                    found.append(f"{where}: {layer} may import {top} only inside a function")
            elif top not in allowed_3rd:
                found.append(f"{where}: {layer} imports third-party {top}")
    return found


def test_no_module_crosses_the_layers():
    assert violations() == []


@pytest.mark.parametrize("leaf", sorted(LEAVES))
def test_leaves_import_only_the_standard_library(leaf):
    """A module that LEAVES lets lower layers import imports nothing of
    forkproxy and no third-party package, at any depth of its code."""
    path = PKG.joinpath(*leaf.split(".")[1:]).with_suffix(".py")
    found = [name for name, _, _ in imports(ast.parse(path.read_text()))
             if name.split(".")[0] not in STDLIB | {"__future__"}]
    assert found == []


def test_from_forkproxy_import_names_a_layer_that_is_allowed():
    """``from forkproxy import config`` counts as importing the config layer."""
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        layer = layer_of(path)
        allowed_layers = RULES[layer][0] | {"__version__"}
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "forkproxy" and not node.level:
                for alias in node.names:
                    if alias.name not in allowed_layers and alias.name != layer:
                        bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {layer} imports "
                                   f"forkproxy.{alias.name}")
    assert bad == []


def test_the_rules_catch_a_violation(tmp_path, monkeypatch):
    """The checker itself can fail: a core module importing gevent is reported."""
    fake = tmp_path / "forkproxy"
    (fake / "core").mkdir(parents=True)
    (fake / "core" / "bad.py").write_text("import gevent\nfrom forkproxy.net import session\n")
    monkeypatch.setattr(sys.modules[__name__], "PKG", fake)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert len(violations()) == 2


@pytest.mark.parametrize("module", ["forkproxy.cli", "forkproxy.daemon.app",
                                    "forkproxy.daemon.hooks", "forkproxy.daemon.worker"])
def test_master_side_imports_pull_in_no_gevent_requests_or_pylibmc(module):
    code = (f"import sys, {module}\n"
            "bad = [m for m in ('gevent', 'requests', 'pylibmc', 'urllib3') if m in sys.modules]\n"
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


# Sizes the request path keeps (issue 18): small modules and functions that
# say what they hold, short parameter lists, a cache apart from the loop.
NET = PKG / "net"
MAX_NET_MODULE_LINES = 600
MAX_NET_FUNCTION_LINES = 60
# The connection loop and what only it runs; the cache modules import none of them.
CONNECTION_LOOP = {"forkproxy.net.http_session", "forkproxy.net.listener"}
CACHE_MODULES = ("http_cache.py", "cache_filter.py", "cache_store.py", "cache_memcached.py")


def _functions(path: pathlib.Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_no_net_module_is_over_600_lines():
    long = [f"{p.relative_to(ROOT)}: {n} lines" for p in sorted(NET.glob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_NET_MODULE_LINES]
    assert long == []


def test_no_net_function_is_over_60_lines():
    long = [f"{p.relative_to(ROOT)}:{fn.lineno} {fn.name}: {fn.end_lineno - fn.lineno + 1} lines"
            for p in sorted(NET.glob("*.py")) for fn in _functions(p)
            if fn.end_lineno - fn.lineno + 1 > MAX_NET_FUNCTION_LINES]
    assert long == []


def _imported_modules(path: pathlib.Path) -> set[str]:
    """Every module ``path`` imports, ``from a import b`` counting ``a.b`` too."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize("module", CACHE_MODULES)
def test_the_cache_imports_nothing_of_the_connection_loop(module):
    assert _imported_modules(NET / module) & CONNECTION_LOOP == set()


def test_the_import_check_sees_from_imports(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from forkproxy.net import http_session\n")
    assert _imported_modules(bad) & CONNECTION_LOOP == {"forkproxy.net.http_session"}


def test_architecture_doc_names_every_module():
    """docs/ARCHITECTURE.md says in one line what each module holds: a module
    added without its line fails here."""
    doc = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    missing = [str(p.relative_to(PKG)) for p in sorted(PKG.rglob("*.py"))
               if p.name != "__init__.py" and f"`{p.name}`" not in doc]
    assert missing == []


# Small modules, short signatures (issue 19): a module of forkproxy/ over
# MAX_MODULE_LINES lines, or a function taking more than MAX_PARAMETERS
# parameters (``self``/``cls`` not counted; ``*args`` and ``**kwargs`` count
# one each), is a module or a function doing too much.
MAX_MODULE_LINES = 800
MAX_PARAMETERS = 8


def module_lines(pkg: pathlib.Path) -> dict[str, int]:
    """{path relative to the package's parent: line count} of every module."""
    return {path.relative_to(pkg.parent).as_posix(): len(path.read_text().splitlines())
            for path in sorted(pkg.rglob("*.py"))}


def signatures(pkg: pathlib.Path) -> dict[tuple[str, str], int]:
    """{(module path, qualified name): parameter count} of every function and method."""
    found = {}

    def visit(node, prefix, rel):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".", rel)
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = child.args
                names = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs]
                count = len(names) + (a.vararg is not None) + (a.kwarg is not None)
                if names and names[0] in ("self", "cls") and prefix:
                    count -= 1
                found[(rel, prefix + child.name)] = count
                visit(child, prefix + child.name + ".", rel)
            else:
                visit(child, prefix, rel)

    for path in sorted(pkg.rglob("*.py")):
        visit(ast.parse(path.read_text()), "", path.relative_to(pkg.parent).as_posix())
    return found


def oversized(pkg: pathlib.Path) -> list[str]:
    """Modules over MAX_MODULE_LINES and functions over MAX_PARAMETERS."""
    bad = [f"{rel}: {n} lines (at most {MAX_MODULE_LINES})"
           for rel, n in module_lines(pkg).items()
           if n > MAX_MODULE_LINES]
    bad += [f"{rel}: {name} takes {n} parameters (at most {MAX_PARAMETERS})"
            for (rel, name), n in signatures(pkg).items()
            if n > MAX_PARAMETERS]
    return bad


def test_no_module_is_too_long_and_no_function_takes_too_many_parameters():
    assert oversized(PKG) == []


def test_the_size_rules_catch_a_violation(tmp_path):
    """The checker itself can fail: a long module and a long signature are reported,
    a method's ``self`` is not counted."""
    fake = tmp_path / "forkproxy"
    (fake / "core").mkdir(parents=True)
    (fake / "core" / "long.py").write_text("x = 1\n" * (MAX_MODULE_LINES + 1))
    (fake / "core" / "wide.py").write_text(
        "def f(a, b, c, d, e, f, g, *h, i):\n    pass\n\n\n"
        "class C:\n    def ok(self, a, b, c, d, e, f, g, h):\n        pass\n\n"
        "    def wide(self, a, b, c, d, e, f, g, h, **i):\n        pass\n")
    assert oversized(fake) == [
        f"forkproxy/core/long.py: {MAX_MODULE_LINES + 1} lines (at most {MAX_MODULE_LINES})",
        "forkproxy/core/wide.py: f takes 9 parameters (at most 8)",
        "forkproxy/core/wide.py: C.wide takes 9 parameters (at most 8)",
    ]
