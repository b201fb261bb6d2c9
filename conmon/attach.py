"""The attach socket: output out to every client, stdin in from any.

Protocol (contract.py): SOCK_SEQPACKET, so every packet keeps its
boundaries and needs no length prefix. Out: one stream byte (1 stdout,
2 stderr) then up to ``PACKET_MAX`` bytes of raw output. In: raw stdin
bytes; end of a client's stdin is its ``shutdown(SHUT_WR)`` (or close).

Invariants
    - A client gets all output read after its connect() returned, and
      nothing from before (the log has that).
    - A slow client never slows the container: output it can't take yet is
      queued, up to ``QUEUE_MAX`` bytes, and a client further behind is
      disconnected (it can reread the log).
    - Stdin is the other way round: a container that doesn't read its stdin
      pushes back on the clients. While ``StdinSink`` holds ``SINK_MAX``
      unwritten bytes no client is read.
    - Under stdin_once the first client whose stdin ends closes the
      container's stdin, once what it sent has been written (CRI: "stdin
      will be closed after the first attach session completes").
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .loop import READ, WRITE, Loop

PACKET_MAX = 32 * 1024
QUEUE_MAX = 1024 * 1024
SINK_MAX = 64 * 1024
RECV_MAX = 64 * 1024


class StdinSink:
    """The container's stdin: a pipe's write end, or a dup of the pty master."""

    def __init__(self, loop: Loop, fd: int, on_room: Callable[[], None]) -> None:
        self._loop = loop
        self._fd = fd
        self._on_room = on_room
        self._buffer = bytearray()
        self._closing = False
        os.set_blocking(fd, False)

    @property
    def full(self) -> bool:
        return len(self._buffer) >= SINK_MAX

    def feed(self, data: bytes) -> None:
        if self._fd < 0 or self._closing:
            return
        self._buffer += data
        self._flush()

    def close_when_written(self) -> None:
        self._closing = True
        self._flush()

    def _flush(self) -> None:
        was_full = self.full
        while self._buffer and self._fd >= 0:
            try:
                del self._buffer[:os.write(self._fd, self._buffer)]
            except BlockingIOError:
                break
            except OSError:
                # The container closed its stdin (EPIPE) or its tty is gone
                # (EIO): what it never reads is dropped.
                self._buffer.clear()
        if self._fd < 0:
            return
        self._loop.watch(self._fd, WRITE if self._buffer else 0, self._on_writable)
        if self._closing and not self._buffer:
            self.close()
        if was_full and not self.full:
            self._on_room()

    def _on_writable(self, _mask: int) -> None:
        self._flush()

    def close(self) -> None:
        if self._fd >= 0:
            self._loop.unwatch(self._fd)
            os.close(self._fd)
            self._fd = -1
            self._buffer.clear()


@dataclass(eq=False)
class _Client:
    sock: socket.socket
    queue: deque[bytes] = field(default_factory=deque)
    queued: int = 0
    reading: bool = True


class AttachServer:
    """The listening attach socket and its clients."""

    def __init__(self, loop: Loop, path: str, stdin_once: bool) -> None:
        self.path = path
        self._loop = loop
        self._stdin_once = stdin_once
        self._sink: StdinSink | None = None
        self._clients: list[_Client] = []
        self._listener = socket.socket(socket.AF_UNIX,
                                       socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        self._listener.bind(path)
        os.chmod(path, 0o600)
        self._listener.listen(16)
        self._listener.setblocking(False)
        loop.watch(self._listener.fileno(), READ, self._accept)

    def connect_stdin(self, sink: StdinSink) -> None:
        self._sink = sink

    def resume(self) -> None:
        """The stdin sink has room again: read the clients."""
        for client in list(self._clients):
            self._update(client)

    def broadcast(self, stream: int, data: bytes) -> None:
        # A client whose connect() returned before this output was read gets
        # it, even if the loop has not reached the listener yet.
        self._accept(READ)
        for client in list(self._clients):
            for start in range(0, len(data), PACKET_MAX):
                if not self._send(client, bytes([stream]) + data[start:start + PACKET_MAX]):
                    break

    def _accept(self, _mask: int) -> None:
        while self._listener.fileno() >= 0:
            try:
                sock, _ = self._listener.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            client = _Client(sock)
            self._clients.append(client)
            self._update(client)

    def _update(self, client: _Client) -> None:
        events = 0
        if client.reading and not (self._sink is not None and self._sink.full):
            events |= READ
        if client.queue:
            events |= WRITE
        self._loop.watch(client.sock.fileno(), events,
                         lambda mask: self._on_client(client, mask))

    def _on_client(self, client: _Client, mask: int) -> None:
        if mask & READ:
            try:
                data = client.sock.recv(RECV_MAX)
            except BlockingIOError:
                data = None
            except OSError:
                self._drop(client)
                return
            if data == b"":
                client.reading = False
                if self._stdin_once and self._sink is not None:
                    self._sink.close_when_written()
            elif data and self._sink is not None:
                self._sink.feed(data)
        if mask & WRITE and not self._flush(client):
            return
        self._update(client)

    def _send(self, client: _Client, packet: bytes) -> bool:
        """Send or queue one packet; False if the client was dropped."""
        if not client.queue:
            try:
                client.sock.send(packet)
                return True
            except BlockingIOError:
                pass
            except OSError:
                self._drop(client)
                return False
        client.queue.append(packet)
        client.queued += len(packet)
        if client.queued > QUEUE_MAX:
            self._drop(client)
            return False
        self._update(client)
        return True

    def _flush(self, client: _Client) -> bool:
        while client.queue:
            try:
                client.sock.send(client.queue[0])
            except BlockingIOError:
                return True
            except OSError:
                self._drop(client)
                return False
            client.queued -= len(client.queue.popleft())
        return True

    def _drop(self, client: _Client) -> None:
        self._loop.unwatch(client.sock.fileno())
        client.sock.close()
        self._clients.remove(client)

    def close(self, flush_for: float) -> None:
        """Hand each client what is queued (for at most ``flush_for``
        seconds in all), then close everything: clients read EOF."""
        deadline = time.monotonic() + flush_for
        self._loop.unwatch(self._listener.fileno())
        self._listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        for client in list(self._clients):
            with contextlib.suppress(OSError):
                while client.queue and (left := deadline - time.monotonic()) > 0:
                    client.sock.settimeout(left)
                    client.sock.send(client.queue.popleft())
            self._drop(client)
