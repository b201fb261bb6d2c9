"""UpdateContainerResources and UpdatePodSandboxResources: new limits, in
place.

The new ``LinuxContainerResources`` are checked by the same rules as at
create (spec_resources.py), so a value the create would refuse is refused
here too, before anything changes. A created or running container gets
them through its OCI runtime's ``update --resources -`` (runc and crun
take the OCI ``linux.resources`` on stdin): the runtime writes the cgroup
files on either hierarchy, sets the unit's properties under the systemd
driver (where systemd would otherwise put its own values back), and keeps
its own state in step. Then the record's config carries them, so
ContainerStatus reports what the container now has (the kubelet compares
it during an in-place resize).

An exited container has no cgroup: its record alone takes the update, as
containerd does. One still being created is FAILED_PRECONDITION (the
kubelet retries).

A refusal by the kernel (memory below what is in use, EBUSY) comes back
from the runtime as FAILED_PRECONDITION naming it; the record is then
left as it was.

A pod's new resources (the kubelet sends them after it has resized the
pod cgroup itself) are checked the same way and recorded; they are
written to the pod cgroup only where podvisor made that cgroup (a pod
with no kubelet parent, under cgroupfs), through the cgroup layer. The
kubelet's own pod cgroups and systemd's slices are theirs to set.
"""

from __future__ import annotations

import json

from ...proto import api_pb2 as api
from ...proto import runtime_ops as ops
from ...proto.errors import FailedPrecondition
from ..base import OpContext
from . import configs, containers, monitor, sandbox, spec_resources, specs
from .cgroup import limits
from .handlers import Runtimes
from .layout import Layout


def update(layout: Layout, runtimes: Runtimes, ctx: OpContext, args: ops.ContainerUpdate) -> None:
    container_id = containers.resolve_id(layout, args.id)
    resources = configs.parse(api.LinuxContainerResources, args.resources, "linux")
    with layout.container_lock(container_id, ctx.deadline):
        raw = containers.load(layout, container_id)
        record = containers.current(layout, raw)
        if record["state"] == containers.CREATING:
            raise FailedPrecondition(f"container {container_id} is still being created")
        handler, node = specs.handler_facts(runtimes, record["runtime_handler"])
        wanted = spec_resources.linux_resources(resources, node)
        if record["state"] in (containers.CREATED, containers.RUNNING):
            done = handler.run("update", "--resources", "-", container_id,
                               deadline=ctx.deadline, stdin=json.dumps(wanted))
            if done.returncode != 0:
                raise FailedPrecondition(
                    f"{handler.name} update of container {container_id} failed: "
                    f"{monitor.compact(done.stderr or done.stdout)}")
        config = configs.container_config(raw)
        config.linux.resources.CopyFrom(resources)
        raw[configs.FIELD] = configs.stored(config.SerializeToString())
        layout.containers.save(container_id, raw)


def update_sandbox(layout: Layout, runtimes: Runtimes, ctx: OpContext,
                   args: ops.SandboxUpdate) -> None:
    sandbox_id = sandbox.resolve_id(layout, args.id)
    resources = configs.parse(api.LinuxContainerResources, args.resources, "resources")
    overhead = configs.parse(api.LinuxContainerResources, args.overhead, "overhead")
    with layout.pod_lock(sandbox_id, ctx.deadline):
        record = sandbox.load(layout, sandbox_id)
        if record["state"] == sandbox.CREATING:
            raise FailedPrecondition(f"pod sandbox {sandbox_id} is still being created")
        _handler, node = specs.handler_facts(runtimes, record["runtime_handler"])
        for message in (resources, overhead):
            spec_resources.linux_resources(message, node)
        driver = runtimes.cgroups
        parent = str(record.get("cgroup_parent") or "")
        if record["state"] == sandbox.READY and parent and not driver.systemd \
                and layout.cgroups.load(driver.path(parent)) is not None:
            limits.write(driver.hierarchy, driver.path(parent), limits.from_cri(
                resources.cpu_shares, resources.cpu_quota, resources.cpu_period,
                resources.memory_limit_in_bytes, resources.memory_swap_limit_in_bytes,
                resources.cpuset_cpus, resources.cpuset_mems, resources.unified))
        record["resources"] = {"resources": configs.stored(resources.SerializeToString()),
                               "overhead": configs.stored(overhead.SerializeToString())}
        layout.sandboxes.save(sandbox_id, record)
