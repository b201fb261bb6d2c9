"""Ops of the runtime pool: the bus face of pods and containers.

The contracts (argument and result types, what each field means) are
declared in proto/runtime_ops.py. The ops are served by:

    runtime.version / status / runtime_config       node-level answers (here)
    runtime.sandbox_*    reserve, start, stop_containers, stop, remove,
                         status, list                       (sandbox.py)
    runtime.container_*  reserve, create, start, stop, remove, status,
                         list, exec_sync, reopen_log        (containers.py)
    runtime.container_update, sandbox_update
                         new resources in place             (update.py)
    runtime.exec_plan, attach_plan, port_forward_plan
                         streaming requests checked, and their plans (streaming.py)
    runtime.container_stats, sandbox_stats
                         the cgroups' figures for stats and metrics (stats.py)
    runtime.reconcile    start-up repair of the records     (reconcile.py)
    runtime.changes_since  the change feed: events with statuses (changes.py)

Every CRI message the kubelet reads back about pods and containers
(statuses, list items) is built here, in the runtime pool, and answered
serialized; the supervisor only parses it.

``RuntimeService`` is built once per worker from its settings: the paths
(``Layout``), the ``[runtime]`` section (``Runtimes``) and the pause image.
Each op is one of its methods, named after the op's verb, and hands each
module only the pieces it uses; no op reads the settings again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import version as package_version
from typing import Any

from ...proto import api_pb2 as api
from ...proto import runtime_ops as rt
from ...proto.contract import Empty
from ...proto.errors import NotFound
from ...proto.stats import ContainerSamples, PodSamples, StatsQuery
from ...proto.stream_ops import AttachPlan, ExecPlan, PortForwardPlan
from ..base import OpContext, OpTable, Served, serve
from . import (
    changes,
    containers,
    handlers,
    reconcile,
    sandbox,
    stats,
    streaming,
    update,
    usernsprobe,
)
from .changes import Change, Entry, Journal
from .handlers import Runtimes
from .layout import Layout

log = logging.getLogger(__name__)

# The CRI "version" field: the version of the runtime API the runtime
# speaks, as CRI-O and containerd report it.
KUBELET_API_VERSION = "0.1.0"


class RuntimeService:
    """The runtime pool's settings, parsed once, and its ops."""

    def __init__(self, layout: Layout, runtimes: Runtimes, pause_image: str) -> None:
        self.layout = layout
        self.runtimes = runtimes
        self.pause_image = pause_image
        self.journal = Journal(layout.journal_dir, layout.exits_dir)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> RuntimeService:
        # Every key is the supervisor's to write (daemon.worker_settings):
        # none has a default here. The pause image is the image section's,
        # but only sandbox reserve reads it, to tell the supervisor to pull it.
        layout = Layout.from_settings(settings)
        return cls(layout, Runtimes.from_settings(settings["runtime"], layout.runroot),
                   settings["image"]["pause_image"])

    def ops(self) -> OpTable:
        return serve(
            Served(rt.VERSION, self.version),
            Served(rt.STATUS, self.status),
            Served(rt.RUNTIME_CONFIG, self.runtime_config),
            Served(rt.SANDBOX_RESERVE, self.sandbox_reserve),
            Served(rt.SANDBOX_PREPARE, self.sandbox_prepare),
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
            Served(rt.CONTAINER_UPDATE, self.container_update),
            Served(rt.SANDBOX_UPDATE, self.sandbox_update),
            Served(rt.EXEC_PLAN, self.exec_plan),
            Served(rt.ATTACH_PLAN, self.attach_plan),
            Served(rt.PORT_FORWARD_PLAN, self.port_forward_plan),
            Served(rt.CONTAINER_STATS, self.container_stats),
            Served(rt.SANDBOX_STATS, self.sandbox_stats),
            Served(rt.RECONCILE, self.reconcile),
            Served(rt.CHANGES_SINCE, self.changes_since),
        )

    def version(self, ctx: OpContext, args: Empty) -> rt.VersionInfo:
        return rt.VersionInfo(version=KUBELET_API_VERSION, runtime_name="podvisor",
                               runtime_version=package_version("podvisor"),
                               runtime_api_version="v1")

    def status(self, ctx: OpContext, args: Empty) -> rt.RuntimeStatus:
        """Probe every configured handler; ready iff the default one works."""
        probes = [handlers.probe(name, handler.path, handler.root)
                  for name, handler in sorted(self.runtimes.handlers.items())]
        default = next(p for p in probes if p.name == self.runtimes.default_runtime)
        # Both runc and crun join a pinned user namespace by path; what can
        # stop a handler's pods from having one is the node (usernsprobe.py).
        userns = usernsprobe.problem(self.layout) is None
        return rt.RuntimeStatus(
            runtime_ready=default.ok, reason="" if default.ok else "RuntimeBinaryNotWorking",
            message=default.message, default_runtime=default.name,
            handlers=[p.as_record(userns) for p in probes if p.ok],
            probes=[p.as_record(userns) for p in probes])

    def runtime_config(self, ctx: OpContext, args: Empty) -> rt.RuntimeConfig:
        # The kubelet reads this once at start and expects it never to change
        # for the node's life; it comes from the daemon's config, fixed at
        # start, where the daemon refuses a driver the host cannot serve.
        cgroups = self.runtimes.cgroups
        cgroups.check()
        return rt.RuntimeConfig(cgroup_driver=cgroups.manager,
                                cgroup_hierarchy=cgroups.hierarchy.mode)

    def sandbox_reserve(self, ctx: OpContext, args: rt.SandboxReserve) -> rt.SandboxReserved:
        return sandbox.reserve(self.layout, self.runtimes, self.pause_image, ctx, args)

    def sandbox_prepare(self, ctx: OpContext, args: rt.SandboxPrepare) -> Empty:
        sandbox.prepare(self.layout, self.runtimes, ctx, args)
        return Empty()

    def sandbox_start(self, ctx: OpContext, args: rt.SandboxStart) -> rt.SandboxStarted:
        sandbox.start(self.layout, self.runtimes, ctx, args)
        # As containerd does, a sandbox's own events carry its id.
        self.journal.note(Change.CREATED, args.id, args.id)
        self.journal.note(Change.STARTED, args.id, args.id)
        # The status as it is now, for the supervisor's status cache: the
        # kubelet reads it next. Only a seed: a pod removed meanwhile has none.
        try:
            now = self.sandbox_status(ctx, rt.StatusQuery(id=args.id, verbose=True))
        except NotFound:
            return rt.SandboxStarted()
        return rt.SandboxStarted(status=now.status, containers=now.containers, info=now.info)

    def sandbox_stop_containers(self, ctx: OpContext, args: rt.Ref) -> rt.Found:
        return containers.stop_pod_containers(self.layout, self.runtimes, ctx, args)

    def sandbox_stop(self, ctx: OpContext, args: rt.Ref) -> rt.SandboxStopped:
        stopped = sandbox.stop(self.layout, self.runtimes, ctx, args)
        if stopped.stopped:
            self.journal.note(Change.STOPPED, stopped.id, stopped.id)
        return stopped

    def sandbox_remove(self, ctx: OpContext, args: rt.Ref) -> rt.Found:
        removed = sandbox.remove(self.layout, self.runtimes, ctx, args)
        if removed.found:
            self.journal.note(Change.DELETED, removed.id, removed.id)
        return removed

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
        self.journal.note(Change.CREATED, args.id, "")
        return Empty()

    def container_start(self, ctx: OpContext, args: rt.Ref) -> rt.ContainerStarted:
        started = containers.start(self.layout, self.runtimes, ctx, args, self._started)
        # The status as it is now, for the supervisor's status cache: the
        # kubelet reads it next. Only a seed: a container removed meanwhile
        # has none.
        try:
            now = containers.status(self.layout, ctx, rt.StatusQuery(id=started.id,
                                                                     verbose=True))
        except NotFound:
            return started
        return rt.ContainerStarted(id=started.id, status=now.status, info=now.info)

    def _started(self, container_id: str, sandbox_id: str) -> None:
        self.journal.note(Change.STARTED, container_id, sandbox_id)

    async def container_stop(self, ctx: OpContext,
                             args: rt.ContainerStop) -> rt.ContainerStopped:
        # A coroutine: the grace period holds no thread (containers.py).
        stopped = await containers.stop_gracefully(self.layout, self.runtimes, ctx, args)
        if stopped.stopped:
            # Its exit file says so too, but a removal right after deletes
            # that file, maybe before the feed reads it; the hub sends a
            # container's STOPPED once.
            await asyncio.to_thread(self.journal.note, Change.STOPPED, stopped.id,
                                    stopped.sandbox_id)
        return stopped

    def container_remove(self, ctx: OpContext, args: rt.Ref) -> rt.ContainerRemoved:
        removed = containers.remove(self.layout, self.runtimes, ctx, args)
        if removed.found:
            # STOPPED first, as the removal took its exit file (sent once).
            self.journal.note(Change.STOPPED, removed.id, removed.sandbox_id)
            self.journal.note(Change.DELETED, removed.id, removed.sandbox_id)
        return removed

    def container_status(self, ctx: OpContext, args: rt.StatusQuery) -> rt.ContainerStatus:
        return containers.status(self.layout, ctx, args)

    def container_list(self, ctx: OpContext, args: rt.ContainerListQuery) -> rt.ContainerList:
        return containers.list_containers(self.layout, ctx, args)

    def container_exec_sync(self, ctx: OpContext, args: rt.ExecSync) -> rt.ExecResult:
        return containers.exec_sync(self.layout, self.runtimes, ctx, args)

    def container_reopen_log(self, ctx: OpContext, args: rt.Ref) -> Empty:
        containers.reopen_log(self.layout, ctx, args)
        return Empty()

    def container_update(self, ctx: OpContext, args: rt.ContainerUpdate) -> Empty:
        update.update(self.layout, self.runtimes, ctx, args)
        return Empty()

    def sandbox_update(self, ctx: OpContext, args: rt.SandboxUpdate) -> Empty:
        update.update_sandbox(self.layout, self.runtimes, ctx, args)
        return Empty()

    def exec_plan(self, ctx: OpContext, args: rt.StreamRequest) -> ExecPlan:
        return streaming.exec_plan(self.layout, self.runtimes, args)

    def attach_plan(self, ctx: OpContext, args: rt.StreamRequest) -> AttachPlan:
        return streaming.attach_plan(self.layout, args)

    def port_forward_plan(self, ctx: OpContext, args: rt.Ref) -> PortForwardPlan:
        return streaming.port_forward_plan(self.layout, args)

    def container_stats(self, ctx: OpContext, args: StatsQuery) -> ContainerSamples:
        return stats.container_samples(self.layout, self.runtimes.cgroups, ctx, args)

    def sandbox_stats(self, ctx: OpContext, args: StatsQuery) -> PodSamples:
        return stats.pod_samples(self.layout, self.runtimes.cgroups, ctx, args)

    def reconcile(self, ctx: OpContext, args: Empty) -> rt.Reconciled:
        return reconcile.reconcile(self.layout, self.runtimes, ctx)

    def changes_since(self, ctx: OpContext, args: rt.ChangesSince) -> rt.Changes:
        """The change feed: one answer holds every event with the statuses
        the kubelet reads from it, so an event costs no further bus call.
        A container's STOPPED comes from its exit file (conmon sees every
        exit) and from the op that stopped or removed it; the supervisor's
        hub sends it once."""
        entries = self.journal.since(args.cursor, set(args.recent), args.wait, ctx.deadline,
                                     ctx.check)
        answered, events, later = [], [], False
        # Each pod's statuses are read once per answer, not once per change:
        # a drain answers many changes of one pod at once.
        pods: dict[str, _Pod | None] = {}
        for entry in entries:
            try:
                event = self._event(entry, pods)
            except Exception:
                # One unreadable record must not stall the feed for all.
                log.exception("No event for the change %s", entry.key)
                event = None
            if event is _LATER:
                # Left for a later poll, which finds it again in its
                # look-back.
                later = True
                continue
            answered.append(entry)
            if event is not None:
                events.append(event.SerializeToString())
        if later and not answered:
            time.sleep(changes.POLL_INTERVAL)  # not a busy loop of polls meanwhile
        cursor = max([args.cursor, *(e.stamp for e in answered)])
        return rt.Changes(cursor=cursor, keys=[e.key for e in answered], events=events)

    def _event(self, entry: Entry, pods: dict[str, _Pod | None]
               ) -> api.ContainerEventResponse | None:
        sandbox_id = entry.sandbox_id
        if not sandbox_id:
            try:
                record = containers.load(self.layout, entry.object_id)
            except NotFound:
                # Removed since it exited, or an infra container's exit
                # (its pod reports its own STOPPED).
                sandbox_id = self.journal.deleted_from(entry.object_id) or ""
                if sandbox_id in ("", entry.object_id):
                    return None
            else:
                if (entry.change is Change.STOPPED and record["state"] == containers.CREATED
                        and time.time_ns() - entry.stamp < START_WINDOW_NS):
                    # Exited before its start was recorded (and noted):
                    # its STARTED must go first.
                    return _LATER
                sandbox_id = record["sandbox_id"]
        event = api.ContainerEventResponse(
            container_id=entry.object_id, container_event_type=_EVENT_TYPES[entry.change],
            created_at=entry.stamp)
        if sandbox_id not in pods:
            pods[sandbox_id] = self._pod_now(sandbox_id)
        pod = pods[sandbox_id]
        if pod is not None:  # None: the pod is gone (its DELETED, or a member's after it)
            event.pod_sandbox_status.CopyFrom(pod.status)
            event.containers_statuses.extend(pod.containers)
        return event

    def _pod_now(self, sandbox_id: str) -> _Pod | None:
        try:
            record = sandbox.load(self.layout, sandbox_id)
        except NotFound:
            return None
        return _Pod(sandbox.cri_status(record),
                    [api.ContainerStatus.FromString(status)
                     for status in containers.pod_statuses(self.layout, sandbox_id)])


@dataclass(frozen=True)
class _Pod:
    """A pod's statuses as its events carry them."""

    status: api.PodSandboxStatus
    containers: list[api.ContainerStatus]


# How long an exit of a container not yet recorded as running is held
# back for its STARTED (a start still in flight); after that it is answered
# (a created container stopped, or one whose start failed).
START_WINDOW_NS = 2_000_000_000
# What ``_event`` answers for a change that must wait for another.
_LATER = api.ContainerEventResponse()

_EVENT_TYPES = {
    Change.CREATED: api.CONTAINER_CREATED_EVENT, Change.STARTED: api.CONTAINER_STARTED_EVENT,
    Change.STOPPED: api.CONTAINER_STOPPED_EVENT, Change.DELETED: api.CONTAINER_DELETED_EVENT,
}


def build(settings: Mapping[str, Any]) -> OpTable:
    """The op table of one runtime worker (workers/cli.py calls it once)."""
    return RuntimeService.from_settings(settings).ops()
