"""The byte pipe a session runs on: a TCP (or TLS) connection after its
HTTP upgrade, or the payloads of a WebSocket that tunnels SPDY.

``read`` answers b"" at the end; ``write`` queues and ``drain`` waits for
room, as asyncio's streams do; ``close`` is final and safe to repeat.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

READ_MAX = 256 * 1024


class Transport(Protocol):
    async def read(self) -> bytes: ...
    def write(self, data: bytes) -> None: ...
    async def drain(self) -> None: ...
    async def close(self) -> None: ...


class TcpTransport:
    """A connection whose first bytes (past the HTTP head) were read already."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 pending: bytes = b"") -> None:
        self._reader = reader
        self._writer = writer
        self._pending = pending

    async def read(self) -> bytes:
        if self._pending:
            data, self._pending = self._pending, b""
            return data
        try:
            return await self._reader.read(READ_MAX)
        except (ConnectionError, OSError):
            return b""

    def write(self, data: bytes) -> None:
        if not self._writer.is_closing():
            self._writer.write(data)

    async def drain(self) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.drain()

    async def close(self) -> None:
        if self._writer.is_closing():
            return
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError, asyncio.TimeoutError):
            await asyncio.wait_for(self._writer.wait_closed(), 5.0)
