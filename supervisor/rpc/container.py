"""Container lifecycle RPCs: Create/Start/Stop/Remove/ListContainers,
ContainerStatus, UpdateContainerResources, ReopenContainerLog,
CheckpointContainer, StreamContainers.

Routed to the owning pool, which answers UNIMPLEMENTED until the issue
that implements them lands (issues 3 and 5).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from ...proto import api_pb2 as api
from .call import Call, route, route_stream


async def create_container(
    call: Call, request: api.CreateContainerRequest
) -> api.CreateContainerResponse:
    return await route(call, "CreateContainer", request, api.CreateContainerResponse)


async def start_container(
    call: Call, request: api.StartContainerRequest
) -> api.StartContainerResponse:
    return await route(call, "StartContainer", request, api.StartContainerResponse)


async def stop_container(
    call: Call, request: api.StopContainerRequest
) -> api.StopContainerResponse:
    return await route(call, "StopContainer", request, api.StopContainerResponse)


async def remove_container(
    call: Call, request: api.RemoveContainerRequest
) -> api.RemoveContainerResponse:
    return await route(call, "RemoveContainer", request, api.RemoveContainerResponse)


async def list_containers(
    call: Call, request: api.ListContainersRequest
) -> api.ListContainersResponse:
    return await route(call, "ListContainers", request, api.ListContainersResponse)


async def container_status(
    call: Call, request: api.ContainerStatusRequest
) -> api.ContainerStatusResponse:
    return await route(call, "ContainerStatus", request, api.ContainerStatusResponse)


async def update_container_resources(
    call: Call, request: api.UpdateContainerResourcesRequest
) -> api.UpdateContainerResourcesResponse:
    return await route(
        call, "UpdateContainerResources", request, api.UpdateContainerResourcesResponse
    )


async def reopen_container_log(
    call: Call, request: api.ReopenContainerLogRequest
) -> api.ReopenContainerLogResponse:
    return await route(call, "ReopenContainerLog", request, api.ReopenContainerLogResponse)


async def checkpoint_container(
    call: Call, request: api.CheckpointContainerRequest
) -> api.CheckpointContainerResponse:
    return await route(call, "CheckpointContainer", request, api.CheckpointContainerResponse)


def stream_containers(
    call: Call, request: api.StreamContainersRequest
) -> AsyncIterator[api.StreamContainersResponse]:
    return route_stream(call, "StreamContainers", request, api.StreamContainersResponse)
