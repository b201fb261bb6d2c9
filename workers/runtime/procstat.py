"""What the processes of a cgroup hold: threads, open files, sockets.

Read from /proc for each process the cgroup (and its children) lists. It
costs a directory listing per process, so only the metrics RPCs ask for
it, not the stats the kubelet polls. A process that exits while it is
read is skipped: the figures are a snapshot.
"""

from __future__ import annotations

import contextlib
import os

from ...proto.stats import ProcessSample
from .cgroup import tree
from .cgroup.hierarchy import Hierarchy


def sample(h: Hierarchy, path: str) -> ProcessSample:
    processes = threads = descriptors = sockets = 0
    for _where, pid in tree.pids(h, path):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            threads += _threads(pid)
            fd_dir = f"/proc/{pid}/fd"
            names = os.listdir(fd_dir)
            processes += 1
            descriptors += len(names)
            sockets += sum(1 for name in names if _is_socket(fd_dir, name))
    return ProcessSample(processes=processes, threads=threads, file_descriptors=descriptors,
                         sockets=sockets)


def _threads(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 1


def _is_socket(fd_dir: str, name: str) -> bool:
    try:
        return os.readlink(os.path.join(fd_dir, name)).startswith("socket:")
    except OSError:
        return False  # closed meanwhile
