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
from collections.abc import Callable, Mapping
from typing import Any

from ...proto.errors import FailedPrecondition, InvalidArgument, NotFound, shorten
from ...proto.limits import check_path
from ...proto.naming import sandbox_name
from ..base import OpContext
from . import cgroups, ids, infra, names, podfiles, podns
from .handlers import Runtimes
from .layout import Layout

log = logging.getLogger(__name__)

# CRI NamespaceMode values.
POD, CONTAINER, NODE, TARGET = "POD", "CONTAINER", "NODE", "TARGET"
READY, NOTREADY, CREATING = "ready", "notready", "creating"
# What a pod's hostname may be: an RFC 1123 host name (dot-separated
# labels of letters, digits and '-', each starting and ending with a letter
# or digit, which is also what hostname(1) accepts) of at most the kernel's
# HOST_NAME_MAX, 64: with setHostnameAsFQDN the kubelet sends the pod's
# FQDN, which it allows up to that. Each label has at most 63 (RFC 1123),
# and so has a name the kubelet derives from the pod's (HOSTNAME_DERIVED).
HOSTNAME_MAX = 64
HOSTNAME_DERIVED = 63
HOSTNAME = re.compile(r"(?=.{1,64}\Z)(?!.*[^.]{64})[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                      r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*")
# How long a removed pod's monitors get to leave its cgroups.
DRAIN_TIMEOUT = 5.0


def namespace_options(config: Mapping[str, Any]) -> dict[str, str]:
    """The pod's namespace modes, with the proto's defaults (POD) filled in."""
    opts = config.get("linux", {}).get("security_context", {}).get("namespace_options", {})
    return {kind: opts.get(kind, POD) for kind in ("network", "pid", "ipc")}


def load(layout: Layout, sandbox_id: str) -> dict[str, Any]:
    return ids.load(layout.sandboxes, sandbox_id, "pod sandbox")


def resolve_id(layout: Layout, prefix: str) -> str:
    return ids.resolve(layout.sandboxes, prefix, "pod sandbox", "pod_sandbox_id")


def reserve(layout: Layout, runtimes: Runtimes, pause_image: str, ctx: OpContext,
            args: dict[str, Any]) -> dict[str, Any]:
    """Reserve the pod's name and write its ``creating`` record."""
    config = args["config"]
    sandbox_id = args["id"]
    handler = runtimes.resolve(args.get("runtime_handler", ""))
    name = sandbox_name(config.get("metadata", {}))
    modes = namespace_options(config)
    # Both are refused before anything exists, so a refusal leaves nothing.
    pod_hostname(config, modes["network"] == NODE)
    check_log_path("log_directory", config.get("log_directory", ""), absolute=True)
    if modes["network"] == TARGET or modes["ipc"] == TARGET:
        raise InvalidArgument("namespace mode TARGET applies to pid only")
    with layout.name_lock(name, "pod", ctx.deadline):
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
    pause = pause_image if modes["pid"] == POD else ""
    return {"id": sandbox_id, "name": name, "runtime_handler": handler, "pause_image": pause}


def pod_hostname(config: Mapping[str, Any], host_network: bool) -> str:
    """The pod's hostname: the CRI's; else the node's for a host-network pod;
    else the pod's name as the kubelet derives it (truncatePodHostnameIfNeeded):
    cut to 63 characters, less the trailing '-' and '.' a cut may leave
    (stripped here even without a cut, where they are as invalid)."""
    given: str = config.get("hostname", "")
    if given:
        if not HOSTNAME.fullmatch(given):
            raise InvalidArgument(f"hostname {shorten(given)} is not a valid host name: at most "
                                  f"{HOSTNAME_MAX} letters, digits, '-' and '.', each label "
                                  f"of at most {HOSTNAME_DERIVED}, starting and ending with a "
                                  "letter or digit")
        return given
    if host_network:
        return socket.gethostname()[:HOSTNAME_MAX]
    name: str = config.get("metadata", {}).get("name", "")
    derived = name[:HOSTNAME_DERIVED].rstrip("-.")
    if not HOSTNAME.fullmatch(derived):
        raise InvalidArgument(f"hostname is empty and the pod name {shorten(name)} does not make "
                              "a valid host name (letters, digits, '-' and '.', each label "
                              "starting and ending with a letter or digit); set hostname")
    return derived


def check_log_path(field: str, value: str, *, absolute: bool = False) -> None:
    """Refuse a log path (``log_directory``, a container's ``log_path``)
    that could lead conmon's writes, as root, out of where it names, or that
    the kernel could not open. ``absolute``: it must be absolute when set,
    as the kubelet's log_directory always is (/var/log/pods/<ns>_<name>_<uid>)."""
    check_path(field, value)
    if absolute and value and not value.startswith("/"):
        raise InvalidArgument(f"{field} {shorten(value)} is not an absolute path")
    if ".." in value.split("/"):
        raise InvalidArgument(f"{field} {shorten(value)} must not contain '..'")


