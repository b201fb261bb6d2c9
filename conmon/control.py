"""The control socket: ``reopen`` and ``resize <rows> <cols>``, one per line.

Each command gets one reply line, ``ok`` or ``error <reason>``, after it has
taken effect, so ReopenContainerLog can return only once the new log file
exists (the kubelet renames the old file, then calls it). A socket rather
than CRI-O's FIFOs for that reason: FIFOs carry no reply.

Failure behaviour: a command's exception becomes its error reply; a client
that sends a line longer than ``LINE_MAX`` or won't take its reply is
disconnected. Nothing a client does stops the monitor.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
from collections.abc import Callable, Mapping

from .loop import READ, Loop

LINE_MAX = 4096

# A command receives its arguments and raises ValueError or OSError on failure.
Command = Callable[[list[str]], None]


class ControlServer:
    def __init__(self, loop: Loop, path: str, commands: Mapping[str, Command]) -> None:
        self.path = path
        self._loop = loop
        self._commands = commands
        self._clients: dict[int, tuple[socket.socket, bytearray]] = {}
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self._listener.bind(path)
        os.chmod(path, 0o600)
        self._listener.listen(16)
        self._listener.setblocking(False)
        loop.watch(self._listener.fileno(), READ, self._accept)

    def _accept(self, _mask: int) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            fd = sock.fileno()
            self._clients[fd] = (sock, bytearray())
            self._loop.watch(fd, READ, functools.partial(self._on_readable, fd))

    def _on_readable(self, fd: int, _mask: int) -> None:
        sock, pending = self._clients[fd]
        try:
            data = sock.recv(LINE_MAX)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(fd)
            return
        pending += data
        while (end := pending.find(b"\n")) >= 0:
            line = pending[:end].decode(errors="replace")
            del pending[:end + 1]
            try:
                sock.send((self._run(line) + "\n").encode())
            except OSError:
                self._drop(fd)
                return
        if len(pending) > LINE_MAX:
            self._drop(fd)

    def _run(self, line: str) -> str:
        name, *args = line.split() or [""]
        command = self._commands.get(name)
        if command is None:
            return f"error unknown command {name!r}"
        try:
            command(args)
        except (ValueError, OSError) as exc:
            return f"error {exc}"
        return "ok"

    def _drop(self, fd: int) -> None:
        sock, _ = self._clients.pop(fd)
        self._loop.unwatch(fd)
        sock.close()

    def close(self) -> None:
        for fd in list(self._clients):
            self._drop(fd)
        self._loop.unwatch(self._listener.fileno())
        self._listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
