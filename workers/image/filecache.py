"""Parsed files kept until the files change: registries.conf, the signature policy.

A ``FileCache`` holds what one parser made of some files, with a stamp of
each file it read: device, inode, size, mtime and ctime, or "absent". Every
``get`` stats the files again and parses again only when a stamp differs,
so an edit, a file that appears or disappears, or a new file renamed over
the path (a new inode) applies to the next op without a restart, while an
unchanged file costs a few ``stat`` calls instead of a parse.

Invariants
    - A result is kept only when the stamps taken before the parse equal the
      ones taken after it: a file rewritten while it was read is read again.
    - A file modified less than ``SETTLE_NS`` before the parse started is not
      trusted yet (git calls such an entry "racy"): timestamps advance only
      once per kernel clock tick, or per second on some filesystems, so a
      second write of the same size in the same tick would look unchanged.
      Such a file is parsed on every ``get`` until it is older.
    - Errors are never kept: a broken file fails each op with the error the
      parser gives, until it is fixed.
    - A path that cannot be stat'ed or listed for another reason than
      absence (EACCES, ELOOP) is parsed every time, so the parser names the
      problem.

Concurrency
    Ops run in the worker's threads. A lock guards the kept result; parsing
    runs outside it, so two threads may parse one change at once and the
    later result stays. Both are equal, as both read the same files.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")

# Longer than the coarsest timestamp granularity /etc is likely to sit on
# (one second: ext3, some network filesystems), with the rounding margin.
SETTLE_NS = 2_000_000_000

# (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns); None: the path is absent.
Stamp = tuple[int, int, int, int, int] | None
Stamps = tuple[tuple[str, Stamp], ...]


def _stamp(path: str) -> Stamp:
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class FileCache(Generic[T]):
    """``parse()``'s result, parsed again only when one of ``paths()`` changed.

    ``paths`` lists every file the parse reads, present or not; it is called
    on each ``get``, so a set that depends on a directory listing (drop-ins)
    is followed too.
    """

    def __init__(self, paths: Callable[[], Sequence[str]], parse: Callable[[], T]) -> None:
        self._paths = paths
        self._parse = parse
        self._lock = threading.Lock()
        self._kept: tuple[Stamps, T] | None = None

    def _stamps(self) -> Stamps | None:
        try:
            return tuple((path, _stamp(path)) for path in self._paths())
        except OSError:
            # Not kept, so the parse meets the same problem and reports it.
            return None

    def get(self) -> T:
        before = self._stamps()
        with self._lock:
            kept = self._kept
        if before is not None and kept is not None and kept[0] == before:
            return kept[1]
        started = time.time_ns()
        value = self._parse()
        keep = before is not None and self._stamps() == before and all(
            stamp is None or started - stamp[3] >= SETTLE_NS for _, stamp in before)
        with self._lock:
            self._kept = (before, value) if keep and before is not None else None
        return value
