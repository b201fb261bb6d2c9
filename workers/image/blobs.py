"""Content-addressed blob store: ``<root>/image/blobs/<algorithm>/<hex>``.

Invariants:
- A file at a blob's path holds exactly the bytes whose digest names it. It
  gets there only through ``Ingest.commit`` or ``put``: written to a temp
  file in ``ingest/`` (same filesystem), hashed while written, verified
  (size and digest), fsynced, renamed into place, and the directory fsynced.
  A crash leaves either no blob or the whole verified blob.
- A digest mismatch deletes the temp file and raises ``DataLoss``: nothing
  of a corrupt download stays in the store.
- Every temp file is held under an ``flock`` while its writer lives
  (workers/locks.py, ``claim``), so a sweep can tell a live download from
  debris of a killed worker.

Which blobs may be deleted is decided by store.py (references and leases);
this module only stores, reads and deletes files.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from collections.abc import Iterator
from types import TracebackType

from ..locks import claim, sweep
from .errors import DataLoss

_PARTIAL = ".partial"


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Ingest:
    """A blob being written; ``commit`` verifies and publishes it."""

    def __init__(self, store: BlobStore, digest: str, size: int | None, source: str) -> None:
        self._store = store
        self.digest = digest
        self.size = size
        self.source = source
        algorithm, encoded = digest.split(":", 1)
        self._algorithm = algorithm
        name = f"{algorithm}-{encoded}.{secrets.token_hex(6)}{_PARTIAL}"
        self.temp_path = os.path.join(store.ingest_dir, name)
        # 0o644: the file becomes the blob, which the storage pool reads.
        self._lock = claim(self.temp_path, mode=0o644)
        self._fd = self._lock.fd
        self._hasher = hashlib.new(algorithm)
        self._offset = 0
        self._done = False

    @property
    def offset(self) -> int:
        return self._offset

    def write(self, data: memoryview | bytes) -> None:
        if self.size is not None and self._offset + len(data) > self.size:
            raise DataLoss(f"blob {self.digest} from {self.source} is larger than the "
                           f"{self.size} bytes its descriptor declares")
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self._hasher.update(data)
        self._offset += len(data)

    def reset(self) -> None:
        """Start over (the server ignored a range request)."""
        os.ftruncate(self._fd, 0)
        os.lseek(self._fd, 0, os.SEEK_SET)
        self._hasher = hashlib.new(self._algorithm)
        self._offset = 0

    def commit(self) -> None:
        if self.size is not None and self._offset != self.size:
            raise DataLoss(f"blob {self.digest} from {self.source} ended after "
                           f"{self._offset} of {self.size} bytes")
        actual = f"{self._algorithm}:{self._hasher.hexdigest()}"
        if actual != self.digest:
            raise DataLoss(f"blob {self.digest} from {self.source} is corrupt: its content "
                           f"hashes to {actual}")
        os.fsync(self._fd)
        final = self._store.path(self.digest)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        # A concurrent writer may have published the same content first;
        # rename over it is harmless since both are the verified bytes.
        os.rename(self.temp_path, final)
        _fsync_dir(os.path.dirname(final))
        self._done = True
        self._lock.release()

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._lock.release(unlink=True)

    def __enter__(self) -> Ingest:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.abort()


class BlobStore:
    def __init__(self, image_root: str) -> None:
        self.blobs_dir = os.path.join(image_root, "blobs")
        self.ingest_dir = os.path.join(image_root, "ingest")

    def create_dirs(self) -> None:
        for directory in (self.blobs_dir, self.ingest_dir):
            os.makedirs(directory, mode=0o700, exist_ok=True)

    def path(self, digest: str) -> str:
        algorithm, encoded = digest.split(":", 1)
        return os.path.join(self.blobs_dir, algorithm, encoded)

    def exists(self, digest: str) -> bool:
        return os.path.exists(self.path(digest))

    def read(self, digest: str) -> bytes:
        with open(self.path(digest), "rb") as f:
            return f.read()

    def ingest(self, digest: str, size: int | None, source: str) -> Ingest:
        return Ingest(self, digest, size, source)

    def put(self, digest: str, data: bytes, source: str) -> None:
        """Store small verified content (manifests, configs) in one go."""
        with self.ingest(digest, len(data), source) as ingest:
            ingest.write(data)
            ingest.commit()

    def delete(self, digest: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(digest))

    def digests(self) -> Iterator[str]:
        """Every blob on disk."""
        if not os.path.isdir(self.blobs_dir):
            return
        for algorithm in os.listdir(self.blobs_dir):
            directory = os.path.join(self.blobs_dir, algorithm)
            for encoded in os.listdir(directory):
                yield f"{algorithm}:{encoded}"

    def sweep_ingest(self) -> int:
        """Delete temp files whose writer is gone; return how many."""
        return len(sweep(self.ingest_dir, _PARTIAL))
