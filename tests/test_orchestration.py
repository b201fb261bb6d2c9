"""Orchestration in the supervisor, tested without processes (issue 10):
the RPC services over a fake bus (fakebus.py), so each test runs in
milliseconds and can state every op it expects, in order, with the deadline
policy it was sent under.

What is covered here: the op order of RunPodSandbox, CreateContainer and
RemovePodSandbox; cleanup stacks (newest first, past a failing undo, the
caller keeping the original error); the create table (joins, a create
that outlives its caller, an unclaimed create removed); container events
(types, order, statuses, STOPPED once); the deadline policies. What only
real processes show (kills, hangs, the kernel) stays in the slow tests.

The fake answers have the shapes the real workers answer with (their
docstrings and return statements in workers/*/ops.py, workers/runtime/
sandbox.py and containers.py), built by the ``*_answer`` helpers below.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
from fakebus import FakeBus, Handler, Sent

from podvisor.proto import api_pb2 as api
from podvisor.proto import runtime_ops
from podvisor.proto.codes import Code
from podvisor.proto.errors import (
    BusError,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    NotFound,
    Unavailable,
)
from podvisor.proto.layers import chain_id
from podvisor.proto.naming import sandbox_name
from podvisor.proto.ops import CATALOGUE
from podvisor.supervisor import opclient
from podvisor.supervisor.container_events import EventHub
from podvisor.supervisor.creates import CreateTable
from podvisor.supervisor.opclient import CLEANUP_TIMEOUT, CREATE_GRACE, Deadline, OpClient
from podvisor.supervisor.rpc.container import ContainerService
from podvisor.supervisor.rpc.sandbox import SandboxService
from podvisor.supervisor.status_cache import CacheGuard, StatusCache

pytestmark = pytest.mark.timeout(10)

T = TypeVar("T")

CALL_TIME = 5.0  # a CRI call's deadline, from its start
EVENT_WAIT = 1.0
POD_META = api.PodSandboxMetadata(name="web", namespace="default", uid="uid-1")
# The create table keys pod creates by kind and the CRI metadata.
POD_CREATE = "pod sandbox default/web/uid-1/0"
POD_IP = "10.88.0.5"
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
SANDBOX_ID = "a" * 64
CONTAINER_ID = "c" * 64


# ---- the rig: services over one fake bus --------------------------------------


@dataclass
class Rig:
    bus: FakeBus
    creates: CreateTable
    events: EventHub
    sandboxes: SandboxService
    containers: ContainerService


def make_rig(claim_timeout: float = 60.0) -> Rig:
    """The services as daemon.py builds them, each holding only what it uses."""
    bus = FakeBus()
    cache = StatusCache(4096)
    ops = OpClient(CacheGuard(bus, cache, CATALOGUE))
    creates = CreateTable(claim_timeout)
    events = EventHub(bus, cache)
    return Rig(bus, creates, events, SandboxService(ops, creates, cache),
               ContainerService(ops, creates, cache))


async def serve(deadline: float, rpc: Coroutine[Any, Any, T]) -> T:
    """Serve ``rpc`` as the gRPC front does: in a task of its own (so its
    context holds its call's deadline only), under ``deadline``."""
    async def call() -> T:
        opclient.begin(deadline)
        return await rpc
    return await asyncio.create_task(call())


def policy(sent: Sent, call_deadline: float) -> Deadline | None:
    """Which deadline policy ``sent`` carries, for a call due at ``call_deadline``."""
    if sent.deadline == call_deadline:
        return Deadline.CALL
    if sent.deadline == call_deadline + CREATE_GRACE:
        return Deadline.CREATE
    # Taken by the op client just before the fake bus logged the request.
    if 0 <= sent.at + CLEANUP_TIMEOUT - sent.deadline < 0.1:
        return Deadline.CLEANUP
    return None


def fails_with(code: Code, coro: Coroutine[Any, Any, object]) -> BusError:
    """Run ``coro``; it must raise a BusError with ``code``."""
    with pytest.raises(BusError) as raised:
        asyncio.run(coro)
    assert raised.value.code == code, raised.value
    return raised.value


# ---- answers shaped as the real workers' --------------------------------------


def reserve_answer(pause_image: str = "") -> Handler:
    """runtime.sandbox_reserve (workers/runtime/sandbox.py reserve)."""
    def reserve(args: dict[str, Any]) -> dict[str, Any]:
        config = api.PodSandboxConfig.FromString(args["config"])
        host_network = config.linux.security_context.namespace_options.network == api.NODE
        return {"id": args["id"], "name": sandbox_name(config.metadata),
                "runtime_handler": "runc", "host_network": host_network,
                "pause_image": pause_image}
    return reserve


def net_setup_answer(args: dict[str, Any]) -> dict[str, Any]:
    """net.setup: the pod network (workers/net/ops.py)."""
    return {"pod_id": args["pod_id"], "host_network": args["host_network"],
            "netns_path": f"/var/run/netns/{args['pod_id']}", "ips": [POD_IP],
            "network_name": "podvisor", "config_file": "/etc/cni/net.d/10-podvisor.conflist"}


def netns_answer(args: dict[str, Any]) -> dict[str, Any]:
    """net.ensure_netns: the namespace only, no addresses yet."""
    return {**net_setup_answer(args), "ips": []}


def sandbox_status_answer(sandbox_id: str, state: int = api.SANDBOX_READY,
                          containers: list[api.ContainerStatus] | None = None
                          ) -> dict[str, Any]:
    """runtime.sandbox_status (workers/runtime/ops.py sandbox_status)."""
    status = api.PodSandboxStatus(
        id=sandbox_id, metadata=POD_META, state=state, created_at=1, labels={"app": "web"},
        runtime_handler="runc", network=api.PodSandboxNetworkStatus(ip=POD_IP))
    return {"status": status.SerializeToString(),
            "containers": [c.SerializeToString() for c in containers or []], "info": {}}


def image_answer(image_id: str, diff_ids: list[str]) -> dict[str, Any]:
    """image.resolve_image (workers/image/ops.py)."""
    return {"id": image_id, "repo_tags": [PAUSE_IMAGE], "repo_digests": [], "user": "",
            "config": {"config": {"Entrypoint": ["/pause"]}},
            "layers": [{"digest": f"sha256:blob{n}", "media_type":
                        "application/vnd.oci.image.layer.v1.tar+gzip", "size": 10,
                        "diff_id": diff_id, "path": f"/var/lib/podvisor/blobs/{n}"}
                       for n, diff_id in enumerate(diff_ids)]}


def unpack_answer(args: dict[str, Any]) -> dict[str, Any]:
    """storage.unpack_layers (workers/storage/ops.py)."""
    done = []
    for layer in args["layers"]:
        chain = chain_id(layer["parent"], layer["diff_id"])
        done.append({"chain_id": chain, "diff_id": layer["diff_id"], "size": 10,
                     "path": f"/var/lib/podvisor/layers/{chain}", "unpacked": True})
    return {"layers": done}


def rootfs_answer(args: dict[str, Any]) -> dict[str, Any]:
    """storage.create_rootfs (workers/storage/ops.py)."""
    return {"container_id": args["container_id"], "path": f"/run/rootfs/{args['container_id']}",
            "upper_dir": f"/var/lib/podvisor/upper/{args['container_id']}",
            "layers": args["layers"], "mount_label": "", "created": True}


def removed_rootfs(args: dict[str, Any]) -> dict[str, Any]:
    return {"container_id": args["container_id"], "removed": True}


def sandbox_stopped(args: dict[str, Any]) -> dict[str, Any]:
    return {"found": True, "id": args["id"], "stopped": True}


def sandbox_removed(args: dict[str, Any]) -> dict[str, Any]:
    return {"found": True, "id": args["id"]}


def net_torn_down(args: dict[str, Any]) -> dict[str, Any]:
    return {"pod_id": args["pod_id"], "found": True}


def wire_pod_create(bus: FakeBus, pause_image: str = "") -> None:
    """Every op of a RunPodSandbox that succeeds, and of its undo."""
    bus.on("runtime.sandbox_reserve", reserve_answer(pause_image))
    bus.on("net.ensure_netns", netns_answer)
    bus.on("net.setup", net_setup_answer)
    bus.on("runtime.sandbox_prepare", lambda args: {})
    bus.on("runtime.sandbox_start", lambda args: {})
    bus.on("net.teardown", net_torn_down)
    bus.on("runtime.sandbox_stop", sandbox_stopped)
    bus.on("runtime.sandbox_remove", sandbox_removed)
    bus.on("storage.remove_rootfs", removed_rootfs)


def wire_pause_image(bus: FakeBus) -> None:
    """A pause image absent until pulled, with two layers."""
    pulled: list[bool] = []

    def resolve(args: dict[str, Any]) -> dict[str, Any]:
        if not pulled:
            raise NotFound(f"image {args['image']} is not present on this node")
        return image_answer("sha256:pause", ["sha256:d0", "sha256:d1"])

    def pull(args: dict[str, Any]) -> dict[str, Any]:
        assert api.PullImageRequest.FromString(args["request"]).image.image == PAUSE_IMAGE
        pulled.append(True)
        return {"response": api.PullImageResponse(image_ref="sha256:pause").SerializeToString(),
                "bytes_received": 10, "layers_fetched": 2}

    bus.on("image.resolve_image", resolve)
    bus.on("image.pull_image", pull)
    bus.on("storage.unpack_layers", unpack_answer)
    bus.on("storage.create_rootfs", rootfs_answer)


# A RunPodSandbox's ops, in the order they are sent (setup and prepare at once).
POD_STAGES = ["runtime.sandbox_reserve", "net.ensure_netns", "net.setup",
              "runtime.sandbox_prepare", "runtime.sandbox_start"]


def run_request() -> api.RunPodSandboxRequest:
    return api.RunPodSandboxRequest(config=api.PodSandboxConfig(
        metadata=POD_META, hostname="web"))


async def run_pod(rig: Rig, deadline: float) -> str:
    response = await serve(deadline, rig.sandboxes.run_pod_sandbox(run_request()))
    return str(response.pod_sandbox_id)


# ---- RunPodSandbox ---------------------------------------------------------------


def test_run_pod_sandbox_sends_its_stages_in_order_under_the_create_deadline() -> None:
    async def scenario() -> None:
        rig = make_rig()
        wire_pod_create(rig.bus)
        deadline = time.monotonic() + CALL_TIME
        sandbox_id = await run_pod(rig, deadline)
        assert rig.bus.ops() == POD_STAGES
        assert {policy(s, deadline) for s in rig.bus.sent} == {Deadline.CREATE}
        reserve, netns, setup, prepare, start = rig.bus.sent
        assert reserve.args["id"] == setup.args["pod_id"] == start.args["id"] == sandbox_id
        assert netns.args == setup.args
        assert setup.args["host_network"] is False
        # The namespace reaches the infra's start; the addresses, the last
        # stage. No pause image.
        netns_path = f"/var/run/netns/{sandbox_id}"
        assert prepare.args == {"id": sandbox_id, "netns_path": netns_path,
                                "infra_image": None}
        assert start.args == {"id": sandbox_id, "netns_path": netns_path,
                              "ips": [POD_IP], "infra_image": None}
    asyncio.run(scenario())


def test_run_pod_sandbox_of_host_network_sends_no_namespace_stages() -> None:
    async def scenario() -> None:
        rig = make_rig()
        wire_pod_create(rig.bus)
        request = run_request()
        request.config.linux.security_context.namespace_options.network = api.NODE
        response = await serve(time.monotonic() + CALL_TIME,
                               rig.sandboxes.run_pod_sandbox(request))
        assert rig.bus.ops() == ["runtime.sandbox_reserve", "net.setup",
                                 "runtime.sandbox_start"]
        start = rig.bus.sent_to("runtime.sandbox_start")[0].args
        assert start == {"id": response.pod_sandbox_id, "netns_path": None,
                         "ips": [POD_IP], "infra_image": None}
    asyncio.run(scenario())


def test_run_pod_sandbox_pulls_and_mounts_the_pause_image_reserve_names() -> None:
    async def scenario() -> None:
        rig = make_rig()
        wire_pod_create(rig.bus, pause_image=PAUSE_IMAGE)
        wire_pause_image(rig.bus)
        deadline = time.monotonic() + CALL_TIME
        sandbox_id = await run_pod(rig, deadline)
        assert rig.bus.ops() == [
            "runtime.sandbox_reserve", "net.ensure_netns", "net.setup",
            "image.resolve_image", "image.pull_image", "image.resolve_image",
            "storage.unpack_layers", "storage.create_rootfs",
            "runtime.sandbox_prepare", "runtime.sandbox_start"]
        assert {policy(s, deadline) for s in rig.bus.sent} == {Deadline.CREATE}
        [unpack] = rig.bus.sent_to("storage.unpack_layers")
        bottom, top = unpack.args["layers"]
        assert (bottom["parent"], top["parent"]) == (None, "sha256:d0")
        rootfs = rig.bus.sent_to("storage.create_rootfs")[0].args
        assert rootfs == {"container_id": sandbox_id,
                          "layers": [chain_id(None, "sha256:d0"),
                                     chain_id(chain_id(None, "sha256:d0"), "sha256:d1")],
                          "mount_label": None, "idmap": None}
        prepare = rig.bus.sent_to("runtime.sandbox_prepare")[0].args
        assert prepare["infra_image"] == {"rootfs": f"/run/rootfs/{sandbox_id}",
                                          "args": ["/pause"]}
    asyncio.run(scenario())


def test_run_pod_sandbox_undoes_newest_first_when_net_setup_fails() -> None:
    rig = make_rig()
    deadline = time.monotonic() + CALL_TIME

    async def scenario() -> None:
        wire_pod_create(rig.bus)
        rig.bus.raises("net.setup", Unavailable("the net pool has no live worker"))
        await run_pod(rig, deadline)

    fails_with(Code.UNAVAILABLE, scenario())
    assert rig.bus.ops() == [*POD_STAGES[:4], "net.teardown", "runtime.sandbox_stop",
                             "storage.remove_rootfs", "runtime.sandbox_remove"]
    sandbox_id = rig.bus.sent[0].args["id"]
    undo = rig.bus.sent[4:]
    assert [s.args for s in undo] == [{"pod_id": sandbox_id}, {"id": sandbox_id},
                                      {"container_id": sandbox_id}, {"id": sandbox_id}]
    assert {policy(s, deadline) for s in undo} == {Deadline.CLEANUP}


def test_run_pod_sandbox_removes_the_pause_rootfs_after_the_infra_stop_when_prepare_fails(
        ) -> None:
    rig = make_rig()
    deadline = time.monotonic() + CALL_TIME

    async def scenario() -> None:
        wire_pod_create(rig.bus, pause_image=PAUSE_IMAGE)
        wire_pause_image(rig.bus)
        rig.bus.raises("runtime.sandbox_prepare", Internal("runc create failed"))
        await run_pod(rig, deadline)

    fails_with(Code.INTERNAL, scenario())
    start = rig.bus.ops().index("runtime.sandbox_prepare")
    undo = rig.bus.sent[start + 1:]
    # The infra may run from the rootfs: it is stopped first.
    assert [s.op for s in undo] == ["net.teardown", "runtime.sandbox_stop",
                                    "storage.remove_rootfs", "runtime.sandbox_remove"]
    assert {policy(s, deadline) for s in undo} == {Deadline.CLEANUP}


def test_a_failing_undo_does_not_stop_the_others_nor_change_the_callers_error() -> None:
    rig = make_rig()

    async def scenario() -> None:
        wire_pod_create(rig.bus)
        rig.bus.raises("net.setup", Unavailable("the net pool has no live worker"))
        rig.bus.raises("net.teardown", Internal("netns busy"))
        rig.bus.raises("runtime.sandbox_stop", DeadlineExceeded("infra did not stop"))
        await run_pod(rig, time.monotonic() + CALL_TIME)

    error = fails_with(Code.UNAVAILABLE, scenario())
    assert error.message == "the net pool has no live worker"
    assert rig.bus.ops()[4:] == ["net.teardown", "runtime.sandbox_stop",
                                 "storage.remove_rootfs", "runtime.sandbox_remove"]


def test_a_failed_cni_add_is_undone_only_once_the_infra_start_beside_it_is_done() -> None:
    async def scenario() -> None:
        rig = make_rig()
        wire_pod_create(rig.bus)
        release = asyncio.Event()

        async def slow_prepare(args: dict[str, Any]) -> dict[str, Any]:
            await release.wait()
            return {}

        rig.bus.raises("net.setup", Unavailable("the net pool has no live worker"))
        rig.bus.on("runtime.sandbox_prepare", slow_prepare)
        call = asyncio.create_task(run_pod(rig, time.monotonic() + CALL_TIME))
        await rig.bus.wait_sent("runtime.sandbox_prepare")
        for _ in range(10):
            await asyncio.sleep(0)
        # The ADD failed meanwhile, yet nothing is undone under the start.
        assert rig.bus.ops() == POD_STAGES[:4]
        release.set()
        with pytest.raises(Unavailable):
            await call
        assert rig.bus.ops()[4:] == ["net.teardown", "runtime.sandbox_stop",
                                     "storage.remove_rootfs", "runtime.sandbox_remove"]
    asyncio.run(scenario())


def test_a_failed_create_leaves_nothing_to_join_so_a_retry_starts_afresh() -> None:
    async def scenario() -> None:
        rig = make_rig()
        wire_pod_create(rig.bus)
        rig.bus.raises("net.setup", Unavailable("the net pool has no live worker"))
        with pytest.raises(Unavailable):
            await run_pod(rig, time.monotonic() + CALL_TIME)
        assert not rig.creates.pending(POD_CREATE)
        rig.bus.on("net.setup", net_setup_answer)
        sandbox_id = await run_pod(rig, time.monotonic() + CALL_TIME)
        first, second = rig.bus.sent_to("runtime.sandbox_reserve")
        assert first.args["id"] != second.args["id"] == sandbox_id
    asyncio.run(scenario())


# ---- the create table ---------------------------------------------------------------


def hold_pod_reserve(bus: FakeBus) -> asyncio.Event:
    """Make runtime.sandbox_reserve wait until the returned event is set, so
    a create stays in flight while the test starts another."""
    release = asyncio.Event()

    async def slow_reserve(args: dict[str, Any]) -> dict[str, Any]:
        await release.wait()
        return dict(reserve_answer()(args))

    bus.on("runtime.sandbox_reserve", slow_reserve)
    return release


def test_concurrent_run_pod_sandbox_with_one_name_runs_one_create() -> None:
    async def scenario() -> None:
        rig = make_rig()
        wire_pod_create(rig.bus)
        release = hold_pod_reserve(rig.bus)
        deadline = time.monotonic() + CALL_TIME
        first = asyncio.create_task(run_pod(rig, deadline))
        second = asyncio.create_task(run_pod(rig, deadline))
        await rig.bus.wait_sent("runtime.sandbox_reserve")
        release.set()
        ids = await asyncio.gather(first, second)
        assert ids[0] == ids[1] == rig.bus.sent[0].args["id"]
        assert rig.bus.ops() == POD_STAGES
    asyncio.run(scenario())


def test_a_create_outliving_its_caller_answers_deadline_exceeded_and_a_retry_joins_it(
        ) -> None:
    async def scenario() -> None:
        rig = make_rig()
        wire_pod_create(rig.bus)
        release = asyncio.Event()

        async def slow_setup(args: dict[str, Any]) -> dict[str, Any]:
            await release.wait()
            return net_setup_answer(args)

        rig.bus.on("net.setup", slow_setup)
        first_deadline = time.monotonic() + 0.05
        with pytest.raises(DeadlineExceeded):
            await run_pod(rig, first_deadline)
        # The create goes on: nothing undone, still there to join.
        assert rig.bus.ops() == POD_STAGES[:4]
        assert rig.creates.pending(POD_CREATE)
        # The retry joins, whether the create is still running when it comes
        # or has just finished unclaimed: either way it runs no create.
        retry = asyncio.create_task(run_pod(rig, time.monotonic() + CALL_TIME))
        release.set()
        sandbox_id = await retry
        assert sandbox_id == rig.bus.sent[0].args["id"]
        assert rig.bus.ops() == POD_STAGES
        # Every stage kept the first call's deadline plus the grace.
        assert {policy(s, first_deadline) for s in rig.bus.sent} == {Deadline.CREATE}
        assert not rig.creates.pending(POD_CREATE)
    asyncio.run(scenario())


def test_an_unclaimed_finished_create_is_removed_after_claim_timeout() -> None:
    async def scenario() -> None:
        rig = make_rig(claim_timeout=0.01)
        wire_pod_create(rig.bus)
        rig.bus.on("runtime.sandbox_stop_containers",
                   lambda args: {"found": True, "id": args["id"]})
        rig.bus.returns("runtime.container_list", {"items": []})
        release = asyncio.Event()

        async def slow_start(args: dict[str, Any]) -> dict[str, Any]:
            await release.wait()
            return {}

        rig.bus.on("runtime.sandbox_start", slow_start)
        deadline = time.monotonic() + 0.05
        with pytest.raises(DeadlineExceeded):
            await run_pod(rig, deadline)
        release.set()
        await rig.bus.wait_sent("runtime.sandbox_remove")
        sandbox_id = rig.bus.sent[0].args["id"]
        start = rig.bus.ops().index("runtime.sandbox_start")
        reaped = rig.bus.sent[start + 1:]
        assert [(s.op, s.args) for s in reaped] == [
            ("runtime.sandbox_stop_containers", {"id": sandbox_id}),
            ("runtime.sandbox_stop", {"id": sandbox_id}),
            ("net.teardown", {"pod_id": sandbox_id}),
            ("runtime.container_list", {"filter": b"", "sandbox_id": sandbox_id, "all": True}),
            ("storage.remove_rootfs", {"container_id": sandbox_id}),
            ("runtime.sandbox_remove", {"id": sandbox_id})]
        assert {policy(s, deadline) for s in reaped} == {Deadline.CLEANUP}
        assert not rig.creates.pending(POD_CREATE)
    asyncio.run(scenario())


# ---- CreateContainer ------------------------------------------------------------------


def container_reserved(args: dict[str, Any]) -> dict[str, Any]:
    """runtime.container_reserve (workers/runtime/containers.py reserve)."""
    return {"id": args["id"], "name": "k8s_app_web_default_uid-1_0",
            "sandbox_id": args["sandbox_id"]}


def create_container_request() -> api.CreateContainerRequest:
    return api.CreateContainerRequest(pod_sandbox_id=SANDBOX_ID, config=api.ContainerConfig(
        metadata=api.ContainerMetadata(name="app"), image=api.ImageSpec(image="nginx:1")))


def test_create_container_in_a_sandbox_not_ready_is_refused_at_reserve_making_nothing(
        ) -> None:
    rig = make_rig()
    deadline = time.monotonic() + CALL_TIME

    async def scenario() -> None:
        # The runtime pool's reserve is the one check of the pod's readiness.
        rig.bus.returns("image.resolve_image", image_answer("sha256:nginx", ["sha256:d0"]))
        rig.bus.raises("runtime.container_reserve",
                       FailedPrecondition(f"pod sandbox {SANDBOX_ID} is not ready"))
        rig.bus.on("storage.unpack_layers", unpack_answer)
        rig.bus.returns("runtime.container_remove", {"found": False})
        await serve(deadline, rig.containers.create_container(create_container_request()))

    fails_with(Code.FAILED_PRECONDITION, scenario())
    # No rootfs or container is made; only the reserve is undone. The
    # image's layers, ensured beside the reserve, are the node's (the
    # image's removal takes them), not the create's.
    assert rig.bus.ops() == ["image.resolve_image", "runtime.container_reserve",
                             "storage.unpack_layers", "runtime.container_remove"]
    assert [policy(s, deadline) for s in rig.bus.sent] == [
        Deadline.CREATE, Deadline.CREATE, Deadline.CREATE, Deadline.CLEANUP]


def test_create_container_failure_removes_the_rootfs_then_the_record() -> None:
    rig = make_rig()
    deadline = time.monotonic() + CALL_TIME

    async def scenario() -> None:
        rig.bus.returns("image.resolve_image", image_answer("sha256:nginx", ["sha256:d0"]))
        rig.bus.on("runtime.container_reserve", container_reserved)
        rig.bus.on("storage.unpack_layers", unpack_answer)
        rig.bus.on("storage.create_rootfs", rootfs_answer)
        rig.bus.raises("runtime.container_create",
                       FailedPrecondition("runtime handler runc cannot run"))
        rig.bus.on("storage.remove_rootfs", removed_rootfs)
        rig.bus.on("runtime.container_remove",
                   lambda args: {"found": True, "id": args["id"], "sandbox_id": SANDBOX_ID})
        await serve(deadline, rig.containers.create_container(create_container_request()))

    fails_with(Code.FAILED_PRECONDITION, scenario())
    assert rig.bus.ops() == [
        "image.resolve_image", "runtime.container_reserve",
        "storage.unpack_layers", "storage.create_rootfs", "runtime.container_create",
        "storage.remove_rootfs", "runtime.container_remove"]
    container_id = rig.bus.sent_to("runtime.container_reserve")[0].args["id"]
    rootfs_undo, record_undo = rig.bus.sent[-2:]
    assert rootfs_undo.args == {"container_id": container_id}
    assert record_undo.args == {"id": container_id}
    assert [policy(s, deadline) for s in rig.bus.sent] == [
        *[Deadline.CREATE] * 5, Deadline.CLEANUP, Deadline.CLEANUP]


def test_a_container_whose_name_equals_an_in_flight_pods_does_not_join_its_create() -> None:
    # Pod "app_web" and container "app" of pod "web" are both named
    # k8s_app_web_default_uid-1_0: the create table must keep them apart.
    async def scenario() -> None:
        rig = make_rig()
        wire_pod_create(rig.bus)
        release = hold_pod_reserve(rig.bus)
        rig.bus.returns("image.resolve_image", image_answer("sha256:nginx", []))
        rig.bus.on("runtime.container_reserve", container_reserved)
        rig.bus.on("storage.create_rootfs", rootfs_answer)
        rig.bus.on("runtime.container_create", lambda args: {})
        deadline = time.monotonic() + CALL_TIME
        pod = api.RunPodSandboxRequest(config=api.PodSandboxConfig(
            metadata=api.PodSandboxMetadata(name="app_web", namespace="default",
                                            uid="uid-1")))
        pod_task = asyncio.create_task(serve(deadline, rig.sandboxes.run_pod_sandbox(pod)))
        await rig.bus.wait_sent("runtime.sandbox_reserve")
        created = await serve(deadline,
                              rig.containers.create_container(create_container_request()))
        release.set()
        sandbox_id = (await pod_task).pod_sandbox_id
        reserved = rig.bus.sent_to("runtime.container_reserve")
        assert [s.args["id"] for s in reserved] == [created.container_id]
        assert created.container_id != sandbox_id
    asyncio.run(scenario())


# ---- RemovePodSandbox ---------------------------------------------------------------


def test_remove_pod_sandbox_of_an_absent_sandbox_succeeds_without_removals() -> None:
    async def scenario() -> None:
        rig = make_rig()
        rig.bus.returns("runtime.sandbox_stop_containers", {"found": False})
        await serve(time.monotonic() + CALL_TIME, rig.sandboxes.remove_pod_sandbox(
            api.RemovePodSandboxRequest(pod_sandbox_id=SANDBOX_ID)))
        assert rig.bus.ops() == ["runtime.sandbox_stop_containers"]
    asyncio.run(scenario())


def test_remove_pod_sandbox_removes_container_rootfs_before_records_then_the_pod() -> None:
    async def scenario() -> None:
        rig = make_rig()
        rig.bus.returns("runtime.sandbox_stop_containers", {"found": True, "id": SANDBOX_ID})
        rig.bus.on("runtime.sandbox_stop", sandbox_stopped)
        rig.bus.on("net.teardown", net_torn_down)
        rig.bus.returns("runtime.container_list", {"items": [
            list_entry("1" * 64, api.CONTAINER_EXITED),
            list_entry("2" * 64, api.CONTAINER_UNKNOWN)]})
        rig.bus.on("storage.remove_rootfs", removed_rootfs)
        rig.bus.on("runtime.container_remove",
                   lambda args: {"found": True, "id": args["id"], "sandbox_id": SANDBOX_ID})
        rig.bus.on("runtime.sandbox_remove", sandbox_removed)
        deadline = time.monotonic() + CALL_TIME
        # The kubelet may name the pod by a prefix of its id.
        await serve(deadline, rig.sandboxes.remove_pod_sandbox(
            api.RemovePodSandboxRequest(pod_sandbox_id=SANDBOX_ID[:12])))
        assert [(s.op, s.args) for s in rig.bus.sent] == [
            ("runtime.sandbox_stop_containers", {"id": SANDBOX_ID[:12]}),
            ("runtime.sandbox_stop", {"id": SANDBOX_ID}),
            ("net.teardown", {"pod_id": SANDBOX_ID}),
            ("runtime.container_list", {"filter": b"", "sandbox_id": SANDBOX_ID, "all": True}),
            ("storage.remove_rootfs", {"container_id": "1" * 64}),
            ("runtime.container_remove", {"id": "1" * 64}),
            ("storage.remove_rootfs", {"container_id": "2" * 64}),
            ("runtime.container_remove", {"id": "2" * 64}),
            ("storage.remove_rootfs", {"container_id": SANDBOX_ID}),
            ("runtime.sandbox_remove", {"id": SANDBOX_ID})]
        assert {policy(s, deadline) for s in rig.bus.sent} == {Deadline.CALL}
    asyncio.run(scenario())


# ---- container events ------------------------------------------------------------------


def list_entry(container_id: str, state: int) -> bytes:
    """One item of runtime.container_list (containers.py list_containers)."""
    return api.Container(
        id=container_id, pod_sandbox_id=SANDBOX_ID, metadata=api.ContainerMetadata(name="app"),
        image=api.ImageSpec(image="nginx:1"), image_ref="sha256:nginx",
        image_id="sha256:nginx", state=state, created_at=1).SerializeToString()  # type: ignore[arg-type]


def event(container_id: str, kind: int) -> bytes:
    """One event as runtime.changes_since answers it (workers/runtime/ops.py)."""
    return api.ContainerEventResponse(
        container_id=container_id, container_event_type=kind,  # type: ignore[arg-type]
        created_at=1, pod_sandbox_status=api.PodSandboxStatus(id=SANDBOX_ID),
        containers_statuses=[api.ContainerStatus(id=CONTAINER_ID)]).SerializeToString()


class Feed:
    """runtime.changes_since: answers each batch (keys, events) put in
    ``batches`` once, then waits for the next one as the long poll does."""

    def __init__(self, bus: FakeBus) -> None:
        self.batches: asyncio.Queue[tuple[list[str], list[bytes]]] = asyncio.Queue()
        self.polls: list[dict[str, Any]] = []
        bus.on("runtime.changes_since", self._poll)

    async def _poll(self, args: dict[str, Any]) -> dict[str, Any]:
        self.polls.append(args)
        keys, events = await self.batches.get()
        return {"cursor": args["cursor"] + 1, "keys": keys, "events": events}


class Subscriber:
    """A GetContainerEvents client: reads the hub's stream into a queue."""

    def __init__(self, hub: EventHub) -> None:
        self._queue: asyncio.Queue[api.ContainerEventResponse] = asyncio.Queue()
        self._task = asyncio.create_task(self._read(hub))

    @classmethod
    async def of(cls, hub: EventHub) -> Subscriber:
        subscriber = cls(hub)
        await asyncio.sleep(0)  # one step of the reader: it is subscribed then
        return subscriber

    async def _read(self, hub: EventHub) -> None:
        async for event in hub.subscribe():
            self._queue.put_nowait(event)

    async def next(self) -> api.ContainerEventResponse:
        return await asyncio.wait_for(self._queue.get(), EVENT_WAIT)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def test_the_hub_relays_the_feed_in_order_and_sends_no_other_op() -> None:
    async def scenario() -> None:
        rig = make_rig()
        feed = Feed(rig.bus)
        events = await Subscriber.of(rig.events)
        try:
            feed.batches.put_nowait((["created.c", "started.c"], [
                event(CONTAINER_ID, api.CONTAINER_CREATED_EVENT),
                event(CONTAINER_ID, api.CONTAINER_STARTED_EVENT)]))
            # An infra container's exit: a key, but no event of its own.
            feed.batches.put_nowait((["exit.c", "exit.infra"], [
                event(CONTAINER_ID, api.CONTAINER_STOPPED_EVENT)]))
            received = [await events.next() for _ in range(3)]
            await rig.bus.wait_sent("runtime.changes_since", count=3)
        finally:
            await events.close()
            await rig.events.stop()
        assert [(e.container_id, e.container_event_type) for e in received] == [
            (CONTAINER_ID, api.CONTAINER_CREATED_EVENT),
            (CONTAINER_ID, api.CONTAINER_STARTED_EVENT),
            (CONTAINER_ID, api.CONTAINER_STOPPED_EVENT)]
        # Statuses come inside the events: no status query of any kind.
        assert set(rig.bus.ops()) == {"runtime.changes_since"}
        assert [e.containers_statuses[0].id for e in received] == [CONTAINER_ID] * 3
        # Each poll goes on from the last cursor and names the keys answered.
        assert [p["cursor"] - feed.polls[0]["cursor"] for p in feed.polls] == [0, 1, 2]
        assert feed.polls[1]["recent"] == ["created.c", "started.c"]
        assert set(feed.polls[2]["recent"]) == {"created.c", "started.c", "exit.c",
                                                "exit.infra"}
    asyncio.run(scenario())


def test_a_containers_stopped_is_sent_once_whoever_reports_it_first() -> None:
    # The exit file and the op that removed the container both report it.
    async def scenario() -> list[int]:
        rig = make_rig()
        feed = Feed(rig.bus)
        events = await Subscriber.of(rig.events)
        try:
            feed.batches.put_nowait((["exit.c"], [
                event(CONTAINER_ID, api.CONTAINER_STOPPED_EVENT)]))
            feed.batches.put_nowait((["stopped.c", "deleted.c"], [
                event(CONTAINER_ID, api.CONTAINER_STOPPED_EVENT),
                event(CONTAINER_ID, api.CONTAINER_DELETED_EVENT)]))
            received = [await events.next() for _ in range(2)]
        finally:
            await events.close()
            await rig.events.stop()
        return [e.container_event_type for e in received]

    assert asyncio.run(scenario()) == [api.CONTAINER_STOPPED_EVENT,
                                       api.CONTAINER_DELETED_EVENT]


def test_the_feed_is_polled_only_while_someone_subscribes() -> None:
    async def scenario() -> None:
        rig = make_rig()
        Feed(rig.bus)
        await asyncio.sleep(0.05)
        assert rig.bus.sent_to("runtime.changes_since") == []
        events = await Subscriber.of(rig.events)
        await rig.bus.wait_sent("runtime.changes_since", count=1)
        await events.close()
        # The last subscriber gone, the watcher is too: its poll is cancelled.
        assert rig.events._watcher is None
        await rig.events.stop()
    asyncio.run(scenario())


# ---- the deadline policies ------------------------------------------------------------


def test_call_policy_outside_a_cri_call_is_internal_and_sends_nothing() -> None:
    bus = FakeBus()
    bus.returns("runtime.version", {})
    ops = OpClient(bus)
    # A fresh context: no call has begun in it.
    with pytest.raises(Internal):
        contextvars.Context().run(ops.deadline, Deadline.CALL)
    with pytest.raises(Internal):
        contextvars.Context().run(asyncio.run, ops("runtime.version", {}))
    assert bus.sent == []


def test_cleanup_policy_is_independent_of_the_call_deadline() -> None:
    async def scenario() -> None:
        bus = FakeBus()
        bus.on("runtime.sandbox_remove", sandbox_removed)
        ops = OpClient(bus)
        # The call's deadline is long past, as it is when a create failed by it.
        opclient.begin(time.monotonic() - 100)
        with pytest.raises(DeadlineExceeded):
            await ops(runtime_ops.SANDBOX_REMOVE, runtime_ops.Ref(id=SANDBOX_ID))
        before = time.monotonic()
        assert await ops(runtime_ops.SANDBOX_REMOVE, runtime_ops.Ref(id=SANDBOX_ID),
                         Deadline.CLEANUP) == runtime_ops.Found(found=True, id=SANDBOX_ID)
        after = time.monotonic()
        assert before + CLEANUP_TIMEOUT <= bus.sent[-1].deadline <= after + CLEANUP_TIMEOUT
    asyncio.run(scenario())
