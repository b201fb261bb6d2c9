"""Where the storage pool keeps things, and the ids that name them.

On disk (``root`` persistent, ``runroot`` volatile)::

    <root>/storage/layers/<chain hex>/diff         one unpacked layer (overlay form)
    <root>/storage/layers/<chain hex>/layer.json   its record (ids, sizes, short link)
    <root>/storage/layers/.tmp-<chain hex>-<rand>/ an unpack in progress
    <root>/storage/layers/.rm-<chain hex>-<rand>/  a layer being deleted
    <root>/storage/l/<short>  ->  ../layers/<chain hex>/diff
    <root>/storage/containers/<id>/rootfs.json     which layers, which label
    <root>/storage/containers/<id>/upper, work     the container's writable part
    <root>/storage/containers/.tmp-<id>-<rand>/, .rm-<id>-<rand>/
    <runroot>/storage/mounts/<id>                  the merged rootfs mount point
    <runroot>/storage/idmap/<id>                   idmapped store, only while mounting
    <runroot>/storage/usage/<id>.json              its upper dir's usage as last measured
    <runroot>/storage/usage/.tmp-<id>-<rand>       one being written (usage_cache.py)
    <runroot>/storage/locks/layer-<chain hex>.lock, container-<id>.lock
                              per-object flocks (workers/locks.py; it hashes long names)
    <runroot>/storage/locks/usage-measurer.lock    held by the one measuring worker

Invariants
    - A directory named by a bare chain hex or container id is complete: it
      appears by one rename(2) of its temp directory and disappears by one
      rename to a ``.rm-`` name, so readers never see half of one.
    - Chain ids are ``sha256:<64 hex>`` on the wire and bare hex on disk,
      because overlayfs reads ``:`` in a lowerdir as a separator.
    - Container ids are checked here before they become path components.
    - Lock order: a container's lock is always taken before any layer's,
      and layer locks in sorted order, so waits never form a cycle. A
      rootfs create holds its layers' locks shared; an unpack or removal of
      a layer holds it exclusively.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...proto.errors import InvalidArgument

TMP_PREFIX = ".tmp-"
RM_PREFIX = ".rm-"
USAGE_SUFFIX = ".json"

# Who holds a busy lock under locks_dir, as lock timeouts say (workers/locks.py).
LOCK_HOLDER = "another storage operation"

_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
_CONTAINER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


@dataclass(frozen=True)
class Layout:
    """Paths of the storage pool, from the daemon's root and runroot."""

    root: str
    runroot: str

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> Layout:
        # The supervisor writes both (daemon.worker_settings) and owns their
        # defaults (supervisor/config.py): a missing one is a KeyError.
        return cls(root=str(settings["root"]), runroot=str(settings["runroot"]))

    @property
    def storage_dir(self) -> str:
        return os.path.join(self.root, "storage")

    @property
    def layers_dir(self) -> str:
        return os.path.join(self.storage_dir, "layers")

    @property
    def links_dir(self) -> str:
        return os.path.join(self.storage_dir, "l")

    @property
    def containers_dir(self) -> str:
        return os.path.join(self.storage_dir, "containers")

    @property
    def image_dir(self) -> str:
        """The image pool's store (blobs, records): counted, never written here."""
        return os.path.join(self.root, "image")

    @property
    def mounts_dir(self) -> str:
        return os.path.join(self.runroot, "storage", "mounts")

    @property
    def idmap_stage_dir(self) -> str:
        """Where a rootfs's idmapped view of the store is attached while
        its overlay is mounted (rootfs.py), then detached."""
        return os.path.join(self.runroot, "storage", "idmap")

    @property
    def locks_dir(self) -> str:
        return os.path.join(self.runroot, "storage", "locks")

    def layer_dir(self, chain_hex: str) -> str:
        return os.path.join(self.layers_dir, chain_hex)

    def diff_dir(self, chain_hex: str) -> str:
        return os.path.join(self.layers_dir, chain_hex, "diff")

    def container_dir(self, container_id: str) -> str:
        return os.path.join(self.containers_dir, container_id)

    def mount_point(self, container_id: str) -> str:
        return os.path.join(self.mounts_dir, container_id)

    def upper_dir(self, container_id: str) -> str:
        return os.path.join(self.containers_dir, container_id, "upper")

    @property
    def usage_dir(self) -> str:
        """The writable layers' usage cache: volatile, rebuilt by measuring."""
        return os.path.join(self.runroot, "storage", "usage")

    def usage_entry(self, container_id: str) -> str:
        return os.path.join(self.usage_dir, container_id + USAGE_SUFFIX)


def digest_hex(value: str, what: str) -> str:
    """The hex of a ``sha256:<hex>`` digest, or InvalidArgument naming ``what``."""
    match = _DIGEST.fullmatch(value)
    if match is None:
        raise InvalidArgument(f"{what} must be a digest like 'sha256:<64 lowercase hex>', "
                              f"got {value!r}")
    return match.group(1)


def check_container_id(value: str) -> str:
    if _CONTAINER_ID.fullmatch(value) is None:
        raise InvalidArgument(
            f"container_id must be 1-128 characters of letters, digits, '_', '.' or '-', "
            f"starting with a letter or digit; got {value!r}")
    return value


def is_chain_hex(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)
