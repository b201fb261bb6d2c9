"""The tty of a terminal container: receiving it, and resizing it.

With ``process.terminal`` the OCI runtime creates the pty inside the
container and sends its master over ``--console-socket`` with SCM_RIGHTS
(runc and crun both connect, send one fd and close during ``create``). The
connection waits in the listen backlog with its fd, so conmon accepts only
after ``create`` returned; no thread is needed.

Failure behaviour: a runtime that exits 0 without sending a master is an
error (``ConsoleError``) that the monitor reports on the sync fd.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import struct
import termios


class ConsoleError(Exception):
    pass


class ConsoleSocket:
    """The listening end of ``--console-socket``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self._sock.bind(path)
        self._sock.listen(1)

    def receive_master(self) -> int:
        """The pty master the runtime sent, nonblocking and close-on-exec."""
        self._sock.setblocking(False)
        try:
            conn, _ = self._sock.accept()
        except BlockingIOError:
            raise ConsoleError("the runtime never connected to the console socket") from None
        with conn:
            conn.setblocking(True)
            _, fds, _, _ = socket.recv_fds(conn, 1024, 1)
        if not fds:
            raise ConsoleError("the runtime sent no pty master on the console socket")
        for extra in fds[1:]:
            os.close(extra)
        master = fds[0]
        os.set_blocking(master, False)
        os.set_inheritable(master, False)
        return master

    def close(self) -> None:
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def resize(master: int, rows: int, cols: int) -> None:
    """TIOCSWINSZ on the master: the kernel sends SIGWINCH to the tty's
    foreground process group."""
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
