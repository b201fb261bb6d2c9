"""cgroup placement and limits: ``linux.cgroupsPath`` and ``linux.resources``.

cgroupsPath, as CRI-O's cgroup managers name it (``internal/config/cgmgr``):

- cgroupfs: ``<cgroup_parent>/<prefix>-<id>``, the parent defaulting to
  ``/<prefix>``; a systemd slice as parent is refused, since the cgroupfs
  driver would create a directory literally named ``….slice``;
- systemd: ``<parent.slice>:<prefix>:<id>`` (runc's slice:prefix:name
  form), the parent defaulting to system.slice; a parent that is not a
  slice is refused.

Limits come from ``LinuxContainerResources`` (CRI-O
``SpecSetLinuxContainerResources``): zero means "not set" for every field,
as the kubelet sends it. A memory limit below the handler's minimum is
INVALID_ARGUMENT (CRI-O ``VerifyMemoryIsEnough``). Swap: the OCI ``swap``
is memory plus swap; it is the CRI swap limit when set (never below the
memory limit), else equal to the memory limit, i.e. no swap, and it is
written only where the kernel accounts swap, since runc fails the create
otherwise. Hugepage limits are dropped where no hugetlb controller is
mounted, as CRI-O does. ``unified`` is cgroup v2 only: on a v1 node it is
dropped with a warning, because runc refuses the whole spec with it. A
pids limit is written only when the node config sets one (CRI-O's default
``pids_limit`` is -1, none).

``oom_score_adj`` is a process field, not a cgroup one; it is clamped to
the daemon's own value (see spec_context).
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Mapping
from typing import Any

from ...proto.errors import InvalidArgument
from . import spec_cri as cri
from .spec_context import NodeFacts

log = logging.getLogger(__name__)

OOM_SCORE_ADJ_MIN = -1000
OOM_SCORE_ADJ_MAX = 1000


def cgroups_path(parent: str, object_id: str, node: NodeFacts) -> str:
    """The ``linux.cgroupsPath`` of a container or infra process ``object_id``."""
    if node.cgroup_manager == "systemd":
        slice_name = parent or "system.slice"
        if not posixpath.basename(slice_name).endswith(".slice") or "/" in slice_name:
            raise InvalidArgument(f"cgroup_parent {parent!r}: the systemd cgroup manager needs a "
                                  "slice name such as kubepods-besteffort-pod<uid>.slice")
        return f"{slice_name}:{node.cgroup_prefix}:{object_id}"
    if posixpath.basename(parent).endswith(".slice"):
        raise InvalidArgument(f"cgroup_parent {parent!r} is a systemd slice, but the cgroup "
                              "manager is cgroupfs")
    base = parent or f"/{node.cgroup_prefix}"
    # normpath keeps the result under the cgroup root: "/../x" becomes "/x".
    return posixpath.normpath(posixpath.join("/", base, f"{node.cgroup_prefix}-{object_id}"))


def oom_score_adj(resources: Mapping[str, Any], floor: int) -> int:
    """The CRI's oom_score_adj, raised to the daemon's own (never lower)."""
    value = cri.integer(resources.get("oom_score_adj"), "oom_score_adj")
    if not OOM_SCORE_ADJ_MIN <= value <= OOM_SCORE_ADJ_MAX:
        raise InvalidArgument(f"oom_score_adj {value} is outside -1000..1000")
    return max(value, floor)


def _positive(resources: Mapping[str, Any], key: str) -> int:
    value = cri.integer(resources.get(key), key)
    if value < 0:
        raise InvalidArgument(f"{key} {value} is negative")
    return value


def linux_resources(resources: Mapping[str, Any], node: NodeFacts) -> dict[str, Any]:
    """The OCI ``linux.resources`` (without devices) for a LinuxContainerResources dict."""
    out: dict[str, Any] = {}
    cpu: dict[str, Any] = {}
    shares = _positive(resources, "cpu_shares")
    period = _positive(resources, "cpu_period")
    # -1 is "no quota" in the cgroup files; the kubelet sends 0 for that.
    quota = cri.integer(resources.get("cpu_quota"), "cpu_quota")
    if shares:
        cpu["shares"] = shares
    if quota:
        cpu["quota"] = quota
    if period:
        cpu["period"] = period
    for key, field in (("cpuset_cpus", "cpus"), ("cpuset_mems", "mems")):
        if value := cri.text(resources, key):
            cpu[field] = value
    if cpu:
        out["cpu"] = cpu

    limit = _positive(resources, "memory_limit_in_bytes")
    if limit:
        if limit < node.min_memory:
            raise InvalidArgument(f"memory limit {limit} is too low; it should be at least "
                                  f"{node.min_memory} bytes")
        memory: dict[str, Any] = {"limit": limit}
        swap = cri.integer(resources.get("memory_swap_limit_in_bytes"),
                           "memory_swap_limit_in_bytes")
        if 0 < swap < limit:
            raise InvalidArgument(f"memory swap limit ({swap}) cannot be lower than the memory "
                                  f"limit ({limit})")
        if node.swap_accounting:
            memory["swap"] = swap or limit
        out["memory"] = memory

    hugepages = [{"pageSize": cri.text(h, "page_size"),
                  "limit": cri.integer(h.get("limit"), "hugepage_limits.limit")}
                 for h in cri.messages(resources, "hugepage_limits")]
    if hugepages and "hugetlb" in node.controllers:
        out["hugepageLimits"] = hugepages

    unified = cri.text_map(resources, "unified")
    if unified and node.cgroup_v2:
        out["unified"] = unified
    elif unified:
        log.warning("Dropping unified cgroup settings %s: this node runs cgroup v1",
                    ", ".join(sorted(unified)))

    if node.pids_limit > 0 and "pids" in node.controllers:
        out["pids"] = {"limit": node.pids_limit}
    return out
