"""Pod cgroups under the kubelet's cgroup_parent.

The kubelet normally creates the pod cgroup itself (cgroupfs
``/kubepods/<qos>/pod<uid>``, or the slice ``kubepods-<qos>-pod<uid>.slice``
with the systemd driver); a client that does not (crictl, the tests) still
gets one: with cgroupfs the directories missing in any mount are made here
(on v2 with the pod's controllers handed down to them), with systemd the
missing pod slice is started over D-Bus. runc creates and deletes the
per-container cgroups below.

Ownership
    Every directory podvisor makes has a record (``Owned.records``, one per
    cgroup path, e.g. ``/podvisor/pod-1a2b``): the mounts it was made in
    (``controllers``: ``memory``, ``unified``, ... relative to the cgroup
    root, ``""`` for v2's single mount) and the pods using it; a slice
    podvisor started has one too, naming its ``unit``. A pod joins each podvisor-made directory on
    its path, ancestors included, and leaves them when it is removed; the
    last to leave removes the directory. A directory that was there before
    (the kubelet's) has no record and is never removed, nor is anything
    below it in a mount where it was there before: a directory may be the
    kubelet's in some mounts and podvisor's in others, which is why a
    record names its mounts. podvisor starts only the pod's own slice;
    the slices above it are systemd's (it makes them as their children
    need them) and stay. The node-wide ledger of
    earlier versions is imported into records once (``import_ledger``).

Processes
    Every sandbox of one pod (each kubelet attempt) has the same parent, so
    the processes in it are told apart by the object they belong to: the
    container or infra whose cgroup (``<prefix>-<id>``) they are in, or
    whose monitor they are. A removal waits for and kills only its own.

Invariants
    - The pod and the controllers are recorded *before* mkdir, and the
      pod's own record names its cgroup_parent before ``ensure`` runs, so
      after a crash at any instant every directory podvisor may have made
      has a record naming a pod (or none, for reconcile to collect).
    - A directory's record changes only under its lock (``cgroup-<path>``),
      and a pod joins a directory before it makes anything below it, so a
      directory with users is never removed: removing one pod cannot take
      the directories of another being created beside it, nor can runc
      then re-create them behind podvisor's back.
    - One lock at a time: root to leaf when joining, leaf to root when
      leaving; the pod's own lock is held around both by the caller.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ...fsnames import component
from ...locks import ObjectLock, locked
from ...records import RecordDir
from .. import monitor
from . import systemd, tree
from .driver import Driver
from .hierarchy import Hierarchy, join

log = logging.getLogger(__name__)

CGROUP_ROOT = "/sys/fs/cgroup"


def mounts(h: Hierarchy) -> list[str]:
    """Every mount a pod's directories are made in, relative to the root:
    each v1 hierarchy, named ones and hybrid's cgroup2 included (runc joins
    them all), or ``""``, v2's one."""
    return sorted({os.path.relpath(m, h.root) if m != h.root else "" for m in h.mounts()})


@dataclass(frozen=True)
class Owned:
    """The directories podvisor made: their records and their locks."""

    records: RecordDir
    lock_dir: str

    def load(self, path: str) -> dict[str, Any] | None:
        return self.records.load(component(path))

    def save(self, path: str, record: dict[str, Any]) -> None:
        self.records.save(component(path), record)

    def delete(self, path: str) -> None:
        self.records.delete(component(path))

    def paths(self) -> list[str]:
        """Every recorded directory, deepest first."""
        found = []
        for record_id in self.records.ids():
            with contextlib.suppress(ValueError):
                record = self.records.load(record_id)
                if record is not None:
                    found.append(str(record["path"]))
        return sorted(found, key=lambda p: (-p.count("/"), p))

    @contextlib.contextmanager
    def locked(self, path: str, deadline: float) -> Iterator[ObjectLock]:
        with locked(self.lock_dir, f"cgroup-{path}", deadline, f"cgroup {path}",
                    gone=lambda: self.load(path) is None) as held:
            yield held


chain = tree.ancestors


def _dir(h: Hierarchy, mount: str, path: str) -> str:
    return join(os.path.join(h.root, mount) if mount else h.root, path)


def ensure(driver: Driver, parent: str, pod_id: str, owned: Owned, deadline: float) -> None:
    """Join or make the pod cgroup ``parent`` (and, with cgroupfs, every
    directory on its path) for ``pod_id``."""
    if driver.systemd:
        _ensure_slice(driver, parent, pod_id, owned, deadline)
        return
    h = driver.hierarchy
    names = mounts(h)
    for path in chain(parent):
        with owned.locked(path, deadline):
            record = owned.load(path)
            missing = [m for m in names if not os.path.isdir(_dir(h, m, path))]
            if record is None and not missing:
                continue  # not podvisor's: it is never touched
            record = record or {"path": path, "controllers": [], "users": []}
            record["controllers"] = sorted({*record["controllers"], *missing})
            _join(record, pod_id)
            # Recorded first: a crash after the mkdir must not leave a
            # directory nobody knows podvisor made.
            owned.save(path, record)
            for mount in missing:
                tree.make(_dir(h, mount, path))
    # The kubelet's own directories get the controllers too: runc would
    # enable them for the container, but the pod's limits need them now.
    tree.enable(h, parent)


