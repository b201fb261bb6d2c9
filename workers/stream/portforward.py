"""PortForward over SPDY (``portforward.k8s.io``), tunnelled in a WebSocket
or not, and over the kubelet's WebSocket channels (``serve_channels``).

Each TCP connection the client forwards is a pair of streams with the
same ``requestid`` header: ``streamtype: error`` then ``data``, both naming
the ``port``. Once both are open we connect to localhost:port in the pod's
network namespace and copy both ways. When the target ends, the data
stream is closed (FIN), then the error stream. When the client ends its
side, the target's write side is shut and it gets ``CLOSE_GRACE`` to
finish. A failed connect writes the reason on the error stream: the
client then drops the session, as it does with the kubelet. A pair not
complete within ``PAIR_TIMEOUT`` is reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

from ...proto.stream_ops import PortForwardPlan
from . import netns
from .spdyconn import Stream
from .wsconn import WebSocket

log = logging.getLogger(__name__)

PROTOCOL = "portforward.k8s.io"
CHANNELS = "v4.channel.k8s.io"
PAIR_TIMEOUT = 30.0
CLOSE_GRACE = 1.0
READ_MAX = 256 * 1024


class _Pair:
    def __init__(self) -> None:
        self.data: Stream | None = None
        self.error: Stream | None = None
        self.port = 0


class PortForwarder:
    def __init__(self, plan: PortForwardPlan) -> None:
        self._plan = plan
        self._pairs: dict[str, _Pair] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections = 0

    def on_stream(self, stream: Stream) -> bool:
        role = stream.header("streamtype")
        try:
            port = int(stream.header("port"))
        except ValueError:
            port = 0
        if role not in ("data", "error") or not 1 <= port <= 65535:
            log.warning("Refusing a port-forward stream: streamtype %.20r, port %.20r",
                        role, stream.header("port"))
            return False
        # Clients before requestID paired an error stream with the data
        # stream two ids later.
        request = stream.header("requestid") or str(stream.id if role == "error"
                                                     else stream.id - 2)
        pair = self._pairs.get(request)
        if pair is None:
            pair = self._pairs[request] = _Pair()
            pair.port = port
            self._spawn(self._expire(request))
        if getattr(pair, role) is not None:
            log.warning("Refusing a second %s stream for port-forward request %.20r",
                        role, request)
            return False
        setattr(pair, role, stream)
        if pair.data is not None and pair.error is not None:
            del self._pairs[request]
            self._spawn(self._forward(pair.data, pair.error, pair.port))
        return True

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _expire(self, request: str) -> None:
        await asyncio.sleep(PAIR_TIMEOUT)
        pair = self._pairs.pop(request, None)
        if pair is not None:
            log.warning("Port-forward request %.20r: no stream pair within %.0fs", request,
                        PAIR_TIMEOUT)
            for stream in (pair.data, pair.error):
                if stream is not None:
                    await stream.reset()

    async def _forward(self, data: Stream, error: Stream, port: int) -> None:
        self.connections += 1
        try:
            sock = await netns.connect(self._plan.netns, port)
        except (netns.ConnectError, OSError) as exc:
            log.info("Port-forward to port %d of pod %s failed: %s", port,
                     self._plan.sandbox_id, exc)
            await error.write(f"error forwarding port {port} to pod "
                              f"{self._plan.sandbox_id}: {exc}".encode())
            await error.close()
            await data.reset()
            return
        try:
            reader, writer = await asyncio.open_connection(sock=sock)
            await _copy(data, reader, writer)
            await data.close()
            await error.close()
        finally:
            sock.close()

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()


async def _copy(data: Stream, reader: asyncio.StreamReader,
                writer: asyncio.StreamWriter) -> None:
    async def upstream() -> None:
        while chunk := await data.read():
            writer.write(chunk)
            await writer.drain()
        with contextlib.suppress(OSError, RuntimeError):
            writer.write_eof()

    async def downstream() -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while chunk := await reader.read(READ_MAX):
                await data.write(chunk)

    up = asyncio.create_task(upstream())
    down = asyncio.create_task(downstream())
    try:
        _, pending = await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        # Either side ended: the other gets a moment, as the kubelet's.
        if pending:
            await asyncio.wait(pending, timeout=CLOSE_GRACE)
    finally:
        for task in (up, down):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        writer.close()


async def serve_channels(plan: PortForwardPlan, ports: list[int], ws: WebSocket) -> None:
    """The kubelet's own WebSocket port-forward (``v4.channel.k8s.io``): one
    connection per port for the life of the WebSocket, port i's data on
    channel 2i and its errors on 2i+1, each channel opened by a message of
    the port number (2 bytes, little-endian). The WebSocket closes once
    every target has ended, or the client closes it."""
    targets: dict[int, asyncio.StreamWriter] = {}
    pumps: list[asyncio.Task[None]] = []
    for index, port in enumerate(ports):
        prefix = port.to_bytes(2, "little")
        await ws.send(bytes([2 * index]) + prefix)
        await ws.send(bytes([2 * index + 1]) + prefix)
    for index, port in enumerate(ports):
        try:
            reader, writer = await asyncio.open_connection(
                sock=await netns.connect(plan.netns, port))
        except (netns.ConnectError, OSError) as exc:
            await ws.send(bytes([2 * index + 1]) + f"error forwarding port {port} to pod "
                          f"{plan.sandbox_id}: {exc}".encode())
            continue
        targets[2 * index] = writer
        pumps.append(asyncio.create_task(_to_channel(reader, ws, 2 * index)))
    upstream = asyncio.create_task(_from_channels(ws, targets))
    ended = asyncio.ensure_future(_all(pumps))
    try:
        if pumps:
            await asyncio.wait({upstream, ended}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (upstream, *pumps):
            task.cancel()
        ended.cancel()
        for writer in targets.values():
            writer.close()


async def _to_channel(reader: asyncio.StreamReader, ws: WebSocket, channel: int) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while chunk := await reader.read(READ_MAX):
            await ws.send(bytes([channel]) + chunk)


async def _from_channels(ws: WebSocket, targets: dict[int, asyncio.StreamWriter]) -> None:
    while (message := await ws.recv()) is not None:
        writer = targets.get(message[0]) if message else None
        if writer is not None and len(message) > 1:
            with contextlib.suppress(ConnectionError, OSError):
                writer.write(message[1:])
                await writer.drain()


async def _all(tasks: list[asyncio.Task[None]]) -> None:
    await asyncio.gather(*tasks, return_exceptions=True)
