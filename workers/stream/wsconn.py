"""A server WebSocket (RFC 6455) on an asyncio connection, with wsproto.

wsproto does the framing, masking and the close handshake; this adds the
loop: whole messages in (fragments joined, at most ``MESSAGE_MAX``
bytes), pings answered with pongs (client-go's read deadline moves only
on a pong), binary messages out. A text message, or one too big, is a
protocol error: the session is closed with 1003 or 1009 and a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from wsproto import WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    TextMessage,
)
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError

from .transport import READ_MAX

log = logging.getLogger(__name__)

MESSAGE_MAX = 1024 * 1024


class WebSocket:
    """An accepted WebSocket: ``recv`` answers None once it is closed."""

    def __init__(self, ws: WSConnection, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, idle_timeout: float) -> None:
        self._ws = ws
        self._idle_timeout = idle_timeout
        self._last_active = time.monotonic()
        self._reader = reader
        self._writer = writer
        self._partial = bytearray()
        self._messages: list[bytes] = []
        self._closed = False
        self._lock = asyncio.Lock()

    async def recv(self) -> bytes | None:
        while not self._messages:
            if self._closed:
                return None
            data = await self._read()
            if not data:
                self._closed = True
                return None
            self._ws.receive_data(data)
            for event in self._ws.events():
                await self._on(event)
        return self._messages.pop(0)

    async def _read(self) -> bytes:
        """Bytes from the client; b"" at its end, or once the session has
        seen no frame either way for ``idle_timeout`` seconds."""
        while True:
            left = self._last_active + self._idle_timeout - time.monotonic()
            try:
                data = await asyncio.wait_for(self._reader.read(READ_MAX), max(left, 0.0))
            except TimeoutError:
                if time.monotonic() - self._last_active < self._idle_timeout:
                    continue  # we sent something meanwhile
                log.info("Closing a WebSocket idle for %.0fs", self._idle_timeout)
                await self.close(CloseReason.GOING_AWAY)
                return b""
            except (ConnectionError, OSError):
                return b""
            self._last_active = time.monotonic()
            return data

    async def _on(self, event: Event) -> None:
        if isinstance(event, Ping):
            await self._send_event(event.response())
        elif isinstance(event, CloseConnection):
            if self._ws.state is ConnectionState.REMOTE_CLOSING:
                await self._send_event(event.response())
            self._closed = True
        elif isinstance(event, TextMessage):
            log.warning("Closing a WebSocket: text message on a binary protocol")
            await self.close(CloseReason.UNSUPPORTED_DATA)
        elif isinstance(event, BytesMessage | Message):
            data = event.data.encode() if isinstance(event.data, str) else bytes(event.data)
            self._partial += data
            if len(self._partial) > MESSAGE_MAX:
                log.warning("Closing a WebSocket: a message over %d bytes", MESSAGE_MAX)
                await self.close(CloseReason.MESSAGE_TOO_BIG)
                return
            if event.message_finished:
                self._messages.append(bytes(self._partial))
                self._partial.clear()

    async def send(self, data: bytes) -> None:
        if not self._closed and self._ws.state is ConnectionState.OPEN:
            await self._send_event(BytesMessage(data=data))

    async def _send_event(self, event: Event) -> None:
        async with self._lock:
            self._last_active = time.monotonic()
            with contextlib.suppress(ConnectionError, OSError, LocalProtocolError):
                self._writer.write(self._ws.send(event))
                await self._writer.drain()

    async def close(self, code: int = CloseReason.NORMAL_CLOSURE) -> None:
        if self._ws.state is ConnectionState.OPEN:
            await self._send_event(CloseConnection(code=code))
        self._closed = True
        if not self._writer.is_closing():
            self._writer.close()
            with contextlib.suppress(ConnectionError, OSError, TimeoutError):
                await asyncio.wait_for(self._writer.wait_closed(), 5.0)


class WsTransport:
    """The payloads of a WebSocket as one byte stream: SPDY tunnelled in
    binary messages split anywhere (client-go's tunnelling dialer)."""

    def __init__(self, ws: WebSocket) -> None:
        self._ws = ws
        self._out: list[bytes] = []

    async def read(self) -> bytes:
        # An empty message is no end: the end is the close (None).
        while (data := await self._ws.recv()) is not None:
            if data:
                return data
        return b""

    def write(self, data: bytes) -> None:
        self._out.append(data)

    async def drain(self) -> None:
        while self._out:
            await self._ws.send(self._out.pop(0))

    async def close(self) -> None:
        await self._ws.close()
