"""Ops of the runtime pool: the bus face of pods and containers.

    runtime.version / status / runtime_config       node-level answers
    runtime.sandbox_*    reserve, start, stop_containers, stop, remove,
                         status, list                       (sandbox.py)
    runtime.container_*  reserve, create, start, stop, remove, status,
                         list, exec_sync, reopen_log        (containers.py)

Every other runtime op in the catalogue is UNIMPLEMENTED until its issue
lands.
"""

from __future__ import annotations

from importlib.metadata import version as package_version
from typing import Any

from ..base import OpContext, OpTable
from . import containers, events, handlers, reconcile, sandbox

# The CRI "version" field: the version of the runtime API the runtime
# speaks, as CRI-O and containerd report it.
KUBELET_API_VERSION = "0.1.0"


def version(ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": KUBELET_API_VERSION,
        "runtime_name": "podvisor",
        "runtime_version": package_version("podvisor"),
        "runtime_api_version": "v1",
    }


def status(ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
    """Probe every configured handler; ready iff the default one works."""
    runtime = ctx.settings["runtime"]
    probes = [handlers.probe(name, spec["runtime_path"])
              for name, spec in sorted(runtime["runtimes"].items())]
    default = next(p for p in probes if p.name == runtime["default_runtime"])
    return {
        "runtime_ready": default.ok,
        "reason": "" if default.ok else "RuntimeBinaryNotWorking",
        "message": default.message,
        "default_runtime": default.name,
        "handlers": [p.as_dict() for p in probes if p.ok],
        "probes": [p.as_dict() for p in probes],
    }


def runtime_config(ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
    # The kubelet reads this once at start and expects it never to change
    # for the node's life; it comes from the daemon's config, fixed at start.
    return {"cgroup_driver": ctx.settings["runtime"]["cgroup_manager"]}


OPS: OpTable = {
    "runtime.version": version,
    "runtime.status": status,
    "runtime.runtime_config": runtime_config,
    "runtime.sandbox_reserve": sandbox.reserve,
    "runtime.sandbox_start": sandbox.start,
    "runtime.sandbox_stop_containers": containers.stop_pod_containers,
    "runtime.sandbox_stop": sandbox.stop,
    "runtime.sandbox_remove": sandbox.remove,
    "runtime.sandbox_status": sandbox.status,
    "runtime.sandbox_list": sandbox.list_sandboxes,
    "runtime.container_reserve": containers.reserve,
    "runtime.container_create": containers.create,
    "runtime.container_start": containers.start,
    "runtime.container_stop": containers.stop,
    "runtime.container_remove": containers.remove,
    "runtime.container_status": containers.status,
    "runtime.container_list": containers.list_containers,
    "runtime.container_exec_sync": containers.exec_sync,
    "runtime.container_reopen_log": containers.reopen_log,
    "runtime.reconcile": reconcile.reconcile,
    "runtime.exits_since": events.exits_since,
}
