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

import json
import logging
import os
import re
import shutil
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

from ...proto import api_pb2 as api
from ...proto import runtime_ops as ops
from ...proto.errors import FailedPrecondition, Internal, InvalidArgument, NotFound, shorten
from ...proto.limits import check_path
from ...proto.naming import sandbox_name
from ..base import OpContext
from . import (
    configs,
    ids,
    infra,
    names,
    podfiles,
    podns,
    spec_seccomp,
    spec_security,
    usernsprobe,
)
from .cgroup import pods
from .cgroup.driver import Driver
from .handlers import Runtimes
from .layout import Layout
from .spec_context import apparmor_enabled, selinux_enabled
from .spec_namespaces import pod_idmap

log = logging.getLogger(__name__)

# CRI NamespaceMode values.
POD, CONTAINER, NODE, TARGET = "POD", "CONTAINER", "NODE", "TARGET"
READY, NOTREADY, CREATING = "ready", "notready", "creating"
# In a ``creating`` record: prepare() has run (namespaces, cgroup, infra).
PREPARED = "prepared"
CRI_STATES = {READY: api.SANDBOX_READY, NOTREADY: api.SANDBOX_NOTREADY}
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


def namespace_options(config: api.PodSandboxConfig) -> dict[str, str]:
    """The pod's namespace modes by their CRI names (POD, the proto's
    default, when unset), as the record keeps them."""
    opts = config.linux.security_context.namespace_options
    modes = {}
    for kind in ("network", "pid", "ipc"):
        mode = getattr(opts, kind)
        if mode not in api.NamespaceMode.values():
            raise InvalidArgument(f"namespace_options.{kind}: unknown value {mode}")
        modes[kind] = api.NamespaceMode.Name(mode)
    return modes


def load(layout: Layout, sandbox_id: str) -> dict[str, Any]:
    return ids.load(layout.sandboxes, sandbox_id, "pod sandbox")


def resolve_id(layout: Layout, prefix: str) -> str:
    return ids.resolve(layout.sandboxes, prefix, "pod sandbox", "pod_sandbox_id")


def reserve(layout: Layout, runtimes: Runtimes, pause_image: str, ctx: OpContext,
            args: ops.SandboxReserve) -> ops.SandboxReserved:
    """Reserve the pod's name and write its ``creating`` record."""
    config = configs.parse(api.PodSandboxConfig, args.config, "config")
    sandbox_id = args.id
    ids.check_new(sandbox_id)
    handler = runtimes.resolve(args.runtime_handler)
    name = sandbox_name(config.metadata)
    modes = namespace_options(config)
    host_network = modes["network"] == NODE
    # Both are refused before anything exists, so a refusal leaves nothing.
    pod_hostname(config, host_network)
    check_log_path("log_directory", config.log_directory, absolute=True)
    if modes["network"] == TARGET or modes["ipc"] == TARGET:
        raise InvalidArgument("namespace mode TARGET applies to pid only")
    _check_security(config.linux.security_context)
    idmap = pod_idmap(config.linux.security_context.namespace_options, "pod sandbox")
    if idmap is not None:
        # The kubelet never sends these (hostUsers: false excludes them):
        # a user namespace cannot own the node's namespaces.
        shared = [kind for kind in ("network", "pid", "ipc") if modes[kind] == NODE]
        if shared:
            raise InvalidArgument(f"pod sandbox: a pod with its own user namespace cannot share "
                                  f"the node's {', '.join(shared)} namespace")
        why = usernsprobe.problem(layout)
        if why is not None:
            raise FailedPrecondition(f"pod sandbox: this node cannot run pods with their own "
                                     f"user namespace: {shorten(why, 300)}")
    with layout.name_lock(name, "pod", ctx.deadline):
        names.reserve(layout.names_dir, name, sandbox_id, "pod sandbox",
                      lambda other: layout.sandboxes.load(other) is not None)
        if layout.sandboxes.load(sandbox_id) is None:
            layout.sandboxes.save(sandbox_id, {
                "id": sandbox_id, "name": name, "state": CREATING,
                "created_at": time.time_ns(), configs.FIELD: configs.stored(args.config),
                "runtime_handler": handler, "host_network": host_network, "modes": modes,
                "idmap": None if idmap is None else podns.idmap_record(idmap),
            })
    userns_path = ""
    if idmap is not None:
        # After the record, so a failure here leaves one whose removal
        # unpins it; made here because the net pool needs it next.
        with layout.pod_lock(sandbox_id, ctx.deadline):
            userns_path = podns.pin_userns(f"{layout.pod_dir(sandbox_id)}/ns", idmap)
    # A configured pause image serves pods that need an infra process; the
    # supervisor pulls it and has the storage pool mount its rootfs.
    pause = pause_image if modes["pid"] == POD else ""
    return ops.SandboxReserved(id=sandbox_id, name=name, runtime_handler=handler,
                               host_network=host_network, pause_image=pause,
                               userns_path=userns_path, idmap=idmap)


