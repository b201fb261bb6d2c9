"""Worker pools: slots, their state machine, spawning, reaping, restarts.

Each pool has a fixed number of slots; each slot holds at most one worker
process at a time and remembers its history (restarts, fast failures).

State machine (supervisord's names)::

    EXITED ──spawn──▶ STARTING ──READY──▶ READY
                         │                  │
                         └──exit / killed───┴──▶ BACKOFF ──delay──▶ STARTING
                                                    │
                                 fatal_after fast ──┴──▶ FATAL
    any live state ──shutdown──▶ STOPPING ──reaped──▶ EXITED

    NOT_STARTED ──first call──▶ STARTING ──exit before READY──▶ NOT_STARTED

A pool started on demand (the stream pool, by default: most nodes never
stream) has its slots NOT_STARTED until its first call; the supervision
starts them then (supervision.py), and from their first READY on they
live as any other slot. A first start that fails leaves the slot
NOT_STARTED again, counting no fast failure: the call that waited for it
gets UNAVAILABLE and the next call tries again. The worker stays once
started (README, "Daemon memory").

Restarts use capped exponential backoff: the first restart after a worker
that was READY and ran at least ``startsecs`` is immediate; each further
consecutive fast failure doubles the delay from ``backoff_base`` up to
``backoff_cap``, and ``fatal_after`` of them in a row leave the slot FATAL.
A worker that exits before READY, whenever that is, failed fast: it died on
start, was killed after ``start_timeout``, or was refused by the bus
(another protocol version or op list: a worker of another build).

Concurrency: everything here runs on the supervisor's asyncio loop, in the
main thread (PR_SET_PDEATHSIG ties workers to the thread that forked them).
Child exits are noticed through a pidfd per worker; reaping is a
``waitpid(-1, WNOHANG)`` sweep, which also collects children we never knew.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .zygote import Zygote, ZygoteError, spawn

log = logging.getLogger(__name__)

NOT_STARTED_NOTE = "not started (on demand): its first call starts it"


class SlotState(enum.Enum):
    NOT_STARTED = "NOT_STARTED"
    STARTING = "STARTING"
    READY = "READY"
    BACKOFF = "BACKOFF"
    STOPPING = "STOPPING"
    EXITED = "EXITED"
    FATAL = "FATAL"


LIVE_STATES = frozenset({SlotState.STARTING, SlotState.READY, SlotState.STOPPING})

# Every edge the machine may take; anything else is a bug.
TRANSITIONS = frozenset({
    (SlotState.EXITED, SlotState.STARTING),
    (SlotState.STARTING, SlotState.READY),
    (SlotState.STARTING, SlotState.BACKOFF),
    (SlotState.READY, SlotState.BACKOFF),
    (SlotState.BACKOFF, SlotState.STARTING),
    (SlotState.BACKOFF, SlotState.FATAL),
    (SlotState.STARTING, SlotState.STOPPING),
    (SlotState.READY, SlotState.STOPPING),
    (SlotState.STOPPING, SlotState.EXITED),
    (SlotState.BACKOFF, SlotState.EXITED),
    (SlotState.FATAL, SlotState.EXITED),
    (SlotState.NOT_STARTED, SlotState.STARTING),
    (SlotState.STARTING, SlotState.NOT_STARTED),
})


class TransitionError(RuntimeError):
    """A state change the machine does not allow."""


@dataclass(frozen=True)
class RestartPolicy:
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    startsecs: float = 1.0
    fatal_after: int = 5
    start_timeout: float = 15.0

    def delay(self, fast_failures: int) -> float:
        """Seconds to wait before the next spawn after ``fast_failures`` in a row."""
        if fast_failures <= 0:
            return 0.0
        return min(self.backoff_cap, self.backoff_base * 2.0 ** (fast_failures - 1))


@dataclass
class WorkerSlot:
    """One place in a pool; outlives the processes that fill it."""

    pool: str
    index: int
    state: SlotState = SlotState.EXITED
    pid: int | None = None
    started_at: float = 0.0          # monotonic, for uptime and startsecs
    started_wall: float = 0.0        # epoch seconds, for status output
    restarts: int = 0
    fast_failures: int = 0
    next_spawn_at: float = 0.0
    last_exit: str = ""
    kill_sent: int = 0               # last signal sent to the live process, 0 if none
    kill_sent_at: float = 0.0
    first_start: bool = False        # started on demand, not READY yet

    def move(self, new: SlotState) -> None:
        if (self.state, new) not in TRANSITIONS:
            raise TransitionError(f"{self.name}: {self.state.name} -> {new.name}")
        self.state = new

    @property
    def name(self) -> str:
        return f"{self.pool} worker {self.index}"

    def spawned(self, pid: int | None, now: float) -> None:
        # EXITED|BACKOFF|NOT_STARTED -> STARTING
        self.first_start = self.state is SlotState.NOT_STARTED
        self.move(SlotState.STARTING)
        self.pid = pid
        self.started_at = now
        self.started_wall = time.time()
        self.kill_sent = 0

    def ready(self) -> None:
        # STARTING -> READY
        self.move(SlotState.READY)
        self.first_start = False

    def exited(self, now: float, how: str, policy: RestartPolicy) -> None:
        """Record the end of the slot's process and decide what comes next."""
        self.pid = None
        self.last_exit = how
        if self.state is SlotState.STOPPING:
            # STOPPING -> EXITED: we asked it to go.
            self.move(SlotState.EXITED)
            return
        if self.first_start:
            # STARTING -> NOT_STARTED: an on-demand start failed; the next
            # call tries again, so nothing counts towards FATAL.
            self.first_start = False
            self.move(SlotState.NOT_STARTED)
            return
        # A worker that never said READY failed to start however long it
        # took (a refused or hung one too), else a slow start would restart
        # at once, forever; one that did failed fast only within startsecs.
        fast = self.state is SlotState.STARTING or now - self.started_at < policy.startsecs
        self.fast_failures = self.fast_failures + 1 if fast else 0
        # STARTING|READY -> BACKOFF, even for an immediate restart, so that
        # one code path spawns.
        self.move(SlotState.BACKOFF)
        if self.fast_failures >= policy.fatal_after:
            # BACKOFF -> FATAL: it keeps dying on start; stop trying.
            self.move(SlotState.FATAL)
            return
        self.next_spawn_at = now + policy.delay(self.fast_failures)


