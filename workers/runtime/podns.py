"""Pod namespaces that outlive every process: IPC and UTS pinned by bind
mounts (what CRI-O's pinns does), so a pod needs no infra process unless
its containers share a PID namespace.

util-linux ``unshare --ipc=FILE --uts=FILE hostname NAME`` creates both
namespaces, bind-mounts them onto the files and sets the pod's hostname
inside the new UTS namespace, in one exec. Unpinning is a lazy unmount of
each file; the kernel frees a namespace when its last pin or member goes.

A pod with its own user namespace (mode POD) has it pinned first, at
``<pod dir>/ns/user`` (``pin_userns``, at reserve, before the net pool makes
the network namespace inside it); its IPC and UTS namespaces are then made
inside it (workers/userns.py says why), and it is unpinned last.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Mapping
from typing import Any

from ...proto.contract import from_wire, to_wire
from ...proto.errors import Internal
from ...proto.idmap import IdMap
from .. import userns
from . import mounts

UNSHARE_TIMEOUT = 10.0


USERNS = "user"


def userns_path(ns_dir: str) -> str:
    return os.path.join(ns_dir, USERNS)


def pin_userns(ns_dir: str, idmap: IdMap) -> str:
    """Create and pin the pod's user namespace unless it is pinned; its path."""
    # 0711: runc, once inside the pod's user namespace, opens nothing here,
    # but the pod's other files sit beside this dir (podfiles.py).
    os.makedirs(ns_dir, mode=0o711, exist_ok=True)
    path = userns_path(ns_dir)
    if not _pinned(path):
        try:
            userns.pin(path, idmap.uids, idmap.gids)
        except userns.UsernsError as exc:
            raise Internal(f"cannot create the pod's user namespace: {exc}") from exc
    return path


def _pinned(path: str) -> bool:
    # nsfs has one superblock: a pinned namespace has its st_dev.
    try:
        return os.stat(path).st_dev == os.stat("/proc/self/ns/user").st_dev
    except FileNotFoundError:
        return False


def idmap_record(idmap: IdMap) -> dict[str, Any]:
    """The maps as a sandbox record keeps them."""
    return to_wire(idmap, IdMap)


def idmap_of(record: Mapping[str, Any]) -> IdMap | None:
    """The pod's user namespace maps from its record; None: the node's."""
    saved = record.get("idmap")
    return None if saved is None else from_wire(saved, IdMap, "sandbox record idmap")


def pin(ns_dir: str, hostname: str, *, ipc: bool, uts: bool,
        in_userns: str | None = None) -> dict[str, str]:
    """Create the requested namespaces, inside the pinned user namespace
    ``in_userns`` when given; return {"ipc": path, "uts": path}."""
    wanted = [kind for kind, on in (("ipc", ipc), ("uts", uts)) if on]
    if not wanted:
        return {}
    os.makedirs(ns_dir, mode=0o711, exist_ok=True)
    paths = {kind: os.path.join(ns_dir, kind) for kind in wanted}
    if in_userns:
        try:
            userns.pin_inside(in_userns, paths, 'hostname "$1" && ' if uts else "",
                              [hostname])
        except userns.UsernsError as exc:
            # pin_inside released its own pins; the user namespace stays
            # pinned for the pod's removal to release.
            raise Internal(f"cannot create pod namespaces: {exc}") from exc
        return paths
    argv = ["unshare"]
    for kind, path in paths.items():
        with open(path, "a"):
            pass  # a bind mount needs an existing target
        argv.append(f"--{kind}={path}")
    # In a new UTS namespace set the pod's hostname; otherwise just exit.
    argv += ["hostname", hostname] if uts else ["true"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=UNSHARE_TIMEOUT,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        unpin(ns_dir)
        raise Internal(f"cannot create pod namespaces: {exc}") from exc
    if done.returncode != 0:
        unpin(ns_dir)
        raise Internal(f"cannot create pod namespaces: {done.stderr.strip()[:300]}")
    return paths


def unpin(ns_dir: str) -> None:
    """Release every pinned namespace under ``ns_dir`` (idempotent)."""
    # The user namespace last: nothing else may outlive it pinned.
    for kind in ("ipc", "uts", USERNS):
        path = os.path.join(ns_dir, kind)
        if os.path.exists(path):
            mounts.unmount(path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    with contextlib.suppress(FileNotFoundError, OSError):
        os.rmdir(ns_dir)