def _check_security(sc: api.LinuxSandboxSecurityContext) -> None:
    """Refuse, before anything exists, the pod-level profiles this node
    cannot apply (a missing seccomp file, an LSM it does not run); the
    infra spec applies them, and each container asks again for its own."""
    pod_sc = spec_security.pod_security(sc)
    spec_seccomp.seccomp(pod_sc, frozenset(), sc.privileged)
    spec_security.apparmor_profile(pod_sc, sc.privileged, apparmor_enabled())
    spec_security.check_selinux(pod_sc.selinux_options, selinux_enabled(), "pod sandbox")


def pod_hostname(config: api.PodSandboxConfig, host_network: bool) -> str:
    """The pod's hostname: the CRI's; else the node's for a host-network pod;
    else the pod's name as the kubelet derives it (truncatePodHostnameIfNeeded):
    cut to 63 characters, less the trailing '-' and '.' a cut may leave
    (stripped here even without a cut, where they are as invalid)."""
    given = config.hostname
    if given:
        if not HOSTNAME.fullmatch(given):
            raise InvalidArgument(f"hostname {shorten(given)} is not a valid host name: at most "
                                  f"{HOSTNAME_MAX} letters, digits, '-' and '.', each label "
                                  f"of at most {HOSTNAME_DERIVED}, starting and ending with a "
                                  "letter or digit")
        return given
    if host_network:
        return socket.gethostname()[:HOSTNAME_MAX]
    name = config.metadata.name
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


def prepare(layout: Layout, runtimes: Runtimes, ctx: OpContext,
            args: ops.SandboxPrepare) -> None:
    """What of ``start`` needs no addresses (namespaces, cgroup, infra), in
    the network namespace the net pool made; the pod stays ``creating``."""
    with layout.pod_lock(args.id, ctx.deadline):
        record = load(layout, args.id)
        if record["state"] != CREATING or record.get(PREPARED):
            return
        _prepare(layout, runtimes, ctx, record, args.netns_path, args.infra_image)
        # The infra's pid and the mark, for start and for stop/remove.
        layout.sandboxes.save(args.id, record)


def start(layout: Layout, runtimes: Runtimes, ctx: OpContext, args: ops.SandboxStart) -> None:
    """Set up everything of the pod that is the runtime's: namespaces, files,
    cgroup, infra; mark it ready. ``netns_path`` and ``ips`` come from the
    net pool (absent for host-network pods). Of a pod ``prepare`` served,
    only the files and addresses are left."""
    sandbox_id = args.id
    with layout.pod_lock(sandbox_id, ctx.deadline):
        record = load(layout, sandbox_id)
        if record["state"] != CREATING:
            return
        if not record.get(PREPARED):
            _prepare(layout, runtimes, ctx, record, args.netns_path, args.infra_image)
        config = configs.sandbox_config(record)
        record["ips"] = list(args.ips)
        record["files"] = podfiles.write(
            layout.pod_dir(sandbox_id), record["hostname"],
            config.dns_config if config.HasField("dns_config") else None, record["ips"],
            podns.idmap_of(record))
        record["state"] = READY
        layout.sandboxes.save(sandbox_id, record)
        log.info("Pod sandbox %s (%s) is ready", sandbox_id, record["name"])