def start(layout: Layout, runtimes: Runtimes, ctx: OpContext,
          args: dict[str, Any]) -> dict[str, Any]:
    """Set up everything of the pod that is the runtime's: namespaces, files,
    cgroup, infra; mark it ready. ``netns_path`` and ``ips`` come from the
    net pool (absent for host-network pods)."""
    sandbox_id = args["id"]
    with layout.pod_lock(sandbox_id, ctx.deadline):
        record = load(layout, sandbox_id)
        if record["state"] != CREATING:
            return status_of(record)
        config = record["config"]
        modes = record["modes"]
        host_network = record["host_network"]
        pod_dir = layout.pod_dir(sandbox_id)
        hostname = pod_hostname(config, host_network)
        record["hostname"] = hostname
        record["netns_path"] = args.get("netns_path") or None
        record["ips"] = list(args.get("ips") or [])
        # Save after each step that creates something, so a crash in the next
        # step leaves a record that names everything to undo.
        record["cgroup_parent"] = cgroups.pod_parent(
            config.get("linux", {}).get("cgroup_parent", ""), sandbox_id,
            runtimes.cgroup_manager)
        # Named before any directory is made: remove() releases the
        # parent's cgroups whatever instant a crash cuts ensure() short.
        layout.sandboxes.save(sandbox_id, record)
        cgroups.ensure(record["cgroup_parent"], sandbox_id, layout.cgroups, ctx.deadline)
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
            record["infra"] = infra.start(
                ctx, layout, runtimes.handlers[record["runtime_handler"]],
                runtimes.cgroup_manager, record, args.get("infra_image"))
        record["state"] = READY
        layout.sandboxes.save(sandbox_id, record)
        log.info("Pod sandbox %s (%s) is ready", sandbox_id, record["name"])
        return status_of(record)


def stop(layout: Layout, runtimes: Runtimes, ctx: OpContext,
         args: dict[str, Any]) -> dict[str, Any]:
    """Stop the pod's infra and release what a stopped pod no longer needs.

    The supervisor stops the containers (and the network) around this op.
    """
    try:
        sandbox_id = resolve_id(layout, args["id"])
    except NotFound:
        return {"found": False}  # CRI: stopping an absent sandbox succeeds
    with layout.pod_lock(sandbox_id, ctx.deadline):
        record = load(layout, sandbox_id)
        if record.get("infra"):
            infra.stop(ctx, layout, runtimes.handlers[record["runtime_handler"]], record)
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


def remove(layout: Layout, runtimes: Runtimes, ctx: OpContext,
           args: dict[str, Any]) -> dict[str, Any]:
    """Remove a stopped pod's namespaces, files, cgroups, record and name."""
    try:
        sandbox_id = resolve_id(layout, args["id"])
    except NotFound:
        return {"found": False}  # CRI: removing an absent sandbox succeeds
    with layout.pod_lock(sandbox_id, ctx.deadline) as held:
        record = load(layout, sandbox_id)
        left = ids.members(layout.containers, sandbox_id)
        if left:
            raise FailedPrecondition(f"pod sandbox {sandbox_id} still has containers "
                                     f"{', '.join(left)}")
        if record.get("infra"):
            handler = runtimes.handlers[record["runtime_handler"]]
            infra.stop(ctx, layout, handler, record)
            infra.remove(ctx, layout, handler, record)
        pod_dir = layout.pod_dir(sandbox_id)
        podfiles.unmount_shm(pod_dir)
        podns.unpin(f"{pod_dir}/ns")
        parent = record.get("cgroup_parent")
        if parent:
            if not cgroups.drain(parent, min(ctx.deadline, time.monotonic() + DRAIN_TIMEOUT),
                                 _own_processes(layout, sandbox_id, parent)):
                log.warning("Pod sandbox %s: processes left in %s", sandbox_id, parent)
            cgroups.release(parent, sandbox_id, layout.cgroups, ctx.deadline)
        shutil.rmtree(pod_dir, ignore_errors=True)
        layout.sandboxes.delete(sandbox_id)
        with layout.name_lock(record["name"], "pod", ctx.deadline):
            names.release(layout.names_dir, record["name"], sandbox_id)
        log.info("Pod sandbox %s removed", sandbox_id)
        held.release(unlink=True)  # the lock file goes with its pod
    return {"found": True, "id": sandbox_id, "netns_path": record.get("netns_path")}


def _own_processes(layout: Layout, sandbox_id: str,
                   parent: str) -> Callable[[str | None], bool]:
    """Which processes of the pod's cgroups, by the object they belong to,
    the removal of ``sandbox_id`` waits for and kills.

    The kubelet gives every sandbox of one pod the same cgroup_parent and
    removes an old one while the newest runs, so only these: the sandbox's
    own (its infra's), and those of objects on no record any more (its
    removed containers' monitors on their way out). A process no object
    claims is the sandbox's only while no other sandbox has its parent.
    """
    shared = _parent_shared(layout, sandbox_id, parent)
    decided: dict[str, bool] = {}

    def ours(owner: str | None) -> bool:
        if owner is None:
            return not shared
        if owner not in decided:
            # Asked once per drain: an object on record now has its own
            # removal to end its processes should it go meanwhile.
            decided[owner] = owner == sandbox_id or not layout.on_record(owner)
        return decided[owner]
    return ours


def _parent_shared(layout: Layout, sandbox_id: str, parent: str) -> bool:
    """Does another sandbox on record (being created ones included) have
    ``parent`` as its cgroup parent?"""
    target = cgroups.chain(parent)
    for other in layout.sandboxes.ids():
        if other == sandbox_id:
            continue
        try:
            record = layout.sandboxes.load(other)
        except ValueError:
            return True  # unreadable: it may well be this pod's
        if record is None:
            continue
        # Started ones have it resolved; being created ones still as asked.
        theirs = record.get("cgroup_parent") or \
            record["config"].get("linux", {}).get("cgroup_parent", "")
        if cgroups.chain(str(theirs)) == target:
            return True
    return False


def status(layout: Layout, ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
    return status_of(load(layout, resolve_id(layout, args["id"])))


def list_sandboxes(layout: Layout, ctx: OpContext,
                   args: dict[str, Any]) -> list[dict[str, Any]]:
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

