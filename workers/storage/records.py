"""The two small JSON records of the storage pool.

    layer.json   (in <layers>/<chain hex>/)   {chain_id, diff_id, parent, digest,
                 media_type, size, usage: {bytes, inodes}, link, created}
    rootfs.json  (in <containers>/<id>/)      {container_id, layers, mount_label,
                 created}

Each is written into its object's temp directory before that directory is
renamed into place (layout.py), so a record exists exactly when its object
is complete, and is never rewritten afterwards. A record that cannot be read
is reported as an Internal error naming the file: it means someone edited
the store by hand, and guessing would hide that.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ...proto.errors import Internal
from ..records import RecordCorrupt, read_json
from .layout import Layout

LAYER_RECORD = "layer.json"
ROOTFS_RECORD = "rootfs.json"


def write(path: str, record: dict[str, Any]) -> None:
    """Write ``record`` durably (the enclosing temp dir is renamed later)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with open(fd, "w", encoding="utf-8") as f:
        json.dump(record, f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def read(path: str) -> dict[str, Any] | None:
    """The record at ``path``; None if absent."""
    try:
        return read_json(path)
    except RecordCorrupt as exc:
        raise Internal(f"storage record {exc.path} is unreadable ({exc.reason}); move the "
                       "directory that holds it aside to let podvisor recreate it") from exc


def layer(layout: Layout, chain_hex: str) -> dict[str, Any] | None:
    return read(os.path.join(layout.layer_dir(chain_hex), LAYER_RECORD))


def rootfs(layout: Layout, container_id: str) -> dict[str, Any] | None:
    return read(os.path.join(layout.container_dir(container_id), ROOTFS_RECORD))


def container_ids(layout: Layout) -> list[str]:
    """Every container with a complete rootfs record (temp dirs excluded)."""
    try:
        names = os.listdir(layout.containers_dir)
    except FileNotFoundError:
        return []
    # Temp and removal dirs start with a dot; ids never do (layout.py).
    return sorted(n for n in names if not n.startswith("."))


def containers_using(layout: Layout, chain_id: str) -> list[str]:
    """The containers whose rootfs stacks layer ``chain_id``."""
    users = []
    for cid in container_ids(layout):
        record = rootfs(layout, cid)
        if record is not None and chain_id in record.get("layers", ()):
            users.append(cid)
    return users
