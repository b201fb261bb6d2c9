"""Pod namespaces that outlive every process: IPC and UTS pinned by bind
mounts (what CRI-O's pinns does), so a pod needs no infra process unless
its containers share a PID namespace.

As the net pool makes a network namespace (workers/net/netns.py), a
short-lived thread calls ``unshare(CLONE_NEWIPC | CLONE_NEWUTS)``, which
moves only that thread, sets the pod's hostname in its new UTS namespace,
bind-mounts ``/proc/thread-self/ns/{ipc,uts}`` onto the files, and exits:
no exec (this was util-linux ``unshare --ipc=FILE --uts=FILE hostname
NAME``, two execs per pod), and no thread of the pool is ever moved.
Unpinning is a lazy unmount of each file; the kernel frees a namespace when
its last pin or member goes.

A pod with its own user namespace (mode POD) has it pinned first, at
``<pod dir>/ns/user`` (``pin_userns``, at reserve, before the net pool makes
the network namespace inside it); its IPC and UTS namespaces are then made
inside it by a helper process (workers/userns.py says why: a thread of a
threaded process cannot enter a user namespace), and it is unpinned last.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Mapping
from typing import Any

from ...proto.contract import from_wire, to_wire
from ...proto.errors import Internal
from ...proto.idmap import IdMap
from .. import mounts, nsthread, userns

_FLAGS = {"ipc": nsthread.CLONE_NEWIPC, "uts": nsthread.CLONE_NEWUTS}


USERNS = "user"


def userns_path(ns_dir: str) -> str:
    return os.path.join(ns_dir, USERNS)


def pin_userns(ns_dir: str, idmap: IdMap) -> str:
    """Create and pin the pod's user namespace unless it is pinned; its path."""
    # 0711: runc, once inside the pod's user namespace, opens nothing here,
    # but the pod's other files sit beside this dir (podfiles.py).
    os.makedirs(ns_dir, mode=0o711, exist_ok=True)
    path = userns_path(ns_dir)
    if not nsthread.is_pinned(path):
        try:
            userns.pin(path, idmap.uids, idmap.gids)
        except userns.UsernsError as exc:
            raise Internal(f"cannot create the pod's user namespace: {exc}") from exc
    return path


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
    for path in paths.values():
        with open(path, "a"):
            pass  # a bind mount needs an existing target
    flags = 0
    for kind in paths:
        flags |= _FLAGS[kind]
    try:
        nsthread.run_unshared(flags, lambda: _inside(paths, hostname), "podns-pin")
    except OSError as exc:
        unpin(ns_dir)
        raise Internal(f"cannot create pod namespaces: {exc}") from exc
    return paths


def _inside(paths: dict[str, str], hostname: str) -> None:
    if "uts" in paths:
        socket.sethostname(hostname)  # this thread's new UTS namespace
    for kind, path in paths.items():
        nsthread.pin(kind, path)


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
