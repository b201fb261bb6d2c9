"""Pod cgroups under the kubelet's cgroup_parent.

With the cgroupfs driver the kubelet normally creates the pod cgroup
(``/kubepods/<qos>/pod<uid>``) itself; a client that does not (crictl, the
tests) still gets one: the directories missing in each controller are made
here, remembered in a node-wide ledger, and removed once empty by the last
pod that used them, so nothing is left behind and nothing the kubelet made
is ever removed. runc creates and deletes the per-container
cgroups below. The systemd driver needs a running systemd; where there is
none, a pod asking for it fails with a clear error.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator

from ...proto.errors import FailedPrecondition, InvalidArgument, shorten
from ...proto.limits import check_path
from ..records import write_atomic

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
    return cgroup_parent.rstrip("/")


def ensure(parent: str, ledger: str) -> list[str]:
    """Create the missing directories of ``parent`` in every controller.

    Every directory made is added to ``ledger`` (a JSON list shared by all
    pods), so an ancestor made for one pod and still used by another is
    removed by whichever pod goes last (``prune``).
    """
    created = []
    parts = [p for p in parent.split("/") if p]
    with _ledger(ledger) as made:
        for controller in controllers():
            path = os.path.join(CGROUP_ROOT, controller)
            for part in parts:
                path = os.path.join(path, part)
                try:
                    os.mkdir(path)
                except FileExistsError:
                    continue
                created.append(path)
                made.append(path)
    return created


def prune(ledger: str) -> list[str]:
    """rmdir every ledger directory that is now empty, deepest first; return
    the ones still in use."""
    with _ledger(ledger) as made:
        left = []
        for path in sorted(set(made), key=lambda p: p.count("/"), reverse=True):
            try:
                os.rmdir(path)
            except FileNotFoundError:
                continue
            except OSError:
                left.append(path)
        made[:] = left
    return left


@contextlib.contextmanager
def _ledger(path: str) -> Iterator[list[str]]:
    """The ledger's list, read and written back under an exclusive flock."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with open(path, encoding="utf-8") as f:
                made: list[str] = json.load(f)
        except (FileNotFoundError, ValueError):
            made = []
        yield made
        write_atomic(path, json.dumps(sorted(set(made))).encode())


def _procs_files(parent: str) -> Iterator[str]:
    base = os.path.join(CGROUP_ROOT, "pids", parent.lstrip("/"))
    for dirpath, _dirs, files in os.walk(base):
        if "cgroup.procs" in files:
            yield os.path.join(dirpath, "cgroup.procs")


def busy(parent: str) -> bool:
    """Does any process still live in the pod's cgroups?"""
    for procs in _procs_files(parent):
        with contextlib.suppress(OSError), open(procs) as f:
            if f.read().strip():
                return True
    return False


def kill_all(parent: str) -> None:
    """SIGKILL every process left in the pod's cgroups (a last resort)."""
    for procs in _procs_files(parent):
        with contextlib.suppress(OSError), open(procs) as f:
            for line in f:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(line), 9)


def drain(parent: str, deadline: float, grace: float = 1.0) -> bool:
    """Wait for the pod's cgroups to empty (monitors exiting after their
    containers), SIGKILLing what is left after ``grace``; True once empty."""
    started = time.monotonic()
    while busy(parent):
        now = time.monotonic()
        if now >= deadline:
            return False
        if now - started >= grace:
            kill_all(parent)
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
