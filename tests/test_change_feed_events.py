"""runtime.changes_since over real records on a temporary layout, without
processes: each change becomes one whole CRI event with the pod's status
and its containers', an exit waits for its container's STARTED, an infra
container's exit makes no event, and an unreadable record does not stall
the feed."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from test_runtime_records import (
    CONTAINER_ID,
    SANDBOX_ID,
    ctx,
    ready_pod,
    reserve_container,
    runtimes,
)

from podvisor.proto import api_pb2 as api
from podvisor.proto import runtime_ops as rt
from podvisor.workers.runtime import containers
from podvisor.workers.runtime.changes import Change
from podvisor.workers.runtime.layout import Layout
from podvisor.workers.runtime.ops import START_WINDOW_NS, RuntimeService


@pytest.fixture
def service(tmp_path: Path) -> RuntimeService:
    layout = Layout.from_settings({"root": str(tmp_path / "root"),
                                   "runroot": str(tmp_path / "run")})
    ready_pod(layout)
    reserve_container(layout)
    return RuntimeService(layout, runtimes(), "pause:1")


def set_state(service: RuntimeService, state: str) -> None:
    record = service.layout.containers.load(CONTAINER_ID)
    assert record is not None
    record.update(state=state, started_at=2)
    service.layout.containers.save(CONTAINER_ID, record)


def exit_file(service: RuntimeService, object_id: str, age_ns: int = 0) -> None:
    os.makedirs(service.layout.exits_dir, exist_ok=True)
    path = os.path.join(service.layout.exits_dir, object_id)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"exit_code": 0, "exited_at_ns": 3}, f)
    if age_ns:
        stamp = time.time_ns() - age_ns
        os.utime(path, ns=(stamp, stamp))


def feed(service: RuntimeService, recent: list[str] | None = None) -> rt.Changes:
    return service.changes_since(ctx(), rt.ChangesSince(cursor=0, wait=0.0,
                                                        recent=recent or []))


def events(changes: rt.Changes) -> list[api.ContainerEventResponse]:
    return [api.ContainerEventResponse.FromString(raw) for raw in changes.events]


def test_a_started_container_that_exits_gives_started_then_stopped_with_statuses(
        service: RuntimeService) -> None:
    set_state(service, containers.CREATED)
    # The exit is stamped before the STARTED note, as with a quick command.
    exit_file(service, CONTAINER_ID, age_ns=1_000_000)
    service.journal.note(Change.STARTED, CONTAINER_ID, SANDBOX_ID)
    set_state(service, containers.RUNNING)
    answer = events(feed(service))
    assert [(e.container_id, e.container_event_type) for e in answer] == [
        (CONTAINER_ID, api.CONTAINER_STARTED_EVENT), (CONTAINER_ID, api.CONTAINER_STOPPED_EVENT)]
    for event in answer:
        assert event.pod_sandbox_status.id == SANDBOX_ID
        assert event.pod_sandbox_status.network.ip == "10.88.0.5"
        # The exit folded into the status: the kubelet reads it from here.
        assert [(s.id, s.state) for s in event.containers_statuses] == [
            (CONTAINER_ID, api.CONTAINER_EXITED)]


def test_an_exit_waits_while_the_start_is_in_flight_then_is_answered(
        service: RuntimeService) -> None:
    set_state(service, containers.CREATED)
    exit_file(service, CONTAINER_ID)
    held = feed(service)
    assert held.keys == [] and held.events == []
    assert held.cursor == 0  # the cursor does not pass it
    # Past the window (a created container stopped, a failed start): answered.
    exit_file(service, CONTAINER_ID, age_ns=START_WINDOW_NS + 1_000_000)
    answer = feed(service)
    assert answer.keys == [f"exit.{CONTAINER_ID}"]
    assert [e.container_event_type for e in events(answer)] == [api.CONTAINER_STOPPED_EVENT]


def test_an_infra_exit_is_answered_without_an_event(service: RuntimeService) -> None:
    exit_file(service, SANDBOX_ID)
    answer = feed(service)
    assert answer.keys == [f"exit.{SANDBOX_ID}"] and answer.events == []


def test_an_exit_read_after_the_removal_still_names_its_pod(service: RuntimeService) -> None:
    exit_file(service, CONTAINER_ID)
    service.layout.containers.delete(CONTAINER_ID)
    service.journal.note(Change.DELETED, CONTAINER_ID, SANDBOX_ID)
    answer = events(feed(service))
    assert [(e.container_event_type, e.pod_sandbox_status.id) for e in answer] == [
        (api.CONTAINER_STOPPED_EVENT, SANDBOX_ID), (api.CONTAINER_DELETED_EVENT, SANDBOX_ID)]
    assert [e.containers_statuses for e in answer] == [[], []]


def test_an_unreadable_record_does_not_stall_the_feed(service: RuntimeService) -> None:
    set_state(service, containers.RUNNING)
    good = service.layout.containers.load(CONTAINER_ID)
    assert good is not None
    service.journal.note(Change.STARTED, CONTAINER_ID, "")
    path = os.path.join(service.layout.containers.path, CONTAINER_ID + ".json")
    with open(path, "w", encoding="utf-8") as f:
        f.write("{not json")
    first = feed(service)
    # Answered without an event (the error is logged), not failed: a failed
    # poll would be asked again forever with the same cursor.
    assert len(first.keys) == 1 and first.keys[0].startswith(f"started.{CONTAINER_ID}.")
    assert first.events == []
    service.layout.containers.save(CONTAINER_ID, good)
    service.journal.note(Change.STOPPED, CONTAINER_ID, SANDBOX_ID)
    answer = feed(service, recent=first.keys)
    assert [(e.container_id, e.container_event_type) for e in events(answer)] == [
        (CONTAINER_ID, api.CONTAINER_STOPPED_EVENT)]
