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

from ..proto.errors import BusError
from .bus import Bus

log = logging.getLogger(__name__)

RECONCILE_TIMEOUT = 120.0


async def reconcile(bus: Bus) -> None:
    deadline = time.monotonic() + RECONCILE_TIMEOUT
    try:
        live = await bus.call("runtime.reconcile", {}, deadline=deadline)
    except BusError as exc:
        log.error("Runtime reconcile failed: %s", exc.message)
        return
    if live["removed_sandboxes"] or live["removed_containers"]:
        log.warning("Removed half-created pods %s and containers %s",
                    live["removed_sandboxes"], live["removed_containers"])
    layers: dict[str, object] = {}
    try:
        layers = {"live_layers": (await bus.call("image.layer_chains", {},
                                                 deadline=deadline))["chain_ids"]}
    except BusError as exc:
        log.error("Cannot list image layers (layers are kept): %s", exc.message)
    for op, args in (("net.reconcile", {"live_pod_ids": live["sandboxes"]}),
                     # A pod with a pause image has a rootfs under its own id.
                     ("storage.reconcile", {"live_containers": live["containers"]
                                            + live["sandboxes"], **layers})):
        try:
            result = await bus.call(op, args, deadline=deadline)
        except BusError as exc:
            log.error("%s failed: %s", op, exc.message)
            continue
        log.info("%s: %s", op, result)
