"""Debug only: what a worker's heap holds, written on demand.

Off unless the daemon's environment sets ``PODVISOR_MEMPROBE`` to a
directory (never in production: it costs memory and time). Then every
worker starts tracemalloc before it serves, so it traces what it allocates
after the fork, not the zygote's imports, and on SIGUSR2 writes, after a
full collection:

- ``<dir>/<pool>-<pid>-<n>.snap``: the tracemalloc snapshot;
- ``<dir>/<pool>-<pid>-<n>.json``: live objects counted by type, and the
  process's threads.

``bench/worker_heap.py`` diffs two of them. The signal is handled on the
worker's loop (``loop.add_signal_handler``), between ops' replies.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import json
import logging
import os
import signal
import threading
import tracemalloc

log = logging.getLogger(__name__)

ENV = "PODVISOR_MEMPROBE"
FRAMES = 8


def install(loop: asyncio.AbstractEventLoop, pool: str) -> None:
    """Start tracing and dump on SIGUSR2 when ``PODVISOR_MEMPROBE`` is set."""
    where = os.environ.get(ENV, "")
    if not where:
        return
    tracemalloc.start(FRAMES)
    dumps = iter(range(1 << 30))
    loop.add_signal_handler(signal.SIGUSR2, lambda: _dump(where, pool, next(dumps)))
    log.warning("Memory probe on: SIGUSR2 writes heap snapshots to %s", where)


def _dump(where: str, pool: str, n: int) -> None:
    gc.collect()
    stem = os.path.join(where, f"{pool}-{os.getpid()}-{n}")
    tracemalloc.take_snapshot().dump(stem + ".snap")
    counts = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
    with open(stem + ".json", "w", encoding="utf-8") as f:
        json.dump({"types": dict(counts.most_common(200)),
                   "threads": [t.name for t in threading.enumerate()],
                   "traced": tracemalloc.get_traced_memory()}, f)
    log.warning("Memory probe wrote %s.snap", stem)
