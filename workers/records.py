"""Crash-safe JSON records, one file per object, shared by every pool.

A record is written to a temp file in the same directory, fsynced, renamed
over the old one, and the directory fsynced: after ``kill -9`` at any
instant a reader sees the old record or the new one, never a torn one.
Temp files a crash left behind are named ``.<id>.tmp.<pid>`` and are
removed by ``remove_stale_temps`` at start-up.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Any


class RecordCorrupt(ValueError):
    """A record file that is not a JSON object (disk corruption, a bug)."""


class RecordDir:
    """The records of one kind of object, in one directory."""

    def __init__(self, path: str) -> None:
        self.path = path

    def _file(self, object_id: str) -> str:
        if not object_id or "/" in object_id or object_id.startswith("."):
            raise ValueError(f"bad record id {object_id!r}")
        return os.path.join(self.path, f"{object_id}.json")

    def load(self, object_id: str) -> dict[str, Any] | None:
        try:
            with open(self._file(object_id), encoding="utf-8") as f:
                record = json.load(f)
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise RecordCorrupt(f"{self._file(object_id)}: {exc}") from exc
        if not isinstance(record, dict):
            raise RecordCorrupt(f"{self._file(object_id)}: not a JSON object")
        return record

    def save(self, object_id: str, record: dict[str, Any]) -> None:
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        final = self._file(object_id)
        tmp = os.path.join(self.path, f".{object_id}.tmp.{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        fsync_dir(self.path)

    def delete(self, object_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._file(object_id))
            fsync_dir(self.path)

    def ids(self) -> list[str]:
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return []
        return sorted(n[:-5] for n in names if n.endswith(".json") and not n.startswith("."))

    def remove_stale_temps(self, older_than: float = 60.0) -> list[str]:
        """Delete temp files of writers that died; return their names."""
        removed = []
        now = time.time()
        try:
            entries = list(os.scandir(self.path))
        except FileNotFoundError:
            return []
        for entry in entries:
            if entry.name.startswith(".") and ".tmp." in entry.name:
                with contextlib.suppress(FileNotFoundError):
                    if now - entry.stat().st_mtime > older_than:
                        os.unlink(entry.path)
                        removed.append(entry.name)
        return removed


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically (temp + fsync + rename)."""
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path) or ".")