def _prepare(layout: Layout, runtimes: Runtimes, ctx: OpContext, record: dict[str, Any],
             netns_path: str | None, infra_image: ops.InfraImage | None) -> None:
    """Namespaces, cgroup and infra into ``record``, saved after each step
    that creates something, so a crash in the next step leaves a record
    that names everything to undo; the last step is the caller's to save."""
    sandbox_id = record["id"]
    config = configs.sandbox_config(record)
    modes = record["modes"]
    host_network = record["host_network"]
    pod_dir = layout.pod_dir(sandbox_id)
    hostname = pod_hostname(config, host_network)
    record["hostname"] = hostname
    record["netns_path"] = netns_path or None
    record["cgroup_parent"] = runtimes.cgroups.pod_parent(
        config.linux.cgroup_parent, sandbox_id)
    # Named before any directory is made: remove() releases the
    # parent's cgroups whatever instant a crash cuts ensure() short.
    layout.sandboxes.save(sandbox_id, record)
    pods.ensure(runtimes.cgroups, record["cgroup_parent"], sandbox_id, layout.cgroups,
                ctx.deadline)
    ctx.check()
    idmap = podns.idmap_of(record)
    in_userns = podns.userns_path(f"{pod_dir}/ns") if idmap else None
    if idmap:
        # runc mounts the pod's files from inside its user namespace.
        os.makedirs(pod_dir, mode=0o711, exist_ok=True)
        usernsprobe.open_up(pod_dir, layout.daemon_runroot)
    record["ns"] = podns.pin(f"{pod_dir}/ns", hostname, ipc=modes["ipc"] != NODE,
                             uts=not host_network, in_userns=in_userns)
    if in_userns:
        record["ns"]["user"] = in_userns
    record["shm"] = podfiles.mount_shm(pod_dir, idmap) if modes["ipc"] != NODE else None
    layout.sandboxes.save(sandbox_id, record)
    ctx.check()
    if modes["pid"] == POD:
        # Recorded before the start, so a failure or a crash inside it
        # leaves a record whose stop/remove also delete the infra.
        record["infra"] = {"id": sandbox_id}
        layout.sandboxes.save(sandbox_id, record)
        record["infra"] = infra.start(
            ctx, layout, runtimes.handlers[record["runtime_handler"]],
            runtimes.cgroups, record, infra_image, runtimes.zygote)
    record[PREPARED] = True


def stop(layout: Layout, runtimes: Runtimes, ctx: OpContext,
         args: ops.Ref) -> ops.SandboxStopped:
    """Stop the pod's infra and release what a stopped pod no longer needs.

    The supervisor stops the containers (and the network) around this op.
    """
    try:
        sandbox_id = resolve_id(layout, args.id)
    except NotFound:
        return ops.SandboxStopped(found=False)  # CRI: stopping an absent sandbox succeeds
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
    return ops.SandboxStopped(found=True, id=sandbox_id, stopped=stopped)


def remove(layout: Layout, runtimes: Runtimes, ctx: OpContext, args: ops.Ref) -> ops.Found:
    """Remove a stopped pod's namespaces, files, cgroups, record and name."""
    try:
        sandbox_id = resolve_id(layout, args.id)
    except NotFound:
        return ops.Found(found=False)  # CRI: removing an absent sandbox succeeds
    with layout.pod_lock(sandbox_id, ctx.deadline) as held:
        record = load(layout, sandbox_id)
        left = ids.members(layout.containers, sandbox_id)
        if left:
            raise FailedPrecondition(f"pod sandbox {sandbox_id} still has containers "
                                     f"{', '.join(left)}")
        if record.get("infra"):
            handler = runtimes.handlers[record["runtime_handler"]]
            infra.stop(ctx, layout, handler, record)
            infra.remove(ctx, layout, handler, runtimes.cgroups, record)
        pod_dir = layout.pod_dir(sandbox_id)
        podfiles.unmount_shm(pod_dir)
        podns.unpin(f"{pod_dir}/ns")
        parent = record.get("cgroup_parent")
        if parent:
            driver = runtimes.cgroups
            if not pods.drain(driver, parent, min(ctx.deadline, time.monotonic() + DRAIN_TIMEOUT),
                              _own_processes(layout, driver, sandbox_id, parent)):
                log.warning("Pod sandbox %s: processes left in %s", sandbox_id, parent)
            pods.release(driver, parent, sandbox_id, layout.cgroups, ctx.deadline)
        shutil.rmtree(pod_dir, ignore_errors=True)
        layout.sandboxes.delete(sandbox_id)
        with layout.name_lock(record["name"], "pod", ctx.deadline):
            names.release(layout.names_dir, record["name"], sandbox_id)
        log.info("Pod sandbox %s removed", sandbox_id)
        held.release(unlink=True)  # the lock file goes with its pod
    return ops.Found(found=True, id=sandbox_id)


