"""The directories of one cgroup path, on whichever hierarchy the host has.

A cgroup path (``/kubepods/burstable/pod1``) is one directory on v2 and one
per mount on v1 and hybrid (``Hierarchy.dirs``). Everything here takes the
hierarchy explicitly so tests can point it at a layout of their own.

On v2, two kernel rules shape the callers:

- a controller reaches a cgroup only when every ancestor lists it in
  ``cgroup.subtree_control`` (``enable``);
- a cgroup other than the root cannot both hold processes and hand
  controllers down, so a process placed next to containers (conmon) gets a
  leaf cgroup of its own instead of the pod's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Iterable, Iterator

from .hierarchy import Hierarchy, join

# What a pod's containers may be limited by; enabled down the pod's path on
# v2 when the parent offers them. ``cpuset`` and ``hugetlb`` come too: the
# kubelet and runc set them from the container's resources.
log = logging.getLogger(__name__)

POD_CONTROLLERS = ("cpu", "cpuset", "hugetlb", "io", "memory", "pids", "rdma", "misc")


def ancestors(path: str) -> list[str]:
    """``/a/b/c`` -> ``/a``, ``/a/b``, ``/a/b/c``."""
    parts = [p for p in path.split("/") if p]
    return ["/" + "/".join(parts[:i]) for i in range(1, len(parts) + 1)]


def enable(h: Hierarchy, path: str, wanted: Iterable[str] = POD_CONTROLLERS) -> None:
    """On v2, hand ``wanted`` controllers down from the root to ``path``'s
    children, as far as each level has them. A no-op on v1 and hybrid."""
    if not h.is_v2:
        return
    wanted = tuple(wanted)
    for level in ["/", *ancestors(path)]:
        directory = join(h.root, level)
        offered = _words(os.path.join(directory, "cgroup.controllers"))
        enabled = _words(os.path.join(directory, "cgroup.subtree_control"))
        for name in wanted:
            if name in offered and name not in enabled:
                # One write per controller: a failing one (a process sits
                # in a non-root level) must not keep the others out.
                with contextlib.suppress(OSError), \
                        open(os.path.join(directory, "cgroup.subtree_control"), "w") as f:
                    f.write(f"+{name}")


def pids(h: Hierarchy, path: str) -> Iterator[tuple[str, int]]:
    """Every process in ``path`` and below, with the cgroup path it is in."""
    base = h.procs_dir(path)
    for dirpath, _dirs, files in os.walk(base):
        if "cgroup.procs" not in files:
            continue
        below = os.path.relpath(dirpath, base)
        where = path if below == "." else f"{path.rstrip('/')}/{below}"
        with contextlib.suppress(OSError), \
                open(os.path.join(dirpath, "cgroup.procs"), encoding="ascii") as f:
            for line in f:
                with contextlib.suppress(ValueError):
                    yield where, int(line)


def populated(h: Hierarchy, path: str) -> bool:
    """Is any process left in ``path`` or below? v2 answers from
    ``cgroup.events``; v1 walks the tree."""
    if h.is_v2:
        try:
            with open(os.path.join(join(h.root, path), "cgroup.events"), encoding="ascii") as f:
                return any(line.split() == ["populated", "1"] for line in f)
        except FileNotFoundError:
            return False
    return any(True for _ in pids(h, path))


def kill(h: Hierarchy, path: str) -> None:
    """SIGKILL everything in ``path`` and below: with ``cgroup.kill`` where
    the kernel has it (5.14+; no process can escape by forking), else one
    process at a time."""
    if h.is_v2:
        try:
            with open(os.path.join(join(h.root, path), "cgroup.kill"), "w") as f:
                f.write("1")
            return
        except FileNotFoundError:
            if not os.path.isdir(join(h.root, path)):
                return
        except OSError:
            pass
    for _where, pid in list(pids(h, path)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def move(h: Hierarchy, pid: int, path: str) -> None:
    """Put ``pid`` into ``path`` in every mount, making what is missing.
    A process that is already gone is no error; a mount that refuses it
    (a v1 hierarchy podvisor does not manage) keeps it where it was."""
    for directory in h.dirs(path):
        try:
            make(directory)
            with open(os.path.join(directory, "cgroup.procs"), "w") as f:
                f.write(str(pid))
        except ProcessLookupError:
            return
        except OSError as exc:
            log.warning("Cannot move process %d into %s: %s", pid, directory, exc.strerror)


def make(directory: str) -> None:
    """mkdir a cgroup directory and its missing parents.

    A new v1 cpuset cgroup starts with no CPUs and no memory nodes, and no
    process can join it (ENOSPC) until they are set: each new level takes
    its parent's, as runc does for the cgroups it makes.
    """
    parent = os.path.dirname(directory)
    if not os.path.isdir(parent):
        make(parent)
    try:
        os.mkdir(directory)
    except FileExistsError:
        return
    if os.path.exists(os.path.join(directory, "cpuset.cpu_exclusive")):  # v1 only
        for name in ("cpuset.cpus", "cpuset.mems"):
            with open(os.path.join(parent, name), encoding="ascii") as f:
                value = f.read().strip()
            with open(os.path.join(directory, name), "w", encoding="ascii") as f:
                f.write(value)


def rmdir(directory: str) -> list[str]:
    """rmdir one cgroup directory; what is left (it, when busy)."""
    try:
        os.rmdir(directory)
    except FileNotFoundError:
        return []
    except OSError:
        return [directory]
    return []


def rmtree(directory: str) -> list[str]:
    """rmdir a cgroup directory and every one below it, deepest first."""
    left = []
    for dirpath, _dirs, _files in os.walk(directory, topdown=False):
        left += rmdir(dirpath)
    return left


def remove(h: Hierarchy, path: str) -> list[str]:
    """Remove ``path`` and what is below it in every mount; what is left."""
    return [d for directory in h.dirs(path) for d in rmtree(directory)]


def _words(file: str) -> set[str]:
    try:
        with open(file, encoding="ascii") as f:
            return set(f.read().split())
    except OSError:
        return set()
