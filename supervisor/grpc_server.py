"""The CRI front: a grpc.aio server on the unix socket.

Every RPC of the CRI API is registered, from the API's own descriptor:
routed ones to their service's method (rpc/routes.py), the rest answered
UNIMPLEMENTED here, without a trip to a worker. ``Front`` wraps every call
the same way: a request id and the RPC name in
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
import gc
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import grpc
import psutil

from ..proto import api_pb2 as api
from ..proto import malloc
from ..proto.errors import BusError, Unimplemented, shorten
from ..proto.ops import unserved_message
from . import opclient
from .callvars import request_id_var, rpc_var
from .metrics import Metrics
from .rpc.routes import Handler
from .rpc.status import grpc_code

log = logging.getLogger(__name__)

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

Unary = Callable[[Any], Awaitable[Any]]
Streaming = Callable[[Any], AsyncIterator[Any]]


class Front:
    """The wrapper every RPC goes through (see module docstring)."""

    def __init__(self, metrics: Metrics, request_timeout: float) -> None:
        self._metrics = metrics
        self._request_timeout = request_timeout
        self._trim = MemoryTrim()

    def _begin(self, rpc: str, context: grpc.aio.ServicerContext) -> None:
        rpc_var.set(rpc)
        request_id_var.set(secrets.token_hex(6))
        remaining = context.time_remaining()
        if remaining is None:
            remaining = UNBOUNDED_RPCS.get(rpc, self._request_timeout)
        opclient.begin(time.monotonic() + remaining)

    async def unary(
        self, rpc: str, handler: Unary, request: Any, context: grpc.aio.ServicerContext
    ) -> Any:
        self._begin(rpc, context)
        started = time.monotonic()
        code = grpc.StatusCode.OK
        try:
            return await handler(request)
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
        self._begin(rpc, context)
        started = time.monotonic()
        code = grpc.StatusCode.OK
        try:
            async for item in handler(request):
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
        self._process = psutil.Process()
        # From before the first call: a check during a large call must not
        # take that call's memory for the low-water mark.
        self._low = self._process.memory_info().rss
        self._delay = TRIM_DELAY
        self._scheduled = False

    def call_ended(self) -> None:
        if not malloc.can_trim() or self._scheduled:
            return
        self._scheduled = True
        asyncio.get_running_loop().call_later(self._delay, self._check)

    def _check(self) -> None:
        self._scheduled = False
        rss = self._process.memory_info().rss
        if rss > self._low + TRIM_GROWTH:
            gc.collect()
            malloc.trim()
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


async def serve(front: Front, routes: Mapping[str, Handler], listen: str, max_send: int,
                max_recv: int) -> grpc.aio.Server:
    """Start the CRI server on unix socket ``listen`` (mode 0660)."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_send_message_length", max_send),
            ("grpc.max_receive_message_length", max_recv),
            ("grpc.so_reuseport", 0),
        ]
    )
    server.add_generic_rpc_handlers(_cri_handlers(front, routes))
    if os.path.exists(listen):
        os.unlink(listen)  # left by a killed daemon; we hold the run dir lock
    # No umask games: the umask is process-wide and this awaits. With the
    # usual 022 the socket appears without write permission for others (so
    # nobody else can connect) and is then opened to the group.
    server.add_insecure_port(f"unix:{listen}")
    await server.start()
    os.chmod(listen, 0o660)
    return server


def _cri_handlers(front: Front, routes: Mapping[str, Handler]
                  ) -> list[grpc.GenericRpcHandler]:
    """One generic handler per CRI service, covering each of its methods."""
    services = []
    for service in api.DESCRIPTOR.services_by_name.values():
        methods = {}
        for method in service.methods:
            request_type = getattr(api, method.input_type.name)
            response_type = getattr(api, method.output_type.name)
            handler = routes.get(method.name) or _unserved(method.name,
                                                           method.server_streaming)
            make = (_stream_behaviour if method.server_streaming else _unary_behaviour)
            methods[method.name] = make(front, method.name, handler, request_type,
                                        response_type)
        services.append(grpc.method_handlers_generic_handler(service.full_name, methods))
    return services


def _unserved(rpc: str, streaming: bool) -> Handler:
    async def refuse(request: Any) -> Any:
        raise Unimplemented(unserved_message(rpc))

    async def refuse_stream(request: Any) -> AsyncIterator[Any]:
        raise Unimplemented(unserved_message(rpc))
        yield  # an async generator, as a streaming handler must be

    return refuse_stream if streaming else refuse


def _unary_behaviour(front: Front, rpc: str, handler: Handler, request_type: Any,
                     response_type: Any) -> grpc.RpcMethodHandler:
    unary: Unary = handler  # type: ignore[assignment]

    async def behaviour(request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await front.unary(rpc, unary, request, context)
    return grpc.unary_unary_rpc_method_handler(
        behaviour, request_deserializer=request_type.FromString,
        response_serializer=response_type.SerializeToString)


def _stream_behaviour(front: Front, rpc: str, handler: Handler, request_type: Any,
                      response_type: Any) -> grpc.RpcMethodHandler:
    streaming: Streaming = handler  # type: ignore[assignment]

    async def behaviour(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async for item in front.stream(rpc, streaming, request, context):
            yield item
    return grpc.unary_stream_rpc_method_handler(
        behaviour, request_deserializer=request_type.FromString,
        response_serializer=response_type.SerializeToString)
