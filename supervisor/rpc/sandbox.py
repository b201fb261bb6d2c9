"""Pod sandbox RPCs: Run/Stop/RemovePodSandbox, PodSandboxStatus,
ListPodSandbox, UpdatePodSandboxResources, CheckpointPod, RestorePod,
StreamPodSandboxes.

Routed to the owning pool, which answers UNIMPLEMENTED until the issue
that implements them lands (issues 3 and 5).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from ...proto import api_pb2 as api
from .call import Call, route, route_stream


async def run_pod_sandbox(
    call: Call, request: api.RunPodSandboxRequest
) -> api.RunPodSandboxResponse:
    return await route(call, "RunPodSandbox", request, api.RunPodSandboxResponse)


async def stop_pod_sandbox(
    call: Call, request: api.StopPodSandboxRequest
) -> api.StopPodSandboxResponse:
    return await route(call, "StopPodSandbox", request, api.StopPodSandboxResponse)


async def remove_pod_sandbox(
    call: Call, request: api.RemovePodSandboxRequest
) -> api.RemovePodSandboxResponse:
    return await route(call, "RemovePodSandbox", request, api.RemovePodSandboxResponse)


async def pod_sandbox_status(
    call: Call, request: api.PodSandboxStatusRequest
) -> api.PodSandboxStatusResponse:
    return await route(call, "PodSandboxStatus", request, api.PodSandboxStatusResponse)


async def list_pod_sandbox(
    call: Call, request: api.ListPodSandboxRequest
) -> api.ListPodSandboxResponse:
    return await route(call, "ListPodSandbox", request, api.ListPodSandboxResponse)


async def update_pod_sandbox_resources(
    call: Call, request: api.UpdatePodSandboxResourcesRequest
) -> api.UpdatePodSandboxResourcesResponse:
    return await route(
        call, "UpdatePodSandboxResources", request, api.UpdatePodSandboxResourcesResponse
    )


async def checkpoint_pod(
    call: Call, request: api.CheckpointPodRequest
) -> api.CheckpointPodResponse:
    return await route(call, "CheckpointPod", request, api.CheckpointPodResponse)


async def restore_pod(call: Call, request: api.RestorePodRequest) -> api.RestorePodResponse:
    return await route(call, "RestorePod", request, api.RestorePodResponse)


def stream_pod_sandboxes(
    call: Call, request: api.StreamPodSandboxesRequest
) -> AsyncIterator[api.StreamPodSandboxesResponse]:
    return route_stream(call, "StreamPodSandboxes", request, api.StreamPodSandboxesResponse)
