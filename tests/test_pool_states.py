"""The worker slot state machine, one test per edge, and the backoff math;
then the pool's behaviour in each state, driven by the events the
supervisor feeds it (spawn, READY, reap, stop) on real child processes and
an injected clock: which state a worker reaches after which event, and
which slots are admitted to take work, refilled or given up on."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from podvisor.supervisor.pool import (
    TRANSITIONS,
    RestartPolicy,
    SlotState,
    TransitionError,
    WorkerPool,
    WorkerSlot,
)

POLICY = RestartPolicy(backoff_base=0.5, backoff_cap=4.0, startsecs=1.0, fatal_after=3,
                       start_timeout=15.0)
SIGKILLED = 9  # a wait status: killed by signal 9


def slot_in(state: SlotState) -> WorkerSlot:
    slot = WorkerSlot("runtime", 1)
    slot.state = state
    return slot


def test_exited_to_starting_when_spawned() -> None:
    slot = slot_in(SlotState.EXITED)
    slot.spawned(100, now=10.0)
    assert slot.state is SlotState.STARTING and slot.pid == 100


def test_backoff_to_starting_when_respawned() -> None:
    slot = slot_in(SlotState.BACKOFF)
    slot.spawned(101, now=10.0)
    assert slot.state is SlotState.STARTING


def test_starting_to_ready_when_ready_arrives() -> None:
    slot = slot_in(SlotState.STARTING)
    slot.ready()
    assert slot.state is SlotState.READY


def test_ready_to_backoff_when_it_exits_after_a_long_run() -> None:
    slot = slot_in(SlotState.EXITED)
    slot.spawned(100, now=0.0)
    slot.ready()
    slot.exited(now=60.0, how="killed by SIGKILL", policy=POLICY)
    assert slot.state is SlotState.BACKOFF
    assert slot.fast_failures == 0
    assert slot.next_spawn_at == 60.0  # immediate restart
    assert slot.pid is None


def test_starting_to_backoff_when_it_dies_on_start() -> None:
    slot = slot_in(SlotState.EXITED)
    slot.spawned(100, now=0.0)
    slot.exited(now=0.2, how="exit status 3", policy=POLICY)
    assert slot.state is SlotState.BACKOFF
    assert slot.fast_failures == 1
    assert slot.next_spawn_at == pytest.approx(0.7)


def test_backoff_to_fatal_when_fast_failures_reach_the_limit() -> None:
    slot = slot_in(SlotState.EXITED)
    now = 0.0
    for _ in range(POLICY.fatal_after):
        slot.spawned(100, now=now)
        slot.exited(now=now + 0.1, how="exit status 3", policy=POLICY)
        now = slot.next_spawn_at if slot.state is SlotState.BACKOFF else now
    assert slot.state is SlotState.FATAL
    assert slot.last_exit == "exit status 3"


def test_ready_to_stopping_when_the_daemon_stops() -> None:
    slot = slot_in(SlotState.READY)
    slot.move(SlotState.STOPPING)
    assert slot.state is SlotState.STOPPING


def test_starting_to_stopping_when_the_daemon_stops() -> None:
    slot = slot_in(SlotState.STARTING)
    slot.move(SlotState.STOPPING)
    assert slot.state is SlotState.STOPPING


def test_stopping_to_exited_when_reaped() -> None:
    slot = slot_in(SlotState.STOPPING)
    slot.exited(now=1.0, how="exit status 0", policy=POLICY)
    assert slot.state is SlotState.EXITED
    assert slot.fast_failures == 0


def test_backoff_and_fatal_to_exited_when_the_daemon_stops() -> None:
    for state in (SlotState.BACKOFF, SlotState.FATAL):
        slot = slot_in(state)
        slot.move(SlotState.EXITED)
        assert slot.state is SlotState.EXITED


@pytest.mark.parametrize(("start", "end"), [
    (a, b) for a in SlotState for b in SlotState if (a, b) not in TRANSITIONS])
def test_every_other_edge_is_refused(start: SlotState, end: SlotState) -> None:
    with pytest.raises(TransitionError):
        slot_in(start).move(end)


def test_backoff_doubles_and_is_capped() -> None:
    assert [POLICY.delay(n) for n in range(6)] == [0.0, 0.5, 1.0, 2.0, 4.0, 4.0]


def test_a_long_run_resets_the_fast_failure_count() -> None:
    slot = slot_in(SlotState.EXITED)
    slot.spawned(1, now=0.0)
    slot.exited(now=0.1, how="exit status 1", policy=POLICY)
    slot.spawned(2, now=1.0)
    slot.exited(now=1.1, how="exit status 1", policy=POLICY)
    assert slot.fast_failures == 2
    slot.spawned(3, now=2.0)
    slot.ready()
    slot.exited(now=100.0, how="killed by SIGKILL", policy=POLICY)
    assert slot.fast_failures == 0 and slot.state is SlotState.BACKOFF


# The pool, driven by events on real processes (a worker stand-in that
# sleeps; a SIGTERM ends it as it ends a worker).


@dataclass
class Spawner:
    """The pool's spawn hook: starts a sleeping child, or fails like a
    missing interpreter; keeps every child so the test can end them."""

    fail: bool = False
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __call__(self, pool: str, index: int) -> int:
        if self.fail:
            raise FileNotFoundError(2, "No such file or directory", "python")
        child = subprocess.Popen(["sleep", "300"], stdin=subprocess.DEVNULL)
        self.children.append(child)
        return child.pid


@dataclass
class Harness:
    """A pool of ``size`` slots with the events it published."""

    pool: WorkerPool
    spawner: Spawner
    events: list[tuple[str, int, dict[str, Any]]]

    @property
    def slot(self) -> WorkerSlot:
        return self.pool.slots[0]

    def kinds(self) -> list[str]:
        return [kind for kind, _, _ in self.events]


@pytest.fixture
def make_pool() -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(size: int = 1, fail: bool = False, on_demand: bool = False) -> Harness:
        events: list[tuple[str, int, dict[str, Any]]] = []
        spawner = Spawner(fail)
        pool = WorkerPool("runtime", size, spawner, POLICY,
                          lambda kind, slot, info: events.append((kind, slot.index, info)),
                          on_demand=on_demand)
        made.append(Harness(pool, spawner, events))
        return made[-1]

    yield make
    for harness in made:
        for child in harness.spawner.children:
            if child.returncode is None:
                child.kill()
                child.wait()


def end(slot: WorkerSlot, sig: int = signal.SIGKILL) -> int:
    """Kill the slot's process with ``sig`` (0: it was already asked to go)
    and reap it; returns the wait status ``WorkerPool.reaped`` takes."""
    assert slot.pid is not None
    if sig:
        os.kill(slot.pid, sig)
    _, status = os.waitpid(slot.pid, 0)
    return status


def start_on_demand(h: Harness, now: float = 0.0) -> None:
    """What the supervision does for an on-demand pool's first call."""
    assert h.pool.not_started() == h.pool.slots
    assert h.pool.start_on_demand(now) == h.pool.slots


