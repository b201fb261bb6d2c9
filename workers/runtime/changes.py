"""The change feed: what happened to containers and pod sandboxes, in order
enough for the kubelet's evented PLEG.

Two sources, both plain files, so any runtime worker can serve the next
poll and a worker restart loses nothing:

- the journal: the op that creates, starts, stops or removes an object
  writes one small file naming the change (``note``), after the change is
  on disk;
- conmon's exit files: a container that exits, on its own or because it was
  stopped, is reported STOPPED from its exit file (conmon outlives the
  workers, so only it sees every exit).

``since`` long-polls both for entries newer than the caller's cursor (an
mtime in ns). It looks a few seconds behind the cursor, because a file
keeps the mtime of its temp file, written before the rename, and the
caller names the entries it has already seen there. Journal entries older
than ``KEEP_NS`` are pruned by the writers and the polls.
"""

from __future__ import annotations

import contextlib
import enum
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

POLL_INTERVAL = 0.1
LOOKBACK_NS = 5_000_000_000
# Far longer than any poll's look-back: a subscriber that is this far
# behind has been dropped and relists anyway.
KEEP_NS = 120_000_000_000
PRUNE_EVERY_NS = 10_000_000_000
# Changes per answer at most; each carries its pod's statuses.
MAX_ANSWER = 256


class Change(enum.Enum):
    CREATED = "created"
    STARTED = "started"
    STOPPED = "stopped"
    DELETED = "deleted"


@dataclass(frozen=True)
class Entry:
    """One change: ``key`` names it among the caller's recent ones;
    ``sandbox_id`` is "" when the change is an exit file (its container's
    record says which pod)."""

    key: str
    stamp: int
    change: Change
    object_id: str
    sandbox_id: str


class Journal:
    """The journal directory, and the exit directory conmon writes."""

    def __init__(self, journal_dir: str, exits_dir: str) -> None:
        self.journal_dir = journal_dir
        self.exits_dir = exits_dir
        self._pruned_at = 0
        # Per directory, the mtime of each file already seen, by name and
        # inode. A journal note is never written after its rename, and an
        # exit file is replaced only by a rename (a new inode), so a file
        # seen older than a poll's look-back stays out of it: a poll stats
        # what is new or recent, not every file kept for KEEP_NS.
        self._stamps: dict[str, dict[tuple[str, int], int]] = {}

    def note(self, change: Change, object_id: str, sandbox_id: str) -> None:
        """Record that ``object_id`` (a container, or the sandbox itself when
        equal to ``sandbox_id``) went through ``change``."""
        os.makedirs(self.journal_dir, mode=0o700, exist_ok=True)
        # A random tail: the same change may be noted twice (an op retried
        # on another worker), and both must land rather than collide.
        name = f"{change.value}.{object_id}.{sandbox_id}.{secrets.token_hex(4)}"
        temp = os.path.join(self.journal_dir, f".{name}")
        with open(temp, "x"):
            pass
        os.rename(temp, os.path.join(self.journal_dir, name))
        self._prune()

    def since(self, cursor: int, recent: set[str], wait: float, deadline: float,
              check: Callable[[], None]) -> list[Entry]:
        """Entries after ``cursor`` not in ``recent`` (``found_order``),
        waiting up to ``wait`` seconds for one."""
        until = min(deadline - 1.0, time.monotonic() + wait)
        # The polls prune too: once pods stop changing, no writer comes to
        # drop the burst's notes, and each poll would scan them, and keep
        # their stamps (``_stamps``), for as long as the node stays quiet.
        self._prune()
        while True:
            found = [e for e in self._scan(cursor - LOOKBACK_NS) if e.key not in recent]
            if found or time.monotonic() >= until:
                break
            check()
            time.sleep(POLL_INTERVAL)
        # Bounded: after a mass drain the rest comes with the next polls.
        return found_order(found)[:MAX_ANSWER]

    def deleted_from(self, object_id: str) -> str | None:
        """The pod a removed container belonged to, from its DELETED note:
        an exit read after the removal still gets its pod's status."""
        prefix = f"{Change.DELETED.value}.{object_id}."
        for _, name in _newer(self.journal_dir, 0):
            if name.startswith(prefix):
                return name.split(".")[2] or None
        return None

    def _scan(self, after: int) -> list[Entry]:
        entries = []
        for stamp, name in self._newer_known(self.journal_dir, after):
            parts = name.split(".")
            if len(parts) == 4 and parts[0] in _CHANGES:
                entries.append(Entry(name, stamp, _CHANGES[parts[0]], parts[1], parts[2]))
        for stamp, name in self._newer_known(self.exits_dir, after):
            entries.append(Entry(f"exit.{name}", stamp, Change.STOPPED, name, ""))
        return entries

    def _newer_known(self, directory: str, after: int) -> list[tuple[int, str]]:
        """``_newer``, with the stamps of files seen before at or below
        ``after`` taken from ``_stamps``. Threads may race here: each builds
        its own map and the last one stored wins, which is as good as any."""
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            return []
        known = self._stamps.get(directory, {})
        fresh: dict[tuple[str, int], int] = {}
        out = []
        for entry in entries:
            if entry.name.startswith("."):
                continue  # a temp file, not renamed yet
            key = (entry.name, entry.inode())
            stamp = known.get(key)
            if stamp is None or stamp > after:
                try:
                    stamp = entry.stat().st_mtime_ns
                except FileNotFoundError:
                    continue
            fresh[key] = stamp
            if stamp > after:
                out.append((stamp, entry.name))
        self._stamps[directory] = fresh
        return out

    def _prune(self) -> None:
        now = time.time_ns()
        if now - self._pruned_at < PRUNE_EVERY_NS:
            return
        self._pruned_at = now
        # Temp files too: a worker killed before its rename leaves one.
        for stamp, name in _newer(self.journal_dir, 0, hidden=True):
            if stamp < now - KEEP_NS:
                with contextlib.suppress(FileNotFoundError):  # pruned by another worker
                    os.unlink(os.path.join(self.journal_dir, name))


_CHANGES = {change.value: change for change in Change}
_ORDER = {change: i for i, change in enumerate(Change)}


def found_order(entries: list[Entry]) -> list[Entry]:
    """Oldest first, except that one object's changes keep its lifecycle's
    order: an exit file can be stamped before the STARTED note of the op
    that started the process, which is written once the start returns."""
    ordered = sorted(entries, key=lambda e: (e.stamp, _ORDER[e.change], e.key))
    slots: dict[str, list[int]] = {}
    for index, entry in enumerate(ordered):
        slots.setdefault(entry.object_id, []).append(index)
    out = list(ordered)
    for indexes in slots.values():
        lifecycle = sorted((ordered[i] for i in indexes), key=lambda e: _ORDER[e.change])
        for index, entry in zip(indexes, lifecycle, strict=True):
            out[index] = entry
    return out


def _newer(directory: str, after: int, hidden: bool = False) -> list[tuple[int, str]]:
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    out = []
    for entry in entries:
        if entry.name.startswith(".") and not hidden:
            continue  # a temp file, not renamed yet
        try:
            stamp = entry.stat().st_mtime_ns
        except FileNotFoundError:
            continue
        if stamp > after:
            out.append((stamp, entry.name))
    return out
