"""The image store: blobs + records + leases + locks, and garbage collection.

Layout::

    <root>/image/blobs/sha256/<hex>    verified content (blobs.py)
    <root>/image/ingest/               downloads in progress
    <root>/image/images.db             records (records.py)
    <runroot>/image/leases/            blobs pulls in progress rely on
    <runroot>/image/locks/             flock files: gc, ref-*, blob-* (workers/locks.py)

Garbage collection
    A blob file may be deleted only when no image record references it and
    no live lease names it. The rule is upheld with one lock, ``gc.lock``:

    - a pull adds a digest to its lease and checks whether the blob exists
      in one step under the lock held *shared* (``reserve``);
    - deleting (``collect``) holds it *exclusive*, reads the references and
      the live leases, and deletes the rest.

    So a pull that found a blob present can count on it until the image is
    recorded, and a failed pull's blobs become collectable as soon as its
    lease is released. Removing an image deletes its unshared blobs; the
    startup sweep deletes everything unreferenced and unleased (debris of a
    worker killed mid-pull) and unlocked temp files.

    A pull waits for the lock until its deadline, or until its caller
    cancels (through ``wait``). Collection and the sweep wait with no
    deadline: they are cleanup that must finish, and every holder of the
    lock holds it for one scan of the store at most.

Coalescing across workers
    ``ref_lock`` serialises pulls of one reference, ``blob_lock`` downloads
    of one blob; both are flocks (workers/locks.py) that vanish with a dead
    holder.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager

from ..locks import ObjectLock, Wait, locked, sweep
from .blobs import BlobStore
from .leases import Lease, LeaseDir
from .records import Records

log = logging.getLogger(__name__)


class ImageStore:
    def __init__(self, root: str, runroot: str) -> None:
        image_root = os.path.join(root, "image")
        self.image_root = image_root
        self.blobs = BlobStore(image_root)
        self.records = Records(os.path.join(image_root, "images.db"))
        run = os.path.join(runroot, "image")
        self.locks_dir = os.path.join(run, "locks")
        self.leases = LeaseDir(os.path.join(run, "leases"))

    def open(self, wait: Wait) -> None:
        """Create what is missing and clean what a killed worker left."""
        os.makedirs(self.image_root, mode=0o700, exist_ok=True)
        self.blobs.create_dirs()
        for directory in (self.locks_dir, self.leases.directory):
            os.makedirs(directory, mode=0o700, exist_ok=True)
        self.records.create()
        self.sweep(wait)

    # ---- locks ------------------------------------------------------------

    def ref_lock(self, name: str, deadline: float,
                 wait: Wait) -> AbstractContextManager[ObjectLock]:
        # These locks only keep two pulls from downloading one thing twice;
        # nothing lives in their files, so each goes with its holder.
        return locked(self.locks_dir, f"ref-{name}", deadline, f"image {name}",
                      holder="another pull of it", gone=_always, wait=wait)

    def blob_lock(self, digest: str, deadline: float,
                  wait: Wait) -> AbstractContextManager[ObjectLock]:
        return locked(self.locks_dir, f"blob-{digest}", deadline, f"blob {digest}",
                      holder="another download of it", gone=_always, wait=wait)

    @contextlib.contextmanager
    def _gc_lock(self, deadline: float, wait: Wait, *, shared: bool) -> Iterator[None]:
        with locked(self.locks_dir, "gc", deadline, f"image store {self.image_root}",
                    shared=shared, holder="a pull or garbage collection", wait=wait):
            yield

    # ---- leases and collection -------------------------------------------

    def lease(self) -> Lease:
        return self.leases.create()

    def reserve(self, lease: Lease, digest: str, deadline: float, wait: Wait) -> bool:
        """Protect ``digest`` for this pull; True when the blob is already here."""
        with self._gc_lock(deadline, wait, shared=True):
            lease.add(digest)
            return self.blobs.exists(digest)

    def collect(self, digests: Iterable[str], wait: Wait) -> list[str]:
        """Delete those of ``digests`` no image and no live lease uses."""
        candidates = set(digests)
        if not candidates:
            return []
        with self._gc_lock(math.inf, wait, shared=False):
            keep = self.records.referenced(candidates) | self.leases.live_digests()
            deleted = sorted(candidates - keep)
            for digest in deleted:
                self.blobs.delete(digest)
        if deleted:
            log.info("Deleted %d unreferenced blobs", len(deleted))
        return deleted

    def release_lease(self, lease: Lease, *, failed: bool, wait: Wait) -> None:
        """End a pull's lease; after a failure, collect what it brought in."""
        lease.release()
        if failed:
            self.collect(lease.digests, wait)

    def remove_image(self, image_id: str, wait: Wait) -> None:
        digests = self.records.delete(image_id)
        self.collect(digests, wait)

    def sweep(self, wait: Wait) -> None:
        with self._gc_lock(math.inf, wait, shared=False):
            stale = self.blobs.sweep_ingest()
            keep = self.records.all_referenced() | self.leases.live_digests()
            orphans = [d for d in self.blobs.digests() if d not in keep]
            for digest in orphans:
                self.blobs.delete(digest)
        sweep(self.locks_dir)  # lock files a killed worker left
        if stale or orphans:
            log.info("Store sweep removed %d partial downloads and %d orphan blobs",
                     stale, len(orphans))


def _always() -> bool:
    return True
