"""Ops of the net pool.

Answered now: ``net.status``, the network half of CRI Status (is there a
usable CNI config). Pod network setup and teardown land with issue 4.
"""

from __future__ import annotations

from typing import Any

from ..base import OpContext, OpTable
from . import cniconf


def status(ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
    network_dir = ctx.settings["network"]["network_dir"]
    found = cniconf.find_default(network_dir)
    if found.config is None:
        return {"network_ready": False, "reason": "NetworkPluginNotReady",
                "message": found.problem, "config_file": ""}
    return {"network_ready": True, "reason": "", "message": "",
            "config_file": found.config.path, "network_name": found.config.name}


OPS: OpTable = {
    "net.status": status,
}
