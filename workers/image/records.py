"""Image records in SQLite (WAL): images, their names, the blobs they use.

Tables::

    images(id PK, manifest_digest, manifest_media_type, index_digest,
           config_media_type, size, user, created_at)
    names(name PK, kind 'tag'|'digest', image_id -> images ON DELETE CASCADE,
          updated_at)
    blobs(image_id -> images ON DELETE CASCADE, position, role, digest,
          media_type, size, diff_id)          PK (image_id, position)

Invariants:
- An image id is its config digest, so two tags of one image are one row.
- A name (``repo:tag`` or ``repo@digest``, fully qualified) points at
  exactly one image: recording it again moves it (a tag that moved upstream).
- Every change is one transaction (``BEGIN IMMEDIATE``), so several workers
  may write at once and a crash never leaves a half-recorded image; WAL lets
  readers run beside a writer.
- Blob files are not touched here: store.py deletes what no row (and no
  lease) references, after the transaction that dropped the reference.

A connection is opened per call (cheap for SQLite): connections are not
shared across the worker's threads.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY,
    manifest_digest TEXT NOT NULL,
    manifest_media_type TEXT NOT NULL,
    index_digest TEXT,
    config_media_type TEXT NOT NULL,
    size INTEGER NOT NULL,
    user TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS names (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('tag', 'digest')),
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS names_image ON names(image_id);
CREATE TABLE IF NOT EXISTS blobs (
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('index', 'manifest', 'config', 'layer')),
    digest TEXT NOT NULL,
    media_type TEXT NOT NULL,
    size INTEGER NOT NULL,
    diff_id TEXT,
    PRIMARY KEY (image_id, position)
);
CREATE INDEX IF NOT EXISTS blobs_digest ON blobs(digest);
"""

# Long enough to ride out another worker's write transaction.
_BUSY_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class BlobRecord:
    role: str
    digest: str
    media_type: str
    size: int
    diff_id: str | None = None


@dataclass(frozen=True)
class NewImage:
    id: str
    manifest_digest: str
    manifest_media_type: str
    index_digest: str | None
    config_media_type: str
    user: str
    blobs: tuple[BlobRecord, ...]

    @property
    def size(self) -> int:
        # What the image occupies as pulled: config and compressed layers.
        return sum(b.size for b in self.blobs if b.role in ("config", "layer"))


@dataclass(frozen=True)
class ImageRecord:
    id: str
    manifest_digest: str
    manifest_media_type: str
    index_digest: str | None
    config_media_type: str
    size: int
    user: str
    created_at: float
    repo_tags: tuple[str, ...]
    repo_digests: tuple[str, ...]
    blobs: tuple[BlobRecord, ...]

    @property
    def layers(self) -> tuple[BlobRecord, ...]:
        return tuple(b for b in self.blobs if b.role == "layer")


