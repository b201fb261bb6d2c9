"""Stats RPCs: ContainerStats, ListContainerStats, PodSandboxStats,
ListPodSandboxStats, ListMetricDescriptors, ListPodSandboxMetrics and their
Stream* forms.

Routed to the owning pool, which answers UNIMPLEMENTED until the issue
that implements them lands (issues 3 and 5).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from ...proto import api_pb2 as api
from .call import Call, route, route_stream


async def container_stats(
    call: Call, request: api.ContainerStatsRequest
) -> api.ContainerStatsResponse:
    return await route(call, "ContainerStats", request, api.ContainerStatsResponse)


async def list_container_stats(
    call: Call, request: api.ListContainerStatsRequest
) -> api.ListContainerStatsResponse:
    return await route(call, "ListContainerStats", request, api.ListContainerStatsResponse)


async def pod_sandbox_stats(
    call: Call, request: api.PodSandboxStatsRequest
) -> api.PodSandboxStatsResponse:
    return await route(call, "PodSandboxStats", request, api.PodSandboxStatsResponse)


async def list_pod_sandbox_stats(
    call: Call, request: api.ListPodSandboxStatsRequest
) -> api.ListPodSandboxStatsResponse:
    return await route(call, "ListPodSandboxStats", request, api.ListPodSandboxStatsResponse)


async def list_metric_descriptors(
    call: Call, request: api.ListMetricDescriptorsRequest
) -> api.ListMetricDescriptorsResponse:
    return await route(call, "ListMetricDescriptors", request, api.ListMetricDescriptorsResponse)


async def list_pod_sandbox_metrics(
    call: Call, request: api.ListPodSandboxMetricsRequest
) -> api.ListPodSandboxMetricsResponse:
    return await route(call, "ListPodSandboxMetrics", request, api.ListPodSandboxMetricsResponse)


def stream_container_stats(
    call: Call, request: api.StreamContainerStatsRequest
) -> AsyncIterator[api.StreamContainerStatsResponse]:
    return route_stream(call, "StreamContainerStats", request, api.StreamContainerStatsResponse)


def stream_pod_sandbox_stats(
    call: Call, request: api.StreamPodSandboxStatsRequest
) -> AsyncIterator[api.StreamPodSandboxStatsResponse]:
    return route_stream(call, "StreamPodSandboxStats", request, api.StreamPodSandboxStatsResponse)


def stream_pod_sandbox_metrics(
    call: Call, request: api.StreamPodSandboxMetricsRequest
) -> AsyncIterator[api.StreamPodSandboxMetricsResponse]:
    return route_stream(
        call, "StreamPodSandboxMetrics", request, api.StreamPodSandboxMetricsResponse
    )
