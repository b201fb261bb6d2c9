"""Per-object locks: ``fcntl.flock`` on ``<runroot>/storage/locks/<name>.lock``.

Several storage workers, each with a thread pool, serve requests at once;
they meet only on the object they touch (one layer, one container), never
on a pool-wide lock (design.md, "The bus").

Invariants
    - The kernel drops a flock with the last descriptor of its open file, so
      a worker killed by SIGKILL frees its objects at once. Each acquire
      opens the file anew, so two threads of one worker exclude each other
      exactly as two processes do.
    - Shared holders (a rootfs being created over a layer) exclude an
      exclusive one (that layer's unpack or removal), and the reverse.
    - Lock order: a container's lock is always taken before any layer's,
      and layer locks in sorted order, so waits never form a cycle.
    - ``release(unlink=True)`` deletes the file while still holding it; a
      waiter that then wins the lock on the unlinked inode notices that the
      path names another inode now, and starts over.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator

from ...proto.errors import DeadlineExceeded

_MAX_BACKOFF = 0.05


class Lock:
    """One held lock; get one from ``acquire`` or ``try_acquire``."""

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self.fd = fd

    def release(self, *, unlink: bool = False) -> None:
        if self.fd < 0:
            return
        if unlink:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        os.close(self.fd)  # closing drops the flock
        self.fd = -1


def _try(path: str, shared: bool) -> Lock | None:
    flags = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, flags)
        except BlockingIOError:
            os.close(fd)
            return None
        if _same_file(fd, path):
            return Lock(path, fd)
        # The holder we raced with unlinked the file: lock the new one.
        os.close(fd)


def try_acquire(lock_dir: str, name: str, *, shared: bool = False) -> Lock | None:
    """Take the lock if nobody holds it in a conflicting mode, else None."""
    os.makedirs(lock_dir, mode=0o700, exist_ok=True)
    return _try(os.path.join(lock_dir, f"{name}.lock"), shared)


def acquire(lock_dir: str, name: str, deadline: float, *, shared: bool = False,
            busy: str = "") -> Lock:
    """Take the lock, waiting until ``deadline`` (CLOCK_MONOTONIC).

    flock(2) has no timeout, so this polls LOCK_NB with a short capped
    backoff. A layer unpack may hold its lock for minutes; a waiter then
    polls every 50 ms, which costs nothing next to the unpack.
    """
    os.makedirs(lock_dir, mode=0o700, exist_ok=True)
    path = os.path.join(lock_dir, f"{name}.lock")
    delay = 0.001
    while True:
        lock = _try(path, shared)
        if lock is not None:
            return lock
        if time.monotonic() >= deadline:
            raise DeadlineExceeded(
                f"{busy or name} is busy (another storage operation holds {path}) "
                "and the deadline passed")
        time.sleep(delay)
        delay = min(delay * 2, _MAX_BACKOFF)


@contextlib.contextmanager
def held(lock_dir: str, name: str, deadline: float, *, shared: bool = False,
         busy: str = "") -> Iterator[Lock]:
    lock = acquire(lock_dir, name, deadline, shared=shared, busy=busy)
    try:
        yield lock
    finally:
        lock.release()


def _same_file(fd: int, path: str) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)