# Starts the worker of a pool's slot; returns its pid. The process must be
# the supervisor's child by the time this returns (the reap sweep owns it).
Spawner = Callable[[str, int], int]


@dataclass(frozen=True)
class WorkerCommand:
    """How to start a worker: forked from the zygote, or, without one (or
    when it fails), ``python -m podvisor.workers.<pool>`` by fork+exec."""

    endpoint_for: Callable[[str], str]
    settings_path: str
    python: str = sys.executable
    zygote: Zygote | None = None

    def __call__(self, pool: str, index: int) -> int:
        args = self._args(pool, index)
        if self.zygote is not None:
            try:
                return self.zygote.fork_worker(pool, args)
            except ZygoteError as exc:
                log.error("Starting %s worker %d by exec instead: %s", pool, index, exc)
        return self._exec(pool, args)

    def first(self, pool: str, index: int) -> int:
        """The start of an on-demand pool's first worker: forked from the
        zygote if one runs, else exec'd (zygote.py says why no new zygote
        is made for it). Either returns at once; READY comes on the bus."""
        args = self._args(pool, index)
        if self.zygote is not None:
            try:
                return self.zygote.fork_if_running(pool, args)
            except ZygoteError as exc:
                log.info("Starting %s worker %d by exec: %s", pool, index, exc)
        return self._exec(pool, args)

    def _args(self, pool: str, index: int) -> list[str]:
        return ["--index", str(index), "--endpoint", self.endpoint_for(pool),
                "--settings", self.settings_path, "--parent-pid", str(os.getpid())]

    def _exec(self, pool: str, args: list[str]) -> int:
        argv = [self.python, "-m", f"podvisor.workers.{pool}", *args]
        # From the main thread (grpc and zmq forbid a bare fork here); same
        # process group and cgroup as the supervisor, so that a stop of the
        # daemon's unit reaches workers.
        return spawn(argv)


