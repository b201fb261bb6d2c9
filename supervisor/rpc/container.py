"""Container lifecycle RPCs: Create/Start/Stop/Remove/ListContainers,
ContainerStatus, ReopenContainerLog; UpdateContainerResources,
CheckpointContainer and StreamContainers are routed to the runtime pool
(UNIMPLEMENTED there).

CreateContainer is orchestrated here across three pools:

    runtime.sandbox_status     the pod exists and is ready
    image.resolve_image        image id, config and layers (NOT_FOUND if absent)
    runtime.container_reserve  name + "creating" record
    storage.unpack_layer       each layer, once per node (idempotent)
    storage.create_rootfs      overlay of the layers + a writable upper dir
    runtime.container_create   OCI bundle, conmon, runtime create; "created"

with a cleanup stack for failures and the create table for kubelet retries
(see sandbox.py). Everything the kubelet reads back (ContainerStatus,
ListContainers) is shaped by the runtime pool as the CRI message's dict.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

from ...proto import api_pb2 as api
from ...proto.errors import FailedPrecondition
from ...proto.naming import container_name
from .call import Call, check_metadata, cleanup_deadline, from_result, route, route_stream, to_args
from .cleanup import CleanupStack
from .layers import ensure_unpacked
from .sandbox import CREATE_GRACE


async def create_container(
        call: Call, request: api.CreateContainerRequest) -> api.CreateContainerResponse:
    check_metadata("container config", request.config)
    sandbox = await call.op("runtime.sandbox_status", {"id": request.pod_sandbox_id})
    if sandbox["state"] != "ready":
        raise FailedPrecondition(f"pod sandbox {sandbox['id']} is not ready; containers can "
                                 "only be created in a running pod")
    config = to_args(request.config)
    name = container_name(config.get("metadata", {}), sandbox["config"].get("metadata", {}))
    deadline = call.deadline + CREATE_GRACE

    async def create() -> str:
        return await _create(call, sandbox, config, deadline)

    async def cleanup(container_id: str) -> None:
        await _remove(call, container_id, deadline=cleanup_deadline())

    container_id = await call.creates.run(name, call.deadline, create, cleanup)
    call.events.emit(container_id, api.CONTAINER_CREATED_EVENT, sandbox["id"])
    return api.CreateContainerResponse(container_id=container_id)


async def _create(call: Call, sandbox: dict[str, Any], config: dict[str, Any],
                  deadline: float) -> str:
    container_id = secrets.token_hex(32)
    image_name = config.get("image", {}).get("image", "")
    image = await call.op("image.resolve_image", {"image": image_name}, deadline=deadline)
    undo = CleanupStack(f"container {container_id}")
    try:
        # Pushed first: a worker that dies inside the reserve may have
        # written the record already.
        undo.push("remove the container record", lambda: call.op(
            "runtime.container_remove", {"id": container_id}, deadline=cleanup_deadline()))
        await call.op("runtime.container_reserve", {
            "id": container_id, "sandbox_id": sandbox["id"], "config": config,
            "image": {k: image[k] for k in ("id", "repo_tags", "repo_digests")},
        }, deadline=deadline)
        chain = await ensure_unpacked(call, image["layers"], deadline)
        undo.push("remove the rootfs", lambda: call.op(
            "storage.remove_rootfs", {"container_id": container_id}, deadline=cleanup_deadline()))
        rootfs = await call.op("storage.create_rootfs", {
            "container_id": container_id, "layers": chain}, deadline=deadline)
        await call.op("runtime.container_create", {
            "id": container_id, "rootfs": rootfs["path"], "image_config": image["config"],
        }, deadline=deadline)
    except BaseException:
        await undo.unwind()
        raise
    return container_id


async def start_container(call: Call,
                          request: api.StartContainerRequest) -> api.StartContainerResponse:
    started = await call.op("runtime.container_start", {"id": request.container_id})
    call.events.emit(started["id"], api.CONTAINER_STARTED_EVENT)
    return api.StartContainerResponse()


async def stop_container(call: Call,
                         request: api.StopContainerRequest) -> api.StopContainerResponse:
    # The runtime pool bounds its own wait by the timeout; the call's
    # deadline must leave room for it.
    stopped = await call.op("runtime.container_stop", {"id": request.container_id,
                                                       "timeout": request.timeout})
    if stopped["found"]:
        call.events.emit(stopped["id"], api.CONTAINER_STOPPED_EVENT, stopped["sandbox_id"])
    return api.StopContainerResponse()


async def remove_container(call: Call,
                           request: api.RemoveContainerRequest) -> api.RemoveContainerResponse:
    await _remove(call, request.container_id, deadline=None)
    return api.RemoveContainerResponse()


async def _remove(call: Call, container_id: str, deadline: float | None) -> None:
    # Killed, then the rootfs, then the record: a removal that fails half-way
    # leaves the record, so the kubelet's retry finishes the job.
    stopped = await call.op("runtime.container_stop", {"id": container_id, "timeout": 0},
                            deadline=deadline)
    if not stopped["found"]:
        return  # CRI: removing an absent container succeeds
    await call.op("storage.remove_rootfs", {"container_id": stopped["id"]}, deadline=deadline)
    removed = await call.op("runtime.container_remove", {"id": stopped["id"]},
                            deadline=deadline)
    if removed["found"]:
        # STOPPED first (once: the exit watcher may have sent it), then DELETED.
        call.events.emit(removed["id"], api.CONTAINER_STOPPED_EVENT, removed["sandbox_id"])
        call.events.emit(removed["id"], api.CONTAINER_DELETED_EVENT, removed["sandbox_id"])


async def list_containers(call: Call,
                          request: api.ListContainersRequest) -> api.ListContainersResponse:
    result = await call.op("runtime.container_list", {"filter": to_args(request.filter)})
    return from_result({"containers": result}, api.ListContainersResponse)


async def container_status(
        call: Call, request: api.ContainerStatusRequest) -> api.ContainerStatusResponse:
    result = await call.op("runtime.container_status", {"id": request.container_id,
                                                        "verbose": request.verbose})
    return from_result(result, api.ContainerStatusResponse)


async def reopen_container_log(
        call: Call, request: api.ReopenContainerLogRequest) -> api.ReopenContainerLogResponse:
    await call.op("runtime.container_reopen_log", {"id": request.container_id})
    return api.ReopenContainerLogResponse()


async def update_container_resources(
    call: Call, request: api.UpdateContainerResourcesRequest
) -> api.UpdateContainerResourcesResponse:
    return await route(call, "UpdateContainerResources", request,
                       api.UpdateContainerResourcesResponse)


async def checkpoint_container(
    call: Call, request: api.CheckpointContainerRequest
) -> api.CheckpointContainerResponse:
    return await route(call, "CheckpointContainer", request, api.CheckpointContainerResponse)


def stream_containers(
    call: Call, request: api.StreamContainersRequest
) -> AsyncIterator[api.StreamContainersResponse]:
    return route_stream(call, "StreamContainers", request, api.StreamContainersResponse)
