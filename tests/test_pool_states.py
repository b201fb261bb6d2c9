"""The worker slot state machine, one test per edge, and the backoff math."""

from __future__ import annotations

import pytest

from podvisor.supervisor.pool import (
    TRANSITIONS,
    RestartPolicy,
    SlotState,
    TransitionError,
    WorkerSlot,
)

POLICY = RestartPolicy(backoff_base=0.5, backoff_cap=4.0, startsecs=1.0, fatal_after=3)
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


def test_every_allowed_edge_is_tested_above() -> None:
    assert len(TRANSITIONS) == 11


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
