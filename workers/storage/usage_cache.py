"""The cache of the writable layers' usage: one small entry per container.

An entry is ``<runroot>/storage/usage/<id>.json``, a ``LayerUsage``
(proto/stats.py: used_bytes, inodes_used, timestamp_ns) as the measurer
(layer_usage.py) last found the container's upper dir. Readers are the
``storage.layer_usage`` op and ImageFsInfo, which never walk an upper dir.

Invariants
    - An entry is replaced by temp + rename, so a reader sees a whole entry,
      old or new, never half of one. It is volatile (the runroot is) and
      rebuilt by measuring, so nothing is fsynced, and an entry that cannot
      be read counts as none: answered as zeros with timestamp 0 and
      measured again.
    - Every write and removal of an entry happens under its container's
      lock (rootfs.py): create_rootfs writes the first one, rootfs removal
      drops it, and the measurer writes only while the upper dir it walked
      is still there, so a removed rootfs never gets its entry back.
    - Temp files are ``.tmp-<id>-<rand>``: ids never start with a dot, so a
      temp never passes for an entry; a crash may leave one, which
      reconcile removes under the same lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time

from ...proto.contract import from_wire, to_wire
from ...proto.errors import InvalidArgument
from ...proto.stats import LayerUsage
from ..records import RecordCorrupt, read_json
from .layout import TMP_PREFIX, Layout

# What a rootfs answers before its first measure (after a reboot emptied
# the runroot, say): unknown, not "empty", hence timestamp 0.
UNMEASURED = LayerUsage(used_bytes=0, inodes_used=0, timestamp_ns=0)


def read(layout: Layout, container_id: str) -> LayerUsage | None:
    """The container's entry; None if it has none or it cannot be read."""
    path = layout.usage_entry(container_id)
    try:
        raw = read_json(path)
        return None if raw is None else from_wire(raw, LayerUsage, path)
    except (RecordCorrupt, InvalidArgument):
        return None


def write(layout: Layout, container_id: str, usage: LayerUsage) -> None:
    """Replace the container's entry (its lock held)."""
    os.makedirs(layout.usage_dir, mode=0o700, exist_ok=True)
    tmp = os.path.join(layout.usage_dir,
                       f"{TMP_PREFIX}{container_id}-{secrets.token_hex(4)}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with open(fd, "w", encoding="ascii") as f:
            json.dump(to_wire(usage, LayerUsage), f)
        os.rename(tmp, layout.usage_entry(container_id))
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_first(layout: Layout, container_id: str) -> None:
    """The entry of a just created rootfs (its lock held): an empty upper
    dir, so a new container has a figure before its first measure."""
    top = os.lstat(layout.upper_dir(container_id))
    write(layout, container_id, LayerUsage(used_bytes=top.st_blocks * 512, inodes_used=1,
                                           timestamp_ns=time.time_ns()))


def remove(layout: Layout, container_id: str) -> bool:
    """Drop the container's entry (its lock held); whether there was one."""
    try:
        os.unlink(layout.usage_entry(container_id))
    except FileNotFoundError:
        return False
    return True