def to_starting(h: Harness, now: float = 0.0) -> None:
    assert h.pool.spawn_due(now) == h.pool.slots


def admit(h: Harness) -> None:
    assert h.slot.pid is not None and h.pool.mark_ready(1, h.slot.pid)


def to_ready(h: Harness, now: float = 0.0) -> None:
    to_starting(h, now)
    admit(h)


def to_backoff(h: Harness) -> None:
    # READY for a minute, then killed: an immediate restart is due.
    to_ready(h)
    h.pool.reaped(h.slot, end(h.slot), now=60.0)


def to_fatal(h: Harness, failures: int = POLICY.fatal_after) -> None:
    now = 0.0
    for _ in range(failures):
        to_starting(h, now)
        h.pool.reaped(h.slot, end(h.slot), now=now + 0.1)
        now = h.slot.next_spawn_at


def fast_failures_short_of_fatal(h: Harness) -> None:
    """fatal_after - 1 fast failures, then the last spawn (at t=100)."""
    to_fatal(h, POLICY.fatal_after - 1)
    to_starting(h, 100.0)


def to_stopping(h: Harness) -> None:
    to_ready(h)
    h.pool.stop_all()


def to_exited(h: Harness) -> None:
    to_stopping(h)
    h.pool.reaped(h.slot, end(h.slot, 0), now=1.0)


