"""ContainerStats, ListContainerStats, PodSandboxStats, ListPodSandboxStats,
ListMetricDescriptors and ListPodSandboxMetrics, and the Stream* forms of
the three lists.

Each is orchestrated across three pools, all reads:

    runtime.container_stats / sandbox_stats   which objects; cgroup figures
    storage.layer_usage                        writable layers (a cache)
    net.network_usage                          pods' interfaces

The runtime answer comes first (it names the containers and pods); the
storage and net reads then run concurrently. A storage or net failure
(a worker restarting) costs only its figures, logged: the kubelet's
eviction manager is better served by CPU and memory without a writable
layer than by no stats at all. The runtime pool's errors are the call's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from ...proto import api_pb2 as api
from ...proto import net_ops, runtime_ops, storage_ops
from ...proto.errors import BusError, InvalidArgument
from ...proto.stats import (
    ContainerSample,
    LayerUsageQuery,
    NetworkQuery,
    NetworkSample,
    PodSample,
    StatsQuery,
)
from ..opclient import OpClient
from . import stats_build as build
from .chunks import chunked
from .metric_build import Catalogue

log = logging.getLogger(__name__)


class StatsService:
    """The stats and metrics RPCs; holds the op client, the enabled metrics
    and the CPU baselines of ``usage_nano_cores``."""

    def __init__(self, ops: OpClient, catalogue: Catalogue) -> None:
        self.ops = ops
        self.catalogue = catalogue
        self.rates = build.CpuRates()

    async def container_stats(self, request: api.ContainerStatsRequest
                              ) -> api.ContainerStatsResponse:
        samples = await self._containers(StatsQuery(id=_required(request.container_id,
                                                                 "container_id")))
        [stats] = await self._container_stats(samples)
        return api.ContainerStatsResponse(stats=stats)

    async def list_container_stats(self, request: api.ListContainerStatsRequest
                                   ) -> api.ListContainerStatsResponse:
        samples = await self._containers(StatsQuery(filter=request.filter.SerializeToString()))
        return api.ListContainerStatsResponse(stats=await self._container_stats(samples))

    async def pod_sandbox_stats(self, request: api.PodSandboxStatsRequest
                                ) -> api.PodSandboxStatsResponse:
        pods = await self._pods(StatsQuery(id=_required(request.pod_sandbox_id,
                                                        "pod_sandbox_id")))
        [stats] = await self._pod_stats(pods)
        return api.PodSandboxStatsResponse(stats=stats)

    async def list_pod_sandbox_stats(self, request: api.ListPodSandboxStatsRequest
                                     ) -> api.ListPodSandboxStatsResponse:
        pods = await self._pods(StatsQuery(filter=request.filter.SerializeToString()))
        return api.ListPodSandboxStatsResponse(stats=await self._pod_stats(pods))

    async def list_metric_descriptors(self, request: api.ListMetricDescriptorsRequest
                                      ) -> api.ListMetricDescriptorsResponse:
        return api.ListMetricDescriptorsResponse(descriptors=self.catalogue.descriptors())

    async def list_pod_sandbox_metrics(self, request: api.ListPodSandboxMetricsRequest
                                       ) -> api.ListPodSandboxMetricsResponse:
        catalogue = self.catalogue
        pods = await self._pods(StatsQuery(processes=catalogue.processes))
        disk, nets = await asyncio.gather(
            self._disk([c.id for pod in pods for c in pod.containers]),
            self._networks(pods) if catalogue.network else _no_networks())
        now = build.now_ns()
        return api.ListPodSandboxMetricsResponse(pod_metrics=[
            catalogue.pod_metrics(pod, disk.layers, disk.filesystem, nets.get(pod.id), now)
            for pod in pods])

    async def stream_container_stats(self, request: api.StreamContainerStatsRequest
                                     ) -> AsyncIterator[api.StreamContainerStatsResponse]:
        listed = await self.list_container_stats(
            api.ListContainerStatsRequest(filter=request.filter))
        for part in chunked(listed.stats):
            yield api.StreamContainerStatsResponse(container_stats=part)

    async def stream_pod_sandbox_stats(self, request: api.StreamPodSandboxStatsRequest
                                       ) -> AsyncIterator[api.StreamPodSandboxStatsResponse]:
        listed = await self.list_pod_sandbox_stats(
            api.ListPodSandboxStatsRequest(filter=request.filter))
        for part in chunked(listed.stats):
            yield api.StreamPodSandboxStatsResponse(pod_sandbox_stats=part)

    async def stream_pod_sandbox_metrics(self, request: api.StreamPodSandboxMetricsRequest
                                         ) -> AsyncIterator[api.StreamPodSandboxMetricsResponse]:
        listed = await self.list_pod_sandbox_metrics(api.ListPodSandboxMetricsRequest())
        for part in chunked(listed.pod_metrics):
            yield api.StreamPodSandboxMetricsResponse(pod_sandbox_metrics=part)

    async def _containers(self, query: StatsQuery) -> list[ContainerSample]:
        return (await self.ops(runtime_ops.CONTAINER_STATS, query)).items

    async def _pods(self, query: StatsQuery) -> list[PodSample]:
        return (await self.ops(runtime_ops.SANDBOX_STATS, query)).items

    async def _container_stats(self, samples: list[ContainerSample]) -> list[api.ContainerStats]:
        disk = await self._disk([sample.id for sample in samples])
        now = build.now_ns()
        return [build.container_stats(sample, disk, self.rates, now) for sample in samples]

    async def _pod_stats(self, pods: list[PodSample]) -> list[api.PodSandboxStats]:
        disk, nets = await asyncio.gather(
            self._disk([c.id for pod in pods for c in pod.containers]), self._networks(pods))
        now = build.now_ns()
        return [build.pod_stats(pod, disk, nets.get(pod.id), self.rates, now) for pod in pods]

    async def _disk(self, container_ids: list[str]) -> build.Disk:
        if not container_ids:
            return build.Disk(None, {})
        try:
            usage = await self.ops(storage_ops.LAYER_USAGE,
                                   LayerUsageQuery(container_ids=container_ids))
        except BusError as exc:
            log.warning("Stats without writable layers: %s", exc)
            return build.Disk(None, {})
        return build.Disk(usage.filesystem, usage.layers)

    async def _networks(self, pods: list[PodSample]) -> dict[str, NetworkSample]:
        wanted = [pod.id for pod in pods if pod.ready and not pod.host_network]
        if not wanted:
            return {}
        try:
            found = await self.ops(net_ops.NETWORK_USAGE, NetworkQuery(sandbox_ids=wanted))
        except BusError as exc:
            log.warning("Pod stats without network figures: %s", exc)
            return {}
        return found.pods


async def _no_networks() -> dict[str, NetworkSample]:
    return {}


def _required(value: str, field: str) -> str:
    if not value:
        raise InvalidArgument(f"{field} is required")
    return value
