"""Exec and attach over WebSocket: the channel protocols v4 and v5.

Every binary message is one channel byte and a payload: 0 stdin, 1
stdout, 2 stderr, 3 error (the status, JSON), 4 resize (one JSON size
per message). v5 adds ``[255, channel]``, the client closing a channel:
for stdin, its end. The session ends with the status on channel 3 and a
normal close (1000), which is what client-go reads as the end; any other
ending it reports as an error.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from ...proto.stream_ops import Streams
from .wsconn import WebSocket

log = logging.getLogger(__name__)

V5, V4 = "v5.channel.k8s.io", "v4.channel.k8s.io"
PROTOCOLS = (V5, V4)
STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
CHUNK = 32 * 1024


class WsChannels:
    def __init__(self, ws: WebSocket, version: str, streams: Streams) -> None:
        self._ws = ws
        self._version = version
        self._streams = streams
        self.has_stdin = streams.stdin
        self._stdin: asyncio.Queue[bytes] = asyncio.Queue(maxsize=64)
        self._resize: asyncio.Queue[bytes] = asyncio.Queue(maxsize=64)
        self._gone = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while (message := await self._ws.recv()) is not None:
                if not message:
                    continue
                channel, payload = message[0], message[1:]
                if channel == STDIN and payload:
                    await self._stdin.put(payload)
                elif channel == RESIZE and payload:
                    await self._resize.put(payload.rstrip(b"\n") + b"\n")
                elif channel == CLOSE and self._version == V5:
                    if payload == bytes([STDIN]):
                        await self._stdin.put(b"")
                    elif len(payload) != 1:
                        log.warning("Ignoring a malformed v5 close message of %d bytes",
                                    len(message))
        finally:
            self._gone.set()
            for queue in (self._stdin, self._resize):
                if queue.empty():
                    queue.put_nowait(b"")

    async def stdin(self) -> bytes:
        return await self._stdin.get()

    async def resize(self) -> bytes:
        return await self._resize.get()

    async def write(self, stream: int, data: bytes) -> None:
        if (stream == STDOUT and self._streams.stdout) or \
                (stream == STDERR and self._streams.stderr):
            for start in range(0, len(data), CHUNK):
                await self._ws.send(bytes([stream]) + data[start:start + CHUNK])

    async def finish(self, status: dict[str, Any]) -> None:
        await self._ws.send(bytes([ERROR]) + json.dumps(status).encode())
        await self._ws.close()

    async def gone(self) -> None:
        await self._gone.wait()

    def stop(self) -> None:
        self._reader.cancel()
