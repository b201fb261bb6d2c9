"""The CRI front: a grpc.aio server on the unix socket.

The servicers' methods are one-line delegations to ``rpc/<group>.py``;
``Front`` wraps every call the same way: a request id and the RPC name in
the logging context, the deadline taken from the caller (or the configured
default when it set none), metrics by method and status code, and the one
mapping from ``BusError`` to a gRPC status (rpc/status.py). An error
escaping a handler that is not a ``BusError`` is a podvisor bug: it is
logged with its traceback and answered INTERNAL.
"""

from __future__ import annotations

import contextvars
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import grpc

from ..proto import api_pb2_grpc as api_grpc
from ..proto.errors import BusError
from .bus import Bus
from .container_events import EventHub
from .creates import CreateTable
from .metrics import Metrics
from .pool import WorkerPool
from .rpc import container, events, image, runtime_info, sandbox, stats, streaming
from .rpc.call import Call
from .rpc.status import grpc_code

log = logging.getLogger(__name__)

rpc_var: contextvars.ContextVar[str] = contextvars.ContextVar("rpc", default="-")
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

# The kubelet sets no deadline on PullImage; the image pool's progress
# watchdog (pull_progress_timeout) is what bounds a stuck pull, so the bus
# deadline only has to be generous.
UNBOUNDED_RPCS = {"PullImage": 6 * 3600.0}

Unary = Callable[[Call, Any], Awaitable[Any]]
Streaming = Callable[[Call, Any], AsyncIterator[Any]]


