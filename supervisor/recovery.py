"""Start-up recovery: have every pool reconcile its records with reality
before the daemon serves CRI calls.

The runtime pool goes first: it removes half-created pods and containers
and answers the ids that live on; the net pool then tears down namespaces
of pods that no longer exist, and the storage pool unmounts and removes
root filesystems of containers that no longer exist and unpacked layers no
image refers to. A pool that fails its
reconcile is logged and skipped: serving with a leak is better than not
serving, and the next start tries again.
"""

from __future__ import annotations

import logging
import time
from typing import Any, TypeVar

from ..proto import image_ops, net_ops, runtime_ops, storage_ops
from ..proto.contract import Empty, Op, Record
from ..proto.errors import BusError
from .bus import Bus
from .opclient import send

log = logging.getLogger(__name__)

A = TypeVar("A", bound=Record)

RECONCILE_TIMEOUT = 120.0




async def reconcile(bus: Bus) -> None:
    deadline = time.monotonic() + RECONCILE_TIMEOUT
    try:
        live = await send(bus, runtime_ops.RECONCILE, Empty(), deadline)
    except BusError as exc:
        log.error("Runtime reconcile failed: %s", exc.message)
        return
    if live.removed_sandboxes or live.removed_containers:
        log.warning("Removed half-created pods %s and containers %s",
                    live.removed_sandboxes, live.removed_containers)
    live_layers: list[str] | None = None  # None: every layer is kept
    try:
        live_layers = (await send(bus, image_ops.LAYER_CHAINS, Empty(), deadline)).chain_ids
    except BusError as exc:
        log.error("Cannot list image layers (layers are kept): %s", exc.message)
    await _pool_reconcile(bus, net_ops.RECONCILE,
                          net_ops.Reconcile(live_pod_ids=live.sandboxes), deadline)
    # A pod with a pause image has a rootfs under its own id.
    await _pool_reconcile(bus, storage_ops.RECONCILE, storage_ops.Reconcile(
        live_containers=live.containers + live.sandboxes, live_layers=live_layers), deadline)


async def _pool_reconcile(bus: Bus, op: Op[A, Any], args: A, deadline: float) -> None:
    """One pool's reconcile; its failure is logged and skipped."""
    try:
        result = await send(bus, op, args, deadline)
    except BusError as exc:
        log.error("%s failed: %s", op.name, exc.message)
        return
    log.info("%s: %s", op.name, result)
