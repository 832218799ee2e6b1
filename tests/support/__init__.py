"""Test harness: real processes on 127.0.0.1 (forkproxy, backends, memcached).

Import it as ``support`` (``tests/conftest.py`` puts ``tests/`` on sys.path)::

    from support.runner import ForkProxy, Backend, Memcached
    from support.procs import free_port, wait_for_port, Proc, children_of
    from support.backend import pattern, pattern_sha256

Never as ``tests.support``: a second import would get a second registry of
started processes, and the leak guard would not see them.
"""