# edge -> (bring slot 1 to where the edge starts, the event that takes it,
# the state the slot settles in). BACKOFF -> FATAL is taken within the reap
# of the last fast failure, so that slot settles in FATAL from STARTING.
Step = Callable[[Harness], None]
EDGE_EVENTS: dict[tuple[SlotState, SlotState], tuple[Step, Step, SlotState]] = {
    (SlotState.EXITED, SlotState.STARTING): (
        lambda h: None, to_starting, SlotState.STARTING),
    (SlotState.STARTING, SlotState.READY): (
        to_starting, admit, SlotState.READY),
    (SlotState.STARTING, SlotState.BACKOFF): (
        to_starting, lambda h: h.pool.reaped(h.slot, end(h.slot), now=0.2),
        SlotState.BACKOFF),
    (SlotState.READY, SlotState.BACKOFF): (
        to_ready, lambda h: h.pool.reaped(h.slot, end(h.slot), now=60.0), SlotState.BACKOFF),
    (SlotState.BACKOFF, SlotState.STARTING): (
        to_backoff, lambda h: to_starting(h, h.slot.next_spawn_at), SlotState.STARTING),
    (SlotState.BACKOFF, SlotState.FATAL): (
        fast_failures_short_of_fatal,
        lambda h: h.pool.reaped(h.slot, end(h.slot), now=100.1), SlotState.FATAL),
    (SlotState.STARTING, SlotState.STOPPING): (
        to_starting, lambda h: h.pool.stop_all(), SlotState.STOPPING),
    (SlotState.READY, SlotState.STOPPING): (
        to_ready, lambda h: h.pool.stop_all(), SlotState.STOPPING),
    (SlotState.STOPPING, SlotState.EXITED): (
        to_stopping, lambda h: h.pool.reaped(h.slot, end(h.slot, 0), now=1.0),
        SlotState.EXITED),
    (SlotState.BACKOFF, SlotState.EXITED): (
        to_backoff, lambda h: h.pool.stop_all(), SlotState.EXITED),
    (SlotState.FATAL, SlotState.EXITED): (
        to_fatal, lambda h: h.pool.stop_all(), SlotState.EXITED),
    # An on-demand pool's slot (the harness makes the pool so for these).
    (SlotState.NOT_STARTED, SlotState.STARTING): (
        lambda h: None, start_on_demand, SlotState.STARTING),
    (SlotState.STARTING, SlotState.NOT_STARTED): (
        start_on_demand, lambda h: h.pool.reaped(h.slot, end(h.slot), now=0.2),
        SlotState.NOT_STARTED),
}


def test_every_allowed_edge_has_the_event_that_takes_it() -> None:
    assert set(EDGE_EVENTS) == TRANSITIONS


def edge_name(edge: tuple[SlotState, SlotState]) -> str:
    return f"{edge[0].name}-{edge[1].name}"


@pytest.mark.parametrize("edge", sorted(EDGE_EVENTS, key=edge_name), ids=edge_name)
def test_the_event_takes_its_edge(make_pool: Callable[..., Harness],
                                  monkeypatch: pytest.MonkeyPatch,
                                  edge: tuple[SlotState, SlotState]) -> None:
    setup, event, settles_in = EDGE_EVENTS[edge]
    h = make_pool(on_demand=SlotState.NOT_STARTED in edge)
    setup(h)
    taken: list[tuple[SlotState, SlotState]] = []
    move = WorkerSlot.move

    def recording(slot: WorkerSlot, new: SlotState) -> None:
        taken.append((slot.state, new))
        move(slot, new)
    monkeypatch.setattr(WorkerSlot, "move", recording)
    event(h)
    assert edge in taken
    assert h.slot.state is settles_in


def test_only_the_starting_process_of_a_slot_is_admitted_to_take_work(
        make_pool: Callable[..., Harness]) -> None:
    h = make_pool(size=2)
    h.pool.spawn_due(0.0)
    first, second = h.pool.slots
    assert first.pid is not None and second.pid is not None
    # A READY from another slot's process, or for a slot that does not
    # exist, is refused, and nothing becomes READY.
    assert not h.pool.mark_ready(1, second.pid)
    assert not h.pool.mark_ready(3, first.pid)
    assert h.pool.ready_count() == 0
    assert first.state is SlotState.STARTING
    assert h.pool.mark_ready(1, first.pid)
    assert first.state is SlotState.READY and h.pool.ready_count() == 1
    # A second READY changes nothing.
    assert not h.pool.mark_ready(1, first.pid)
    assert h.pool.ready_count() == 1
    assert h.kinds() == ["spawn", "spawn", "ready"]


@pytest.mark.parametrize("reach", [to_backoff, to_fatal, to_stopping, to_exited],
                         ids=["BACKOFF", "FATAL", "STOPPING", "EXITED"])
