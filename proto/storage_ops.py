"""The ops of the storage pool: unpacked layers and container root filesystems.

Each op is declared once, with its argument and result types
(proto/contract.py). Digests are ``sha256:<64 lowercase hex>``; a layer is
named by its chain id (OCI image spec: the chain id of the layer below and
this layer's diff_id).
"""

from __future__ import annotations

from .contract import Empty, Op, Record
from .idmap import IdMap
from .stats import LayerUsageQuery, LayerUsages


class UnpackLayer(Record, frozen=True, kw_only=True):
    """One layer of an ``UnpackLayers``: its blob, unpacked unless that
    layer is unpacked already."""

    blob: str
    """The absolute path of the (compressed) layer blob."""
    media_type: str
    """The layer descriptor's media type (its compression, if its magic
    bytes agree)."""
    diff_id: str
    """The image config's digest of the uncompressed tar; checked."""
    parent: str | None = None
    """The chain id of the layer below; None for the bottom layer."""
    chain_id: str | None = None
    """When given, must equal the one computed from parent and diff_id."""
    digest: str | None = None
    """When given, the blob's own digest, checked too."""


class UnpackedLayer(Record, frozen=True, kw_only=True):
    """A layer present on disk."""

    chain_id: str
    diff_id: str
    size: int
    """The uncompressed tar stream's length in bytes."""
    path: str
    """The unpacked diff dir."""
    unpacked: bool
    """False when the layer was there already (this call did nothing)."""


class UnpackLayers(Record, frozen=True, kw_only=True):
    """Unpack an image's layers bottom up, each unless unpacked already: one
    round trip for the whole chain (an image of 10 layers made 10)."""

    layers: list[UnpackLayer]
    """Bottom first. The first one's parent is None for an image's bottom
    layer, else a layer unpacked already; each other one's parent is the
    chain id of the one below it, checked before anything is unpacked."""


class UnpackedLayers(Record, frozen=True, kw_only=True):
    layers: list[UnpackedLayer]
    """In the order asked."""


class RemoveLayer(Record, frozen=True, kw_only=True):
    """Remove an unpacked layer no rootfs uses (FAILED_PRECONDITION if one
    does)."""

    chain_id: str


class RemovedLayer(Record, frozen=True, kw_only=True):
    chain_id: str
    removed: bool
    """False when the layer was absent: removal is idempotent."""


class CreateRootfs(Record, frozen=True, kw_only=True):
    """Make and mount a container's root filesystem: its image's layers
    under a writable upper dir. Again with the same layers, the same
    rootfs (mounted again if its mount was lost); with others,
    ALREADY_EXISTS."""

    container_id: str
    layers: list[str]
    """Chain ids, bottom to top, each unpacked already."""
    mount_label: str | None = None
    """The SELinux label of the mount; ignored where SELinux is off."""
    idmap: IdMap | None = None
    """A pod user namespace's maps: the layers show through an idmapped
    mount (on-disk id ``u`` reads as host id ``u + host_id``) and the upper
    dir's root belongs to the mapped owner. Part of the rootfs's identity:
    again with other maps is ALREADY_EXISTS."""


class CreatedRootfs(Record, frozen=True, kw_only=True):
    container_id: str
    path: str
    """The merged overlay's mount point: the container's root."""
    upper_dir: str
    """Where the container's writes land."""
    layers: list[str]
    mount_label: str | None
    created: bool
    """False when this container had this rootfs already."""


# A container's image volumes (CRI Mount.image) are root filesystems of
# their own, named after it: mounted read-only into it, removed with its
# rootfs, live while it is.
IMAGE_VOLUME_INFIX = "-image-"


def image_volume_id(container_id: str, index: int) -> str:
    """The rootfs id of the ``index``-th image volume of ``container_id``."""
    return f"{container_id}{IMAGE_VOLUME_INFIX}{index}"


def volume_owner(rootfs_id: str) -> str:
    """The container a rootfs belongs to: itself, or an image volume's owner."""
    return rootfs_id.split(IMAGE_VOLUME_INFIX, 1)[0]


class RemoveRootfs(Record, frozen=True, kw_only=True):
    """Unmount and delete a container's rootfs, and its image volumes';
    absent is success."""

    container_id: str


class RemovedRootfs(Record, frozen=True, kw_only=True):
    container_id: str
    removed: bool
    """False when there was nothing to remove."""


class ImageFsInfo(Record, frozen=True, kw_only=True):
    """What images and containers take on disk."""

    response: bytes
    """A serialized CRI ``ImageFsInfoResponse``, ready for the kubelet."""


class Reconcile(Record, frozen=True, kw_only=True):
    """Start-up reconcile: remove what a crash left, and every rootfs (and
    optionally every layer) that is not live."""

    live_containers: list[str]
    """Ids whose rootfs is kept (containers and pods with a pause rootfs)."""
    live_layers: list[str] | None = None
    """Chain ids of every image's layers; None leaves all layers alone."""


class Reconciled(Record, frozen=True, kw_only=True):
    """What a reconcile removed, by kind, and what it left because an op
    still running elsewhere holds it."""

    removed_temp: list[str]
    removed_links: list[str]
    removed_containers: list[str]
    removed_layers: list[str]
    busy: list[str]


IMAGE_FS_INFO = Op("storage.image_fs_info", Empty, ImageFsInfo, read_only=True)
UNPACK_LAYERS = Op("storage.unpack_layers", UnpackLayers, UnpackedLayers)
REMOVE_LAYER = Op("storage.remove_layer", RemoveLayer, RemovedLayer)
CREATE_ROOTFS = Op("storage.create_rootfs", CreateRootfs, CreatedRootfs, idempotent=True)
REMOVE_ROOTFS = Op("storage.remove_rootfs", RemoveRootfs, RemovedRootfs, idempotent=True)
RECONCILE = Op("storage.reconcile", Reconcile, Reconciled)
# The writable layers' usage as last measured in the background, never
# walked on the call's path (workers/storage/layer_usage.py).
LAYER_USAGE = Op("storage.layer_usage", LayerUsageQuery, LayerUsages, read_only=True)

OPS = (IMAGE_FS_INFO, UNPACK_LAYERS, REMOVE_LAYER, CREATE_ROOTFS, REMOVE_ROOTFS,
       RECONCILE, LAYER_USAGE)