def _ensure_slice(driver: Driver, name: str, pod_id: str, owned: Owned,
                  deadline: float) -> None:
    path = driver.path(name)
    with owned.locked(path, deadline), systemd.Systemd() as bus:
        record = owned.load(path)
        if record is None and bus.active(name):
            return  # the kubelet's (or systemd's own, as system.slice)
        record = record or {"path": path, "unit": name, "controllers": [], "users": []}
        _join(record, pod_id)
        owned.save(path, record)
        bus.start_slice(name, deadline)


def _join(record: dict[str, Any], pod_id: str) -> None:
    if pod_id not in record["users"]:
        record["users"].append(pod_id)


def release(driver: Driver, parent: str, pod_id: str, owned: Owned,
            deadline: float) -> list[str]:
    """Leave every directory of ``parent``; remove those ``pod_id`` was the
    last to use. Return the directories that could not go (still busy)."""
    left: list[str] = []
    paths = chain(driver.path(parent))
    for path in reversed(paths):
        with owned.locked(path, deadline):
            record = owned.load(path)
            if record is None:
                continue
            # The pod's own directory goes with what runc left below it;
            # an ancestor only ever goes alone (others' pods may be below).
            left += _leave(driver.hierarchy, owned, record, lambda user: user != pod_id,
                           subtree=path == paths[-1], deadline=deadline)
    return left


def reconcile(driver: Driver, owned: Owned, live: Mapping[str, str],
              deadline: float) -> list[str]:
    """Make the directories podvisor made match the pods that live.

    ``live`` maps every pod on record to its cgroup_parent. A directory
    leaves users that are not pods any more and goes when none is left;
    below a directory podvisor made, one on no live pod's path is a pod
    cgroup whose pod is gone and goes too (with what runc left in it), as
    long as no process lives there. Returns the directories removed.
    """
    h = driver.hierarchy
    leaves = {chain(p)[-1] for p in (driver.path(v) for v in live.values()) if chain(p)}
    on_path = {c for p in leaves for c in chain(p)}
    removed: list[str] = []
    for path in owned.paths():  # deepest first: a child goes before its parent
        with owned.locked(path, deadline):
            record = owned.load(path)
            if record is None:
                continue
            if path not in leaves and not record.get("unit"):
                removed += _orphans(h, owned, record, on_path)
            before = [_dir(h, m, path) for m in record["controllers"]]
            _leave(h, owned, record, lambda user: user in live, subtree=False,
                   deadline=deadline)
            removed += [d for d in before if not os.path.isdir(d)]
            if record.get("unit") and owned.load(path) is None:
                removed.append(str(record["unit"]))
    return removed


def _leave(h: Hierarchy, owned: Owned, record: dict[str, Any], stays: Callable[[str], bool],
           *, subtree: bool, deadline: float) -> list[str]:
    """Drop the users ``stays`` refuses; remove the directory (or stop the
    slice) once none is left. Return what is still there; the caller holds
    the lock."""
    path = str(record["path"])
    users = [u for u in record["users"] if stays(u)]
    if users:
        if users != record["users"]:
            owned.save(path, {**record, "users": users})
        return []
    if record.get("unit"):
        # Stopping the slice ends what is still in it and removes its cgroup
        # where systemd manages it; on v1 runc made it in the other
        # hierarchies too (freezer, cpuset, ...), and those stay behind.
        with systemd.Systemd() as bus:
            bus.stop(str(record["unit"]), deadline)
        for directory in h.dirs(path):
            tree.rmtree(directory)
        owned.delete(path)
        return []
    left = []
    for mount in record["controllers"]:
        target = _dir(h, mount, path)
        if tree.rmtree(target) if subtree else tree.rmdir(target):
            left.append(target)
    if left:
        # Busy (a process, or someone else's cgroup below): kept for the
        # next pod to leave it, or the next reconcile, to try again.
        log.warning("Cgroup %s is still in use in %s", path, ", ".join(left))
        owned.save(path, {**record, "users": [],
                          "controllers": [m for m in record["controllers"]
                                          if _dir(h, m, path) in left]})
    else:
        owned.delete(path)
    return left


def _orphans(h: Hierarchy, owned: Owned, record: dict[str, Any], on_path: set[str]) -> list[str]:
    """Remove the directories below the recorded one that no live pod's path
    goes through and that are no podvisor-made directory of their own.

    Only in the mounts podvisor made it in: where the directory was there
    before, what is below it is the kubelet's (a QoS or pod cgroup).
    """
    path = str(record["path"])
    removed = []
    for mount in record["controllers"]:
        base = _dir(h, mount, path)
        try:
            children = [e.name for e in os.scandir(base) if e.is_dir(follow_symlinks=False)]
        except (FileNotFoundError, NotADirectoryError):
            continue
        for name in children:
            child = f"{path.rstrip('/')}/{name}"
            if child in on_path or owned.load(child) is not None:
                continue
            target = os.path.join(base, name)
            if not tree.rmtree(target):
                log.warning("Removed cgroup %s, which belongs to no pod", target)
                removed.append(target)
    return removed


