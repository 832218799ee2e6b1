"""The daemon's composition root: the master's state and each worker's context.

Everything forkproxy keeps for the life of a master lives in one
``MasterState``, built by ``daemon.app.run`` and handed to the gunicorn
application and arbiter it makes; nothing of forkproxy's is stored on
gunicorn's objects.  The master's hooks (``daemon.hooks``) fill and update
it: the configuration that serves, the generation counters, the shared
memory every worker maps (health table, edge buffers, metrics, the cache's
change counters and embedded store), the access log, the sticky key, the worker slots.

A ``WorkerContext`` is what one worker is forked with: made by
``MasterState.new_worker`` when gunicorn makes the worker object (in the
master, just before the fork), so it holds the master's state *as of that
fork*.  The worker builds its runtime from it alone (``hooks.build_runtime``);
the master reads it back for its accounting (generation, slot, whether the
worker was asked to retire).

Stdlib and ``forkproxy.config`` only: the master imports this module.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from forkproxy.config import Config


@dataclasses.dataclass(eq=False)
class WorkerContext:
    """One worker's share of the master's state, fixed at its fork.

    ``heartbeat0``: the worker's heartbeat file time when it was made; the
    master knows the worker serves once it changed (``daemon.arbiter``).
    ``retiring``: master side, set once the worker was asked to drain.
    ``slot``: its column in the shared table and metrics (None: more workers
    than slots; it then shares nothing).
    """

    generation: int
    heartbeat0: float
    slot: int | None
    config: Config
    table: Any
    edge: dict
    metrics: Any
    cache_epochs: Any
    cache_region: Any
    access_log: Any
    sticky_key: bytes
    lock_fd: int
    reload_fd: int
    boot_report: Any
    accept_share: Any = None  # core.accept_share's buffer (None: the worker accepts freely)
    retiring: bool = False


@dataclasses.dataclass(eq=False)
class MasterState:
    """The master's state (module docstring).

    ``config``: the configuration the master holds (the one the newest
    generation runs); ``pidfile``: the command line's ``-p``, which
    overrides server.pidfile in every file read; ``detached``: started with
    ``-D``.

    Generations (see ``daemon.arbiter``): ``generation`` is the newest one
    (1 for the first, +1 for every generation forked after a reload),
    ``reloads`` counts the HUPs, ``gen_reload`` is the HUP that started the
    newest generation (0: the first, or a restore), ``gen_started`` when it
    was forked (monotonic), ``announced`` whether it was announced as
    serving, ``good`` the (generation, Config) of the last generation that
    served, what a refused reload goes back to.  ``boot_report``: where a
    worker of the newest generation writes why it cannot boot (None until
    the first generation serves: until then gunicorn's boot error halts the
    master).

    The rest is made by ``hooks.on_starting`` and renewed by
    ``hooks.on_reload``.
    """

    config: Config
    pidfile: str | None = None
    detached: bool = False
    generation: int = 1
    reloads: int = 0
    gen_reload: int = 0
    gen_started: float = dataclasses.field(default_factory=time.monotonic)
    announced: bool = False
    good: tuple[int, Config] | None = None
    titled: bool = False  # the master's process title is forkproxy's (not gunicorn's)
    boot_report: Any = None
    access_log: Any = None       # forkproxy.logs.AccessLog, opened by the master
    sticky_key: bytes = b""
    n_slots: int = 0             # table and metrics columns (TTIN headroom included)
    slots: set = dataclasses.field(default_factory=set)  # the columns in use
    table_map: Any = None        # the table's mapping, kept alive with it
    table: Any = None            # core.table.Table of the newest generation
    edge: dict | None = None     # net.edge.create_shared's buffers
    metrics: Any = None          # core.metrics.Metrics
    cache_epochs: Any = None     # core.epochs' buffer, one for the master's life
    cache_region: Any = None     # net.cache_shm.Region: the embedded store, kept across reloads
    lock_fd: int = -1            # the checker lock file (net.leader)
    reload_pipe: tuple[int, int] | None = None  # the admin endpoint's reload requests
    accept_share: Any = None     # core.accept_share's buffer, one slot per worker slot

    def __post_init__(self):
        if self.good is None:
            self.good = (self.generation, self.config)

    def new_worker(self, heartbeat0: float) -> WorkerContext:
        """The context of a worker about to be forked: the newest generation, the lowest free slot."""
        free = [s for s in range(self.n_slots) if s not in self.slots]
        slot = free[0] if free else None
        if slot is not None:
            self.slots.add(slot)
        return WorkerContext(
            generation=self.generation, heartbeat0=heartbeat0, slot=slot, config=self.config,
            table=self.table, edge=self.edge, metrics=self.metrics,
            cache_epochs=self.cache_epochs, cache_region=self.cache_region, access_log=self.access_log,
            sticky_key=self.sticky_key, lock_fd=self.lock_fd,
            reload_fd=self.reload_pipe[1] if self.reload_pipe else -1,
            boot_report=self.boot_report, accept_share=self.accept_share)

    def release(self, ctx: WorkerContext) -> None:
        """The worker of ``ctx`` is gone: its slot is free again."""
        if ctx.slot is not None:
            self.slots.discard(ctx.slot)
