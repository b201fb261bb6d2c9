"""Keeping the storage pool's unpacked layers in step with the image store.

Layers are unpacked when an image is pulled (so the first container of it
starts without waiting) and again, idempotently, when a container needs
them; they are removed when no image refers to them any more. A layer a
container still uses stays (the storage pool refuses), and the start-up
recovery removes it once free.
"""

from __future__ import annotations

import logging

from ...proto import image_ops, storage_ops
from ...proto.contract import Empty
from ...proto.errors import FailedPrecondition
from ...proto.layers import chain_ids
from ..opclient import Deadline, OpClient

log = logging.getLogger(__name__)


async def ensure_unpacked(ops: OpClient, layers: list[image_ops.LayerRef],
                          policy: Deadline = Deadline.CALL) -> list[str]:
    """Unpack every layer (bottom up) unless done already, in one round
    trip to the storage pool; return the chain ids."""
    if not layers:
        return []
    below = [None, *chain_ids(layer.diff_id for layer in layers)][:-1]
    done = await ops(storage_ops.UNPACK_LAYERS, storage_ops.UnpackLayers(layers=[
        storage_ops.UnpackLayer(blob=layer.path, media_type=layer.media_type,
                                diff_id=layer.diff_id, parent=parent)
        for layer, parent in zip(layers, below, strict=True)]), policy)
    return [layer.chain_id for layer in done.layers]


async def remove_unused(ops: OpClient, layers: list[image_ops.LayerRef]) -> None:
    """Remove the unpacked layers of a removed image that no image uses now."""
    live = set((await ops(image_ops.LAYER_CHAINS, Empty())).chain_ids)
    for chain in reversed(chain_ids(layer.diff_id for layer in layers)):
        if chain in live:
            continue
        try:
            await ops(storage_ops.REMOVE_LAYER, storage_ops.RemoveLayer(chain_id=chain))
        except FailedPrecondition as exc:
            log.info("Keeping layer %s: %s", chain, exc.message)
