"""Exec and attach, whatever protocol carries them.

A protocol (SPDY, WebSocket) offers ``Channels``; a backend (an exec'd
process, or conmon's attach socket) offers output, stdin and resize. This
module pumps one into the other and ends the session the way client-go
reads it:

- stdin from the client goes to the backend; its end closes the
  backend's stdin;
- resize messages (JSON ``{"Width": w, "Height": h}``, one per line) set
  the tty's size; a malformed one is logged and skipped;
- output goes to the client until the backend has none left;
- then the status: Success, or for an exec that exited non-zero the
  ``NonZeroExitCode`` Failure carrying the code, as the kubelet writes it.

If the client goes first, the backend is killed (exec) or detached
(attach).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol

log = logging.getLogger(__name__)

RESIZE_LINE_MAX = 4096


class Backend(Protocol):
    async def output(self) -> tuple[int, bytes] | None: ...
    async def write_stdin(self, data: bytes) -> None: ...
    async def close_stdin(self) -> None: ...
    async def resize(self, width: int, height: int) -> None: ...
    async def wait(self) -> int | None: ...
    async def kill(self) -> None: ...


class Channels(Protocol):
    """What a protocol gives a session; ``stdin`` and ``resize`` answer b""
    once the client closed that stream or went."""

    @property
    def has_stdin(self) -> bool: ...

    async def stdin(self) -> bytes: ...
    async def resize(self) -> bytes: ...
    async def write(self, stream: int, data: bytes) -> None: ...
    async def finish(self, status: dict[str, Any]) -> None: ...
    async def gone(self) -> None:
        """Returns once the client has gone."""


def success() -> dict[str, Any]:
    return {"metadata": {}, "status": "Success"}


def failure(message: str, reason: str = "InternalError", code: int = 500,
            causes: list[dict[str, str]] | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"metadata": {}, "status": "Failure", "message": message,
                              "reason": reason}
    if causes:
        status["details"] = {"causes": causes}
    else:
        status["code"] = code
    return status


def exit_status(code: int) -> dict[str, Any]:
    if code == 0:
        return success()
    return failure(f"command terminated with non-zero exit code: exit status {code}",
                   reason="NonZeroExitCode",
                   causes=[{"reason": "ExitCode", "message": str(code & 0xFF)}])


async def resize_events(read: Any) -> AsyncIterator[tuple[int, int]]:
    """(width, height) pairs from a resize stream of JSON lines."""
    buffer = b""
    while chunk := await read():
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        if len(buffer) > RESIZE_LINE_MAX:
            log.warning("Dropping a resize message longer than %d bytes", RESIZE_LINE_MAX)
            buffer = b""
        for line in lines:
            size = parse_size(line)
            if size is not None:
                yield size
    if buffer.strip():
        size = parse_size(buffer)
        if size is not None:
            yield size


def parse_size(line: bytes) -> tuple[int, int] | None:
    if not line.strip():
        return None
    try:
        doc = json.loads(line)
        width, height = doc["Width"], doc["Height"]
        if not all(isinstance(v, int) and 0 <= v <= 0xFFFF for v in (width, height)):
            raise ValueError("Width and Height must be integers from 0 to 65535")
        return width, height
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("Ignoring a malformed resize message (%s): %.80r", exc, line)
        return None


async def run(kind: str, channels: Channels, backend: Backend) -> None:
    """Pump until the backend is done or the client is gone."""
    pumps = [asyncio.create_task(_stdin(channels, backend)),
             asyncio.create_task(_resizes(channels, backend))]
    main = asyncio.create_task(_output(channels, backend))
    gone = asyncio.create_task(channels.gone())
    try:
        await asyncio.wait({main, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not main.done():
            log.info("The client of a %s session went; ending it", kind)
            main.cancel()
            await backend.kill()
            return
        code = main.result()
        status = success() if code is None else exit_status(code)
        await channels.finish(status)
    finally:
        for task in (*pumps, main, gone):
            task.cancel()
        for task in (*pumps, main, gone):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def _output(channels: Channels, backend: Backend) -> int | None:
    while (chunk := await backend.output()) is not None:
        await channels.write(*chunk)
    return await backend.wait()


async def _stdin(channels: Channels, backend: Backend) -> None:
    if not channels.has_stdin:
        return
    while data := await channels.stdin():
        await backend.write_stdin(data)
    await backend.close_stdin()


async def _resizes(channels: Channels, backend: Backend) -> None:
    async for width, height in resize_events(channels.resize):
        await backend.resize(width, height)
