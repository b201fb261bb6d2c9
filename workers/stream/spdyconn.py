"""A SPDY/3.1 session on a transport, as moby/spdystream's peer.

The client opens every stream (odd ids); we answer each SYN_STREAM at once,
with an empty SYN_REPLY or a RST_STREAM, because the client waits for the
reply before it opens the next one and drops data sent before it. We
never open a stream, never send a frame before the client's first (its
HTTP reader may swallow it), echo its PINGs, and ignore flow control:
spdystream neither sends nor honours WINDOW_UPDATE.

Backpressure
    A stream's inbox holds at most ``INBOX_MAX`` bytes; past that the read
    loop waits for the consumer, which stalls the whole connection as
    spdystream's own workers do. Writes wait for the transport to drain.

Ending
    ``close()`` resets the streams still open, sends GOAWAY and closes the
    transport; the client sees EOF on every stream. A protocol error from
    the client is answered with GOAWAY and the same close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from . import spdy
from .transport import Transport

log = logging.getLogger(__name__)

INBOX_MAX = 1024 * 1024
DATA_MAX = 256 * 1024
# Frames from untrusted clients: far above any header block or chunk a
# real client sends.
FRAME_MAX = 1024 * 1024


class Stream:
    def __init__(self, session: SpdySession, frame: spdy.SynStream) -> None:
        self.id = frame.stream_id
        self.headers = frame.headers
        self._session = session
        self._inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self._queued = 0
        self._room = asyncio.Event()
        self._room.set()
        self.remote_closed = False
        self.local_closed = False
        if frame.fin:
            self._end()

    def header(self, name: str) -> str:
        values = self.headers.get(name.lower(), [])
        return values[0] if values else ""

    async def read(self) -> bytes:
        """The next chunk from the client; b"" once it closed or reset."""
        if self.remote_closed and self._inbox.empty():
            return b""
        data = await self._inbox.get()
        self._queued -= len(data)
        if self._queued <= INBOX_MAX:
            self._room.set()
        return data

    async def write(self, data: bytes) -> None:
        for start in range(0, len(data), DATA_MAX):
            if self.local_closed:
                return
            await self._session.send(spdy.Data(self.id, data[start:start + DATA_MAX]))

    async def close(self) -> None:
        """Half-close: FIN, as spdystream's ``Stream.Close``."""
        if not self.local_closed:
            self.local_closed = True
            await self._session.send(spdy.Data(self.id, b"", fin=True))

    async def reset(self) -> None:
        if not (self.local_closed and self.remote_closed):
            self.local_closed = True
            self._end()
            await self._session.send(spdy.RstStream(self.id, spdy.RstStatus.CANCEL))

    def _deliver(self, data: bytes) -> None:
        if self.remote_closed or not data:
            return
        self._queued += len(data)
        self._inbox.put_nowait(data)
        if self._queued > INBOX_MAX:
            self._room.clear()

    def _end(self) -> None:
        if not self.remote_closed:
            self.remote_closed = True
            self._inbox.put_nowait(b"")
            self._room.set()


# Called for each new stream: True accepts it (SYN_REPLY), False resets it.
StreamHandler = Callable[[Stream], bool]


class SpdySession:
    def __init__(self, transport: Transport, on_stream: StreamHandler,
                 idle_timeout: float) -> None:
        self._transport = transport
        self._on_stream = on_stream
        self._idle_timeout = idle_timeout
        self._codec = spdy.FrameCodec(max_frame=FRAME_MAX)
        self._streams: dict[int, Stream] = {}
        self._last_id = 0
        self._write_lock = asyncio.Lock()
        self._closed = False
        self.last_active = time.monotonic()

    async def run(self) -> None:
        """Serve frames until the client goes, breaks the protocol or idles."""
        try:
            while not self._closed:
                try:
                    data = await asyncio.wait_for(self._transport.read(), self._idle_left())
                except TimeoutError:
                    log.info("Closing a SPDY session idle for %.0fs", self._idle_timeout)
                    return
                if not data:
                    return
                self.last_active = time.monotonic()
                for frame in self._codec.feed(data):
                    stream = await self._handle(frame)
                    if stream is not None:
                        await stream._room.wait()
        except spdy.SpdyError as exc:
            log.warning("Closing a SPDY session: protocol error from the client: %s", exc)
            with contextlib.suppress(spdy.SpdyError, ValueError):
                await self.send(spdy.GoAway(self._last_id, spdy.GoAwayStatus.PROTOCOL_ERROR))
        finally:
            for stream in list(self._streams.values()):
                stream._end()

    def _idle_left(self) -> float:
        return max(0.0, self.last_active + self._idle_timeout - time.monotonic())

    async def _handle(self, frame: spdy.Frame) -> Stream | None:
        if isinstance(frame, spdy.SynStream):
            await self._open(frame)
        elif isinstance(frame, spdy.Data):
            stream = self._streams.get(frame.stream_id)
            if stream is not None:
                stream._deliver(frame.data)
                if frame.fin:
                    stream._end()
                return stream
        elif isinstance(frame, spdy.RstStream):
            stream = self._streams.pop(frame.stream_id, None)
            if stream is not None:
                stream.local_closed = True
                stream._end()
        elif isinstance(frame, spdy.Headers):
            stream = self._streams.get(frame.stream_id)
            if stream is not None and frame.fin:
                stream._end()
        elif isinstance(frame, spdy.Ping):
            # Ours would be even; the client's are odd and get echoed.
            if frame.ping_id % 2 == 1:
                await self.send(frame)
        elif isinstance(frame, spdy.GoAway):
            self._closed = True
        return None

    async def _open(self, frame: spdy.SynStream) -> None:
        if frame.stream_id % 2 == 0 or frame.stream_id <= self._last_id:
            await self.send(spdy.RstStream(frame.stream_id, spdy.RstStatus.PROTOCOL_ERROR))
            return
        self._last_id = frame.stream_id
        stream = Stream(self, frame)
        if not self._on_stream(stream):
            await self.send(spdy.RstStream(frame.stream_id, spdy.RstStatus.REFUSED_STREAM))
            return
        self._streams[stream.id] = stream
        await self.send(spdy.SynReply(stream.id))

    async def send(self, frame: spdy.Frame) -> None:
        if self._closed and not isinstance(frame, spdy.GoAway):
            return
        async with self._write_lock:
            self._transport.write(self._codec.encode(frame))
            self.last_active = time.monotonic()
            await self._transport.drain()

    async def close(self) -> None:
        """Reset what is open, say GOAWAY, close the transport."""
        if not self._closed:
            for stream in list(self._streams.values()):
                with contextlib.suppress(ConnectionError, OSError):
                    await stream.reset()
            with contextlib.suppress(ConnectionError, OSError):
                await self.send(spdy.GoAway(self._last_id, spdy.GoAwayStatus.OK))
            self._closed = True
        await self._transport.close()
