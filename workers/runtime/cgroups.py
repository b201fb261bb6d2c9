"""Pod cgroups under the kubelet's cgroup_parent.

With the cgroupfs driver the kubelet normally creates the pod cgroup
(``/kubepods/<qos>/pod<uid>``) itself; a client that does not (crictl, the
tests) still gets one: the directories missing in any controller are made
here, and runc creates and deletes the per-container cgroups below. The
systemd driver needs a running systemd; where there is none, a pod asking
for it fails with a clear error.

Ownership
    Every directory podvisor makes has a record (``Owned.records``, one per
    cgroup path, e.g. ``/podvisor/pod-1a2b``): the controllers it was made
    in and the pods using it. A pod joins each podvisor-made directory on
    its path, ancestors included, and leaves them when it is removed; the
    last to leave removes the directory. A directory that was there before
    (the kubelet's) has no record and is never removed, nor is anything
    below it in a controller where it was there before: a directory may
    be the kubelet's in some controllers and podvisor's in others, which is
    why a record names its controllers. The node-wide ledger of
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
import posixpath
import re
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ...proto.errors import FailedPrecondition, InvalidArgument, shorten
from ...proto.limits import check_path
from ..fsnames import component
from ..locks import ObjectLock, locked
from ..records import RecordDir
from . import monitor

log = logging.getLogger(__name__)

CGROUP_ROOT = "/sys/fs/cgroup"
DEFAULT_PARENT = "/podvisor"


def controllers() -> list[str]:
    """Every mounted cgroup v1 hierarchy, named ones included: the runtime
    makes the pod's directories in all of them (systemd and unified too)."""
    try:
        names = sorted(os.listdir(CGROUP_ROOT))
    except FileNotFoundError:
        return []
    return [n for n in names if os.path.isdir(os.path.join(CGROUP_ROOT, n))
            and not os.path.islink(os.path.join(CGROUP_ROOT, n))]


def pod_parent(cgroup_parent: str, sandbox_id: str, manager: str) -> str:
    """The cgroup the pod's containers go under."""
    if manager == "systemd":
        if not os.path.isdir("/run/systemd/system"):
            raise FailedPrecondition(
                "cgroup_manager is systemd but systemd is not running on this node; "
                "set [podvisor.runtime] cgroup_manager = \"cgroupfs\"")
        return cgroup_parent or "system.slice"
    if not cgroup_parent:
        return f"{DEFAULT_PARENT}/pod-{sandbox_id[:12]}"
    if not cgroup_parent.startswith("/") or ".." in cgroup_parent.split("/"):
        raise InvalidArgument(f"cgroup_parent {shorten(cgroup_parent)} must be an absolute "
                              "cgroupfs path (the kubelet's cgroupfs driver)")
    check_path("cgroup_parent", cgroup_parent)
    # One spelling per directory: "/a//b/" must share "/a/b"'s records and
    # locks. normpath keeps a leading "//" (POSIX leaves it open), and the
    # root alone stays "" as before: no pod's parent, nothing to drain.
    normal = posixpath.normpath(cgroup_parent).lstrip("/")
    return f"/{normal}" if normal else ""


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


