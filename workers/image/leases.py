"""Leases: which blobs a pull in progress relies on, so GC leaves them.

A pull opens a lease (a file under ``<runroot>/image/leases``) and writes
every digest it is about to fetch or reuse into it *before* looking at the
store. GC (store.py) never deletes a digest named by a live lease.

Liveness is an ``flock``: the owner holds ``LOCK_EX`` on its lease file for
the lease's life, so a lease whose owner died is lockable, and the sweeper
then deletes it. A new lease is created under a temp name and renamed only
once locked, so a sweeper never sees an unlocked live lease.

Appends happen under the store's shared GC lock and reads under the
exclusive one, so a reader never sees half a line.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets

_SUFFIX = ".lease"


class Lease:
    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self._fd = fd
        self.digests: set[str] = set()

    def add(self, digest: str) -> None:
        if digest in self.digests:
            return
        os.write(self._fd, f"{digest}\n".encode())
        self.digests.add(digest)

    def release(self) -> None:
        if self._fd < 0:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = -1


class LeaseDir:
    def __init__(self, directory: str) -> None:
        self.directory = directory

    def create(self) -> Lease:
        token = secrets.token_hex(8)
        temp = os.path.join(self.directory, f".{token}.new")
        fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC,
                     0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        path = os.path.join(self.directory, f"{token}{_SUFFIX}")
        os.rename(temp, path)
        return Lease(path, fd)

    def live_digests(self) -> set[str]:
        """Digests named by live leases; dead leases are deleted on the way."""
        live: set[str] = set()
        for name in os.listdir(self.directory):
            path = os.path.join(self.directory, name)
            if not name.endswith(_SUFFIX):
                if name.endswith(".new"):
                    self._remove_if_dead(path)
                continue
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    with os.fdopen(os.dup(fd), "r", encoding="ascii") as f:
                        live.update(line.strip() for line in f if line.strip())
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
            finally:
                os.close(fd)
        return live

    @staticmethod
    def _remove_if_dead(path: str) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        except BlockingIOError:
            pass
        finally:
            os.close(fd)
