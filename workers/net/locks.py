"""Per-pod locks: ``fcntl.flock`` on ``<runroot>/net/locks/<pod id>.lock``.

Concurrency control is per object, never per pool (design.md): any net
worker may serve any pod, and two pods never wait for each other.

Invariants
    - The kernel drops a flock when the last descriptor of its open file
      goes, so a worker killed with SIGKILL frees its pods at once. The
      executor passes the descriptor on to the CNI plugins it runs, so a
      plugin orphaned by that kill keeps the pod locked until it exits:
      nobody tears a pod down while its ADD is still running.
    - ``release(unlink=True)`` deletes the file while still holding the
      lock. A waiter that then wins the lock on the unlinked inode sees that
      the path no longer names its inode and starts over, so two holders
      can never each hold "the" lock of one pod.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable

from ...proto.errors import DeadlineExceeded


class PodLock:
    """One held pod lock; use ``acquire`` to get one."""

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


def acquire(lock_dir: str, pod_id: str, deadline: float,
            clock: Callable[[], float] = time.monotonic) -> PodLock:
    """Take the pod's lock, waiting until ``deadline`` (CLOCK_MONOTONIC).

    flock(2) has no timeout, so this polls LOCK_NB with a short capped
    backoff; pod locks are held for one CNI chain, tens of milliseconds.
    """
    os.makedirs(lock_dir, mode=0o700, exist_ok=True)
    path = os.path.join(lock_dir, f"{pod_id}.lock")
    delay = 0.001
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if clock() >= deadline:
                raise DeadlineExceeded(
                    f"pod {pod_id} is busy (another network setup or teardown holds "
                    f"{path}) and the deadline passed") from None
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
            continue
        if _same_file(fd, path):
            return PodLock(path, fd)
        # The holder we waited for unlinked the file: retry on the new one.
        os.close(fd)


def _same_file(fd: int, path: str) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino)