def write_settings(path: str, settings: dict[str, Any]) -> None:
    """Atomically write the JSON settings every worker reads at start."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(settings, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


EventSink = Callable[[str, "WorkerSlot", dict[str, Any]], None]


class WorkerPool:
    """The slots of one pool and what happens to their processes."""

    def __init__(self, name: str, size: int, spawn: Spawner, policy: RestartPolicy,
                 on_event: EventSink, *, on_demand: bool = False,
                 first_spawn: Spawner | None = None) -> None:
        self.name = name
        self.on_demand = on_demand
        self._first_spawn = first_spawn or spawn
        first = SlotState.NOT_STARTED if on_demand else SlotState.EXITED
        self.slots = [WorkerSlot(name, i, first) for i in range(1, size + 1)]
        self._spawn = spawn
        self.policy = policy
        self._on_event = on_event
        # Told of every READY and reap: an on-demand start waits on it.
        self.on_change: Callable[[], None] = lambda: None

    def by_pid(self, pid: int) -> WorkerSlot | None:
        return next((s for s in self.slots if s.pid == pid), None)

    def ready_count(self) -> int:
        return sum(1 for s in self.slots if s.state is SlotState.READY)

    def is_fatal(self) -> bool:
        """True when no slot can ever serve again without operator action."""
        return all(s.state is SlotState.FATAL for s in self.slots)

    def not_started(self) -> list[WorkerSlot]:
        """Slots waiting for the pool's first call (on demand)."""
        return [s for s in self.slots if s.state is SlotState.NOT_STARTED]

    def summary(self) -> dict[str, Any]:
        """The pool's line in ``/status`` and in CRI Status's verbose info."""
        doc: dict[str, Any] = {"size": len(self.slots), "ready": self.ready_count(),
                               "fatal": self.is_fatal(), "on_demand": self.on_demand}
        if self.not_started():
            doc["note"] = NOT_STARTED_NOTE
        return doc

    def start_on_demand(self, now: float) -> list[WorkerSlot]:
        """Start every NOT_STARTED slot for the call that needs the pool;
        return those started. One that cannot even be spawned stays
        NOT_STARTED for the next call, with the reason in ``last_exit``."""
        started = []
        for slot in self.not_started():
            try:
                pid = self._first_spawn(self.name, slot.index)
            except Exception as exc:
                # Any failure, not only the OS's (a zygote answering garbage
                # is a ValueError): the calls waiting for this start must
                # hear of it, and the next one tries again.
                log.error("Cannot start %s on demand: %s", slot.name, exc,
                          exc_info=not isinstance(exc, OSError))
                slot.last_exit = f"spawn failed: {exc}"
                continue
            # NOT_STARTED -> STARTING
            slot.spawned(pid, now)
            started.append(slot)
            self._on_event("spawn", slot, {"restarts": slot.restarts, "on_demand": True})
        return started

    def spawn_due(self, now: float) -> list[WorkerSlot]:
        """Start every empty slot whose backoff has run out; return them."""
        started = []
        for slot in self.slots:
            due = slot.state is SlotState.EXITED or (
                slot.state is SlotState.BACKOFF and now >= slot.next_spawn_at)
            if not due:
                continue
            if slot.state is SlotState.BACKOFF:
                slot.restarts += 1
            try:
                pid = self._spawn(self.name, slot.index)
            except OSError as exc:
                log.error("Cannot spawn %s: %s", slot.name, exc)
                # Counts as a fast failure, so a missing interpreter ends FATAL.
                slot.spawned(None, now)
                slot.exited(now, f"spawn failed: {exc}", self.policy)
                continue
            slot.spawned(pid, now)
            started.append(slot)
            self._on_event("spawn", slot, {"restarts": slot.restarts})
        return started

    def mark_ready(self, index: int, pid: int) -> bool:
        """A READY arrived; accept it only from the process we started there."""
        slot = self.slots[index - 1] if 0 < index <= len(self.slots) else None
        if slot is None or slot.pid != pid or slot.state is not SlotState.STARTING:
            return False
        slot.ready()
        self._on_event("ready", slot, {})
        self.on_change()
        return True

    def reaped(self, slot: WorkerSlot, status: int, now: float) -> None:
        how = describe_exit(status)
        pid = slot.pid
        stopping = slot.state is SlotState.STOPPING
        slot.exited(now, how, self.policy)
        self.on_change()
        if stopping:
            log.info("%s (pid %s) stopped: %s", slot.name, pid, how)
        elif slot.state is SlotState.NOT_STARTED:
            log.error("%s (pid %s) did not start: %s; the next call tries again",
                      slot.name, pid, how)
        elif os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
            log.error("%s (pid %s) was killed by SIGKILL (possibly OOM)", slot.name, pid)
        else:
            log.error("%s (pid %s) exited unexpectedly: %s", slot.name, pid, how)
        self._on_event("reap", slot, {"pid": pid, "exit": how})
        if slot.state is SlotState.BACKOFF:
            self._on_event("backoff", slot, {"delay": max(0.0, slot.next_spawn_at - now)})
        elif slot.state is SlotState.FATAL:
            log.error("%s failed %d times in a row within %.1fs of start; giving up (FATAL)",
                      slot.name, slot.fast_failures, self.policy.startsecs)
            self._on_event("fatal", slot, {"exit": how})

    def kill(self, slot: WorkerSlot, why: str, *, force: bool = False) -> None:
        """SIGTERM a live worker, or SIGKILL one already asked (or ``force``)."""
        if slot.pid is None:
            return
        sig = signal.SIGKILL if slot.kill_sent or force else signal.SIGTERM
        log.warning("Killing %s (pid %d) with %s: %s", slot.name, slot.pid, sig.name, why)
        try:
            os.kill(slot.pid, sig)
        except ProcessLookupError:
            return
        slot.kill_sent = sig
        slot.kill_sent_at = time.monotonic()
        self._on_event("kill", slot, {"signal": sig.name, "why": why})

    def kill_unresponsive(self, pid: int, why: str) -> None:
        """The bus's verdict on a worker: missed heartbeats or an overrun op."""
        slot = self.by_pid(pid)
        if slot is not None and not slot.kill_sent:
            self.kill(slot, why)

    def unfinished_kills(self, now: float, grace: float) -> list[WorkerSlot]:
        """Slots sent SIGTERM more than ``grace`` ago whose process lives on."""
        return [s for s in self.slots if s.pid is not None
                and s.kill_sent == signal.SIGTERM and now - s.kill_sent_at > grace]

    def overdue_starts(self, now: float) -> list[WorkerSlot]:
        """Slots whose worker has not said READY within start_timeout."""
        return [s for s in self.slots if s.state is SlotState.STARTING
                and now - s.started_at > self.policy.start_timeout]

    def stop_all(self) -> None:
        for slot in self.slots:
            if slot.state in (SlotState.STARTING, SlotState.READY):
                slot.move(SlotState.STOPPING)
                if slot.pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(slot.pid, signal.SIGTERM)
            elif slot.state in (SlotState.BACKOFF, SlotState.FATAL):
                slot.move(SlotState.EXITED)

    def live_pids(self) -> list[int]:
        return [s.pid for s in self.slots if s.pid is not None]


def describe_exit(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.WEXITSTATUS(status)}"
