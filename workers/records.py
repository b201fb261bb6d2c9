"""Crash-safe JSON records, one file per object, shared by every pool.

A record is written to a temp file in the same directory, fsynced, renamed
over the old one, and the directory fsynced: after ``kill -9`` at any
instant a reader sees the old record or the new one, never a torn one.

Temp files are named ``.<id>.<random>.tmp`` (so two writers never share
one). A crash can leave one behind: ``delete`` drops those of its object,
and ``remove_stale_temps`` at start-up drops every one old enough that no
``save`` can still be writing it.

Callers serialise per object (workers/locks.py): records of different
objects are different files, so nothing here locks.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import time
from typing import Any

_SUFFIX = ".json"
_TEMP_SUFFIX = ".tmp"
_RANDOM = re.compile(r"[A-Za-z0-9_]+")


class RecordCorrupt(ValueError):
    """A record file that cannot be read as a JSON object (disk corruption,
    a bug, a hand edit); the message names the file."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def read_json(path: str) -> dict[str, Any] | None:
    """The JSON object in ``path``; None if there is no such file."""
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise RecordCorrupt(path, str(exc)) from exc
    if not isinstance(record, dict):
        raise RecordCorrupt(path, "not a JSON object")
    return record


class RecordDir:
    """The records of one kind of object, in one directory."""

    def __init__(self, path: str) -> None:
        self.path = path

    def _file(self, object_id: str) -> str:
        if not object_id or "/" in object_id or object_id.startswith("."):
            raise ValueError(f"bad record id {object_id!r}")
        return os.path.join(self.path, object_id + _SUFFIX)

    def load(self, object_id: str) -> dict[str, Any] | None:
        """The object's record, or None if it has none."""
        return read_json(self._file(object_id))

    def save(self, object_id: str, record: dict[str, Any]) -> None:
        """Replace the object's record atomically and durably."""
        final = self._file(object_id)
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{object_id}.", suffix=_TEMP_SUFFIX,
                                   dir=self.path)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(record, f, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        fsync_dir(self.path)

    def delete(self, object_id: str) -> None:
        """Drop the object's record, and any temp file a killed ``save`` left.

        The caller holds the object's lock, so no ``save`` of it is in flight.
        """
        final = self._file(object_id)
        prefix = f".{object_id}."
        for name in _listdir(self.path):
            # mkstemp's random part is [a-z0-9_]: the id of another object
            # that merely starts with this one (``p1.x`` for ``p1``) never
            # matches. One pattern for every id: ``re`` caches each pattern it
            # compiles, 512 of them, so one per id stayed after its removal.
            if (name.startswith(prefix) and name.endswith(_TEMP_SUFFIX)
                    and _RANDOM.fullmatch(name, len(prefix), len(name) - len(_TEMP_SUFFIX))):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.path, name))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(final)
            fsync_dir(self.path)

    def ids(self) -> list[str]:
        """Ids of the objects that have a record, sorted."""
        return sorted(n[: -len(_SUFFIX)] for n in _listdir(self.path)
                      if n.endswith(_SUFFIX) and not n.startswith("."))

    def remove_stale_temps(self, older_than: float = 60.0) -> list[str]:
        """Delete temp files of writers that died; return their names.

        Only files older than ``older_than`` seconds go: a ``save`` in flight
        in another worker finishes in milliseconds and must keep its file.
        """
        removed = []
        cutoff = time.time() - older_than
        for name in _listdir(self.path):
            if not (name.startswith(".") and name.endswith(_TEMP_SUFFIX)):
                continue
            path = os.path.join(self.path, name)
            with contextlib.suppress(FileNotFoundError):
                if os.stat(path).st_mtime < cutoff:
                    os.unlink(path)
                    removed.append(name)
        return removed


def fsync_dir(path: str) -> None:
    """Make a rename or unlink in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str, data: bytes, mode: int = 0o644, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically (temp + fsync + rename).

    ``durable=False`` skips both fsyncs, for a file under the run dir: a
    reader, or a process after any kill, still sees the old file or the new
    one (the page cache is the same for every process); only a power loss
    could lose the write, and the run dir does not outlive one.
    """
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if durable:
        fsync_dir(os.path.dirname(path) or ".")


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []
