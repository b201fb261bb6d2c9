"""Leases: which blobs a pull in progress relies on, so GC leaves them.

A pull opens a lease (a file under ``<runroot>/image/leases``) and writes
every digest it is about to fetch or reuse into it *before* looking at the
store. GC (store.py) never deletes a digest named by a live lease.

Liveness is an ``flock`` (workers/locks.py, ``claim``): the owner holds its
lease file exclusively for the lease's life, so a lease whose owner died is
lockable, and the sweeper then deletes it. A sweeper may also catch a new
lease before its owner locked it and delete it; the owner then locks a new
file under the same name (the unlink protocol), and since digests are
written only once it holds the lock, nothing of a live lease is lost.

Appends happen under the store's shared GC lock and reads under the
exclusive one, so a reader never sees half a line.
"""

from __future__ import annotations

import os
import secrets

from ..locks import ObjectLock, claim, sweep

_SUFFIX = ".lease"


class Lease:
    def __init__(self, lock: ObjectLock) -> None:
        self.path = lock.path
        self._lock = lock
        self.digests: set[str] = set()

    def add(self, digest: str) -> None:
        if digest in self.digests:
            return
        os.write(self._lock.fd, f"{digest}\n".encode())
        self.digests.add(digest)

    def release(self) -> None:
        self._lock.release(unlink=True)


class LeaseDir:
    def __init__(self, directory: str) -> None:
        self.directory = directory

    def create(self) -> Lease:
        path = os.path.join(self.directory, f"{secrets.token_hex(8)}{_SUFFIX}")
        # O_APPEND: the threads of one pull add digests to the lease at once.
        return Lease(claim(path, flags=os.O_APPEND))

    def live_digests(self) -> set[str]:
        """Digests named by live leases; dead leases are deleted on the way."""
        sweep(self.directory, _SUFFIX)
        live: set[str] = set()
        for name in os.listdir(self.directory):
            if not name.endswith(_SUFFIX):
                continue
            # The sweep left only leases held a moment ago (or new ones): one
            # released since is gone, and one whose owner died since still
            # counts, which only keeps its blobs until the next collection.
            try:
                with open(os.path.join(self.directory, name), encoding="ascii") as f:
                    live.update(line.strip() for line in f if line.strip())
            except FileNotFoundError:
                continue
        return live
