"""Can this node run pods with their own user namespace (mode POD)?

Two things must hold, and neither depends on the OCI runtime handler (runc
and crun both join a pinned user namespace given its path and maps):

- the filesystem under podvisor's root takes idmapped mounts, since the
  storage pool idmaps a rootfs's layers there (workers/userns.py);
- every directory above podvisor's root and runroot lets the mapped ids
  through (o+x): runc mounts the rootfs and the pod's files from inside the
  pod's user namespace, where host root's dirs are "other". podvisor opens
  up its own dirs below root and runroot (``open_up``), never one above.

A success is kept for the worker's life. A failed idmap probe (it execs a
helper) is kept ``RETRY_AFTER`` seconds, since the kubelet asks Status every
few seconds; the cheap dir check runs on every ask (an admin may fix the
mode of a dir meanwhile).
"""

from __future__ import annotations

import os
import stat
import threading
import time

from .. import userns
from .layout import Layout

RETRY_AFTER = 60.0

_ok: set[tuple[str, str]] = set()
# key -> (when the idmap probe failed, monotonic; why)
_failed: dict[tuple[str, str], tuple[float, str]] = {}
_lock = threading.Lock()


def problem(layout: Layout) -> str | None:
    """Why pods cannot have their own user namespace here; None if they can."""
    key = (layout.daemon_root, layout.daemon_runroot)
    with _lock:
        if key in _ok:
            return None
    for top in key:
        closed = _closed_ancestor(top)
        if closed:
            return (f"{closed} (above podvisor's {top}) is not searchable by other users "
                    "(o+x), which the ids of a pod's user namespace are")
    with _lock:
        failed = _failed.get(key)
    if failed is not None and time.monotonic() - failed[0] < RETRY_AFTER:
        return failed[1]
    os.makedirs(layout.daemon_root, exist_ok=True)
    why = userns.probe(layout.daemon_root)
    with _lock:
        if why is not None:
            reason = f"no idmapped mounts under {layout.daemon_root}: {why}"
            _failed[key] = (time.monotonic(), reason)
            return reason
        _failed.pop(key, None)
        _ok.add(key)
    return None


def _closed_ancestor(path: str) -> str | None:
    parent = os.path.dirname(os.path.abspath(path))
    while True:
        try:
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                return parent
        except FileNotFoundError:
            return parent
        if parent == "/":
            return None
        parent = os.path.dirname(parent)


def open_up(path: str, top: str) -> None:
    """Add o+x to ``path`` and each dir above it up to ``top`` inclusive
    (podvisor's root or runroot), so the mapped ids can reach ``path``.
    Search only: no listing, no reading."""
    path, top = os.path.abspath(path), os.path.abspath(top)
    if path != top and not path.startswith(top + "/"):
        raise ValueError(f"{path} is not under {top}")
    while True:
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode) and not mode & stat.S_IXOTH:
            os.chmod(path, stat.S_IMODE(mode) | stat.S_IXOTH)
        if path == top:
            return
        path = os.path.dirname(path)
