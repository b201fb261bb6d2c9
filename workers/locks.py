"""Per-object locks shared by every pool: ``fcntl.flock`` on one file per
object under the run dir.

Concurrency control is per object (a sandbox, a container, an image ref),
never per pool: any worker may serve any request, and two objects never
wait for each other (design.md, "The bus").

Invariants
    - The kernel drops a flock when the last descriptor of its open file is
      closed, so a worker killed with SIGKILL frees its locks at once.
    - ``ObjectLock.release(unlink=True)`` deletes the file while still
      holding it; a waiter that then wins the lock on the unlinked inode
      sees the path no longer names its inode and starts over, so two
      holders never each hold "the" lock of one object.
    - flock has no timeout: ``acquire`` polls LOCK_NB with a short capped
      backoff until the caller's deadline (CLOCK_MONOTONIC), then raises
      DeadlineExceeded naming the object.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
from collections.abc import Iterator

from ..proto.errors import DeadlineExceeded

MAX_DELAY = 0.05


class ObjectLock:
    """One held lock; release it, or use ``locked``."""

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


def lock_path(lock_dir: str, key: str) -> str:
    """A file name for ``key``: readable when safe, hashed otherwise."""
    safe = key.replace("/", "_").replace(":", "_")
    if len(safe) > 128 or safe.startswith(".") or not safe.isprintable():
        safe = hashlib.sha256(key.encode()).hexdigest()
    return os.path.join(lock_dir, f"{safe}.lock")


def acquire(lock_dir: str, key: str, deadline: float, what: str = "") -> ObjectLock:
    """Take the lock of ``key``, waiting until ``deadline`` (time.monotonic())."""
    os.makedirs(lock_dir, mode=0o700, exist_ok=True)
    path = lock_path(lock_dir, key)
    delay = 0.001
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if time.monotonic() >= deadline:
                raise DeadlineExceeded(
                    f"{what or key} is busy with another request and the deadline "
                    "passed") from None
            time.sleep(delay)
            delay = min(delay * 2, MAX_DELAY)
            continue
        if _same_file(fd, path):
            return ObjectLock(path, fd)
        os.close(fd)  # the holder unlinked it: retry on the new file


@contextlib.contextmanager
def locked(lock_dir: str, key: str, deadline: float, what: str = "") -> Iterator[ObjectLock]:
    held = acquire(lock_dir, key, deadline, what)
    try:
        yield held
    finally:
        held.release()


def _same_file(fd: int, path: str) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino)
