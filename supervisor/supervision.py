"""The supervision loop: keeps every pool at full strength.

One asyncio task runs ``manage`` every ``TICK`` seconds, in this order:

1. reap: collect exited children (``waitpid(-1, WNOHANG)``), so a slot's
   state reflects reality before anything else looks at it; the bus fails
   whatever a dead worker held;
2. kill: escalate SIGTERM to SIGKILL for workers that did not go, and
   SIGTERM workers that never said READY within ``start_timeout``;
3. spawn: restart slots whose backoff has run out.

A pidfd per worker, watched by the loop, triggers a reap the moment a
worker dies, so recovery never waits for the next tick. Unresponsive
workers are reported by the bus (missed heartbeats, overrun deadlines)
straight to their pool, which kills them; this loop escalates the
signal. Nothing in this module blocks.

On Demand
    A pool built ``on_demand`` has no worker until its first call: the
    bus asks ``demand`` for the start to wait for. The first caller makes
    it (spawned at once, on the loop, like any spawn: forked from the
    zygote if one runs, else exec'd), later ones join it, so parallel
    first calls start one worker. It ends at the worker's READY, or with
    UNAVAILABLE for every waiter when the worker could not be spawned or
    exited first; the slot is then NOT_STARTED again (pool.py) and the
    next call makes a new start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable

from ..proto.errors import Unavailable, shorten
from .bus import PoolBus
from .pool import SlotState, WorkerPool, WorkerSlot, describe_exit

log = logging.getLogger(__name__)

TICK = 0.1
SIGTERM_GRACE = 1.0


class Supervision:
    def __init__(self, pools: dict[str, WorkerPool], buses: dict[str, PoolBus]) -> None:
        self.pools = pools
        self.buses = buses
        self._pidfds: dict[int, int] = {}
        self._task: asyncio.Task[None] | None = None
        # Per on-demand pool: the start calls wait for, while one is on.
        self._starts: dict[str, asyncio.Future[None]] = {}
        self._waits: set[asyncio.Task[None]] = set()
        self._changed: dict[str, asyncio.Event] = {}
        for name, pool in pools.items():
            if pool.on_demand:
                pool.on_change = self._changed_hook(name)

    def _changed_hook(self, name: str) -> Callable[[], None]:
        def changed() -> None:
            event = self._changed.get(name)
            if event is not None:
                event.set()
        return changed

    def demand(self, name: str) -> asyncio.Future[None] | None:
        """The start of pool ``name``'s worker for a call to wait for: the
        one under way, or a new one if the pool has not started (a failed
        start leaves it so). None when the pool needs no start."""
        current = self._starts.get(name)
        if current is not None and not current.done():
            return current
        pool = self.pools[name]
        if not pool.not_started():
            return None
        attempt: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Retrieved here too: every waiter may have hit its deadline first.
        attempt.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._starts[name] = attempt
        # Spawned here, on the loop: no reap sweep runs between the fork and
        # the slot taking the pid, as for every spawn.
        started = pool.start_on_demand(time.monotonic())
        for slot in started:
            self._watch(slot)
        if not started:
            attempt.set_exception(_start_failed(pool))
            return attempt
        self._changed[name] = asyncio.Event()
        wait = asyncio.create_task(self._wait_ready(pool, attempt), name=f"start-{name}")
        self._waits.add(wait)
        wait.add_done_callback(self._waits.discard)
        return attempt

    async def _wait_ready(self, pool: WorkerPool, attempt: asyncio.Future[None]) -> None:
        """Resolve ``attempt`` at the pool's first READY, or fail it when its
        worker exits (or is killed after start_timeout) before."""
        changed = self._changed[pool.name]
        try:
            while True:
                changed.clear()
                if pool.ready_count():
                    log.info("The %s pool started on demand", pool.name)
                    attempt.set_result(None)
                    return
                if pool.not_started():
                    attempt.set_exception(_start_failed(pool))
                    return
                if pool.is_fatal():  # READY once, then crash-looped
                    attempt.set_exception(Unavailable(
                        f"the {pool.name} pool has no live worker (FATAL); "
                        "see `podvisor status`"))
                    return
                await changed.wait()
        finally:
            self._changed.pop(pool.name, None)
            if not attempt.done():
                attempt.set_exception(Unavailable(
                    f"the {pool.name} worker was not started: the daemon is stopping"))

    def start(self) -> None:
        self.manage()
        self._task = asyncio.create_task(self._run(), name="supervision")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            try:
                self.manage()
            except Exception:
                # The loop must outlive any bug in one pass.
                log.exception("Supervision pass failed")

    def manage(self) -> None:
        now = time.monotonic()
        self.reap()
        for pool in self.pools.values():
            for slot in pool.unfinished_kills(now, SIGTERM_GRACE):
                pool.kill(slot, "it did not exit after SIGTERM")
            for slot in pool.overdue_starts(now):
                if not slot.kill_sent:
                    pool.kill(slot, f"no READY within {pool.policy.start_timeout:.0f}s")
            for slot in pool.spawn_due(now):
                self._watch(slot)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self._unwatch(pid)
            self._reaped(pid, status)

    def _reaped(self, pid: int, status: int) -> None:
        for name, pool in self.pools.items():
            slot = pool.by_pid(pid)
            if slot is not None:
                pool.reaped(slot, status, time.monotonic())
                self.buses[name].worker_gone(pid, describe_exit(status))
                return
        log.debug("Reaped unknown child %d (%s)", pid, describe_exit(status))

    def _watch(self, slot: WorkerSlot) -> None:
        if slot.pid is None:
            return
        try:
            fd = os.pidfd_open(slot.pid)
        except OSError:
            return  # already gone; the next reap collects it
        self._pidfds[slot.pid] = fd
        asyncio.get_running_loop().add_reader(fd, self.reap)

    def _unwatch(self, pid: int) -> None:
        fd = self._pidfds.pop(pid, None)
        if fd is not None:
            asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)

    async def stop(self, timeout: float) -> None:
        """SIGTERM every worker, wait up to ``timeout``, then SIGKILL the rest."""
        for task in (self._task, *self._waits):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for pool in self.pools.values():
            pool.stop_all()
        deadline = time.monotonic() + timeout
        while self._live() and time.monotonic() < deadline:
            self.reap()
            await asyncio.sleep(0.05)
        for pool in self.pools.values():
            for slot in pool.slots:
                if slot.pid is not None:
                    pool.kill(slot, f"still running {timeout:.0f}s after SIGTERM", force=True)
        # SIGKILL cannot be ignored, but a process in D state takes time.
        deadline = time.monotonic() + 5.0
        while self._live() and time.monotonic() < deadline:
            self.reap()
            await asyncio.sleep(0.02)
        for pid in list(self._pidfds):
            self._unwatch(pid)

    def _live(self) -> bool:
        return any(s.state is SlotState.STOPPING or s.pid is not None
                   for pool in self.pools.values() for s in pool.slots)


def _start_failed(pool: WorkerPool) -> Unavailable:
    why = next((s.last_exit for s in pool.not_started()), "")
    return Unavailable(f"the {pool.name} worker could not be started: {shorten(why)}; "
                       "the next call tries again")
