"""Container root filesystems: image layers under a writable upper dir.

Ordering (why a crash at any instant leaves nothing unaccounted for)
    create: lock(container) -> record there? mount if needed, return it
            -> lock(layers, shared) -> every layer present?
            -> .tmp-<id>-<rand>/{upper,work,rootfs.json} -> rename to <id>
            -> unlock layers -> first usage entry -> mount
    remove: lock(container) -> unmount -> rename to .rm-<id>-<rand>
            -> delete -> drop the usage entry, the mount point and the lock file
    A lock file lives as long as its object: a create that ends with no
    record (it failed) unlinks it too.
    The record is in place before the mount and outlives the unmount, so no
    overlay is ever mounted without a record naming its layers; a record
    without a mount (crash, reboot: mounts live in the volatile runroot) is
    mounted again by the next create of that container, or removed by
    remove_rootfs or reconcile.
    Once the record names a layer, remove_layer refuses it, so the layer
    locks are needed only until the rename.
    The usage entry (usage_cache.py) is written and dropped under the
    container's lock like the rest; one a crash leaves without its rootfs
    is removed by reconcile.

Idempotence
    A second create of the same container with the same layers returns the
    same mount (the kubelet retries CreateContainer, and CRI-O answers such
    retries with the container it made); with other layers it is
    AlreadyExists. Removing an absent rootfs succeeds (CRI: RemoveContainer
    of an absent container must not fail).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import secrets
import shutil
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

from ...proto.contract import from_wire, to_wire
from ...proto.errors import AlreadyExists, FailedPrecondition, NotFound
from ...proto.idmap import IdMap
from ...proto.storage_ops import IMAGE_VOLUME_INFIX, CreatedRootfs, RemovedRootfs
from .. import locks, userns
from ..userns import map_id
from . import layers, overlay, records, usage_cache
from .layout import LOCK_HOLDER, RM_PREFIX, TMP_PREFIX, Layout

log = logging.getLogger(__name__)


def lock_name(container_id: str) -> str:
    return f"container-{container_id}"


def _describe(layout: Layout, record: dict[str, Any], created: bool) -> CreatedRootfs:
    cid = str(record["container_id"])
    label = record.get("mount_label")
    return CreatedRootfs(container_id=cid, path=layout.mount_point(cid),
                         upper_dir=os.path.join(layout.container_dir(cid), "upper"),
                         layers=[str(c) for c in record["layers"]],
                         mount_label=None if label is None else str(label), created=created)


def _locked(layout: Layout, container_id: str,
            deadline: float) -> AbstractContextManager[locks.ObjectLock]:
    return locks.locked(layout.locks_dir, lock_name(container_id), deadline,
                        f"container {container_id}", holder=LOCK_HOLDER,
                        gone=lambda: records.rootfs(layout, container_id) is None)


def create(layout: Layout, container_id: str, chain_ids: Sequence[str],
           mount_label: str | None, deadline: float,
           idmap: IdMap | None = None) -> CreatedRootfs:
    saved_idmap = None if idmap is None else to_wire(idmap, IdMap)
    with _locked(layout, container_id, deadline):
        record = records.rootfs(layout, container_id)
        if record is not None:
            if record.get("idmap") != saved_idmap:
                raise AlreadyExists(f"container {container_id} already has a rootfs with other "
                                    "user namespace id maps; remove it first")
            if list(record.get("layers", ())) != list(chain_ids):
                raise AlreadyExists(
                    f"container {container_id} already has a rootfs over other layers "
                    f"({len(record.get('layers', ()))} layers, top "
                    f"{(record.get('layers') or ['none'])[-1]}); remove it first")
            if _ensure_mounted(layout, record):
                log.info("Mounted rootfs of container %s again", container_id)
            return _describe(layout, record, created=False)
        # A mount left with no record (the record's removal was cut short).
        overlay.unmount(layout.mount_point(container_id))
        record = _make_container_dir(layout, container_id, chain_ids, mount_label, deadline,
                                     idmap)
        try:
            # The kubelet may ask for stats as soon as CreateContainer
            # answers, long before the first measure.
            usage_cache.write_first(layout, container_id)
            _ensure_mounted(layout, record)
        except BaseException:
            delete_held(layout, container_id)
            raise
    log.info("Created rootfs of container %s over %d layers", container_id, len(chain_ids))
    return _describe(layout, record, created=True)


def _make_container_dir(layout: Layout, container_id: str, chain_ids: Sequence[str],
                        mount_label: str | None, deadline: float,
                        idmap: IdMap | None) -> dict[str, Any]:
    # Shared layer locks in sorted order: an unpack or a removal of one of
    # them waits for the record to exist (then sees this user), and no two
    # rootfs creates ever wait for each other.
    held: list[locks.ObjectLock] = []
    gone: list[str] = []
    try:
        for chain_id in sorted(set(chain_ids)):
            held.append(locks.acquire(
                layout.locks_dir, layers.lock_name(chain_id.split(":", 1)[1]), deadline,
                f"layer {chain_id}", shared=True, holder=LOCK_HOLDER))
        missing = [c for c in chain_ids if not layers.present(layout, c.split(":", 1)[1])]
        if missing:
            gone.extend(c.split(":", 1)[1] for c in missing)
            raise NotFound(f"layer(s) {', '.join(missing)} of container {container_id} are "
                           "not unpacked; unpack them before creating the rootfs")
        os.makedirs(layout.containers_dir, mode=0o700, exist_ok=True)
        tmp = os.path.join(layout.containers_dir,
                           f"{TMP_PREFIX}{container_id}-{secrets.token_hex(4)}")
        record = {"container_id": container_id, "layers": list(chain_ids),
                  "mount_label": mount_label, "created": time.time_ns(),
                  "idmap": None if idmap is None else to_wire(idmap, IdMap)}
        try:
            os.mkdir(tmp, 0o700)
            _make_upper(layout, tmp, chain_ids, idmap)
            os.mkdir(os.path.join(tmp, "work"), 0o700)
            if not chain_ids:
                # overlayfs needs a lower dir: an image of no layers gets an empty one.
                os.mkdir(os.path.join(tmp, "empty"))
                os.chmod(os.path.join(tmp, "empty"), 0o755)
            records.write(os.path.join(tmp, records.ROOTFS_RECORD), record)
            os.rename(tmp, layout.container_dir(container_id))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return record
    finally:
        for lock in held:
            lock.release()
        # A shared holder may not unlink: the lock files of layers that
        # turned out absent go once nobody holds them.
        for chain_hex in gone:
            locks.discard(layout.locks_dir, layers.lock_name(chain_hex),
                          functools.partial(_absent, layout, chain_hex))


def _absent(layout: Layout, chain_hex: str) -> bool:
    return not layers.present(layout, chain_hex)


def _make_upper(layout: Layout, tmp: str, chain_ids: Sequence[str],
                idmap: IdMap | None) -> None:
    """The upper dir is the merged root: give it the top layer's root owner
    and mode, that owner as the idmapped layers show it when there are maps.
    The upper dir itself is never idmapped: overlayfs writes there with its
    mounter's (host root's) ids, which no pod map holds."""
    upper = os.path.join(tmp, "upper")
    os.mkdir(upper)
    os.chmod(upper, 0o755)  # whatever the umask
    uid = gid = 0
    if chain_ids:
        st = os.stat(layout.diff_dir(chain_ids[-1].split(":", 1)[1]))
        uid, gid = st.st_uid, st.st_gid
        os.chmod(upper, st.st_mode & 0o7777)
    if idmap is not None:
        mapped_uid, mapped_gid = map_id(uid, idmap.uids), map_id(gid, idmap.gids)
        # An owner the map does not hold shows as the overflow id; keep it so.
        uid = uid if mapped_uid is None else mapped_uid
        gid = gid if mapped_gid is None else mapped_gid
    os.chown(upper, uid, gid)


def _lowers(layout: Layout, record: dict[str, Any]) -> list[str]:
    """The layers' short links, top first; the empty dir for an image of none."""
    chain_ids = list(record["layers"])
    if not chain_ids:
        return [os.path.join(layout.container_dir(str(record["container_id"])), "empty")]
    lowers = []
    for chain_id in reversed(chain_ids):
        layer = records.layer(layout, chain_id.split(":", 1)[1])
        if layer is None:
            raise NotFound(f"layer {chain_id} of container {record['container_id']} is gone "
                           "from the store; remove the container and create it again")
        lowers.append(os.path.join(layout.links_dir, str(layer["link"])))
    return lowers


