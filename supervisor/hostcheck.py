"""Refuse to start on a host the configuration does not fit.

The runtime pool knows the host's cgroups; the daemon asks it (the
RuntimeConfig op, which the kubelet later reads too) before it serves
anything. A host that cannot serve the configured cgroup driver (systemd
asked for where systemd does not run) stops the start with the pool's
message, which names the setting: a node whose kubelet and runtime
disagree on the driver would fail every pod instead.

Any other failure (the pool slow to come up) is logged and the start goes
on: the pool's own restarts and Status then tell the operator.
"""

from __future__ import annotations

import logging
import time

from ..proto import runtime_ops
from ..proto.codes import Code
from ..proto.contract import Empty
from ..proto.errors import BusError
from .bus import Bus
from .opclient import send

log = logging.getLogger(__name__)

# Beyond the workers' start_timeout: the op waits for a pool coming up.
MARGIN = 30.0


async def refusal(bus: Bus, start_timeout: float) -> str | None:
    """Why this host cannot run the configuration, or None."""
    try:
        found = await send(bus, runtime_ops.RUNTIME_CONFIG, Empty(),
                           time.monotonic() + start_timeout + MARGIN)
    except BusError as exc:
        if exc.code == Code.FAILED_PRECONDITION:
            return exc.message
        log.error("Cannot check the host's cgroups: %s", exc.message)
        return None
    log.info("cgroup driver %s on a cgroup %s host", found.cgroup_driver, found.cgroup_hierarchy)
    return None
