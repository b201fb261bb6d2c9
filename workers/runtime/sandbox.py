"""Pod sandbox ops of the runtime pool.

A sandbox moves ``creating -> ready -> notready`` and is then removed.
``creating`` is written first (with the name reservation), so a crash at any
later point leaves a record the start-up reconcile recognises as half-done.

Each op takes the sandbox's lock (a flock under the run dir), so two
workers never change one sandbox at once while different pods proceed in
parallel. The supervisor orchestrates the steps that belong to other
pools (network setup and teardown, container rootfs removal) around these
ops; nothing here talks to another pool.

Idempotence (CRI): StopPodSandbox and RemovePodSandbox of an absent sandbox
succeed; stopping twice or removing twice is a no-op.
"""

from __future__ import annotations

import logging
import re
import shutil
import socket
import time
from collections.abc import Mapping
from typing import Any

from ...proto.errors import FailedPrecondition, InvalidArgument, NotFound
from ...proto.naming import sandbox_name
from ..base import OpContext
from ..locks import locked
from . import cgroups, ids, infra, names, podfiles, podns
from .layout import Layout

log = logging.getLogger(__name__)

# CRI NamespaceMode values.
POD, CONTAINER, NODE, TARGET = "POD", "CONTAINER", "NODE", "TARGET"
READY, NOTREADY, CREATING = "ready", "notready", "creating"
# RFC 1123 host name labels: what a pod's hostname may be.
HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,61}[A-Za-z0-9])?")
# How long a removed pod's monitors get to leave its cgroups.
DRAIN_TIMEOUT = 5.0


def namespace_options(config: Mapping[str, Any]) -> dict[str, str]:
    """The pod's namespace modes, with the proto's defaults (POD) filled in."""
    opts = config.get("linux", {}).get("security_context", {}).get("namespace_options", {})
    return {kind: opts.get(kind, POD) for kind in ("network", "pid", "ipc")}


def handler_of(settings: Mapping[str, Any], requested: str) -> str:
    runtimes = settings["runtime"]["runtimes"]
    name = requested or settings["runtime"]["default_runtime"]
    if name not in runtimes:
        raise InvalidArgument(f"unknown runtime handler {name!r}; this node has "
                              f"{', '.join(sorted(runtimes))}")
    return name


def load(layout: Layout, sandbox_id: str) -> dict[str, Any]:
    return ids.load(layout.sandboxes, sandbox_id, "pod sandbox")


def resolve_id(layout: Layout, prefix: str) -> str:
    return ids.resolve(layout.sandboxes, prefix, "pod sandbox", "pod_sandbox_id")


