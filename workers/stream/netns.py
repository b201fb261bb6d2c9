"""A TCP connection to localhost:port inside a pod's network namespace.

setns(2) moves only the calling thread, and a socket stays in the
namespace it was made in, so each connection is made by a thread of its
own that enters the pod's namespace, connects and ends: no pooled thread
is ever left in a pod's namespace. Like containerd and CRI-O, 127.0.0.1
is tried first, then ::1, one after the other.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import socket
import threading

CLONE_NEWNET = 0x40000000
CONNECT_TIMEOUT = 5.0

_libc = ctypes.CDLL(None, use_errno=True)


class ConnectError(Exception):
    pass


async def connect(netns: str, port: int) -> socket.socket:
    """A connected, non-blocking socket; ConnectError says why not."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[socket.socket] = loop.create_future()

    def work() -> None:
        try:
            sock = _connect_in(netns, port)
        except BaseException as exc:  # handed to the loop, never lost in a thread
            loop.call_soon_threadsafe(_settle, done, None, exc)
        else:
            loop.call_soon_threadsafe(_settle, done, sock, None)

    threading.Thread(target=work, name=f"connect-{port}", daemon=True).start()
    return await done


def _settle(done: asyncio.Future[socket.socket], sock: socket.socket | None,
            exc: BaseException | None) -> None:
    if done.cancelled():
        if sock is not None:
            sock.close()
    elif exc is not None:
        done.set_exception(exc)
    else:
        assert sock is not None
        done.set_result(sock)


def _connect_in(netns: str, port: int) -> socket.socket:
    if netns:
        fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise ConnectError(f"cannot enter the pod's network namespace: "
                                   f"{os.strerror(err)}")
        finally:
            os.close(fd)
    errors = []
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect((host, port))
        except OSError as exc:
            sock.close()
            errors.append(f"{host}: {exc.strerror or exc}")
            continue
        sock.setblocking(False)
        return sock
    raise ConnectError(f"dial localhost:{port}: {'; '.join(errors)}")