def test_a_slot_that_is_not_starting_is_never_admitted(
        make_pool: Callable[..., Harness], reach: Step) -> None:
    h = make_pool()
    reach(h)
    state = h.slot.state
    last_pid = h.spawner.children[-1].pid
    assert not h.pool.mark_ready(1, last_pid)
    assert h.slot.state is state
    assert h.pool.ready_count() == 0


def test_a_dead_worker_stops_counting_as_ready_and_its_slot_is_refilled_at_once(
        make_pool: Callable[..., Harness]) -> None:
    h = make_pool()
    to_ready(h)
    dead = h.slot.pid
    h.pool.reaped(h.slot, end(h.slot), now=60.0)
    assert h.pool.ready_count() == 0
    assert h.slot.pid is None and h.pool.by_pid(dead or 0) is None
    assert h.slot.last_exit == "killed by SIGKILL"
    assert h.events[-2:] == [("reap", 1, {"pid": dead, "exit": "killed by SIGKILL"}),
                             ("backoff", 1, {"delay": 0.0})]
    # It ran long enough: the replacement starts on the next sweep.
    assert h.pool.spawn_due(60.0) == [h.slot]
    assert h.slot.state is SlotState.STARTING and h.slot.pid not in (None, dead)
    assert h.slot.restarts == 1


def test_a_fast_failure_is_refilled_only_when_its_backoff_has_run_out(
        make_pool: Callable[..., Harness]) -> None:
    h = make_pool()
    to_starting(h)
    h.pool.reaped(h.slot, end(h.slot), now=0.2)
    assert h.events[-1] == ("backoff", 1, {"delay": pytest.approx(0.5)})
    assert h.pool.spawn_due(0.6) == []
    assert h.slot.state is SlotState.BACKOFF and h.slot.restarts == 0
    assert h.pool.spawn_due(0.7) == [h.slot]
    assert h.slot.state is SlotState.STARTING and h.slot.restarts == 1


def test_a_worker_that_never_says_ready_is_overdue_after_start_timeout(
        make_pool: Callable[..., Harness]) -> None:
    h = make_pool(size=2)
    h.pool.spawn_due(0.0)
    first, second = h.pool.slots
    assert second.pid is not None and h.pool.mark_ready(2, second.pid)
    assert h.pool.overdue_starts(POLICY.start_timeout) == []
    assert h.pool.overdue_starts(POLICY.start_timeout + 0.1) == [first]
    # Killed for it, it failed to start: a fast failure, however long it took.
    h.pool.reaped(first, end(first), now=POLICY.start_timeout + 0.2)
    assert first.state is SlotState.BACKOFF and first.fast_failures == 1


def test_a_fatal_slot_is_never_refilled_and_the_pool_is_fatal_once_all_are(
        make_pool: Callable[..., Harness]) -> None:
    h = make_pool(size=2)
    first, second = h.pool.slots
    h.pool.spawn_due(0.0)
    assert second.pid is not None and h.pool.mark_ready(2, second.pid)
    now = 0.0
    for _ in range(POLICY.fatal_after):
        h.pool.reaped(first, end(first), now=now + 0.1)
        now = first.next_spawn_at
        if first.state is SlotState.BACKOFF:
            assert h.pool.spawn_due(now) == [first]
    assert first.state is SlotState.FATAL
    assert h.events[-1] == ("fatal", 1, {"exit": "killed by SIGKILL"})
    # One slot still serves: the pool is not FATAL, and FATAL is not refilled.
    assert not h.pool.is_fatal()
    assert h.pool.spawn_due(now + 3600.0) == []
    assert first.pid is None and h.pool.ready_count() == 1
    to_fatal_from_ready(h, second)
    assert h.pool.is_fatal() and h.pool.ready_count() == 0


def to_fatal_from_ready(h: Harness, slot: WorkerSlot) -> None:
    now = 1000.0
    h.pool.reaped(slot, end(slot), now=now)  # after a long run: not a fast failure
    assert slot.state is SlotState.BACKOFF and slot.fast_failures == 0
    for _ in range(POLICY.fatal_after):
        assert h.pool.spawn_due(slot.next_spawn_at) == [slot]
        now = slot.next_spawn_at
        h.pool.reaped(slot, end(slot), now=now + 0.1)
    assert slot.state is SlotState.FATAL


