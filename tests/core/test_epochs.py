"""core.epochs: the cache's change counters over a shared buffer."""

import mmap
import os

import pytest
from hypothesis import given, strategies as st

from forkproxy.core.epochs import Epochs


@given(st.binary(min_size=32, max_size=32))
def test_every_key_has_a_counter_of_its_own_range(digest):
    hashed = "fp:" + digest.hex()
    assert 1 <= Epochs.slot(hashed) < Epochs.SLOTS  # counter 0 is the hosts'
    assert Epochs.slot(hashed) == Epochs.slot(hashed)


def test_a_bump_is_seen_through_every_view_of_the_buffer_even_across_a_fork():
    buf = mmap.mmap(-1, Epochs.SIZE)
    a, b = Epochs(buf), Epochs(buf)
    before = b.values[7]
    a.bump(7, before + 12345)
    assert b.values[7] == before + 12345 and b.values[8] == 0
    pid = os.fork()
    if pid == 0:  # a worker
        Epochs(buf).bump(9, 2 ** 64 + 5)  # masked to 64 bits
        os._exit(0)
    os.waitpid(pid, 0)
    assert a.values[9] == 5


def test_a_short_buffer_is_refused():
    with pytest.raises(ValueError):
        Epochs(bytearray(Epochs.SIZE - 8))
