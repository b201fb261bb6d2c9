"""Ops of the runtime pool: the bus face of pods and containers.

The contracts (argument and result types, what each field means) are
declared in proto/runtime_ops.py. The ops are served by:

    runtime.version / status / runtime_config       node-level answers (here)
    runtime.sandbox_*    reserve, start, stop_containers, stop, remove,
                         status, list                       (sandbox.py)
    runtime.container_*  reserve, create, start, stop, remove, status,
                         list, exec_sync, reopen_log        (containers.py)
    runtime.reconcile    start-up repair of the records     (reconcile.py)
    runtime.exits_since  long poll of conmon's exit files   (events.py)

Every CRI message the kubelet reads back about pods and containers
(statuses, list items) is built here, in the runtime pool, and answered
serialized; the supervisor only parses it.

``RuntimeService`` is built once per worker from its settings: the paths
(``Layout``), the ``[runtime]`` section (``Runtimes``) and the pause image.
Each op is one of its methods, named after the op's verb, and hands each
module only the pieces it uses; no op reads the settings again.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import version as package_version
from typing import Any

from ...proto import runtime_ops as rt
from ...proto.contract import Empty
from ..base import OpContext, OpTable, Served, serve
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
        return serve(
            Served(rt.VERSION, self.version),
            Served(rt.STATUS, self.status),
            Served(rt.RUNTIME_CONFIG, self.runtime_config),
            Served(rt.SANDBOX_RESERVE, self.sandbox_reserve),
            Served(rt.SANDBOX_START, self.sandbox_start),
            Served(rt.SANDBOX_STOP_CONTAINERS, self.sandbox_stop_containers),
            Served(rt.SANDBOX_STOP, self.sandbox_stop),
            Served(rt.SANDBOX_REMOVE, self.sandbox_remove),
            Served(rt.SANDBOX_STATUS, self.sandbox_status),
            Served(rt.SANDBOX_LIST, self.sandbox_list),
            Served(rt.CONTAINER_RESERVE, self.container_reserve),
            Served(rt.CONTAINER_CREATE, self.container_create),
            Served(rt.CONTAINER_START, self.container_start),
            Served(rt.CONTAINER_STOP, self.container_stop),
            Served(rt.CONTAINER_REMOVE, self.container_remove),
            Served(rt.CONTAINER_STATUS, self.container_status),
            Served(rt.CONTAINER_LIST, self.container_list),
            Served(rt.CONTAINER_EXEC_SYNC, self.container_exec_sync),
            Served(rt.CONTAINER_REOPEN_LOG, self.container_reopen_log),
            Served(rt.RECONCILE, self.reconcile),
            Served(rt.EXITS_SINCE, self.exits_since),
        )

    def version(self, ctx: OpContext, args: Empty) -> rt.VersionInfo:
        return rt.VersionInfo(version=KUBELET_API_VERSION, runtime_name="podvisor",
                               runtime_version=package_version("podvisor"),
                               runtime_api_version="v1")

    def status(self, ctx: OpContext, args: Empty) -> rt.RuntimeStatus:
        """Probe every configured handler; ready iff the default one works."""
        probes = [handlers.probe(name, handler.path)
                  for name, handler in sorted(self.runtimes.handlers.items())]
        default = next(p for p in probes if p.name == self.runtimes.default_runtime)
        return rt.RuntimeStatus(
            runtime_ready=default.ok, reason="" if default.ok else "RuntimeBinaryNotWorking",
            message=default.message, default_runtime=default.name,
            handlers=[p.as_record() for p in probes if p.ok],
            probes=[p.as_record() for p in probes])

    def runtime_config(self, ctx: OpContext, args: Empty) -> rt.RuntimeConfig:
        # The kubelet reads this once at start and expects it never to change
        # for the node's life; it comes from the daemon's config, fixed at start.
        return rt.RuntimeConfig(cgroup_driver=self.runtimes.cgroup_manager)

    def sandbox_reserve(self, ctx: OpContext, args: rt.SandboxReserve) -> rt.SandboxReserved:
        return sandbox.reserve(self.layout, self.runtimes, self.pause_image, ctx, args)

    def sandbox_start(self, ctx: OpContext, args: rt.SandboxStart) -> Empty:
        sandbox.start(self.layout, self.runtimes, ctx, args)
        return Empty()

    def sandbox_stop_containers(self, ctx: OpContext, args: rt.Ref) -> rt.Found:
        return containers.stop_pod_containers(self.layout, self.runtimes, ctx, args)

    def sandbox_stop(self, ctx: OpContext, args: rt.Ref) -> rt.SandboxStopped:
        return sandbox.stop(self.layout, self.runtimes, ctx, args)

    def sandbox_remove(self, ctx: OpContext, args: rt.Ref) -> rt.Found:
        return sandbox.remove(self.layout, self.runtimes, ctx, args)

    def sandbox_status(self, ctx: OpContext, args: rt.StatusQuery) -> rt.SandboxStatus:
        """The pod's CRI status with its containers': the kubelet's evented
        PLEG reads both from one answer."""
        record = sandbox.load(self.layout, sandbox.resolve_id(self.layout, args.id))
        return rt.SandboxStatus(
            status=sandbox.cri_status(record).SerializeToString(),
            containers=containers.pod_statuses(self.layout, record["id"]),
            info=sandbox.verbose_info(record) if args.verbose else {})

    def sandbox_list(self, ctx: OpContext, args: rt.SandboxListQuery) -> rt.SandboxList:
        return sandbox.list_sandboxes(self.layout, ctx, args)

    def container_reserve(self, ctx: OpContext,
                          args: rt.ContainerReserve) -> rt.ContainerReserved:
        return containers.reserve(self.layout, ctx, args)

    def container_create(self, ctx: OpContext, args: rt.ContainerCreate) -> Empty:
        containers.create(self.layout, self.runtimes, ctx, args)
        return Empty()

    def container_start(self, ctx: OpContext, args: rt.Ref) -> rt.ContainerStarted:
        return containers.start(self.layout, self.runtimes, ctx, args)

    def container_stop(self, ctx: OpContext, args: rt.ContainerStop) -> rt.ContainerStopped:
        return containers.stop(self.layout, self.runtimes, ctx, args)

    def container_remove(self, ctx: OpContext, args: rt.Ref) -> rt.ContainerRemoved:
        return containers.remove(self.layout, self.runtimes, ctx, args)

    def container_status(self, ctx: OpContext, args: rt.StatusQuery) -> rt.ContainerStatus:
        return containers.status(self.layout, ctx, args)

    def container_list(self, ctx: OpContext, args: rt.ContainerListQuery) -> rt.ContainerList:
        return containers.list_containers(self.layout, ctx, args)

    def container_exec_sync(self, ctx: OpContext, args: rt.ExecSync) -> rt.ExecResult:
        return containers.exec_sync(self.layout, self.runtimes, ctx, args)

    def container_reopen_log(self, ctx: OpContext, args: rt.Ref) -> Empty:
        containers.reopen_log(self.layout, ctx, args)
        return Empty()

    def reconcile(self, ctx: OpContext, args: Empty) -> rt.Reconciled:
        return reconcile.reconcile(self.layout, self.runtimes, ctx)

    def exits_since(self, ctx: OpContext, args: rt.ExitsSince) -> rt.Exits:
        return events.exits_since(self.layout.exits_dir, ctx, args)


def build(settings: Mapping[str, Any]) -> OpTable:
    """The op table of one runtime worker (workers/cli.py calls it once)."""
    return RuntimeService.from_settings(settings).ops()