def test_a_pool_that_cannot_spawn_at_all_ends_fatal(make_pool: Callable[..., Harness]) -> None:
    h = make_pool(fail=True)
    now = 0.0
    for attempt in range(POLICY.fatal_after):
        assert h.pool.spawn_due(now) == []
        assert h.slot.pid is None
        assert h.slot.last_exit.startswith("spawn failed: ")
        if attempt < POLICY.fatal_after - 1:
            assert h.slot.state is SlotState.BACKOFF
            now = h.slot.next_spawn_at
    assert h.slot.state is SlotState.FATAL and h.pool.is_fatal()
    assert h.events == []  # nothing was ever started


def test_stop_all_terminates_live_workers_and_empties_the_rest(
        make_pool: Callable[..., Harness]) -> None:
    h = make_pool(size=3)
    h.pool.spawn_due(0.0)
    starting, ready, crashed = h.pool.slots
    assert ready.pid is not None and h.pool.mark_ready(2, ready.pid)
    h.pool.reaped(crashed, end(crashed), now=0.1)
    live = [starting.pid, ready.pid]
    h.pool.stop_all()
    assert [s.state for s in h.pool.slots] == [SlotState.STOPPING, SlotState.STOPPING,
                                              SlotState.EXITED]
    assert h.pool.ready_count() == 0 and h.pool.live_pids() == live
    for slot in (starting, ready):
        status = end(slot, 0)  # SIGTERM came from stop_all
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM
        h.pool.reaped(slot, status, now=1.0)
        assert slot.state is SlotState.EXITED and slot.last_exit == "killed by SIGTERM"
    assert h.pool.live_pids() == []
    # A requested stop is not a failure.
    assert (starting.fast_failures, ready.fast_failures) == (0, 0)


def test_an_on_demand_slot_waits_for_its_first_call_and_then_lives_as_any(
        make_pool: Callable[..., Harness]) -> None:
    h = make_pool(on_demand=True)
    # Neither the supervision's sweeps nor a stop start or end it.
    assert h.pool.spawn_due(0.0) == [] and h.spawner.children == []
    h.pool.stop_all()
    assert h.slot.state is SlotState.NOT_STARTED and not h.pool.is_fatal()
    assert h.pool.summary()["note"].startswith("not started (on demand)")
    start_on_demand(h)
    assert h.events[-1][0] == "spawn" and h.events[-1][2]["on_demand"] is True
    admit(h)
    assert "note" not in h.pool.summary() and h.pool.not_started() == []
    # Once READY it is restarted as any worker: killed after a long run, at once.
    h.pool.reaped(h.slot, end(h.slot), now=60.0)
    assert h.slot.state is SlotState.BACKOFF
    assert h.pool.spawn_due(60.0) == [h.slot] and h.slot.restarts == 1


def test_a_failed_first_start_counts_no_failure_and_the_next_call_tries_again(
        make_pool: Callable[..., Harness]) -> None:
    h = make_pool(on_demand=True)
    for attempt in range(POLICY.fatal_after + 1):
        start_on_demand(h, now=float(attempt))
        h.pool.reaped(h.slot, end(h.slot), now=attempt + 0.1)
        assert h.slot.state is SlotState.NOT_STARTED
        assert h.slot.fast_failures == 0 and h.slot.last_exit == "killed by SIGKILL"
    assert not h.pool.is_fatal()
    assert h.pool.spawn_due(100.0) == []


def test_an_on_demand_slot_that_cannot_be_spawned_stays_not_started(
        make_pool: Callable[..., Harness]) -> None:
    h = make_pool(fail=True, on_demand=True)
    for _ in range(POLICY.fatal_after + 1):
        assert h.pool.start_on_demand(0.0) == []
        assert h.slot.state is SlotState.NOT_STARTED and h.slot.pid is None
        assert h.slot.last_exit.startswith("spawn failed: ")
    assert not h.pool.is_fatal() and h.events == []


def test_an_on_demand_start_that_fails_unexpectedly_stays_not_started() -> None:
    # A zygote answering garbage raises ValueError, not OSError: the waiting
    # calls must still hear of the failure, and the next call try again.
    def garbled(pool: str, index: int) -> int:
        raise ValueError("Expecting value: line 1 column 1 (char 0)")

    pool = WorkerPool("stream", 1, Spawner(), POLICY, lambda kind, slot, info: None,
                      on_demand=True, first_spawn=garbled)
    assert pool.start_on_demand(0.0) == []
    slot = pool.slots[0]
    assert slot.state is SlotState.NOT_STARTED and slot.pid is None
    assert slot.last_exit.startswith("spawn failed: Expecting value")
    assert pool.not_started() == [slot]