def _ensure_mounted(layout: Layout, record: dict[str, Any]) -> bool:
    """Mount the rootfs unless it is; whether this call mounted it."""
    cid = str(record["container_id"])
    target = layout.mount_point(cid)
    if overlay.mounted(target):
        return False
    os.makedirs(target, mode=0o755, exist_ok=True)
    label = record.get("mount_label")
    if label and not overlay.selinux_enabled():
        log.debug("Ignoring mount label of %s: SELinux is not enabled", cid)
        label = None
    cdir = layout.container_dir(cid)
    lowers = _lowers(layout, record)
    saved_idmap = record.get("idmap")
    if saved_idmap is None:
        overlay.mount(target, lowers, os.path.join(cdir, "upper"), os.path.join(cdir, "work"),
                      label or None)
        return True
    # The layers through an idmapped clone of the whole store, attached at
    # a staging dir only for the mount: overlayfs keeps its own private
    # clones of its layers, so the staging mount goes right after.
    idmap = from_wire(saved_idmap, IdMap, f"rootfs record of {cid}")
    stage = os.path.join(layout.idmap_stage_dir, cid)
    unstage(layout, cid)  # one a crash left
    os.makedirs(stage, mode=0o700, exist_ok=True)
    try:
        with userns.temporary(idmap.uids, idmap.gids) as fd:
            userns.idmapped_clone(layout.storage_dir, stage, fd)
        staged = [os.path.join(stage, os.path.relpath(p, layout.storage_dir)) for p in lowers]
        overlay.mount(target, staged, os.path.join(cdir, "upper"), os.path.join(cdir, "work"),
                      label or None)
    except userns.UsernsError as exc:
        raise FailedPrecondition(f"cannot idmap the layers of container {cid} for its pod's "
                                 f"user namespace: {exc.strerror}") from exc
    finally:
        try:
            unstage(layout, cid)
        except OSError:
            # Not to hide the mount's own error; the removal or the next
            # reconcile takes it away.
            log.exception("Unmounting the idmap staging of %s failed", cid)
    return True