def import_ledger(ledger: str, owned: Owned, live: Mapping[str, str], deadline: float) -> None:
    """Turn the node-wide ledger of podvisor before per-directory records
    (a JSON list of ``/sys/fs/cgroup/<controller>/<path>`` it made) into
    records, once, then delete it.

    A listed directory on a live pod's path gets that pod (and every other
    whose path goes through it) as users, so it goes when they do; one on
    no live path gets none, and the reconcile that follows removes it
    unless a process is still there. A directory gone since is skipped.
    """
    try:
        with open(ledger, encoding="utf-8") as f:
            listed = json.load(f)
    except FileNotFoundError:
        return
    except ValueError:
        listed = []  # torn by a crash of the old version: nothing to learn from it
    found: dict[str, set[str]] = {}
    for entry in listed if isinstance(listed, list) else []:
        made = _ledger_entry(entry)
        if made is not None and os.path.isdir(join(os.path.join(CGROUP_ROOT, made[0]), made[1])):
            found.setdefault(made[1], set()).add(made[0])
    for path, made_in in sorted(found.items()):
        users = sorted(pod for pod, parent in live.items() if path in chain(parent))
        with owned.locked(path, deadline):
            record = owned.load(path) or {"path": path, "controllers": [], "users": []}
            record["controllers"] = sorted({*record["controllers"], *made_in})
            record["users"] = [*record["users"], *(u for u in users if u not in record["users"])]
            owned.save(path, record)
    # Deleted last: a crash before this point imports the same list again,
    # which changes nothing.
    for stale in (ledger, f"{ledger}.lock"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(stale)


def _ledger_entry(entry: object) -> tuple[str, str] | None:
    """(mount, cgroup path) of one ledger entry, or None if it names no
    cgroup below a v1 mount."""
    if not isinstance(entry, str) or not entry.startswith(f"{CGROUP_ROOT}/"):
        return None
    parts = entry[len(CGROUP_ROOT) + 1:].split("/")
    if len(parts) < 2 or any(p in ("", ".", "..") for p in parts):
        return None
    return parts[0], "/" + "/".join(parts[1:])


# A container's or infra's own cgroup below the pod's, or its monitor's:
# runc names it ``<prefix>-<id>`` (cgroupfs) or ``<prefix>-<id>.scope``
# (systemd), podvisor ``<prefix>-conmon-<id>[.scope]``.
_OBJECT_CGROUP = re.compile(r"(?:.*-)?([0-9a-f]{64})(?:\.scope)?")


@dataclass(frozen=True)
class Process:
    pid: int
    owner: str | None  # the object it belongs to; None when nothing tells
    cgroup: str | None  # that object's own cgroup below the pod's, if it is in one


def processes(driver: Driver, parent: str) -> list[Process]:
    """Every process in the pod's cgroups, with the object it belongs to:
    the container (or infra) whose cgroup it is in, or whose monitor it is."""
    path = driver.path(parent)
    if not chain(path) or not tree.populated(driver.hierarchy, path):
        return []  # the root holds every process of the node: never a pod's
    found = []
    for where, pid in tree.pids(driver.hierarchy, path):
        below = where[len(path):].strip("/").split("/")[0]
        match = _OBJECT_CGROUP.fullmatch(below) if below else None
        if match:
            found.append(Process(pid, match[1], f"{path.rstrip('/')}/{below}"))
        else:
            # In the pod's cgroup itself, a process of podvisor's is a
            # monitor placed there by a version before monitor leaves.
            found.append(Process(pid, monitor.monitored_id(pid), None))
    return found


def drain(driver: Driver, parent: str, deadline: float, ours: Callable[[str | None], bool],
          grace: float = 1.0) -> bool:
    """Wait for the processes of the pod's cgroups that are ``ours`` (by the
    object they belong to) to go: monitors exiting after their containers;
    SIGKILL what is left of them after ``grace``. True once none is left.

    Only ``ours``: the kubelet gives every sandbox of one pod the same
    parent, and removing an old sandbox must not touch the new one.
    """
    started = time.monotonic()
    while left := [p for p in processes(driver, parent) if ours(p.owner)]:
        now = time.monotonic()
        if now >= deadline:
            return False
        if now - started >= grace:
            # A whole object cgroup at once where the kernel can (v2's
            # cgroup.kill: nothing forks its way out); the rest one by one.
            for cgroup in {p.cgroup for p in left if p.cgroup}:
                tree.kill(driver.hierarchy, cgroup)
            for p in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGKILL)
        time.sleep(0.02)
    return True
