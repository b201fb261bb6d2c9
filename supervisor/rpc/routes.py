"""Which handler serves each CRI RPC: the one table the gRPC front reads.

Every RPC of the CRI API is either routed here to a service's method or
listed in ``proto.ops.UNSERVED_RPCS``; ``check`` makes the daemon refuse to
start otherwise, so no RPC ever falls through to gRPC's generated
"Method not implemented!".
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from ...proto import api_pb2 as api
from ...proto.ops import UNSERVED_RPCS
from ..container_events import EventHub
from .container import ContainerService
from .image import ImageService
from .runtime_info import RuntimeInfoService
from .sandbox import SandboxService
from .stats import StatsService
from .streaming import StreamingService

Handler = Callable[[Any], Awaitable[Any]] | Callable[[Any], AsyncIterator[Any]]


def routes(info: RuntimeInfoService, sandboxes: SandboxService,
           containers: ContainerService, streams: StreamingService, stats: StatsService,
           images: ImageService, events: EventHub) -> dict[str, Handler]:
    table: dict[str, Handler] = {
        "Version": info.version,
        "Status": info.status,
        "RuntimeConfig": info.runtime_config,
        "UpdateRuntimeConfig": info.update_runtime_config,
        "RunPodSandbox": sandboxes.run_pod_sandbox,
        "StopPodSandbox": sandboxes.stop_pod_sandbox,
        "RemovePodSandbox": sandboxes.remove_pod_sandbox,
        "PodSandboxStatus": sandboxes.pod_sandbox_status,
        "ListPodSandbox": sandboxes.list_pod_sandbox,
        "StreamPodSandboxes": sandboxes.stream_pod_sandboxes,
        "UpdatePodSandboxResources": sandboxes.update_pod_sandbox_resources,
        "CreateContainer": containers.create_container,
        "StartContainer": containers.start_container,
        "StopContainer": containers.stop_container,
        "RemoveContainer": containers.remove_container,
        "ListContainers": containers.list_containers,
        "StreamContainers": containers.stream_containers,
        "ContainerStatus": containers.container_status,
        "ReopenContainerLog": containers.reopen_container_log,
        "ExecSync": containers.exec_sync,
        "UpdateContainerResources": containers.update_container_resources,
        "Exec": streams.exec,
        "Attach": streams.attach,
        "PortForward": streams.port_forward,
        "GetContainerEvents": lambda request: events.subscribe(),
        "ContainerStats": stats.container_stats,
        "ListContainerStats": stats.list_container_stats,
        "StreamContainerStats": stats.stream_container_stats,
        "StreamPodSandboxStats": stats.stream_pod_sandbox_stats,
        "StreamPodSandboxMetrics": stats.stream_pod_sandbox_metrics,
        "PodSandboxStats": stats.pod_sandbox_stats,
        "ListPodSandboxStats": stats.list_pod_sandbox_stats,
        "ListMetricDescriptors": stats.list_metric_descriptors,
        "ListPodSandboxMetrics": stats.list_pod_sandbox_metrics,
        "ListImages": images.list_images,
        "StreamImages": images.stream_images,
        "ImageStatus": images.image_status,
        "PullImage": images.pull_image,
        "RemoveImage": images.remove_image,
        "ImageFsInfo": images.image_fs_info,
    }
    check(table)
    return table


def all_rpcs() -> set[str]:
    return {method.name for service in api.DESCRIPTOR.services_by_name.values()
            for method in service.methods}


def check(table: dict[str, Handler]) -> None:
    """Every CRI RPC routed or declared unserved, and none both."""
    rpcs = all_rpcs()
    both = set(table) & UNSERVED_RPCS
    missing = rpcs - set(table) - UNSERVED_RPCS
    unknown = (set(table) | UNSERVED_RPCS) - rpcs
    if both or missing or unknown:
        raise RuntimeError(f"CRI routes: routed and unserved {sorted(both)}, neither "
                           f"{sorted(missing)}, not in the CRI API {sorted(unknown)}")
