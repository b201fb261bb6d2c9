"""File locks that die with their holder (``flock``), for threads and processes.

Every lock is an ``flock`` on a file under the run dir. flock locks belong
to an open file description, so two threads of one worker that open the
same lock file exclude each other exactly as two workers do, and a killed
holder's locks vanish with its descriptors: nothing to clean after a crash.

Waiting polls with ``LOCK_NB`` and a growing interval (10 ms to 200 ms)
through a ``wait`` callback, so a waiter keeps honouring its deadline and
cancellation instead of sitting in an uninterruptible ``flock`` call.

Lock files are never unlinked: unlinking an flock file races with a
process that has it open but not yet locked. They live on tmpfs and are a
few per image reference and blob.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Callable
from types import TracebackType

# Called with the seconds to wait before the next try; raises to give up.
Waiter = Callable[[float], None]

_MIN_POLL = 0.01
_MAX_POLL = 0.2


class FileLock:
    def __init__(self, path: str, *, shared: bool = False) -> None:
        self.path = path
        self.shared = shared
        self._fd: int | None = None

    def acquire(self, wait: Waiter) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        mode = (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
        interval = _MIN_POLL
        try:
            while True:
                try:
                    fcntl.flock(fd, mode)
                    break
                except BlockingIOError:
                    wait(interval)
                    interval = min(interval * 2, _MAX_POLL)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def try_acquire(self) -> bool:
        """Take the lock if it is free right now."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        mode = (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
        try:
            fcntl.flock(fd, mode)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the last descriptor drops the flock

    def __enter__(self) -> FileLock:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def lock_file(directory: str, kind: str, key: str) -> str:
    """Path of the lock for ``key`` (any text: it is hashed into the name)."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:32]
    return os.path.join(directory, f"{kind}-{digest}.lock")
