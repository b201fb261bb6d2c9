"""Ops of the runtime pool: the bus face of pods and containers.

    runtime.version / status / runtime_config       node-level answers
    runtime.sandbox_*    reserve, start, stop_containers, stop, remove,
                         status, list                       (sandbox.py)
    runtime.container_*  reserve, create, start, stop, remove, status,
                         list, exec_sync, reopen_log        (containers.py)
    runtime.reconcile    start-up repair of the records     (reconcile.py)
    runtime.exits_since  long poll of conmon's exit files   (events.py)

``RuntimeService`` is built once per worker from its settings: the paths
(``Layout``), the ``[runtime]`` section (``Runtimes``) and the pause image.
Each op is one of its methods, named after the op's verb, and hands each
module only the pieces it uses; no op reads the settings again.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import version as package_version
from typing import Any

from ..base import OpContext, OpTable
from . import containers, events, handlers, reconcile, sandbox
from .handlers import Runtimes
from .layout import Layout

# The CRI "version" field: the version of the runtime API the runtime
# speaks, as CRI-O and containerd report it.
KUBELET_API_VERSION = "0.1.0"


class RuntimeService:
    """The runtime pool's settings, parsed once, and its ops."""

    def __init__(self, layout: Layout, runtimes: Runtimes, pause_image: str) -> None:
        self.layout = layout
        self.runtimes = runtimes
        self.pause_image = pause_image

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> RuntimeService:
        # Every key is the supervisor's to write (daemon.worker_settings):
        # none has a default here. The pause image is the image section's,
        # but only sandbox reserve reads it, to tell the supervisor to pull it.
        return cls(Layout.from_settings(settings), Runtimes.from_settings(settings["runtime"]),
                   settings["image"]["pause_image"])

    def ops(self) -> OpTable:
        return {
            "runtime.version": self.version,
            "runtime.status": self.status,
            "runtime.runtime_config": self.runtime_config,
            "runtime.sandbox_reserve": self.sandbox_reserve,
            "runtime.sandbox_start": self.sandbox_start,
            "runtime.sandbox_stop_containers": self.sandbox_stop_containers,
            "runtime.sandbox_stop": self.sandbox_stop,
            "runtime.sandbox_remove": self.sandbox_remove,
            "runtime.sandbox_status": self.sandbox_status,
            "runtime.sandbox_list": self.sandbox_list,
            "runtime.container_reserve": self.container_reserve,
            "runtime.container_create": self.container_create,
            "runtime.container_start": self.container_start,
            "runtime.container_stop": self.container_stop,
            "runtime.container_remove": self.container_remove,
            "runtime.container_status": self.container_status,
            "runtime.container_list": self.container_list,
            "runtime.container_exec_sync": self.container_exec_sync,
            "runtime.container_reopen_log": self.container_reopen_log,
            "runtime.reconcile": self.reconcile,
            "runtime.exits_since": self.exits_since,
        }

    def version(self, ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "version": KUBELET_API_VERSION,
            "runtime_name": "podvisor",
            "runtime_version": package_version("podvisor"),
            "runtime_api_version": "v1",
        }

    def status(self, ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
        """Probe every configured handler; ready iff the default one works."""
        probes = [handlers.probe(name, handler.path)
                  for name, handler in sorted(self.runtimes.handlers.items())]
        default = next(p for p in probes if p.name == self.runtimes.default_runtime)
        return {
            "runtime_ready": default.ok,
            "reason": "" if default.ok else "RuntimeBinaryNotWorking",
            "message": default.message,
            "default_runtime": default.name,
            "handlers": [p.as_dict() for p in probes if p.ok],
            "probes": [p.as_dict() for p in probes],
        }

    def runtime_config(self, ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
        # The kubelet reads this once at start and expects it never to change
        # for the node's life; it comes from the daemon's config, fixed at start.
        return {"cgroup_driver": self.runtimes.cgroup_manager}

    def sandbox_reserve(self, ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
        return sandbox.reserve(self.layout, self.runtimes, self.pause_image, ctx, args)

    def sandbox_start(self, ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
        return sandbox.start(self.layout, self.runtimes, ctx, args)

    def sandbox_stop_containers(self, ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
        return containers.stop_pod_containers(self.layout, self.runtimes, ctx, args)

    def sandbox_stop(self, ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
        return sandbox.stop(self.layout, self.runtimes, ctx, args)

    def sandbox_remove(self, ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
        return sandbox.remove(self.layout, self.runtimes, ctx, args)

    def sandbox_status(self, ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
        return sandbox.status(self.layout, ctx, args)

    def sandbox_list(self, ctx: OpContext, args: dict[str, Any]) -> list[dict[str, Any]]:
        return sandbox.list_sandboxes(self.layout, ctx, args)

    def container_reserve(self, ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
        return containers.reserve(self.layout, ctx, args)

    def container_create(self, ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
        return containers.create(self.layout, self.runtimes, ctx, args)

    def container_start(self, ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
        return containers.start(self.layout, self.runtimes, ctx, args)

    def container_stop(self, ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
        return containers.stop(self.layout, self.runtimes, ctx, args)

    def container_remove(self, ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
        return containers.remove(self.layout, self.runtimes, ctx, args)

    def container_status(self, ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
        return containers.status(self.layout, ctx, args)

    def container_list(self, ctx: OpContext, args: dict[str, Any]) -> list[dict[str, Any]]:
        return containers.list_containers(self.layout, ctx, args)

    def container_exec_sync(self, ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
        return containers.exec_sync(self.layout, self.runtimes, ctx, args)

    def container_reopen_log(self, ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
        return containers.reopen_log(self.layout, ctx, args)

    def reconcile(self, ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
        return reconcile.reconcile(self.layout, self.runtimes, ctx, args)

    def exits_since(self, ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
        return events.exits_since(self.layout.exits_dir, ctx, args)


def build(settings: Mapping[str, Any]) -> OpTable:
    """The op table of one runtime worker (workers/cli.py calls it once)."""
    return RuntimeService.from_settings(settings).ops()
