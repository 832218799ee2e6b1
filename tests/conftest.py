"""Shared pytest setup: the ``support`` harness, its fixtures, and the leak guard.

``tests/`` goes on sys.path so any test, at any depth, imports the harness
as ``from support.runner import ...``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from support import procs  # noqa: E402
from support.runner import Backend, ForkProxy, Memcached  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _no_leaked_processes():
    """Fail the session when a process started by the harness outlives the tests.

    Leftovers are killed (by pid) before the failure is reported, so one
    leaky test cannot poison the next run.
    """
    yield
    pids = procs.leaked()
    if pids:
        described = ", ".join(f"{p} ({_cmdline(p)})" for p in pids)
        procs.kill_leaked()
        pytest.fail(f"harness processes still alive at the end of the session: {described}", pytrace=False)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()[:120]
    except OSError:
        return "?"


@pytest.fixture
def backend_factory(tmp_path):
    """``make(name="b1", port=None) -> Backend``, started and accepting; all stopped after the test."""
    made: list[Backend] = []

    def make(name: str | None = None, port: int | None = None) -> Backend:
        b = Backend(name or f"b{len(made) + 1}", tmp_path / "backends", port=port)
        made.append(b)
        return b

    yield make
    for b in made:
        b.stop()


@pytest.fixture
def forkproxy_factory(tmp_path):
    """``make(body="", server=None, start=True, ready=True, args=(), env=None) -> ForkProxy``.

    Each instance gets its own directory under tmp_path. With ``ready=True``
    it waits until the first listener answers (``wait_ready()``); pass
    ``ready=False`` for tests that expect the start to fail. All stopped
    (TERM, then KILL, workers by pid) after the test.
    """
    made: list[ForkProxy] = []

    def make(body: str = "", server: dict | None = None, start: bool = True, ready: bool = True, args=(), env=None,
             python=None):
        fp = ForkProxy(tmp_path / f"forkproxy{len(made) + 1}", body, server, args=args, env=env, python=python)
        made.append(fp)
        if start:
            fp.start()
            if ready:
                fp.wait_ready()
        return fp

    yield make
    for fp in made:
        fp.stop()


@pytest.fixture
def memcached_factory(tmp_path):
    """``make(port=None) -> Memcached`` started and accepting (skips if not installed); all stopped after."""
    made: list[Memcached] = []

    def make(port: int | None = None, extra_args=()) -> Memcached:
        m = Memcached(tmp_path / "memcached", port=port, extra_args=extra_args)
        made.append(m)
        return m

    yield make
    for m in made:
        m.stop()