class Front:
    """The wrapper every RPC goes through (see module docstring)."""

    def __init__(self, bus: Bus, pools: Mapping[str, WorkerPool], metrics: Metrics,
                 request_timeout: float, creates: CreateTable, events: EventHub) -> None:
        self._bus = bus
        self._creates = creates
        self._events = events
        self._pools = pools
        self._metrics = metrics
        self._request_timeout = request_timeout

    def _begin(self, rpc: str, context: grpc.aio.ServicerContext) -> Call:
        rpc_var.set(rpc)
        request_id_var.set(secrets.token_hex(6))
        remaining = context.time_remaining()
        if remaining is None:
            remaining = UNBOUNDED_RPCS.get(rpc, self._request_timeout)
        return Call(self._bus, time.monotonic() + remaining, self._pools, self._creates,
                    self._events, self._metrics)

    async def unary(
        self, rpc: str, handler: Unary, request: Any, context: grpc.aio.ServicerContext
    ) -> Any:
        call = self._begin(rpc, context)
        started = time.monotonic()
        code = grpc.StatusCode.OK
        try:
            return await handler(call, request)
        except BusError as exc:
            code = grpc_code(exc.code)
            log.log(
                logging.DEBUG if code in _QUIET else logging.WARNING,
                "%s failed: %s: %s",
                rpc,
                code.name,
                exc.message,
            )
            await context.abort(code, exc.message)
        except Exception:
            if context.done():
                raise
            code = grpc.StatusCode.INTERNAL
            log.exception("%s failed unexpectedly", rpc)
            await context.abort(code, f"{rpc} failed unexpectedly; see podvisor logs")
        finally:
            self._metrics.observe_rpc(rpc, code.name, time.monotonic() - started)

    async def stream(
        self, rpc: str, handler: Streaming, request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        call = self._begin(rpc, context)
        started = time.monotonic()
        code = grpc.StatusCode.OK
        try:
            async for item in handler(call, request):
                yield item
        except BusError as exc:
            code = grpc_code(exc.code)
            log.log(
                logging.DEBUG if code in _QUIET else logging.WARNING,
                "%s failed: %s: %s",
                rpc,
                code.name,
                exc.message,
            )
            await context.abort(code, exc.message)
        finally:
            self._metrics.observe_rpc(rpc, code.name, time.monotonic() - started)


# Codes the kubelet provokes in normal operation; logging them loudly would
# bury real problems.
_QUIET = frozenset({grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNIMPLEMENTED})


async def serve(front: Front, listen: str, max_send: int, max_recv: int) -> grpc.aio.Server:
    """Start the CRI server on unix socket ``listen`` (mode 0660)."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_send_message_length", max_send),
            ("grpc.max_receive_message_length", max_recv),
            ("grpc.so_reuseport", 0),
        ]
    )
    api_grpc.add_RuntimeServiceServicer_to_server(  # type: ignore[no-untyped-call]
        RuntimeServiceServicer(front), server)
    api_grpc.add_ImageServiceServicer_to_server(  # type: ignore[no-untyped-call]
        ImageServiceServicer(front), server)
    if os.path.exists(listen):
        os.unlink(listen)  # left by a killed daemon; we hold the run dir lock
    # No umask games: the umask is process-wide and this awaits. With the
    # usual 022 the socket appears without write permission for others (so
    # nobody else can connect) and is then opened to the group.
    server.add_insecure_port(f"unix:{listen}")
    await server.start()
    os.chmod(listen, 0o660)
    return server


class RuntimeServiceServicer(api_grpc.RuntimeServiceServicer):
    """runtime.v1.RuntimeService: each method delegates to its rpc/ module."""

    def __init__(self, front: Front) -> None:
        self._front = front

    async def Version(self, request: Any, context: Any) -> Any:
        return await self._front.unary("Version", runtime_info.version, request, context)

    async def RunPodSandbox(self, request: Any, context: Any) -> Any:
        return await self._front.unary("RunPodSandbox", sandbox.run_pod_sandbox, request, context)

    async def StopPodSandbox(self, request: Any, context: Any) -> Any:
        return await self._front.unary("StopPodSandbox", sandbox.stop_pod_sandbox, request, context)

    async def RemovePodSandbox(self, request: Any, context: Any) -> Any:
        return await self._front.unary(
            "RemovePodSandbox", sandbox.remove_pod_sandbox, request, context
        )

    async def PodSandboxStatus(self, request: Any, context: Any) -> Any:
        return await self._front.unary(
            "PodSandboxStatus", sandbox.pod_sandbox_status, request, context
        )

    async def ListPodSandbox(self, request: Any, context: Any) -> Any:
        return await self._front.unary("ListPodSandbox", sandbox.list_pod_sandbox, request, context)

    async def StreamPodSandboxes(self, request: Any, context: Any) -> AsyncIterator[Any]:
        async for item in self._front.stream(
            "StreamPodSandboxes", sandbox.stream_pod_sandboxes, request, context
        ):
            yield item

    async def CreateContainer(self, request: Any, context: Any) -> Any:
        return await self._front.unary(
            "CreateContainer", container.create_container, request, context
        )

    async def StartContainer(self, request: Any, context: Any) -> Any:
        return await self._front.unary(
            "StartContainer", container.start_container, request, context
        )

    async def StopContainer(self, request: Any, context: Any) -> Any:
        return await self._front.unary("StopContainer", container.stop_container, request, context)

    async def RemoveContainer(self, request: Any, context: Any) -> Any:
        return await self._front.unary(
            "RemoveContainer", container.remove_container, request, context
        )

    async def ListContainers(self, request: Any, context: Any) -> Any:
        return await self._front.unary(
            "ListContainers", container.list_containers, request, context
        )

    async def StreamContainers(self, request: Any, context: Any) -> AsyncIterator[Any]:
        async for item in self._front.stream(
            "StreamContainers", container.stream_containers, request, context
        ):
            yield item

    async def ContainerStatus(self, request: Any, context: Any) -> Any:
        return await self._front.unary(
            "ContainerStatus", container.container_status, request, context
        )

    async def UpdateContainerResources(self, request: Any, context: Any) -> Any:
        return await self._front.unary(
            "UpdateContainerResources", container.update_container_resources, request, context
        )

    async def ReopenContainerLog(self, request: Any, context: Any) -> Any:
        return await self._front.unary(
            "ReopenContainerLog", container.reopen_container_log, request, context
        )

    async def ExecSync(self, request: Any, context: Any) -> Any:
        return await self._front.unary("ExecSync", streaming.exec_sync, request, context)

    async def Exec(self, request: Any, context: Any) -> Any:
        return await self._front.unary("Exec", streaming.exec, request, context)

    async def Attach(self, request: Any, context: Any) -> Any:
        return await self._front.unary("Attach", streaming.attach, request, context)

    async def PortForward(self, request: Any, context: Any) -> Any:
        return await self._front.unary("PortForward", streaming.port_forward, request, context)

    async def ContainerStats(self, request: Any, context: Any) -> Any:
        return await self._front.unary("ContainerStats", stats.container_stats, request, context)

    async def ListContainerStats(self, request: Any, context: Any) -> Any:
        return await self._front.unary(
            "ListContainerStats", stats.list_container_stats, request, context
        )

    async def StreamContainerStats(self, request: Any, context: Any) -> AsyncIterator[Any]:
        async for item in self._front.stream(
            "StreamContainerStats", stats.stream_container_stats, request, context
        ):
            yield item

    async def PodSandboxStats(self, request: Any, context: Any) -> Any:
        return await self._front.unary("PodSandboxStats", stats.pod_sandbox_stats, request, context)

    async def ListPodSandboxStats(self, request: Any, context: Any) -> Any:
        return await self._front.unary(
            "ListPodSandboxStats", stats.list_pod_sandbox_stats, request, context
        )

    async def StreamPodSandboxStats(self, request: Any, context: Any) -> AsyncIterator[Any]:
        async for item in self._front.stream(
            "StreamPodSandboxStats", stats.stream_pod_sandbox_stats, request, context
        ):
            yield item

    async def UpdateRuntimeConfig(self, request: Any, context: Any) -> Any:
        return await self._front.unary(
            "UpdateRuntimeConfig", runtime_info.update_runtime_config, request, context
        )

    async def Status(self, request: Any, context: Any) -> Any:
        return await self._front.unary("Status", runtime_info.status, request, context)

    async def CheckpointContainer(self, request: Any, context: Any) -> Any:
        return await self._front.unary(
            "CheckpointContainer", container.checkpoint_container, request, context
        )

    async def CheckpointPod(self, request: Any, context: Any) -> Any:
        return await self._front.unary("CheckpointPod", sandbox.checkpoint_pod, request, context)

    async def RestorePod(self, request: Any, context: Any) -> Any:
        return await self._front.unary("RestorePod", sandbox.restore_pod, request, context)

    async def GetContainerEvents(self, request: Any, context: Any) -> AsyncIterator[Any]:
        async for item in self._front.stream(
            "GetContainerEvents", events.get_container_events, request, context
        ):
            yield item

    async def ListMetricDescriptors(self, request: Any, context: Any) -> Any:
        return await self._front.unary(
            "ListMetricDescriptors", stats.list_metric_descriptors, request, context
        )

    async def ListPodSandboxMetrics(self, request: Any, context: Any) -> Any:
        return await self._front.unary(
            "ListPodSandboxMetrics", stats.list_pod_sandbox_metrics, request, context
        )

    async def StreamPodSandboxMetrics(self, request: Any, context: Any) -> AsyncIterator[Any]:
        async for item in self._front.stream(
            "StreamPodSandboxMetrics", stats.stream_pod_sandbox_metrics, request, context
        ):
            yield item

    async def RuntimeConfig(self, request: Any, context: Any) -> Any:
        return await self._front.unary(
            "RuntimeConfig", runtime_info.runtime_config, request, context
        )

    async def UpdatePodSandboxResources(self, request: Any, context: Any) -> Any:
        return await self._front.unary(
            "UpdatePodSandboxResources", sandbox.update_pod_sandbox_resources, request, context
        )


class ImageServiceServicer(api_grpc.ImageServiceServicer):
    """runtime.v1.ImageService: each method delegates to its rpc/ module."""

    def __init__(self, front: Front) -> None:
        self._front = front

    async def ListImages(self, request: Any, context: Any) -> Any:
        return await self._front.unary("ListImages", image.list_images, request, context)

    async def StreamImages(self, request: Any, context: Any) -> AsyncIterator[Any]:
        async for item in self._front.stream("StreamImages", image.stream_images, request, context):
            yield item

    async def ImageStatus(self, request: Any, context: Any) -> Any:
        return await self._front.unary("ImageStatus", image.image_status, request, context)

    async def PullImage(self, request: Any, context: Any) -> Any:
        return await self._front.unary("PullImage", image.pull_image, request, context)

    async def RemoveImage(self, request: Any, context: Any) -> Any:
        return await self._front.unary("RemoveImage", image.remove_image, request, context)

    async def ImageFsInfo(self, request: Any, context: Any) -> Any:
        return await self._front.unary("ImageFsInfo", image.image_fs_info, request, context)