class Records:
    def __init__(self, path: str) -> None:
        self.path = path

    def create(self) -> None:
        with self._connection() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        with closing(sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S,
                                     isolation_level=None)) as conn:
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA synchronous=FULL")
            yield conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    # ---- writes -----------------------------------------------------------

    def add(self, image: NewImage, names: Iterable[tuple[str, str]]) -> None:
        """Record ``image`` (if new) and point ``names`` (name, kind) at it."""
        now = time.time()
        with self._transaction() as conn:
            inserted = conn.execute(
                "INSERT OR IGNORE INTO images VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (image.id, image.manifest_digest, image.manifest_media_type, image.index_digest,
                 image.config_media_type, image.size, image.user, now)).rowcount
            if inserted:
                conn.executemany(
                    "INSERT INTO blobs VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(image.id, position, b.role, b.digest, b.media_type, b.size, b.diff_id)
                     for position, b in enumerate(image.blobs)])
            self._set_names(conn, image.id, names, now)

    def add_names(self, image_id: str, names: Iterable[tuple[str, str]]) -> bool:
        """Point ``names`` at an existing image; False if it is gone."""
        now = time.time()
        with self._transaction() as conn:
            if conn.execute("SELECT 1 FROM images WHERE id = ?", (image_id,)).fetchone() is None:
                return False
            self._set_names(conn, image_id, names, now)
            return True

    @staticmethod
    def _set_names(conn: sqlite3.Connection, image_id: str, names: Iterable[tuple[str, str]],
                   now: float) -> None:
        conn.executemany(
            "INSERT INTO names VALUES (?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
            "kind = excluded.kind, image_id = excluded.image_id, updated_at = excluded.updated_at",
            [(name, kind, image_id, now) for name, kind in names])

    def delete(self, image_id: str) -> list[str]:
        """Drop an image with its names; return the digests it referenced."""
        with self._transaction() as conn:
            digests = [row[0] for row in conn.execute(
                "SELECT DISTINCT digest FROM blobs WHERE image_id = ?", (image_id,))]
            conn.execute("DELETE FROM images WHERE id = ?", (image_id,))
            return digests

    def untag(self, name: str, image_id: str) -> bool:
        """Drop tag ``name`` of ``image_id`` if the image keeps another tag.

        Returns False (and changes nothing) when ``name`` is the image's
        last tag: then the caller removes the whole image instead.
        """
        with self._transaction() as conn:
            tags = [row[0] for row in conn.execute(
                "SELECT name FROM names WHERE image_id = ? AND kind = 'tag'", (image_id,))]
            if name not in tags or len(tags) < 2:
                return False
            conn.execute("DELETE FROM names WHERE name = ?", (name,))
            return True

    # ---- reads ------------------------------------------------------------

    def get(self, image_id: str) -> ImageRecord | None:
        with self._connection() as conn:
            row = conn.execute("SELECT * FROM images WHERE id = ?", (image_id,)).fetchone()
            return self._record(conn, row) if row is not None else None

    def all(self) -> list[ImageRecord]:
        with self._connection() as conn:
            rows = conn.execute("SELECT * FROM images ORDER BY created_at").fetchall()
            return [self._record(conn, row) for row in rows]

    def image_for(self, name: str) -> str | None:
        with self._connection() as conn:
            row = conn.execute("SELECT image_id FROM names WHERE name = ?", (name,)).fetchone()
            return str(row[0]) if row is not None else None

    def name_updated_at(self, name: str) -> float | None:
        with self._connection() as conn:
            row = conn.execute("SELECT updated_at FROM names WHERE name = ?", (name,)).fetchone()
            return float(row[0]) if row is not None else None

    def ids_with_prefix(self, prefix: str) -> list[str]:
        with self._connection() as conn:
            # Escaping is unneeded: callers pass lowercase hex only.
            return [str(row[0]) for row in conn.execute(
                "SELECT id FROM images WHERE id LIKE ?", (f"{prefix}%",))]

    def referenced(self, digests: Iterable[str]) -> set[str]:
        """The subset of ``digests`` that some image still uses."""
        wanted = list(set(digests))
        if not wanted:
            return set()
        with self._connection() as conn:
            marks = ",".join("?" * len(wanted))
            return {str(row[0]) for row in conn.execute(
                f"SELECT DISTINCT digest FROM blobs WHERE digest IN ({marks})", wanted)}

    def all_referenced(self) -> set[str]:
        with self._connection() as conn:
            return {str(row[0]) for row in conn.execute("SELECT DISTINCT digest FROM blobs")}

    @staticmethod
    def _record(conn: sqlite3.Connection, row: tuple[object, ...]) -> ImageRecord:
        image_id = str(row[0])
        names = conn.execute(
            "SELECT name, kind FROM names WHERE image_id = ? ORDER BY updated_at DESC, name",
            (image_id,)).fetchall()
        blobs = conn.execute(
            "SELECT role, digest, media_type, size, diff_id FROM blobs WHERE image_id = ? "
            "ORDER BY position", (image_id,)).fetchall()
        return ImageRecord(
            id=image_id, manifest_digest=str(row[1]), manifest_media_type=str(row[2]),
            index_digest=str(row[3]) if row[3] is not None else None,
            config_media_type=str(row[4]), size=int(str(row[5])), user=str(row[6]),
            created_at=float(str(row[7])),
            repo_tags=tuple(str(n) for n, kind in names if kind == "tag"),
            repo_digests=tuple(str(n) for n, kind in names if kind == "digest"),
            blobs=tuple(BlobRecord(str(r[0]), str(r[1]), str(r[2]), int(r[3]),
                                   str(r[4]) if r[4] is not None else None) for r in blobs))
