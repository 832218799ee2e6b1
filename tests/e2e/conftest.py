"""Fixtures shared by the end-to-end tests of the cache."""

import pytest


@pytest.fixture
def origin(backend_factory):
    """A real origin that counts requests per path (tests/support/backend.py)."""
    return backend_factory("origin")


@pytest.fixture
def mc(memcached_factory):
    """A real memcached on a free port (skips when memcached is not installed)."""
    return memcached_factory()
