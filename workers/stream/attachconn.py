"""An attach: a client of conmon's attach and control sockets.

conmon's side is conmon/contract.py, restated here as the rooms rule
wants: the attach socket is SOCK_SEQPACKET, each packet from conmon is one
stream byte (1 stdout, 2 stderr) then output; what we send is stdin, and
``shutdown(SHUT_WR)`` ends it (conmon closes the container's stdin under
stdin_once). conmon closes us when the container has exited. The control
socket takes ``resize <rows> <cols>`` and answers one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

from ...proto.stream_ops import AttachPlan

log = logging.getLogger(__name__)

PACKET_MAX = 32 * 1024 + 1
STDOUT, STDERR = 1, 2
RESIZE_TIMEOUT = 5.0


class AttachError(Exception):
    pass


class AttachConnection:
    def __init__(self, plan: AttachPlan) -> None:
        self._plan = plan
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        self._sock.setblocking(False)

    async def start(self) -> None:
        try:
            await asyncio.get_running_loop().sock_connect(self._sock, self._plan.attach_socket)
        except OSError as exc:
            raise AttachError(f"container {self._plan.container_id} is not running "
                              f"(its monitor's attach socket: {exc.strerror})") from None

    async def output(self) -> tuple[int, bytes] | None:
        """The next (stream, bytes); None once conmon closed us (the
        container exited)."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                packet = await loop.sock_recv(self._sock, PACKET_MAX)
            except OSError:
                return None
            if not packet:
                return None
            if packet[0] in (STDOUT, STDERR) and len(packet) > 1:
                return packet[0], packet[1:]

    async def write_stdin(self, data: bytes) -> None:
        if not self._plan.stdin:
            return
        loop = asyncio.get_running_loop()
        with contextlib.suppress(OSError):
            for start in range(0, len(data), PACKET_MAX - 1):
                await loop.sock_sendall(self._sock, data[start:start + PACKET_MAX - 1])

    async def close_stdin(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)

    async def resize(self, width: int, height: int) -> None:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(self._plan.control_socket), RESIZE_TIMEOUT)
            writer.write(f"resize {height} {width}\n".encode())
            reply = await asyncio.wait_for(reader.readline(), RESIZE_TIMEOUT)
            writer.close()
            if not reply.startswith(b"ok"):
                log.info("Resize of container %s refused: %s", self._plan.container_id,
                         reply.decode(errors="replace").strip())
        except (OSError, TimeoutError) as exc:
            log.info("Resize of container %s failed: %s", self._plan.container_id, exc)

    async def wait(self) -> int | None:
        return None

    async def kill(self) -> None:
        """Detach: the container goes on."""

    def close(self) -> None:
        self._sock.close()
