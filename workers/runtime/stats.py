"""The runtime pool's part of stats and metrics: which pods and containers
a query names, and their cgroups' figures now.

The answer is raw (proto/stats.py); the supervisor joins it with the
storage pool's writable-layer usage and the net pool's interface counters
and builds the CRI messages. Nothing here writes: these are reads, with no
lock, as ContainerStatus is.

Which objects
    Every container and pod but those still being created, as ListContainers
    and ListPodSandbox show them. A created container (not started) is
    listed with no cgroup figures: it has used nothing yet, and the
    ``runc init`` waiting in its cgroup is the runtime's, not the
    container's. An exited one is listed the same way (its cgroup is gone).

Cost
    One record read and, for a running container, one ``usage.read`` (a
    handful of small cgroup files) per object; /proc is walked only when
    the query asks for processes (the metrics RPCs).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from ...proto import api_pb2 as api
from ...proto.errors import NotFound
from ...proto.stats import (
    CgroupSample,
    ContainerSample,
    ContainerSamples,
    PodSample,
    PodSamples,
    ProcessSample,
    SpecLimits,
    StatsQuery,
)
from ..base import OpContext
from . import configs, containers, procstat, sandbox
from .cgroup import usage
from .cgroup.driver import Driver
from .layout import Layout

# A container as the selection gives it: its record, exit folded in, and
# its config, parsed once.
Member = tuple[dict[str, Any], api.ContainerConfig]


def container_samples(layout: Layout, driver: Driver, ctx: OpContext,
                      query: StatsQuery) -> ContainerSamples:
    if query.id:
        raw = containers.load(layout, containers.resolve_id(layout, query.id))
        if raw["state"] == containers.CREATING:
            raise NotFound(f"container {raw['id']} is still being created")
        chosen: list[Member] = [(containers.current(layout, raw),
                                 configs.container_config(raw))]
    else:
        flt = configs.parse(api.ContainerStatsFilter, query.filter, "filter")
        chosen = list(containers.selected(layout, id_prefix=flt.id,
                                          pod_prefix=flt.pod_sandbox_id,
                                          labels=flt.label_selector))
    pods: dict[str, str] = {}
    items = []
    for member in chosen:
        ctx.check()
        sandbox_id = member[0]["sandbox_id"]
        if sandbox_id not in pods:
            pods[sandbox_id] = _pod_parent(layout, sandbox_id)
        items.append(_container(driver, member, pods[sandbox_id], query.processes))
    return ContainerSamples(items=items)


def pod_samples(layout: Layout, driver: Driver, ctx: OpContext,
                query: StatsQuery) -> PodSamples:
    if query.id:
        record = sandbox.load(layout, sandbox.resolve_id(layout, query.id))
        if record["state"] == sandbox.CREATING:
            raise NotFound(f"pod sandbox {record['id']} is still being created")
        pods = [record]
    else:
        flt = configs.parse(api.PodSandboxStatsFilter, query.filter, "filter")
        pods = list(_pods(layout, flt))
    members: dict[str, list[Member]] = {pod["id"]: [] for pod in pods}
    # One pod asked for: only its containers are read.
    only = pods[0]["id"] if query.id else ""
    for member in containers.selected(layout, sandbox_id=only):
        if member[0]["sandbox_id"] in members:
            members[member[0]["sandbox_id"]].append(member)
    items = []
    for pod in pods:
        ctx.check()
        items.append(_pod(driver, pod, members[pod["id"]], query.processes))
    return PodSamples(items=items)


def _pods(layout: Layout, flt: api.PodSandboxStatsFilter) -> Iterator[dict[str, Any]]:
    for sandbox_id in layout.sandboxes.ids():
        if flt.id and not sandbox_id.startswith(flt.id):
            continue
        record = layout.sandboxes.load(sandbox_id)
        if record is None or record["state"] == sandbox.CREATING:
            continue
        if not configs.labels_match(configs.sandbox_config(record).labels, flt.label_selector):
            continue
        yield record


def _pod_parent(layout: Layout, sandbox_id: str) -> str:
    try:
        return str(sandbox.load(layout, sandbox_id).get("cgroup_parent") or "")
    except NotFound:
        return ""  # removed meanwhile: its containers go with it


def _container(driver: Driver, member: Member, parent: str, processes: bool) -> ContainerSample:
    record, config = member
    attributes = api.ContainerAttributes(id=record["id"], metadata=config.metadata,
                                         labels=config.labels, annotations=config.annotations)
    cgroup: CgroupSample | None = None
    procs: ProcessSample | None = None
    if record["state"] == containers.RUNNING:
        path = driver.object_path(parent, record["id"])
        cgroup = _cgroup(driver, path)
        if cgroup is not None and processes:
            procs = procstat.sample(driver.hierarchy, path)
    resources = config.linux.resources
    return ContainerSample(
        id=record["id"], sandbox_id=record["sandbox_id"],
        attributes=attributes.SerializeToString(), image=config.image.image,
        state=record["state"], started_at_ns=int(record.get("started_at") or 0),
        cgroup=cgroup, processes=procs,
        limits=SpecLimits(cpu_period=resources.cpu_period, cpu_quota=resources.cpu_quota,
                          cpu_shares=resources.cpu_shares,
                          memory_limit_bytes=resources.memory_limit_in_bytes,
                          memory_swap_limit_bytes=resources.memory_swap_limit_in_bytes))


def _pod(driver: Driver, record: Mapping[str, Any], members: list[Member],
         processes: bool) -> PodSample:
    config = configs.sandbox_config(record)
    attributes = api.PodSandboxAttributes(id=record["id"], metadata=config.metadata,
                                          labels=config.labels, annotations=config.annotations)
    parent = str(record.get("cgroup_parent") or "")
    # A pod whose parent is the root cgroup has no cgroup of its own.
    path = driver.path(parent) if parent else ""
    cgroup = _cgroup(driver, path) if path else None
    procs = procstat.sample(driver.hierarchy, path) if cgroup is not None and processes \
        else None
    return PodSample(
        id=record["id"], attributes=attributes.SerializeToString(),
        ready=record["state"] == sandbox.READY,
        host_network=record["modes"]["network"] == "NODE", cgroup=cgroup, processes=procs,
        containers=[_container(driver, member, parent, processes) for member in members])


def _cgroup(driver: Driver, path: str) -> CgroupSample | None:
    """The cgroup's figures; None when it is gone (the container exited
    after its state was read)."""
    try:
        return usage.read(driver.hierarchy, path)
    except FileNotFoundError:
        return None