def _own_processes(layout: Layout, driver: Driver, sandbox_id: str,
                   parent: str) -> Callable[[str | None], bool]:
    """Which processes of the pod's cgroups, by the object they belong to,
    the removal of ``sandbox_id`` waits for and kills.

    The kubelet gives every sandbox of one pod the same cgroup_parent and
    removes an old one while the newest runs, so only these: the sandbox's
    own (its infra's), and those of objects on no record any more (its
    removed containers' monitors on their way out). A process no object
    claims is the sandbox's only while no other sandbox has its parent.
    """
    shared = _parent_shared(layout, driver, sandbox_id, parent)
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


def _parent_shared(layout: Layout, driver: Driver, sandbox_id: str, parent: str) -> bool:
    """Does another sandbox on record (being created ones included) have
    ``parent`` as its cgroup parent?"""
    target = _cgroup_of(driver, parent)
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
        theirs = record.get("cgroup_parent")
        if not theirs:
            try:
                theirs = configs.sandbox_config(record).linux.cgroup_parent
            except Internal:
                return True  # unreadable too
        if _cgroup_of(driver, str(theirs)) == target:
            return True
    return False


def _cgroup_of(driver: Driver, parent: str) -> list[str]:
    """The cgroup path ``parent`` stands for, one spelling per directory;
    none for a parent no pod can have."""
    try:
        return pods.chain(driver.path(parent))
    except InvalidArgument:
        return []


def cri_status(record: Mapping[str, Any]) -> api.PodSandboxStatus:
    """The record as the CRI's PodSandboxStatus (its containers' aside)."""
    config = configs.sandbox_config(record)
    status = api.PodSandboxStatus(
        id=record["id"], metadata=config.metadata, state=CRI_STATES[record["state"]],
        created_at=record["created_at"], labels=config.labels, annotations=config.annotations,
        runtime_handler=record["runtime_handler"])
    ips = record.get("ips") or []
    if ips:
        status.network.ip = ips[0]
        status.network.additional_ips.extend(api.PodIP(ip=ip) for ip in ips[1:])
    modes = record["modes"]
    # Enum fields take their names: the record keeps the CRI's own spelling.
    status.linux.namespaces.options.CopyFrom(api.NamespaceOption(
        network=modes["network"], pid=modes["pid"], ipc=modes["ipc"]))
    return status


def verbose_info(record: Mapping[str, Any]) -> dict[str, str]:
    """The CRI's verbose map: what podvisor made for the pod."""
    return {"info": json.dumps({
        "netns_path": record.get("netns_path"), "hostname": record.get("hostname", ""),
        "cgroup_parent": record.get("cgroup_parent", ""), "infra": record.get("infra"),
        "namespaces": record.get("ns", {}), "shm": record.get("shm"),
        "files": record.get("files", {}), "runtime_handler": record["runtime_handler"]})}


def list_sandboxes(layout: Layout, ctx: OpContext,
                   args: ops.SandboxListQuery) -> ops.SandboxList:
    flt = configs.parse(api.PodSandboxFilter, args.filter, "filter")
    items = []
    for sandbox_id in layout.sandboxes.ids():
        record = layout.sandboxes.load(sandbox_id)
        # Pods being created are not the kubelet's to see yet.
        if record is None or record["state"] == CREATING:
            continue
        if flt.id and not sandbox_id.startswith(flt.id):
            continue
        if flt.HasField("state") and CRI_STATES[record["state"]] != flt.state.state:
            continue
        config = configs.sandbox_config(record)
        if not configs.labels_match(config.labels, flt.label_selector):
            continue
        items.append(api.PodSandbox(
            id=sandbox_id, metadata=config.metadata, state=CRI_STATES[record["state"]],
            created_at=record["created_at"], labels=config.labels,
            annotations=config.annotations,
            runtime_handler=record["runtime_handler"]).SerializeToString())
    return ops.SandboxList(items=items)
