"""The ops of the image pool: the image store and pulls.

Each op is declared once, with its argument and result types
(proto/contract.py).
"""

from __future__ import annotations

from .contract import Op, Untyped

LIST_IMAGES = Op("image.list_images", Untyped, Untyped, read_only=True)
IMAGE_STATUS = Op("image.image_status", Untyped, Untyped, read_only=True)
PULL_IMAGE = Op("image.pull_image", Untyped, Untyped)
REMOVE_IMAGE = Op("image.remove_image", Untyped, Untyped)
RESOLVE_IMAGE = Op("image.resolve_image", Untyped, Untyped, read_only=True)
LAYER_CHAINS = Op("image.layer_chains", Untyped, Untyped, read_only=True)

OPS = (
    LIST_IMAGES, IMAGE_STATUS, PULL_IMAGE, REMOVE_IMAGE, RESOLVE_IMAGE, LAYER_CHAINS,
)
