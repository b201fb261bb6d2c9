"""The ops of the image pool: the image store and pulls.

Each op is declared once, with its argument and result types
(proto/contract.py). The ops that serve a CRI ImageService RPC take the
kubelet's request whole, as serialized protobuf, and answer the CRI
response built in the image pool, serialized the same way: the supervisor
only parses it (``api.ListImagesResponse.FromString(result.response)``).
A request that does not parse is INVALID_ARGUMENT.

Names: an image is named by a reference (short, qualified, tagged or by
digest, resolved through registries.conf), its id (the config digest,
``sha256:<hex>``) or a unique prefix of the id's hex.
"""

from __future__ import annotations

from typing import Any

from .contract import Empty, Op, Record

# ---- CRI ImageService ----------------------------------------------------------


class ListImages(Record, frozen=True, kw_only=True):
    """Every stored image, or the one ``filter.image`` names (none if absent)."""

    request: bytes
    """A serialized CRI ``ListImagesRequest``."""


class ImagesListed(Record, frozen=True, kw_only=True):
    response: bytes
    """A serialized CRI ``ListImagesResponse``."""


class ImageStatus(Record, frozen=True, kw_only=True):
    """One image by name. An absent image is a response without ``image``,
    not an error (CRI). ``verbose`` adds one JSON document under
    ``info["info"]``: manifest, layers and the image config."""

    request: bytes
    """A serialized CRI ``ImageStatusRequest``."""


class ImageStatusAnswer(Record, frozen=True, kw_only=True):
    response: bytes
    """A serialized CRI ``ImageStatusResponse``."""


class PullImage(Record, frozen=True, kw_only=True):
    """Pull an image (with the request's ``auth``, if any) into the store.
    Identical pulls in flight (same image and credentials) share one
    download. An image the signature policy refuses fails with UNKNOWN and
    a message starting ``SignatureValidationFailed:`` (workers/image/errors.py
    says why); an invalid policy file, with FAILED_PRECONDITION naming it.
    The layers are only stored: unpacking them is the storage pool's."""

    request: bytes
    """A serialized CRI ``PullImageRequest``."""


class ImagePulled(Record, frozen=True, kw_only=True):
    response: bytes
    """A serialized CRI ``PullImageResponse``: ``image_ref`` is the image id."""
    bytes_received: int
    """Bytes downloaded by this pull (0 when it joined another or found the
    image stored), for the pull metrics."""
    layers_fetched: int
    """Layer blobs downloaded by this pull, likewise."""


class RemoveImage(Record, frozen=True, kw_only=True):
    """Remove an image; absent is success (CRI). By id or digest the image
    and all its names go; by tag only that tag goes while the image has
    others (docker rmi and CRI-O semantics), and its last tag takes the
    image with it. Unpacked layers are the storage pool's to remove."""

    request: bytes
    """A serialized CRI ``RemoveImageRequest``."""


class ImageRemoved(Record, frozen=True, kw_only=True):
    response: bytes
    """A serialized CRI ``RemoveImageResponse``."""


# ---- for the other pools ---------------------------------------------------------


class ResolveImage(Record, frozen=True, kw_only=True):
    """A stored image with what creating a container of it needs;
    NOT_FOUND when absent."""

    image: str
    """A name of the image (module docstring)."""


class LayerRef(Record, frozen=True, kw_only=True):
    """One layer blob of an image, as the storage pool's unpack takes it."""

    digest: str
    """The blob's digest (of its compressed bytes)."""
    media_type: str
    size: int
    """The blob's size in bytes."""
    diff_id: str
    """The image config's digest of the uncompressed tar."""
    path: str
    """The blob file in the image store (absolute)."""


class ResolvedImage(Record, frozen=True, kw_only=True):
    id: str
    """The config digest."""
    repo_tags: list[str]
    repo_digests: list[str]
    """The one of what was pulled (the index, when there was one) first."""
    user: str
    """The image config's ``User`` ("uid", "name", "uid:gid"...; "" for root)."""
    # Opaque JSON: the OCI image config document as the registry served it
    # (``config.Entrypoint``, ``config.Env``...), an external format the
    # runtime pool's spec builder reads a few keys of.
    config: dict[str, Any]
    layers: list[LayerRef]
    """Bottom layer first."""


class LayerChains(Record, frozen=True, kw_only=True):
    """The layers every stored image needs unpacked: what must stay."""

    chain_ids: list[str]
    """Sorted, without repeats."""


LIST_IMAGES = Op("image.list_images", ListImages, ImagesListed, read_only=True)
IMAGE_STATUS = Op("image.image_status", ImageStatus, ImageStatusAnswer, read_only=True)
PULL_IMAGE = Op("image.pull_image", PullImage, ImagePulled)
REMOVE_IMAGE = Op("image.remove_image", RemoveImage, ImageRemoved)
RESOLVE_IMAGE = Op("image.resolve_image", ResolveImage, ResolvedImage, read_only=True)
LAYER_CHAINS = Op("image.layer_chains", Empty, LayerChains, read_only=True)

OPS = (
    LIST_IMAGES, IMAGE_STATUS, PULL_IMAGE, REMOVE_IMAGE, RESOLVE_IMAGE, LAYER_CHAINS,
)