def chain(parent: str) -> list[str]:
    """``/a/b/c`` -> ``/a``, ``/a/b``, ``/a/b/c``."""
    parts = [p for p in parent.split("/") if p]
    return ["/" + "/".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _dir(controller: str, path: str) -> str:
    return os.path.join(CGROUP_ROOT, controller, path.lstrip("/"))


def ensure(parent: str, pod_id: str, owned: Owned, deadline: float) -> None:
    """Join or make every directory of ``parent`` for ``pod_id`` in every
    controller."""
    names = controllers()
    for path in chain(parent):
        with owned.locked(path, deadline):
            record = owned.load(path)
            missing = [c for c in names if not os.path.isdir(_dir(c, path))]
            if record is None and not missing:
                continue  # not podvisor's: it is never touched
            record = record or {"path": path, "controllers": [], "users": []}
            record["controllers"] = sorted({*record["controllers"], *missing})
            if pod_id not in record["users"]:
                record["users"].append(pod_id)
            # Recorded first: a crash after the mkdir must not leave a
            # directory nobody knows podvisor made.
            owned.save(path, record)
            for controller in missing:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(_dir(controller, path))


def release(parent: str, pod_id: str, owned: Owned, deadline: float) -> list[str]:
    """Leave every directory of ``parent``; remove those ``pod_id`` was the
    last to use. Return the directories that could not go (still busy)."""
    left: list[str] = []
    paths = chain(parent)
    for path in reversed(paths):
        with owned.locked(path, deadline):
            record = owned.load(path)
            if record is None:
                continue
            # The pod's own directory goes with what runc left below it;
            # an ancestor only ever goes alone (others' pods may be below).
            left += _leave(owned, record, lambda user: user != pod_id,
                           subtree=path == paths[-1])
    return left


def reconcile(owned: Owned, live: Mapping[str, str], deadline: float) -> list[str]:
    """Make the directories podvisor made match the pods that live.

    ``live`` maps every pod on record to its cgroup_parent. A directory
    leaves users that are not pods any more and goes when none is left;
    below a directory podvisor made, one on no live pod's path is a pod
    cgroup whose pod is gone and goes too (with what runc left in it), as
    long as no process lives there. Returns the directories removed.
    """
    leaves = {chain(p)[-1] for p in live.values() if chain(p)}
    on_path = {c for p in leaves for c in chain(p)}
    removed: list[str] = []
    for path in owned.paths():  # deepest first: a child goes before its parent
        with owned.locked(path, deadline):
            record = owned.load(path)
            if record is None:
                continue
            if path not in leaves:
                removed += _orphans(owned, record, on_path)
            before = [_dir(c, path) for c in record["controllers"]]
            _leave(owned, record, lambda user: user in live, subtree=False)
            removed += [d for d in before if not os.path.isdir(d)]
    return removed


def _leave(owned: Owned, record: dict[str, Any], stays: Callable[[str], bool], *,
           subtree: bool) -> list[str]:
    """Drop the users ``stays`` refuses; remove the directory once none is
    left. Return the directories still there; the caller holds the lock."""
    path = str(record["path"])
    users = [u for u in record["users"] if stays(u)]
    if users:
        if users != record["users"]:
            owned.save(path, {**record, "users": users})
        return []
    left = []
    for controller in record["controllers"]:
        target = _dir(controller, path)
        if _rmtree(target) if subtree else _rmdir(target):
            left.append(target)
    if left:
        # Busy (a process, or someone else's cgroup below): kept for the
        # next pod to leave it, or the next reconcile, to try again.
        log.warning("Cgroup %s is still in use in %s", path, ", ".join(left))
        owned.save(path, {**record, "users": [],
                          "controllers": [c for c in record["controllers"]
                                          if _dir(c, path) in left]})
    else:
        owned.delete(path)
    return left


def _orphans(owned: Owned, record: dict[str, Any], on_path: set[str]) -> list[str]:
    """Remove the directories below the recorded one that no live pod's path
    goes through and that are no podvisor-made directory of their own.

    Only in the controllers podvisor made it in: where the directory was
    there before, what is below it is the kubelet's (a QoS or pod cgroup).
    """
    path = str(record["path"])
    removed = []
    for controller in record["controllers"]:
        base = _dir(controller, path)
        try:
            children = [e.name for e in os.scandir(base) if e.is_dir(follow_symlinks=False)]
        except (FileNotFoundError, NotADirectoryError):
            continue
        for name in children:
            child = f"{path.rstrip('/')}/{name}"
            if child in on_path or owned.load(child) is not None:
                continue
            target = os.path.join(base, name)
            if not _rmtree(target):
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
        if made is not None and os.path.isdir(_dir(*made)):
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
    """(controller, cgroup path) of one ledger entry, or None if it names
    no cgroup below a controller's root."""
    if not isinstance(entry, str) or not entry.startswith(f"{CGROUP_ROOT}/"):
        return None
    parts = entry[len(CGROUP_ROOT) + 1:].split("/")
    if len(parts) < 2 or any(p in ("", ".", "..") for p in parts):
        return None
    return parts[0], "/" + "/".join(parts[1:])


def _rmdir(path: str) -> list[str]:
    """rmdir one cgroup; the list of what is left (it, when busy)."""
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return []
    except OSError:
        return [path]
    return []


def _rmtree(path: str) -> list[str]:
    """rmdir a cgroup and every one below it, deepest first; what is left."""
    left = []
    for dirpath, _dirs, _files in os.walk(path, topdown=False):
        left += _rmdir(dirpath)
    return left


# A container's or infra's own cgroup below the pod's: runc names it
# ``<prefix>-<id>`` (cgroupfs) or ``<prefix>-<id>.scope`` (systemd).
_OBJECT_CGROUP = re.compile(r"(?:.*-)?([0-9a-f]{64})(?:\.scope)?")


def processes(parent: str) -> list[tuple[int, str | None]]:
    """Every process in the pod's cgroups, with the id of the object it
    belongs to: the container (or infra) whose cgroup it is in, or whose
    monitor it is; None when neither tells."""
    if not chain(parent):
        return []  # the root holds every process of the node: never a pod's
    base = _dir("pids", parent)
    found: list[tuple[int, str | None]] = []
    for dirpath, _dirs, files in os.walk(base):
        if "cgroup.procs" not in files:
            continue
        below = os.path.relpath(dirpath, base).split(os.sep)[0]
        match = _OBJECT_CGROUP.fullmatch(below) if below != "." else None
        with contextlib.suppress(OSError), open(os.path.join(dirpath, "cgroup.procs")) as f:
            for line in f:
                with contextlib.suppress(ValueError):
                    pid = int(line)
                    # Outside an object's cgroup, a process of podvisor's
                    # is a monitor (move() puts them in the pod's cgroup).
                    found.append((pid, match[1] if match else monitor.monitored_id(pid)))
    return found


def drain(parent: str, deadline: float, ours: Callable[[str | None], bool],
          grace: float = 1.0) -> bool:
    """Wait for the processes of the pod's cgroups that are ``ours`` (by the
    object they belong to) to go: monitors exiting after their containers;
    SIGKILL what is left of them after ``grace``. True once none is left.

    Only ``ours``: the kubelet gives every sandbox of one pod the same
    parent, and removing an old sandbox must not touch the new one.
    """
    started = time.monotonic()
    while left := [pid for pid, owner in processes(parent) if ours(owner)]:
        now = time.monotonic()
        if now >= deadline:
            return False
        if now - started >= grace:
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)
    return True


def move(pid: int, parent: str) -> None:
    """Put ``pid`` (a conmon) into the pod's cgroup in every controller, so it
    leaves the daemon's cgroup: stopping the daemon's unit must never reach a
    container's monitor (CRI-O's conmon_cgroup = "pod")."""
    for controller in controllers():
        procs = os.path.join(CGROUP_ROOT, controller, parent.lstrip("/"), "cgroup.procs")
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, OSError), \
                open(procs, "w") as f:
            f.write(str(pid))
