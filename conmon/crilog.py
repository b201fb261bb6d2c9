"""The container log in the kubelet's CRI format, and its reopening.

Format (contract.py): ``<RFC3339Nano UTC> <stdout|stderr> <P|F> <text>\\n``.
Each stream keeps its own pending bytes, so a line is cut only at its own
newline or at ``line_max`` bytes (as containerd does, and unlike a cut at
every read, which would split lines at pipe-buffer boundaries).

Invariants
    - Records are appended whole, one write per batch (O_APPEND), so a
      reader never sees half a record from a live conmon.
    - ``reopen`` opens the new file before closing the old one: a failed
      reopen keeps logging to the old file and raises.
    - A failed write (ENOSPC, EIO) drops that batch and is reported on
      stderr: the container is never blocked on its log.
"""

from __future__ import annotations

import logging
import os
import time

from .contract import LOG_LINE_MAX

log = logging.getLogger(__name__)

FULL = b"F"
PARTIAL = b"P"


def timestamp(ns: int) -> bytes:
    """RFC3339 with nanoseconds in UTC, always nine digits."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{base}.{nanos:09d}Z".encode()


class CriLog:
    """One container's log file."""

    def __init__(self, path: str, line_max: int = LOG_LINE_MAX) -> None:
        self.path = path
        self._line_max = line_max
        self._fd = self._open()
        self._pending: dict[str, bytearray] = {}

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                       0o600)

    def reopen(self) -> None:
        fd = self._open()
        os.close(self._fd)
        self._fd = fd

    def write(self, stream: str, data: bytes) -> None:
        """Log ``data`` from ``stream``; complete lines now, the rest later."""
        pending = self._pending.setdefault(stream, bytearray())
        pending += data
        records: list[tuple[bytes, bytes]] = []
        start = 0
        while (end := pending.find(b"\n", start)) >= 0:
            line = bytes(pending[start:end])
            start = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            records += self._split(line, FULL)
        del pending[:start]
        while len(pending) > self._line_max:
            records.append((PARTIAL, bytes(pending[:self._line_max])))
            del pending[:self._line_max]
        self._emit(stream, records)

    def flush_partial(self) -> None:
        """The container is gone: what has no newline yet never will."""
        for stream, pending in self._pending.items():
            if pending:
                self._emit(stream, [(PARTIAL, bytes(pending))])
                pending.clear()

    def _split(self, line: bytes, tag: bytes) -> list[tuple[bytes, bytes]]:
        if len(line) <= self._line_max:
            return [(tag, line)]
        chunks = [line[i:i + self._line_max] for i in range(0, len(line), self._line_max)]
        return [(PARTIAL, c) for c in chunks[:-1]] + [(tag, chunks[-1])]

    def _emit(self, stream: str, records: list[tuple[bytes, bytes]]) -> None:
        if not records:
            return
        prefix = timestamp(time.time_ns()) + b" " + stream.encode() + b" "
        batch = b"".join(prefix + tag + b" " + text + b"\n" for tag, text in records)
        try:
            view = memoryview(batch)
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as exc:
            log.error("dropping %d log bytes of %s: %s", len(batch), stream, exc)

    def close(self) -> None:
        os.close(self._fd)
