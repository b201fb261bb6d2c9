"""The status cache without processes (supervisor/status_cache.py): what is
kept, what drops it, and the races a fill or a seed may lose; over the fake
bus (fakebus.py), with the services built as daemon.py builds them.

The real daemon's side (an exit seen through the change feed, after a
kill -9 of the runtime workers too) is in test_status_cache_cri.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
from fakebus import FakeBus

from podvisor.proto import api_pb2 as api
from podvisor.proto import runtime_ops
from podvisor.proto.errors import NotFound, Unavailable
from podvisor.proto.ops import CATALOGUE
from podvisor.supervisor import opclient, status_cache
from podvisor.supervisor.container_events import EventHub
from podvisor.supervisor.creates import CreateTable
from podvisor.supervisor.opclient import OpClient
from podvisor.supervisor.rpc.container import ContainerService
from podvisor.supervisor.rpc.image import ImageService
from podvisor.supervisor.rpc.sandbox import SandboxService
from podvisor.supervisor.status_cache import (
    IMAGE,
    RUNTIME,
    Answer,
    CacheGuard,
    StatusCache,
    container_key,
    pod_key,
)

pytestmark = pytest.mark.timeout(10)

T = TypeVar("T")

POD = "a" * 64
CID = "c" * 64
OTHER = "d" * 64


@dataclass
class Rig:
    bus: FakeBus
    cache: StatusCache
    sandboxes: SandboxService
    containers: ContainerService
    images: ImageService
    events: EventHub


def make_rig(size: int = 4096) -> Rig:
    bus = FakeBus()
    cache = StatusCache(size)
    ops = OpClient(CacheGuard(bus, cache, CATALOGUE))
    creates = CreateTable()
    return Rig(bus, cache, SandboxService(ops, creates, cache),
               ContainerService(ops, creates, cache), ImageService(ops, _NoMetrics(), cache),
               EventHub(bus, cache))


class _NoMetrics:
    def observe_pull(self, result: str, received: int = 0, layers: int = 0) -> None:
        pass


def serve(rpc: Coroutine[Any, Any, T]) -> T:
    async def call() -> T:
        opclient.begin(asyncio.get_running_loop().time() + 5)
        return await rpc
    return asyncio.run(call())


def container_status(container_id: str, state: int, exit_code: int = 0) -> bytes:
    return api.ContainerStatus(id=container_id, state=state,
                               exit_code=exit_code).SerializeToString()


class Worker:
    """What the runtime pool answers: one container's state, changed by the test."""

    def __init__(self, bus: FakeBus) -> None:
        self.state = api.CONTAINER_RUNNING
        self.exit_code = 0
        bus.on("runtime.container_status", self.status)
        bus.on("runtime.sandbox_status", self.pod)

    def status(self, args: dict[str, Any]) -> dict[str, Any]:
        if not CID.startswith(args["id"]):
            raise NotFound(f"container {args['id']} not found")
        return {"status": container_status(CID, self.state, self.exit_code),
                "info": {"info": "{}"} if args["verbose"] else {}}

    def pod(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"status": api.PodSandboxStatus(id=POD, state=api.SANDBOX_READY)
                .SerializeToString(),
                "containers": [container_status(CID, self.state, self.exit_code)],
                "info": {}}


def read(rig: Rig, container_id: str = CID, verbose: bool = False
         ) -> api.ContainerStatusResponse:
    return serve(rig.containers.container_status(
        api.ContainerStatusRequest(container_id=container_id, verbose=verbose)))


def status_reads(rig: Rig) -> int:
    return len(rig.bus.sent_to("runtime.container_status"))


def test_a_second_read_is_answered_from_memory() -> None:
    rig = make_rig()
    Worker(rig.bus)
    assert read(rig).status.state == api.CONTAINER_RUNNING
    assert read(rig).status.state == api.CONTAINER_RUNNING
    assert status_reads(rig) == 1
    assert rig.cache.stats == {"hit": 1, "miss": 1, "stale": 0}


def test_reads_by_prefix_always_ask_the_pool() -> None:
    rig = make_rig()
    Worker(rig.bus)
    for _ in range(2):
        assert read(rig, CID[:12]).status.id == CID
    assert status_reads(rig) == 2
    assert len(rig.cache) == 0


def test_verbose_reads_are_kept_apart_and_dropped_with_the_plain_ones() -> None:
    rig = make_rig()
    worker = Worker(rig.bus)
    for _ in range(2):
        assert read(rig, verbose=True).info == {"info": "{}"}
        assert not read(rig).info
    assert status_reads(rig) == 2

    def stop(args: dict[str, Any]) -> dict[str, Any]:
        worker.state = api.CONTAINER_EXITED
        return {"found": True, "id": CID, "sandbox_id": POD, "stopped": True}
    rig.bus.on("runtime.container_stop", stop)
    serve(rig.containers.stop_container(api.StopContainerRequest(container_id=CID)))
    assert read(rig, verbose=True).status.state == api.CONTAINER_EXITED
    assert read(rig).status.state == api.CONTAINER_EXITED
    assert status_reads(rig) == 4


def test_a_stop_drops_the_container_and_the_read_after_it_sees_the_exit() -> None:
    rig = make_rig()
    worker = Worker(rig.bus)
    serve(rig.sandboxes.pod_sandbox_status(api.PodSandboxStatusRequest(pod_sandbox_id=POD)))
    read(rig)

    def stop(args: dict[str, Any]) -> dict[str, Any]:
        worker.state, worker.exit_code = api.CONTAINER_EXITED, 137
        return {"found": True, "id": CID, "sandbox_id": POD, "stopped": True}
    rig.bus.on("runtime.container_stop", stop)
    # By a prefix, as crictl sends it: the full id's entries go too.
    serve(rig.containers.stop_container(api.StopContainerRequest(container_id=CID[:8])))
    assert read(rig).status.exit_code == 137
    pod = serve(rig.sandboxes.pod_sandbox_status(api.PodSandboxStatusRequest(
        pod_sandbox_id=POD)))
    assert pod.containers_statuses[0].state == api.CONTAINER_EXITED
    assert pod.timestamp > 0


def test_a_failed_mutation_drops_too() -> None:
    rig = make_rig()
    Worker(rig.bus)
    read(rig)
    rig.bus.raises("runtime.container_update", Unavailable("the worker died"))
    with pytest.raises(Unavailable):
        serve(rig.containers.update_container_resources(
            api.UpdateContainerResourcesRequest(container_id=CID)))
    read(rig)
    assert status_reads(rig) == 2


def test_a_read_that_ran_during_a_stop_is_not_kept() -> None:
    """The fill saw the container half stopped: the stop's own drops refuse it."""
    rig = make_rig()
    worker = Worker(rig.bus)

    async def race() -> api.ContainerStatusResponse:
        opclient.begin(asyncio.get_running_loop().time() + 5)
        release = asyncio.Event()

        async def stop(args: dict[str, Any]) -> dict[str, Any]:
            await release.wait()
            worker.state = api.CONTAINER_EXITED
            return {"found": True, "id": CID, "sandbox_id": POD, "stopped": True}

        async def slow_status(args: dict[str, Any]) -> dict[str, Any]:
            answer = worker.status(args)  # read before the stop ends
            release.set()
            await asyncio.sleep(0.01)  # answered after it
            return answer
        rig.bus.on("runtime.container_stop", stop)
        rig.bus.on("runtime.container_status", slow_status)
        stopping = asyncio.create_task(rig.containers.stop_container(
            api.StopContainerRequest(container_id=CID)))
        await asyncio.sleep(0)
        seen = await rig.containers.container_status(api.ContainerStatusRequest(container_id=CID))
        await stopping
        assert seen.status.state == api.CONTAINER_RUNNING
        rig.bus.on("runtime.container_status", worker.status)
        return await rig.containers.container_status(
            api.ContainerStatusRequest(container_id=CID))

    assert asyncio.run(race()).status.state == api.CONTAINER_EXITED
    assert rig.cache.stats["stale"] == 1


def test_the_change_feed_drops_what_it_names_and_a_failed_poll_flushes() -> None:
    rig = make_rig()
    worker = Worker(rig.bus)
    read(rig)
    worker.state, worker.exit_code = api.CONTAINER_EXITED, 3
    exited = api.ContainerEventResponse(
        container_id=CID, container_event_type=api.CONTAINER_STOPPED_EVENT,
        pod_sandbox_status=api.PodSandboxStatus(id=POD))
    changes = runtime_ops.Changes(cursor=1, keys=[f"exit.{CID}"],
                                  events=[exited.SerializeToString()])
    # Another container's change leaves this one kept...
    other = api.ContainerEventResponse(container_id=OTHER,
                                       container_event_type=api.CONTAINER_STOPPED_EVENT)
    rig.cache.feed_changed(runtime_ops.Changes(cursor=1, keys=["x"], events=[b""]), [other])
    assert read(rig).status.state == api.CONTAINER_RUNNING
    # ...and so do this one's start and creation, which ops made (and dropped for).
    for kind in (api.CONTAINER_CREATED_EVENT, api.CONTAINER_STARTED_EVENT):
        made = api.ContainerEventResponse(container_id=CID, container_event_type=kind,
                                          pod_sandbox_status=api.PodSandboxStatus(id=POD))
        rig.cache.feed_changed(runtime_ops.Changes(cursor=1, keys=["z"], events=[b""]), [made])
        assert read(rig).status.state == api.CONTAINER_RUNNING
    assert status_reads(rig) == 1
    # A container's creation drops its pod's answer (which left it out while
    # it was being created), not the container's.
    serve(rig.sandboxes.pod_sandbox_status(api.PodSandboxStatusRequest(pod_sandbox_id=POD)))
    created = api.ContainerEventResponse(container_id=OTHER,
                                         container_event_type=api.CONTAINER_CREATED_EVENT,
                                         pod_sandbox_status=api.PodSandboxStatus(id=POD))
    rig.cache.feed_changed(runtime_ops.Changes(cursor=1, keys=["n"], events=[b""]), [created])
    assert rig.cache.get(pod_key(POD)) is None
    assert rig.cache.get(container_key(CID)) is not None
    rig.cache.feed_changed(changes, [exited])
    assert read(rig).status.exit_code == 3
    # A change that made no event (an infra container's exit) flushes the pool.
    rig.cache.feed_changed(runtime_ops.Changes(cursor=2, keys=["y"], events=[]), [])
    assert rig.cache.get(container_key(CID)) is None


