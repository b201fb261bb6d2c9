"""Pod sandbox RPCs: Run/Stop/RemovePodSandbox, PodSandboxStatus,
ListPodSandbox; UpdatePodSandboxResources, CheckpointPod, RestorePod and
StreamPodSandboxes are routed to the runtime pool (UNIMPLEMENTED there).

RunPodSandbox is orchestrated here, one narrow op per pool:

    runtime.sandbox_reserve  name + "creating" record
    net.setup                namespace, CNI ADD        (not for host network)
    runtime.sandbox_start    ipc/uts pins, files, cgroup, infra; "ready"

with a cleanup stack that undoes the steps done when a later one fails,
and a create table (creates.py) that lets a kubelet retry join a create
that outlived its first deadline.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from ...proto import api_pb2 as api
from ...proto.errors import FailedPrecondition, NotFound
from ...proto.naming import sandbox_name
from .call import Call, check_metadata, cleanup_deadline, from_result, route, route_stream, to_args
from .cleanup import CleanupStack
from .layers import ensure_unpacked
from .messages import STATES, fill_metadata, sandbox_status

# A create keeps going this long after the kubelet's deadline, so its retry
# can pick it up instead of starting over.
CREATE_GRACE = 120.0


async def run_pod_sandbox(call: Call,
                          request: api.RunPodSandboxRequest) -> api.RunPodSandboxResponse:
    check_metadata("pod sandbox config", request.config)
    config = to_args(request.config)
    name = sandbox_name(config.get("metadata", {}))
    deadline = call.deadline + CREATE_GRACE

    async def create() -> str:
        return await _create(call, config, request.runtime_handler, deadline)

    async def cleanup(sandbox_id: str) -> None:
        await _stop_and_remove(call, sandbox_id, deadline=cleanup_deadline())

    sandbox_id = await call.creates.run(name, call.deadline, create, cleanup)
    # As containerd does, sandbox lifecycle events carry the sandbox's id.
    call.events.emit(sandbox_id, api.CONTAINER_CREATED_EVENT, sandbox_id)
    call.events.emit(sandbox_id, api.CONTAINER_STARTED_EVENT, sandbox_id)
    return api.RunPodSandboxResponse(pod_sandbox_id=sandbox_id)


async def _create(call: Call, config: dict[str, Any], handler: str, deadline: float) -> str:
    sandbox_id = secrets.token_hex(32)
    undo = CleanupStack(f"pod sandbox {sandbox_id}")
    try:
        # Pushed first: a worker that dies inside the reserve may have
        # written the record already.
        undo.push("remove the sandbox record", lambda: call.op(
            "runtime.sandbox_remove", {"id": sandbox_id}, deadline=cleanup_deadline()))
        undo.push("stop the sandbox", lambda: call.op(
            "runtime.sandbox_stop", {"id": sandbox_id}, deadline=cleanup_deadline()))
        reserved = await call.op("runtime.sandbox_reserve", {
            "id": sandbox_id, "config": config, "runtime_handler": handler}, deadline=deadline)
        # Host-network pods skip CNI, but the net pool still answers with the
        # node's IPs, which is what the kubelet expects to see for them.
        meta = config["metadata"]
        undo.push("tear the pod network down", lambda: call.op(
            "net.teardown", {"pod_id": sandbox_id}, deadline=cleanup_deadline()))
        net = await call.op("net.setup", {
            "pod_id": sandbox_id, "name": meta["name"], "namespace": meta["namespace"],
            "uid": meta["uid"], "port_mappings": config.get("port_mappings", []),
            "dns": config.get("dns_config"), "host_network": _host_network(config),
            "cgroup_parent": config.get("linux", {}).get("cgroup_parent", ""),
        }, deadline=deadline)
        netns_path, ips = net["netns_path"] or None, net["ips"]
        infra_image = None
        if reserved["pause_image"]:
            undo.push("remove the pause rootfs", lambda: call.op(
                "storage.remove_rootfs", {"container_id": sandbox_id}, deadline=cleanup_deadline()))
            infra_image = await _pause_rootfs(call, reserved["pause_image"], sandbox_id,
                                              deadline)
        await call.op("runtime.sandbox_start", {
            "id": reserved["id"], "netns_path": netns_path, "ips": ips,
            "infra_image": infra_image}, deadline=deadline)
    except BaseException:
        await undo.unwind()
        raise
    return sandbox_id


async def _pause_rootfs(call: Call, pause_image: str, sandbox_id: str,
                        deadline: float) -> dict[str, Any]:
    """Pull the configured pause image if absent and mount a rootfs of it."""
    try:
        image = await call.op("image.resolve_image", {"image": pause_image}, deadline=deadline)
    except NotFound:
        await call.op("image.pull_image", {"image": {"image": pause_image}}, deadline=deadline)
        image = await call.op("image.resolve_image", {"image": pause_image}, deadline=deadline)
    chain = await ensure_unpacked(call, image["layers"], deadline)
    rootfs = await call.op("storage.create_rootfs", {"container_id": sandbox_id,
                                                     "layers": chain}, deadline=deadline)
    config = (image.get("config") or {}).get("config") or {}
    args = [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])]
    if not args:
        raise FailedPrecondition(f"pause image {pause_image} has no Entrypoint or Cmd")
    return {"rootfs": rootfs["path"], "args": args}


def _host_network(config: Mapping[str, Any]) -> bool:
    options = config.get("linux", {}).get("security_context", {}).get("namespace_options", {})
    return bool(options.get("network") == "NODE")


async def stop_pod_sandbox(call: Call,
                           request: api.StopPodSandboxRequest) -> api.StopPodSandboxResponse:
    await _stop(call, request.pod_sandbox_id, deadline=None)
    return api.StopPodSandboxResponse()


async def _stop(call: Call, sandbox_id: str, deadline: float | None) -> dict[str, Any] | None:
    """Kill the pod's containers, stop the sandbox, release its network.

    CRI: "If there are any running containers in the sandbox, they must be
    forcibly terminated"; stopping an absent sandbox is not an error.
    """
    stopped = await call.op("runtime.sandbox_stop_containers", {"id": sandbox_id},
                            deadline=deadline)
    if not stopped["found"]:
        return None
    result = await call.op("runtime.sandbox_stop", {"id": stopped["id"]}, deadline=deadline)
    await call.op("net.teardown", {"pod_id": stopped["id"]}, deadline=deadline)
    if result["stopped"]:
        call.events.emit(stopped["id"], api.CONTAINER_STOPPED_EVENT, stopped["id"])
    return dict(result)


async def remove_pod_sandbox(
        call: Call, request: api.RemovePodSandboxRequest) -> api.RemovePodSandboxResponse:
    await _stop_and_remove(call, request.pod_sandbox_id, deadline=None)
    return api.RemovePodSandboxResponse()


async def _stop_and_remove(call: Call, sandbox_id: str, deadline: float | None) -> None:
    stopped = await _stop(call, sandbox_id, deadline)
    if stopped is None:
        return  # CRI: removing an absent sandbox succeeds
    full_id = stopped["id"]
    # Half-created containers too ("all"): they must not keep the pod.
    containers = await call.op("runtime.container_list", {"sandbox_id": full_id, "all": True},
                               deadline=deadline)
    for container in containers:
        # Rootfs before record, so a failure leaves what a retry needs.
        await call.op("storage.remove_rootfs", {"container_id": container["id"]},
                      deadline=deadline)
        await call.op("runtime.container_remove", {"id": container["id"]}, deadline=deadline)
    # The pause image's rootfs, if the pod had one (absent is fine).
    await call.op("storage.remove_rootfs", {"container_id": full_id}, deadline=deadline)
    await call.op("runtime.sandbox_remove", {"id": full_id}, deadline=deadline)
    call.events.emit(full_id, api.CONTAINER_DELETED_EVENT, full_id)


async def pod_sandbox_status(
        call: Call, request: api.PodSandboxStatusRequest) -> api.PodSandboxStatusResponse:
    record = await call.op("runtime.sandbox_status", {"id": request.pod_sandbox_id})
    response = api.PodSandboxStatusResponse(status=sandbox_status(record),
                                            timestamp=time.time_ns())
    # The evented PLEG reads the pod's containers from this answer too.
    for member in await call.op("runtime.container_list", {"sandbox_id": record["id"]}):
        with contextlib.suppress(NotFound):
            status = await call.op("runtime.container_status", {"id": member["id"]})
            response.containers_statuses.append(from_result(status["status"],
                                                            api.ContainerStatus))
    if request.verbose:
        response.info["info"] = json.dumps({
            "netns_path": record["netns_path"], "hostname": record["hostname"],
            "cgroup_parent": record["cgroup_parent"], "infra": record["infra"],
            "namespaces": record["ns"], "shm": record["shm"], "files": record["files"],
            "runtime_handler": record["runtime_handler"]})
    return response


async def list_pod_sandbox(call: Call,
                           request: api.ListPodSandboxRequest) -> api.ListPodSandboxResponse:
    records = await call.op("runtime.sandbox_list", {})
    response = api.ListPodSandboxResponse()
    flt = request.filter
    for record in records:
        if not _matches(record, flt):
            continue
        config = record["config"]
        item = response.items.add(
            id=record["id"], state=STATES[record["state"]], created_at=record["created_at"],
            labels=config.get("labels", {}), annotations=config.get("annotations", {}),
            runtime_handler=record["runtime_handler"])
        fill_metadata(item.metadata, config.get("metadata", {}))
    return response


def _matches(record: Mapping[str, Any], flt: api.PodSandboxFilter) -> bool:
    if flt.id and not record["id"].startswith(flt.id):
        return False
    if flt.HasField("state") and STATES[record["state"]] != flt.state.state:
        return False
    labels = record["config"].get("labels", {})
    return all(labels.get(k) == v for k, v in flt.label_selector.items())


async def update_pod_sandbox_resources(
        call: Call, request: api.UpdatePodSandboxResourcesRequest
) -> api.UpdatePodSandboxResourcesResponse:
    return await route(call, "UpdatePodSandboxResources", request,
                       api.UpdatePodSandboxResourcesResponse)


async def checkpoint_pod(call: Call,
                         request: api.CheckpointPodRequest) -> api.CheckpointPodResponse:
    return await route(call, "CheckpointPod", request, api.CheckpointPodResponse)


async def restore_pod(call: Call, request: api.RestorePodRequest) -> api.RestorePodResponse:
    return await route(call, "RestorePod", request, api.RestorePodResponse)


def stream_pod_sandboxes(
    call: Call, request: api.StreamPodSandboxesRequest
) -> AsyncIterator[api.StreamPodSandboxesResponse]:
    return route_stream(call, "StreamPodSandboxes", request, api.StreamPodSandboxesResponse)