def reserve(ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
    """Reserve the pod's name and write its ``creating`` record."""
    layout = Layout.from_settings(ctx.settings)
    config = args["config"]
    sandbox_id = args["id"]
    handler = handler_of(ctx.settings, args.get("runtime_handler", ""))
    name = sandbox_name(config.get("metadata", {}))
    modes = namespace_options(config)
    hostname = config.get("hostname", "")
    if hostname and not HOSTNAME.fullmatch(hostname):
        raise InvalidArgument(f"hostname {hostname[:80]!r} is not a valid host name")
    if modes["network"] == TARGET or modes["ipc"] == TARGET:
        raise InvalidArgument("namespace mode TARGET applies to pid only")
    with locked(layout.locks_dir, f"name-{name}", ctx.deadline, f"pod name {name}"):
        names.reserve(layout.names_dir, name, sandbox_id, "pod sandbox",
                      lambda other: layout.sandboxes.load(other) is not None)
        if layout.sandboxes.load(sandbox_id) is None:
            layout.sandboxes.save(sandbox_id, {
                "id": sandbox_id, "name": name, "state": CREATING,
                "created_at": time.time_ns(), "config": config, "runtime_handler": handler,
                "host_network": modes["network"] == NODE, "modes": modes,
            })
    # A configured pause image serves pods that need an infra process; the
    # supervisor pulls it and has the storage pool mount its rootfs.
    pause = ctx.settings["image"]["pause_image"] if modes["pid"] == POD else ""
    return {"id": sandbox_id, "name": name, "runtime_handler": handler, "pause_image": pause}


def start(ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
    """Set up everything of the pod that is the runtime's: namespaces, files,
    cgroup, infra; mark it ready. ``netns_path`` and ``ips`` come from the
    net pool (absent for host-network pods)."""
    layout = Layout.from_settings(ctx.settings)
    sandbox_id = args["id"]
    with locked(layout.locks_dir, sandbox_id, ctx.deadline, f"pod sandbox {sandbox_id}"):
        record = load(layout, sandbox_id)
        if record["state"] != CREATING:
            return status_of(record)
        config = record["config"]
        modes = record["modes"]
        host_network = record["host_network"]
        pod_dir = layout.pod_dir(sandbox_id)
        hostname = config.get("hostname") or (
            socket.gethostname() if host_network else config["metadata"]["name"])[:63]
        record["hostname"] = hostname
        record["netns_path"] = args.get("netns_path") or None
        record["ips"] = list(args.get("ips") or [])
        # Save after each step that creates something, so a crash in the next
        # step leaves a record that names everything to undo.
        record["cgroup_parent"] = cgroups.pod_parent(
            config.get("linux", {}).get("cgroup_parent", ""), sandbox_id,
            ctx.settings["runtime"]["cgroup_manager"])
        record["cgroups_created"] = cgroups.ensure(record["cgroup_parent"],
                                                   layout.cgroup_ledger)
        layout.sandboxes.save(sandbox_id, record)
        ctx.check()
        record["ns"] = podns.pin(f"{pod_dir}/ns", hostname, ipc=modes["ipc"] != NODE,
                                 uts=not host_network)
        record["shm"] = podfiles.mount_shm(pod_dir) if modes["ipc"] != NODE else None
        layout.sandboxes.save(sandbox_id, record)
        ctx.check()
        record["files"] = podfiles.write(pod_dir, hostname, config.get("dns_config"),
                                         record["ips"])
        if modes["pid"] == POD:
            # Recorded before the start, so a failure or a crash inside it
            # leaves a record whose stop/remove also delete the infra.
            record["infra"] = {"id": sandbox_id}
            layout.sandboxes.save(sandbox_id, record)
            record["infra"] = infra.start(ctx, layout, record, args.get("infra_image"))
        record["state"] = READY
        layout.sandboxes.save(sandbox_id, record)
        log.info("Pod sandbox %s (%s) is ready", sandbox_id, record["name"])
        return status_of(record)


def stop(ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
    """Stop the pod's infra and release what a stopped pod no longer needs.

    The supervisor stops the containers (and the network) around this op.
    """
    layout = Layout.from_settings(ctx.settings)
    try:
        sandbox_id = resolve_id(layout, args["id"])
    except NotFound:
        return {"found": False}  # CRI: stopping an absent sandbox succeeds
    with locked(layout.locks_dir, sandbox_id, ctx.deadline, f"pod sandbox {sandbox_id}"):
        record = load(layout, sandbox_id)
        if record.get("infra"):
            infra.stop(ctx, layout, record)
        pod_dir = layout.pod_dir(sandbox_id)
        podfiles.unmount_shm(pod_dir)
        stopped = record["state"] != NOTREADY
        if stopped:
            record["state"] = NOTREADY
            record["stopped_at"] = time.time_ns()
            # The supervisor tears the network down next: no address is held.
            record["ips"] = []
            layout.sandboxes.save(sandbox_id, record)
            log.info("Pod sandbox %s stopped", sandbox_id)
    return {"found": True, "id": sandbox_id, "stopped": stopped}


def remove(ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
    """Remove a stopped pod's namespaces, files, cgroups, record and name."""
    layout = Layout.from_settings(ctx.settings)
    try:
        sandbox_id = resolve_id(layout, args["id"])
    except NotFound:
        return {"found": False}  # CRI: removing an absent sandbox succeeds
    with locked(layout.locks_dir, sandbox_id, ctx.deadline,
                f"pod sandbox {sandbox_id}") as held:
        record = load(layout, sandbox_id)
        left = ids.members(layout.containers, sandbox_id)
        if left:
            raise FailedPrecondition(f"pod sandbox {sandbox_id} still has containers "
                                     f"{', '.join(left)}")
        if record.get("infra"):
            infra.stop(ctx, layout, record)
            infra.remove(ctx, layout, record)
        pod_dir = layout.pod_dir(sandbox_id)
        podfiles.unmount_shm(pod_dir)
        podns.unpin(f"{pod_dir}/ns")
        if record.get("cgroup_parent") and not cgroups.drain(
                record["cgroup_parent"], min(ctx.deadline, time.monotonic() + DRAIN_TIMEOUT)):
            log.warning("Pod sandbox %s: processes left in %s", sandbox_id,
                        record["cgroup_parent"])
        cgroups.prune(layout.cgroup_ledger)
        shutil.rmtree(pod_dir, ignore_errors=True)
        layout.sandboxes.delete(sandbox_id)
        names.release(layout.names_dir, record["name"], sandbox_id)
        log.info("Pod sandbox %s removed", sandbox_id)
        held.release(unlink=True)  # the lock file goes with its pod
    return {"found": True, "id": sandbox_id, "netns_path": record.get("netns_path")}


def status(ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
    layout = Layout.from_settings(ctx.settings)
    return status_of(load(layout, resolve_id(layout, args["id"])))


def list_sandboxes(ctx: OpContext, args: dict[str, Any]) -> list[dict[str, Any]]:
    layout = Layout.from_settings(ctx.settings)
    out = []
    for sandbox_id in layout.sandboxes.ids():
        record = layout.sandboxes.load(sandbox_id)
        if record is not None and record["state"] != CREATING:
            out.append(status_of(record))
    return out


def status_of(record: Mapping[str, Any]) -> dict[str, Any]:
    """What the supervisor needs to answer PodSandboxStatus and ListPodSandbox."""
    return {
        "id": record["id"], "name": record["name"], "state": record["state"],
        "created_at": record["created_at"], "config": record["config"],
        "runtime_handler": record["runtime_handler"], "host_network": record["host_network"],
        "modes": record["modes"], "netns_path": record.get("netns_path"),
        "ips": record.get("ips", []), "hostname": record.get("hostname", ""),
        "cgroup_parent": record.get("cgroup_parent", ""),
        "infra": record.get("infra"), "ns": record.get("ns", {}), "shm": record.get("shm"),
        "files": record.get("files", {}),
    }

