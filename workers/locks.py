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
    - A lock file lives no longer than its object: ``locked(gone=...)``
      unlinks it on release once the object is gone (its record deleted,
      its reservation released), and ``sweep`` drops the ones killed
      holders left. Deleting a lock file under an exclusive hold is safe,
      even one of a live object (the next acquire makes a new one), as long
      as no child still shares the holder's fd: a holder that passed it on
      unlinks only once those children are gone (the net pool kills a timed
      out plugin's whole process group first, workers/net/cni.py).
    - flock has no timeout: ``acquire`` polls LOCK_NB with a short capped
      backoff until the caller's deadline (CLOCK_MONOTONIC), then raises
      DeadlineExceeded naming the object. A lock held for minutes (a layer
      unpack) costs its waiters one poll every 50 ms. The pause between
      polls goes through ``wait`` (``time.sleep`` unless the caller gives
      one), which may raise to give up early: the image pool stops waiting
      there when its caller cancels.
    - A file may also be its own lock, held by the owner while it lives (an
      image lease, a partial download): ``claim`` takes it under the same
      unlink protocol, and ``sweep(directory, suffix)`` deletes the ones
      whose owner is gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import time
from collections.abc import Callable, Iterator

from ..proto.errors import DeadlineExceeded
from .fsnames import component

MAX_DELAY = 0.05

# Called with the seconds to pause before the next poll; raises to give up.
Wait = Callable[[float], None]


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
            shared: bool = False, holder: str = "another request",
            wait: Wait = time.sleep) -> ObjectLock:
    """Take the lock of ``key``, waiting until ``deadline`` (time.monotonic()).

    ``what`` names the object and ``holder`` what may be holding it, for the
    DeadlineExceeded message. ``wait`` pauses between polls, never past the
    deadline; whatever it raises ends the wait.
    """
    os.makedirs(lock_dir, mode=0o700, exist_ok=True)
    path = lock_path(lock_dir, key)
    return _poll(path, deadline, what or key, shared=shared, holder=holder, wait=wait)


@contextlib.contextmanager
def locked(lock_dir: str, key: str, deadline: float, what: str = "", *,
           shared: bool = False, holder: str = "another request",
           gone: Callable[[], bool] | None = None,
           wait: Wait = time.sleep) -> Iterator[ObjectLock]:
    """``acquire``, released when the block ends.

    ``gone()``, asked then while the lock is still held, says whether the
    object no longer exists; if so (and the lock is exclusive) its lock file
    is unlinked too. An object that cannot be read counts as present.
    """
    held = acquire(lock_dir, key, deadline, what, shared=shared, holder=holder, wait=wait)
    try:
        yield held
    finally:
        drop = False
        if gone is not None and not shared and held.fd >= 0:
            try:
                drop = gone()
            except (OSError, ValueError):
                drop = False
        held.release(unlink=drop)


def discard(lock_dir: str, key: str, gone: Callable[[], bool]) -> bool:
    """Unlink the lock file of ``key`` if its object is gone and nobody holds
    it now; whether it did. For holders that could not unlink (shared ones)."""
    held = _try(lock_path(lock_dir, key), False) if os.path.isdir(lock_dir) else None
    if held is None:
        return False
    try:
        drop = gone()
    except (OSError, ValueError):
        drop = False
    held.release(unlink=drop)
    return drop


def claim(path: str, *, mode: int = 0o600, flags: int = 0) -> ObjectLock:
    """Hold ``path`` exclusively, as the mark that its owner lives.

    For a file named uniquely by its owner and locked for the owner's life
    (a lease, a partial download), opened with ``mode`` and the extra open
    ``flags``. The only other holder it can meet is a sweeper checking it
    for an instant (``sweep``), which may unlink it as abandoned: the unlink
    protocol then has the owner lock a new file under the same name. A
    sweeper never waits while it holds one, so this waits without a deadline.
    """
    return _poll(path, math.inf, path, shared=False, holder="a sweeper", wait=time.sleep,
                 mode=mode, flags=flags)


def sweep(directory: str, suffix: str = ".lock") -> list[str]:
    """Unlink every ``suffix`` file in ``directory`` that nobody holds; return their names.

    For start-up reconciles: a lock file with no holder marks nothing, so
    the ones a killed worker left (whatever their object) simply go; and
    for files that are their own lock (``claim``), one with no holder is
    debris of a killed owner.
    """
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    removed = []
    for name in names:
        if not name.endswith(suffix):
            continue
        held = _try(os.path.join(directory, name), False)
        if held is not None:
            held.release(unlink=True)
            removed.append(name)
    return removed


def _poll(path: str, deadline: float, what: str, *, shared: bool, holder: str, wait: Wait,
          mode: int = 0o600, flags: int = 0) -> ObjectLock:
    delay = 0.001
    while True:
        held = _try(path, shared, mode, flags)
        if held is not None:
            return held
        left = deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded(
                f"{what} is busy ({holder} holds {path}) and the deadline passed")
        wait(min(delay, left))
        delay = min(delay * 2, MAX_DELAY)


def _try(path: str, shared: bool, mode: int = 0o600, flags: int = 0) -> ObjectLock | None:
    operation = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | flags, mode)
        try:
            fcntl.flock(fd, operation)
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