def unstage(layout: Layout, cid: str) -> None:
    """Detach and delete the idmapped staging of ``cid``'s layers, if a
    mount (or a storage worker killed in it) left one."""
    stage = os.path.join(layout.idmap_stage_dir, cid)
    while userns.unmount(stage):
        pass
    with contextlib.suppress(OSError):
        os.rmdir(stage)


def remove(layout: Layout, container_id: str, deadline: float) -> RemovedRootfs:
    """Remove the container's rootfs and then its image volumes', each
    under its own lock."""
    removed = False
    for rootfs_id in [container_id, *_image_volumes(layout, container_id)]:
        lock = locks.acquire(layout.locks_dir, lock_name(rootfs_id), deadline,
                             f"container {rootfs_id}", holder=LOCK_HOLDER)
        try:
            gone = delete_held(layout, rootfs_id)
        finally:
            lock.release(unlink=True)
        if gone:
            log.info("Removed rootfs %s", rootfs_id)
        removed = removed or gone
    return RemovedRootfs(container_id=container_id, removed=removed)


def _image_volumes(layout: Layout, container_id: str) -> list[str]:
    """The image volumes' rootfs ids of ``container_id`` on disk or mounted."""
    prefix = f"{container_id}{IMAGE_VOLUME_INFIX}"
    found: set[str] = set()
    for parent in (layout.containers_dir, layout.mounts_dir):
        with contextlib.suppress(FileNotFoundError):
            found |= {name for name in os.listdir(parent) if name.startswith(prefix)}
    return sorted(found)


def delete_held(layout: Layout, container_id: str) -> bool:
    """Unmount and delete one rootfs (its lock held); whether anything was there."""
    target = layout.mount_point(container_id)
    found = overlay.unmount(target)
    unstage(layout, container_id)
    cdir = layout.container_dir(container_id)
    if os.path.isdir(cdir):
        found = True
        doomed = os.path.join(layout.containers_dir,
                              f"{RM_PREFIX}{container_id}-{secrets.token_hex(4)}")
        os.rename(cdir, doomed)
        shutil.rmtree(doomed)
    # Not counted as found: an entry alone is no rootfs (a crash left it).
    usage_cache.remove(layout, container_id)
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(target)
        found = True
    return found
