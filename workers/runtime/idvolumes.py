"""The volumes (CRI host-path mounts) of a container in a pod with its own
user namespace, as idmapped mounts.

Each host path is cloned, recursively, as an idmapped mount seen through
the pod's pinned user namespace, attached at ``<idmap dir>/<n>`` (n: the
mount's index in the spec), and the spec's bind takes that as its source;
a bind of an idmapped mount keeps its map. So a file the host owns as uid
``u`` (say the kubelet's root-owned config maps) reads as uid ``u`` inside
the container, as KEP-127 has it, instead of as the overflow id.

Why podvisor makes them and the spec has no ``idmap`` mount option: runc
1.1 (Debian 12's) does not know that option (``runc features`` lists no
``idmap``), and crun 1.8 has no ``features`` to ask; one way for both.

Invariants
    - Everything attached for a container is under its idmap dir, never
      under its bundle, whose removal deletes a tree: ``release`` unmounts
      each entry before it unlinks it, and only then removes the dir, each
      step non-recursive, so a host path can never be deleted through it.
    - The clones are private mounts: propagation from the host (rslave,
      rshared) does not reach through them.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
from typing import Any

from ...proto import api_pb2 as api
from ...proto.errors import FailedPrecondition, shorten
from .. import userns
from .layout import Layout
from .usernsprobe import open_up


def attach(layout: Layout, container_id: str, config: api.ContainerConfig,
           document: dict[str, Any], userns_path: str) -> None:
    """Point each CRI host-path bind of ``document`` at an idmapped clone."""
    wanted = {posixpath.normpath("/" + m.container_path.lstrip("/"))
              for m in config.mounts if not m.image.image}
    if not wanted:
        return
    target_dir = layout.idmap_dir(container_id)
    os.makedirs(target_dir, mode=0o711, exist_ok=True)
    open_up(target_dir, layout.daemon_runroot)
    fd = os.open(userns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        for index, mount in enumerate(document["mounts"]):
            if mount.get("type") != "bind" or mount["destination"] not in wanted:
                continue
            source = str(mount["source"])
            target = os.path.join(target_dir, str(index))
            if not os.path.lexists(target):
                if os.path.isdir(source):
                    os.mkdir(target, 0o755)
                else:
                    with open(target, "a"):
                        pass
            # A retried create finds its clone there already.
            if not os.path.ismount(target):
                try:
                    userns.idmapped_clone(source, target, fd)
                except userns.UsernsError as exc:
                    raise FailedPrecondition(
                        f"mount: {shorten(source)} cannot be an idmapped mount for the pod's "
                        f"user namespace: {shorten(exc.strerror, 200)}") from exc
            mount["source"] = target
    finally:
        os.close(fd)


def release(layout: Layout, container_id: str) -> None:
    """Unmount and drop every idmapped mount of ``container_id`` (idempotent)."""
    target_dir = layout.idmap_dir(container_id)
    try:
        entries = os.listdir(target_dir)
    except FileNotFoundError:
        return
    for name in entries:
        path = os.path.join(target_dir, name)
        while userns.unmount(path):
            pass  # a retried attach may have stacked one
        with contextlib.suppress(FileNotFoundError):
            if os.path.isdir(path):
                os.rmdir(path)
            else:
                os.unlink(path)
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(target_dir)
