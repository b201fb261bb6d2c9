"""Exec and attach over SPDY: the remotecommand stream set (v1-v4).

The client opens one stream per role, named by its ``streamtype`` header:
error, then stdin, stdout, stderr (never with a tty), resize (v3+, tty
only). The set expected is known from the URL's request, and the session
starts once all of it is open, within ``CREATE_TIMEOUT`` as the kubelet's.
v4 writes the status as JSON on the error stream; v1-v3 write only a
failure's message, as text.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from ...proto.stream_ops import Streams
from .spdyconn import SpdySession, Stream

V4, V3, V2, V1 = "v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"
PROTOCOLS = (V4, V3, V2, V1)
CREATE_TIMEOUT = 30.0
ERROR, STDIN, STDOUT, STDERR, RESIZE = "error", "stdin", "stdout", "stderr", "resize"
OUTPUT = {1: STDOUT, 2: STDERR}


def expected(version: str, streams: Streams) -> set[str]:
    roles = {ERROR}
    roles |= {STDIN} if streams.stdin else set()
    roles |= {STDOUT} if streams.stdout else set()
    roles |= {STDERR} if streams.stderr and not streams.tty else set()
    roles |= {RESIZE} if streams.tty and version in (V4, V3) else set()
    return roles


class SpdyChannels:
    def __init__(self, version: str, streams: Streams) -> None:
        self.version = version
        self._want = expected(version, streams)
        self._got: dict[str, Stream] = {}
        self._complete = asyncio.Event()
        self.session: SpdySession | None = None
        self.serving: asyncio.Task[None] | None = None

    @property
    def has_stdin(self) -> bool:
        return STDIN in self._got

    def on_stream(self, stream: Stream) -> bool:
        role = stream.header("streamtype")
        if role not in self._want or role in self._got:
            return False
        self._got[role] = stream
        if set(self._got) == self._want:
            self._complete.set()
        return True

    async def ready(self) -> bool:
        try:
            await asyncio.wait_for(self._complete.wait(), CREATE_TIMEOUT)
            return True
        except TimeoutError:
            return False

    async def stdin(self) -> bytes:
        stream = self._got.get(STDIN)
        return await stream.read() if stream is not None else b""

    async def resize(self) -> bytes:
        stream = self._got.get(RESIZE)
        return await stream.read() if stream is not None else b""

    async def write(self, stream: int, data: bytes) -> None:
        target = self._got.get(OUTPUT.get(stream, ""))
        if target is not None:
            await target.write(data)

    async def finish(self, status: dict[str, Any]) -> None:
        for role in (STDOUT, STDERR):
            if role in self._got:
                await self._got[role].close()
        error = self._got[ERROR]
        if self.version == V4:
            await error.write(json.dumps(status).encode())
        elif status["status"] != "Success":
            await error.write(str(status.get("message", "")).encode())
        await error.close()

    async def gone(self) -> None:
        assert self.serving is not None
        await asyncio.shield(self.serving)
