"""The ops of the storage pool: unpacked layers and container root filesystems.

Each op is declared once, with its argument and result types
(proto/contract.py).
"""

from __future__ import annotations

from .contract import Op, Untyped

IMAGE_FS_INFO = Op("storage.image_fs_info", Untyped, Untyped, read_only=True)
UNPACK_LAYER = Op("storage.unpack_layer", Untyped, Untyped)
REMOVE_LAYER = Op("storage.remove_layer", Untyped, Untyped)
CREATE_ROOTFS = Op("storage.create_rootfs", Untyped, Untyped, idempotent=True)
MOUNT_ROOTFS = Op("storage.mount_rootfs", Untyped, Untyped)
REMOVE_ROOTFS = Op("storage.remove_rootfs", Untyped, Untyped, idempotent=True)
RECONCILE = Op("storage.reconcile", Untyped, Untyped)

OPS = (
    IMAGE_FS_INFO, UNPACK_LAYER, REMOVE_LAYER, CREATE_ROOTFS, MOUNT_ROOTFS, REMOVE_ROOTFS,
    RECONCILE,
)