def test_a_start_seeds_its_status_unless_it_was_dropped_meanwhile() -> None:
    rig = make_rig()
    Worker(rig.bus)

    def start_dropping(dropped: str) -> None:
        async def start(args: dict[str, Any]) -> dict[str, Any]:
            rig.cache.drop(RUNTIME, [dropped])  # the feed, meanwhile
            return {"id": CID, "status": container_status(CID, api.CONTAINER_RUNNING),
                    "info": {"info": '{"pid": 7}'}}
        rig.bus.on("runtime.container_start", start)
        serve(rig.containers.start_container(api.StartContainerRequest(container_id=CID)))

    # Another container's change leaves the seed good, plain and verbose...
    start_dropping(OTHER)
    assert read(rig).status.state == api.CONTAINER_RUNNING
    assert read(rig, verbose=True).info == {"info": '{"pid": 7}'}
    assert status_reads(rig) == 0
    # ...this one's (its exit, say) does not.
    start_dropping(CID)
    read(rig)
    assert status_reads(rig) == 1


def test_answers_holding_a_running_container_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    """A monitor and its container both killed leave no exit file: only
    asking the pool again shows it (module docstring)."""
    monkeypatch.setattr(status_cache, "LIVE_TTL", 0.0)
    rig = make_rig()
    worker = Worker(rig.bus)
    read(rig)
    read(rig)
    assert status_reads(rig) == 2
    worker.state = api.CONTAINER_EXITED
    read(rig)
    read(rig)
    assert status_reads(rig) == 3


def test_the_log_forgets_old_drops_and_refuses_fills_older_than_it() -> None:
    cache = StatusCache(10)
    token = cache.token()
    for _ in range(2000):
        cache.drop(RUNTIME, [OTHER])
    assert not cache.put(container_key(CID), Answer(b"x", frozenset([CID])), token)
    assert cache.put(container_key(CID), Answer(b"x", frozenset([CID])), cache.token())


def test_the_cache_is_bounded_least_recently_used_first() -> None:
    cache = StatusCache(2)
    for name in ("1", "2", "3"):
        cache.put(container_key(name * 64), Answer(b"x", frozenset([name * 64])),
                  cache.token())
        cache.get(container_key("1" * 64))
    assert len(cache) == 2
    assert cache.get(container_key("1" * 64)) is not None
    assert cache.get(container_key("2" * 64)) is None


def test_image_answers_are_dropped_by_any_image_op_and_a_pull_seeds_its_name() -> None:
    rig = make_rig()
    images = ["one"]

    def listed(args: dict[str, Any]) -> dict[str, Any]:
        response = api.ListImagesResponse(images=[api.Image(id=i) for i in images])
        return {"response": response.SerializeToString()}

    def status(args: dict[str, Any]) -> dict[str, Any]:
        name = api.ImageStatusRequest.FromString(args["request"]).image.image
        response = api.ImageStatusResponse()
        if name in images:
            response.image.id = name
        return {"response": response.SerializeToString()}

    def pull(args: dict[str, Any]) -> dict[str, Any]:
        images.append("two")
        return {"response": api.PullImageResponse(image_ref="two").SerializeToString(),
                "bytes_received": 1, "layers_fetched": 0}

    rig.bus.on("image.list_images", listed)
    rig.bus.on("image.image_status", status)
    rig.bus.on("image.pull_image", pull)
    rig.bus.returns("image.resolve_image", {"id": "two", "repo_tags": [], "repo_digests": [],
                                            "user": "", "config": {}, "layers": []})

    def list_ids() -> list[str]:
        return [i.id for i in serve(rig.images.list_images(api.ListImagesRequest())).images]

    assert list_ids() == ["one"]
    assert list_ids() == ["one"]
    serve(rig.images.pull_image(api.PullImageRequest(image=api.ImageSpec(image="two"))))
    assert list_ids() == ["one", "two"]
    statuses = len(rig.bus.sent_to("image.image_status"))
    got = serve(rig.images.image_status(api.ImageStatusRequest(image=api.ImageSpec(
        image="two"))))
    assert got.image.id == "two"
    assert len(rig.bus.sent_to("image.image_status")) == statuses  # the pull's seed
    assert rig.cache.drop(IMAGE, None) > 0
    assert len(rig.cache) == 0
