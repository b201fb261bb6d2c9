"""The CRI front: a grpc.aio server on the unix socket.

The servicers' methods are one-line delegations to ``rpc/<group>.py``;
``Front`` wraps every call the same way: a request id and the RPC name in
the logging context, the deadline taken from the caller (or the configured
default when it set none), metrics by method and status code, and the one
mapping from ``BusError`` to a gRPC status (rpc/status.py). An error
escaping a handler that is not a ``BusError`` is a podvisor bug: it is
logged with its traceback and answered INTERNAL.

Status messages echo CRI values, which may be megabytes long; gRPC sends
the message percent-encoded in a trailer, and past its metadata limits (8
KiB soft, 16 KiB hard) the client sees RESOURCE_EXHAUSTED instead of the
real code. So every message is cut here (``status_message``), once for all.

A failed call ends with ``set_code``/``set_details``, never
``context.abort()``: gRPC keeps its last call's state until the next call
arrives, and the AbortError kept there holds, through its traceback, the
frames and so the request (79 MB of it, once). Memory a large call used is
then handed back to the kernel (``MemoryTrim``).
"""

from __future__ import annotations

import asyncio
import contextvars
import ctypes
import gc
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import grpc
import psutil

from ..proto import api_pb2_grpc as api_grpc
from ..proto.errors import BusError, shorten
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

# The trim check runs this long after a call ends: by then gRPC has let go
# of the call's request.
TRIM_DELAY = 0.5
TRIM_DELAY_MAX = 60.0
# RSS above its low-water mark that makes malloc_trim worth its ~1 ms.
TRIM_GROWTH = 16 * 1024 * 1024

# UTF-8 bytes of a status message: 3 KB at worst once percent-encoded.
STATUS_MESSAGE_MAX = 1000
# What shorten() appends to a cut text ("…(+N chars)") fits in this.
_CUT_MARK = 32

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
        self._trim = MemoryTrim()

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
            code, message = _failed(rpc, exc)
        except Exception:
            if context.done():
                raise
            code = grpc.StatusCode.INTERNAL
            log.exception("%s failed unexpectedly", rpc)
            message = f"{rpc} failed unexpectedly; see podvisor logs"
        finally:
            self._metrics.observe_rpc(rpc, code.name, time.monotonic() - started)
            self._trim.call_ended()
        # gRPC sends the status set here and discards the None response.
        context.set_code(code)
        context.set_details(message)
        return None

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
            code, message = _failed(rpc, exc)
            context.set_code(code)
            context.set_details(message)
        finally:
            self._metrics.observe_rpc(rpc, code.name, time.monotonic() - started)
            self._trim.call_ended()


class MemoryTrim:
    """Hands back to the kernel the memory large calls leave behind.

    A large request passes through gRPC's buffers, a bytes object, protobuf's
    arena and the bus; after a 79 MB one the supervisor's RSS stayed 60 to
    130 MB up (measured). Two things keep it: reference cycles between an
    error's traceback and the frames holding the request (gc.collect()
    breaks them), and glibc's free lists (malloc_trim(0) releases the free
    pages of every arena). The check runs after calls end, at most once per
    delay, and trims only while the RSS is TRIM_GROWTH above its low-water
    mark, so the normal case costs one RSS read; a trim that gives little
    back (the memory is in use) doubles the delay, up to TRIM_DELAY_MAX.
    Without glibc there is no malloc_trim and nothing is done.
    """

    def __init__(self) -> None:
        self._malloc_trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
        self._process = psutil.Process()
        # From before the first call: a check during a large call must not
        # take that call's memory for the low-water mark.
        self._low = self._process.memory_info().rss
        self._delay = TRIM_DELAY
        self._scheduled = False

    def call_ended(self) -> None:
        if self._malloc_trim is None or self._scheduled:
            return
        self._scheduled = True
        asyncio.get_running_loop().call_later(self._delay, self._check)

    def _check(self) -> None:
        self._scheduled = False
        rss = self._process.memory_info().rss
        if rss > self._low + TRIM_GROWTH:
            assert self._malloc_trim is not None
            gc.collect()
            self._malloc_trim(0)
            before, rss = rss, self._process.memory_info().rss
            log.debug("Trimmed memory: RSS %d MiB -> %d MiB", before >> 20, rss >> 20)
            self._delay = TRIM_DELAY if before - rss >= TRIM_GROWTH \
                else min(2 * self._delay, TRIM_DELAY_MAX)
        # Only ever lowered: memory a call still held at one check is given
        # back at a later one, once that call has let it go.
        self._low = min(self._low, rss)


# Codes the kubelet provokes in normal operation; logging them loudly would
# bury real problems.
_QUIET = frozenset({grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNIMPLEMENTED})


def _failed(rpc: str, exc: BusError) -> tuple[grpc.StatusCode, str]:
    """Log a failed call; return its status code and message."""
    code = grpc_code(exc.code)
    message = status_message(exc.message)
    log.log(logging.DEBUG if code in _QUIET else logging.WARNING,
            "%s failed: %s: %s", rpc, code.name, message)
    return code, message


def status_message(message: str) -> str:
    """``message`` as a status may carry it: control characters escaped, at
    most STATUS_MESSAGE_MAX bytes, its start kept and its cut marked."""
    text = shorten(message, STATUS_MESSAGE_MAX - _CUT_MARK)
    raw = text.encode()
    if len(raw) <= STATUS_MESSAGE_MAX:
        return text
    # Wide characters or escapes made the text outgrow its character count.
    return raw[:STATUS_MESSAGE_MAX - len("…".encode())].decode(errors="ignore") + "…"


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
