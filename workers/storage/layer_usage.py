"""The writable layers' disk usage: measured in the background, answered
from the cache (usage_cache.py).

The kubelet asks for every container's writable layer every 10-15 s; a
walk of 100 upper dirs on that path would cost seconds and starve pod
starts. So ``storage.layer_usage`` (``answer``) reads one cache entry per
container and one statvfs, and never walks a tree.

The measurer
    Each storage worker runs a ``Measurer`` thread, started before READY
    without waiting for anything. Only the one holding the flock
    ``usage-measurer`` under the locks dir measures; the others try to
    take it every ``LOCK_RETRY`` seconds. The kernel drops the flock with
    its holder, so when the measuring worker is killed another takes over.
    Each pass lists the containers and measures, oldest figure first, each
    whose figure is at least ``interval`` old (or from the future: the
    wall clock stepped back), with usage.walk (du's counting).

CPU bound
    After each walk the measurer rests ``rest_after(walk time, budget)``,
    so walking takes at most ``budget`` of one CPU (the walk's wall time
    counts, so a walk waiting on the disk is charged too). Many big upper
    dirs stretch a round past ``interval`` rather than take more CPU.

Races with create and remove
    The walk runs without the container's lock (a RemoveContainer must
    not wait for a long walk); the entry is written under it, only if the
    upper dir walked is still the one in place. A rootfs removed, or
    removed and made again, while it was walked gets no stale figure.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from ...proto.stats import FsCapacity, LayerUsage, LayerUsages
from .. import locks
from . import records, rootfs, usage, usage_cache
from .layout import Layout

log = logging.getLogger(__name__)

LOCK_KEY = "usage-measurer"
LOCK_RETRY = 3.0
# The shortest pause between two passes: a container that could not be
# measured (its lock busy) is tried again no faster than this.
MIN_PAUSE = 1.0


def answer(layout: Layout, container_ids: Collection[str]) -> LayerUsages:
    """The cached usage of each container that has a rootfs, and the
    filesystem that holds them (ids already checked)."""
    layers: dict[str, LayerUsage] = {}
    for cid in container_ids:
        # A directory named by the bare id is a complete rootfs (layout.py).
        if os.path.isdir(layout.container_dir(cid)):
            layers[cid] = usage_cache.read(layout, cid) or usage_cache.UNMEASURED
    return LayerUsages(filesystem=capacity(layout), layers=layers)


def capacity(layout: Layout) -> FsCapacity:
    """statvfs of the containers dir, named as ImageFsInfo names it."""
    # The kubelet resolves the mountpoint to a device: it must exist.
    os.makedirs(layout.containers_dir, mode=0o700, exist_ok=True)
    st = os.statvfs(layout.containers_dir)
    return FsCapacity(mountpoint=layout.containers_dir,
                      capacity_bytes=st.f_blocks * st.f_frsize,
                      available_bytes=st.f_bavail * st.f_frsize,
                      inodes_total=st.f_files, inodes_free=st.f_ffree)


def rest_after(walk_seconds: float, budget: float) -> float:
    """The rest after a walk that keeps walking to ``budget`` of one CPU:
    walking ``w`` then resting ``r`` uses w / (w + r) = budget."""
    return walk_seconds * (1 - budget) / budget


@dataclass(frozen=True)
class MeasureSettings:
    interval: float
    """Seconds before a figure is measured again."""
    budget: float
    """The share of one CPU the walks may take, in (0, 1]."""

    def __post_init__(self) -> None:
        # supervisor/config.py checks both; a bad one here would spin or
        # divide by zero, so it fails the worker's start instead.
        if not self.interval > 0:
            raise ValueError(f"layer_usage_interval must be above 0, got {self.interval}")
        if not 0 < self.budget <= 1:
            raise ValueError(f"layer_usage_budget must be in (0, 1], got {self.budget}")

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> MeasureSettings:
        # The supervisor writes every key (daemon.worker_settings) and owns
        # the defaults (supervisor/config.py StatsConfig).
        stats = settings["stats"]
        return cls(interval=float(stats["layer_usage_interval"]),
                   budget=float(stats["layer_usage_budget"]))


class _Stopped(Exception):
    """Raised inside a walk once ``Measurer.stop`` is called."""


class Measurer:
    """One worker's measurer thread (see the module docstring).

    ``measuring`` says whether this one holds the measurer lock now, and
    ``walks`` counts the upper dirs it has walked.
    """

    def __init__(self, layout: Layout, settings: MeasureSettings, *,
                 lock_retry: float = LOCK_RETRY) -> None:
        self.layout = layout
        self.settings = settings
        self.lock_retry = lock_retry
        self.measuring = False
        self.walks = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        # Daemon: the worker's exit need not wait for a walk; a walk cut
        # short writes nothing, and an entry is replaced whole or not at all.
        self._thread = threading.Thread(target=self.run, name="storage-usage", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop at the next directory of a walk and release the lock."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> None:
        while not self._stop.is_set():
            if not self._take_turn():
                self._stop.wait(self.lock_retry)

    def _take_turn(self) -> bool:
        """Measure for as long as this one holds the lock; False when it
        should wait before trying again (held elsewhere, or a failure)."""
        try:
            held = locks.try_acquire(self.layout.locks_dir, LOCK_KEY)
        except OSError as exc:
            log.warning("Cannot take the usage measurer lock: %s", exc)
            return False
        if held is None:
            return False
        self.measuring = True
        log.info("Measuring the writable layers every %.1fs, with at most %.0f%% of a CPU",
                 self.settings.interval, self.settings.budget * 100)
        try:
            while not self._stop.is_set():
                self._stop.wait(self.pass_once())
        except _Stopped:
            pass
        except Exception:
            # Released below, so another worker may take over meanwhile.
            log.exception("Measuring the writable layers failed; trying again")
            return False
        finally:
            self.measuring = False
            held.release()
        return True

    def pass_once(self) -> float:
        """Measure each container whose figure is due; the seconds to rest
        before the next pass."""
        due, soonest = self._schedule(time.time_ns())
        if not due:
            return soonest
        for cid in due:
            started = time.monotonic()
            self.measure(cid)
            if self._stop.wait(rest_after(time.monotonic() - started, self.settings.budget)):
                raise _Stopped
        # Soon again: the new figures are not due, but a skipped one is.
        return min(self.settings.interval, MIN_PAUSE)

    def _schedule(self, now_ns: int) -> tuple[list[str], float]:
        """The containers due, oldest figure first, and the seconds until
        the next one is due when none is."""
        interval = self.settings.interval
        due: list[tuple[int, str]] = []
        soonest = interval
        for cid in records.container_ids(self.layout):
            entry = usage_cache.read(self.layout, cid)
            taken = 0 if entry is None else entry.timestamp_ns
            age = (now_ns - taken) / 1e9
            if 0 <= age < interval:
                soonest = min(soonest, interval - age)
            else:
                due.append((min(taken, now_ns), cid))
        return [cid for _, cid in sorted(due)], soonest

    def measure(self, container_id: str) -> bool:
        """Walk one upper dir and store its figure; whether it was stored."""
        upper = self.layout.upper_dir(container_id)
        try:
            walked = os.lstat(upper)
        except FileNotFoundError:
            return False  # removed since the listing
        taken = time.time_ns()
        try:
            found = usage.walk(upper, self._check)
        except OSError as exc:
            # One unreadable tree must not hold up the others' figures.
            log.warning("Cannot measure the writable layer of %s: %s", container_id, exc)
            return False
        self.walks += 1
        figure = LayerUsage(used_bytes=found.bytes, inodes_used=found.inodes,
                            timestamp_ns=taken)
        return self._store(container_id, (walked.st_dev, walked.st_ino), figure)

    def _store(self, cid: str, walked: tuple[int, int], figure: LayerUsage) -> bool:
        held = locks.try_acquire(self.layout.locks_dir, rootfs.lock_name(cid))
        if held is None:
            log.debug("Container %s is busy; measuring it again later", cid)
            return False
        gone = False
        try:
            try:
                now = os.lstat(self.layout.upper_dir(cid))
            except FileNotFoundError:
                # Our acquire made its lock file again: it goes with the object.
                gone = not os.path.isdir(self.layout.container_dir(cid))
                return False
            if (now.st_dev, now.st_ino) != walked:
                return False  # removed and made again while walked
            usage_cache.write(self.layout, cid, figure)
        finally:
            held.release(unlink=gone)
        log.debug("Writable layer of %s: %d bytes, %d inodes", cid, figure.used_bytes,
                  figure.inodes_used)
        return True

    def _check(self) -> None:
        if self._stop.is_set():
            raise _Stopped
