"""Per-object locks shared by every pool: ``fcntl.flock`` on one file per
object under the run dir.

Concurrency control is per object (a sandbox, a container, a pod's network,
a layer), never per pool: any worker may serve any request, and two objects
never wait for each other (design.md, "The bus").

Invariants
    - The kernel drops a flock when the last descriptor of its open file is
      closed, so a worker killed with SIGKILL frees its locks at once. Each
      acquire opens the file anew, so two threads of one worker exclude
      each other exactly as two processes do.
    - A holder may hand ``ObjectLock.fd`` to a child (``pass_fds``): the
      lock then lasts until the holder *and* that child are gone. The net
      pool does this with CNI plugins, so a plugin orphaned by a worker kill
      keeps its pod locked until it exits.
    - Shared holders (``shared=True``) exclude an exclusive one, and the
      reverse; shared holders never exclude each other.
    - ``ObjectLock.release(unlink=True)`` deletes the file while still
      holding it exclusively; a waiter that then wins the lock on the
      unlinked inode sees the path no longer names its inode and starts
      over, so two holders never each hold "the" lock of one object. A
      shared holder may not unlink: other shared holders keep the old inode
      while a newcomer would lock a new file.
    - flock has no timeout: ``acquire`` polls LOCK_NB with a short capped
      backoff until the caller's deadline (CLOCK_MONOTONIC), then raises
      DeadlineExceeded naming the object. A lock held for minutes (a layer
      unpack) costs its waiters one poll every 50 ms.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator

from ..proto.errors import DeadlineExceeded
from .fsnames import component

MAX_DELAY = 0.05


class ObjectLock:
    """One held lock; release it, or use ``locked``."""

    def __init__(self, path: str, fd: int, *, shared: bool = False) -> None:
        self.path = path
        self.fd = fd
        self.shared = shared

    def release(self, *, unlink: bool = False) -> None:
        if self.fd < 0:
            return
        fd, self.fd = self.fd, -1
        try:
            if unlink and self.shared:
                raise ValueError(f"a shared holder may not unlink {self.path}")
            if unlink:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
        finally:
            os.close(fd)  # closing drops the flock


def lock_path(lock_dir: str, key: str) -> str:
    """The lock file of ``key``: readable when short and plain, hashed otherwise."""
    return os.path.join(lock_dir, component(key, ".lock"))


def try_acquire(lock_dir: str, key: str, *, shared: bool = False) -> ObjectLock | None:
    """Take the lock of ``key`` if nobody holds it in a conflicting mode, else None."""
    os.makedirs(lock_dir, mode=0o700, exist_ok=True)
    return _try(lock_path(lock_dir, key), shared)


def acquire(lock_dir: str, key: str, deadline: float, what: str = "", *,
            shared: bool = False, holder: str = "another request") -> ObjectLock:
    """Take the lock of ``key``, waiting until ``deadline`` (time.monotonic()).

    ``what`` names the object and ``holder`` what may be holding it, for the
    DeadlineExceeded message.
    """
    os.makedirs(lock_dir, mode=0o700, exist_ok=True)
    path = lock_path(lock_dir, key)
    delay = 0.001
    while True:
        held = _try(path, shared)
        if held is not None:
            return held
        if time.monotonic() >= deadline:
            raise DeadlineExceeded(
                f"{what or key} is busy ({holder} holds {path}) and the deadline passed")
        time.sleep(delay)
        delay = min(delay * 2, MAX_DELAY)


@contextlib.contextmanager
def locked(lock_dir: str, key: str, deadline: float, what: str = "", *,
           shared: bool = False, holder: str = "another request") -> Iterator[ObjectLock]:
    """``acquire``, released (never unlinked) when the block ends."""
    held = acquire(lock_dir, key, deadline, what, shared=shared, holder=holder)
    try:
        yield held
    finally:
        held.release()


def _try(path: str, shared: bool) -> ObjectLock | None:
    flags = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, flags)
        except BlockingIOError:
            os.close(fd)
            return None
        if _same_file(fd, path):
            return ObjectLock(path, fd, shared=shared)
        os.close(fd)  # the holder unlinked it: retry on the new file


def _same_file(fd: int, path: str) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino)
