"""Start-up reconcile of the runtime pool: make the records true again.

Run once by the supervisor before it serves CRI calls. What it does:

- records written by an older build are brought to this build's form
  first (configs.upgrade), so no op ever meets one;
- a sandbox or container still ``creating`` was being made when some
  process died: everything it may have made is undone (runtime state,
  monitor, bundle, namespaces, cgroups, files, record, name);
- a ready sandbox whose volatile dir is gone (the node rebooted) is marked
  not ready: its namespaces and infra are gone;
- cgroup directories podvisor made are matched to the pods that remain
  (pods.reconcile): those of no pod go, as long as no process is in
  them;
- name reservations whose owner has no record, and lock files nobody
  holds, are what killed workers left: they go too;
- containers need nothing: their state is computed from conmon's exit
  files on every read, so one that exited while podvisor was down already
  shows its exit code, and one whose monitor vanished shows "Unknown".

It answers the ids that live on, so the supervisor can tell the net and
storage pools what to keep.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from google.protobuf.message import Message

from ...proto import api_pb2 as api
from ...proto import runtime_ops as ops
from ...proto.errors import BusError
from ..base import OpContext
from ..locks import sweep
from ..records import RecordCorrupt, RecordDir
from . import configs, containers, ids, names, sandbox
from .cgroup import pods
from .handlers import Runtimes
from .layout import Layout

log = logging.getLogger(__name__)


def reconcile(layout: Layout, runtimes: Runtimes, ctx: OpContext) -> ops.Reconciled:
    for records in (layout.sandboxes, layout.containers):
        records.remove_stale_temps(older_than=0)
    _upgrade(layout.sandboxes, api.PodSandboxConfig)
    _upgrade(layout.containers, api.ContainerConfig)
    removed_containers = []
    for container_id in layout.containers.ids():
        record = layout.containers.load(container_id)
        if record is not None and record["state"] == containers.CREATING:
            log.warning("Removing container %s left half-created", container_id)
            _try(containers.remove, layout, runtimes, ctx, container_id)
            removed_containers.append(container_id)
    removed_sandboxes = []
    for sandbox_id in layout.sandboxes.ids():
        record = layout.sandboxes.load(sandbox_id)
        if record is None:
            continue
        if record["state"] == sandbox.CREATING:
            log.warning("Removing pod sandbox %s left half-created", sandbox_id)
            for container_id in ids.members(layout.containers, sandbox_id):
                _try(containers.remove, layout, runtimes, ctx, container_id)
                removed_containers.append(container_id)
            _try(sandbox.stop, layout, runtimes, ctx, sandbox_id)
            _try(sandbox.remove, layout, runtimes, ctx, sandbox_id)
            removed_sandboxes.append(sandbox_id)
        elif record["state"] == sandbox.READY and not os.path.isdir(
                layout.pod_dir(sandbox_id)):
            log.warning("Pod sandbox %s lost its namespaces (reboot?); marking it not ready",
                        sandbox_id)
            record["state"] = sandbox.NOTREADY
            layout.sandboxes.save(sandbox_id, record)
    # Only now: the removals above release what their pods held.
    layout.cgroups.records.remove_stale_temps(older_than=0)
    live = {sandbox_id: str((_load(layout, sandbox_id) or {}).get("cgroup_parent") or "")
            for sandbox_id in layout.sandboxes.ids()}
    # Before the reconcile, which then treats what it imports as its own.
    pods.import_ledger(layout.legacy_cgroup_ledger, layout.cgroups, live, ctx.deadline)
    removed_cgroups = pods.reconcile(runtimes.cgroups, layout.cgroups, live, ctx.deadline)
    dropped_names = names.drop_dead(layout.names_dir, layout.on_record)
    swept = sweep(layout.locks_dir)
    if removed_cgroups or dropped_names or swept:
        log.warning("Removed cgroups of no pod %s, dead name reservations %s and %d stale "
                    "lock files", removed_cgroups, dropped_names, len(swept))
    return ops.Reconciled(
        sandboxes=layout.sandboxes.ids(), containers=layout.containers.ids(),
        removed_sandboxes=removed_sandboxes, removed_containers=removed_containers,
        removed_cgroups=removed_cgroups)


def _upgrade(records: RecordDir, kind: type[Message]) -> None:
    """Bring the records an older build wrote to this build's form. No op
    runs yet (the supervisor serves no CRI call before the reconcile), so
    nothing else writes them meanwhile."""
    upgraded = []
    for object_id in records.ids():
        try:
            record = records.load(object_id)
            if record is not None and configs.upgrade(record, kind):
                records.save(object_id, record)
                upgraded.append(object_id)
        except (RecordCorrupt, ValueError) as exc:
            # The record stays as it is, and ops on it fail naming it,
            # rather than the whole start failing.
            log.error("Cannot upgrade the record of %s: %s", object_id, exc)
    if upgraded:
        log.info("Upgraded %d records of %s to the serialized-config form", len(upgraded),
                 records.path)


def _load(layout: Layout, sandbox_id: str) -> dict[str, Any] | None:
    try:
        return layout.sandboxes.load(sandbox_id)
    except RecordCorrupt:
        return None


def _try(op: Callable[[Layout, Runtimes, OpContext, ops.Ref], object],
         layout: Layout, runtimes: Runtimes, ctx: OpContext, object_id: str) -> None:
    try:
        op(layout, runtimes, ctx, ops.Ref(id=object_id))
    except BusError as exc:
        log.error("Reconcile could not clean %s: %s", object_id, exc.message)
